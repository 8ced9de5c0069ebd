//! Change streaming (online mode): the slot's changes applied to the target, exactly once.
//!
//! - **Exactly once.** Every target transaction ends with
//!   `pg_replication_origin_xact_setup(<source commit end>, ...)`: the applied source position is
//!   committed with the changes. A restart reads it back and streams from there; only then is
//!   the slot told (standby status update) that the position is durable.
//! - **Consistent with the copies.** Each table was copied under a snapshot whose visible
//!   transactions the stream skips for that table (`XidSnapshot::sees`), and applies the rest.
//! - **Fast.** Source transactions are batched into target transactions (up to
//!   [`BATCH_CHANGES`] changes or [`BATCH_AGE`]), statements are prepared once per table and
//!   shape, and pipelined (up to [`PIPELINE`] in flight). Memory stays bounded whatever the size
//!   of a source transaction.
//! - **Faithful.** Values travel in their text form under pinned session settings; `INSERT`
//!   says `OVERRIDING SYSTEM VALUE` (identity columns); unchanged TOAST values are left out of
//!   `UPDATE`; a key change moves the row; `session_replication_role = replica` keeps target
//!   triggers and foreign-key checks from firing for replicated rows.
//! - **Watched.** A heartbeat (`pg_logical_emit_message`) every second measures the lag; the
//!   source's schema is compared every few seconds with what it was when streaming began, and a
//!   change stops the stream with what changed (DDL is not replicated).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use postgres_types::{Format, IsNull, Kind, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use crate::apply::{ApplyError, Ctx, Event};
use crate::plan::StreamTable;
use crate::sql::{ident, literal, qualified, qualified_ident};
use crate::state::{Counters, State, SyncState, now_f64};
use crate::stream::{Change, ChangeSource, PgoutputStream, Relation, StreamSettings, Tuple, Value};

/// A target transaction is committed after this many changes...
pub const BATCH_CHANGES: usize = 20_000;
/// ... or when it is this old, at the next source commit.
pub const BATCH_AGE: Duration = Duration::from_millis(100);
/// Statements sent ahead of their results.
pub const PIPELINE: usize = 1024;
/// Consecutive inserts into one table sent as one statement, at most.
pub const INSERT_ROWS: usize = 100;
/// The protocol's limit of parameters per statement.
const MAX_PARAMS: usize = 65_535;
/// A batch open between source transactions is committed once the stream has been quiet this
/// long (so a lone transaction is applied at once, and a busy stream fills batches).
pub const IDLE: Duration = Duration::from_millis(5);
/// The longest the drain may take after the fence (the lag was under `sync.max_lag`).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How often the heartbeat is emitted on the source.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The stream counts as stalled when nothing has arrived for this long although the source
/// says it sent a heartbeat this long ago (a connection a middlebox keeps open but passes
/// nothing through): it is then dropped and started again, as when lost.
pub const STALL: Duration = Duration::from_secs(30);
/// The applier counts as stuck when neither a statement result nor a change came for this
/// long (a server, mostly the target, that stopped answering on a connection still open), and
/// the target does not say its session is at work: the stream is dropped and started again, as
/// when lost. Longer than the fence's `lock_timeout`.
pub const STUCK: Duration = Duration::from_secs(90);

/// [`STALL`], or in debug builds `PGTRANSIT_WATCHDOG_SECS` (for the tests; [`stuck`] is three
/// times that).
pub(crate) fn stall() -> Duration {
    let secs = cfg!(debug_assertions)
        .then(|| std::env::var("PGTRANSIT_WATCHDOG_SECS").ok()?.parse::<u64>().ok())
        .flatten();
    secs.map_or(STALL, Duration::from_secs)
}

/// [`STUCK`] (see [`stall`]).
pub(crate) fn stuck() -> Duration {
    if stall() == STALL { STUCK } else { stall() * 3 }
}

/// When the applier (or a copy) last got somewhere (a change taken, a statement's result, a
/// chunk of data), for the watchdogs: a [`monotonic_ms`] time.
#[derive(Clone, Default)]
pub(crate) struct Progress(Arc<std::sync::atomic::AtomicU64>);

/// Milliseconds since a fixed moment of this process (monotonic: a clock stepped by NTP does
/// not fool the watchdog).
fn monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Progress {
    pub(crate) fn now(&self) {
        self.0.store(monotonic_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }

    /// Returns once nothing has happened for [`STUCK`].
    pub(crate) async fn stuck(&self) {
        loop {
            let idle = self.idle_for();
            if idle >= stuck() {
                return;
            }
            tokio::time::sleep(stuck() - idle + Duration::from_millis(100)).await;
        }
    }
}

/// A session of a server, exactly: its pid and its start time (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pid: i32,
    started: String,
}

impl Session {
    /// Its pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// When it started (`backend_start` as text).
    pub(crate) fn started(&self) -> &str {
        &self.started
    }

    /// The session of `client`.
    pub(crate) async fn of(client: &Client) -> Result<Session, tokio_postgres::Error> {
        let me = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity \
                 WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Session { pid: me.get(0), started: me.get(1) })
    }
}

/// The sessions of this process's last stream. After the stream was lost they may live on,
/// unaware, on their servers (a stalled connection is only noticed by its server after
/// `wal_sender_timeout` or TCP's timeouts): the walsender still holds the slot, the target
/// session the replication origin, maybe a batch about to commit. The next stream ends them,
/// and waits until they are gone, before it reads the applied position.
static PREVIOUS: std::sync::Mutex<(Option<Session>, Option<Session>)> =
    std::sync::Mutex::new((None, None));

/// Returns once the applier has made no progress for [`stuck`] and the target does not say
/// that its session is at work: a long statement or a lock wait is not a stuck connection,
/// but a session idle on the target while the applier waits for it is (or a target that does
/// not even answer a new connection).
async fn stuck_target(beat: &Progress, servers: &crate::apply::Servers, session: &Session) {
    loop {
        beat.stuck().await;
        let probe = async {
            let c = crate::conn::connect_with(&servers.target, "pgtransit/probe", &servers.policy)
                .await
                .ok()?;
            let row = c
                .query_opt(
                    "SELECT state = 'active', coalesce(wait_event_type || ': ' || wait_event, \
                            'running') FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start::text = $2",
                    &[&session.pid, &session.started],
                )
                .await
                .ok()??;
            Some((row.get::<_, bool>(0), row.get::<_, String>(1)))
        };
        match tokio::time::timeout(stall(), probe).await {
            Ok(Some((true, what))) => {
                tracing::info!(pid = session.pid, "the target's session is still at work ({what})");
                beat.now();
            }
            _ => return,
        }
    }
}

