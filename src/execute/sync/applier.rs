//! The applier: source transactions batched into target transactions, statements prepared
//! once per table and shape and pipelined, each batch committed with its source position.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BufMut;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use postgres_types::{Format, IsNull, Kind, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use crate::execute::context::{ApplyError, Ctx};
use crate::execute::context::{pg, sync_error};
use crate::execute::proof::Touched;
use crate::execute::session::Progress;
use crate::execute::sync::coalesce::{Batch, Flush};
use crate::execute::sync::{
    BATCH_AGE, BATCH_CHANGES, BUFFER_BYTES, PIPELINE, PIPELINE_BYTES, drift_error,
};
use crate::sql::{ident, literal, qualified, qualified_ident};
use crate::state::{Counters, SyncState};
use crate::stream::{Change, ChangeSource, Relation, Tuple, Value};

/// A transaction snapshot as `pg_current_snapshot()` prints it: which transactions it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    pub(crate) xmin: u64,
    pub(crate) xmax: u64,
    pub(crate) xip: Vec<u64>,
}

impl XidSnapshot {
    /// Parses `xmin:xmax:xip,...`.
    pub fn parse(s: &str) -> Option<XidSnapshot> {
        let mut it = s.trim().splitn(3, ':');
        let xmin = it.next()?.parse().ok()?;
        let xmax = it.next()?.parse().ok()?;
        let xip = match it.next()? {
            "" => vec![],
            list => list.split(',').map(|x| x.parse().ok()).collect::<Option<Vec<u64>>>()?,
        };
        Some(XidSnapshot { xmin, xmax, xip })
    }

    /// Whether the snapshot sees (the commit of) transaction `xid`, a 32-bit id as the stream
    /// carries it (widened with the epoch nearest the snapshot's).
    pub fn sees(&self, xid: u32) -> bool {
        let x = widen(xid, self.xmax);
        x < self.xmin || (x < self.xmax && !self.xip.contains(&x))
    }
}

