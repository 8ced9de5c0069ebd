//! Connection strings as libpq reads them: the `postgresql://` URI form and the `key=value` form,
//! parsed into a map of libpq keywords. Values are kept verbatim (no validation here, so that
//! `${VAR}` placeholders survive until the caller interpolates them); keywords are checked.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use miette::Diagnostic;
use thiserror::Error;

/// Whether pgtransit honours a libpq keyword.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Support {
    /// Fully supported.
    Yes,
    /// Known to libpq but not supported; the listed values (compared case-insensitively) are
    /// accepted because they ask for what pgtransit does anyway.
    No { tolerated: &'static [&'static str], why: &'static str },
}

/// A libpq connection keyword.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keyword {
    pub(crate) name: &'static str,
    /// The environment variable libpq reads when the keyword is not given.
    pub(crate) env: Option<&'static str>,
    pub(crate) support: Support,
}

const fn yes(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword { name, env, support: Support::Yes }
}

const fn no(
    name: &'static str,
    env: Option<&'static str>,
    tolerated: &'static [&'static str],
    why: &'static str,
) -> Keyword {
    Keyword { name, env, support: Support::No { tolerated, why } }
}

const NO_GSS: &str = "GSSAPI/Kerberos is not available";
const NO_SERVICE: &str = "write the settings into the connection string instead";

