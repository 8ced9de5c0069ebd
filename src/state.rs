//! The state of a migration: what `apply` has done, step by step, in
//! `<state_dir>/state.json`, and the lock that keeps two applies of one migration apart.
//!
//! Rules: the state is written before a step starts (`running`) and after it ends (`done` or
//! `failed`), always atomically (a temporary file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old state or the new one. It holds no secrets: endpoints are redacted
//! and no SQL with values is stored. The lock is an OS file lock (`flock`) on
//! `<state_dir>/lock`: the kernel releases it when the process dies, so a lock left by a killed
//! process never blocks the next run; the file's text says who holds it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Version of the state file format.
pub const STATE_FORMAT: u32 = 1;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Set by apply just before the step starts. Found on a later run, it means the run was
    /// interrupted during the step: apply checks the target to tell whether it completed.
    Running,
    /// Set by apply when the step's work is committed on the target.
    Done,
    /// Set by apply when the step failed (its transaction was rolled back).
    Failed,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// Where it is.
    pub status: StepStatus,
    /// When it (last) started, Unix seconds.
    pub started_at: u64,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// Rows copied (copies).
    #[serde(default)]
    pub rows: Option<u64>,
    /// Bytes streamed (copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The error, when it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The execution plan (its id) under which the step was last run: `apply` skips a step as
    /// done only when it was done under the plan being applied (a new plan was computed from
    /// the target as it is now, and says itself what remains).
    #[serde(default)]
    pub plan: Option<String>,
    /// Copies: the source's WAL position when the snapshot the copy read was taken (an upper
    /// bound of the point in the source's history the copied rows correspond to; change
    /// streaming skips what the copy already holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lsn: Option<String>,
    /// Copies: the snapshot the copy read, as `pg_current_snapshot()` prints it
    /// (`xmin:xmax:xip,...`). Change streaming skips, for this table, exactly the transactions
    /// this snapshot sees (their rows are in the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot: Option<String>,
}

/// Change streaming (online mode): what the running or last `apply` reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    /// The slot on the source.
    pub slot: String,
    /// The publication on the source.
    pub publication: String,
    /// The replication origin on the target.
    pub origin: String,
    /// The streamed tables and their copy steps.
    pub tables: Vec<crate::execution_plan::StreamTable>,
    /// Tables whose replica identity apply set to FULL on the source (`abort` sets them back).
    #[serde(default)]
    pub replica_identity_full: Vec<String>,
    /// Whether changes are being applied now (by the process holding the lock).
    #[serde(default)]
    pub streaming: bool,
    /// The process that streams (or last streamed): `streaming` holds only while that process
    /// holds the lock (a killed one leaves `streaming: true` behind).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The source position applied on the target (committed with the changes).
    #[serde(default)]
    pub applied_lsn: Option<String>,
    /// How the stream's values come: `binary`, or `text` with why not binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<String>,
    /// A stream met a column its binary values were not chosen for: the migration's streams
    /// are in text from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_values: bool,
    /// The source's current WAL position, as last read.
    #[serde(default)]
    pub source_lsn: Option<String>,
    /// Bytes of source WAL not yet applied.
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    /// How old the newest change not yet applied is (0 when caught up).
    #[serde(default)]
    pub lag_seconds: Option<f64>,
    /// When the target was last caught up (Unix seconds).
    #[serde(default)]
    pub caught_up_at: Option<f64>,
    /// The lag under which the migration is ready for cutover (`sync.max_lag`).
    #[serde(default)]
    pub max_lag_seconds: f64,
    /// Rows changed per second on the source, as the stream applied them lately (a moving
    /// average, for the cutover's expected write gap).
    #[serde(default)]
    pub changes_per_second: Option<f64>,
    /// Changes applied, all tables.
    #[serde(default)]
    pub applied: Counters,
    /// Changes applied, per table (`schema.table`).
    #[serde(default)]
    pub per_table: BTreeMap<String, Counters>,
    /// Why streaming stopped, when it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When the streamer last wrote this (Unix seconds, fractional).
    #[serde(default)]
    pub reported_at: f64,
}

