//! The migration plan: the user's YAML file (`plans/*.yaml`), its serde model, and loading it.
//!
//! This module owns the file format (and so the JSON Schema `pgtransit schema` prints), the
//! structural checks that need no server (version, name, no inline passwords, `${VAR}`
//! references), and the located errors that point at the file, line and column. It does no
//! network I/O: what the servers say about the plan is `preflight`'s business.

// A SpecError carries the file's text for its snippet; it is built at most once per run, so its
// size does not matter and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::conn::ConnInfo;

/// The only format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// A pgtransit migration plan: which database moves from which server to which, and how.
///
/// It holds no secrets: passwords come from `PGPASSWORD`, a password file (`~/.pgpass` or
/// `passfile`), or an environment variable referenced as `${NAME}` in a URL.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pgtransit migration plan")]
pub struct MigrationPlan {
    /// Format version of this file. Always `1`.
    pub version: u32,
    /// Name of the migration. It names the state directory and everything pgtransit creates on
    /// the servers (replication slot, publication), so it must stay the same for the whole
    /// migration. Lowercase letters, digits, `_` and `-`; at most 40 characters.
    #[schemars(with = "String", regex(pattern = r"^[a-z][a-z0-9_-]{0,39}$"))]
    pub name: Spanned<String>,
    /// `online` (default): copy, then stream changes until cutover. `offline`: copy schema, data,
    /// post-load objects and sequences once, with no change streaming.
    #[serde(default)]
    pub mode: Mode,
    /// The server the database moves from.
    pub source: Endpoint,
    /// The server the database moves to.
    pub target: Endpoint,
    /// Several databases of the source server in one migration: every database of the source
    /// these name patterns select (`include: ["*"]`: all but templates and cloud providers'
    /// own) moves to the database of the same name on the target, each with every other option
    /// of this plan. `source.url` and `target.url` then name the servers; the source's database
    /// in it (`postgres` when unset) is where the databases are listed. Default: the one
    /// database of `source.url`.
    #[serde(default)]
    pub databases: Option<Filter>,
    /// Which schemas and tables are in scope (default: every schema but the system ones).
    #[serde(default)]
    pub objects: Objects,
    /// What to do about roles (owners, grantees) that exist on the source but not the target.
    #[serde(default)]
    pub roles: Roles,
    /// How the initial copy runs.
    #[serde(default)]
    pub load: Load,
    /// Change streaming (online mode).
    #[serde(default)]
    pub sync: SyncOptions,
    /// How the switch to the target happens (online mode).
    #[serde(default)]
    pub cutover: Cutover,
    /// How the data is proven identical.
    #[serde(default)]
    pub verify: Verify,
    /// Directory for the state of this migration, relative to this file.
    /// Default: `.pgtransit/<name>/` beside this file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Written by pgtransit, not by hand: this plan is the rollback window of the migration
    /// named here (its target streamed back to its source from the cutover point: nothing is
    /// copied, every row is there).
    #[serde(default)]
    pub rollback_of: Option<String>,
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Copy, then stream changes (logical replication) until cutover.
    #[default]
    Online,
    /// Copy once: schema, data, post-load objects, sequences. No change streaming.
    Offline,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
        })
    }
}

/// One server: how to reach the database.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// A libpq connection string, as a URL (`postgresql://user@host:5432/db?sslmode=verify-full`)
    /// or as `key=value` pairs. Unset parts come from the `PG*` environment variables, as with
    /// psql. `${NAME}` is replaced by the environment variable `NAME` (`$${` is a literal `${`).
    /// A literal password is refused: use `PGPASSWORD`, `~/.pgpass`, or `${NAME}`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
}

/// Which objects are in scope. Patterns are `schema.table` (or `table`, any schema), with `*`
/// and `?` wildcards; double quotes keep dots and wildcards literal (`"my.schema"."T*"`). Names
/// compare exactly (case-sensitive), as in the catalog. Every pattern must match something.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objects {
    /// Schemas to include and exclude.
    #[serde(default)]
    pub schemas: Filter,
    /// Tables (and the sequences, indexes, constraints and triggers that belong to them).
    #[serde(default)]
    pub tables: Filter,
}