/// The 64-bit transaction id nearest `reference` whose low 32 bits are `xid`.
fn widen(xid: u32, reference: u64) -> u64 {
    let candidate = (reference & !0xffff_ffff) | xid as u64;
    if candidate > reference.saturating_add(1 << 31) && candidate >= 1 << 32 {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// A statement parameter sent as it came: in text, which the server parses with the column
/// type's input function, exactly as pgoutput printed it with the output function; or in
/// binary (`true`), which it reads with the type's receive function.
#[derive(Debug, Clone)]
pub(crate) struct Param(Option<Bytes>, bool);

impl ToSql for Param {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        if self.1 { Format::Binary } else { Format::Text }
    }

    to_sql_checked!();
}

/// One column of many rows, as an array parameter in binary form (no quoting to get wrong):
/// a `text[]` whose elements set-based statements cast to the column's type (its input
/// function), or, for values that came in binary, an array of the column's own type whose
/// elements the server reads with the type's receive function.
#[derive(Debug, Clone)]
pub(crate) struct ArrayParam(Vec<Option<Bytes>>, bool);

impl ArrayParam {
    /// Column `i` of `rows`, in binary when `binary` (the table's values all come so).
    pub(crate) fn column(rows: &[Tuple], i: usize, binary: bool) -> Result<ArrayParam, ApplyError> {
        let values = rows
            .iter()
            .map(|r| match &r[i] {
                Value::Text(b) if !binary => Ok(Some(b.clone())),
                Value::Binary(b) if binary => Ok(Some(b.clone())),
                Value::Null | Value::Unchanged => Ok(None),
                _ => Err(mixed_formats()),
            })
            .collect::<Result<_, _>>()?;
        Ok(ArrayParam(values, binary))
    }
}

/// A value in text where the table's come in binary, or the other way round: never sent by
/// pgoutput (the format is the stream's, for every column with a binary form).
fn mixed_formats() -> ApplyError {
    sync_error(
        "a value came in text in a stream of binary values, or the other way round: run apply \
         again (it chooses the stream's format afresh)",
    )
}

impl ToSql for ArrayParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let int = |n: usize| i32::try_from(n).map_err(|_| "a value is too large for an array");
        // The element type: text, or the target's type of the column (the server checks it).
        let element = match (self.1, ty.kind()) {
            (false, _) => Type::TEXT.oid(),
            (true, Kind::Array(e)) => e.oid(),
            (true, _) => return Err(format!("binary values for a parameter of type {ty}").into()),
        };
        // Dimensions, whether any element is NULL, the element type.
        out.put_i32(i32::from(!self.0.is_empty()));
        out.put_i32(i32::from(self.0.iter().any(Option::is_none)));
        out.put_u32(element);
        if !self.0.is_empty() {
            // Length and lower bound of the one dimension.
            out.put_i32(int(self.0.len())?);
            out.put_i32(1);
        }
        for e in &self.0 {
            match e {
                None => out.put_i32(-1),
                Some(b) => {
                    out.put_i32(int(b.len())?);
                    out.extend_from_slice(b);
                }
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

type Pending = Pin<Box<dyn Future<Output = Result<Applied, tokio_postgres::Error>> + Send>>;

/// A batch whose `COMMIT` was sent: what it holds, recorded once the commit succeeded.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// The end of its last source transaction (its origin position).
    pub(crate) end: Option<u64>,
    pub(crate) total: Counters,
    pub(crate) per_table: BTreeMap<Arc<str>, Counters>,
}

/// What a pipelined statement reports back.
pub(crate) struct Applied {
    /// Rows it changed.
    rows: u64,
    /// A batch's `COMMIT`: the batch.
    commit: Option<Committed>,
    /// For updates and deletes: the table and the rows the statement should have found, to
    /// count those that were not.
    expect: Option<(Arc<str>, u64)>,
}

/// Statements sent to the target ahead of their results.
pub(crate) struct Pipeline {
    pub(crate) client: Arc<Client>,
    pub(crate) inflight: FuturesOrdered<Pending>,
    /// The size of each statement in flight (in order), and their sum.
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
    /// Batches whose `COMMIT` is in flight.
    pub(crate) commits: usize,
    /// Batches committed, not yet recorded.
    pub(crate) done: Vec<Committed>,
    /// A statement failed: no later `COMMIT` is taken for a commit (that of a transaction an
    /// error aborted succeeds, and ends it with a rollback), and the connection is not trusted
    /// to pair results with statements any more.
    failed: bool,
    pub(crate) missing: u64,
    pub(crate) beat: Progress,
}

impl Pipeline {
    pub(crate) fn new(client: Arc<Client>, beat: Progress) -> Pipeline {
        Pipeline {
            client,
            inflight: FuturesOrdered::new(),
            sizes: Default::default(),
            bytes: 0,
            commits: 0,
            done: vec![],
            failed: false,
            missing: 0,
            beat,
        }
    }

    /// Sends a statement now (its request is queued on the connection before this returns, so
    /// statements run in the order they were pushed) and keeps its result for later. At most
    /// [`PIPELINE`] statements and [`PIPELINE_BYTES`] of parameters stay in flight.
    pub(crate) async fn push(
        &mut self,
        mut f: Pending,
        size: usize,
    ) -> Result<(), tokio_postgres::Error> {
        if let std::task::Poll::Ready(r) = futures_util::poll!(f.as_mut()) {
            self.take(r)?;
        } else {
            self.inflight.push_back(f);
            self.sizes.push_back(size);
            self.bytes += size;
        }
        while self.inflight.len() > PIPELINE
            || (self.bytes > PIPELINE_BYTES && self.inflight.len() > 1)
        {
            self.next().await?;
        }
        Ok(())
    }

    /// Waits for the oldest result in flight.
    async fn next(&mut self) -> Result<(), tokio_postgres::Error> {
        if let Some(r) = self.inflight.next().await {
            self.bytes -= self.sizes.pop_front().unwrap_or(0);
            self.take(r)?;
        }
        Ok(())
    }

    /// Waits until at most `n` batches' `COMMIT`s are in flight.
    pub(crate) async fn wait_commits(&mut self, n: usize) -> Result<(), tokio_postgres::Error> {
        while self.commits > n && !self.inflight.is_empty() {
            self.next().await?;
        }
        Ok(())
    }

    pub(crate) fn take(
        &mut self,
        r: Result<Applied, tokio_postgres::Error>,
    ) -> Result<(), tokio_postgres::Error> {
        self.beat.now();
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        if let Some(c) = o.commit {
            self.commits -= 1;
            if !self.failed {
                self.done.push(c);
            }
        }
        if let Some((table, rows)) = o.expect
            && o.rows < rows
        {
            self.missing += rows - o.rows;
            tracing::warn!(
                table = %table,
                rows = rows - o.rows,
                "replicated updates or deletes found no row on the target"
            );
        }
        Ok(())
    }

    pub(crate) async fn execute(
        &mut self,
        stmt: &Statement,
        params: Vec<Param>,
        expect_row: Option<Arc<str>>,
    ) -> Result<(), tokio_postgres::Error> {
        let size = params.iter().map(|p| p.0.as_ref().map_or(4, |b| b.len() + 4)).sum();
        self.run(stmt, params, size, expect_row.map(|t| (t, 1))).await
    }

    /// A set-based statement: one array per column; `expect`: the rows it should find.
    pub(crate) async fn execute_rows(
        &mut self,
        stmt: &Statement,
        params: Vec<ArrayParam>,
        expect: Option<(Arc<str>, u64)>,
    ) -> Result<(), tokio_postgres::Error> {
        let size =
            params.iter().flat_map(|p| &p.0).map(|e| e.as_ref().map_or(4, |b| b.len() + 4)).sum();
        self.run(stmt, params, size, expect).await
    }

    async fn run<P: ToSql + Sync + Send + 'static>(
        &mut self,
        stmt: &Statement,
        params: Vec<P>,
        size: usize,
        expect: Option<(Arc<str>, u64)>,
    ) -> Result<(), tokio_postgres::Error> {
        let (client, stmt) = (self.client.clone(), stmt.clone());
        self.push(
            Box::pin(async move {
                let rows = client.execute_raw(&stmt, params.iter()).await?;
                Ok(Applied { rows, expect, commit: None })
            }),
            size,
        )
        .await
    }

    pub(crate) async fn sql(&mut self, sql: String) -> Result<(), tokio_postgres::Error> {
        self.sql_then(sql, None).await
    }

    /// `COPY ... FROM STDIN` (`stmt`) of `data`. Its request is queued at once, like any
    /// other; its data goes once the server is ready for it, when the pipeline is next polled
    /// (the connection sends nothing else meanwhile: see [`Pipeline::progress`]).
    pub(crate) async fn copy(
        &mut self,
        stmt: &Statement,
        data: Bytes,
    ) -> Result<(), tokio_postgres::Error> {
        let (client, stmt) = (self.client.clone(), stmt.clone());
        let size = data.len();
        self.push(
            Box::pin(async move {
                let sink = client.copy_in::<_, Bytes>(&stmt).await?;
                futures_util::pin_mut!(sink);
                futures_util::SinkExt::send(&mut sink, data).await?;
                let rows = sink.finish().await?;
                Ok(Applied { rows, expect: None, commit: None })
            }),
            size,
        )
        .await
    }

    /// Takes the oldest result once it is there, and meanwhile moves every statement in flight
    /// on (a `COPY` sends its data). Never ready when nothing is in flight.
    pub(crate) async fn progress(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.inflight.is_empty() {
            std::future::pending::<()>().await;
        }
        self.next().await
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// `sql`, and once it succeeded, the batch `commit` is recorded as committed.
    pub(crate) async fn sql_then(
        &mut self,
        sql: String,
        commit: Option<Committed>,
    ) -> Result<(), tokio_postgres::Error> {
        let client = self.client.clone();
        let size = sql.len();
        self.commits += usize::from(commit.is_some());
        self.push(
            Box::pin(async move {
                client.batch_execute(&sql).await?;
                Ok(Applied { rows: 0, expect: None, commit })
            }),
            size,
        )
        .await
    }

    /// Waits for every result; the first error wins.
    pub(crate) async fn drain(&mut self) -> Result<(), tokio_postgres::Error> {
        let mut first = None;
        while !self.inflight.is_empty() {
            if let Err(e) = self.next().await
                && first.is_none()
            {
                first = Some(e);
            }
        }
        // (A batch whose COMMIT failed never commits.)
        self.commits = 0;
        first.map_or(Ok(()), Err)
    }
}

/// Kinds of prepared statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    /// This many rows in one statement.
    Insert(usize),
    /// Columns set (by index), then the key columns matched.
    Update(Vec<usize>, Vec<usize>),
    Delete(Vec<usize>),
    /// Set-based, any number of rows (each column a `text[]` parameter): updates setting
    /// these columns, matched on the key...
    UpdateRows(Vec<usize>),
    /// ... deletes matched on the key...
    DeleteRows,
    /// ... and `COPY` of every column, for inserts (about half what an `INSERT` of the rows
    /// costs the target).
    Copy,
}

/// How a table's changes may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Coalesced per row (by key) within a batch, set-based.
    ByKey,
    /// Inserts grouped into set-based statements, in order; updates and deletes on their own.
    Inserts,
    /// Every change on its own, in order, after what every table has buffered (a trigger or
    /// rule fires for it, and may read them).
    Fires,
}

/// A published table as the applier knows it.
pub(crate) struct Table {
    pub(crate) rel: Relation,
    pub(crate) name_sql: String,
    pub(crate) display: Arc<str>,
    /// Copy snapshot: the transactions whose changes the copy already holds.
    /// The copy's snapshot and the source position it was taken at (every transaction it sees
    /// committed before that position).
    pub(crate) skip: Option<(XidSnapshot, u64)>,
    /// Matched on every column (replica identity full): by `ctid`, one row at a time.
    pub(crate) full: bool,
    pub(crate) identity_always: Vec<bool>,
    /// Each column's type on the target (0: unknown, left to the server to infer).
    pub(crate) types: Vec<u32>,
    /// Each column's type's name on the target.
    pub(crate) type_names: Vec<String>,
    pub(crate) statements: HashMap<Shape, Statement>,
    pub(crate) mode: Mode,
    /// Its values come in binary (the stream's format).
    pub(crate) binary: bool,
    /// Each column's array type's name on the target (set-based statements pass binary values
    /// as arrays of the column's type); empty when the values come in text.
    pub(crate) array_types: Vec<String>,
    /// Per column, the built-in type whose binary form its values have (keys are read back
    /// into text with it); empty when the values come in text.
    pub(crate) bases: Vec<u32>,
}

impl Table {
    pub(crate) fn key_columns(&self) -> Vec<usize> {
        self.keys().collect()
    }

