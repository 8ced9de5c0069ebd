//! Verification: per-table row counts and checksums, source against target.
//!
//! A table's checksum is the sum of a 64-bit hash of each row's text
//! (`hashtextextended(ROW(r.*)::text, 0)`: the whole row, even with a column named like the
//! alias), so it does not depend on row order and needs no sort, under the same pinned session
//! settings on both sides (`conn::PINNED_SETTINGS`), one pass over each table. A table whose
//! checksum differs and that has a single integer key is compared again in chunks of
//! [`CHUNK`] keys, which says where its rows differ.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::execution_plan::VerifyTable;
use crate::sql::{ident, qualified, qualified_ident};

/// Keys per chunk when a differing table is compared chunk by chunk.
pub const CHUNK: i64 = 100_000;

/// One table compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCheck {
    /// `schema.table`.
    pub table: String,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Checksums equal (or not compared: `verify.checksums: false`).
    pub checksums_equal: bool,
    /// Where rows differ, for a table with an integer key (`id 100000..199999`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differing_ranges: Vec<String>,
    /// The side that has no such table (`source` or `target`): it counts as 0 rows there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_on: Option<String>,
    /// Not compared in full: proven equal while streaming, and how (the row counts are then the
    /// proof's, and `differing_ranges` names rows changed since that differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// Rows compared by key (those changed since the proof).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows_by_key: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TableCheck {
    /// Rows identical.
    pub fn equal(&self) -> bool {
        self.missing_on.is_none() && self.source_rows == self.target_rows && self.checksums_equal
    }

    /// How the two sides compare: `N rows on the source, M on the target`, and whether the
    /// checksums differ.
    pub fn counts(&self) -> String {
        format!(
            "{} rows on the source, {} on the target{}",
            self.source_rows,
            self.target_rows,
            if self.checksums_equal { "" } else { ", checksums differ" }
        )
    }
}

/// Pins the settings that shape a row's text on a session.
pub async fn pin(client: &Client) -> Result<(), tokio_postgres::Error> {
    let sql: String = crate::conn::PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", crate::sql::literal(v)))
        .collect();
    client.batch_execute(&sql).await
}

