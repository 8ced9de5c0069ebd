//! PostgreSQL's own `pg_dump` as the source of DDL for the object kinds pgtransit does not
//! generate itself (operators, operator classes and families, casts, text search objects,
//! access methods, foreign-data wrappers, servers, user mappings, foreign tables, transforms,
//! base and shell types, event triggers, conversions, languages), and as the yardstick of
//! coverage: every entry of `pg_dump --schema-only` is either an object pgtransit generates, one
//! it takes from here, or one preflight refuses by name (`object_not_migrated`).
//!
//! pg_dump runs read-only (`--schema-only`), under the snapshot of the catalog read when the
//! server can export one, with the connection settings every other session uses (passed in the
//! child's environment, never on its command line). Its plain output with `--verbose` names
//! each entry's catalog and OID (`-- TOC entry 1654 (class 2617 OID 16412)`), the entries it
//! depends on, its name, type, schema and owner: [`parse`] reads that back.

use std::path::{Path, PathBuf};

use crate::conn::Resolved;

/// One entry of a plain `pg_dump --verbose` script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// pg_dump's id of the entry.
    pub dump_id: u32,
    /// The system catalog the object lives in (`pg_class.oid` of e.g. `pg_operator`); 0 for
    /// entries that are not objects of their own (comments, privileges, shell types).
    pub class: u32,
    /// The object's OID in that catalog (0 with `class` 0).
    pub oid: u32,
    /// Entries (by `dump_id`) it depends on, as far as pg_dump prints them (for comments and
    /// privileges: the object they are about).
    pub deps: Vec<u32>,
    /// pg_dump's tag (`===`, `TYPE widget`, `USER MAPPING alice SERVER srv1`).
    pub name: String,
    /// pg_dump's description (`OPERATOR`, `COMMENT`, `SHELL TYPE`, ...).
    pub kind: String,
    /// Schema, empty for objects outside schemas.
    pub schema: String,
    /// Owner, empty when pg_dump prints none.
    pub owner: String,
    /// The SQL, trimmed; statements end with `;`.
    pub sql: String,
}

/// Reads the entries of a plain `pg_dump --verbose` script.
pub fn parse(script: &str) -> Vec<Entry> {
    // A string literal (a comment's text, say) may hold anything, even what looks like an
    // entry's header: only lines that start at the top level count.
    let lines = lines_with_level(script);
    fn header((line, top): (&str, bool)) -> Option<&str> {
        if top { line.strip_prefix("-- TOC entry ") } else { None }
    }
    let mut out: Vec<Entry> = vec![];
    let mut i = 0;
    while i < lines.len() {
        let Some(head) = header(lines[i]) else {
            let (line, _) = lines[i];
            if let Some(last) = out.last_mut() {
                append_sql(last, line);
            }
            i += 1;
            continue;
        };
        // The comment block: `--`, `-- TOC entry`, `-- Dependencies:`, `-- Name:`, `--`.
        if let Some(last) = out.last_mut() {
            // The `--` that opened this block belongs to it, not to the previous SQL.
            if last.sql.ends_with("\n--") || last.sql == "--" {
                last.sql.truncate(last.sql.len().saturating_sub(2));
            }
            last.sql = last.sql.trim().to_string();
        }
        let mut entry = Entry {
            dump_id: 0,
            class: 0,
            oid: 0,
            deps: vec![],
            name: String::new(),
            kind: String::new(),
            schema: String::new(),
            owner: String::new(),
            sql: String::new(),
        };
        parse_toc_line(head, &mut entry);
        i += 1;
        while i < lines.len() && lines[i].0.starts_with("-- ") {
            let line = lines[i].0;
            if let Some(deps) = line.strip_prefix("-- Dependencies: ") {
                entry.deps.extend(deps.split_whitespace().filter_map(|d| d.parse::<u32>().ok()));
            } else if let Some(rest) = line.strip_prefix("-- Name: ") {
                parse_name_line(rest, &mut entry);
            }
            i += 1;
        }
        // The closing `--` of the block.
        if i < lines.len() && lines[i].0 == "--" {
            i += 1;
        }
        out.push(entry);
    }
    if let Some(last) = out.last_mut() {
        last.sql = last.sql.trim().to_string();
    }
    for e in &mut out {
        e.sql = strip_trailer(&e.sql);
    }
    out
}