    /// The key columns' indexes.
    fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i)
    }

    /// The types of a statement's parameters, in order: each the target column's own type, so
    /// the server never has to guess one (an untyped parameter compared with a composite
    /// column is an anonymous record, which has no input function).
    pub(crate) fn param_types(&self, shape: &Shape) -> Vec<Type> {
        // OID 0 is "unspecified": the server infers it.
        let of = |i: usize| {
            let oid = self.types[i];
            Type::from_oid(oid)
                .unwrap_or_else(|| Type::new(String::new(), oid, Kind::Simple, String::new()))
        };
        let n = self.rel.columns.len();
        match shape {
            Shape::Insert(rows) => (0..rows * n).map(|k| of(k % n)).collect(),
            Shape::Update(set, keys) => set.iter().chain(keys).map(|&i| of(i)).collect(),
            Shape::Delete(keys) => keys.iter().map(|&i| of(i)).collect(),
            // Binary: the server infers each array's type from the statement's cast.
            Shape::UpdateRows(_) | Shape::DeleteRows if self.binary => {
                vec![of_unknown(); self.arrays(shape)]
            }
            Shape::UpdateRows(_) | Shape::DeleteRows => vec![Type::TEXT_ARRAY; self.arrays(shape)],
            Shape::Copy => vec![],
        }
    }

    /// The columns an update of `row` sets in a set-based statement: those it did not leave
    /// unchanged, but not the key (the same, or it would not be coalesced) nor an identity
    /// column `GENERATED ALWAYS`.
    pub(crate) fn set_columns(&self, row: &Tuple) -> Vec<usize> {
        (0..row.len())
            .filter(|&i| {
                row[i] != Value::Unchanged && !self.identity_always[i] && !self.rel.columns[i].key
            })
            .collect()
    }

    /// The array parameters of a set-based statement.
    fn arrays(&self, shape: &Shape) -> usize {
        let keys = self.key_columns().len();
        match shape {
            Shape::UpdateRows(set) => set.len() + keys,
            _ => keys,
        }
    }

    /// `SELECT` of the columns `cols` (named `v1`...) from array parameters `$1`...: `text[]`
    /// with each element cast to its column's type, or, binary, arrays of the column's type.
    fn unnest(&self, cols: &[usize]) -> String {
        let n = 1..=cols.len();
        let (values, params): (Vec<String>, Vec<String>) = cols
            .iter()
            .zip(n.clone())
            .map(|(&i, k)| {
                if self.binary {
                    (format!("u.v{k} AS v{k}"), format!("${k}::{}", self.array_types[i]))
                } else {
                    let ty = &self.type_names[i];
                    (format!("CAST(u.v{k} AS {ty}) AS v{k}"), format!("${k}::text[]"))
                }
            })
            .unzip();
        format!(
            "SELECT {} FROM unnest({}) AS u({})",
            values.join(", "),
            params.join(", "),
            n.map(|k| format!("v{k}")).collect::<Vec<_>>().join(", "),
        )
    }

    /// `x.key = v.vN AND ...`: the key columns, which come after `first` others in `v`.
    fn key_match(&self, first: usize) -> String {
        self.key_columns()
            .iter()
            .enumerate()
            .map(|(k, &i)| format!("x.{} = v.v{}", ident(&self.rel.columns[i].name), first + k + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    pub(crate) fn sql(&self, shape: &Shape) -> String {
        let col = |i: usize| ident(&self.rel.columns[i].name);
        let matcher = |keys: &[usize], first: usize| {
            let conds: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    if self.full {
                        format!("{}::text IS NOT DISTINCT FROM ${}::text", col(i), first + n)
                    } else {
                        format!("{} = ${}", col(i), first + n)
                    }
                })
                .collect();
            let conds = if conds.is_empty() { "false".to_string() } else { conds.join(" AND ") };
            if self.full {
                format!("ctid = (SELECT ctid FROM ONLY {} WHERE {conds} LIMIT 1)", self.name_sql)
            } else {
                conds
            }
        };
        match shape {
            Shape::Insert(rows) => {
                let n = self.rel.columns.len();
                let values: Vec<String> = (0..*rows)
                    .map(|r| {
                        let row: Vec<String> = (1..=n).map(|i| format!("${}", r * n + i)).collect();
                        format!("({})", row.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES {}",
                    self.name_sql,
                    (0..n).map(col).collect::<Vec<_>>().join(", "),
                    values.join(", ")
                )
            }
            // ONLY: a change to a parent's row never reaches its inheritance children (pgoutput
            // sends each child's changes as the child's).
            Shape::Update(set, keys) => format!(
                "UPDATE ONLY {} SET {} WHERE {}",
                self.name_sql,
                set.iter()
                    .enumerate()
                    .map(|(n, &i)| format!("{} = ${}", col(i), n + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
                matcher(keys, set.len() + 1)
            ),
            Shape::Delete(keys) => {
                format!("DELETE FROM ONLY {} WHERE {}", self.name_sql, matcher(keys, 1))
            }
            Shape::UpdateRows(set) => {
                let cols: Vec<usize> = set.iter().copied().chain(self.key_columns()).collect();
                format!(
                    "UPDATE ONLY {} AS x SET {} FROM ({}) AS v WHERE {}",
                    self.name_sql,
                    set.iter()
                        .enumerate()
                        .map(|(k, &i)| format!("{} = v.v{}", col(i), k + 1))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.unnest(&cols),
                    self.key_match(set.len())
                )
            }
            // (COPY writes identity columns as given, as OVERRIDING SYSTEM VALUE does; it fires
            // no rule, and a table with a rule that fires for replicated rows is not copied.)
            Shape::Copy => format!(
                "COPY {} ({}) FROM STDIN{}",
                self.name_sql,
                (0..self.rel.columns.len()).map(col).collect::<Vec<_>>().join(", "),
                if self.binary { " (FORMAT binary)" } else { "" }
            ),
            Shape::DeleteRows => format!(
                "DELETE FROM ONLY {} AS x USING ({}) AS v WHERE {}",
                self.name_sql,
                self.unnest(&self.key_columns()),
                self.key_match(0)
            ),
        }
    }
}

pub(crate) fn param(v: &Value) -> Param {
    match v {
        Value::Text(b) => Param(Some(b.clone()), false),
        Value::Binary(b) => Param(Some(b.clone()), true),
        Value::Null | Value::Unchanged => Param(None, false),
    }
}

/// A parameter type left to the server to infer (from the statement's cast).
fn of_unknown() -> Type {
    Type::new(String::new(), 0, Kind::Simple, String::new())
}

/// Rows in `COPY`'s binary format: the header, per row the number of values and each value's
/// length (-1: NULL) and bytes as its send function wrote them, and the trailer.
pub(crate) fn copy_binary(rows: &[Tuple]) -> Result<Bytes, ApplyError> {
    let mut out = BytesMut::with_capacity(
        21 + rows.iter().flatten().map(|v| 4 + v.bytes().map_or(0, Bytes::len)).sum::<usize>()
            + 2 * rows.len(),
    );
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension
    for row in rows {
        out.put_i16(i16::try_from(row.len()).map_err(|_| sync_error("too many columns"))?);
        for v in row {
            match v {
                Value::Binary(b) => {
                    out.put_i32(
                        i32::try_from(b.len()).map_err(|_| sync_error("a value too large"))?,
                    );
                    out.extend_from_slice(b);
                }
                // (An insert always has every value.)
                Value::Null | Value::Unchanged => out.put_i32(-1),
                Value::Text(_) => return Err(mixed_formats()),
            }
        }
    }
    out.put_i16(-1);
    Ok(out.freeze())
}

/// Rows in `COPY`'s text format: tab between values, `\N` for NULL, and a backslash before
/// what would end a value or a row.
pub(crate) fn copy_text(rows: &[Tuple]) -> Result<Bytes, ApplyError> {
    let mut out = BytesMut::with_capacity(
        rows.iter().flatten().map(|v| v.bytes().map_or(3, |b| b.len() + 1)).sum(),
    );
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.put_u8(b'\t');
            }
            match v {
                Value::Text(b) if !b.iter().any(|c| matches!(c, b'\\' | b'\t' | b'\n' | b'\r')) => {
                    out.extend_from_slice(b);
                }
                Value::Text(b) => {
                    let mut from = 0;
                    for (at, &c) in b.iter().enumerate() {
                        let escaped: &[u8] = match c {
                            b'\\' => b"\\\\",
                            b'\t' => b"\\t",
                            b'\n' => b"\\n",
                            b'\r' => b"\\r",
                            _ => continue,
                        };
                        out.extend_from_slice(&b[from..at]);
                        out.extend_from_slice(escaped);
                        from = at + 1;
                    }
                    out.extend_from_slice(&b[from..]);
                }
                // (An insert always has every value.)
                Value::Null | Value::Unchanged => out.extend_from_slice(b"\\N"),
                Value::Binary(_) => return Err(mixed_formats()),
            }
        }
        out.put_u8(b'\n');
    }
    Ok(out.freeze())
}

/// A catalog read's failure: the connection lost, or an error of the stream.
fn catalog_error(e: crate::catalog::CatalogError) -> ApplyError {
    if crate::execute::context::is_lost(e.postgres()) {
        ApplyError::ConnectionLost(e.to_string())
    } else {
        sync_error(e.to_string())
    }
}

/// A statement that fails unless this session's origin is at `end`: the previous batch
/// committed. (The error depends on the value read, so the planner cannot raise it early.)
pub(crate) fn origin_check(end: u64) -> String {
    format!(
        "SELECT CASE WHEN p = {lsn}::pg_lsn THEN 0 ELSE ('the batch before, up to source \
         position ' || {lsn} || ', did not commit: the replication origin is at ' || p)::int \
         END FROM pg_replication_origin_session_progress(false) AS p",
        lsn = literal(&crate::stream::lsn_text(end))
    )
}

/// Everything the applier keeps between batches.
pub(crate) struct Applier<'a> {
    pub(crate) ctx: &'a Ctx<'a>,
    pub(crate) tables_by_name: HashMap<(String, String), Option<(XidSnapshot, u64)>>,
    pub(crate) tables: HashMap<u32, Table>,
    pub(crate) pipe: Pipeline,
    /// A target transaction is open.
    pub(crate) open: bool,
    /// A source transaction is being received: (xid).
    pub(crate) in_source_tx: Option<u32>,
    /// The transaction being received was applied before: its changes are skipped.
    pub(crate) replayed: bool,
    /// Where the commit of the transaction being received is.
    pub(crate) final_lsn: u64,
    /// Changes of the open batch not sent yet, coalesced.
    pub(crate) buffer: Batch,
    pub(crate) batch_started: Instant,
    pub(crate) batch_changes: usize,
    /// The position of the last batch whose `COMMIT` was sent.
    pub(crate) origin_sent: Option<u64>,
    /// The last commit received, not yet committed on the target: (end, time).
    pub(crate) last_commit: Option<(u64, i64)>,
    pub(crate) batch_counts: BTreeMap<Arc<str>, Counters>,
    pub(crate) batch_total: Counters,
    /// Changes of the current source transaction skipped for a table (already in its copy).
    pub(crate) applied_lsn: u64,
    pub(crate) confirmed: u64,
    pub(crate) sync: SyncState,
    /// The prefix of this stream's heartbeat messages.
    pub(crate) prefix: String,
    /// The prefix of the cutover's barrier message.
    pub(crate) barrier: String,
    /// Rows changed, for the cutover's verification (with continuous verification only).
    pub(crate) touched: Option<Arc<std::sync::Mutex<Touched>>>,
    /// Told whether the stream is caught up (continuous verification waits for it).
    pub(crate) caught_up: Arc<std::sync::atomic::AtomicBool>,
    /// When the rate of changes was last sampled, and the rows applied then.
    pub(crate) rate_sample: Option<(f64, u64)>,
    /// A rollback window's stream: transactions applied under this origin (the forward
    /// migration's: pgtransit's own) are not sent back.
    pub(crate) ignore_origin: Option<String>,
    /// The current source transaction comes from `ignore_origin`.
    pub(crate) from_ignored_origin: bool,
    /// The stream's values come in binary: each published column type (source oid) with the
    /// built-in type whose binary form its values have (`catalog::binary_types`).
    pub(crate) binary: Option<Arc<HashMap<u32, u32>>>,
}