/// Ends `session` if it still runs (the caller's own role may), and waits until it is gone.
pub(crate) async fn end_previous(
    client: &Client,
    session: &Session,
    what: &str,
) -> Result<(), ApplyError> {
    let started = Instant::now();
    loop {
        let alive: bool = client
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[&session.pid, &session.started],
            )
            .await
            .map_err(pg)?
            .get(0);
        if !alive {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(ApplyError::ConnectionLost(format!(
                "the {what} of the stream before (pid {}) does not end",
                session.pid
            )));
        }
        tracing::warn!(pid = session.pid, "ending the {what} of the lost stream");
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[&session.pid, &session.started],
            )
            .await
            .map_err(pg)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transaction snapshot as `pg_current_snapshot()` prints it: which transactions it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
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

/// A statement parameter sent in text form: the server parses it with the column type's input
/// function, exactly as pgoutput printed it with the output function.
#[derive(Debug, Clone)]
struct Text(Option<Bytes>);

impl ToSql for Text {
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
        Format::Text
    }

    to_sql_checked!();
}

type Pending = Pin<Box<dyn Future<Output = Result<Outcome, tokio_postgres::Error>> + Send>>;

/// What a pipelined statement reports back.
struct Outcome {
    /// Rows it changed.
    rows: u64,
    /// For updates and deletes: the table, to count rows that were not found.
    expect_row: Option<Arc<str>>,
}

/// Statements sent to the target ahead of their results.
struct Pipeline {
    client: Arc<Client>,
    inflight: FuturesOrdered<Pending>,
    missing: u64,
    beat: Progress,
}

impl Pipeline {
    /// Sends a statement now (its request is queued on the connection before this returns, so
    /// statements run in the order they were pushed) and keeps its result for later.
    async fn push(&mut self, mut f: Pending) -> Result<(), tokio_postgres::Error> {
        if let std::task::Poll::Ready(r) = futures_util::poll!(f.as_mut()) {
            self.take(r)?;
        } else {
            self.inflight.push_back(f);
        }
        while self.inflight.len() > PIPELINE {
            if let Some(r) = self.inflight.next().await {
                self.take(r)?;
            }
        }
        Ok(())
    }

    fn take(
        &mut self,
        r: Result<Outcome, tokio_postgres::Error>,
    ) -> Result<(), tokio_postgres::Error> {
        self.beat.now();
        let o = r?;
        if o.rows == 0
            && let Some(table) = o.expect_row
        {
            self.missing += 1;
            tracing::warn!(table = %table, "a replicated update or delete found no row on the target");
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        stmt: &Statement,
        params: Vec<Text>,
        expect_row: Option<Arc<str>>,
    ) -> Result<(), tokio_postgres::Error> {
        let (client, stmt) = (self.client.clone(), stmt.clone());
        self.push(Box::pin(async move {
            let rows = client.execute_raw(&stmt, params.iter()).await?;
            Ok(Outcome { rows, expect_row })
        }))
        .await
    }

    async fn sql(&mut self, sql: String) -> Result<(), tokio_postgres::Error> {
        let client = self.client.clone();
        self.push(Box::pin(async move {
            client.batch_execute(&sql).await?;
            Ok(Outcome { rows: 0, expect_row: None })
        }))
        .await
    }

    /// Waits for every result; the first error wins.
    async fn drain(&mut self) -> Result<(), tokio_postgres::Error> {
        let mut first = None;
        while let Some(r) = self.inflight.next().await {
            if let Err(e) = self.take(r)
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Kinds of prepared statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    /// This many rows in one statement.
    Insert(usize),
    /// Columns set (by index), then the key columns matched.
    Update(Vec<usize>, Vec<usize>),
    Delete(Vec<usize>),
}

/// A published table as the applier knows it.
struct Table {
    rel: Relation,
    name_sql: String,
    display: Arc<str>,
    /// Copy snapshot: the transactions whose changes the copy already holds.
    /// The copy's snapshot and the source position it was taken at (every transaction it sees
    /// committed before that position).
    skip: Option<(XidSnapshot, u64)>,
    /// Matched on every column (replica identity full): by `ctid`, one row at a time.
    full: bool,
    identity_always: Vec<bool>,
    /// Each column's type on the target (0: unknown, left to the server to infer).
    types: Vec<u32>,
    statements: HashMap<Shape, Statement>,
}

impl Table {
    fn key_columns(&self) -> Vec<usize> {
        self.rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect()
    }

    /// The types of a statement's parameters, in order: each the target column's own type, so
    /// the server never has to guess one (an untyped parameter compared with a composite
    /// column is an anonymous record, which has no input function).
    fn param_types(&self, shape: &Shape) -> Vec<Type> {
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
        }
    }

    fn sql(&self, shape: &Shape) -> String {
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
        }
    }
}

fn text(v: &Value) -> Text {
    match v {
        Value::Text(b) => Text(Some(b.clone())),
        Value::Null | Value::Unchanged => Text(None),
    }
}

/// Why streaming stopped without an error.
pub enum Stopped {
    /// Ctrl-C or SIGTERM: the next `apply` resumes.
    OnRequest,
    /// The cutover fenced the source and the stream applied everything up to the barrier.
    Drained(Box<Fenced>),
}

/// When the stream stops for the cutover.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// When `pgtransit cutover` asks: this file appears (in the state directory).
    Requested(std::path::PathBuf),
    /// As soon as the migration is ready (`cutover.mode: auto`, or `pgtransit cutover` with no
    /// apply running).
    WhenReady,
}

/// The cutover, as the stream carries out its first part.
pub struct Cutover<'a> {
    /// When.
    pub trigger: Trigger,
    /// The fence step (its SQL and mode).
    pub fence: &'a crate::plan::Step,
}

