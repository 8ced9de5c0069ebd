//! The cutover benchmark: how long `pgtransit cutover` keeps a large database from taking
//! writes (its write gap), under a steady writer, as pgtransit reports it and as the writer sees
//! it.
//!
//! ```sh
//! cargo bench --bench cutover -- [--scale 50] [--runs 1] [--tps 100] [--clients 2]
//! cargo bench --bench cutover -- --scale 1      # smoke run, about a minute once built
//! ```
//!
//! It starts a source (`wal_level=logical`) and a target cluster with the same settings, fills
//! the source with `pgbench -i -s SCALE` plus `docs` (`SCALE * 20,000` rows of ~500 bytes, jsonb
//! + bytea, primary key on `id`), then for each run:
//!
//! 1. writes an online migration plan (`cutover.mode: manual`: `pgtransit cutover` is the
//!    trigger) and starts `pgtransit apply` in the background (copy under the slot's snapshot,
//!    then streaming);
//! 2. starts a writer on the source: CLIENTS sessions, together about TPS transactions per second
//!    (pgbench's tpcb-like transaction, 3 updates and an insert, plus an update of one `docs`
//!    row), each commit stamped with the wall clock when COMMIT returned. A failed attempt
//!    (the fence ends its session, new sessions are read-only) is counted, and the writer keeps
//!    trying: it reconnects when its session is gone;
//! 3. waits until `pgtransit status --format json` says the stream is caught up (ready for
//!    cutover, lag under a second) and, when the status has a `verification` object with
//!    `passes` (continuous verification), until `verification.passes >= 1`; it prints how long
//!    that took, and which of the two it waited for;
//! 4. runs `pgtransit cutover PLAN --auto-approve` and records the write gap pgtransit reports
//!    (`cutover.write_gap_seconds` and `cutover.write_gap` in the status JSON) and the gap seen
//!    from outside: from the writer's last commit to the moment `pgtransit cutover` returned,
//!    split at the fence (`cutover.fenced_at`) and at the cutover's end (`finished_at`);
//! 5. checks that the cutover reported success (exit 0, `Cutover complete`, status `done`), that
//!    `apply` ended with it, and that every table of the target equals the source's (row count
//!    and two sums of row hashes).
//!
//! It prints each run and a results table (with medians over runs), writes the results to
//! `target/bench-cutover.json` and every tool's output to `target/bench-cutover/`, and exits
//! non-zero when a cutover failed or the target differs. Nothing here asserts on a time: the
//! limits below only keep a broken run from hanging.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgtransit::cluster::LocalCluster;
use serde_json::{Value, json};

mod common;
use common::{
    DB, R, TempDir, create_docs, human_bytes, load_average, machine_json, median, output_of,
    pg_error, pgbench_init, pgtransit_cmd, positive, print_machine, private_pgtransit,
    server_settings, settings_json, start_logged, sums, tail, target_dir, thousands, unix_time,
    user_tables, version_of, write_results,
};

const USAGE: &str = "\
usage: cargo bench --bench cutover -- [OPTIONS]

  --scale N     pgbench scale: N * 100,000 narrow rows plus N * 20,000 docs rows of ~500 bytes
                (default 50, about 1.2 GB; 1 is a smoke run)
  --runs N      migrations, each copied, streamed and cut over (default 1); medians are reported
  --tps N       the writer's transactions per second on the source, all clients together
                (default 100)
  --clients N   the writer's sessions (default 2)
  --reconnect-delay-ms N
                how long a writer session waits, once the fence ended it (or a connection
                attempt failed), before it connects again (default 100). With 0 it reconnects
                at its next transaction: see RECONNECT_DELAY_MS in benches/cutover.rs
";