/// Where a cutover is, in the order it goes (saved as `fencing`, `draining`, ... `failed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoverStatus {
    /// The fence is going up on the source.
    #[default]
    Fencing,
    /// Fenced; the stream applies everything up to the barrier.
    Draining,
    /// Drained: sequences and refreshes.
    Finishing,
    /// Comparing the rows of every table.
    Verifying,
    /// Verified, waiting for the other databases of the migration to be verified too (a
    /// migration of several databases cuts them over together). Not the primary yet: a crash
    /// here lifts the fence, unless every database was verified and the decision to go recorded.
    Verified,
    /// Verified (the target is the new primary); the slot, publication and origin go.
    CleaningUp,
    /// The target is ready for the applications.
    Done,
    /// Stopped before verification passed (see `fence_lifted`).
    Failed,
}

impl CutoverStatus {
    /// As saved in the state, and shown.
    pub fn name(self) -> &'static str {
        match self {
            CutoverStatus::Fencing => "fencing",
            CutoverStatus::Draining => "draining",
            CutoverStatus::Finishing => "finishing",
            CutoverStatus::Verifying => "verifying",
            CutoverStatus::Verified => "verified",
            CutoverStatus::CleaningUp => "cleaning_up",
            CutoverStatus::Done => "done",
            CutoverStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for CutoverStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The cutover.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CutoverState {
    /// Where it is.
    pub status: CutoverStatus,
    /// When it was asked for (Unix seconds).
    #[serde(default)]
    pub requested_at: Option<f64>,
    /// When the fence went up.
    #[serde(default)]
    pub fenced_at: Option<f64>,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// From the fence to the end: how long the source took no writes and the target was not yet
    /// declared ready.
    #[serde(default)]
    pub write_gap_seconds: Option<f64>,
    /// Where the write gap went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_gap: Option<WriteGap>,
    /// What verification compared.
    #[serde(default)]
    pub verified: Vec<crate::verify::TableCheck>,
    /// Whether it compared checksums too (`verify.checksums`), not only row counts.
    #[serde(default)]
    pub checksums_compared: bool,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// After a failure: the fence was lifted (the source takes writes again).
    #[serde(default)]
    pub fence_lifted: bool,
    /// With `cutover.rollback_window`: the window's migration plan, once the window is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_plan: Option<String>,
}

/// Where a cutover's write gap went, in seconds: the drain, sequences (and refreshes),
/// verification and clean-up add up to it; the fence went up just before it began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteGap {
    /// Putting the fence up: the read-only default committed, every other session ended.
    pub fence: f64,
    /// The stream applying everything up to the barrier.
    pub drain: f64,
    /// Sequences set, materialized views refreshed.
    pub sequences: f64,
    /// Row counts and checksums of every table, on both servers.
    pub verification: f64,
    /// The slot, publication and origin dropped.
    pub clean_up: f64,
}

impl CutoverState {
    /// The fence is up and the stream not yet drained to its barrier: a failure now lifts the
    /// fence rather than wait for a server.
    pub fn fenced_undrained(&self) -> bool {
        matches!(self.status, CutoverStatus::Fencing | CutoverStatus::Draining)
    }

    /// Verified: the target is the new primary (its clean-up may still be under way).
    pub fn verified(&self) -> bool {
        matches!(self.status, CutoverStatus::CleaningUp | CutoverStatus::Done)
    }

    /// The target is ready for the applications, and nothing of the migration is left.
    pub fn done(&self) -> bool {
        self.status == CutoverStatus::Done
    }