fn append_sql(e: &mut Entry, line: &str) {
    if !e.sql.is_empty() {
        e.sql.push('\n');
    }
    e.sql.push_str(line);
}

/// `1654 (class 2617 OID 16412)`.
fn parse_toc_line(head: &str, e: &mut Entry) {
    let mut words = head.split(|c: char| c.is_whitespace() || c == '(' || c == ')');
    e.dump_id = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let words: Vec<&str> = words.filter(|w| !w.is_empty()).collect();
    for pair in words.windows(2) {
        match pair[0] {
            "class" => e.class = pair[1].parse().unwrap_or(0),
            "OID" => e.oid = pair[1].parse().unwrap_or(0),
            _ => {}
        }
    }
}

/// `===; Type: OPERATOR; Schema: public; Owner: alice` (a name may itself hold `; `: the fields
/// are taken from the end).
fn parse_name_line(rest: &str, e: &mut Entry) {
    let (rest, owner) = rest.rsplit_once("; Owner: ").unwrap_or((rest, ""));
    let (rest, schema) = rest.rsplit_once("; Schema: ").unwrap_or((rest, ""));
    let (name, kind) = rest.rsplit_once("; Type: ").unwrap_or((rest, ""));
    e.name = name.to_string();
    e.kind = kind.to_string();
    e.schema = if schema == "-" { String::new() } else { schema.to_string() };
    e.owner = if owner == "-" { String::new() } else { owner.to_string() };
}

/// An entry's SQL as it is run: without the script's closing lines (after the last entry),
/// without the session settings pg_dump writes between entries for the next one
/// (`SET default_tablespace`, `SET default_table_access_method`: the objects taken from here
/// have neither), and without the blank lines between statements. Lines inside a literal are
/// kept as they are, whatever they look like.
fn strip_trailer(sql: &str) -> String {
    let mut kept: Vec<&str> = vec![];
    for (line, top) in lines_with_level(sql) {
        if !top {
            kept.push(line);
            continue;
        }
        if line.starts_with("\\unrestrict")
            || line.starts_with("-- Completed on")
            || line.starts_with("-- PostgreSQL database dump complete")
        {
            break;
        }
        if line.starts_with("SET default_tablespace = ")
            || line.starts_with("SET default_table_access_method = ")
        {
            continue;
        }
        if line.is_empty() {
            continue;
        }
        kept.push(line);
    }
    let text = kept.join("\n");
    text.trim().trim_end_matches("\n--").trim().to_string()
}