/// The migration's name: its state is `.pgtransit/bench/` beside the plan.
const MIGRATION: &str = "bench";
/// Server settings of both clusters (on top of the harness's fsync=off,
/// synchronous_commit=off, full_page_writes=off), as the load benchmark's; the source adds
/// `wal_level=logical`.
const SETTINGS: [(&str, &str); 5] = [
    ("shared_buffers", "1GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    ("maintenance_work_mem", "512MB"),
    ("max_parallel_maintenance_workers", "2"),
];
/// Settings shown in the report (read back from the source).
const SHOWN_SETTINGS: [&str; 10] = [
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "wal_level",
    "wal_writer_delay",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "autovacuum",
    "server_version",
];
/// How long a writer session waits before connecting again after losing its session. The fence
/// ends every session of the database but pgtransit's and scans again until none is left, new
/// (read-only) ones included, and gives up after 15 s: a writer that reconnects at once (every
/// 20 ms here) keeps it from ever finding none, and the cutover fails (measured: `--scale 1
/// --reconnect-delay-ms 0`). A pool that waits a little between attempts lets it through.
const RECONNECT_DELAY_MS: u64 = 100;
/// How often `pgtransit status` is asked while waiting for the stream (and verification).
const STATUS_POLL: Duration = Duration::from_secs(1);
/// The longest the copy, catch-up and verification pass may take before the benchmark gives
/// up (not a measurement: a guard against a run that never gets there).
const LIMIT: Duration = Duration::from_secs(3 * 3600);
/// The longest `apply` may take to exit once the cutover is done.
const EXIT_LIMIT: Duration = Duration::from_secs(10 * 60);
/// The lag (status JSON `lag_seconds`) under which the stream counts as caught up. pgtransit
/// reports 0 once its last heartbeat came through; a heartbeat sent just before the report is
/// younger than this.
const CAUGHT_UP_LAG: f64 = 1.0;

fn main() -> ExitCode {
    common::main(parse_args, run)
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Opts {
    scale: u32,
    runs: usize,
    tps: u32,
    clients: u32,
    reconnect_delay_ms: u64,
}

fn parse_args() -> R<Opts> {
    let mut opts =
        Opts { scale: 50, runs: 1, tps: 100, clients: 2, reconnect_delay_ms: RECONNECT_DELAY_MS };
    common::each_option(USAGE, |key, value| {
        match key {
            "--scale" => opts.scale = positive(&value()?, key)?,
            "--runs" => opts.runs = positive(&value()?, key)?,
            "--tps" => opts.tps = positive(&value()?, key)?,
            "--clients" => opts.clients = positive(&value()?, key)?,
            "--reconnect-delay-ms" => {
                let v = value()?;
                opts.reconnect_delay_ms = v
                    .parse()
                    .map_err(|_| format!("{key}: `{v}` is not a number of milliseconds"))?
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
        Ok(())
    })?;
    Ok(opts)
}

/// Seconds since the Unix epoch, fractional: the clock of pgtransit's state (`now_f64`).
fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// What the writer did, every attempt stamped with the wall clock (Unix seconds).
#[derive(Clone, Debug, Default)]
struct WriterLog {
    /// When each committed transaction's COMMIT returned (per client in order, not sorted).
    commits: Vec<f64>,
    /// When each failed attempt (connection or transaction) failed.
    failures: Vec<f64>,
    /// Failure messages, counted.
    errors: BTreeMap<String, u64>,
    /// Sessions opened.
    connects: u64,
}

impl WriterLog {
    fn fail(&mut self, message: String) {
        self.failures.push(now_unix());
        *self.errors.entry(message).or_default() += 1;
    }
}

/// Sessions writing on the source at a steady rate, on a thread of their own, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When it started (Unix seconds).
    started: f64,
}

impl Writer {
    /// `clients` sessions on `conninfo`, each starting one transaction every `clients / tps`
    /// seconds (staggered; a tick missed while a transaction waits is skipped, not caught up).
    fn start(conninfo: &str, opts: &Opts) -> R<Writer> {
        let (scale, tps, clients) = (opts.scale, opts.tps, opts.clients);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let period = Duration::from_secs_f64(f64::from(clients) / f64::from(tps));
        let reconnect = Duration::from_millis(opts.reconnect_delay_ms);
        let conninfo =
            format!("{conninfo} application_name=bench-writer connect_timeout=5 keepalives=1");
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let loops = (0..clients).map(|i| {
                    let config = ClientConfig {
                        conninfo: conninfo.clone(),
                        scale,
                        period,
                        offset: period.mul_f64(f64::from(i) / f64::from(clients)),
                        reconnect,
                        seed: u64::from(i),
                    };
                    client_loop(config, &s, &l)
                });
                futures_util::future::join_all(loops).await;
            });
        });
        Ok(Writer { stop, log, thread: Some(thread), started: now_unix() })
    }

    fn snapshot(&self) -> WriterLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the sessions (after the transaction each is running) and returns the log.
    fn stop(mut self) -> WriterLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One session of the writer: a transaction per tick, on a session it opens again `reconnect`