/// A table's count and checksum; `None` when the table does not exist on that side.
async fn aggregate(
    client: &Client,
    t: &VerifyTable,
    checksums: bool,
) -> Result<Option<(i64, String)>, tokio_postgres::Error> {
    if checksums {
        return range_sum(client, t, None, None).await;
    }
    let row = client
        .query_one(
            &format!("SELECT count(*), '' FROM ONLY {}", qualified_ident(&t.schema, &t.table)),
            &[],
        )
        .await;
    match row {
        Ok(row) => Ok(Some((row.get(0), row.get(1)))),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn chunks(
    client: &Client,
    t: &VerifyTable,
    key: &str,
) -> Result<Vec<(i64, i64, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT floor({k}::numeric / {CHUNK})::int8 AS chunk, count(*), \
                        coalesce(sum({ROW_HASH}::numeric), 0)::text \
                 FROM ONLY {} pgtransit_row GROUP BY 1 ORDER BY 1",
                qualified_ident(&t.schema, &t.table),
                k = ident(key)
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// A row's hash, as every checksum sums it.
const ROW_HASH: &str = "hashtextextended(ROW(pgtransit_row.*)::text, 0)";

/// The statement that opens a round's source session under the temporary slot's snapshot.
pub fn source_snapshot_sql(snapshot: &str) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::sql::literal(snapshot)
    )
}

/// The statement that takes a round's target snapshot, the stream standing still.
pub const TARGET_SNAPSHOT_SQL: &str =
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT txid_current_snapshot();";

/// The marker a round emits on the source after its consistent point (`$1` prefix, `$2` the
/// position).
pub const MARKER_SQL: &str = "SELECT pg_logical_emit_message(false, $1, $2)";

/// A chunk's count and checksum (`name`: the quoted table; `filter`: its keys).
fn chunk_sum_sql(name: &str, filter: &str) -> String {
    format!(
        "SELECT count(*), coalesce(sum({ROW_HASH}::numeric), 0)::text FROM ONLY {name} \
         pgtransit_row WHERE {filter}"
    )
}

/// The next key at or above a chunk's start, on one side.
fn next_key_sql(name: &str, key: &str, filter: &str) -> String {
    format!("SELECT min({key})::int8 FROM ONLY {name} WHERE {filter}")
}

/// How a repair's target transaction begins: replicated rows fire no trigger or foreign-key
/// check, and the stream, standing still meanwhile, waits for no lock for long.
pub const REPAIR_BEGIN: &str = "BEGIN; SET LOCAL session_replication_role = replica; \
     SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '30s'";

/// How rows found different are copied again (`keys`: an `int8[]` literal): deleted on the
/// target, then copied from the source under the round's snapshot, in one target transaction
/// with the stream standing still.
pub struct RepairSql {
    /// On the target, first.
    pub delete: String,
    /// On the source.
    pub source: String,
    /// On the target.
    pub target: String,
}

impl RepairSql {
    /// For quoted table `name`, quoted key `key`, quoted `columns` (those COPY writes).
    pub fn new(name: &str, key: &str, columns: &[String], keys: &str) -> RepairSql {
        let list = columns.join(", ");
        let with_list = if columns.is_empty() { String::new() } else { format!(" ({list})") };
        let select = if columns.is_empty() { "FROM".to_string() } else { format!("{list} FROM") };
        RepairSql {
            delete: format!("DELETE FROM ONLY {name} WHERE {key} = ANY({keys})"),
            source: format!(
                "COPY (SELECT {select} ONLY {name} WHERE {key} = ANY({keys})) TO STDOUT"
            ),
            target: format!("COPY {name}{with_list} FROM STDIN"),
        }
    }
}

/// What continuous verification runs, as the plan shows it (`version_num`: the source's).
pub fn continuous_sql(slot: &str, version_num: i32, rows_per_second: u64, repair: bool) -> String {
    let temp = crate::naming::proof_slot_name(slot);
    let rate = if rows_per_second == 0 {
        "as fast as the servers answer".to_string()
    } else {
        format!("at most {rows_per_second} rows per second on each server")
    };
    let mut sql = format!(
        "-- for each consistent point, on a replication session of the source (the stream \
         holds, its batch committed):\n\
         {};\n\
         -- on the source, under its snapshot:\n{};\n{};  -- after the slot's position\n\
         -- on the target, the stream standing still at that position:\n{}\n\
         -- then chunk by chunk on both, {rate}:\n{};\n{};",
        crate::stream::create_temporary_slot_command(&temp, version_num),
        source_snapshot_sql("<snapshot>"),
        MARKER_SQL
            .replace("$1", &crate::sql::literal(&crate::naming::proof_prefix(slot)))
            .replace("$2", "'<position>'"),
        TARGET_SNAPSHOT_SQL,
        next_key_sql("<table>", "<key>", "<key> > <after>"),
        chunk_sum_sql("<table>", "<key> > <after> AND <key> <= <upto>"),
    );
    if repair {
        let r = RepairSql::new("<table>", "<key>", &["<columns>".into()], "<keys that differ>");
        sql.push_str(&format!(
            "\n-- rows that differ (verify.repair), at a consistent point, the stream standing \
             still:\n-- on the source, under its snapshot:\n{};\n\
             -- on the target, in one transaction:\n{REPAIR_BEGIN};\n{};\n{};\nCOMMIT;",
            r.source, r.delete, r.target
        ));
    }
    sql
}

/// `WHERE` for the keys in `(after, upto]` of integer key `key` (none: every row).
fn range_filter(key: Option<&str>, after: Option<i64>, upto: Option<i64>) -> String {
    let Some(k) = key else { return "true".into() };
    let k = ident(k);
    let mut conds = vec![];
    if let Some(a) = after {
        conds.push(format!("{k} > {a}"));
    }
    if let Some(u) = upto {
        conds.push(format!("{k} <= {u}"));
    }
    if conds.is_empty() { "true".into() } else { conds.join(" AND ") }
}

/// The smallest key above `after` on one side (none: the table has no key above it, or does
/// not exist).
pub async fn next_key(
    client: &Client,
    t: &VerifyTable,
    key: &str,
    after: Option<i64>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let sql = next_key_sql(
        &qualified_ident(&t.schema, &t.table),
        &ident(key),
        &range_filter(Some(key), after, None),
    );
    match client.query_one(&sql, &[]).await {
        Ok(row) => Ok(row.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The count and checksum of the rows with keys in `(after, upto]` (every row without a key);
/// `None` when the table does not exist on that side.
pub async fn range_sum(
    client: &Client,
    t: &VerifyTable,
    after: Option<i64>,
    upto: Option<i64>,
) -> Result<Option<(i64, String)>, tokio_postgres::Error> {
    let sql = chunk_sum_sql(
        &qualified_ident(&t.schema, &t.table),
        &range_filter(t.key.as_deref(), after, upto),
    );
    match client.query_one(&sql, &[]).await {
        Ok(row) => Ok(Some((row.get(0), row.get(1)))),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Each row's key and hash, for the keys in `(after, upto]` of a table with an integer key.
pub async fn range_rows(
    client: &Client,
    t: &VerifyTable,
    key: &str,
    after: Option<i64>,
    upto: Option<i64>,
) -> Result<BTreeMap<i64, i64>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {k}::int8, {ROW_HASH} FROM ONLY {} pgtransit_row WHERE {}",
        qualified_ident(&t.schema, &t.table),
        range_filter(Some(key), after, upto),
        k = ident(key)
    );
    Ok(client.query(&sql, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The keys where two sides' rows (key → hash) differ, `key=value`, at most `limit`.
pub fn differing_keys(
    key: &str,
    a: &BTreeMap<i64, i64>,
    b: &BTreeMap<i64, i64>,
    limit: usize,
) -> Vec<String> {
    let mut keys: Vec<i64> =
        a.iter().filter(|(k, h)| b.get(k) != Some(h)).map(|(k, _)| *k).collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(k)));
    keys.sort_unstable();
    keys.into_iter().take(limit).map(|k| format!("{key}={k}")).collect()
}

/// Each key's row hash (NULL without such a row): `$1`, `$2`... the keys' text, one array per
/// key column (`columns`: quoted name and type), for quoted table `name`.
fn rows_by_key_sql(name: &str, columns: &[(String, &str)]) -> String {
    let unnest: Vec<String> = (1..=columns.len()).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let on: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| format!("pgtransit_row.{name} = k.c{}::{ty}", i + 1))
        .collect();
    format!(
        "SELECT k.n, CASE WHEN pgtransit_row.ctid IS NULL THEN NULL ELSE {ROW_HASH} END \
         FROM unnest({}) WITH ORDINALITY AS k({}, n) \
         LEFT JOIN ONLY {name} pgtransit_row ON {} ORDER BY k.n",
        unnest.join(", "),
        names.join(", "),
        on.join(" AND ")
    )
}

/// What the cutover's verification runs, as the plan shows it.
pub fn fence_sql() -> String {
    format!(
        "-- on both servers, per table (a difference stops the cutover and lifts the fence):\n\
         -- a table proven equal while streaming: the rows changed since, by key\n{};\n\
         -- any other table: all of it\n{};",
        rows_by_key_sql("<table>", &[("<key>".into(), "<key type>")]),
        chunk_sum_sql("<table>", "true")
    )
}

/// Rows looked up by key: for each key (the text of each key column, in the order of
/// `columns`, which are (name, type)), the row's hash, or `None` when there is no such row.
pub async fn rows_by_key(
    client: &Client,
    t: &VerifyTable,
    columns: &[(String, String)],
    keys: &[Vec<Option<String>>],
) -> Result<Vec<Option<i64>>, tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let arrays: Vec<Vec<Option<String>>> =
        (0..columns.len()).map(|i| keys.iter().map(|k| k[i].clone()).collect()).collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let columns: Vec<(String, &str)> =
        columns.iter().map(|(n, ty)| (ident(n), ty.as_str())).collect();
    let sql = rows_by_key_sql(&qualified_ident(&t.schema, &t.table), &columns);
    let rows = client.query(&sql, &params).await?;
    let mut out = vec![None; keys.len()];
    for r in rows {
        let n: i64 = r.get(0);
        if let Some(slot) = out.get_mut(n as usize - 1) {
            *slot = r.get(1);
        }
    }
    Ok(out)
}

/// Compares every table; the two clients must be pinned ([`pin`]) and, for an exact answer,
/// both sides quiet.
pub async fn compare(
    source: &Client,
    target: &Client,
    tables: &[VerifyTable],
    checksums: bool,
) -> Result<Vec<TableCheck>, tokio_postgres::Error> {
    let mut out = vec![];
    for t in tables {
        let (s, d) = tokio::join!(aggregate(source, t, checksums), aggregate(target, t, checksums));
        let (s, d) = (s?, d?);
        let missing_on = match (&s, &d) {
            (None, _) => Some("source".to_string()),
            (_, None) => Some("target".to_string()),
            _ => None,
        };
        let ((source_rows, source_sum), (target_rows, target_sum)) =
            (s.unwrap_or((0, String::new())), d.unwrap_or((0, String::new())));
        let mut check = TableCheck {
            table: qualified(&t.schema, &t.table),
            source_rows,
            target_rows,
            checksums_equal: missing_on.is_none() && source_sum == target_sum,
            differing_ranges: vec![],
            missing_on,
            proof: None,
            rows_by_key: 0,
        };
        if !check.equal()
            && check.missing_on.is_none()
            && let Some(key) = &t.key
        {
            let (s, d) = tokio::join!(chunks(source, t, key), chunks(target, t, key));
            let (s, d) = (s?, d?);
            let mut all: Vec<i64> = s.iter().chain(d.iter()).map(|c| c.0).collect();
            all.sort_unstable();
            all.dedup();
            for chunk in all {
                let a = s.iter().find(|c| c.0 == chunk);
                let b = d.iter().find(|c| c.0 == chunk);
                if a.map(|c| (c.1, &c.2)) != b.map(|c| (c.1, &c.2)) {
                    check.differing_ranges.push(format!(
                        "{key} {}..{}",
                        chunk * CHUNK,
                        (chunk + 1) * CHUNK - 1
                    ));
                }
            }
        }
        out.push(check);
    }
    Ok(out)
}

/// What `pgtransit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The migration.
    pub migration: String,
    /// Objects missing or different on the target (as `plan` would create or align them, or
    /// reports them as conflicts).
    pub schema_differences: Vec<String>,
    /// Every table compared.
    pub tables: Vec<TableCheck>,
    /// An apply streams changes now: row differences may be changes not yet applied.
    pub sync_running: bool,
}

impl Report {
    /// Schema and rows identical.
    pub fn identical(&self) -> bool {
        self.schema_differences.is_empty() && self.tables.iter().all(TableCheck::equal)
    }
}
