//! DDL for the objects the server has no `pg_get_*def` function for: tables, sequences, types,
//! domains, aggregates, views' and materialized views' wrappers. Every identifier is quoted;
//! expressions and type names come from the server (`pg_get_expr`, `format_type`) already
//! qualified.

use crate::sql::{ident, literal};

/// A column of a table, view or composite type, as the catalog has it.
#[derive(Debug, Clone, Default)]
pub(super) struct Column {
    pub attnum: i32,
    pub name: String,
    /// `format_type`.
    pub type_sql: String,
    pub not_null: bool,
    /// Default or generation expression (`pg_get_expr`).
    pub default: Option<String>,
    /// `attidentity`: `a` ALWAYS, `d` BY DEFAULT, empty.
    pub identity: String,
    /// `attgenerated`: `s` stored, `v` virtual (PostgreSQL 18), empty.
    pub generated: String,
    /// `COLLATE` clause target, when not the type's collation.
    pub collation: Option<String>,
    pub is_local: bool,
    pub storage: String,
    pub type_storage: String,
    /// `attcompression`: `p` pglz, `l` lz4, empty (PostgreSQL 14+).
    pub compression: String,
    /// `attstattarget`, -1 for the default.
    pub stat_target: i32,
    /// `attoptions` (`name=value`).
    pub options: Vec<String>,
}

/// A sequence's parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SequenceParams {
    pub type_sql: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// An identity sequence whose persistence differs from its table's (PostgreSQL 15+):
    /// `LOGGED` or `UNLOGGED`, as pg_dump spells it after `SEQUENCE NAME`.
    pub persistence: Option<&'static str>,
}

impl SequenceParams {
    /// The options every `CREATE SEQUENCE` and identity column spells out (all of them, so that
    /// nothing depends on defaults).
    fn options(&self) -> Vec<String> {
        vec![
            format!("START WITH {}", self.start),
            format!("INCREMENT BY {}", self.increment),
            format!("MINVALUE {}", self.min),
            format!("MAXVALUE {}", self.max),
            format!("CACHE {}", self.cache),
            if self.cycle { "CYCLE".into() } else { "NO CYCLE".into() },
        ]
    }
}

/// `CREATE SEQUENCE`.
pub(super) fn create_sequence(name_sql: &str, unlogged: bool, p: &SequenceParams) -> String {
    let mut s = format!(
        "CREATE {}SEQUENCE {name_sql}\n    AS {}",
        if unlogged { "UNLOGGED " } else { "" },
        p.type_sql
    );
    for option in p.options() {
        s.push_str("\n    ");
        s.push_str(&option);
    }
    s
}

/// `name='value'` items of a `WITH (...)` list from `reloptions`, with a prefix (`toast.`).
pub(super) fn options_list(options: &[String], prefix: &str) -> Vec<String> {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((name, value)) => format!("{prefix}{name}={}", literal(value)),
            None => format!("{prefix}{o}"),
        })
        .collect()
}

/// What `CREATE TABLE` needs beyond the columns.
#[derive(Debug, Default)]
pub(super) struct TableSpec<'a> {
    pub name_sql: String,
    pub unlogged: bool,
    pub columns: &'a [Column],
    /// Identity sequences by attnum: (quoted qualified name, parameters).
    pub identity: Vec<(i32, String, SequenceParams)>,
    /// Check constraints that are part of `CREATE TABLE`: (name, `pg_get_constraintdef`).
    pub checks: Vec<(String, String)>,
    /// `INHERITS` parents, quoted.
    pub inherits: Vec<String>,
    /// Columns (name, has default, not null) of the parents, for inherited columns.
    pub parent_columns: Vec<(String, bool, bool)>,
    /// `pg_get_partkeydef`.
    pub partition_key: Option<String>,
    /// Partition: (parent quoted, `FOR VALUES ...` or `DEFAULT`).
    pub partition: Option<(String, String)>,
    /// Table access method when not `heap`.
    pub access_method: Option<String>,
    /// `WITH (...)` items.
    pub options: Vec<String>,
    /// `relreplident`.
    pub replica_identity: String,
    pub row_security: bool,
    pub force_row_security: bool,
    /// A typed table's type, quoted (`CREATE TABLE ... OF type`).
    pub of_type: Option<String>,
}