/// A `pg_dump` that can dump every server of `majors`, and its major version: the one
/// `$PGTRANSIT_PG_DUMP` names, else the newest one found (`$PGTRANSIT_PG_BIN`, `PATH`,
/// `/usr/lib/postgresql/*/bin`). A pg_dump refuses servers newer than itself.
pub fn find_pg_dump(majors: &[i32]) -> Result<(PathBuf, i32), String> {
    let need = majors.iter().copied().max().unwrap_or(0);
    if let Some(path) = std::env::var_os("PGTRANSIT_PG_DUMP").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match version_of(&path) {
            Some(major) if major >= need => Ok((path, major)),
            Some(major) => Err(format!(
                "PGTRANSIT_PG_DUMP={} is PostgreSQL {major}'s pg_dump, which cannot dump a \
                 PostgreSQL {need} server",
                path.display()
            )),
            None => Err(format!("PGTRANSIT_PG_DUMP={} is not a pg_dump", path.display())),
        };
    }
    let mut dirs: Vec<PathBuf> = vec![];
    let chosen = std::env::var_os("PGTRANSIT_PG_BIN").filter(|d| !d.is_empty()).map(PathBuf::from);
    dirs.extend(chosen.clone());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.filter_map(Result::ok).map(|e| e.path().join("bin")));
    }
    let mut best: Option<(PathBuf, i32, bool)> = None;
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        let candidate = dir.join("pg_dump");
        // (One file under several names, /bin and /usr/bin say, is asked once; nothing is
        // started for a name that is no file.)
        let Ok(file) = candidate.canonicalize() else { continue };
        if !file.is_file() || !seen.insert(file.clone()) {
            continue;
        }
        let Some(major) = version_of(&candidate) else { continue };
        // Of two of one version, the one in PGTRANSIT_PG_BIN, else a pg_dump itself rather
        // than a wrapper that starts one (Debian's pg_wrapper, a Perl script: 50 ms more for
        // every dump); else the first.
        let preferred =
            chosen.as_ref() == Some(&dir) || file.file_name().is_some_and(|n| n == "pg_dump");
        if best.as_ref().is_none_or(|(_, m, p)| (major, preferred) > (*m, *p)) {
            best = Some((candidate, major, preferred));
        }
    }
    let best = best.map(|(path, major, _)| (path, major));
    match best {
        Some((path, major)) if major >= need => Ok((path, major)),
        Some((path, major)) => Err(format!(
            "the newest pg_dump found ({}, PostgreSQL {major}) cannot dump a PostgreSQL {need} \
             server",
            path.display()
        )),
        None => Err("no pg_dump found".into()),
    }
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15. A version found is asked once
/// per path in a process (a plan looks for a pg_dump for each server); none found is asked
/// again next time.
fn version_of(pg_dump: &Path) -> Option<i32> {
    static KNOWN: std::sync::Mutex<Vec<(PathBuf, Option<i32>)>> = std::sync::Mutex::new(vec![]);
    let known = |k: &Vec<(PathBuf, Option<i32>)>| k.iter().find(|(p, _)| p == pg_dump).map(|v| v.1);
    if let Some(v) = known(&KNOWN.lock().unwrap_or_else(|e| e.into_inner())) {
        return v;
    }
    let asked = || {
        let out = std::process::Command::new(pg_dump).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().nth(2)?;
        version.split('.').next()?.parse().ok()
    };
    let major = asked();
    if major.is_some() {
        KNOWN.lock().unwrap_or_else(|e| e.into_inner()).push((pg_dump.to_path_buf(), major));
    }
    major
}

/// What to install for a pg_dump of PostgreSQL `major`.
pub fn install_hint(major: i32) -> String {
    format!(
        "install PostgreSQL {major}'s client tools (Debian/Ubuntu: `apt-get install \
         postgresql-client-{major}` from apt.postgresql.org), or set PGTRANSIT_PG_BIN to a \
         directory holding a pg_dump of version {major} or newer"
    )
}

/// Runs `pg_dump --schema-only --verbose` against the server `r` describes (under `snapshot`,
/// an exported snapshot of the caller's open transaction, when given; without the schemas
/// `exclude_schemas` names) and returns the script.
pub async fn dump_schema(
    pg_dump: &Path,
    major: i32,
    r: &Resolved,
    snapshot: Option<&str>,
    exclude_schemas: &[String],
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(pg_dump);
    for schema in exclude_schemas {
        // A pattern in double quotes matches the name exactly.
        cmd.arg(format!("--exclude-schema=\"{}\"", schema.replace('"', "\"\"")));
    }
    if major >= 18 {
        // Planner statistics are not schema (and not pgtransit's to copy).
        cmd.arg("--no-statistics");
    }
    // A lock pg_dump cannot get within a minute (an ALTER TABLE waiting or running): it stops,
    // and plan says so, rather than hang.
    cmd.args(["--schema-only", "--verbose", "--no-sync", "--lock-wait-timeout=60000"]);
    if let Some(s) = snapshot {
        cmd.arg(format!("--snapshot={s}"));
    }
    // Everything libpq needs, in the environment (never a password on the command line).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    for (key, value) in r.libpq_env("pgtransit/pg_dump") {
        cmd.env(key, value);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", pg_dump.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("error:") || l.contains("ERROR") || l.contains("DETAIL"))
            .collect();
        return Err(format!("pg_dump failed ({}): {}", out.status, errors.join(" ")));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("pg_dump's output is not UTF-8: {e}"))
}

