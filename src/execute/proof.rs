//! Continuous verification: source and target compared while the stream runs, so that the
//! cutover compares inside its fence only what changed since.
//!
//! **A consistent point.** A round asks the applier to hold between two source transactions
//! (its batch committed), creates a temporary logical slot on the source, which exports a
//! snapshot `S` seeing exactly the transactions that commit before the slot's consistent point
//! `L`, and tells the applier `L`. The applier applies on up to the first transaction that
//! commits at or after `L` (or a marker message emitted after `L`, for an idle source), commits
//! its batch, and stands still until a target transaction has taken its snapshot `T`: `T` then
//! holds exactly the transactions before `L`, as `S` does. The stream stands still only for that
//! (milliseconds), and never longer than [`PAUSE_LIMIT`]; the checksums are computed afterwards
//! under `S` and `T`, while the stream goes on.
//!
//! **Chunks.** A table with an integer key is compared in chunks of keys `(after, upto]`
//! (aligned to [`crate::verify::CHUNK`], each starting at the next key either side has, so the
//! chunks of a pass cover every key); any other table is one chunk. Each chunk's row count,
//! checksum and `L` are recorded in the state ([`Proofs`]); a pass resumes at its cursor after a
//! restart. Rows read are throttled to `verify.rows_per_second`.
//!
//! **What the cutover checks.** The applier records the key of every row it changes (and the
//! position of the transaction), from the first stream of this process on. A table whose last
//! complete pass proved every chunk equal, at positions this process recorded changes since,
//! needs only the rows changed at or after those positions compared (by key, row by row, with
//! both sides quiet); a table never proven, proven different, truncated since, or without a key
//! and changed since, is compared in full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_postgres::Client;

use crate::execute::context::{Servers, db_message};
use crate::execution_plan::VerifyTable;
use crate::sql::qualified;
use crate::state::{ChunkProof, Cursor, Proofs, now_f64};
use crate::stream::lsn_text;
use crate::verify::{CHUNK, TableCheck};

/// The longest the applier holds (its batch committed) for a round's consistent point to be
/// taken, or stands still at it for the target's snapshot; past that the round is abandoned.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(1);

/// ... and while rows found different are copied again: as long as it takes (a few rows). The
/// repair must commit before the stream goes on; a server that stops answering meanwhile is
/// the stream's watchdog's to give up on (the repair's session ends with the stream, and the
/// next stream resumes from the position the applier stood at).
const REPAIR_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// A round compares chunks for this long at most (it holds a snapshot on each server).
const ROUND_TIME: Duration = Duration::from_secs(20);

/// Between passes over every table.
const PASS_GAP: Duration = Duration::from_secs(2);

/// After a round failed, before the next.
const RETRY: Duration = Duration::from_secs(5);

/// After rounds the applier could not take part in, at most this long before the next.
const MISSED_MAX: Duration = Duration::from_secs(60);

/// Differing keys named per chunk, at most.
const KEYS_NAMED: usize = 20;

/// Changed rows remembered, at most, over all tables (see [`Touched::record`]): about 60 bytes
/// each for an integer key.
const MAX_KEYS: usize = 200_000;

/// What the stream, the verifier and the cutover share.
#[derive(Clone, Default)]
pub struct Proving {
    /// What was proven (copied into the state with each progress report).
    pub(crate) proofs: Arc<Mutex<Proofs>>,
    /// Rows the applier changed.
    pub(crate) touched: Arc<Mutex<Touched>>,
    /// A round's request to the applier.
    pub(crate) request: Arc<Mutex<Option<ProofRequest>>>,
    /// What continuous verification compares, and how (none: it does not run).
    pub(crate) settings: Option<Settings>,
    /// Set when the cutover puts its fence up: no round starts after it (the fence ends the
    /// sessions of one under way).
    pub(crate) halted: Arc<std::sync::atomic::AtomicBool>,
    /// Set by the stream while its lag is within `sync.max_lag`: rounds wait for it (a round's
    /// reads on both servers only slow down a catch-up, and its consistent point would wait
    /// for the backlog anyway).
    pub(crate) caught_up: Arc<std::sync::atomic::AtomicBool>,
}

/// The execution plan's continuous verification step.
#[derive(Clone)]
pub struct Settings {
    /// The tables.
    pub tables: Vec<VerifyTable>,
    /// Rows read per second on each server, at most (0: no limit).
    pub rows_per_second: u64,
    /// Rows found different are copied again.
    pub repair: bool,
}