/// An include list (empty: everything) and an exclude list (applied after it).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only these (default: all).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub include: Vec<Spanned<String>>,
    /// Never these.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub exclude: Vec<Spanned<String>>,
}

/// Role handling.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Source role name → target role name, for owners and grantees.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// A source role that owns or is granted something in scope, is not mapped, and does not
    /// exist on the target: `error` (default) stops the plan; `create` creates it on the target
    /// as on the source (attributes, password verifier, settings, memberships; with the roles
    /// that are members of it and those it is a member of), shown in the plan; `skip` gives its
    /// objects to the target's connecting role and leaves out its grants (each one reported).
    #[serde(default)]
    pub missing: MissingRoles,
    /// Source roles to create on the target as on the source even when nothing in scope needs
    /// them (login roles of the applications, say): names, with `*` and `?` wildcards (`"*"`:
    /// every role but the predefined `pg_*` ones). Their members and the roles they are
    /// members of come with them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub include: Vec<Spanned<String>>,
}

/// See `roles.missing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingRoles {
    /// Stop: the role must exist on the target or be mapped.
    #[default]
    Error,
    /// Create the role on the target as on the source.
    Create,
    /// Use the target's connecting role as owner; leave the grants out.
    Skip,
}

/// Initial copy.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Tables (or table parts) copied at once. Default: chosen from the machine and servers.
    #[serde(default)]
    #[schemars(range(min = 1, max = 256))]
    pub jobs: Option<u32>,
    /// Tables larger than this are split into parts copied in parallel (`"10GB"`, `"512MB"`).
    #[serde(default)]
    pub split_larger_than: Option<ByteSize>,
}

/// Change streaming (online mode).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncOptions {
    /// The migration is ready for cutover once the lag is below this (`"5s"`, `"500ms"`).
    /// Default `5s`.
    #[serde(default)]
    pub max_lag: Option<Duration>,
    /// Tables with neither a primary key nor a replica identity cannot replicate updates and
    /// deletes: `error` (default) stops the plan; `replica_identity_full` sets
    /// `REPLICA IDENTITY FULL` on them on the source (shown in the plan).
    #[serde(default)]
    pub tables_without_key: KeylessTables,
    /// `pgtransit status` warns when the slot keeps more WAL than this on the source's disk
    /// (`"1GB"`, the default; `"50GB"` for a busy source with room to spare).
    #[serde(default)]
    pub slot_wal_warning: Option<ByteSize>,
}

/// See `sync.tables_without_key`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeylessTables {
    /// Stop the plan and name each table.
    #[default]
    Error,
    /// `ALTER TABLE ... REPLICA IDENTITY FULL` on the source.
    ReplicaIdentityFull,
}

/// Cutover (online mode).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cutover {
    /// `manual` (default): `pgtransit cutover` triggers it. `auto`: as soon as ready.
    #[serde(default)]
    pub mode: CutoverMode,
    /// How writes on the source are stopped for every session but the cutover's own.
    #[serde(default)]
    pub fence: Fence,
    /// Added to every sequence value copied to the target (default 0).
    #[serde(default)]
    pub sequence_margin: u64,
    /// Keep a way back (default false): at the cutover, while the source is fenced, a slot and
    /// publication on the target start exactly at the cutover point, and the old source is
    /// kept current with the target's changes (`pgtransit apply` streams them back) until
    /// `pgtransit finish`; `pgtransit rollback` cuts over in the other direction.
    #[serde(default)]
    pub rollback_window: bool,
}

/// See `cutover.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CutoverMode {
    /// Wait for `pgtransit cutover`.
    #[default]
    Manual,
    /// Cut over as soon as the lag is under `sync.max_lag`.
    Auto,
}