impl<'a> Applier<'a> {
    pub(crate) async fn begin_batch(&mut self) -> Result<(), tokio_postgres::Error> {
        if !self.open {
            self.pipe.sql("BEGIN".into()).await?;
            if self.pipe.commits > 0
                && let Some(end) = self.origin_sent
            {
                // The batch before may still fail (its COMMIT of a transaction aborted by an
                // error, not seen yet, ends it without one): this one then must not commit.
                self.pipe.sql(origin_check(end)).await?;
            }
            self.open = true;
            self.batch_started = Instant::now();
            self.batch_changes = 0;
        }
        Ok(())
    }

    /// A source transaction begins. One whose commit lies before what the target has applied
    /// was applied already (a resumed stream may send it again): all of it is skipped.
    pub(crate) fn begin(&mut self, xid: u32, final_lsn: u64) {
        self.from_ignored_origin = false;
        self.replayed = final_lsn < self.applied_lsn;
        self.final_lsn = final_lsn;
        if self.replayed {
            tracing::debug!(xid, "transaction already applied");
        }
        self.in_source_tx = Some(xid);
    }

    /// A source transaction commits: the batch is committed once it is big or old enough.
    pub(crate) async fn commit(
        &mut self,
        end_lsn: u64,
        commit_time: i64,
        stream: &impl ChangeSource,
    ) -> Result<(), ApplyError> {
        self.in_source_tx = None;
        if end_lsn <= self.applied_lsn {
            // Applied before (a resumed stream may send it again).
        } else if !self.open {
            // Nothing of it applied (every change was in a copy already): nothing to commit.
            // Were the process to stop now, the stream would send it again, and it would be
            // skipped again.
            self.applied_lsn = end_lsn;
        } else {
            self.last_commit = Some((end_lsn, commit_time));
            self.batch_total.transactions += 1;
            if self.batch_changes >= BATCH_CHANGES || self.batch_started.elapsed() >= BATCH_AGE {
                self.commit_batch(stream).await?;
            }
        }
        Ok(())
    }