/// pg_dump's SQL with its role names mapped (`roles` gives the target's name of a source role,
/// or none): owners (`ALTER ... OWNER TO`), grantees (`GRANT ... TO`, `REVOKE ... FROM`),
/// grantors (`SET SESSION AUTHORIZATION`) and user mappings (`CREATE USER MAPPING FOR`), whole
/// statements only (never text inside a literal or a comment). A statement whose role maps to
/// none is left out (the object keeps the creating role as owner, the grant is not made),
/// except a user mapping's, which names its role. Every role name is written quoted, on both
/// servers' sides alike, so that the texts compare.
pub fn map_roles(sql: &str, roles: &dyn Fn(&str) -> Option<String>) -> String {
    let mask = top_level(sql);
    let mut out = String::with_capacity(sql.len());
    for (start, end) in statements(sql, &mask) {
        let statement = &sql[start..end];
        let Some((at, to)) = role_position(statement, &mask[start..end]) else {
            out.push_str(statement);
            continue;
        };
        let written = &statement[at..to];
        if is_public(written) {
            out.push_str(statement);
            continue;
        }
        match roles(&unquote(written)) {
            Some(mapped) => {
                out.push_str(&statement[..at]);
                out.push_str(&crate::sql::ident(&mapped));
                out.push_str(&statement[to..]);
            }
            None if statement.trim_start().starts_with("CREATE USER MAPPING") => {
                out.push_str(statement);
            }
            None => {}
        }
    }
    // (A statement left out goes with the line break before it: no blank line is left.)
    out.trim().to_string()
}

/// The roles pg_dump's SQL names (owners, grantees, grantors, user mappings' users).
pub fn roles_named(sql: &str) -> Vec<String> {
    let mask = top_level(sql);
    statements(sql, &mask)
        .into_iter()
        .filter_map(|(start, end)| {
            let statement = &sql[start..end];
            let (at, to) = role_position(statement, &mask[start..end])?;
            let written = &statement[at..to];
            (!is_public(written)).then(|| unquote(written))
        })
        .collect()
}

fn is_public(written: &str) -> bool {
    written.eq_ignore_ascii_case("PUBLIC")
}

/// The statements of `sql`, as byte ranges (each with its `;` and what precedes it since the
/// previous one), split at semicolons outside literals, quoted names and comments (`mask`:
/// [`top_level`] of `sql`).
fn statements(sql: &str, mask: &[bool]) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut start = 0;
    for (i, b) in sql.bytes().enumerate() {
        if b == b';' && mask[i] {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < sql.len() {
        out.push((start, sql.len()));
    }
    out
}

/// Where one statement of pg_dump's names a role: (start, end) byte offsets, found only
/// outside its literals and comments (`mask`: [`top_level`] of the statement).
fn role_position(statement: &str, mask: &[bool]) -> Option<(usize, usize)> {
    let text = statement.trim_start();
    let lead = statement.len() - text.len();
    let last_top = |pattern: &str| -> Option<usize> {
        statement
            .match_indices(pattern)
            .filter(|(i, _)| mask[*i] && mask[i + pattern.len() - 1])
            .map(|(i, _)| i + pattern.len())
            .last()
    };
    let tail = |from: usize| -> (usize, usize) {
        let rest = &statement[from..];
        let end = rest.find(" WITH GRANT OPTION").or_else(|| rest.rfind(';')).unwrap_or(rest.len());
        (from, from + rest[..end].trim_end().len())
    };
    if text.starts_with("ALTER ") {
        return last_top(" OWNER TO ").map(tail);
    }
    if text.starts_with("GRANT ") {
        return last_top(" TO ").map(tail);
    }
    if text.starts_with("REVOKE ") {
        return last_top(" FROM ").map(tail);
    }
    if text.starts_with("SET SESSION AUTHORIZATION ") {
        return Some(tail(lead + "SET SESSION AUTHORIZATION ".len()));
    }
    if text.starts_with("CREATE USER MAPPING FOR ") {
        let at = lead + "CREATE USER MAPPING FOR ".len();
        let end = at + statement[at..].find(" SERVER ")?;
        return Some((at, end));
    }
    None
}

/// A role name as pg_dump writes it: bare, or double-quoted with `""` for `"`.
fn unquote(written: &str) -> String {
    match written.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => written.to_string(),
    }
}

/// The lines of `sql` (without `\r`), each with whether it starts at the top level (not inside
/// a literal, a quoted name or a block comment).
pub fn lines_with_level(sql: &str) -> Vec<(&str, bool)> {
    let mask = top_level(sql);
    let mut offset = 0;
    sql.split('\n')
        .map(|line| {
            let top = mask.get(offset).copied().unwrap_or(true);
            offset += line.len() + 1;
            (line.trim_end_matches('\r'), top)
        })
        .collect()
}