/// See `cutover.fence`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    /// Make the database read-only for new sessions and end every session of it but the
    /// cutover's own, whatever its role.
    #[default]
    ReadOnly,
    /// Lock every table in scope in `EXCLUSIVE` mode (reads go on, writes wait).
    LockTables,
}

/// Verification.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// Compare row counts per table (default true).
    #[serde(default = "yes")]
    pub row_counts: bool,
    /// Compare per-table checksums, chunked by primary key (default true).
    #[serde(default = "yes")]
    pub checksums: bool,
    /// Online mode: compare source and target while streaming, chunk by chunk at consistent
    /// points, so that the cutover compares only what changed since (default true; needs
    /// `checksums`).
    #[serde(default = "yes")]
    pub continuous: bool,
    /// Continuous verification reads at most this many rows per second on each server
    /// (default 100000; 0: as fast as the servers answer).
    #[serde(default = "default_rows_per_second")]
    pub rows_per_second: u64,
    /// Online mode: rows continuous verification finds different on the target are copied
    /// again from the source at a consistent point (default false: the cutover refuses until
    /// they are fixed).
    #[serde(default)]
    pub repair: bool,
}

fn default_rows_per_second() -> u64 {
    100_000
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            row_counts: true,
            checksums: true,
            continuous: true,
            rows_per_second: default_rows_per_second(),
            repair: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// A size in bytes, written `"512MB"`, `"10GB"`, `"1.5TiB"` or as a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: a number of bytes, or a string such as \"512MB\" or \"10GB\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([kKMGT]i?B|B)?\s*$" }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_byte_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size such as \"10GB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!("unknown size unit `{other}`: use B, kB, MB, GB, TB or KiB..TiB"));
        }
    };
    Ok((n * mult as f64) as u64)
}

/// A duration, written `"500ms"`, `"5s"`, `"2m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as \"500ms\", \"5s\", \"2m\" or \"1h\".",
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*(ms|s|m|h)\s*$"
        })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Duration).map_err(serde::de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as \"5s\""))?;
    Ok(match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        other => return Err(format!("unknown duration unit `{other}`: use ms, s, m or h")),
    })
}

/// A migration plan read from a file, with what was derived from where it lives.
#[derive(Debug, Clone)]
pub struct LoadedMigrationPlan {
    /// The parsed file.
    pub spec: MigrationPlan,
    /// The file it was read from.
    pub path: PathBuf,
    /// Its text, exactly as read (it holds no secrets: that was checked).
    pub text: String,
    /// The source connection string with `${VAR}` references replaced. Secret: never print it.
    pub source_conninfo: ConnInfo,
    /// The target connection string with `${VAR}` references replaced. Secret: never print it.
    pub target_conninfo: ConnInfo,
}

impl LoadedMigrationPlan {
    /// Where this migration's state lives.
    pub fn state_dir(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        match &self.spec.state_dir {
            Some(dir) => base.join(dir),
            None => base.join(".pgtransit").join(&self.spec.name.value),
        }
    }
}

/// A problem in the migration plan file, located in it.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(pgtransit::plan_file))]
pub struct SpecError {
    /// What is wrong.
    pub message: String,
    /// The file, for the snippet.
    #[source_code]
    pub src: NamedSource<String>,
    /// Where.
    #[label("{label}")]
    pub span: Option<SourceSpan>,
    /// The label next to the span.
    pub label: String,
    /// The fix.
    #[help]
    pub help: Option<String>,
    /// 1-based line and column, for messages that are not rendered with a snippet.
    pub line_col: Option<(u64, u64)>,
}