/// after the last one is gone (the fence ends it) or a connection attempt failed.
async fn client_loop(c: ClientConfig, stop: &AtomicBool, log: &Mutex<WriterLog>) {
    use tokio::time::{Instant as TokioInstant, MissedTickBehavior, interval_at};
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c.seed + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut tick = interval_at(TokioInstant::now() + c.offset, c.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut retry_at: Option<TokioInstant> = None;
    loop {
        let now = tick.tick().await;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if client.as_ref().is_some_and(tokio_postgres::Client::is_closed) {
            client = None;
            retry_at = Some(now + c.reconnect);
        }
        if client.is_none() {
            if retry_at.is_some_and(|t| now < t) {
                continue;
            }
            match tokio_postgres::connect(&c.conninfo, tokio_postgres::NoTls).await {
                Ok((session, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client = Some(session);
                    log.lock().expect("writer log").connects += 1;
                }
                Err(e) => {
                    log.lock().expect("writer log").fail(format!("connect: {}", pg_error(&e)));
                    retry_at = Some(TokioInstant::now() + c.reconnect);
                    continue;
                }
            }
        }
        let Some(session) = &client else { continue };
        // One round trip: BEGIN ... COMMIT in one simple query, which returns once COMMIT did.
        let result = session.batch_execute(&rng.transaction(c.scale)).await;
        let failed = match result {
            Ok(()) => {
                log.lock().expect("writer log").commits.push(now_unix());
                false
            }
            Err(e) => {
                log.lock().expect("writer log").fail(pg_error(&e));
                true
            }
        };
        // A statement that failed left the transaction block open (aborted).
        if failed && !session.is_closed() {
            let _ = session.batch_execute("ROLLBACK").await;
        }
    }
}

/// One writer session's settings.
#[derive(Clone)]
struct ClientConfig {
    conninfo: String,
    scale: u32,
    /// Between transactions.
    period: Duration,
    /// Before the first.
    offset: Duration,
    /// After a lost session or a failed connection attempt, before the next attempt.
    reconnect: Duration,
    seed: u64,
}

/// A small xorshift generator: the writer's keys and amounts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `1..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % n.max(1) + 1
    }

    /// pgbench's tpcb-like transaction (3 updates, a select, an insert into the history), plus
    /// an update of one `docs` row's jsonb.
    fn transaction(&mut self, scale: u32) -> String {
        let scale = u64::from(scale);
        let (aid, tid, bid) = (self.upto(scale * 100_000), self.upto(scale * 10), self.upto(scale));
        let delta = self.upto(10_001) as i64 - 5_001;
        let doc = self.upto(scale * 20_000);
        format!(
            "BEGIN;
             UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};
             SELECT abalance FROM pgbench_accounts WHERE aid = {aid};
             UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};
             UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
               VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);
             UPDATE docs SET body = jsonb_set(body, '{{score}}', to_jsonb({delta})) \
               WHERE id = {doc};
             COMMIT;"
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The status JSON
// ---------------------------------------------------------------------------------------------

/// The stream's figures: the status JSON's `sync` object when it has one, else its top level
/// (`phase`, `ready_for_cutover`, `lag_seconds`, `lag_bytes`: see src/status.rs).
fn sync_view(st: &Value) -> &Value {
    match st.get("sync") {
        Some(s) if s.is_object() => s,
        _ => st,
    }
}

/// Whether the stream is caught up: ready for cutover (every table streaming, lag under
/// `sync.max_lag`) and its lag under [`CAUGHT_UP_LAG`]; and the lag.
fn caught_up(st: &Value) -> (bool, Option<f64>) {
    let s = sync_view(st);
    let ready = s.get("ready_for_cutover").or_else(|| st.get("ready_for_cutover"));
    let lag = s.get("lag_seconds").and_then(Value::as_f64);
    (ready == Some(&Value::Bool(true)) && lag.is_some_and(|l| l < CAUGHT_UP_LAG), lag)
}

/// `verification.passes`, when the status has continuous verification.
fn verification_passes(st: &Value) -> Option<u64> {
    st.get("verification")?.get("passes")?.as_u64()
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// How long the wait before the cutover took (seconds from the start of `apply`).
#[derive(Clone, Debug, Default)]
struct Waited {
    /// The `Sync (` heading: the copy and post-load done, streaming begins.
    streaming: Option<f64>,
    /// First caught up.
    caught_up: f64,
    /// The lag then.
    lag: Option<f64>,
    /// Whether the status had `verification.passes`.
    verification_present: bool,
    /// First seen `verification.passes >= 1`.
    verified: Option<f64>,
    /// `verification.passes` when the wait ended.
    passes: Option<u64>,
    /// The longest the stream stood still for a consistent point, its count, and the rows
    /// compared, when the wait ended.
    longest_pause: Option<f64>,
    rounds: Option<u64>,
    rows_compared: Option<u64>,
    /// Caught up and (when present) verified at once: the cutover starts.
    ready: f64,
}

/// The cutover as measured.
#[derive(Clone, Debug, Default)]
struct Cutover {
    /// `pgtransit cutover` exit 0, `Cutover complete` printed, status `done`.
    ok: bool,
    /// Why not.
    failure: Option<String>,
    /// Command start and return (Unix seconds).
    started: f64,
    returned: f64,
    /// The status JSON's `cutover` object.
    state: Value,
    /// The writer's log once the command returned.
    writer: WriterLog,
    /// `apply`'s exit once the cutover was done.
    apply_exit: String,
}

impl Cutover {
    fn at(&self, key: &str) -> Option<f64> {
        self.state.get(key).and_then(Value::as_f64)
    }

    fn reported_gap(&self) -> Option<f64> {
        self.at("write_gap_seconds")
    }

    fn gap_part(&self, key: &str) -> Option<f64> {
        self.state.get("write_gap")?.get(key)?.as_f64()
    }

    /// The writer's last commit before the fence went up (all of them, when it has no time).
    fn last_commit(&self) -> Option<f64> {
        let fenced = self.at("fenced_at").unwrap_or(f64::INFINITY);
        self.writer.commits.iter().copied().filter(|t| *t <= fenced).reduce(f64::max)
    }

    /// Commits stamped after the fence was up: none, unless the fence let one through (or the
    /// writer's thread was slow to stamp one that committed just before).
    fn commits_after_fence(&self) -> usize {
        let fenced = self.at("fenced_at").unwrap_or(f64::INFINITY);
        self.writer.commits.iter().filter(|t| **t > fenced).count()
    }

    /// From the last commit to the command's return, and its parts: last commit to fence up,
    /// fence up to the cutover's end (pgtransit's gap), end to the command's return.
    fn outside(&self) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
        let last = self.last_commit();
        let (fenced, finished) = (self.at("fenced_at"), self.at("finished_at"));
        (
            last.map(|l| self.returned - l),
            last.zip(fenced).map(|(l, f)| f - l),
            fenced.zip(finished).map(|(f, e)| e - f),
            finished.map(|e| self.returned - e),
        )
    }
}