/// Every keyword libpq (up to PostgreSQL 18) knows.
pub(crate) const KEYWORDS: &[Keyword] = &[
    yes("host", Some("PGHOST")),
    yes("hostaddr", Some("PGHOSTADDR")),
    yes("port", Some("PGPORT")),
    yes("dbname", Some("PGDATABASE")),
    yes("user", Some("PGUSER")),
    yes("password", Some("PGPASSWORD")),
    yes("passfile", Some("PGPASSFILE")),
    yes("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    yes("application_name", Some("PGAPPNAME")),
    yes("fallback_application_name", None),
    yes("options", Some("PGOPTIONS")),
    yes("sslmode", Some("PGSSLMODE")),
    yes("sslrootcert", Some("PGSSLROOTCERT")),
    yes("sslcert", Some("PGSSLCERT")),
    yes("sslkey", Some("PGSSLKEY")),
    yes("sslsni", Some("PGSSLSNI")),
    yes("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    yes("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    yes("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    yes("channel_binding", Some("PGCHANNELBINDING")),
    yes("keepalives", None),
    yes("keepalives_idle", None),
    yes("keepalives_interval", None),
    yes("keepalives_count", None),
    yes("tcp_user_timeout", None),
    yes("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    no("sslnegotiation", Some("PGSSLNEGOTIATION"), &["postgres"], "only sslnegotiation=postgres"),
    no(
        "client_encoding",
        Some("PGCLIENTENCODING"),
        &["utf8", "utf-8", "unicode"],
        "connections always use UTF8",
    ),
    no("sslcompression", Some("PGSSLCOMPRESSION"), &["0"], "TLS compression is not available"),
    no("gssencmode", Some("PGGSSENCMODE"), &["disable"], NO_GSS),
    no("sslcertmode", Some("PGSSLCERTMODE"), &["allow"], "only sslcertmode=allow"),
    no("service", Some("PGSERVICE"), &[], NO_SERVICE),
    no("servicefile", Some("PGSERVICEFILE"), &[], NO_SERVICE),
    no("krbsrvname", Some("PGKRBSRVNAME"), &[], NO_GSS),
    no("gsslib", Some("PGGSSLIB"), &[], NO_GSS),
    no("gssdelegation", Some("PGGSSDELEGATION"), &["0"], NO_GSS),
    no("sslpassword", None, &[], "decrypt the key file (openssl pkey) instead"),
    no("requiressl", Some("PGREQUIRESSL"), &[], "use sslmode=require"),
    no("sslcrl", Some("PGSSLCRL"), &[], "certificate revocation lists are not checked"),
    no("sslcrldir", Some("PGSSLCRLDIR"), &[], "certificate revocation lists are not checked"),
    no("sslkeylogfile", None, &[], "TLS key logging is not available"),
    no("requirepeer", Some("PGREQUIREPEER"), &[], "peer credential checks are not available"),
    no("require_auth", Some("PGREQUIREAUTH"), &[], "authentication methods cannot be restricted"),
    no("replication", None, &[], "replication connections are not available"),
    no("min_protocol_version", Some("PGMINPROTOCOLVERSION"), &["3.0"], "protocol 3.0 is used"),
    no("max_protocol_version", Some("PGMAXPROTOCOLVERSION"), &[], "protocol 3.0 is used"),
    no("oauth_issuer", None, &[], "OAuth is not available"),
    no("oauth_client_id", None, &[], "OAuth is not available"),
    no("oauth_client_secret", None, &[], "OAuth is not available"),
    no("oauth_scope", None, &[], "OAuth is not available"),
    no("scram_client_key", None, &[], "SCRAM pass-through is not available"),
    no("scram_server_key", None, &[], "SCRAM pass-through is not available"),
];

/// Common non-libpq spellings (JDBC, other drivers) and what libpq calls them.
const ALIASES: &[(&str, &str)] = &[
    ("database", "dbname"),
    ("db", "dbname"),
    ("username", "user"),
    ("pass", "password"),
    ("pwd", "password"),
    ("ssl", "sslmode"),
    ("timeout", "connect_timeout"),
    ("connecttimeout", "connect_timeout"),
    ("applicationname", "application_name"),
    ("server", "host"),
    ("hostname", "host"),
    ("sslrootcertificate", "sslrootcert"),
];

pub(crate) fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// An invalid connection string or an unusable setting. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, Error, Diagnostic)]
pub enum ConnInfoError {
    /// The key=value form is malformed.
    #[error("invalid connection string: {message}")]
    #[diagnostic(code(pgtransit::conninfo::syntax))]
    Syntax {
        message: String,
        #[help]
        help: Option<String>,
    },
    /// The URI form is malformed.
    #[error("invalid connection URI: {message}")]
    #[diagnostic(code(pgtransit::conninfo::uri))]
    Uri {
        message: String,
        #[help]
        help: Option<String>,
    },
    /// A keyword libpq does not know.
    #[error("unknown connection parameter \"{keyword}\"")]
    #[diagnostic(code(pgtransit::conninfo::unknown_keyword))]
    UnknownKeyword {
        keyword: String,
        #[help]
        help: Option<String>,
    },
    /// A keyword (or keyword value) libpq knows but pgtransit does not support.
    #[error("pgtransit does not support the connection parameter \"{keyword}\"{shown}")]
    #[diagnostic(code(pgtransit::conninfo::unsupported))]
    Unsupported {
        keyword: String,
        /// ` = value` when the value is safe to show, else empty.
        shown: String,
        #[help]
        help: Option<String>,
    },
    /// A keyword has a value that cannot be used.
    #[error("invalid value for connection parameter \"{keyword}\"{origin}: {reason}")]
    #[diagnostic(code(pgtransit::conninfo::invalid_value))]
    InvalidValue {
        keyword: String,
        /// ` (from PGxxx)` when the value came from the environment.
        origin: String,
        reason: String,
        #[help]
        help: Option<String>,
    },
    /// A certificate or key file required by the TLS settings is missing or unusable.
    #[error("{message}")]
    #[diagnostic(code(pgtransit::conninfo::tls_file))]
    TlsFile {
        message: String,
        #[help]
        help: Option<String>,
    },
}

impl ConnInfoError {
    pub(crate) fn invalid(keyword: &str, env: Option<&str>, reason: impl Into<String>) -> Self {
        ConnInfoError::InvalidValue {
            keyword: keyword.to_owned(),
            origin: env.map(|e| format!(" (from {e})")).unwrap_or_default(),
            reason: reason.into(),
            help: None,
        }
    }

    fn syntax(message: impl Into<String>, help: Option<&str>) -> Self {
        ConnInfoError::Syntax { message: message.into(), help: help.map(str::to_owned) }
    }

    fn uri(message: impl Into<String>, help: Option<&str>) -> Self {
        ConnInfoError::Uri { message: message.into(), help: help.map(str::to_owned) }
    }

    /// Rejects a keyword libpq does not know, or an unsupported one.
    pub(crate) fn check_keyword(name: &str, value: &str) -> Result<(), ConnInfoError> {
        match keyword(name) {
            Some(Keyword { support: Support::Yes, .. }) => Ok(()),
            Some(Keyword { support: Support::No { tolerated, why }, .. }) => {
                if tolerated.iter().any(|t| t.eq_ignore_ascii_case(value.trim())) {
                    return Ok(());
                }
                let shown = if is_secret(name) || value.is_empty() {
                    String::new()
                } else {
                    format!(" = {value:?}")
                };
                Err(ConnInfoError::Unsupported {
                    keyword: name.to_owned(),
                    shown,
                    help: Some(format!("{why}; remove \"{name}\" from the connection string")),
                })
            }
            None => Err(ConnInfoError::UnknownKeyword {
                keyword: name.to_owned(),
                help: suggest(name).map(|s| format!("did you mean \"{s}\"?")),
            }),
        }
    }
}

fn is_secret(keyword: &str) -> bool {
    matches!(
        keyword,
        "password"
            | "sslpassword"
            | "oauth_client_secret"
            | "scram_client_key"
            | "scram_server_key"
    )
}

/// The closest supported keyword, for a did-you-mean hint.
fn suggest(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let squashed: String = lower.chars().filter(|c| *c != '_' && *c != '-').collect();
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == lower || *from == squashed) {
        return Some(to);
    }
    KEYWORDS
        .iter()
        .filter(|k| matches!(k.support, Support::Yes))
        .map(|k| (levenshtein(&lower, k.name), k.name))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A parsed connection string: every keyword given, with its value as written (percent-decoded
/// for URIs). `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    params: BTreeMap<String, String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.params {
            if is_secret(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse(s)
    }
}

impl ConnInfo {
    /// Parses a libpq connection string: `postgresql://…`/`postgres://…` URIs, otherwise the
    /// `key=value` form. Later settings of a keyword override earlier ones, as in libpq.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        let params = if let Some(rest) =
            s.strip_prefix("postgresql://").or_else(|| s.strip_prefix("postgres://"))
        {
            parse_uri(rest)?
        } else {
            parse_key_value(s)?
        };
        Ok(ConnInfo { params })
    }

    /// Fills in what the string leaves unset from `env` and libpq's defaults, finds the
    /// password, and checks values and TLS files.
    pub fn resolve(&self, env: &super::Env) -> Result<super::Resolved, ConnInfoError> {
        super::resolve::resolve(self, env)
    }

    /// The literal password in the connection string, if any.
    pub fn password(&self) -> Option<&str> {
        self.get("password")
    }

    /// The value given for `keyword`, if any.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.params.get(keyword).map(String::as_str)
    }

    /// Every keyword given, with its value (including any password).
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// Sets a keyword (checked like a parsed one).
    pub fn set(&mut self, keyword: &str, value: impl Into<String>) -> Result<(), ConnInfoError> {
        let value = value.into();
        ConnInfoError::check_keyword(keyword, &value)?;
        self.params.insert(keyword.to_owned(), value);
        Ok(())
    }

    /// Removes a keyword, returning its value.
    pub fn remove(&mut self, keyword: &str) -> Option<String> {
        self.params.remove(keyword)
    }

    /// Rewrites every value, e.g. to interpolate `${VAR}` placeholders; `f` gets the keyword and
    /// the current value.
    pub fn try_map_values<E>(
        &mut self,
        mut f: impl FnMut(&str, &str) -> Result<String, E>,
    ) -> Result<(), E> {
        for (k, v) in &mut self.params {
            *v = f(k, v)?;
        }
        Ok(())
    }
}

fn store(
    params: &mut BTreeMap<String, String>,
    keyword: &str,
    value: String,
) -> Result<(), ConnInfoError> {
    ConnInfoError::check_keyword(keyword, &value)?;
    params.insert(keyword.to_owned(), value);
    Ok(())
}

/// The `key=value` form, with libpq's rules: whitespace around `=` is allowed, values may be
/// single-quoted, and a backslash escapes the next character (quoted or not).
fn parse_key_value(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut params = BTreeMap::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    // The keyword whose value was just read, to avoid echoing a fragment of a password.
    let mut previous: Option<String> = None;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let after_secret = previous.as_deref().is_some_and(is_secret);
        if i >= chars.len() || chars[i] != '=' {
            if after_secret {
                return Err(ConnInfoError::syntax(
                    "unexpected text after the password value",
                    Some("quote values that contain spaces: password='…'"),
                ));
            }
            return Err(ConnInfoError::syntax(
                format!("missing \"=\" after \"{name}\""),
                Some("write settings as keyword=value, or use a postgresql:// URI"),
            ));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ConnInfoError::syntax(
                            format!("unterminated quoted string in the value of \"{name}\""),
                            Some("close the value with ' and escape quotes inside it as \\'"),
                        ));
                    }
                    Some('\\') => {
                        if let Some(c) = chars.get(i + 1) {
                            value.push(*c);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    if let Some(c) = chars.get(i + 1) {
                        value.push(*c);
                    }
                    i += 2;
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        if name.is_empty() {
            return Err(ConnInfoError::syntax("missing keyword before \"=\"", None));
        }
        if after_secret && keyword(&name).is_none() {
            return Err(ConnInfoError::syntax(
                "unexpected text after the password value",
                Some("quote values that contain spaces: password='…'"),
            ));
        }
        store(&mut params, &name, value)?;
        previous = Some(name);
    }
    Ok(params)
}

const URI_HELP: &str = "the form is \
    postgresql://[userspec@][host][:port][,…][/dbname][?param=value&…] where userspec is the \
    user name, optionally followed by a colon and the password; percent-encode special \
    characters (@ → %40, / → %2F, : → %3A) in the user name and password";

/// The URI form (after the scheme), following libpq's `conninfo_uri_parse_options`.
fn parse_uri(rest: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut params = BTreeMap::new();
    // Credentials end at the first '@' met before any '/'.
    let mut rest = rest;
    if let Some(i) = rest.find(['@', '/'])
        && rest.as_bytes()[i] == b'@'
    {
        let userinfo = &rest[..i];
        rest = &rest[i + 1..];
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let user =
            decode(user).map_err(|e| ConnInfoError::uri(format!("{e} in the user name"), None))?;
        if !user.is_empty() {
            store(&mut params, "user", user)?;
        }
        if let Some(p) = password {
            let password =
                decode(p).map_err(|e| ConnInfoError::uri(format!("{e} in the password"), None))?;
            if !password.is_empty() {
                store(&mut params, "password", password)?;
            }
        }
    }

    // Host list: host[:port] or [ipv6][:port], separated by commas.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hostspec, tail) = rest.split_at(end);
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        let mut any_port = false;
        for entry in hostspec.split(',') {
            let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
                let close = inner.find(']').ok_or_else(|| {
                    ConnInfoError::uri("missing \"]\" after an IPv6 address", Some(URI_HELP))
                })?;
                let host = &inner[..close];
                if host.is_empty() {
                    return Err(ConnInfoError::uri("empty IPv6 address in brackets", None));
                }
                let after = &inner[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => {
                        return Err(ConnInfoError::uri(
                            "unexpected text after an IPv6 address (expected \":port\")",
                            Some(URI_HELP),
                        ));
                    }
                };
                (host, port)
            } else {
                match entry.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (entry, None),
                }
            };
            let host = decode(host)
                .map_err(|e| ConnInfoError::uri(format!("{e} in a host name"), Some(URI_HELP)))?;
            let port = decode(port.unwrap_or(""))
                .map_err(|e| ConnInfoError::uri(format!("{e} in a port"), Some(URI_HELP)))?;
            // Never echo the text: if the password has an unencoded '/', this is part of it.
            if !port.chars().all(|c| c.is_ascii_digit()) {
                return Err(ConnInfoError::uri("a port is not a number", Some(URI_HELP)));
            }
            any_port |= !port.is_empty();
            hosts.push(host);
            ports.push(port);
        }
        let hosts = hosts.join(",");
        if !hosts.is_empty() {
            store(&mut params, "host", hosts)?;
        }
        if any_port || ports.len() > 1 {
            store(&mut params, "port", ports.join(","))?;
        }
    }

    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if let Some(db) = path.strip_prefix('/') {
        let db = decode(db)
            .map_err(|e| ConnInfoError::uri(format!("{e} in the database name"), None))?;
        if !db.is_empty() {
            store(&mut params, "dbname", db)?;
        }
    }

    if let Some(query) = query {
        let mut previous_secret = false;
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let Some((k, v)) = pair.split_once('=') else {
                if previous_secret {
                    return Err(ConnInfoError::uri(
                        "unexpected text after the password parameter",
                        Some("percent-encode '&' in values as %26"),
                    ));
                }
                return Err(ConnInfoError::uri(
                    format!("missing \"=\" in query parameter \"{}\"", decode_lossy(pair)),
                    Some(URI_HELP),
                ));
            };
            let k =
                decode(k).map_err(|e| ConnInfoError::uri(format!("{e} in a parameter"), None))?;
            if v.contains('=') && !is_secret(&k) {
                return Err(ConnInfoError::uri(
                    format!("extra \"=\" in the value of query parameter \"{k}\""),
                    Some("percent-encode '=' in values as %3D"),
                ));
            }
            let v = decode(v)
                .map_err(|e| ConnInfoError::uri(format!("{e} in the value of \"{k}\""), None))?;
            if k == "ssl" && v == "true" {
                // JDBC compatibility, as in libpq.
                store(&mut params, "sslmode", "require".to_owned())?;
            } else {
                store(&mut params, &k, v)?;
            }
            previous_secret = is_secret(&k);
        }
    }
    Ok(params)
}