impl SpecError {
    /// An error at `loc`. The snippet shows the file with every password masked (see
    /// [`redact_secrets`]), so no error ever prints a secret, whatever line it points at.
    fn at(path: &Path, text: &str, loc: Option<serde_saphyr::Location>, message: String) -> Self {
        let span = loc.map(|l| {
            let s = l.span();
            let off = s.byte_offset().unwrap_or(s.offset()) as usize;
            let len = s.byte_len().unwrap_or(s.len()).max(1) as usize;
            SourceSpan::from((off.min(text.len()), len))
        });
        SpecError {
            label: message.clone(),
            message,
            src: NamedSource::new(path.display().to_string(), redact_secrets(text)),
            span,
            help: None,
            line_col: loc.map(|l| (l.line(), l.column())),
        }
    }

    fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:column: message`, for logs and JSON.
    pub fn one_line(&self) -> String {
        match self.line_col {
            Some((l, c)) => format!("{}:{l}:{c}: {}", self.src.name(), self.message),
            None => format!("{}: {}", self.src.name(), self.message),
        }
    }
}

/// Reads and checks a migration plan file. Environment variables for `${VAR}` come from `env`.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedMigrationPlan, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecError::at(path, "", None, format!("cannot read the migration plan: {e}"))
            .with_help("pass the path of a migration plan YAML file, e.g. plans/pagila.yaml")
    })?;
    parse(path, text, env)
}

/// Parses and checks a migration plan from its text (`path` is used in messages and to find the
/// state directory).
pub fn parse(
    path: &Path,
    text: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedMigrationPlan, SpecError> {
    let spec: MigrationPlan =
        serde_saphyr::from_str(&text).map_err(|e| yaml_error(path, &text, &e))?;
    let at = |loc: serde_saphyr::Location, msg: String| SpecError::at(path, &text, Some(loc), msg);

    if spec.version != FORMAT_VERSION {
        return Err(SpecError::at(
            path,
            &text,
            None,
            format!("unsupported format version {} (this pgtransit reads version 1)", spec.version),
        )
        .with_help("set `version: 1`"));
    }
    let name = &spec.name.value;
    let valid_name = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid_name {
        return Err(at(spec.name.referenced, format!("invalid migration name `{name}`"))
            .with_help(
                "use lowercase letters, digits, `_` and `-`, starting with a letter, at most 40 \
             characters: the name becomes part of the replication slot's name",
            ));
    }
    for pattern in spec.objects.schemas.include.iter().chain(&spec.objects.schemas.exclude) {
        if let Err(e) = crate::pattern::Pattern::parse_schema(&pattern.value) {
            return Err(at(pattern.referenced, e));
        }
    }
    if let Some(databases) = &spec.databases {
        for pattern in databases.include.iter().chain(&databases.exclude) {
            if let Err(e) = crate::pattern::Pattern::parse_name(&pattern.value, "database") {
                return Err(at(pattern.referenced, e));
            }
        }
    }
    for pattern in &spec.roles.include {
        if let Err(e) = crate::pattern::Pattern::parse_name(&pattern.value, "role") {
            return Err(at(pattern.referenced, e));
        }
    }
    for pattern in spec.objects.tables.include.iter().chain(&spec.objects.tables.exclude) {
        if let Err(e) = crate::pattern::Pattern::parse_table(&pattern.value) {
            return Err(at(pattern.referenced, e));
        }
    }
    let source_conninfo = endpoint_conninfo("source", &spec.source, &at, env)?;
    let target_conninfo = endpoint_conninfo("target", &spec.target, &at, env)?;
    // The absolute path: a saved plan records it, and the state directory is found from it
    // wherever `apply` runs from.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    Ok(LoadedMigrationPlan { spec, path, text, source_conninfo, target_conninfo })
}

/// Checks one endpoint's raw URL (no literal password), interpolates `${VAR}` and parses it.
fn endpoint_conninfo(
    which: &str,
    endpoint: &Endpoint,
    at: &dyn Fn(serde_saphyr::Location, String) -> SpecError,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnInfo, SpecError> {
    let raw = &endpoint.url.value;
    let loc = endpoint.url.referenced;
    let parsed_raw = ConnInfo::parse(raw)
        .map_err(|e| at(loc, format!("{which}.url is not a valid connection string: {e}")))?;
    if let Some(password) = parsed_raw.password()
        && !is_single_reference(password)
    {
        // Never echo the password: the message names the field only.
        return Err(at(loc, format!("{which}.url contains a password")).with_help(format!(
            "a migration plan holds no secrets. Remove the password from {which}.url and \
                 pass it with PGPASSWORD, a ~/.pgpass line (mode 0600), `passfile=...`, or an \
                 environment variable referenced in the URL as ${{NAME}}"
        )));
    }
    // Interpolate each parsed value, not the raw string, so a password holding `@`, `/` or `:`
    // cannot change how the URL parses.
    let mut info = parsed_raw;
    info.try_map_values(|_, v| interpolate(v, env))
        .map_err(|e| at(loc, format!("{which}.url: {e}")))?;
    Ok(info)
}

/// `text` with passwords masked by `*` (same length, so spans stay valid): the password of
/// every `scheme://user:password@` and the value of every `password=`. `${NAME}` references are
/// kept: they are not secrets.
pub fn redact_secrets(text: &str) -> String {
    let mut out: Vec<char> = text.chars().collect();
    let mask = |out: &mut Vec<char>, from: usize, to: usize| {
        let value: String = out[from..to].iter().collect();
        if !is_single_reference(&value) {
            out[from..to].iter_mut().for_each(|c| *c = '*');
        }
    };
    let ends = |c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '#');
    let mut i = 0;
    while i < out.len() {
        if out[i..].starts_with(&[':', '/', '/']) {
            // userinfo runs to the last `@` before the end of the authority.
            let start = i + 3;
            let end = (start..out.len())
                .find(|&j| ends(out[j]) || out[j] == '/' || out[j] == '?')
                .unwrap_or(out.len());
            if let Some(at) = (start..end).rev().find(|&j| out[j] == '@')
                && let Some(colon) = (start..at).find(|&j| out[j] == ':')
            {
                mask(&mut out, colon + 1, at);
            }
            i = end;
        } else if out[i..].starts_with(&['p', 'a', 's', 's', 'w', 'o', 'r', 'd'])
            && (i == 0 || !out[i - 1].is_alphanumeric() && out[i - 1] != '_')
        {
            let mut j = i + 8;
            while j < out.len() && out[j] == ' ' {
                j += 1;
            }
            if j < out.len() && out[j] == '=' {
                j += 1;
                while j < out.len() && out[j] == ' ' {
                    j += 1;
                }
                if j < out.len() && out[j] == '\'' {
                    // A libpq-quoted value: up to the closing quote (`\'` is an escaped one).
                    let start = j + 1;
                    let mut k = start;
                    while k < out.len() && out[k] != '\'' {
                        k += if out[k] == '\\' { 2 } else { 1 };
                    }
                    let end = k.min(out.len());
                    mask(&mut out, start, end);
                    i = end + 1;
                } else {
                    let end = (j..out.len()).find(|&k| ends(out[k])).unwrap_or(out.len());
                    mask(&mut out, j, end);
                    i = end;
                }
            } else {
                i += 8;
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// Whether `s` is exactly one `${NAME}` reference.
fn is_single_reference(s: &str) -> bool {
    s.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Replaces `${NAME}` with the environment variable `NAME`; `$${` stays a literal `${`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r.find('}').ok_or("`${` without a closing `}`")?;
            let name = &r[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not a valid environment variable reference"));
            }
            let value = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set (referenced as ${{{name}}})")
            })?;
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns a YAML/serde error into a located error, adding "did you mean" for near-miss keys.
fn yaml_error(path: &Path, text: &str, err: &serde_saphyr::Error) -> SpecError {
    let inner = err.without_snippet();
    let (message, help) = match inner {
        serde_saphyr::Error::SerdeUnknownField { field, expected, .. } => {
            let help = match closest(field, expected) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("expected one of: {}", expected.join(", ")),
            };
            (format!("unknown key `{field}`"), Some(help))
        }
        serde_saphyr::Error::SerdeUnknownVariant { variant, expected, .. } => {
            let help = match closest(variant, expected) {
                Some(best) => format!("did you mean `{best}`? (one of: {})", expected.join(", ")),
                None => format!("expected one of: {}", expected.join(", ")),
            };
            (format!("unknown value `{variant}`"), Some(help))
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            (format!("missing key `{field}`"), Some(missing_field_help(field)))
        }
        other => (strip_location_prefix(&other.to_string()), None),
    };
    let mut e = SpecError::at(path, text, err.location(), message);
    e.help = help;
    e
}

fn missing_field_help(field: &str) -> String {
    match field {
        "version" => "add `version: 1` at the top".into(),
        "name" => "add `name: <migration-name>` (lowercase letters, digits, `_`, `-`)".into(),
        "source" | "target" => format!("add `{field}:` with `url: postgresql://user@host:5432/db`"),
        "url" => "add `url: postgresql://user@host:5432/db`".into(),
        other => format!("add `{other}:`"),
    }
}

/// The saphyr message starts with "line N column M: "; our snippet already says where.
fn strip_location_prefix(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.find(": ") {
        Some(i) if first.starts_with("line ") => first[i + 2..].to_string(),
        _ => first.to_string(),
    }
}

/// The expected word nearest to `got`, if it is near enough to be a typo.
fn closest<'a>(got: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::jaro_winkler(got, e), *e))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
}

/// The JSON Schema of the migration plan format (draft-07, which YAML editors support best).
pub fn json_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<MigrationPlan>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_str(text: &str) -> Result<LoadedMigrationPlan, SpecError> {
        parse(Path::new("plans/test.yaml"), text.to_string(), &no_env)
    }