/// One run's results.
#[derive(Clone, Debug, Default)]
struct RunResult {
    database_bytes: u64,
    /// Rows of every table of the source after the cutover.
    rows: u64,
    tables: usize,
    waited: Waited,
    cutover: Cutover,
    /// The writer's rate before the cutover.
    writer_tps: f64,
    /// Tables that differ (`table: source ..., target ...`).
    diffs: Vec<String>,
}

impl RunResult {
    fn ok(&self) -> bool {
        self.cutover.ok && self.diffs.is_empty()
    }
}

struct Bench {
    opts: Opts,
    src: LocalCluster,
    tgt: LocalCluster,
    work: PathBuf,
    logs: PathBuf,
    pgtransit: PathBuf,
}

fn run(opts: Opts) -> R<bool> {
    let started = Instant::now();
    let target = target_dir();
    let logs = common::fresh_logs("bench-cutover")?;
    let work = TempDir::new("bench-cutover")?;

    println!("pgtransit cutover benchmark: the write gap under a steady writer");
    println!(
        "  scale {} ({} narrow rows + {} docs rows), {} run(s), writer {} tps from {} sessions \
         (reconnecting {} ms after losing one)",
        opts.scale,
        thousands(u64::from(opts.scale) * 100_000),
        thousands(u64::from(opts.scale) * 20_000),
        opts.runs,
        opts.tps,
        opts.clients,
        opts.reconnect_delay_ms
    );
    print_machine();
    let pgtransit = private_pgtransit(&work.0)?;

    let options = |name: &str, logical: bool| common::cluster_options(name, &SETTINGS, logical);
    let (src, tgt) =
        common::start_pair(options("cutover-source", true), options("cutover-target", false))?;
    let shown = server_settings(&src, &SHOWN_SETTINGS)?;
    println!(
        "  server settings (source; the target differs only in wal_level): {}",
        shown.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    );

    let bench = Bench { opts, src, tgt, work: work.0.clone(), logs, pgtransit };
    let dataset = bench.build_source()?;
    let mut results = Vec::new();
    let mut failure = None;
    for run in 1..=bench.opts.runs {
        println!("\nRun {run}/{} (load average {})", bench.opts.runs, load_average());
        match bench.run_once(run) {
            Ok(r) => {
                let ok = r.ok();
                results.push(r);
                if !ok {
                    break;
                }
            }
            Err(e) => {
                println!("\n!!!!! run {run} failed: {e}");
                failure = Some(e);
                break;
            }
        }
    }
    let ok = bench.report(&results, &dataset, &shown, failure.as_deref(), &target);
    println!(
        "\nTotal benchmark time {:.0} s. Logs: {}",
        started.elapsed().as_secs_f64(),
        bench.logs.display()
    );
    // Clusters and the scratch directory go on drop.
    Ok(ok)
}

impl Bench {
    fn psql(c: &LocalCluster, sql: &str) -> R<String> {
        c.psql(DB, sql).map_err(|e| e.to_string())
    }

    fn database_bytes(&self) -> R<u64> {
        Self::psql(&self.src, &format!("SELECT pg_database_size('{DB}')"))?
            .parse()
            .map_err(|e| format!("pg_database_size: {e}"))
    }

    /// Fills the source: pgbench, docs, VACUUM ANALYZE. Returns the dataset description.
    fn build_source(&self) -> R<Value> {
        let scale = self.opts.scale;
        println!("\nDataset");
        let t = Instant::now();
        self.src.create_database(DB).map_err(|e| e.to_string())?;
        pgbench_init(&self.src, scale)?;
        println!("  pgbench -i -s {scale} -q: {:.1} s", t.elapsed().as_secs_f64());
        let docs = create_docs(&self.src, scale)?;
        let t = Instant::now();
        Self::psql(&self.src, "VACUUM ANALYZE")?;
        Self::psql(&self.src, "CHECKPOINT")?;
        println!("  VACUUM ANALYZE: {:.1} s", t.elapsed().as_secs_f64());
        let size = self.database_bytes()?;
        let tables = user_tables(&self.src)?;
        println!(
            "  source database `{DB}`: {} (pg_database_size), {} tables: {}",
            human_bytes(size),
            tables.len(),
            tables.join(", ")
        );
        Ok(json!({
            "database_bytes": size,
            "docs_rows": docs,
            "pgbench_accounts_rows": u64::from(scale) * 100_000,
            "tables": tables,
        }))
    }