/// The fence, up.
pub struct Fenced {
    /// The session that put it up: for `lock_tables` it holds the locks until it ends.
    pub client: Client,
    /// The source database.
    pub database: String,
    /// When it went up.
    pub at: Instant,
    /// Where the barrier emitted after it is (an older barrier, from a cutover that failed
    /// earlier, may come through the stream first).
    pub barrier_lsn: u64,
}

/// An error of the stream, with the operator's fix.
fn sync_error(message: impl Into<String>) -> ApplyError {
    ApplyError::StepFailed {
        id: "sync:stream".into(),
        object: "change stream".into(),
        message: message.into(),
    }
}

/// Schema changes on the source since streaming began.
fn drift_error(what: String) -> ApplyError {
    ApplyError::Drift(what)
}

fn pg(e: tokio_postgres::Error) -> ApplyError {
    if crate::apply::is_lost(&e) {
        ApplyError::ConnectionLost(crate::apply::db_message(&e))
    } else {
        sync_error(crate::apply::db_message(&e))
    }
}

/// A heartbeat emitted on the source and not yet seen in the stream.
struct Beat {
    seq: u64,
    /// When it was emitted (Unix time).
    at: f64,
    /// Its WAL position.
    lsn: u64,
    /// When the source was first seen to have sent it (its walsender's `sent_lsn` past it).
    sent_at: Option<f64>,
}

/// What the heartbeat task shares with the applier.
#[derive(Default)]
struct Live {
    /// Heartbeats emitted and not yet seen in the stream.
    pending: VecDeque<Beat>,
    /// The source's current WAL position at the last heartbeat.
    source_lsn: u64,
    /// A schema change found on the source.
    drift: Option<String>,
    /// This run's heartbeats say so in their content (older ones may come through the stream
    /// after a restart, and measure nothing).
    nonce: String,
    /// One of this run's heartbeats came through: the lag is measured.
    own_seen: bool,
    /// The heartbeat connection failed: why, and whether the connection went away.
    failed: Option<(String, bool)>,
    /// When the heartbeat being emitted now was sent off (a source that does not answer it
    /// makes the lag grow, not vanish).
    inflight: Option<f64>,
}

/// Everything the applier keeps between batches.
struct Applier<'a> {
    ctx: &'a Ctx<'a>,
    tables_by_name: HashMap<(String, String), Option<(XidSnapshot, u64)>>,
    tables: HashMap<u32, Table>,
    pipe: Pipeline,
    /// A target transaction is open.
    open: bool,
    /// A source transaction is being received: (xid).
    in_source_tx: Option<u32>,
    /// The transaction being received was applied before: its changes are skipped.
    replayed: bool,
    /// Where the commit of the transaction being received is.
    final_lsn: u64,
    /// Consecutive inserts into one table, not sent yet.
    inserts: Option<(u32, Vec<Tuple>)>,
    batch_started: Instant,
    batch_changes: usize,
    /// The last commit received, not yet committed on the target: (end, time).
    last_commit: Option<(u64, i64)>,
    batch_counts: BTreeMap<Arc<str>, Counters>,
    batch_total: Counters,
    /// Changes of the current source transaction skipped for a table (already in its copy).
    applied_lsn: u64,
    confirmed: u64,
    sync: SyncState,
    prefix: String,
}

impl<'a> Applier<'a> {
    async fn begin_batch(&mut self) -> Result<(), tokio_postgres::Error> {
        if !self.open {
            self.pipe.sql("BEGIN".into()).await?;
            self.open = true;
            self.batch_started = Instant::now();
            self.batch_changes = 0;
        }
        Ok(())
    }

    /// Commits the open target transaction with the position of the last source commit in it.
    /// Returns the position now durable on the target.
    async fn commit_batch(
        &mut self,
        stream: &impl ChangeSource,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.open {
            return Ok(());
        }
        if let Some((end, time)) = self.last_commit {
            let secs = time as f64 / 1e6 + 946_684_800.0;
            self.pipe
                .sql(format!(
                    "SELECT pg_replication_origin_xact_setup({}::pg_lsn, to_timestamp({secs}))",
                    literal(&crate::stream::lsn_text(end))
                ))
                .await?;
        }
        self.pipe.sql("COMMIT".into()).await?;
        self.pipe.drain().await?;
        self.open = false;
        if let Some((end, time)) = self.last_commit.take() {
            self.applied_lsn = end;
            self.confirmed = self.confirmed.max(end);
            stream.ack(end);
            let _ = time;
        }
        self.sync.applied.add(&self.batch_total);
        for (t, c) in std::mem::take(&mut self.batch_counts) {
            self.sync.per_table.entry(t.to_string()).or_default().add(&c);
        }
        self.batch_total = Counters::default();
        Ok(())
    }

    async fn rollback(&mut self) {
        if self.open {
            let _ = self.pipe.drain().await;
            let _ = self.pipe.client.batch_execute("ROLLBACK").await;
            self.open = false;
        }
        self.last_commit = None;
        self.inserts = None;
        self.batch_counts.clear();
        self.batch_total = Counters::default();
    }

    fn count(&mut self, table: &Arc<str>, f: impl Fn(&mut Counters)) {
        f(self.batch_counts.entry(table.clone()).or_default());
        f(&mut self.batch_total);
    }

    /// A relation message: checks the table against the target (DDL drift) and prepares it.
    async fn relation(&mut self, rel: Relation) -> Result<(), ApplyError> {
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
            .map_err(|e| {
                if crate::apply::is_lost(e.postgres()) {
                    ApplyError::ConnectionLost(e.to_string())
                } else {
                    sync_error(e.to_string())
                }
            })?
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
        let identity_always = rel
            .columns
            .iter()
            .map(|c| columns.iter().any(|t| t.name == c.name && t.identity_always))
            .collect();
        let types = rel
            .columns
            .iter()
            .map(|c| columns.iter().find(|t| t.name == c.name).map_or(0, |t| t.type_oid))
            .collect();
        let full = rel.replica_identity == 'f';
        self.tables.insert(
            rel.id,
            Table {
                name_sql: qualified_ident(&rel.schema, &rel.name),
                display,
                skip,
                full,
                identity_always,
                types,
                statements: HashMap::new(),
                rel,
            },
        );
        Ok(())
    }