    /// The fence may still be up: the cutover stopped before verification passed (kill -9, a
    /// crash), or failed and could not lift it (the source was unreachable).
    pub fn fence_left_up(&self) -> bool {
        use CutoverStatus::*;
        matches!(self.status, Fencing | Draining | Finishing | Verifying | Verified)
            || (self.status == Failed && !self.fence_lifted)
    }
}

/// Continuous verification (online mode): source and target compared while streaming, chunk
/// by chunk, each chunk at a consistent point (a source snapshot and the target's applied
/// position describing the same moment, `lsn`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Proofs {
    /// Per table (`schema.table`).
    #[serde(default)]
    pub tables: BTreeMap<String, TableProof>,
    /// Where the pass under way is: the table it compares next, and the key after which.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// Complete passes over every table.
    #[serde(default)]
    pub passes: u64,
    /// Consistent points taken.
    #[serde(default)]
    pub rounds: u64,
    /// The longest the stream stood still for one (seconds): committed, waiting for the
    /// target's snapshot.
    #[serde(default)]
    pub longest_pause: f64,
    /// Rows compared (each side).
    #[serde(default)]
    pub rows_compared: u64,
    /// When a chunk was last compared (Unix seconds).
    #[serde(default)]
    pub last_at: Option<f64>,
    /// Why the last round failed, if it did (it is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rows found different and copied again (`verify.repair`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<RepairRecord>,
}

/// Rows copied again from the source at a consistent point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairRecord {
    /// `schema.table`.
    pub table: String,
    /// The rows' keys (`id=7`).
    pub keys: Vec<String>,
    /// Rows the source had with those keys (copied; the others were deleted).
    pub rows_copied: u64,
    /// The consistent point.
    pub lsn: String,
    /// When (Unix seconds).
    pub at: f64,
}

/// Where a verification pass is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `schema.table`.
    pub table: String,
    /// The last chunk's upper bound: the next chunk starts after it (none: at the start).
    #[serde(default)]
    pub after: Option<i64>,
}

/// One table's proofs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableProof {
    /// Its integer key, when chunked by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The chunks of the pass under way, in key order.
    #[serde(default)]
    pub current: Vec<ChunkProof>,
    /// The chunks of the last complete pass over the table: together they cover every key.
    #[serde(default)]
    pub complete: Vec<ChunkProof>,
}

impl TableProof {
    /// Chunks that differ, in either pass.
    pub fn differing(&self) -> impl Iterator<Item = &ChunkProof> {
        self.complete.iter().chain(&self.current).filter(|c| !c.equal)
    }

    /// The rows of the last complete pass (source side).
    pub fn rows(&self) -> i64 {
        self.complete.iter().map(|c| c.rows).sum()
    }

    /// The oldest position of the last complete pass, when it proved every chunk equal.
    pub fn proven_at(&self) -> Option<u64> {
        if self.complete.is_empty() || self.differing().next().is_some() {
            return None;
        }
        self.complete.iter().map(|c| crate::stream::parse_lsn(&c.lsn).unwrap_or(0)).min()
    }

    /// When the last complete pass proved every chunk equal: its oldest chunk's time.
    pub fn proven_as_of(&self) -> Option<f64> {
        self.proven_at().and_then(|_| oldest_at(&self.complete))
    }
}

/// The time of the oldest of `chunks`.
pub fn oldest_at(chunks: &[ChunkProof]) -> Option<f64> {
    chunks.iter().map(|c| c.at).min_by(f64::total_cmp)
}

/// One chunk compared: the keys in `(after, upto]` (a table without an integer key is one
/// chunk, unbounded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkProof {
    /// Keys above this (none: from the lowest).
    #[serde(default)]
    pub after: Option<i64>,
    /// Keys up to this (none: to the highest).
    #[serde(default)]
    pub upto: Option<i64>,
    /// Rows on the source.
    pub rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// The source's checksum.
    pub checksum: String,
    /// Equal on both sides.
    pub equal: bool,
    /// Where the two sides stood: the source's snapshot and the target's applied position.
    pub lsn: String,
    /// When (Unix seconds).
    pub at: f64,
    /// Keys of rows that differ (`id=7`), the first few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differing_keys: Vec<String>,
}