    /// An empty target database and a writable source (an earlier run's fence lifted), both
    /// servers checkpointed and the OS write-back flushed.
    fn prepare(&self) -> R<()> {
        let e = |e: pgtransit::cluster::ClusterError| e.to_string();
        self.src
            .psql("postgres", &format!("ALTER DATABASE {DB} RESET default_transaction_read_only"))
            .map_err(e)?;
        self.tgt
            .psql("postgres", &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .map_err(e)?;
        self.tgt.create_database(DB).map_err(e)?;
        for c in [&self.src, &self.tgt] {
            c.psql("postgres", "CHECKPOINT").map_err(e)?;
        }
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// This run's migration plan, in a directory of its own (its state goes beside it).
    fn write_plan(&self, run: usize) -> R<(PathBuf, PathBuf)> {
        let dir = self.work.join(format!("run{run}"));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let plan = dir.join("plan.yaml");
        let yaml = format!(
            "version: 1\nname: {MIGRATION}\nmode: online\nsource:\n  url: {}\ntarget:\n  url: {}\n\
             # pgbench_history has no key: pgtransit sets REPLICA IDENTITY FULL on it (it only\n\
             # receives inserts, which that does not change).\n\
             sync:\n  tables_without_key: replica_identity_full\n\
             # `pgtransit cutover` is the trigger.\n\
             cutover:\n  mode: manual\n",
            self.src.url(DB),
            self.tgt.url(DB)
        );
        fs::write(&plan, &yaml).map_err(|e| format!("writing {}: {e}", plan.display()))?;
        Ok((dir, plan))
    }

    /// `pgtransit status PLAN --format json`.
    fn status(&self, dir: &Path, plan: &Path) -> R<Value> {
        let mut cmd = pgtransit_cmd(&self.pgtransit, "status", dir);
        cmd.arg(plan).args(["--format", "json"]);
        let out = output_of(&mut cmd, "pgtransit status")?;
        serde_json::from_str(&out).map_err(|e| format!("pgtransit status --format json: {e}"))
    }

    /// One migration: apply, writer, wait, cutover, checks.
    fn run_once(&self, run: usize) -> R<RunResult> {
        self.prepare()?;
        let database_bytes = self.database_bytes()?;
        let (dir, plan) = self.write_plan(run)?;
        let apply_log = self.logs.join(format!("run{run}-apply.log"));
        let mut cmd = pgtransit_cmd(&self.pgtransit, "apply", &dir);
        cmd.arg(&plan).arg("--auto-approve");
        let what = format!("{} apply {} --auto-approve", self.pgtransit.display(), plan.display());
        let (mut apply, log) = start_logged(&mut cmd, &what, &apply_log)?;
        let apply_started = Instant::now();
        let writer = Writer::start(&self.src.conninfo(DB), &self.opts)?;
        println!(
            "  pgtransit apply started (online: copy under the slot's snapshot, then streaming); \
             writer started: {} tps from {} sessions",
            self.opts.tps, self.opts.clients
        );
        let mut waited =
            self.wait_ready(&dir, &plan, &mut apply, &apply_log, apply_started, run)?;
        let lines = log.lines.lock().map(|l| l.clone()).unwrap_or_default();
        waited.streaming = lines.iter().find(|(_, l)| l.starts_with("Sync (")).map(|(t, _)| *t);
        print_waited(&waited);
        let before = writer.snapshot();
        let writer_tps = before.commits.len() as f64 / (now_unix() - writer.started).max(0.001);
        println!(
            "  writer so far: {} commits ({writer_tps:.1} tps), {} failed attempts; load average \
             {} as the cutover starts",
            thousands(before.commits.len() as u64),
            before.failures.len(),
            load_average()
        );

        let mut cutover = self.cut_over(run, &dir, &plan, &writer)?;
        // The writer goes on trying until the cutover's figures are in: its failures after the
        // fence are part of the record.
        let status = apply.wait(EXIT_LIMIT, "pgtransit apply to exit after the cutover")?;
        cutover.apply_exit = status.to_string();
        if !status.success() {
            cutover.ok = false;
            cutover.failure.get_or_insert(format!(
                "pgtransit apply exited {status} after the cutover:\n{}",
                tail(&apply_log, 20)
            ));
        }
        let final_log = writer.stop();
        cutover.writer.failures = final_log.failures;
        cutover.writer.errors = final_log.errors;
        cutover.writer.connects = final_log.connects;
        print_cutover(&cutover);

        let (tables, rows, diffs) = self.compare()?;
        if diffs.is_empty() {
            println!(
                "  rows: the target equals the source ({tables} tables, {} rows; per table \
                 count(*), sum(hashtextextended(row)), sum(hashtext(row)))",
                thousands(rows)
            );
        } else {
            println!("\n!!!!! the target differs from the source:\n{}\n", diffs.join("\n"));
        }
        Ok(RunResult { database_bytes, rows, tables, waited, cutover, writer_tps, diffs })
    }

    /// Polls `pgtransit status` until the stream is caught up and, when the status has
    /// continuous verification, a pass is complete.
    fn wait_ready(
        &self,
        dir: &Path,
        plan: &Path,
        apply: &mut common::Running,
        apply_log: &Path,
        started: Instant,
        run: usize,
    ) -> R<Waited> {
        let mut w = Waited::default();
        let mut caught_up_at = None;
        let mut phase = String::new();
        let mut last = Value::Null;
        let what = "the stream to catch up (and a verification pass)";
        common::wait_for(what, LIMIT, STATUS_POLL, || {
            if let Ok(Some(status)) = apply.child.try_wait() {
                return Err(format!(
                    "pgtransit apply exited {status} before the cutover:\n{}",
                    tail(apply_log, 30)
                ));
            }
            let st = self.status(dir, plan)?;
            let t = started.elapsed().as_secs_f64();
            let now_phase = st["phase"].as_str().unwrap_or("?").to_string();
            if now_phase != phase {
                println!("    {t:7.1} s  status: {now_phase}");
                phase = now_phase;
            }
            let (caught, lag) = caught_up(&st);
            if caught && caught_up_at.is_none() {
                caught_up_at = Some(t);
                w.lag = lag;
            }
            let passes = verification_passes(&st);
            w.verification_present |= passes.is_some();
            if passes.is_some_and(|p| p >= 1) && w.verified.is_none() {
                w.verified = Some(t);
            }
            w.passes = passes;
            w.longest_pause = st["verification"]["longest_pause"].as_f64();
            w.rounds = st["verification"]["rounds"].as_u64();
            w.rows_compared = st["verification"]["rows_compared"].as_u64();
            last = st;
            let verified = !w.verification_present || passes.is_some_and(|p| p >= 1);
            Ok((caught && verified).then_some(t))
        })
        .map(|ready| {
            w.ready = ready;
            w.caught_up = caught_up_at.unwrap_or(ready);
        })?;
        let path = self.logs.join(format!("run{run}-status-before.json"));
        let _ = fs::write(&path, serde_json::to_string_pretty(&last).unwrap_or_default());
        Ok(w)
    }

    /// `pgtransit cutover PLAN --auto-approve`, timed, and its result from the status.
    fn cut_over(&self, run: usize, dir: &Path, plan: &Path, writer: &Writer) -> R<Cutover> {
        let log_path = self.logs.join(format!("run{run}-cutover.log"));
        let mut cmd = pgtransit_cmd(&self.pgtransit, "cutover", dir);
        cmd.arg(plan).arg("--auto-approve");
        let what =
            format!("{} cutover {} --auto-approve", self.pgtransit.display(), plan.display());
        let started = now_unix();
        let (mut running, log) = start_logged(&mut cmd, &what, &log_path)?;
        let status = running.wait_blocking()?;
        let returned = now_unix();
        let commits = writer.snapshot();
        let said = log.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let complete = said.iter().find(|(_, l)| l.starts_with("Cutover complete:"));
        let st = self.status(dir, plan)?;
        let path = self.logs.join(format!("run{run}-status-after.json"));
        let _ = fs::write(&path, serde_json::to_string_pretty(&st).unwrap_or_default());
        let state = st.get("cutover").cloned().unwrap_or(Value::Null);
        let done = state.get("status").and_then(Value::as_str) == Some("done");
        let failure = if !status.success() {
            Some(format!("pgtransit cutover exited {status}:\n{}", tail(&log_path, 20)))
        } else if complete.is_none() {
            Some(format!(
                "pgtransit cutover did not say `Cutover complete`:\n{}",
                tail(&log_path, 20)
            ))
        } else if !done {
            Some(format!("the status says the cutover is {}, not done", state["status"]))
        } else {
            None
        };
        println!(
            "  pgtransit cutover returned after {:.2} s, {status}{}",
            returned - started,
            complete.map_or(String::new(), |(_, l)| format!(": {l}"))
        );
        Ok(Cutover {
            ok: failure.is_none(),
            failure,
            started,
            returned,
            state,
            writer: commits,
            apply_exit: String::new(),
        })
    }

    /// Every table of the target against the source: `(tables, source rows, differences)`.
    fn compare(&self) -> R<(usize, u64, Vec<String>)> {
        let tables = user_tables(&self.src)?;
        let (s, t) = std::thread::scope(|scope| {
            let s = scope.spawn(|| sums(&self.src, &tables));
            let t = scope.spawn(|| sums(&self.tgt, &tables));
            (s.join().expect("checksum thread"), t.join().expect("checksum thread"))
        });
        let (s, t) = (s?, t?);
        let rows = s.iter().filter_map(|l| l.split(' ').next()?.parse::<u64>().ok()).sum();
        let diffs = tables
            .iter()
            .zip(s.iter().zip(&t))
            .filter(|(_, (s, t))| s != t)
            .map(|(table, (s, t))| format!("  {table}: source count/hash/hash {s}, target {t}"))
            .collect();
        Ok((tables.len(), rows, diffs))
    }
}

fn print_waited(w: &Waited) {
    let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1} s"));
    println!(
        "  streaming after {}, caught up after {:.1} s (lag {})",
        f(w.streaming),
        w.caught_up,
        w.lag.map_or("?".into(), |l| format!("{l:.1} s"))
    );
    if w.verification_present {
        println!(
            "  continuous verification: first complete pass after {} ({} after caught up); \
             passes {} when the cutover began",
            f(w.verified),
            f(w.verified.map(|v| v - w.caught_up)),
            w.passes.unwrap_or(0)
        );
        println!(
            "  continuous verification: {} rows compared at {} consistent points; the stream \
             stood still at most {} ms for one",
            w.rows_compared.map_or("?".into(), thousands),
            w.rounds.map_or("?".into(), |r| r.to_string()),
            w.longest_pause.map_or("?".into(), |p| format!("{:.2}", p * 1000.0))
        );
    } else {
        println!(
            "  continuous verification: the status JSON has no `verification.passes` (not in this \
             build): not waited for"
        );
    }
    println!(
        "  wait before the cutover: {:.1} s from the start of apply (copy, catch-up{})",
        w.ready,
        if w.verification_present { ", a verification pass" } else { "" }
    );
}

fn print_cutover(c: &Cutover) {
    let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.3}"));
    let part = |k: &str| f(c.gap_part(k));
    println!(
        "  reported write gap {} s: drain {}, sequences {}, verification {}, clean-up {} (the \
         fence took {} to go up, just before)",
        f(c.reported_gap()),
        part("drain"),
        part("sequences"),
        part("verification"),
        part("clean_up"),
        part("fence")
    );
    let (total, to_fence, gap, to_return) = c.outside();
    println!(
        "  outside gap {} s (writer's last commit to `pgtransit cutover` returning): last commit \
         -> fence up {}, fence up -> cutover done {}, done -> command returned {}",
        f(total),
        f(to_fence),
        f(gap),
        f(to_return)
    );
    if let (Some(last), Some(req)) = (c.last_commit(), c.at("requested_at")) {
        println!(
            "    the writer's last commit: {:+.3} s from the start of the fencing \
             (`cutover.requested_at`), which came {:.3} s after the command started (the \
             running apply looks for the request once a second)",
            last - req,
            req - c.started
        );
    }
    let after = c.commits_after_fence();
    let first_failure = c
        .last_commit()
        .and_then(|l| c.writer.failures.iter().copied().filter(|t| *t > l).reduce(f64::min));
    println!(
        "  writer: {} commits, {} failed attempts ({} after its last commit, the first {} s after \
         it), {} sessions opened; commits stamped after the fence: {after}",
        thousands(c.writer.commits.len() as u64),
        c.writer.failures.len(),
        c.writer.failures.iter().filter(|t| c.last_commit().is_some_and(|l| **t > l)).count(),
        f(first_failure.zip(c.last_commit()).map(|(f, l)| f - l)),
        c.writer.connects
    );
    for (message, n) in &c.writer.errors {
        println!("    {n:>6} x {message}");
    }
    println!("  pgtransit apply ended after the cutover ({})", c.apply_exit);
    if let Some(why) = &c.failure {
        println!("\n!!!!! the cutover did not succeed: {why}\n");
    }
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// The rows of the results table: label and value per run.
fn table_rows(results: &[RunResult]) -> Vec<(&'static str, Vec<Option<f64>>)> {
    let per = |f: &dyn Fn(&RunResult) -> Option<f64>| results.iter().map(f).collect::<Vec<_>>();
    let outside = |r: &RunResult, i: usize| {
        let o = r.cutover.outside();
        [o.0, o.1, o.2, o.3][i]
    };
    vec![
        ("wait: apply start -> streaming (s)", per(&|r| r.waited.streaming)),
        ("wait: apply start -> caught up (s)", per(&|r| Some(r.waited.caught_up))),
        (
            "wait: caught up -> verification pass (s)",
            per(&|r| r.waited.verified.map(|v| v - r.waited.caught_up)),
        ),
        ("wait: apply start -> cutover (s)", per(&|r| Some(r.waited.ready))),
        (
            "stream stood still at most, for a proof (ms)",
            per(&|r| r.waited.longest_pause.map(|p| p * 1000.0)),
        ),
        ("reported write gap (s)", per(&|r| r.cutover.reported_gap())),
        ("  fence going up, just before (s)", per(&|r| r.cutover.gap_part("fence"))),
        ("  drain (s)", per(&|r| r.cutover.gap_part("drain"))),
        ("  sequences (s)", per(&|r| r.cutover.gap_part("sequences"))),
        ("  verification (s)", per(&|r| r.cutover.gap_part("verification"))),
        ("  clean-up (s)", per(&|r| r.cutover.gap_part("clean_up"))),
        ("outside gap (s)", per(&|r| outside(r, 0))),
        ("  last commit -> fence up (s)", per(&|r| outside(r, 1))),
        ("  fence up -> cutover done (s)", per(&|r| outside(r, 2))),
        ("  done -> cutover command returned (s)", per(&|r| outside(r, 3))),
        ("pgtransit cutover command (s)", per(&|r| Some(r.cutover.returned - r.cutover.started))),
        ("writer tps before the cutover", per(&|r| Some(r.writer_tps))),
    ]
}

impl Bench {
    fn report(
        &self,
        results: &[RunResult],
        dataset: &Value,
        settings: &[(String, String)],
        failure: Option<&str>,
        target: &Path,
    ) -> bool {
        let first = results.first();
        println!(
            "\nResults: scale {}, database {} (source, before the first run), {} rows in {} \
             tables (after the cutover), writer {} tps from {} sessions",
            self.opts.scale,
            human_bytes(first.map_or(0, |r| r.database_bytes)),
            thousands(first.map_or(0, |r| r.rows)),
            first.map_or(0, |r| r.tables),
            self.opts.tps,
            self.opts.clients
        );
        let verification = match first.map(|r| r.waited.verification_present) {
            Some(true) => "waited for a continuous-verification pass (status `verification`)",
            Some(false) => "no continuous verification in this build (not waited for)",
            None => "-",
        };
        println!("  {verification}");
        let mut header = format!("  {:<42}", "");
        for r in 1..=results.len() {
            header.push_str(&format!(" {:>9}", format!("run {r}")));
        }
        if results.len() > 1 {
            header.push_str(&format!(" {:>9}", "median"));
        }
        println!("{header}");
        let rows = table_rows(results);
        for (label, values) in &rows {
            let mut line = format!("  {label:<42}");
            for v in values {
                line.push_str(&format!(" {:>9}", v.map_or("-".into(), |v| format!("{v:.3}"))));
            }
            if results.len() > 1 {
                let present: Vec<f64> = values.iter().flatten().copied().collect();
                let m = median(&present);
                line.push_str(&format!(" {:>9}", m.map_or("-".into(), |v| format!("{v:.3}"))));
            }
            println!("{line}");
        }
        let all_ok = failure.is_none()
            && results.len() == self.opts.runs
            && results.iter().all(RunResult::ok);
        println!(
            "  cutover: {}; target equals source: {}",
            if results.iter().all(|r| r.cutover.ok) && !results.is_empty() {
                "succeeded in every run"
            } else {
                "FAILED"
            },
            if results.iter().all(|r| r.diffs.is_empty()) && !results.is_empty() {
                "yes, every run"
            } else {
                "NO"
            }
        );
        if let Some(why) = failure {
            println!("  ABORTED: {why}");
        }
        let doc = json!({
            "benchmark": "cutover",
            "unix_time": unix_time(),
            "options": {
                "scale": self.opts.scale,
                "runs": self.opts.runs,
                "tps": self.opts.tps,
                "clients": self.opts.clients,
                "reconnect_delay_ms": self.opts.reconnect_delay_ms,
            },
            "machine": machine_json(),
            "server_settings": settings_json(settings),
            "versions": { "pgtransit": version_of(&self.pgtransit) },
            "dataset": dataset,
            "table": rows.iter().map(|(label, values)| json!({
                "measure": label.trim(), "runs": values,
            })).collect::<Vec<_>>(),
            "runs": results.iter().map(run_json).collect::<Vec<_>>(),
            "ok": all_ok,
            "aborted": failure,
        });
        write_results(&target.join("bench-cutover.json"), &doc);
        all_ok
    }
}

fn run_json(r: &RunResult) -> Value {
    let c = &r.cutover;
    let (total, to_fence, gap, to_return) = c.outside();
    json!({
        "database_bytes": r.database_bytes,
        "rows": r.rows,
        "tables": r.tables,
        "wait": {
            "streaming_s": r.waited.streaming,
            "caught_up_s": r.waited.caught_up,
            "lag_s": r.waited.lag,
            "verification_present": r.waited.verification_present,
            "verified_s": r.waited.verified,
            "passes": r.waited.passes,
            "ready_s": r.waited.ready,
        },
        "cutover": {
            "ok": c.ok,
            "failure": c.failure,
            "command_s": c.returned - c.started,
            "reported": c.state,
            "outside_gap_s": total,
            "last_commit_to_fence_s": to_fence,
            "fence_to_done_s": gap,
            "done_to_returned_s": to_return,
            "apply_exit": c.apply_exit,
        },
        "writer": {
            "tps_before_cutover": r.writer_tps,
            "commits": c.writer.commits.len(),
            "failures": c.writer.failures.len(),
            "sessions_opened": c.writer.connects,
            "commits_after_fence": c.commits_after_fence(),
            "errors": c.writer.errors,
        },
        "differences": r.diffs,
    })
}