    async fn statement(&mut self, rel: u32, shape: Shape) -> Result<Statement, ApplyError> {
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

    fn table(&self, rel: u32) -> Result<&Table, ApplyError> {
        self.tables
            .get(&rel)
            .ok_or_else(|| sync_error(format!("a change names relation {rel}, never described")))
    }

    /// Whether the change to `rel` is already in the table's copy.
    fn skipped(&self, rel: u32) -> bool {
        if self.replayed {
            return true;
        }
        // A transaction committed at or after the copy's position is not in it (and past that
        // position, 32-bit xids are not compared: they wrap).
        match (self.in_source_tx, self.tables.get(&rel).and_then(|t| t.skip.as_ref())) {
            (Some(xid), Some((snapshot, at))) => self.final_lsn < *at && snapshot.sees(xid),
            _ => false,
        }
    }

    /// Sends the buffered inserts.
    async fn flush_inserts(&mut self) -> Result<(), ApplyError> {
        let Some((rel, rows)) = self.inserts.take() else { return Ok(()) };
        let stmt = self.statement(rel, Shape::Insert(rows.len())).await?;
        let display = self.table(rel)?.display.clone();
        self.begin_batch().await.map_err(pg)?;
        let n = rows.len() as u64;
        let params = rows.iter().flat_map(|r| r.iter().map(text)).collect();
        self.pipe.execute(&stmt, params, None).await.map_err(pg)?;
        self.count(&display, |c| c.inserts += n);
        self.batch_changes += rows.len();
        Ok(())
    }

    async fn change(&mut self, c: Change) -> Result<(), ApplyError> {
        if !matches!(c, Change::Insert { .. }) {
            // Changes keep their order: buffered inserts go first.
            self.flush_inserts().await?;
        }
        match c {
            Change::Relation(rel) => self.relation(rel).await?,
            Change::Insert { rel, new } => {
                if self.skipped(rel) {
                    return Ok(());
                }
                // Consecutive inserts into one table go out as one multi-row INSERT.
                if self.inserts.as_ref().is_some_and(|(r, _)| *r != rel) {
                    self.flush_inserts().await?;
                }
                let cap = (MAX_PARAMS / new.len().max(1)).clamp(1, INSERT_ROWS);
                let (_, rows) = self.inserts.get_or_insert_with(|| (rel, Vec::new()));
                rows.push(new);
                if rows.len() >= cap {
                    self.flush_inserts().await?;
                }
            }
            Change::Update { rel, old, new } => {
                if self.skipped(rel) {
                    return Ok(());
                }
                self.update(rel, old, new).await?;
                self.batch_changes += 1;
            }
            Change::Delete { rel, old } => {
                if self.skipped(rel) {
                    return Ok(());
                }
                let t = self.table(rel)?;
                let keys: Vec<usize> = if t.full {
                    (0..old.len()).filter(|&i| old[i] != Value::Unchanged).collect()
                } else {
                    t.key_columns()
                };
                let display = t.display.clone();
                let stmt = self.statement(rel, Shape::Delete(keys.clone())).await?;
                self.begin_batch().await.map_err(pg)?;
                let params = keys.iter().map(|&i| text(&old[i])).collect();
                self.pipe.execute(&stmt, params, Some(display.clone())).await.map_err(pg)?;
                self.count(&display, |c| c.deletes += 1);
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
                self.batch_changes += 1;
            }
            _ => {}
        }
        Ok(())
    }

    async fn update(&mut self, rel: u32, old: Option<Tuple>, new: Tuple) -> Result<(), ApplyError> {
        let t = self.table(rel)?;
        let display = t.display.clone();
        let keys: Vec<usize> = match (&old, t.full) {
            (Some(o), true) => (0..o.len()).filter(|&i| o[i] != Value::Unchanged).collect(),
            _ => t.key_columns(),
        };
        let key_values: Vec<Text> = keys
            .iter()
            .map(|&i| match &old {
                Some(o) => text(&o[i]),
                None => text(&new[i]),
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
            self.pipe.execute(&insert, new.iter().map(text).collect(), None).await.map_err(pg)?;
            self.count(&display, |c| c.updates += 1);
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
        let mut params: Vec<Text> = set.iter().map(|&i| text(&new[i])).collect();
        params.extend(key_values);
        self.pipe.execute(&stmt, params, Some(display.clone())).await.map_err(pg)?;
        self.count(&display, |c| c.updates += 1);
        Ok(())
    }
}

/// Streams changes until Ctrl-C (or an error). `tables` are the published tables and their
/// copy steps; `state` has their copy snapshots and receives the progress.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    ctx: &Ctx<'_>,
    slot: &str,
    publication: &str,
    origin: &str,
    tables: &[StreamTable],
    max_lag: Duration,
    drift_every: Duration,
    scope: &crate::scope::Scope,
    cutover: Option<&Cutover<'_>>,
    state: &mut State,
) -> Result<Stopped, ApplyError> {
    let servers = ctx.servers;
    let mut tables_by_name = HashMap::new();
    for t in tables {
        let record = t.parts.first().unwrap_or(&t.copy_step);
        let snapshot = state.steps.get(record).and_then(|r| {
            let snapshot = XidSnapshot::parse(r.source_snapshot.as_deref()?)?;
            let at = crate::stream::parse_lsn(r.source_lsn.as_deref()?)?;
            Some((snapshot, at))
        });
        tables_by_name.insert((t.schema.clone(), t.table.clone()), snapshot);
    }
    let mut sync = state.sync.clone().unwrap_or_default();
    sync.streaming = true;
    sync.pid = Some(std::process::id());
    sync.error = None;
    sync.max_lag_seconds = max_lag.as_secs_f64();

    // Target: one session, its origin set up; the position it has applied.
    let target = crate::apply::connect_target(servers, "pgtransit/sync").await?;
    let pinned = crate::conn::PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", literal(v)))
        .collect::<String>();
    target
        // Updates and deletes find their row by key: always through the key's index (a table
        // that was tiny when the statement was planned must not be scanned whole ever after).
        .batch_execute(&format!(
            "SET session_replication_role = replica; SET enable_seqscan = off; {pinned}"
        ))
        .await
        .map_err(pg)?;
    // The target session of a stream this process lost may still hold the origin, or be about
    // to commit a batch: it ends before the applied position is read.
    let previous = PREVIOUS.lock().expect("previous lock").0.clone();
    if let Some(session) = previous {
        end_previous(&target, &session, "target session").await?;
    }
    let me = Session::of(&target).await.map_err(pg)?;
    PREVIOUS.lock().expect("previous lock").0 = Some(me.clone());
    target
        .query_one("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .map_err(pg)?;
    let start: Option<String> = target
        .query_one("SELECT pg_replication_origin_progress($1, true)::text", &[&origin])
        .await
        .map_err(pg)?
        .get(0);
    let start = start.as_deref().and_then(crate::stream::parse_lsn).unwrap_or(0);

    // Source: heartbeat and schema watch on their own connection.
    let live = Arc::new(std::sync::Mutex::new(Live {
        nonce: format!("{}.{}", std::process::id(), now_f64()),
        ..Live::default()
    }));
    let prefix = format!("pgtransit:{slot}");
    let heartbeat = {
        let source =
            crate::conn::connect_with(&servers.source, "pgtransit/heartbeat", &servers.policy)
                .await?;
        let version: i32 = source
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(pg)?
            .get(0);
        // (Failing to read it right after connecting is most likely the server going away.)
        let baseline =
            schema_of(&source, version, scope).await.map_err(ApplyError::ConnectionLost)?;
        // The walsender of a stream this process lost still holds the slot: ended first.
        // (Kept until this stream's own replaces it: a failure here tries again next time.)
        let previous = PREVIOUS.lock().expect("previous lock").1.clone();
        if let Some(session) = previous {
            end_previous(&source, &session, "walsender").await?;
        }
        let (live, prefix, scope) = (live.clone(), prefix.clone(), scope.clone());
        let slot = slot.to_string();
        tokio::spawn(async move {
            watch(source, slot, version, baseline, scope, live, prefix, drift_every).await
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _heartbeat = AbortOnDrop(heartbeat);

    let mut stream = PgoutputStream::start(StreamSettings {
        source: &servers.source,
        slot,
        publication,
        start,
        application_name: "pgtransit/sync",
    })
    .await
    .map_err(|e| {
        let message = format!("cannot start streaming from slot {slot}: {e}");
        // A slot still held by the session of a stream that just ended (killed, or lost)
        // is released in a moment: worth another try.
        if e.transient || e.message.contains("is active for PID") {
            ApplyError::ConnectionLost(message)
        } else {
            sync_error(message)
        }
    })?;
    tracing::info!(slot, from = %crate::stream::lsn_text(start), "streaming changes");

    let target = Arc::new(target);
    let beat = Progress::default();
    beat.now();
    let mut a = Applier {
        ctx,
        tables_by_name,
        tables: HashMap::new(),
        pipe: Pipeline {
            client: target.clone(),
            inflight: FuturesOrdered::new(),
            missing: 0,
            beat: beat.clone(),
        },
        open: false,
        in_source_tx: None,
        replayed: false,
        final_lsn: 0,
        inserts: None,
        batch_started: Instant::now(),
        batch_changes: 0,
        last_commit: None,
        batch_counts: BTreeMap::new(),
        batch_total: Counters::default(),
        applied_lsn: start,
        confirmed: start,
        sync,
        prefix,
    };
    // The watchdog: a server that stops answering on a connection still open would hold the
    // applier forever.
    let result = tokio::select! {
        r = run_stream(&mut a, &mut stream, &live, cutover, state) => r,
        () = stuck_target(&beat, servers, &me) => Err(ApplyError::ConnectionLost(format!(
            "nothing moved for {} s: a server stopped answering on a connection that is still \
             open (the target, or the source during the cutover)",
            stuck().as_secs()
        ))),
    };
    if result.is_err() {
        // (A server that stopped answering does not answer this either: its session is ended
        // by the next stream, before that one reads its position.)
        let _ = tokio::time::timeout(Duration::from_secs(5), a.rollback()).await;
    }
    a.sync.streaming = false;
    if let Err(e) = &result {
        a.sync.error = Some(e.to_string());
    }
    report(&mut a, &live, state);
    ctx.state_dir.save(state)?;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stop()).await;
    result
}

/// The definitions of the source's objects in scope, by name.
async fn schema_of(
    client: &Client,
    version: i32,
    scope: &crate::scope::Scope,
) -> Result<BTreeMap<String, String>, String> {
    let objects = crate::objects::read(client, version).await.map_err(|e| e.to_string())?;
    let identity = |r: &str| Some(r.to_string());
    Ok(objects
        .iter()
        .filter(|o| crate::planner::in_scope(o, scope))
        .map(|o| (o.key.to_string(), o.definition(&identity)))
        .collect())
}

/// The heartbeat task: emits a heartbeat every second, reads the source's WAL position, and
/// compares the source's schema with `baseline` every `drift_every`.
#[allow(clippy::too_many_arguments)]
async fn watch(
    source: Client,
    slot: String,
    version: i32,
    baseline: BTreeMap<String, String>,
    scope: crate::scope::Scope,
    live: Arc<std::sync::Mutex<Live>>,
    prefix: String,
    drift_every: Duration,
) {
    let mut seq = 0u64;
    let mut last_check = Instant::now();
    let nonce = live.lock().expect("live lock").nonce.clone();
    loop {
        seq += 1;
        let emitted = now_f64();
        live.lock().expect("live lock").inflight = Some(emitted);
        let answer = tokio::time::timeout(
            stall(),
            source.query_one(
                "SELECT pg_logical_emit_message(false, $1::text, $2::text)::text, \
                        pg_current_wal_lsn()::text, r.sent_lsn::text, r.pid, \
                        r.backend_start::text \
                 FROM (SELECT) one LEFT JOIN pg_replication_slots s ON s.slot_name = $3 \
                      LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
                &[&prefix, &format!("{nonce}:{seq}"), &slot],
            ),
        )
        .await;
        live.lock().expect("live lock").inflight = None;
        let Ok(answer) = answer else {
            live.lock().expect("live lock").failed = Some((
                format!("the source did not answer a heartbeat for {} s", stall().as_secs()),
                true,
            ));
            return;
        };
        match answer {
            Ok(row) => {
                let pos = |s: Option<String>| s.and_then(|s| crate::stream::parse_lsn(&s));
                let (at, current) = (pos(row.get(0)).unwrap_or(0), pos(row.get(1)).unwrap_or(0));
                let sent = pos(row.get(2));
                if let (Some(pid), Some(started)) = (row.get(3), row.get(4)) {
                    // This stream's walsender (the slot is held by it while it streams).
                    PREVIOUS.lock().expect("previous lock").1 = Some(Session { pid, started });
                }
                let now = now_f64();
                let mut l = live.lock().expect("live lock");
                if let Some(sent) = sent {
                    for b in l.pending.iter_mut().filter(|b| b.sent_at.is_none() && b.lsn <= sent) {
                        b.sent_at = Some(now);
                    }
                }
                l.pending.push_back(Beat { seq, at: emitted, lsn: at, sent_at: None });
                l.source_lsn = l.source_lsn.max(at).max(current);
            }
            Err(e) => {
                live.lock().expect("live lock").failed =
                    Some((crate::apply::db_message(&e), crate::apply::is_lost(&e)));
                return;
            }
        }
        if last_check.elapsed() >= drift_every {
            last_check = Instant::now();
            let schema = tokio::time::timeout(stall(), schema_of(&source, version, &scope)).await;
            let Ok(schema) = schema else {
                live.lock().expect("live lock").failed =
                    Some((format!("the source did not answer for {} s", stall().as_secs()), true));
                return;
            };
            match schema {
                Ok(now) if now != baseline => {
                    let mut what = vec![];
                    for (k, v) in &now {
                        match baseline.get(k) {
                            None => what.push(format!("{k} was created")),
                            Some(b) if b != v => what.push(format!("{k} was altered")),
                            _ => {}
                        }
                    }
                    for k in baseline.keys().filter(|k| !now.contains_key(*k)) {
                        what.push(format!("{k} was dropped"));
                    }
                    live.lock().expect("live lock").drift = Some(what.join(", "));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    live.lock().expect("live lock").failed = Some((e, false));
                    return;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Whether the cutover is due: `WhenReady`, or a request file whose writer (`pgtransit
/// cutover`, waiting for the result) is still alive; a request left by one that was stopped is
/// removed.
fn triggered(t: &Trigger) -> bool {
    match t {
        Trigger::WhenReady => true,
        Trigger::Requested(file) => {
            let Ok(text) = std::fs::read_to_string(file) else { return false };
            let alive = text
                .split_whitespace()
                .nth(1)
                .is_some_and(|pid| std::path::Path::new("/proc").join(pid).exists());
            if !alive {
                let _ = std::fs::remove_file(file);
            }
            alive
        }
    }
}

/// Ends every client session of the source database that is not pgtransit's, and waits until
/// they are gone (`pg_terminate_backend` only signals). Re-scans, so sessions that connected
/// meanwhile are ended too. A session pgtransit may not end is an error naming it.
async fn end_sessions(client: &Client, database: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let rows = client
            .query(
                "SELECT pid, usename::text FROM pg_stat_activity WHERE datname = $1 \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                 AND application_name NOT LIKE 'pgtransit/%'",
                &[&database],
            )
            .await
            .map_err(|e| crate::apply::db_message(&e))?;
        if rows.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15) {
            let who: Vec<String> = rows
                .iter()
                .map(|r| format!("pid {} ({})", r.get::<_, i32>(0), r.get::<_, String>(1)))
                .collect();
            return Err(format!("these sessions did not end within 15 s: {}", who.join(", ")));
        }
        for r in &rows {
            let pid: i32 = r.get(0);
            if let Err(e) = client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await {
                let user: String = r.get(1);
                // Only a refusal is about rights; a lost connection is just that.
                let hint =
                    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                        " (connect as a superuser, or a member of pg_signal_backend, to cut over)"
                    } else {
                        ""
                    };
                return Err(format!(
                    "cannot end session pid {pid} of {user}: {}{hint}",
                    crate::apply::db_message(&e)
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts the fence up on the source and emits the barrier after it:
/// 1. no prepared transaction may be pending (`COMMIT PREPARED` works in a read-only session);
/// 2. `lock_tables`: this session locks the tables (until the cutover ends);
/// 3. the read-only default is committed (new sessions are read-only);
/// 4. every other session is ended, and gone;
/// 5. the barrier.
async fn fence(
    a: &mut Applier<'_>,
    c: &Cutover<'_>,
    barrier: &str,
    state: &mut State,
) -> Result<Fenced, ApplyError> {
    let crate::plan::Work::Fence { database, mode } = &c.fence.work else {
        return Err(sync_error("the cutover's fence step is missing"));
    };
    let servers = a.ctx.servers;
    let cut = state.cutover.get_or_insert_with(Default::default);
    *cut = crate::state::CutoverState {
        status: "fencing".into(),
        requested_at: Some(now_f64()),
        ..Default::default()
    };
    // A cutover runs whole: the records of an earlier attempt (a saved plan keeps its id) do
    // not make this one skip its sequences.
    state.steps.retain(|id, _| !id.starts_with("cutover:"));
    a.ctx.state_dir.save(state)?;
    if let Trigger::Requested(file) = &c.trigger {
        let _ = std::fs::remove_file(file);
    }
    let failed = |message: String| ApplyError::StepFailed {
        id: c.fence.id.clone(),
        object: c.fence.object.clone(),
        message,
    };
    let fail = |e: tokio_postgres::Error| failed(crate::apply::db_message(&e));
    let client =
        crate::conn::connect_with(&servers.source, "pgtransit/cutover", &servers.policy).await?;
    client.batch_execute("SET default_transaction_read_only = off").await.map_err(fail)?;
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE database = $1", &[database])
        .await
        .map_err(fail)?
        .get(0);
    if prepared > 0 {
        return Err(failed(format!(
            "{prepared} prepared transactions are pending in {database} (they could still \
             commit after the fence): COMMIT PREPARED or ROLLBACK PREPARED them, then cut over"
        )));
    }
    if mode == "lock_tables" {
        // The locks are held by this session's open transaction until the cutover ends.
        let lock = c.fence.sql.lines().find(|l| l.starts_with("LOCK TABLE")).unwrap_or_default();
        client
            .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '60s'; {lock}"))
            .await
            .map_err(fail)?;
    }
    // Committed on its own (in one implicit transaction with what follows, a session that
    // connected in between would come back read-write).
    let other =
        crate::conn::connect_with(&servers.source, "pgtransit/cutover", &servers.policy).await?;
    other
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            crate::sql::ident(database)
        ))
        .await
        .map_err(fail)?;
    end_sessions(&other, database).await.map_err(failed)?;
    let at = Instant::now();
    let emitted: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, $1::text, $2::text)::text",
            &[&barrier, &format!("{}", now_f64())],
        )
        .await
        .map_err(fail)?
        .get(0);
    let barrier_lsn = crate::stream::parse_lsn(&emitted).unwrap_or(u64::MAX);
    let cut = state.cutover.get_or_insert_with(Default::default);
    cut.status = "draining".into();
    cut.fenced_at = Some(now_f64());
    a.ctx.state_dir.save(state)?;
    tracing::info!(database = %database, mode = %mode, "source fenced; draining to the barrier");
    Ok(Fenced { client, database: database.clone(), at, barrier_lsn })
}

/// Writes the progress into the state and tells the report. Returns the lag in seconds.
fn report(a: &mut Applier<'_>, live: &std::sync::Mutex<Live>, state: &mut State) -> Option<f64> {
    let now = now_f64();
    let l = live.lock().expect("live lock");
    let measured = l.pending.front().map(|b| (now - b.at).max(0.0)).unwrap_or(0.0);
    // A heartbeat the source has not even answered yet counts from when it was sent off.
    let measured = measured.max(l.inflight.map_or(0.0, |t| (now - t - 1.0).max(0.0)));
    // Until one of this run's heartbeats came through, the stream may still be replaying a
    // backlog of unknown size: the lag is unknown (and the migration not ready).
    let known = l.own_seen;
    let lag_seconds = if known { measured } else { measured.max(a.sync.max_lag_seconds + 1.0) };
    let lag_bytes = l.source_lsn.saturating_sub(a.confirmed);
    a.sync.source_lsn = (l.source_lsn > 0).then(|| crate::stream::lsn_text(l.source_lsn));
    drop(l);
    a.sync.applied_lsn = Some(crate::stream::lsn_text(a.applied_lsn));
    a.sync.lag_bytes = Some(lag_bytes);
    a.sync.lag_seconds = known.then_some(lag_seconds);
    if known && lag_seconds == 0.0 {
        a.sync.caught_up_at = Some(now);
    }
    a.sync.reported_at = now;
    state.sync = Some(a.sync.clone());
    (a.ctx.events)(Event::Streaming {
        lag_bytes,
        lag_seconds,
        applied: a.sync.applied,
        ready: known && lag_seconds <= a.sync.max_lag_seconds,
    });
    known.then_some(lag_seconds)
}

async fn run_stream(
    a: &mut Applier<'_>,
    stream: &mut PgoutputStream,
    live: &std::sync::Mutex<Live>,
    cutover: Option<&Cutover<'_>>,
    state: &mut State,
) -> Result<Stopped, ApplyError> {
    let mut fenced: Option<Fenced> = None;
    let barrier = format!("{}:barrier", a.prefix);
    let mut last_report = Instant::now();
    let mut last_event = Instant::now();
    // How long the applier has waited on the stream, in vain, since the last change came (time
    // spent on the target, the fence or the reports does not count).
    let mut waited = Duration::ZERO;
    loop {
        a.pipe.beat.now();
        // Between source transactions with a batch open, a quiet stream (nothing for IDLE)
        // commits it at once; otherwise wake up now and then for the reports and Ctrl-C.
        let idle = a.open && a.in_source_tx.is_none();
        let wake =
            if idle { last_event + IDLE } else { Instant::now() + Duration::from_millis(50) };
        let asked = Instant::now();
        let next = tokio::select! {
            // What the stream has ready comes first (a deadline already past must not win).
            biased;
            c = stream.next() => Some(c),
            _ = tokio::time::sleep_until(wake.into()) => None,
        };
        match &next {
            None => waited += asked.elapsed(),
            Some(Ok(Some(_))) => waited = Duration::ZERO,
            Some(_) => {}
        }
        match next {
            None => {
                // Waited this long in vain, though the source says it sent a heartbeat as
                // long ago: what it sends does not arrive.
                if waited > stall() {
                    let sent =
                        live.lock().expect("live lock").pending.front().and_then(|b| b.sent_at);
                    if let Some(t) = sent.filter(|t| now_f64() - t > stall().as_secs_f64()) {
                        return Err(ApplyError::ConnectionLost(format!(
                            "the replication stream is stalled: nothing arrived for {:.0} s of \
                             waiting, though the source sent a heartbeat {:.0} s ago",
                            waited.as_secs_f64(),
                            now_f64() - t
                        )));
                    }
                }
                if a.open && a.in_source_tx.is_none() {
                    a.commit_batch(stream).await.map_err(pg)?;
                }
            }
            Some(Err(e)) if e.transient => {
                return Err(ApplyError::ConnectionLost(format!("the replication stream: {e}")));
            }
            Some(Err(e)) => {
                return Err(sync_error(format!("the replication stream ended: {e}")));
            }
            Some(Ok(None)) => {
                return Err(ApplyError::ConnectionLost(
                    "the source ended the replication stream".into(),
                ));
            }
            Some(Ok(Some(change))) => {
                last_event = Instant::now();
                match change {
                    Change::Begin { xid, final_lsn, .. } => {
                        // A transaction whose commit lies before what the target has applied
                        // was applied already (a resumed stream may send it again): all of it
                        // is skipped.
                        a.replayed = final_lsn < a.applied_lsn;
                        a.final_lsn = final_lsn;
                        if a.replayed {
                            tracing::debug!(xid, "transaction already applied");
                        }
                        a.in_source_tx = Some(xid);
                    }
                    Change::Commit { end_lsn, commit_time } => {
                        a.flush_inserts().await?;
                        a.in_source_tx = None;
                        if end_lsn <= a.applied_lsn {
                            // Applied before (a resumed stream may send it again).
                        } else if !a.open {
                            // Nothing of it applied (every change was in a copy already): nothing
                            // to commit. Were the process to stop now, the stream would send it
                            // again, and it would be skipped again.
                            a.applied_lsn = end_lsn;
                        } else {
                            a.last_commit = Some((end_lsn, commit_time));
                            a.batch_total.transactions += 1;
                            if a.batch_changes >= BATCH_CHANGES
                                || a.batch_started.elapsed() >= BATCH_AGE
                            {
                                a.commit_batch(stream).await.map_err(pg)?;
                            }
                        }
                    }
                    Change::Message { prefix, lsn, transactional: false, .. }
                        if prefix == barrier
                            && fenced.as_ref().is_some_and(|f| lsn >= f.barrier_lsn) =>
                    {
                        // Everything committed before the fence is applied: drained.
                        a.commit_batch(stream).await.map_err(pg)?;
                        report(a, live, state);
                        if let Some(f) = fenced.take() {
                            return Ok(Stopped::Drained(Box::new(f)));
                        }
                    }
                    Change::Message { prefix, content, transactional: false, .. }
                        if prefix == a.prefix =>
                    {
                        // A heartbeat: everything before it was received. Commit what is open, so
                        // what was received is applied.
                        if a.in_source_tx.is_none() {
                            a.commit_batch(stream).await.map_err(pg)?;
                        }
                        let text = std::str::from_utf8(&content).unwrap_or_default();
                        let mut l = live.lock().expect("live lock");
                        if let Some((nonce, seq)) = text.rsplit_once(':')
                            && nonce == l.nonce
                            && let Ok(seq) = seq.parse::<u64>()
                        {
                            l.own_seen = true;
                            l.pending.retain(|b| b.seq > seq);
                        }
                    }
                    Change::KeepAlive { wal_end } => {
                        if !a.open && a.in_source_tx.is_none() && wal_end > a.confirmed {
                            a.confirmed = wal_end;
                            stream.ack(wal_end);
                        }
                    }
                    other => a.change(other).await?,
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let (drift, failed) = {
                let l = live.lock().expect("live lock");
                (l.drift.clone(), l.failed.clone())
            };
            if let Some(what) = drift {
                if a.in_source_tx.is_none() {
                    a.commit_batch(stream).await.map_err(pg)?;
                }
                return Err(drift_error(format!("since streaming began on the source: {what}")));
            }
            if let Some((e, gone)) = failed {
                let message = format!("the heartbeat connection to the source: {e}");
                return Err(if gone {
                    ApplyError::ConnectionLost(message)
                } else {
                    sync_error(message)
                });
            }
            let lag = report(a, live, state);
            a.ctx.state_dir.save(state)?;
            // An idle stream sends the target nothing: make sure it is still there.
            if !a.open {
                a.pipe.client.batch_execute("").await.map_err(pg)?;
            }
            if let Some(c) = cutover
                && fenced.is_none()
                && lag.is_some_and(|l| l <= a.sync.max_lag_seconds)
                && triggered(&c.trigger)
            {
                fenced = Some(fence(a, c, &barrier, state).await?);
            }
        }
        if let Some(f) = &fenced
            && f.at.elapsed() > DRAIN_LIMIT
        {
            return Err(sync_error(format!(
                "the barrier emitted after the fence did not come through the stream within {} s",
                DRAIN_LIMIT.as_secs()
            )));
        }
        if a.ctx.cancel.requested() && fenced.is_none() {
            if a.in_source_tx.is_none() {
                a.commit_batch(stream).await.map_err(pg)?;
            } else {
                a.rollback().await;
            }
            return Ok(Stopped::OnRequest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_committed_transactions_and_not_running_or_later_ones() {
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
    fn stream_xids_are_widened_with_the_snapshots_epoch() {
        // Snapshot in epoch 1, just after wraparound; the stream's 32-bit xid is from before it.
        let xmax = (1u64 << 32) + 10;
        let s = XidSnapshot { xmin: xmax, xmax, xip: vec![] };
        assert!(s.sees(0xffff_fff0), "epoch 0's last xids are older than the snapshot");
        assert!(!s.sees(20), "epoch 1's xid 20 is newer");
        assert_eq!(widen(5, 1 << 33), (1 << 33) + 5);
    }

    fn table(full: bool) -> Table {
        Table {
            rel: Relation {
                id: 1,
                schema: "s".into(),
                name: "T".into(),
                replica_identity: if full { 'f' } else { 'd' },
                columns: vec![
                    crate::stream::Column { name: "id".into(), key: true },
                    crate::stream::Column { name: "note".into(), key: full },
                ],
            },
            name_sql: r#"s."T""#.into(),
            display: "s.T".into(),
            skip: None,
            full,
            identity_always: vec![false, false],
            types: vec![23, 16385],
            statements: HashMap::new(),
        }
    }

    #[test]
    fn statements_quote_names_match_on_the_key_and_skip_unchanged_columns() {
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
    fn every_parameter_is_typed_as_its_target_column_so_composite_keys_match() {
        let t = table(false);
        let oids = |shape| t.param_types(&shape).iter().map(Type::oid).collect::<Vec<_>>();
        assert_eq!(oids(Shape::Insert(2)), [23, 16385, 23, 16385]);
        // SET columns first, then the key.
        assert_eq!(oids(Shape::Update(vec![1], vec![0])), [16385, 23]);
        assert_eq!(oids(Shape::Delete(vec![1])), [16385]);
    }

    #[test]
    fn tables_without_a_key_match_one_row_on_every_column() {
        let t = table(true);
        assert_eq!(
            t.sql(&Shape::Delete(vec![0, 1])),
            r#"DELETE FROM ONLY s."T" WHERE ctid = (SELECT ctid FROM ONLY s."T" WHERE "id"::text IS NOT DISTINCT FROM $1::text AND "note"::text IS NOT DISTINCT FROM $2::text LIMIT 1)"#
        );
    }
}