    /// Commits the open target transaction with the position of the last source commit in it,
    /// without waiting for it: the target applies a batch while the next is read. An earlier
    /// batch's commit is waited for (at most one is in flight), and what committed is recorded
    /// (and acknowledged to the source).
    pub(crate) async fn commit_batch(
        &mut self,
        stream: &impl ChangeSource,
    ) -> Result<(), ApplyError> {
        if self.open {
            self.flush_buffer().await?;
            if let Some((end, time)) = self.last_commit {
                let secs = time as f64 / 1e6 + 946_684_800.0;
                self.pipe
                    .sql(format!(
                        "SELECT pg_replication_origin_xact_setup({}::pg_lsn, to_timestamp({secs}))",
                        literal(&crate::stream::lsn_text(end))
                    ))
                    .await
                    .map_err(pg)?;
            }
            self.origin_sent = self.last_commit.map(|(end, _)| end).or(self.origin_sent);
            let batch = Committed {
                end: self.last_commit.take().map(|(end, _)| end),
                total: std::mem::take(&mut self.batch_total),
                per_table: std::mem::take(&mut self.batch_counts),
            };
            self.pipe.sql_then("COMMIT".into(), Some(batch)).await.map_err(pg)?;
            self.open = false;
        }
        self.pipe.wait_commits(1).await.map_err(pg)?;
        self.settle(stream);
        Ok(())
    }

    /// Commits the open target transaction and waits until every batch is committed: the
    /// target has everything received so far.
    pub(crate) async fn commit_all(
        &mut self,
        stream: &impl ChangeSource,
    ) -> Result<(), ApplyError> {
        self.commit_batch(stream).await?;
        self.pipe.wait_commits(0).await.map_err(pg)?;
        self.settle(stream);
        Ok(())
    }

    /// Records the batches committed: their position applied (and acknowledged), their counts.
    pub(crate) fn settle(&mut self, stream: &impl ChangeSource) {
        if let Some(end) = self.record_committed() {
            stream.ack(end);
        }
    }

    /// Records the batches committed; returns the last one's position.
    fn record_committed(&mut self) -> Option<u64> {
        let mut last = None;
        for batch in std::mem::take(&mut self.pipe.done) {
            if let Some(end) = batch.end {
                self.applied_lsn = self.applied_lsn.max(end);
                self.confirmed = self.confirmed.max(end);
                last = Some(end);
            }
            self.sync.applied.add(&batch.total);
            for (t, c) in batch.per_table {
                self.sync.per_table.entry(t.to_string()).or_default().add(&c);
            }
        }
        last
    }

    pub(crate) async fn rollback(&mut self) {
        // (Batches committed before the failure are recorded; the stream is not told: the
        // next one starts from the target's origin anyway.)
        let _ = self.pipe.drain().await;
        self.record_committed();
        if self.open {
            let _ = self.pipe.client.batch_execute("ROLLBACK").await;
            self.open = false;
        }
        self.last_commit = None;
        self.buffer = Batch::default();
        self.batch_counts.clear();
        self.batch_total = Counters::default();
    }

    /// Counts a statement sent for `table`.
    fn count_statement(&mut self, table: &Arc<str>) {
        self.count(table, |c| c.statements += 1);
    }

    pub(crate) fn count(&mut self, table: &Arc<str>, f: impl Fn(&mut Counters)) {
        f(self.batch_counts.entry(table.clone()).or_default());
        f(&mut self.batch_total);
    }

    /// A relation message: checks the table against the target (DDL drift) and prepares it.
    pub(crate) async fn relation(&mut self, rel: Relation) -> Result<(), ApplyError> {
        let key = (rel.schema.clone(), rel.name.clone());
        let display: Arc<str> = qualified(&rel.schema, &rel.name).into();
        let Some(skip) = self.tables_by_name.get(&key).cloned() else {
            return Err(drift_error(format!(
                "the stream carries table {display}, which the execution plan does not stream"
            )));
        };
        if let Some(t) = self.tables.get(&rel.id)
            && t.rel == rel
        {
            return Ok(());
        }
        // Pending statements first: a failed one must be reported as itself.
        self.pipe.drain().await.map_err(pg)?;
        let columns = crate::catalog::read_table_columns(&self.pipe.client, &rel.schema, &rel.name)
            .await
            .map_err(catalog_error)?
            .ok_or_else(|| {
                drift_error(format!("table {display} no longer exists on the target"))
            })?;
        let source: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        let target: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        if source.iter().collect::<std::collections::BTreeSet<_>>()
            != target.iter().collect::<std::collections::BTreeSet<_>>()
        {
            let added: Vec<&&str> = source.iter().filter(|c| !target.contains(c)).collect();
            let dropped: Vec<&&str> = target.iter().filter(|c| !source.contains(c)).collect();
            let mut what = vec![];
            if !added.is_empty() {
                what.push(format!("has columns the target's lacks: {added:?}"));
            }
            if !dropped.is_empty() {
                what.push(format!("lacks columns the target's has: {dropped:?}"));
            }
            return Err(drift_error(format!("the source's table {display} {}", what.join("; "))));
        }
        // Each source column's target column (the sets are equal: checked above).
        let on_target: Vec<Option<&crate::catalog::ColumnInfo>> =
            rel.columns.iter().map(|c| columns.iter().find(|t| t.name == c.name)).collect();
        let identity_always =
            on_target.iter().map(|t| t.is_some_and(|t| t.identity_always)).collect();
        let types: Vec<u32> = on_target.iter().map(|t| t.map_or(0, |t| t.type_oid)).collect();
        let type_names =
            on_target.iter().map(|t| t.map_or(String::new(), |t| t.type_name.clone())).collect();
        let target_bases: Vec<u32> =
            on_target.iter().map(|t| t.map_or(0, |t| t.binary_base)).collect();
        let bases = self.binary_bases(&display, &rel, &target_bases)?;
        let array_types: Vec<String> = if self.binary.is_some() {
            on_target
                .iter()
                .map(|t| t.map_or(String::new(), |t| t.array_type_name.clone()))
                .collect()
        } else {
            vec![]
        };
        let full = rel.replica_identity == 'f';
        let key: Vec<String> = if full {
            vec![]
        } else {
            rel.columns.iter().filter(|c| c.key).map(|c| c.name.clone()).collect()
        };
        let order =
            crate::catalog::read_apply_order(&self.pipe.client, &rel.schema, &rel.name, &key)
                .await
                .map_err(catalog_error)?;
        let shown = display.clone();
        let typed = on_target.iter().all(|t| t.is_some_and(|t| !t.type_name.is_empty()));
        // Why the rows of the table are not coalesced by key (COPY still takes its inserts: it
        // reads values with each type's input function, as one-row statements do).
        let not_by_key = order
            .casts
            .clone()
            .or_else(|| (!typed).then(|| "a column of a type not found".to_string()))
            .or_else(|| {
                // (An array's values cannot be one element each of a parameter in binary.)
                array_types.iter().any(String::is_empty).then(|| {
                    "its values come in binary and a column's type has no array type (an \
                     array, say)"
                        .to_string()
                })
            })
            .or_else(|| order.across_keys.clone());
        let mode = if let Some(why) = &order.fires {
            tracing::info!(
                table = &*shown,
                why = why.as_str(),
                "changes applied one by one, in order"
            );
            Mode::Fires
        } else if let Some(why) = &not_by_key {
            tracing::info!(table = &*shown, why = why.as_str(), "changes not coalesced by key");
            Mode::Inserts
        } else if key.is_empty() {
            Mode::Inserts
        } else {
            Mode::ByKey
        };
        self.tables.insert(
            rel.id,
            Table {
                name_sql: qualified_ident(&rel.schema, &rel.name),
                display,
                skip,
                full,
                identity_always,
                types,
                type_names,
                statements: HashMap::new(),
                mode,
                binary: self.binary.is_some(),
                bases,
                array_types,
                rel,
            },
        );
        Ok(())
    }