impl ChunkProof {
    /// `id 100000..199999`, `id ..99999`, `id 900000..`, or `all rows`.
    pub fn range(&self, key: Option<&str>) -> String {
        match (key, self.after, self.upto) {
            (None, ..) | (_, None, None) => "all rows".into(),
            (Some(k), a, u) => format!(
                "{k} {}..{}",
                a.map(|a| (a + 1).to_string()).unwrap_or_default(),
                u.map(|u| u.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// Counts of applied changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Rows inserted.
    pub inserts: u64,
    /// Rows updated.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Tables truncated.
    pub truncates: u64,
    /// Source transactions applied.
    pub transactions: u64,
    /// Statements that applied them on the target: fewer than the rows when a batch's changes
    /// were coalesced (a hot row updated many times) and sent as set-based statements.
    #[serde(default)]
    pub statements: u64,
}

impl Counters {
    /// Adds `other`.
    pub fn add(&mut self, other: &Counters) {
        self.inserts += other.inserts;
        self.updates += other.updates;
        self.deletes += other.deletes;
        self.truncates += other.truncates;
        self.transactions += other.transactions;
        self.statements += other.statements;
    }
}

/// `2026-11-21 06:58:47 UTC` for a Unix time (the proleptic Gregorian calendar, as `date -u`).
pub fn utc_text(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Seconds since the Unix epoch, fractional.
pub fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The state of one migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// The migration's name: a state is only ever used for the migration that wrote it.
    pub migration: String,
    /// The source's system identifier, when known: a state is refused against another server.
    pub source_system_identifier: Option<String>,
    /// The target's system identifier, when known.
    pub target_system_identifier: Option<String>,
    /// The source database: a state is refused against another database.
    #[serde(default)]
    pub source_database: Option<String>,
    /// The target database.
    #[serde(default)]
    pub target_database: Option<String>,
    /// The run being applied: a saved plan's id (stable, so resuming that plan accepts a
    /// target apply has changed since, and skips what it did), or a fresh plan's unique run id.
    pub applying: Option<String>,
    /// Ids of saved execution plans applied to completion: applying one again is refused.
    #[serde(default)]
    pub completed: Vec<String>,
    /// Step id → record.
    pub steps: BTreeMap<String, StepState>,
    /// Online mode: the change stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncState>,
    /// Online mode: the cutover, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover: Option<CutoverState>,
    /// Online mode: what continuous verification proved while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Proofs>,
    /// Last write, Unix seconds.
    pub updated_at: u64,
}

/// Problems with the state directory.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    /// Another apply holds the lock.
    #[error("another pgtransit run holds the lock on {path}: {holder}")]
    #[diagnostic(
        code(pgtransit::locked),
        help(
            "wait for it to finish, or stop it (Ctrl-C, or `kill` that pid) and run again; a \
              lock left by a process that died is released by the system and never blocks (the \
              next run takes it over)"
        )
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote: pid, host, start time, command.
        holder: String,
    },
    /// The state belongs to another migration or another server.
    #[error("the state in {path} {problem}")]
    #[diagnostic(
        code(pgtransit::state_mismatch),
        help(
            "point `state_dir` at this migration's own directory, or move the old state away if \
              this migration really starts over"
        )
    )]
    Mismatch {
        /// The state file.
        path: PathBuf,
        /// What does not match.
        problem: String,
    },
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file.
    #[error("{path} is not a pgtransit state file: {message}")]
    #[diagnostic(help("move it away; pgtransit will start a new state"))]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { what, path, source }
}

