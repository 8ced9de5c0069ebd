//! The libpq password file (`~/.pgpass`, `PGPASSFILE`, `passfile`): permission checks and
//! `hostname:port:database:username:password` matching with libpq's rules.

use std::path::Path;

/// What a password-file line is matched against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: &'a str,
    pub(crate) dbname: &'a str,
    pub(crate) user: &'a str,
}

/// Why the password file at `path` exists but is not used, if it is ignored: for error messages.
pub(crate) fn ignored_because(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some(format!(
            "the password file {} is not a plain file, so it was ignored",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the password file {} was ignored because others may read it (mode {mode:04o}): run \
             chmod 0600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Reads the password file at `path` and returns the password of the first line matching any of
/// `lookups` (tried in order). A missing file yields `None`; a file that is not a regular file or
/// that the group or others can access is ignored with a warning, as libpq does.
pub(crate) fn lookup(path: &Path, lookups: &[Lookup<'_>]) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no password file");
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "password file has group or world access; permissions should be u=rw (0600) or \
             less; ignoring it"
        );
        return None;
    }
    let contents = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read password file");
            return None;
        }
    };
    lookups.iter().find_map(|l| {
        let found = find(&contents, l);
        if found.is_some() {
            tracing::debug!(path = %path.display(), host = l.host, port = l.port,
                dbname = l.dbname, user = l.user, "password found in password file");
        }
        found
    })
}

/// The password of the first line of `contents` matching `l`.
pub(crate) fn find(contents: &str, l: &Lookup<'_>) -> Option<String> {
    if l.dbname.is_empty() || l.user.is_empty() {
        return None;
    }
    contents.lines().find_map(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let rest = matches_field(line, l.host)?;
        let rest = matches_field(rest, l.port)?;
        let rest = matches_field(rest, l.dbname)?;
        let rest = matches_field(rest, l.user)?;
        Some(unescape_password(rest))
    })
}

/// libpq's `pwdfMatchesString`: a field matches if it is exactly `*`, or equals `token` after
/// removing backslash escapes. Returns the text after the field's `:`.
fn matches_field<'a>(field_start: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = field_start.strip_prefix("*:") {
        return Some(rest);
    }
    let mut chars = field_start.char_indices();
    let mut token = token.chars();
    while let Some((i, c)) = chars.next() {
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, next)) => (next, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped && token.clone().next().is_none() {
            return Some(&field_start[i + 1..]);
        }
        // As in libpq, an unescaped ':' may still match a ':' in the token (IPv6 addresses).
        if token.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The password field: up to the next unescaped `:`, with backslash escapes removed.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup { host, port, dbname, user }
    }

    #[test]
    fn exact_and_wildcards() {
        let file = "\
# comment line
db1:5432:app:alice:pw-exact
*:5432:app:bob:pw-any-host
db2:*:*:carol:pw-wild
*:*:*:*:pw-fallback
";
        assert_eq!(find(file, &l("db1", "5432", "app", "alice")).as_deref(), Some("pw-exact"));
        assert_eq!(
            find(file, &l("anything", "5432", "app", "bob")).as_deref(),
            Some("pw-any-host")
        );
        assert_eq!(find(file, &l("db2", "6543", "x", "carol")).as_deref(), Some("pw-wild"));
        assert_eq!(find(file, &l("db1", "5433", "app", "alice")).as_deref(), Some("pw-fallback"));
        assert_eq!(find("db1:5432:app:alice:pw\n", &l("db1", "5432", "app", "bob")), None);
    }

    #[test]
    fn first_match_wins() {
        let file = "h:5432:d:u:first\nh:5432:d:u:second\n";
        assert_eq!(find(file, &l("h", "5432", "d", "u")).as_deref(), Some("first"));
    }

    #[test]
    fn escapes() {
        // A host field with an escaped colon (e.g. an IPv6 address) and a password with
        // escaped colons and backslashes.
        let file = r"\:\:1:5432:d:u:p\:w\\d
";
        assert_eq!(find(file, &l("::1", "5432", "d", "u")).as_deref(), Some(r"p:w\d"));
        // The password stops at an unescaped colon.
        assert_eq!(find("h:1:d:u:pw:extra\n", &l("h", "1", "d", "u")).as_deref(), Some("pw"));
        // '*' only acts as a wildcard when it is the whole field.
        assert_eq!(find("*x:1:d:u:pw\n", &l("ax", "1", "d", "u")), None);
        assert_eq!(find(r"\*:1:d:u:pw", &l("*", "1", "d", "u")).as_deref(), Some("pw"));
        // Unescaped IPv6 addresses match too, as in libpq.
        assert_eq!(find("::1:5432:d:u:pw\n", &l("::1", "5432", "d", "u")).as_deref(), Some("pw"));
    }

    #[test]
    fn crlf_and_blank_lines() {
        let file = "\r\n\nh:1:d:u:pw\r\n";
        assert_eq!(find(file, &l("h", "1", "d", "u")).as_deref(), Some("pw"));
    }

    #[test]
    fn incomplete_lines_do_not_match() {
        assert_eq!(find("h:1:d\n", &l("h", "1", "d", "u")), None);
        assert_eq!(find("h:1:d:u\n", &l("h", "1", "d", "u")), None);
    }

    #[test]
    fn permissions_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::conn::testdir::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        let lookups = [l("h", "5432", "d", "u")];
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&path, &lookups), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &lookups).as_deref(), Some("pw"));
        assert_eq!(lookup(dir.path(), &lookups), None, "a directory is ignored");
        assert_eq!(lookup(&dir.path().join("missing"), &lookups), None);
    }

    #[test]
    fn lookups_are_tried_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::conn::testdir::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "h2:5432:d:u:second-host\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let lookups = [l("h1", "5432", "d", "u"), l("h2", "5432", "d", "u")];
        assert_eq!(lookup(&path, &lookups).as_deref(), Some("second-host"));
    }
}