    /// For a stream in binary, each column's built-in type (see [`Table::bases`]). A column
    /// whose type the stream was not started for (added since, or an older version of the
    /// table), or whose built-in type is another on the target (`target_bases`), cannot be read
    /// in binary: the stream starts again, in text.
    fn binary_bases(
        &self,
        display: &str,
        rel: &Relation,
        target_bases: &[u32],
    ) -> Result<Vec<u32>, ApplyError> {
        let Some(types) = &self.binary else { return Ok(vec![]) };
        rel.columns
            .iter()
            .zip(target_bases)
            .map(|(c, &on_target)| match types.get(&c.type_oid) {
                Some(&base) if base == on_target => Ok(base),
                _ => {
                    self.ctx.sessions.text_values.store(true, std::sync::atomic::Ordering::SeqCst);
                    Err(ApplyError::ConnectionLost(format!(
                        "column {} of {display} has a type the stream's binary values were not \
                         chosen for: streaming again, in text",
                        c.name
                    )))
                }
            })
            .collect()
    }

    pub(crate) async fn statement(
        &mut self,
        rel: u32,
        shape: Shape,
    ) -> Result<Statement, ApplyError> {
        let t = self
            .tables
            .get(&rel)
            .ok_or_else(|| sync_error("a change names an unknown relation"))?;
        if let Some(s) = t.statements.get(&shape) {
            return Ok(s.clone());
        }
        let sql = t.sql(&shape);
        let types = t.param_types(&shape);
        // Earlier statements first: a failure must be reported as itself.
        self.pipe.drain().await.map_err(pg)?;
        let stmt = self.pipe.client.prepare_typed(&sql, &types).await.map_err(pg)?;
        if let Some(t) = self.tables.get_mut(&rel) {
            t.statements.insert(shape, stmt.clone());
        }
        Ok(stmt)
    }

    pub(crate) fn table(&self, rel: u32) -> Result<&Table, ApplyError> {
        self.tables
            .get(&rel)
            .ok_or_else(|| sync_error(format!("a change names relation {rel}, never described")))
    }

    /// The current transaction's origin: one to ignore skips its changes.
    pub(crate) fn origin(&mut self, name: &str) {
        self.from_ignored_origin = self.ignore_origin.as_deref() == Some(name);
        if self.from_ignored_origin {
            tracing::debug!(origin = name, "a transaction pgtransit applied: not sent back");
        }
    }

    /// Whether the change to `rel` is already in the table's copy, or comes from an origin to
    /// ignore.
    pub(crate) fn skipped(&self, rel: u32) -> bool {
        if self.replayed || self.from_ignored_origin {
            return true;
        }
        // A transaction committed at or after the copy's position is not in it (and past that
        // position, 32-bit xids are not compared: they wrap).
        match (self.in_source_tx, self.tables.get(&rel).and_then(|t| t.skip.as_ref())) {
            (Some(xid), Some((snapshot, at))) => self.final_lsn < *at && snapshot.sees(xid),
            _ => false,
        }
    }