/// A held lock on a state directory; released on drop (or when the process dies).
///
/// The lock is the kernel's (`flock`) on the `lock` file, which names the holder. A run that
/// ends empties the file; one that dies (kill -9, a crash of the machine) cannot, and the
/// kernel releases its lock anyway: the next run takes it over, saying whose it was.
#[derive(Debug)]
pub struct Lock {
    file: File,
    /// The holder named in the file when this run took it: a run that died holding it.
    pub taken_over: Option<String>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The state directory of one migration.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The directory (created when first locked).
    pub fn new(dir: PathBuf) -> StateDir {
        StateDir { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Takes the lock, or says who holds it.
    pub fn lock(&self, command: &str) -> Result<Lock, StateError> {
        fs::create_dir_all(&self.dir)
            .map_err(io("cannot create the state directory", &self.dir))?;
        let path = self.dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot open the lock file", &path))?;
        // `holder()` (of `status`, `cutover`) shares the lock for an instant when it is free: a
        // lock held for that long is tried again.
        let mut tries = 0;
        let taken = loop {
            match file.try_lock() {
                Err(fs::TryLockError::WouldBlock) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match taken {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown process" } else { holder };
                return Err(StateError::Locked { path, holder: holder.to_string() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", &path)(e)),
        }
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim();
        let taken_over = (!previous.is_empty()).then(|| previous.to_string());
        if let Some(p) = &taken_over {
            tracing::warn!("took over the lock of a run that ended without releasing it ({p})");
        }
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown host".into());
        let text = format!(
            "pid {} on {host}, started at {}, running `pgtransit {command}`\n",
            std::process::id(),
            utc_text(now())
        );
        file.set_len(0).map_err(io("cannot write the lock file", &path))?;
        file.rewind().map_err(io("cannot write the lock file", &path))?;
        file.write_all(text.as_bytes()).map_err(io("cannot write the lock file", &path))?;
        Ok(Lock { file, taken_over })
    }

    /// Who holds the lock, if anyone (a running `apply`): the holder's text.
    /// (A free lock is shared for an instant to tell, so looks never refuse each other;
    /// [`StateDir::lock`] tries again meanwhile.)
    pub fn holder(&self) -> Option<String> {
        let path = self.dir.join("lock");
        let mut file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
        // A holder that has not written its text yet (just started): asked again for a while
        // before it is named "unknown".
        for _ in 0..10 {
            match file.try_lock_shared() {
                Ok(()) => return None,
                Err(_) => {
                    let mut holder = String::new();
                    let _ = file.rewind();
                    let _ = file.read_to_string(&mut holder);
                    if !holder.trim().is_empty() {
                        return Some(holder.trim().to_string());
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some("an unknown process".to_string())
    }

    /// Reads the state, if there is one.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
        if state.format != STATE_FORMAT {
            return Err(StateError::Corrupt {
                path,
                message: format!("format {} (this pgtransit writes {STATE_FORMAT})", state.format),
            });
        }
        Ok(Some(state))
    }

    /// Writes the state atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.updated_at = now();
        fs::create_dir_all(&self.dir)
            .map_err(io("cannot create the state directory", &self.dir))?;
        let path = self.state_file();
        let tmp = self.dir.join(format!(".state.json.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        let mut f = File::create(&tmp).map_err(io("cannot write", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("cannot write", &tmp))?;
        f.write_all(b"\n").map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("cannot replace", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the state directory", &self.dir))?;
        Ok(())
    }
}

impl State {
    /// A new, empty state.
    pub fn new(migration: &str) -> State {
        State {
            format: STATE_FORMAT,
            migration: migration.to_string(),
            source_system_identifier: None,
            target_system_identifier: None,
            source_database: None,
            target_database: None,
            applying: None,
            completed: vec![],
            steps: BTreeMap::new(),
            sync: None,
            cutover: None,
            verification: None,
            updated_at: now(),
        }
    }

    /// Refuses a state written for another migration or against other servers.
    pub fn check_belongs(
        &self,
        path: &Path,
        migration: &str,
        source_sysid: Option<&str>,
        target_sysid: Option<&str>,
        databases: (Option<&str>, Option<&str>),
    ) -> Result<(), StateError> {
        let mismatch = |problem: String| StateError::Mismatch { path: path.to_owned(), problem };
        if self.migration != migration {
            return Err(mismatch(format!(
                "belongs to migration `{}`, not `{migration}`",
                self.migration
            )));
        }
        for (side, recorded, now) in [
            ("source", &self.source_database, databases.0),
            ("target", &self.target_database, databases.1),
        ] {
            if let (Some(r), Some(n)) = (recorded, now)
                && r != n
            {
                return Err(mismatch(format!(
                    "was written against another {side} database (`{r}`, this one is `{n}`)"
                )));
            }
        }
        for (side, recorded, now) in [
            ("source", &self.source_system_identifier, source_sysid),
            ("target", &self.target_system_identifier, target_sysid),
        ] {
            if let (Some(r), Some(n)) = (recorded, now)
                && r != n
            {
                return Err(mismatch(format!(
                    "was written against another {side} server (system identifier {r}, this \
                     one is {n})"
                )));
            }
        }
        Ok(())
    }

    /// Whether a step is done (by any plan: the planner's view of what the target holds).
    pub fn is_done(&self, id: &str) -> bool {
        self.steps.get(id).is_some_and(|s| s.status == StepStatus::Done)
    }

    /// Whether a step was done under the plan being applied (`applying`): what `apply` skips.
    pub fn is_done_in_this_plan(&self, id: &str) -> bool {
        self.steps.get(id).is_some_and(|s| {
            s.status == StepStatus::Done && s.plan.is_some() && s.plan == self.applying
        })
    }

    /// This state with every copy done taken as interrupted (so planned again): online mode,
    /// when the slot that streams what came after those copies is gone.
    pub fn with_copies_interrupted(&self) -> State {
        let mut s = self.clone();
        for (id, r) in s.steps.iter_mut() {
            if id.starts_with("load:") && r.status == StepStatus::Done {
                r.status = StepStatus::Running;
            }
        }
        s
    }

    /// Marks a step running (before its work).
    pub fn start(&mut self, id: &str) {
        self.steps.insert(
            id.to_string(),
            StepState {
                status: StepStatus::Running,
                started_at: now(),
                finished_at: None,
                rows: None,
                bytes: None,
                error: None,
                source_lsn: None,
                source_snapshot: None,
                plan: self.applying.clone(),
            },
        );
    }

    /// Marks a step done (after its work is committed).
    pub fn finish(&mut self, id: &str, rows: Option<u64>) {
        if let Some(s) = self.steps.get_mut(id) {
            s.status = StepStatus::Done;
            s.finished_at = Some(now());
            s.rows = rows;
            s.error = None;
        }
    }

    /// Marks a step failed.
    pub fn fail(&mut self, id: &str, error: String) {
        if let Some(s) = self.steps.get_mut(id) {
            s.status = StepStatus::Failed;
            s.finished_at = Some(now());
            s.error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutover_lifecycle_is_saved_as_the_strings_earlier_state_files_hold() {
        use CutoverStatus::*;
        let all = [Fencing, Draining, Finishing, Verifying, Verified, CleaningUp, Done, Failed];
        let saved = [
            "fencing",
            "draining",
            "finishing",
            "verifying",
            "verified",
            "cleaning_up",
            "done",
            "failed",
        ];
        for (status, text) in all.iter().zip(saved) {
            assert_eq!(serde_json::to_string(status).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<CutoverStatus>(&format!("\"{text}\"")).unwrap(),
                *status
            );
            assert_eq!(status.to_string(), text);
        }
        let old: CutoverState =
            serde_json::from_str(r#"{"status": "draining", "fenced_at": 1.5}"#).unwrap();
        assert!(old.fenced_undrained() && old.fence_left_up() && !old.verified());
    }

    fn temp(name: &str) -> StateDir {
        let dir =
            std::env::temp_dir().join(format!("pgtransit-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        StateDir::new(dir)
    }

    #[test]
    fn state_round_trips_and_leaves_no_temporary_file() {
        let dir = temp("roundtrip");
        assert_eq!(dir.load().unwrap(), None);
        let mut s = State::new("m");
        s.start("load:public.film");
        s.finish("load:public.film", Some(1000));
        dir.save(&mut s).unwrap();
        let back = dir.load().unwrap().unwrap();
        assert!(back.is_done("load:public.film"));
        assert_eq!(back.steps["load:public.film"].rows, Some(1000));
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = temp("lock");
        let held = dir.lock("apply plans/x.yaml").unwrap();
        let err = dir.lock("apply plans/x.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("apply plans/x.yaml"), "{msg}");
        drop(held);
        let again = dir.lock("apply").unwrap();
        assert_eq!(again.taken_over, None, "a run that ended released its lock");
        drop(again);
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_taken_for_an_instant_by_a_look_at_its_holder_neither_refuses_an_apply_nor_is_one() {
        let dir = temp("lock-look");
        assert_eq!(dir.holder(), None, "no lock file yet");
        drop(dir.lock("apply").unwrap());
        // What `holder()` does when the lock is free, for longer than it does.
        let look = || {
            let look =
                OpenOptions::new().read(true).write(true).open(dir.path().join("lock")).unwrap();
            look.try_lock_shared().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(60));
                drop(look);
            })
        };
        let ends = look();
        assert_eq!(dir.holder(), None, "another look is not an apply");
        ends.join().unwrap();
        let ends = look();
        let lock = dir.lock("apply plans/x.yaml").unwrap();
        ends.join().unwrap();
        assert!(dir.holder().is_some_and(|h| h.contains("apply plans/x.yaml")));
        drop(lock);
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(1_795_244_327), "2026-11-21 06:58:47 UTC");
    }

    #[test]
    fn lock_of_a_run_that_died_is_taken_over_naming_it() {
        let dir = temp("lock-dead");
        fs::create_dir_all(dir.path()).unwrap();
        // What a run killed with -9 leaves: its line, and no lock held (the kernel dropped it).
        let dead =
            "pid 4242 on somehost, started at 2023-11-14 22:13:20 UTC, running `pgtransit apply`";
        fs::write(dir.path().join("lock"), format!("{dead}\n")).unwrap();
        let lock = dir.lock("apply").unwrap();
        assert_eq!(lock.taken_over.as_deref(), Some(dead));
        let now = fs::read_to_string(dir.path().join("lock")).unwrap();
        assert!(now.contains(&format!("pid {}", std::process::id())), "{now}");
        drop(lock);
        fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn state_of_another_migration_or_server_is_refused() {
        let mut s = State::new("a");
        s.source_system_identifier = Some("111".into());
        let p = Path::new("state.json");
        let none = (None, None);
        let e = s.check_belongs(p, "b", None, None, none).unwrap_err().to_string();
        assert!(e.contains("migration `a`"), "{e}");
        let e = s.check_belongs(p, "a", Some("222"), None, none).unwrap_err().to_string();
        assert!(e.contains("another source server"), "{e}");
        s.check_belongs(p, "a", Some("111"), Some("999"), none).unwrap();
        s.target_database = Some("shop".into());
        let e = s.check_belongs(p, "a", None, None, (None, Some("shop2"))).unwrap_err().to_string();
        assert!(e.contains("another target database"), "{e}");
    }

    #[test]
    fn done_counts_for_apply_only_under_the_plan_being_applied() {
        let mut s = State::new("m");
        s.applying = Some("plan-1".into());
        s.start("x");
        s.finish("x", None);
        assert!(s.is_done_in_this_plan("x"));
        s.applying = Some("plan-2".into());
        assert!(!s.is_done_in_this_plan("x"), "a new plan says itself what remains");
        assert!(s.is_done("x"), "the planner still knows it was done");
    }

    #[test]
    fn garbage_state_is_reported_not_trusted() {
        let dir = temp("corrupt");
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(dir.state_file(), "{not json").unwrap();
        assert!(matches!(dir.load(), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(dir.path()).unwrap();
    }
}