/// For each byte of `sql`, whether it lies at its top level: outside string literals (`'...'`,
/// `E'...'`), quoted names, dollar-quoted strings and comments (whose opening byte counts as
/// outside: it is where they start).
fn top_level(sql: &str) -> Vec<bool> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut mask = vec![true; n];
    let mut i = 0;
    while i < n {
        match quoted_end(b, i) {
            Some(end) => {
                // The opening byte itself is where the construct starts, at the top level.
                mask[i + 1..end].iter_mut().for_each(|m| *m = false);
                i = end;
            }
            None => i += 1,
        }
    }
    mask
}

/// Where the literal, quoted name, dollar-quoted string or comment starting at `b[i]` ends
/// (the byte after it; the end of `b` if it never closes), or `None` if none starts there.
fn quoted_end(b: &[u8], i: usize) -> Option<usize> {
    let n = b.len();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let next = b.get(i + 1).copied();
    // Scans a quoted run closed by `q`, where `qq` stands for one `q`.
    let closing = |q: u8, backslash: bool| {
        let mut j = i + 1;
        loop {
            match b.get(j) {
                None => return n,
                Some(b'\\') if backslash => j += 2,
                Some(&c) if c == q && b.get(j + 1) == Some(&q) => j += 2,
                Some(&c) if c == q => return j + 1,
                Some(_) => j += 1,
            }
        }
    };
    match b[i] {
        b'\'' => {
            let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !word(b[i - 2]));
            Some(closing(b'\'', escapes))
        }
        b'"' => Some(closing(b'"', false)),
        b'-' if next == Some(b'-') => {
            Some(b[i..].iter().position(|&c| c == b'\n').map_or(n, |k| i + k))
        }
        b'/' if next == Some(b'*') => {
            let (mut depth, mut j) = (1, i + 2);
            while j < n && depth > 0 {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            Some(j)
        }
        b'$' if (i == 0 || !word(b[i - 1])) && !next.is_some_and(|c| c.is_ascii_digit()) => {
            let mut j = i + 1;
            while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j >= n || b[j] != b'$' {
                return None;
            }
            let tag = &b[i..=j];
            let body = j + 1;
            Some(
                b[body..]
                    .windows(tag.len())
                    .position(|w| w == tag)
                    .map_or(n, |k| body + k + tag.len()),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "--
-- PostgreSQL database dump
--

SET statement_timeout = 0;

--
-- TOC entry 845 (class 0 OID 0)
-- Name: widget; Type: SHELL TYPE; Schema: public; Owner: postgres
--

CREATE TYPE public.widget;


--
-- TOC entry 1654 (class 2617 OID 16412)
-- Name: ===; Type: OPERATOR; Schema: public; Owner: alice
--

CREATE OPERATOR public.=== (
    FUNCTION = public.eq3,
    LEFTARG = integer,
    RIGHTARG = integer
);


ALTER OPERATOR public.=== (integer, integer) OWNER TO alice;

--
-- TOC entry 3368 (class 0 OID 0)
-- Dependencies: 1654
-- Name: OPERATOR === (integer, integer); Type: COMMENT; Schema: public; Owner: alice
--

COMMENT ON OPERATOR public.=== (integer, integer) IS 'three; Type: x';


--
-- TOC entry 3216 (class 2605 OID 16414)
-- Name: CAST (public.widget AS text); Type: CAST; Schema: -; Owner: -
--

CREATE CAST (public.widget AS text) WITHOUT FUNCTION;


-- Completed on 2026-12-04 20:30:45 UTC

--
-- PostgreSQL database dump complete
--

\\unrestrict abc
";

    #[test]
    fn roles_in_dumped_sql_are_mapped_and_unmapped_ones_left_out() {
        let roles = |r: &str| match r {
            "alice" => Some("Alice Admin".to_string()),
            "gone" => None,
            other => Some(other.to_string()),
        };
        let sql = "CREATE OPERATOR public.=== (FUNCTION = public.eq3);\n\
                   ALTER OPERATOR public.=== (integer, integer) OWNER TO alice;\n\
                   GRANT USAGE ON FOREIGN SERVER srv1 TO \"gone\";\n\
                   GRANT USAGE ON FOREIGN SERVER srv1 TO alice WITH GRANT OPTION;\n\
                   REVOKE ALL ON FOREIGN SERVER srv1 FROM PUBLIC;\n\
                   CREATE USER MAPPING FOR alice SERVER srv1 OPTIONS (\"user\" 'x');\n\
                   ALTER SERVER srv1 OWNER TO bob;";
        assert_eq!(roles_named(sql), ["alice", "gone", "alice", "alice", "bob"]);
        assert_eq!(
            map_roles(sql, &roles),
            "CREATE OPERATOR public.=== (FUNCTION = public.eq3);\n\
             ALTER OPERATOR public.=== (integer, integer) OWNER TO \"Alice Admin\";\n\
             GRANT USAGE ON FOREIGN SERVER srv1 TO \"Alice Admin\" WITH GRANT OPTION;\n\
             REVOKE ALL ON FOREIGN SERVER srv1 FROM PUBLIC;\n\
             CREATE USER MAPPING FOR \"Alice Admin\" SERVER srv1 OPTIONS (\"user\" 'x');\n\
             ALTER SERVER srv1 OWNER TO \"bob\";"
        );
    }

    #[test]
    fn text_inside_literals_is_never_taken_for_statements_entries_or_roles() {
        // A comment whose text looks like an owner statement, then one that would run SQL if
        // the first one's closing quote were lost.
        let sql = "COMMENT ON FOREIGN TABLE app.ft2 IS 'notes\n\nALTER nothing OWNER TO zz';\n\
                   COMMENT ON COLUMN app.ft2.a IS '; CREATE ROLE pwned SUPERUSER LOGIN; --';\n\
                   ALTER FOREIGN TABLE app.ft2 OWNER TO zz;";
        let none = |_: &str| None;
        assert_eq!(
            map_roles(sql, &none),
            "COMMENT ON FOREIGN TABLE app.ft2 IS 'notes\n\nALTER nothing OWNER TO zz';\n\
             COMMENT ON COLUMN app.ft2.a IS '; CREATE ROLE pwned SUPERUSER LOGIN; --';"
        );
        assert_eq!(roles_named(sql), ["zz"]);
        // A literal holding an entry's header, a blank line and a `SET`: all kept as they are.
        let script = "--\n-- TOC entry 7 (class 0 OID 0)\n\
                      -- Name: TABLE t; Type: COMMENT; Schema: public; Owner: postgres\n--\n\n\
                      COMMENT ON TABLE public.t IS 'a\n\n--\n-- TOC entry 8 (class 1259 OID 9)\n\
                      SET default_tablespace = x;';\n";
        let e = parse(script);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].sql,
            "COMMENT ON TABLE public.t IS 'a\n\n--\n-- TOC entry 8 (class 1259 OID 9)\n\
             SET default_tablespace = x;';"
        );
        assert_eq!(
            top_level("a $q$;$q$ ;"),
            [true, true, true, false, false, false, false, false, false, true, true]
        );
    }

    #[test]
    fn verbose_scripts_parse_into_entries_with_catalog_ids_dependencies_and_sql() {
        let e = parse(SCRIPT);
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].kind.as_str(), e[0].class, e[0].oid), ("SHELL TYPE", 0, 0));
        assert_eq!(e[0].sql, "CREATE TYPE public.widget;");
        assert_eq!((e[1].dump_id, e[1].class, e[1].oid), (1654, 2617, 16412));
        assert_eq!(
            (e[1].name.as_str(), e[1].schema.as_str(), e[1].owner.as_str()),
            ("===", "public", "alice")
        );
        assert!(e[1].sql.starts_with("CREATE OPERATOR public.=== ("), "{}", e[1].sql);
        assert!(e[1].sql.ends_with("OWNER TO alice;"), "{}", e[1].sql);
        assert_eq!(e[2].deps, [1654]);
        assert_eq!(e[2].kind, "COMMENT");
        assert_eq!(e[2].name, "OPERATOR === (integer, integer)");
        assert_eq!(
            (e[3].name.as_str(), e[3].kind.as_str()),
            ("CAST (public.widget AS text)", "CAST")
        );
        assert_eq!((e[3].schema.as_str(), e[3].owner.as_str()), ("", ""));
        assert_eq!(e[3].sql, "CREATE CAST (public.widget AS text) WITHOUT FUNCTION;");
    }
}