impl Proving {
    /// Starts from what the state recorded; `settings` as [`Proving::settings`].
    pub fn new(proofs: Option<Proofs>, settings: Option<Settings>) -> Proving {
        Proving {
            proofs: Arc::new(Mutex::new(proofs.unwrap_or_default())),
            settings,
            ..Default::default()
        }
    }

    /// What was proven, as of now.
    pub fn proofs(&self) -> Proofs {
        self.proofs.lock().expect("proofs lock").clone()
    }
}

/// Rows the applier changed, from the first stream of this process on.
#[derive(Default)]
pub(crate) struct Touched {
    /// Recorded since this source position (none: nothing streamed yet).
    pub(crate) since: Option<u64>,
    pub(crate) tables: HashMap<Arc<str>, TableTouch>,
    /// Keys remembered, over all tables.
    count: usize,
}

/// One table's changed rows.
#[derive(Default)]
pub(crate) struct TableTouch {
    /// Its key columns: (name, type).
    pub(crate) columns: Vec<(String, String)>,
    /// Each changed key ([`pack`]ed), and where the last transaction that changed it commits.
    pub(crate) keys: HashMap<Box<[u8]>, u64>,
    /// Changed as a whole (a truncate, or a change to a table without a key), last at.
    pub(crate) whole: Option<u64>,
}

impl Touched {
    /// Records rows of `table` changed by the transaction committing at `lsn`, by their keys,
    /// packed (see [`KeyPacker`]; the applier packs them from text or binary); a `None` is a
    /// key that cannot be looked up (a value the stream did not send, unchanged TOAST): the
    /// table is then compared whole.
    pub(crate) fn record_keys(
        &mut self,
        table: &Arc<str>,
        columns: impl FnOnce() -> Vec<(String, String)>,
        keys: impl Iterator<Item = Option<Box<[u8]>>>,
        lsn: u64,
    ) {
        let t = self.tables.entry(table.clone()).or_default();
        if t.columns.is_empty() {
            t.columns = columns();
        }
        for key in keys {
            match key {
                Some(key) => {
                    if t.keys.insert(key, lsn).is_none() {
                        self.count += 1;
                    }
                }
                None => t.whole = Some(lsn),
            }
        }
        // Memory stays bounded: past this many, the table with the most is compared in full
        // (until its next proof), which is what so many lookups would cost anyway.
        if self.count > MAX_KEYS
            && let Some(t) = self.tables.values_mut().max_by_key(|t| t.keys.len())
        {
            self.count -= t.keys.len();
            t.keys = HashMap::new();
            t.whole = Some(lsn);
        }
    }

    /// Forgets the keys of `table` last changed before `lsn` (proven since).
    pub(crate) fn forget_before(&mut self, table: &str, lsn: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            let before = t.keys.len();
            t.keys.retain(|_, at| *at >= lsn);
            self.count -= before - t.keys.len();
            t.keys.shrink_to_fit();
        }
    }

    /// Records `table` changed as a whole (a truncate).
    pub(crate) fn record_whole(&mut self, table: &Arc<str>, lsn: u64) {
        self.tables.entry(table.clone()).or_default().whole = Some(lsn);
    }
}

/// A round's handshake with the applier.
pub(crate) struct ProofRequest {
    /// Applier → round: holding between transactions, its batch committed.
    pub(crate) held: Option<oneshot::Sender<()>>,
    /// Round → applier: the consistent point (dropped: go on).
    pub(crate) at: Option<oneshot::Receiver<u64>>,
    /// Applier → round: everything before the consistent point is committed, nothing after.
    pub(crate) paused: Option<oneshot::Sender<()>>,
    /// Round → applier: the target's snapshot is taken.
    pub(crate) resume: Option<oneshot::Receiver<()>>,
    /// How long the applier stands still for it, at most.
    pub(crate) limit: Duration,
}

/// The applier's side of a round, once it knows the consistent point.
pub(crate) struct PauseAt {
    pub(crate) lsn: u64,
    pub(crate) paused: Option<oneshot::Sender<()>>,
    pub(crate) resume: Option<oneshot::Receiver<()>>,
    pub(crate) limit: Duration,
}

impl Proving {
    /// A round's request, if one waits (the applier takes it between transactions).
    pub(crate) fn take_request(&self) -> Option<ProofRequest> {
        self.request.lock().expect("request lock").take()
    }

    /// No round starts from now on (the cutover's fence goes up).
    pub(crate) fn halt(&self) {
        self.halted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.request.lock().expect("request lock").take();
    }
}