    /// Sends the buffered changes: per table, deletes, then updates, then inserts, each kind
    /// one set-based statement (one per set of columns for updates).
    pub(crate) async fn flush_buffer(&mut self) -> Result<(), ApplyError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let tables = &self.tables;
        let flushes = self
            .buffer
            .take(|rel, row| tables.get(&rel).map(|t| t.set_columns(row)).unwrap_or_default());
        for (rel, f) in flushes {
            self.flush_table(rel, f).await?;
        }
        Ok(())
    }

    async fn flush_table(&mut self, rel: u32, mut f: Flush) -> Result<(), ApplyError> {
        let t = self.table(rel)?;
        let (display, keys) = (t.display.clone(), t.key_columns());
        // Rows found by an integer key are looked up in the index's order (a quarter faster
        // than at random over a million rows).
        if let [k] = keys[..]
            && matches!(t.types[k], 20 | 21 | 23)
        {
            let by_key = |r: &Tuple| match &r[k] {
                Value::Text(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
                Value::Binary(b) => super::text_form::binary_int(b),
                _ => None,
            };
            f.deletes.sort_by_cached_key(by_key);
            for (_, rows) in &mut f.updates {
                rows.sort_by_cached_key(by_key);
            }
        }
        let binary = t.binary;
        let arrays = |rows: &[Tuple], cols: &[usize]| -> Result<Vec<ArrayParam>, ApplyError> {
            cols.iter().map(|&i| ArrayParam::column(rows, i, binary)).collect()
        };
        if !f.deletes.is_empty() {
            let params = arrays(&f.deletes, &keys)?;
            let stmt = self.statement(rel, Shape::DeleteRows).await?;
            let expect = Some((display.clone(), f.deletes.len() as u64));
            self.pipe.execute_rows(&stmt, params, expect).await.map_err(pg)?;
            self.count_statement(&display);
        }
        for (set, rows) in f.updates {
            let cols: Vec<usize> = set.iter().chain(&keys).copied().collect();
            let params = arrays(&rows, &cols)?;
            let stmt = self.statement(rel, Shape::UpdateRows(set)).await?;
            let expect = Some((display.clone(), rows.len() as u64));
            self.pipe.execute_rows(&stmt, params, expect).await.map_err(pg)?;
            self.count_statement(&display);
        }
        if !f.inserts.is_empty() {
            let rows = if binary { copy_binary(&f.inserts)? } else { copy_text(&f.inserts)? };
            let stmt = self.statement(rel, Shape::Copy).await?;
            self.pipe.copy(&stmt, rows).await.map_err(pg)?;
            self.count_statement(&display);
        }
        Ok(())
    }

    /// Offers a change to the buffer; gives it back when it must go on its own.
    fn offer(&mut self, c: Change) -> Result<(), Change> {
        let Some(t) = (match &c {
            Change::Insert { rel, .. }
            | Change::Update { rel, .. }
            | Change::Delete { rel, .. } => self.tables.get(rel),
            _ => None,
        }) else {
            return Err(c);
        };
        let key_of = |row: &Tuple| -> Vec<Value> {
            t.rel.columns.iter().zip(row).filter(|(c, _)| c.key).map(|(_, v)| v.clone()).collect()
        };
        let display = t.display.clone();
        match (c, &t.mode) {
            (Change::Insert { rel, new }, Mode::ByKey) => {
                let key = key_of(&new);
                self.buffer.insert(rel, key, new).map_err(|new| Change::Insert { rel, new })?;
                self.count(&display, |c| c.inserts += 1);
            }
            (Change::Insert { rel, new }, Mode::Inserts) => {
                self.buffer.append(rel, new).map_err(|new| Change::Insert { rel, new })?;
                self.count(&display, |c| c.inserts += 1);
            }
            // (An old tuple comes with a key change, or a table matched on every column.)
            (Change::Update { rel, old: None, new }, Mode::ByKey) => {
                let key = key_of(&new);
                self.buffer.update(rel, key, new).map_err(|new| Change::Update {
                    rel,
                    old: None,
                    new,
                })?;
                self.count(&display, |c| c.updates += 1);
            }
            (Change::Delete { rel, old }, Mode::ByKey) => {
                let key = key_of(&old);
                self.buffer.delete(rel, key, old).map_err(|old| Change::Delete { rel, old })?;
                self.count(&display, |c| c.deletes += 1);
            }
            (c, _) => return Err(c),
        }
        self.batch_changes += 1;
        Ok(())
    }

    /// Records the rows a change touches (before it is applied: a batch rolled back leaves
    /// more recorded than changed, never less).
    fn touch(&self, c: &Change) {
        let Some(touched) = &self.touched else { return };
        let (rel, tuples): (u32, [Option<&Tuple>; 2]) = match c {
            Change::Insert { rel, new } => (*rel, [Some(new), None]),
            Change::Update { rel, old, new } => (*rel, [old.as_ref(), Some(new)]),
            Change::Delete { rel, old } => (*rel, [Some(old), None]),
            Change::Truncate { rels, .. } => {
                let mut touched = touched.lock().expect("touched lock");
                for t in rels.iter().filter_map(|r| self.tables.get(r)) {
                    touched.record_whole(&t.display, self.final_lsn);
                }
                return;
            }
            _ => return,
        };
        let Some(t) = self.tables.get(&rel) else { return };
        if t.full || t.keys().next().is_none() {
            touched.lock().expect("touched lock").record_whole(&t.display, self.final_lsn);
            return;
        }
        let columns =
            || t.keys().map(|i| (t.rel.columns[i].name.clone(), t.type_names[i].clone())).collect();
        // Keys are kept, and looked up, in text: one that came in binary is read back (a key
        // that cannot be, or was not sent, leaves the table compared whole).
        let pack = |row: &Tuple| {
            let mut key = crate::execute::proof::KeyPacker::default();
            for i in t.keys() {
                match row.get(i)? {
                    Value::Null => key.null(),
                    Value::Text(b) => key.text(|out| {
                        out.extend_from_slice(b);
                        true
                    })?,
                    Value::Binary(b) => {
                        // (Bases are known for binary tables only; 0 reads nothing.)
                        let base = t.bases.get(i).copied().unwrap_or(0);
                        key.text(|out| super::text_form::write_key_text(b, base, out))?
                    }
                    Value::Unchanged => return None,
                }
            }
            Some(key.done())
        };
        // (Packed before the lock is taken: a verification round waits on it.)
        let packed = tuples.map(|row| row.map(pack));
        touched.lock().expect("touched lock").record_keys(
            &t.display,
            columns,
            packed.into_iter().flatten(),
            self.final_lsn,
        );
    }

    pub(crate) async fn change(&mut self, c: Change) -> Result<(), ApplyError> {
        if self.from_ignored_origin && matches!(c, Change::Truncate { .. }) {
            return Ok(());
        }
        if !self.replayed && !self.from_ignored_origin {
            self.touch(&c);
        }
        if let Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } =
            &c
            && self.skipped(*rel)
        {
            return Ok(());
        }
        // A table described again as it was (pgoutput does so after cache invalidations), and
        // what applies nothing (a type's or an origin's description, a message), change
        // nothing: what is buffered stays.
        let unchanged = match &c {
            Change::Relation(rel) => self.tables.get(&rel.id).is_some_and(|t| t.rel == *rel),
            Change::Insert { .. }
            | Change::Update { .. }
            | Change::Delete { .. }
            | Change::Truncate { .. } => false,
            _ => true,
        };
        if unchanged {
            return Ok(());
        }
        let c = match self.offer(c) {
            Ok(()) => {
                self.begin_batch().await.map_err(pg)?;
                if self.buffer.bytes >= BUFFER_BYTES {
                    self.flush_buffer().await?;
                }
                return Ok(());
            }
            Err(c) => c,
        };
        // Changes keep their order: what is buffered for the table goes first, and for a table
        // whose triggers fire (or anything but a row's change), what every table has.
        let own = match &c {
            Change::Insert { rel, .. }
            | Change::Update { rel, .. }
            | Change::Delete { rel, .. } => {
                self.tables.get(rel).filter(|t| t.mode != Mode::Fires).map(|_| *rel)
            }
            _ => None,
        };
        match own {
            Some(rel) => {
                if let Some(f) = self.buffer.take_table(rel, |row| {
                    self.tables.get(&rel).map(|t| t.set_columns(row)).unwrap_or_default()
                }) {
                    self.flush_table(rel, f).await?;
                }
            }
            None => self.flush_buffer().await?,
        }
        match c {
            Change::Relation(rel) => self.relation(rel).await?,
            Change::Insert { rel, new } => {
                let stmt = self.statement(rel, Shape::Insert(1)).await?;
                let display = self.table(rel)?.display.clone();
                self.begin_batch().await.map_err(pg)?;
                let params = new.iter().map(param).collect();
                self.pipe.execute(&stmt, params, None).await.map_err(pg)?;
                self.count(&display, |c| {
                    (c.inserts, c.statements) = (c.inserts + 1, c.statements + 1)
                });
                self.batch_changes += 1;
            }
            Change::Update { rel, old, new } => {
                self.update(rel, old, new).await?;
                self.batch_changes += 1;
            }
            Change::Delete { rel, old } => {
                let t = self.table(rel)?;
                let keys: Vec<usize> = if t.full {
                    (0..old.len()).filter(|&i| old[i] != Value::Unchanged).collect()
                } else {
                    t.key_columns()
                };
                let display = t.display.clone();
                let stmt = self.statement(rel, Shape::Delete(keys.clone())).await?;
                self.begin_batch().await.map_err(pg)?;
                let params = keys.iter().map(|&i| param(&old[i])).collect();
                self.pipe.execute(&stmt, params, Some(display.clone())).await.map_err(pg)?;
                self.count(&display, |c| {
                    (c.deletes, c.statements) = (c.deletes + 1, c.statements + 1)
                });
                self.batch_changes += 1;
            }
            Change::Truncate { rels, restart_identity, .. } => {
                let mut names = vec![];
                for rel in rels {
                    if self.skipped(rel) {
                        continue;
                    }
                    let t = self
                        .tables
                        .get(&rel)
                        .ok_or_else(|| sync_error("a truncate names an unknown relation"))?;
                    names.push((t.name_sql.clone(), t.display.clone()));
                }
                if names.is_empty() {
                    return Ok(());
                }
                self.begin_batch().await.map_err(pg)?;
                let list = names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
                let restart = if restart_identity { " RESTART IDENTITY" } else { "" };
                // pgoutput names every table the source's TRUNCATE emptied (children
                // included): `ONLY`, so a `TRUNCATE ONLY parent` on the source does not empty
                // the target's children.
                self.pipe.sql(format!("TRUNCATE ONLY {list}{restart}")).await.map_err(pg)?;
                for (_, display) in &names {
                    self.count(display, |c| c.truncates += 1);
                }
                self.count_statement(&names[0].1);
                self.batch_changes += 1;
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) async fn update(
        &mut self,
        rel: u32,
        old: Option<Tuple>,
        new: Tuple,
    ) -> Result<(), ApplyError> {
        let t = self.table(rel)?;
        let display = t.display.clone();
        let keys: Vec<usize> = match (&old, t.full) {
            (Some(o), true) => (0..o.len()).filter(|&i| o[i] != Value::Unchanged).collect(),
            _ => t.key_columns(),
        };
        let key_values: Vec<Param> = keys
            .iter()
            .map(|&i| match &old {
                Some(o) => param(&o[i]),
                None => param(&new[i]),
            })
            .collect();
        // An identity column GENERATED ALWAYS cannot be updated to a value: when it changed,
        // the row is moved (delete + insert with OVERRIDING SYSTEM VALUE); when it did not, it
        // is left out of the SET list.
        let always_changed = old.as_ref().is_some_and(|o| {
            t.identity_always.iter().enumerate().any(|(i, &a)| {
                a && o.get(i).is_some_and(|v| *v != Value::Unchanged && *v != new[i])
            })
        });
        if always_changed && new.contains(&Value::Unchanged) {
            return Err(sync_error(format!(
                "an update of {display} changes a GENERATED ALWAYS identity column and leaves a \
                 TOASTed value unchanged: pgtransit cannot apply it without the old value. Set \
                 REPLICA IDENTITY FULL on the source table, abort and migrate again"
            )));
        }
        if always_changed {
            let delete = self.statement(rel, Shape::Delete(keys.clone())).await?;
            let insert = self.statement(rel, Shape::Insert(1)).await?;
            self.begin_batch().await.map_err(pg)?;
            self.pipe.execute(&delete, key_values, Some(display.clone())).await.map_err(pg)?;
            self.pipe.execute(&insert, new.iter().map(param).collect(), None).await.map_err(pg)?;
            self.count(&display, |c| (c.updates, c.statements) = (c.updates + 1, c.statements + 2));
            return Ok(());
        }
        let set: Vec<usize> = (0..new.len())
            .filter(|&i| new[i] != Value::Unchanged && !t.identity_always[i])
            .collect();
        if set.is_empty() {
            self.count(&display, |c| c.updates += 1);
            return Ok(());
        }
        let stmt = self.statement(rel, Shape::Update(set.clone(), keys)).await?;
        self.begin_batch().await.map_err(pg)?;
        let mut params: Vec<Param> = set.iter().map(|&i| param(&new[i])).collect();
        params.extend(key_values);
        self.pipe.execute(&stmt, params, Some(display.clone())).await.map_err(pg)?;
        self.count(&display, |c| (c.updates, c.statements) = (c.updates + 1, c.statements + 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn a_snapshot_sees_committed_transactions_and_not_running_or_later_ones() {
        let s = XidSnapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(99) && s.sees(100 - 1));
        assert!(s.sees(100), "below xmin... 100 is xmin: not running, committed before");
        assert!(!s.sees(101) && !s.sees(103), "in progress at the snapshot");
        assert!(s.sees(102) && s.sees(104));
        assert!(!s.sees(105) && !s.sees(200), "started after the snapshot");
        assert_eq!(XidSnapshot::parse("7:7:"), Some(XidSnapshot { xmin: 7, xmax: 7, xip: vec![] }));
        assert_eq!(XidSnapshot::parse("garbage"), None);
    }

    #[test]
    pub(crate) fn stream_xids_are_widened_with_the_snapshots_epoch() {
        // Snapshot in epoch 1, just after wraparound; the stream's 32-bit xid is from before it.
        let xmax = (1u64 << 32) + 10;
        let s = XidSnapshot { xmin: xmax, xmax, xip: vec![] };
        assert!(s.sees(0xffff_fff0), "epoch 0's last xids are older than the snapshot");
        assert!(!s.sees(20), "epoch 1's xid 20 is newer");
        assert_eq!(widen(5, 1 << 33), (1 << 33) + 5);
    }

    pub(crate) fn table(full: bool) -> Table {
        Table {
            rel: Relation {
                id: 1,
                schema: "s".into(),
                name: "T".into(),
                replica_identity: if full { 'f' } else { 'd' },
                columns: vec![
                    crate::stream::Column { name: "id".into(), key: true, type_oid: 23 },
                    crate::stream::Column { name: "note".into(), key: full, type_oid: 16385 },
                ],
            },
            name_sql: r#"s."T""#.into(),
            display: "s.T".into(),
            skip: None,
            full,
            identity_always: vec![false, false],
            types: vec![23, 16385],
            type_names: vec!["integer".into(), "s.mood".into()],
            statements: HashMap::new(),
            mode: if full { Mode::Inserts } else { Mode::ByKey },
            binary: false,
            bases: vec![],
            array_types: vec![],
        }
    }

    #[test]
    pub(crate) fn statements_quote_names_match_on_the_key_and_skip_unchanged_columns() {
        let t = table(false);
        assert_eq!(
            t.sql(&Shape::Insert(1)),
            r#"INSERT INTO s."T" ("id", "note") OVERRIDING SYSTEM VALUE VALUES ($1, $2)"#
        );
        assert_eq!(
            t.sql(&Shape::Insert(2)),
            r#"INSERT INTO s."T" ("id", "note") OVERRIDING SYSTEM VALUE VALUES ($1, $2), ($3, $4)"#
        );
        assert_eq!(
            t.sql(&Shape::Update(vec![1], vec![0])),
            r#"UPDATE ONLY s."T" SET "note" = $1 WHERE "id" = $2"#
        );
        assert_eq!(t.sql(&Shape::Delete(vec![0])), r#"DELETE FROM ONLY s."T" WHERE "id" = $1"#);
    }

    #[test]
    pub(crate) fn every_parameter_is_typed_as_its_target_column_so_composite_keys_match() {
        let t = table(false);
        let oids = |shape| t.param_types(&shape).iter().map(Type::oid).collect::<Vec<_>>();
        assert_eq!(oids(Shape::Insert(2)), [23, 16385, 23, 16385]);
        // SET columns first, then the key.
        assert_eq!(oids(Shape::Update(vec![1], vec![0])), [16385, 23]);
        assert_eq!(oids(Shape::Delete(vec![1])), [16385]);
    }

    #[test]
    pub(crate) fn set_based_statements_cast_text_arrays_to_each_column_and_join_on_the_key() {
        let t = table(false);
        assert_eq!(t.sql(&Shape::Copy), r#"COPY s."T" ("id", "note") FROM STDIN"#);
        let rows = [
            vec![Value::Text("1".into()), Value::Text("a\tb\\c\nd\re".into())],
            vec![Value::Text("2".into()), Value::Null],
        ];
        assert_eq!(&copy_text(&rows).unwrap()[..], b"1\ta\\tb\\\\c\\nd\\re\n2\t\\N\n");
        assert_eq!(
            t.sql(&Shape::UpdateRows(vec![1])),
            r#"UPDATE ONLY s."T" AS x SET "note" = v.v1 FROM (SELECT CAST(u.v1 AS s.mood) AS v1, CAST(u.v2 AS integer) AS v2 FROM unnest($1::text[], $2::text[]) AS u(v1, v2)) AS v WHERE x."id" = v.v2"#
        );
        assert_eq!(
            t.sql(&Shape::DeleteRows),
            r#"DELETE FROM ONLY s."T" AS x USING (SELECT CAST(u.v1 AS integer) AS v1 FROM unnest($1::text[]) AS u(v1)) AS v WHERE x."id" = v.v1"#
        );
        assert_eq!(
            t.param_types(&Shape::UpdateRows(vec![1])),
            [Type::TEXT_ARRAY, Type::TEXT_ARRAY]
        );
        let row = vec![Value::Text("1".into()), Value::Unchanged];
        assert!(t.set_columns(&row).is_empty(), "neither the key nor an unchanged value is set");
    }

    #[test]
    pub(crate) fn tables_without_a_key_match_one_row_on_every_column() {
        let t = table(true);
        assert_eq!(
            t.sql(&Shape::Delete(vec![0, 1])),
            r#"DELETE FROM ONLY s."T" WHERE ctid = (SELECT ctid FROM ONLY s."T" WHERE "id"::text IS NOT DISTINCT FROM $1::text AND "note"::text IS NOT DISTINCT FROM $2::text LIMIT 1)"#
        );
    }
}