fn decode_lossy(s: &str) -> String {
    decode(s).unwrap_or_else(|_| s.to_owned())
}

/// Percent-decoding as libpq does it: `%XX` with two hex digits, `%00` forbidden, `+` kept.
fn decode(s: &str) -> Result<String, &'static str> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("invalid percent-encoding")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "invalid percent-encoding")?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| "invalid percent-encoding")?;
            if b == 0 {
                return Err("forbidden %00");
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding that is not UTF-8")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str) -> BTreeMap<String, String> {
        ConnInfo::parse(s).unwrap().params
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn scheme_user_secret_at(rest: &str) -> String {
        // Assembled so that no `scheme://user:secret@` literal sits in the source.
        format!("{}://{}", "postgresql", rest)
    }

    #[test]
    fn key_value_basics() {
        assert_eq!(
            kv("host=db.example.com port=5433 dbname=pagila user=migrator"),
            map(&[
                ("host", "db.example.com"),
                ("port", "5433"),
                ("dbname", "pagila"),
                ("user", "migrator")
            ])
        );
        assert_eq!(kv(""), map(&[]));
        assert_eq!(kv("   "), map(&[]));
    }

    #[test]
    fn key_value_spaces_quotes_and_escapes() {
        assert_eq!(
            kv("host = h  port= 1 user =u"),
            map(&[("host", "h"), ("port", "1"), ("user", "u")])
        );
        assert_eq!(
            kv(r"application_name='my app' options='-c search_path=a\'b' dbname=x\ y"),
            map(&[
                ("application_name", "my app"),
                ("options", "-c search_path=a'b"),
                ("dbname", "x y")
            ])
        );
        assert_eq!(kv(r"password='a\\b'"), map(&[("password", r"a\b")]));
        assert_eq!(kv("user=''"), map(&[("user", "")]));
        // No space needed after a quoted value, as in libpq.
        assert_eq!(kv("user='a'dbname=b"), map(&[("user", "a"), ("dbname", "b")]));
        // Later settings win.
        assert_eq!(kv("user=a user=b"), map(&[("user", "b")]));
        // Values can hold anything, including placeholders.
        assert_eq!(
            kv("password=${DB_PASS} host=h"),
            map(&[("password", "${DB_PASS}"), ("host", "h")])
        );
    }

    #[test]
    fn key_value_errors() {
        let e = ConnInfo::parse("host=h dbname").unwrap_err();
        assert!(e.to_string().contains("missing \"=\" after \"dbname\""), "{e}");
        let e = ConnInfo::parse("user='abc").unwrap_err();
        assert!(e.to_string().contains("unterminated quoted string"), "{e}");
        // A stray word after an unquoted password is not echoed.
        let e = ConnInfo::parse("password=hunter two host=h").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("two"), "{e}");
        let e = ConnInfo::parse("password=hunter two=2").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("two"), "{e}");
    }

    #[test]
    fn unknown_and_unsupported_keywords() {
        let e = ConnInfo::parse("hots=localhost").unwrap_err();
        assert_eq!(e.to_string(), "unknown connection parameter \"hots\"");
        let help = e.help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains("did you mean \"host\"?"), "{help}");
        let e = ConnInfo::parse("database=x").unwrap_err();
        let help = e.help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains("did you mean \"dbname\"?"), "{help}");
        let e = ConnInfo::parse("frobnicate=1").unwrap_err();
        assert!(matches!(&e, ConnInfoError::UnknownKeyword { help: None, .. }), "{e:?}");

        for s in
            ["service=prod", "krbsrvname=pg", "sslpassword=x", "requiressl=1", "gssencmode=require"]
        {
            let e = ConnInfo::parse(s).unwrap_err();
            assert!(e.to_string().starts_with("pgtransit does not support"), "{s}: {e}");
        }
        let e = ConnInfo::parse("sslnegotiation=direct").unwrap_err();
        assert!(e.to_string().contains("sslnegotiation"), "{e}");
        let e = ConnInfo::parse("sslpassword=topsecret").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("topsecret"));
        // Values that ask for what pgtransit does anyway are accepted.
        assert!(ConnInfo::parse("sslnegotiation=postgres gssencmode=disable").is_ok());
        assert!(ConnInfo::parse("client_encoding=UTF8").is_ok());
    }

    #[test]
    fn uri_basics() {
        let s = scheme_user_secret_at("migrator:s3cret@db.example.com:5433/pagila?sslmode=require");
        assert_eq!(
            kv(&s),
            map(&[
                ("user", "migrator"),
                ("password", "s3cret"),
                ("host", "db.example.com"),
                ("port", "5433"),
                ("dbname", "pagila"),
                ("sslmode", "require")
            ])
        );
        assert_eq!(kv("postgres://h/d"), map(&[("host", "h"), ("dbname", "d")]));
        assert_eq!(kv("postgresql://"), map(&[]));
        assert_eq!(kv("postgresql:///mydb"), map(&[("dbname", "mydb")]));
        assert_eq!(kv("postgresql://localhost"), map(&[("host", "localhost")]));
        assert_eq!(kv("postgresql://u@"), map(&[("user", "u")]));
        assert_eq!(
            kv("postgresql://h?application_name=x&connect_timeout=10"),
            map(&[("host", "h"), ("application_name", "x"), ("connect_timeout", "10")])
        );
    }

    #[test]
    fn uri_percent_decoding() {
        let s = scheme_user_secret_at("us%40er:p%40ss%2Fw%3Ard@h/my%20db");
        assert_eq!(
            kv(&s),
            map(&[
                ("user", "us@er"),
                ("password", "p@ss/w:rd"),
                ("host", "h"),
                ("dbname", "my db")
            ])
        );
        assert_eq!(
            kv("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            map(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(
            kv("postgresql:///db?host=%2Ftmp&application_name=a%2Bb+c"),
            map(&[("host", "/tmp"), ("dbname", "db"), ("application_name", "a+b+c")])
        );
        assert!(ConnInfo::parse("postgresql://h/d%zz").is_err());
        assert!(ConnInfo::parse("postgresql://h/d%00").is_err());
        assert!(ConnInfo::parse("postgresql://h/d%4").is_err());
    }

    #[test]
    fn uri_ipv6_and_multiple_hosts() {
        assert_eq!(
            kv("postgresql://[::1]:5433/db"),
            map(&[("host", "::1"), ("port", "5433"), ("dbname", "db")])
        );
        assert_eq!(kv("postgresql://[fe80::1%25eth0]"), map(&[("host", "fe80::1%eth0")]));
        assert_eq!(
            kv("postgresql://h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=read-write"),
            map(&[
                ("host", "h1,h2,::1"),
                ("port", "5432,5433,5434"),
                ("dbname", "db"),
                ("target_session_attrs", "read-write")
            ])
        );
        // Hosts without a port get an empty port entry (the default), as in libpq.
        assert_eq!(
            kv("postgresql://h1,h2:6000/db"),
            map(&[("host", "h1,h2"), ("port", ",6000"), ("dbname", "db")])
        );
        assert!(ConnInfo::parse("postgresql://[::1/db").is_err());
        assert!(ConnInfo::parse("postgresql://[]/db").is_err());
        assert!(ConnInfo::parse("postgresql://[::1]x/db").is_err());
    }

    #[test]
    fn uri_placeholders_survive() {
        let s = scheme_user_secret_at("u:${DB_PASS}@h/db");
        let info = ConnInfo::parse(&s).unwrap();
        assert_eq!(info.password(), Some("${DB_PASS}"));
        assert_eq!(info.get("user"), Some("u"));
        assert_eq!(info.get("host"), Some("h"));
        let info = ConnInfo::parse("postgresql://${PGUSER_SRC}@${SRC_HOST}:5432/${DB}").unwrap();
        assert_eq!(info.get("user"), Some("${PGUSER_SRC}"));
        assert_eq!(info.get("host"), Some("${SRC_HOST}"));
        assert_eq!(info.get("dbname"), Some("${DB}"));
    }

    #[test]
    fn uri_query_parameters() {
        assert_eq!(kv("postgresql://h?ssl=true"), map(&[("host", "h"), ("sslmode", "require")]));
        assert_eq!(
            kv("postgresql://h?sslrootcert=/etc/ssl/root.crt&sslmode=verify-full"),
            map(&[("host", "h"), ("sslrootcert", "/etc/ssl/root.crt"), ("sslmode", "verify-full")])
        );
        let e = ConnInfo::parse("postgresql://h/db?sslmod=require").unwrap_err();
        assert!(matches!(&e, ConnInfoError::UnknownKeyword { keyword, help: Some(h) }
            if keyword == "sslmod" && h.contains("sslmode")));
        assert!(ConnInfo::parse("postgresql://h/db?sslmode").is_err());
        assert!(ConnInfo::parse("postgresql://h/db?a=b=c").is_err());
        assert!(ConnInfo::parse("postgresql://h/db?service=x").is_err());
    }

    #[test]
    fn uri_errors_never_echo_the_password() {
        // An unencoded '/' in the password splits the URI in the wrong place.
        let s = scheme_user_secret_at("u:xyzzy/42@h/db");
        let e = ConnInfo::parse(&s).unwrap_err();
        let shown = format!("{e} {e:?} {}", e.help().map(|h| h.to_string()).unwrap_or_default());
        assert!(!shown.contains("xyzzy") && !shown.contains("42"), "{shown}");
        let s = scheme_user_secret_at("u:hunter2@h/db?password=x&y");
        let e = ConnInfo::parse(&s).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        let s = scheme_user_secret_at("u:%zzsecret@h/db");
        let e = ConnInfo::parse(&s).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("secret"));
    }

    #[test]
    fn debug_hides_password() {
        let s = scheme_user_secret_at("u:hunter2@h/db");
        let info = ConnInfo::parse(&s).unwrap();
        let dbg = format!("{info:?}");
        assert!(!dbg.contains("hunter2") && dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn set_and_map_values() {
        let mut info = ConnInfo::parse("host=${H} password=${P}").unwrap();
        info.try_map_values(|_, v| Ok::<_, ()>(v.replace("${H}", "db").replace("${P}", "pw")))
            .unwrap();
        assert_eq!(info.get("host"), Some("db"));
        assert_eq!(info.password(), Some("pw"));
        assert!(info.set("port", "5433").is_ok());
        assert!(info.set("prot", "5433").is_err());
        assert_eq!(info.remove("password").as_deref(), Some("pw"));
    }

    #[test]
    fn encode_round_trips() {
        assert_eq!(encode("a b@c/é"), "a%20b%40c%2F%C3%A9");
        assert_eq!(decode(&encode("a b@c/é")).unwrap(), "a b@c/é");
    }
}