/// Holds for a round (the batch is committed): waits for its consistent point, at most
/// [`PAUSE_LIMIT`]. `None`: the round gave up, or took too long (it is abandoned).
pub(crate) async fn hold(mut r: ProofRequest) -> Option<PauseAt> {
    let _ = r.held.take()?.send(());
    let lsn = tokio::time::timeout(PAUSE_LIMIT, r.at.take()?).await.ok()?.ok()?;
    Some(PauseAt { lsn, paused: r.paused.take(), resume: r.resume.take(), limit: r.limit })
}

/// Stands still at the consistent point (everything before it committed) until the round's
/// target snapshot is taken (and, for a repair, the rows copied again), at most its limit.
pub(crate) async fn pause(mut p: PauseAt) {
    if let Some(paused) = p.paused.take()
        && paused.send(()).is_ok()
        && let Some(resume) = p.resume.take()
    {
        let _ = tokio::time::timeout(p.limit, resume).await;
    }
}

/// Why a round ended without comparing.
enum Void {
    /// The applier did not take part in time (it is behind, or the stream restarted).
    Missed(&'static str),
    /// A server refused or went away.
    Failed(String),
}

impl From<tokio_postgres::Error> for Void {
    fn from(e: tokio_postgres::Error) -> Void {
        Void::Failed(db_message(&e))
    }
}

/// Compares source and target while the stream runs, round after round, until aborted.
pub(crate) async fn verify_continuously(
    servers: Servers,
    slot: String,
    settings: Settings,
    proving: Proving,
) {
    if settings.tables.is_empty() {
        return;
    }
    let halted = || proving.halted.load(std::sync::atomic::Ordering::SeqCst);
    // After rounds the applier could not take part in (a long transaction on the source keeps
    // the slot from being created in time, say), the next waits longer: each costs the stream
    // up to PAUSE_LIMIT.
    let mut missed = 0u32;
    while !halted() {
        if !proving.caught_up.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let result = round(&servers, &slot, &settings, &proving).await;
        missed = if matches!(result, Err(Void::Missed(_))) { missed + 1 } else { 0 };
        let wait = match result {
            Ok(true) => PASS_GAP,
            Ok(false) => Duration::ZERO,
            Err(_) if halted() => return,
            Err(Void::Missed(why)) => {
                tracing::debug!(why, missed, "verification round abandoned");
                Duration::from_millis(200).saturating_mul(1 << missed.min(9)).min(MISSED_MAX)
            }
            Err(Void::Failed(e)) => {
                tracing::warn!(error = %e, "continuous verification: a round failed");
                proving.proofs.lock().expect("proofs lock").error = Some(e);
                RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Two sessions, one per server, each inside a snapshot of the same moment.
struct Point {
    source: Client,
    target: Client,
    lsn: u64,
}

/// Rows to copy again at a consistent point: a table, its key, and the keys.
struct Repair<'a> {
    table: &'a VerifyTable,
    key: &'a str,
    keys: Vec<i64>,
}

/// Takes a consistent point with the applier; with `repair`, copies those rows again while
/// the stream stands still there. Returns the point, and the rows copied.
async fn consistent_point(
    servers: &Servers,
    slot: &str,
    proving: &Proving,
    repair: Option<&Repair<'_>>,
) -> Result<(Point, Option<u64>), Void> {
    let app = "pgtransit/verify";
    let source = crate::conn::connect_with(&servers.source, app, &servers.policy)
        .await
        .map_err(|e| Void::Failed(e.to_string()))?;
    let target = crate::conn::connect_with(&servers.target, app, &servers.policy)
        .await
        .map_err(|e| Void::Failed(e.to_string()))?;
    for c in [&source, &target] {
        crate::verify::pin(c).await?;
    }
    let version: i32 =
        source.query_one("SELECT current_setting('server_version_num')::int", &[]).await?.get(0);
    // A repair's own session, ready before the stream stands still.
    let writer = match repair {
        Some(_) => Some(
            crate::conn::connect_with(&servers.target, app, &servers.policy)
                .await
                .map_err(|e| Void::Failed(e.to_string()))?,
        ),
        None => None,
    };
    // The replication session, connected before the applier holds: while it holds, only the
    // slot's creation.
    let name = crate::naming::proof_slot_name(slot);
    let replication = crate::stream::slot_connection(&servers.source, &name, app)
        .await
        .map_err(|e| Void::Failed(format!("cannot connect for a temporary slot: {}", e.message)))?;
    let (held_tx, held) = oneshot::channel();
    let (at, at_rx) = oneshot::channel();
    let (paused_tx, paused) = oneshot::channel();
    let (resume, resume_rx) = oneshot::channel();
    *proving.request.lock().expect("request lock") = Some(ProofRequest {
        held: Some(held_tx),
        at: Some(at_rx),
        paused: Some(paused_tx),
        resume: Some(resume_rx),
        limit: if repair.is_some() { REPAIR_LIMIT } else { PAUSE_LIMIT },
    });
    // The applier takes it between two source transactions.
    let taken = tokio::time::timeout(Duration::from_secs(60), held).await;
    if !matches!(taken, Ok(Ok(()))) {
        proving.request.lock().expect("request lock").take();
        return Err(Void::Missed("the applier did not hold"));
    }
    let command = crate::stream::create_temporary_slot_command(&name, version);
    let session = replication
        .create(&name, &command)
        .await
        .map_err(|e| Void::Failed(format!("cannot create a temporary slot: {}", e.message)))?;
    let lsn = session.consistent_point;
    if at.send(lsn).is_err() {
        return Err(Void::Missed("the applier held too long for the slot"));
    }
    source.batch_execute(&crate::verify::source_snapshot_sql(&session.snapshot)).await?;
    drop(session);
    // A marker after the point: an idle source's stream reaches it too.
    let marker = crate::conn::connect_with(&servers.source, app, &servers.policy)
        .await
        .map_err(|e| Void::Failed(e.to_string()))?;
    marker
        .query_one(crate::verify::MARKER_SQL, &[&crate::naming::proof_prefix(slot), &lsn_text(lsn)])
        .await?;
    drop(marker);
    // The applier may be behind: it reaches the point when it has applied what came before.
    if !matches!(tokio::time::timeout(Duration::from_secs(600), paused).await, Ok(Ok(()))) {
        return Err(Void::Missed("the applier did not reach the consistent point"));
    }
    let stood = Instant::now();
    let copied = match (repair, &writer) {
        (Some(r), Some(w)) => Some(copy_again(&source, w, r).await?),
        _ => None,
    };
    target.batch_execute(crate::verify::TARGET_SNAPSHOT_SQL).await?;
    if resume.send(()).is_err() {
        // (A repair committed after the applier went on would have raced with it: the limit
        // is long enough for a few rows, and the rows are compared again.)
        return Err(Void::Missed("the applier stood still too long"));
    }
    let mut p = proving.proofs.lock().expect("proofs lock");
    p.rounds += 1;
    p.longest_pause = p.longest_pause.max(stood.elapsed().as_secs_f64());
    Ok((Point { source, target, lsn }, copied))
}

/// Copies rows again: deleted on the target, then copied from the source (under the round's
/// snapshot), in one target transaction. Returns the rows copied.
async fn copy_again(source: &Client, target: &Client, r: &Repair<'_>) -> Result<u64, Void> {
    use futures_util::{SinkExt, StreamExt};
    let t = r.table;
    let columns = crate::catalog::read_table_columns(target, &t.schema, &t.table)
        .await
        .map_err(|e| Void::Failed(e.to_string()))?
        .unwrap_or_default();
    let columns: Vec<String> = columns.iter().map(|c| crate::sql::ident(&c.name)).collect();
    let keys = format!(
        "'{{{}}}'::int8[]",
        r.keys.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    );
    let sql = crate::verify::RepairSql::new(
        &crate::sql::qualified_ident(&t.schema, &t.table),
        &crate::sql::ident(r.key),
        &columns,
        &keys,
    );
    // The stream stands still meanwhile: a lock held on the target must not keep it so.
    target.batch_execute(crate::verify::REPAIR_BEGIN).await?;
    target.batch_execute(&sql.delete).await?;
    let out = source.copy_out(&sql.source).await?;
    let sink = target.copy_in::<_, Bytes>(&sql.target).await?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        sink.feed(chunk?).await?;
    }
    let rows = sink.as_mut().finish().await?;
    target.batch_execute("COMMIT").await?;
    Ok(rows)
}

/// One round: a consistent point, then chunks compared under it until [`ROUND_TIME`]. Returns
/// whether a pass over every table ended.
async fn round(
    servers: &Servers,
    slot: &str,
    settings: &Settings,
    proving: &Proving,
) -> Result<bool, Void> {
    let Settings { tables, rows_per_second, .. } = settings;
    let rows_per_second = *rows_per_second;
    // A chunk the last round found different, with keys named: copied again at this point
    // (`verify.repair`), and compared again first.
    let repair = settings.repair.then(|| to_repair(proving, tables)).flatten();
    let (point, copied) = consistent_point(servers, slot, proving, repair.as_ref()).await?;
    if let (Some(r), Some(rows)) = (&repair, copied) {
        repaired(proving, r, rows, point.lsn);
    }
    crate::execute::context::failpoint("during", "verify:round");
    let started = Instant::now();
    let mut rows_read = 0u64;
    loop {
        let cursor = proving.proofs.lock().expect("proofs lock").cursor.clone();
        let (index, after) = match cursor {
            Some(c) => {
                match tables.iter().position(|t| qualified(&t.schema, &t.table) == c.table) {
                    Some(i) => (i, c.after),
                    None => (0, None),
                }
            }
            None => (0, None),
        };
        let t = &tables[index];
        let (proof, last) = chunk(&point, t, after).await?;
        rows_read += proof.rows.max(proof.target_rows) as u64;
        let passed = record(proving, tables, index, proof, last);
        if passed {
            return Ok(true);
        }
        if rows_per_second > 0 {
            let due = Duration::from_secs_f64(rows_read as f64 / rows_per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if started.elapsed() >= ROUND_TIME {
            return Ok(false);
        }
    }
}

/// The first chunk of the pass under way found different with keys named, of a table chunked
/// by its key: what to copy again. The cursor goes back to it, so it is compared again.
fn to_repair<'a>(proving: &Proving, tables: &'a [VerifyTable]) -> Option<Repair<'a>> {
    let mut p = proving.proofs.lock().expect("proofs lock");
    for t in tables {
        let Some(key) = t.key.as_deref() else { continue };
        let name = qualified(&t.schema, &t.table);
        let Some(tp) = p.tables.get_mut(&name) else { continue };
        let named = |c: &ChunkProof| !c.equal && !c.differing_keys.is_empty();
        let (chunk, after) = if let Some(i) = tp.current.iter().position(named) {
            // Compared again from that chunk on: the pass's chunks stay contiguous.
            let chunk = tp.current[i].clone();
            tp.current.truncate(i);
            let after = chunk.after;
            (chunk, after)
        } else if let Some(c) = tp.complete.iter_mut().find(|c| named(c)) {
            // The table is compared again from its start (the chunk stays different, but
            // repaired once, until then).
            let chunk = c.clone();
            c.differing_keys.clear();
            tp.current.clear();
            (chunk, None)
        } else {
            continue;
        };
        let keys: Vec<i64> = chunk
            .differing_keys
            .iter()
            .filter_map(|k| k.rsplit_once('=').and_then(|(_, v)| v.parse().ok()))
            .collect();
        p.cursor = Some(Cursor { table: name, after });
        return Some(Repair { table: t, key, keys });
    }
    None
}

/// Records a repair.
fn repaired(proving: &Proving, r: &Repair<'_>, rows: u64, lsn: u64) {
    let table = qualified(&r.table.schema, &r.table.table);
    tracing::warn!(table = %table, keys = ?r.keys, rows, "rows found different copied again");
    let mut p = proving.proofs.lock().expect("proofs lock");
    p.repairs.push(crate::state::RepairRecord {
        table,
        keys: r.keys.iter().map(|k| format!("{}={k}", r.key)).collect(),
        rows_copied: rows,
        lsn: lsn_text(lsn),
        at: now_f64(),
    });
}

/// Records a chunk's proof and moves the cursor; at a table's last chunk its pass becomes the
/// complete one, and the rows changed before all of it are forgotten. Returns whether a pass
/// over every table ended.
fn record(
    proving: &Proving,
    tables: &[VerifyTable],
    index: usize,
    proof: ChunkProof,
    last: bool,
) -> bool {
    let t = &tables[index];
    let name = qualified(&t.schema, &t.table);
    let mut p = proving.proofs.lock().expect("proofs lock");
    p.rows_compared += proof.rows.max(proof.target_rows) as u64;
    p.last_at = Some(proof.at);
    p.error = None;
    if !proof.equal {
        tracing::warn!(
            table = %name,
            range = %proof.range(t.key.as_deref()),
            keys = %proof.differing_keys.join(", "),
            "continuous verification: rows differ"
        );
    }
    let upto = proof.upto;
    let tp = p.tables.entry(name.clone()).or_default();
    if tp.key != t.key {
        // Chunked by another column before (another plan): nothing of that covers this one.
        tp.current.clear();
        tp.complete.clear();
        tp.key.clone_from(&t.key);
    }
    if proof.after.is_none() {
        // A pass over the table starts: its chunks cover every key, in order.
        tp.current.clear();
    }
    tp.current.push(proof);
    if !last {
        p.cursor = Some(Cursor { table: name, after: upto });
        return false;
    }
    tp.complete = std::mem::take(&mut tp.current);
    let oldest = tp.proven_at();
    if let Some(oldest) = oldest {
        proving.touched.lock().expect("touched lock").forget_before(&name, oldest);
    }
    match tables.get(index + 1) {
        Some(next) => {
            p.cursor = Some(Cursor { table: qualified(&next.schema, &next.table), after: None });
            false
        }
        None => {
            p.cursor = None;
            p.passes += 1;
            true
        }
    }
}

/// Compares the chunk after `after` of `t` under the point's snapshots. Returns its proof and
/// whether it is the table's last.
async fn chunk(
    point: &Point,
    t: &VerifyTable,
    after: Option<i64>,
) -> Result<(ChunkProof, bool), Void> {
    let Point { source, target, lsn } = point;
    let upto = match &t.key {
        None => None,
        Some(k) => {
            let (a, b) = tokio::join!(
                crate::verify::next_key(source, t, k, after),
                crate::verify::next_key(target, t, k, after)
            );
            match (a?, b?) {
                (None, None) => None,
                (a, b) => {
                    let next = a.into_iter().chain(b).min().unwrap_or(0);
                    Some(next.div_euclid(CHUNK).saturating_mul(CHUNK).saturating_add(CHUNK - 1))
                }
            }
        }
    };
    let upto = upto.filter(|u| *u != i64::MAX);
    let (a, b) = tokio::join!(
        crate::verify::range_sum(source, t, after, upto),
        crate::verify::range_sum(target, t, after, upto)
    );
    let ((rows, checksum), (target_rows, target_sum)) =
        (a?.unwrap_or((0, String::new())), b?.unwrap_or((0, "missing".into())));
    let equal = rows == target_rows && checksum == target_sum;
    let mut differing_keys = vec![];
    if !equal && let Some(k) = &t.key {
        let (a, b) = tokio::join!(
            crate::verify::range_rows(source, t, k, after, upto),
            crate::verify::range_rows(target, t, k, after, upto)
        );
        differing_keys = crate::verify::differing_keys(k, &a?, &b?, KEYS_NAMED);
    }
    let proof = ChunkProof {
        after,
        upto,
        rows,
        target_rows,
        checksum,
        equal,
        lsn: lsn_text(*lsn),
        at: now_f64(),
        differing_keys,
    };
    Ok((proof, upto.is_none()))
}

/// Verification inside the fence (both sides quiet, drained): per table, the rows changed since
/// its last complete pass proved it equal, by key; a table not so proven is compared in full.
pub(crate) async fn check_in_fence(
    source: &Client,
    target: &Client,
    tables: &[VerifyTable],
    proving: &Proving,
    checksums: bool,
) -> Result<Vec<TableCheck>, tokio_postgres::Error> {
    let proofs = proving.proofs();
    let mut out = vec![];
    for t in tables {
        let name = qualified(&t.schema, &t.table);
        // Only a table the stream carries (and continuous verification compares) stays proven:
        // an unlogged one, say, changes on the source without a word to the stream.
        let carried = proving.settings.as_ref().is_some_and(|s| s.tables.contains(t));
        let plan = {
            let touched = proving.touched.lock().expect("touched lock");
            in_fence_plan(&proofs, &touched, &name, checksums).filter(|_| carried)
        };
        let plan = match plan {
            // (A proven table dropped since, on either side, is compared in full: missing.)
            Some(p) if exists(source, t).await? && exists(target, t).await? => Some(p),
            _ => None,
        };
        let Some((proven_at, chunks, rows, columns, keys)) = plan else {
            out.extend(
                crate::verify::compare(source, target, std::slice::from_ref(t), checksums).await?,
            );
            continue;
        };
        let (a, b) = tokio::join!(
            crate::verify::rows_by_key(source, t, &columns, &keys),
            crate::verify::rows_by_key(target, t, &columns, &keys)
        );
        let (a, b) = (a?, b?);
        let differing: Vec<String> = keys
            .iter()
            .zip(a.iter().zip(&b))
            .filter(|(_, (x, y))| x != y)
            .take(KEYS_NAMED)
            .map(|(k, _)| key_text(&columns, k))
            .collect();
        out.push(TableCheck {
            table: name,
            source_rows: rows,
            target_rows: rows,
            checksums_equal: differing.is_empty(),
            differing_ranges: differing,
            missing_on: None,
            rows_by_key: keys.len(),
            proof: Some(format!(
                "proven equal while streaming ({chunks} chunk(s), {rows} rows, at {} and \
                 after); {} row(s) changed since compared by key",
                lsn_text(proven_at),
                keys.len()
            )),
        });
    }
    Ok(out)
}

/// Whether table `t` exists on that side.
async fn exists(client: &Client, t: &VerifyTable) -> Result<bool, tokio_postgres::Error> {
    let name = crate::sql::qualified_ident(&t.schema, &t.table);
    Ok(client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await?.get(0))
}

/// What the fence compares of a proven table: (proven at, chunks, rows, key columns, keys
/// changed since). `None`: compared in full.
#[allow(clippy::type_complexity)]
fn in_fence_plan(
    proofs: &Proofs,
    touched: &Touched,
    name: &str,
    checksums: bool,
) -> Option<(u64, usize, i64, Vec<(String, String)>, Vec<Vec<Option<String>>>)> {
    let since = touched.since?;
    let tp = proofs.tables.get(name)?;
    let proven_at = tp.proven_at().filter(|at| *at >= since && checksums)?;
    let touch = touched.tables.get(name);
    if touch.is_some_and(|t| t.whole.is_some_and(|w| w >= proven_at)) {
        return None;
    }
    let keys: Vec<Vec<Option<String>>> = touch
        .map(|t| {
            t.keys.iter().filter(|(_, lsn)| **lsn >= proven_at).map(|(k, _)| unpack(k)).collect()
        })
        .unwrap_or_default();
    let columns = touch.map(|t| t.columns.clone()).unwrap_or_default();
    if !keys.is_empty() && columns.is_empty() {
        return None;
    }
    Some((proven_at, tp.complete.len(), tp.rows(), columns, keys))
}

/// A key's values in one allocation (a key is kept long, and there can be many): per value,
/// `0` (NULL), or `1`, its length (4 bytes) and its text.
#[derive(Default)]
pub(crate) struct KeyPacker(Vec<u8>);

impl KeyPacker {
    /// A NULL.
    pub(crate) fn null(&mut self) {
        self.0.push(0);
    }

    /// A value whose text `write` puts after what the buffer holds (false: it cannot).
    pub(crate) fn text(&mut self, write: impl FnOnce(&mut Vec<u8>) -> bool) -> Option<()> {
        self.0.push(1);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        if !write(&mut self.0) {
            return None;
        }
        let len = u32::try_from(self.0.len() - at - 4).ok()?;
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Some(())
    }

    /// The packed key.
    pub(crate) fn done(self) -> Box<[u8]> {
        self.0.into_boxed_slice()
    }
}

/// The values [`pack`] packed.
fn unpack(mut key: &[u8]) -> Vec<Option<String>> {
    let mut values = vec![];
    while let Some((&tag, rest)) = key.split_first() {
        if tag == 0 || rest.len() < 4 {
            values.push(None);
            key = rest;
            continue;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let (text, rest) = rest[4..].split_at(len.min(rest.len() - 4));
        values.push(Some(String::from_utf8_lossy(text).into_owned()));
        key = rest;
    }
    values
}

/// `id=7`, `(a, b)=(1, x)`.
fn key_text(columns: &[(String, String)], key: &[Option<String>]) -> String {
    let value = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
    if columns.len() == 1 {
        format!("{}={}", columns[0].0, key.first().map(value).unwrap_or_default())
    } else {
        format!(
            "({})=({})",
            columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", "),
            key.iter().map(value).collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TableProof;
    use crate::stream::{Tuple, Value};

    impl Touched {
        /// Records rows of `table` changed by the transaction committing at `lsn`: each tuple's
        /// key (`keys` are the key columns' indexes; none: the table has no key).
        pub(crate) fn record(
            &mut self,
            table: &Arc<str>,
            columns: impl FnOnce() -> Vec<(String, String)>,
            keys: &[usize],
            tuples: &[&Tuple],
            lsn: u64,
        ) {
            if keys.is_empty() {
                self.record_whole(table, lsn);
                return;
            }
            let packed = tuples.iter().map(|tuple| pack(keys.iter().map(|&i| tuple.get(i))));
            self.record_keys(table, columns, packed, lsn);
        }
    }

    /// The key of `values` (see [`KeyPacker`]). `None` if a value was not sent, or is not in
    /// text.
    fn pack<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> Option<Box<[u8]>> {
        let mut key = KeyPacker::default();
        for v in values {
            match v? {
                Value::Text(b) => key.text(|out| {
                    out.extend_from_slice(b);
                    true
                })?,
                Value::Null => key.null(),
                // (Looked up in text: a key read back from binary is; one that could not be, or
                // unchanged TOAST, leaves the table compared whole.)
                Value::Unchanged | Value::Binary(_) => return None,
            }
        }
        Some(key.done())
    }

    fn proofs(lsn: &str, equal: bool) -> Proofs {
        let chunk = |after: Option<i64>, upto: Option<i64>| ChunkProof {
            after,
            upto,
            rows: 10,
            target_rows: 10,
            equal,
            lsn: lsn.into(),
            ..ChunkProof::default()
        };
        let mut p = Proofs::default();
        p.tables.insert(
            "public.t".into(),
            TableProof {
                key: Some("id".into()),
                complete: vec![chunk(None, Some(99_999)), chunk(Some(99_999), None)],
                current: vec![],
            },
        );
        p
    }

    fn touched(since: u64) -> Touched {
        let mut t = Touched { since: Some(since), ..Touched::default() };
        let table: Arc<str> = "public.t".into();
        let columns = || vec![("id".to_string(), "integer".to_string())];
        let row = |v: &'static str| vec![Value::Text(Bytes::from_static(v.as_bytes()))];
        t.record(&table, columns, &[0], &[&row("1")], 0x90);
        t.record(&table, columns, &[0], &[&row("2"), &row("3")], 0x150);
        t
    }

    #[test]
    fn packed_keys_give_back_their_values_nulls_and_empty_texts_included() {
        let values = [Value::Text(Bytes::from("7")), Value::Null, Value::Text(Bytes::new())];
        let key = pack(values.iter().map(Some)).unwrap();
        assert_eq!(unpack(&key), vec![Some("7".into()), None, Some(String::new())]);
        assert!(pack([Some(&Value::Unchanged)].into_iter()).is_none());
    }

    #[test]
    fn changed_rows_are_remembered_up_to_a_bound_then_the_table_is_compared_in_full() {
        let mut t = Touched { since: Some(1), ..Touched::default() };
        let table: Arc<str> = "public.t".into();
        let columns = || vec![("id".to_string(), "integer".to_string())];
        let other: Arc<str> = "public.other".into();
        t.record(&other, columns, &[0], &[&vec![Value::Text(Bytes::from("1"))]], 0x50);
        for i in 0..MAX_KEYS {
            let row = vec![Value::Text(Bytes::from(i.to_string()))];
            t.record(&table, columns, &[0], &[&row], 0x100 + i as u64);
        }
        let touch = &t.tables[&table];
        assert!(touch.keys.is_empty(), "the table with the most keys is compared in full");
        assert_eq!(touch.whole, Some(0x100 + MAX_KEYS as u64 - 1));
        assert!(in_fence_plan(&proofs("0/100", true), &t, "public.t", true).is_none());
        assert_eq!(t.tables[&other].keys.len(), 1, "the others keep theirs");
        assert_eq!(t.count, 1);
        t.forget_before("public.other", 0x51);
        assert_eq!(t.count, 0);
    }

    #[test]
    fn the_fence_compares_only_rows_changed_since_a_proof_this_process_can_vouch_for() {
        // Proven at 0/100; this process recorded changes since 0/50: rows 2 and 3 changed
        // after the proof, row 1 before it.
        let (at, chunks, rows, columns, mut keys) =
            in_fence_plan(&proofs("0/100", true), &touched(0x50), "public.t", true).unwrap();
        keys.sort();
        assert_eq!((at, chunks, rows), (0x100, 2, 20));
        assert_eq!(columns, vec![("id".to_string(), "integer".to_string())]);
        assert_eq!(keys, vec![vec![Some("2".to_string())], vec![Some("3".to_string())]]);
        assert_eq!(key_text(&columns, &keys[0]), "id=2");
        // A proof older than what this process recorded, a chunk found different, checksums
        // off, or a truncate since: compared in full.
        assert!(in_fence_plan(&proofs("0/40", true), &touched(0x50), "public.t", true).is_none());
        assert!(in_fence_plan(&proofs("0/100", false), &touched(0x50), "public.t", true).is_none());
        assert!(in_fence_plan(&proofs("0/100", true), &touched(0x50), "public.t", false).is_none());
        let mut truncated = touched(0x50);
        truncated.record_whole(&"public.t".into(), 0x120);
        assert!(in_fence_plan(&proofs("0/100", true), &truncated, "public.t", true).is_none());
        // A table nobody changed since its proof: nothing to compare inside the fence.
        let none = Touched { since: Some(0x50), ..Touched::default() };
        let (_, _, _, _, keys) =
            in_fence_plan(&proofs("0/100", true), &none, "public.t", true).unwrap();
        assert!(keys.is_empty());
        // A key the stream did not send (unchanged TOAST) cannot be looked up: the table is
        // compared in full.
        let mut unsent = touched(0x50);
        let unchanged = vec![Value::Unchanged];
        unsent.record(&"public.t".into(), Vec::new, &[0], &[&unchanged], 0x160);
        assert!(in_fence_plan(&proofs("0/100", true), &unsent, "public.t", true).is_none());
        // Before anything streamed in this process: nothing can be vouched for.
        assert!(
            in_fence_plan(&proofs("0/100", true), &Touched::default(), "public.t", true).is_none()
        );
    }
}