    const MINIMAL: &str = "version: 1\nname: pagila\nsource:\n  url: postgresql://migrator@10.0.0.5:5432/pagila\ntarget:\n  url: postgresql://admin@target.example.com:5432/pagila?sslmode=verify-full\n";

    #[test]
    fn minimal_plan_from_the_issue_loads_with_defaults() {
        let l = parse_str(MINIMAL).unwrap();
        assert_eq!(l.spec.mode, Mode::Online);
        assert_eq!(l.spec.cutover.mode, CutoverMode::Manual);
        assert!(l.spec.verify.checksums);
        assert!(l.state_dir().is_absolute());
        assert!(l.state_dir().ends_with("plans/.pgtransit/pagila"));
    }

    #[test]
    fn typo_in_a_key_is_located_and_suggests_the_right_key() {
        let text = MINIMAL.replace("source:", "sourse:");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.message, "unknown key `sourse`");
        assert_eq!(e.line_col, Some((3, 1)));
        assert_eq!(e.help.as_deref(), Some("did you mean `source`?"));
        assert!(e.one_line().starts_with("plans/test.yaml:3:1: "));
    }

    #[test]
    fn typo_in_an_enum_value_suggests_the_value() {
        let e = parse_str(&format!("{MINIMAL}mode: ofline\n")).unwrap_err();
        assert_eq!(e.line_col, Some((7, 7)));
        assert!(e.help.unwrap().starts_with("did you mean `offline`?"));
    }

    #[test]
    fn inline_password_is_refused_without_echoing_it() {
        let secret = "s3cr3t-Pa55";
        let text = MINIMAL.replace("migrator@", &format!("migrator:{secret}@"));
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.message, "source.url contains a password");
        assert_eq!(e.line_col.unwrap().0, 4);
        let shown = format!("{} {} {:?}", e.message, e.help.clone().unwrap(), e.label);
        assert!(!shown.contains(secret));
        assert!(!e.src.inner().contains(secret), "the snippet must not show it");
        assert!(e.help.unwrap().contains("PGPASSWORD"));
    }

    #[test]
    fn snippets_never_show_a_password_even_for_other_errors() {
        let text = MINIMAL.replace("migrator@", "migrator:pa:ss@").replace("name:", "nmae:");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.message, "unknown key `nmae`");
        assert!(!e.src.inner().contains("pa:ss"));
        assert!(e.src.inner().contains("migrator:*****@10.0.0.5"));
        assert_eq!(e.src.inner().len(), text.len());
    }

    #[test]
    fn redaction_masks_url_and_keyword_passwords_but_keeps_references() {
        // Built from parts: no literal credential URL in the source tree.
        let url = |userinfo: &str, rest: &str| format!("postgresql://{userinfo}@{rest}");
        assert_eq!(
            redact_secrets(&format!(
                "a: {} x: host=h password = 'x y' password=abc",
                url("u:p@w", "h/db")
            )),
            format!("a: {} x: host=h password = '***' password=***", url("u:***", "h/db"))
        );
        assert_eq!(redact_secrets(&url("u:${P}", "h")), url("u:${P}", "h"));
        assert_eq!(redact_secrets("mypassword=1 password=2"), "mypassword=1 password=*");
    }

    #[test]
    fn interpolated_password_with_url_special_characters_stays_intact() {
        let text = MINIMAL.replace("migrator@", "migrator:${SRC_PASS}@");
        let env = |n: &str| (n == "SRC_PASS").then(|| "p@ss/w:rd".to_string());
        let l = parse(Path::new("p.yaml"), text, &env).unwrap();
        assert_eq!(l.source_conninfo.password(), Some("p@ss/w:rd"));
        assert_eq!(l.source_conninfo.get("host"), Some("10.0.0.5"));
    }

    #[test]
    fn key_value_password_is_refused_too() {
        let text = MINIMAL.replace(
            "url: postgresql://admin@target.example.com:5432/pagila?sslmode=verify-full",
            "url: host=t dbname=pagila password=hunter2",
        );
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.message, "target.url contains a password");
    }

    #[test]
    fn password_from_an_environment_reference_is_allowed_and_interpolated() {
        let text = MINIMAL.replace("migrator@", "migrator:${SRC_PASS}@");
        let env = |n: &str| (n == "SRC_PASS").then(|| "from-env".to_string());
        let l = parse(Path::new("p.yaml"), text, &env).unwrap();
        assert_eq!(l.source_conninfo.password(), Some("from-env"));
    }

    #[test]
    fn missing_environment_variable_names_the_variable() {
        let text = MINIMAL.replace("10.0.0.5", "${SRC_HOST}");
        let e = parse_str(&text).unwrap_err();
        assert!(e.message.contains("SRC_HOST is not set"), "{}", e.message);
    }

    #[test]
    fn interpolation_handles_escapes_and_plain_dollars() {
        let env = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(interpolate("a$b${A}$${A}", &env).unwrap(), "a$bx${A}");
        assert!(interpolate("${A", &env).is_err());
        assert!(interpolate("${A-B}", &env).is_err());
    }

    #[test]
    fn invalid_name_is_located() {
        let e = parse_str(&MINIMAL.replace("name: pagila", "name: Pagila;drop")).unwrap_err();
        assert!(e.message.contains("invalid migration name"));
        assert_eq!(e.line_col.unwrap().0, 2);
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = parse_str(&MINIMAL.replace("version: 1", "version: 2")).unwrap_err();
        assert!(e.message.contains("unsupported format version 2"));
    }

    #[test]
    fn missing_target_says_what_to_add() {
        let text: String = MINIMAL.lines().take(4).map(|l| format!("{l}\n")).collect();
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.message, "missing key `target`");
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_byte_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_byte_size("1.5 GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_byte_size("42").unwrap(), 42);
        assert!(parse_byte_size("10 parsecs").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), std::time::Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), std::time::Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn bad_table_pattern_is_located() {
        let e = parse_str(&format!("{MINIMAL}objects:\n  tables:\n    include: ['a.b.c']\n"))
            .unwrap_err();
        assert_eq!(e.line_col.unwrap().0, 9);
    }
}