fn column_definition(c: &Column, identity: Option<&(i32, String, SequenceParams)>) -> String {
    let mut s = format!("{} {}", ident(&c.name), c.type_sql);
    if let Some(collation) = &c.collation {
        s.push_str(&format!(" COLLATE {collation}"));
    }
    match (&c.default, c.generated.as_str()) {
        (Some(expr), "s") => s.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED")),
        // PostgreSQL 18: computed when read, never stored.
        (Some(expr), "v") => s.push_str(&format!(" GENERATED ALWAYS AS ({expr}) VIRTUAL")),
        (Some(expr), _) => s.push_str(&format!(" DEFAULT {expr}")),
        _ => {}
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some((_, seq, params)) = identity {
        let how = if c.identity == "a" { "ALWAYS" } else { "BY DEFAULT" };
        s.push_str(&format!(" GENERATED {how} AS IDENTITY (\n        SEQUENCE NAME {seq}"));
        if let Some(persistence) = params.persistence {
            s.push_str(&format!("\n        {persistence}"));
        }
        for option in params.options() {
            s.push_str("\n        ");
            s.push_str(&option);
        }
        s.push_str("\n    )");
    }
    s
}

/// `CREATE TABLE` (partitions: all columns and check constraints, then `ATTACH PARTITION`, as
/// pg_dump does; inheritance children: their local columns and constraints, then `INHERITS`),
/// followed by what `CREATE TABLE` cannot say (storage, statistics, replica identity, row level
/// security).
pub(super) fn create_table(t: &TableSpec) -> Vec<String> {
    let name = &t.name_sql;
    let is_partition = t.partition.is_some();
    let mut items: Vec<String> = t
        .columns
        .iter()
        .filter(|c| is_partition || c.is_local)
        .map(|c| {
            // A generated column a parent also has: the child inherits the parent's expression
            // and may not state one (pg_dump leaves it out too).
            let inherited_generation = !is_partition
                && !c.generated.is_empty()
                && t.parent_columns.iter().any(|p| p.0 == c.name && p.1);
            let mut own = c.clone();
            if inherited_generation {
                own.default = None;
            }
            column_definition(&own, t.identity.iter().find(|i| i.0 == c.attnum))
        })
        .collect();
    if t.of_type.is_some() {
        // A typed table's columns come from its type: only their defaults and NOT NULL are
        // stated (as pg_dump writes them).
        items = t
            .columns
            .iter()
            .filter(|c| c.default.is_some() || c.not_null)
            .map(|c| {
                let mut s = ident(&c.name);
                if let Some(expr) = &c.default {
                    s.push_str(&format!(" DEFAULT {expr}"));
                }
                if c.not_null {
                    s.push_str(" NOT NULL");
                }
                s
            })
            .collect();
    }
    items.extend(t.checks.iter().map(|(n, def)| format!("CONSTRAINT {} {def}", ident(n))));
    let unlogged = if t.unlogged { "UNLOGGED " } else { "" };
    let mut create = match &t.of_type {
        Some(of) if items.is_empty() => format!("CREATE {unlogged}TABLE {name} OF {of}"),
        Some(of) => format!("CREATE {unlogged}TABLE {name} OF {of} ("),
        None => format!("CREATE {unlogged}TABLE {name} ("),
    };
    if !items.is_empty() {
        create.push_str("\n    ");
        create.push_str(&items.join(",\n    "));
    }
    if t.of_type.is_none() || !items.is_empty() {
        create.push_str("\n)");
    }
    if !t.inherits.is_empty() {
        create.push_str(&format!("\nINHERITS ({})", t.inherits.join(", ")));
    }
    if let Some(key) = &t.partition_key {
        create.push_str(&format!("\nPARTITION BY {key}"));
    }
    if let Some(am) = &t.access_method {
        create.push_str(&format!("\nUSING {}", ident(am)));
    }
    if !t.options.is_empty() {
        create.push_str(&format!("\nWITH ({})", t.options.join(", ")));
    }
    let mut out = vec![create];
    if let Some((parent, bound)) = &t.partition {
        out.push(format!("ALTER TABLE ONLY {parent} ATTACH PARTITION {name} {bound}"));
    }
    for c in t.columns {
        let alter = format!("ALTER TABLE ONLY {name} ALTER COLUMN {}", ident(&c.name));
        if !is_partition && !c.is_local {
            // Inherited column: the parent gave it its default and NOT NULL.
            let parents = t.parent_columns.iter().filter(|p| p.0 == c.name);
            let (mut parent_default, mut parent_not_null) = (false, false);
            for p in parents {
                parent_default |= p.1;
                parent_not_null |= p.2;
            }
            match &c.default {
                Some(expr) if c.generated.is_empty() => {
                    out.push(format!("{alter} SET DEFAULT {expr}"));
                }
                None if parent_default => out.push(format!("{alter} DROP DEFAULT")),
                _ => {}
            }
            if c.not_null && !parent_not_null {
                out.push(format!("{alter} SET NOT NULL"));
            }
        }
        if c.storage != c.type_storage {
            let storage = match c.storage.as_str() {
                "p" => "PLAIN",
                "e" => "EXTERNAL",
                "m" => "MAIN",
                _ => "EXTENDED",
            };
            out.push(format!("{alter} SET STORAGE {storage}"));
        }
        if let Some(method) = compression_method(&c.compression) {
            out.push(format!("{alter} SET COMPRESSION {method}"));
        }
        if c.stat_target >= 0 {
            out.push(format!("{alter} SET STATISTICS {}", c.stat_target));
        }
        if !c.options.is_empty() {
            out.push(format!("{alter} SET ({})", options_list(&c.options, "").join(", ")));
        }
    }
    match t.replica_identity.as_str() {
        "f" => out.push(format!("ALTER TABLE ONLY {name} REPLICA IDENTITY FULL")),
        "n" => out.push(format!("ALTER TABLE ONLY {name} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    if t.row_security {
        out.push(format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"));
    }
    if t.force_row_security {
        out.push(format!("ALTER TABLE ONLY {name} FORCE ROW LEVEL SECURITY"));
    }
    out
}

/// `CREATE VIEW` / `CREATE MATERIALIZED VIEW ... WITH NO DATA`, plus column defaults of views.
pub(super) fn create_view(
    name_sql: &str,
    materialized: bool,
    access_method: Option<&str>,
    options: &[String],
    definition: &str,
    columns: &[Column],
) -> Vec<String> {
    let definition = definition.trim_end().trim_end_matches(';');
    let mut s =
        format!("CREATE {}VIEW {name_sql}", if materialized { "MATERIALIZED " } else { "" });
    if let Some(am) = access_method {
        s.push_str(&format!(" USING {}", ident(am)));
    }
    if !options.is_empty() {
        s.push_str(&format!(" WITH ({})", options_list(options, "").join(", ")));
    }
    s.push_str(" AS\n");
    s.push_str(definition);
    if materialized {
        s.push_str("\nWITH NO DATA");
    }
    let mut out = vec![s];
    for c in columns {
        match (&c.default, materialized) {
            (Some(expr), false) => out.push(format!(
                "ALTER VIEW {name_sql} ALTER COLUMN {} SET DEFAULT {expr}",
                ident(&c.name)
            )),
            // A materialized view's columns have storage: their compression, as a table's.
            (_, true) => {
                if let Some(method) = compression_method(&c.compression) {
                    out.push(format!(
                        "ALTER TABLE ONLY {name_sql} ALTER COLUMN {} SET COMPRESSION {method}",
                        ident(&c.name)
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// `attcompression` as `SET COMPRESSION` names it (`None`: the server's default).
fn compression_method(code: &str) -> Option<&'static str> {
    match code {
        "p" => Some("pglz"),
        "l" => Some("lz4"),
        _ => None,
    }
}

/// `CREATE TYPE .. AS ENUM`.
pub(super) fn create_enum(name_sql: &str, labels: &[String]) -> String {
    let labels: Vec<String> = labels.iter().map(|l| literal(l)).collect();
    if labels.is_empty() {
        format!("CREATE TYPE {name_sql} AS ENUM (\n)")
    } else {
        format!("CREATE TYPE {name_sql} AS ENUM (\n    {}\n)", labels.join(",\n    "))
    }
}

/// `CREATE TYPE .. AS (...)`.
pub(super) fn create_composite(name_sql: &str, columns: &[Column]) -> String {
    let attrs: Vec<String> = columns
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", ident(&c.name), c.type_sql);
            if let Some(collation) = &c.collation {
                s.push_str(&format!(" COLLATE {collation}"));
            }
            s
        })
        .collect();
    if attrs.is_empty() {
        format!("CREATE TYPE {name_sql} AS (\n)")
    } else {
        format!("CREATE TYPE {name_sql} AS (\n    {}\n)", attrs.join(",\n    "))
    }
}

/// A range type's parameters.
#[derive(Debug, Clone, Default)]
pub(super) struct RangeParams {
    pub subtype: String,
    pub opclass: Option<String>,
    pub collation: Option<String>,
    pub canonical: Option<String>,
    pub subtype_diff: Option<String>,
    pub multirange: Option<String>,
}

/// `CREATE TYPE .. AS RANGE`.
pub(super) fn create_range(name_sql: &str, r: &RangeParams) -> String {
    let mut items = vec![format!("subtype = {}", r.subtype)];
    if let Some(v) = &r.opclass {
        items.push(format!("subtype_opclass = {v}"));
    }
    if let Some(v) = &r.collation {
        items.push(format!("collation = {v}"));
    }
    if let Some(v) = &r.canonical {
        items.push(format!("canonical = {v}"));
    }
    if let Some(v) = &r.subtype_diff {
        items.push(format!("subtype_diff = {v}"));
    }
    if let Some(v) = &r.multirange {
        items.push(format!("multirange_type_name = {v}"));
    }
    format!("CREATE TYPE {name_sql} AS RANGE (\n    {}\n)", items.join(",\n    "))
}

/// A domain's parameters.
#[derive(Debug, Clone, Default)]
pub(super) struct DomainParams {
    pub base: String,
    pub collation: Option<String>,
    pub default: Option<String>,
    pub not_null: bool,
    /// (name, `pg_get_constraintdef`, validated), by name.
    pub checks: Vec<(String, String, bool)>,
}

/// `CREATE DOMAIN`, then its `NOT VALID` constraints.
pub(super) fn create_domain(name_sql: &str, d: &DomainParams) -> Vec<String> {
    let mut s = format!("CREATE DOMAIN {name_sql} AS {}", d.base);
    if let Some(c) = &d.collation {
        s.push_str(&format!(" COLLATE {c}"));
    }
    if let Some(e) = &d.default {
        s.push_str(&format!(" DEFAULT {e}"));
    }
    if d.not_null {
        s.push_str(" NOT NULL");
    }
    let mut later = Vec::new();
    for (name, def, validated) in &d.checks {
        if *validated {
            s.push_str(&format!("\n    CONSTRAINT {} {def}", ident(name)));
        } else {
            later.push(format!("ALTER DOMAIN {name_sql} ADD CONSTRAINT {} {def}", ident(name)));
        }
    }
    let mut out = vec![s];
    out.extend(later);
    out
}

/// An aggregate's parameters (`pg_aggregate`), functions and operators already as SQL.
#[derive(Debug, Clone, Default)]
pub(super) struct AggregateParams {
    /// `pg_get_function_arguments` (`*` when empty).
    pub arguments: String,
    /// `n` normal, `o` ordered-set, `h` hypothetical-set.
    pub kind: String,
    pub sfunc: String,
    pub stype: String,
    pub sspace: i32,
    pub finalfunc: Option<String>,
    pub finalfunc_extra: bool,
    pub finalfunc_modify: String,
    pub combinefunc: Option<String>,
    pub serialfunc: Option<String>,
    pub deserialfunc: Option<String>,
    pub initcond: Option<String>,
    pub msfunc: Option<String>,
    pub minvfunc: Option<String>,
    pub mstype: Option<String>,
    pub msspace: i32,
    pub mfinalfunc: Option<String>,
    pub mfinalfunc_extra: bool,
    pub mfinalfunc_modify: String,
    pub minitcond: Option<String>,
    pub sortop: Option<String>,
    /// `proparallel`.
    pub parallel: String,
}

fn modify_word(code: &str) -> &'static str {
    match code {
        "s" => "SHAREABLE",
        "w" => "READ_WRITE",
        _ => "READ_ONLY",
    }
}

/// `CREATE AGGREGATE`.
pub(super) fn create_aggregate(name_sql: &str, a: &AggregateParams) -> String {
    let mut items = vec![format!("SFUNC = {}", a.sfunc), format!("STYPE = {}", a.stype)];
    if a.sspace != 0 {
        items.push(format!("SSPACE = {}", a.sspace));
    }
    if let Some(f) = &a.finalfunc {
        items.push(format!("FINALFUNC = {f}"));
    }
    if a.finalfunc_extra {
        items.push("FINALFUNC_EXTRA".into());
    }
    items.push(format!("FINALFUNC_MODIFY = {}", modify_word(&a.finalfunc_modify)));
    if let Some(f) = &a.combinefunc {
        items.push(format!("COMBINEFUNC = {f}"));
    }
    if let Some(f) = &a.serialfunc {
        items.push(format!("SERIALFUNC = {f}"));
    }
    if let Some(f) = &a.deserialfunc {
        items.push(format!("DESERIALFUNC = {f}"));
    }
    if let Some(v) = &a.initcond {
        items.push(format!("INITCOND = {}", literal(v)));
    }
    if let (Some(msfunc), Some(minvfunc), Some(mstype)) = (&a.msfunc, &a.minvfunc, &a.mstype) {
        items.push(format!("MSFUNC = {msfunc}"));
        items.push(format!("MINVFUNC = {minvfunc}"));
        items.push(format!("MSTYPE = {mstype}"));
        if a.msspace != 0 {
            items.push(format!("MSSPACE = {}", a.msspace));
        }
        if let Some(f) = &a.mfinalfunc {
            items.push(format!("MFINALFUNC = {f}"));
        }
        if a.mfinalfunc_extra {
            items.push("MFINALFUNC_EXTRA".into());
        }
        items.push(format!("MFINALFUNC_MODIFY = {}", modify_word(&a.mfinalfunc_modify)));
        if let Some(v) = &a.minitcond {
            items.push(format!("MINITCOND = {}", literal(v)));
        }
    }
    if let Some(op) = &a.sortop {
        items.push(format!("SORTOP = {op}"));
    }
    if a.kind == "h" {
        items.push("HYPOTHETICAL".into());
    }
    match a.parallel.as_str() {
        "s" => items.push("PARALLEL = safe".into()),
        "r" => items.push("PARALLEL = restricted".into()),
        _ => {}
    }
    format!("CREATE AGGREGATE {name_sql}({}) (\n    {}\n)", a.arguments, items.join(",\n    "))
}
