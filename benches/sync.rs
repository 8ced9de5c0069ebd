//! The sync benchmark: how fast pgtransit's online sync applies a backlog of changes, against
//! a native PostgreSQL logical replication subscription applying the same backlog, in the same
//! run, on the same local servers, for several kinds of workload.
//!
//! ```sh
//! cargo bench --bench sync -- [--scale 10] [--backlog-transactions 100000] [--clients 4]
//!     [--runs 3] [--workloads tpcb,uniform,wide]
//! cargo bench --bench sync -- --scale 1 --backlog-transactions 5000 --runs 1   # smoke run
//! ```
//!
//! It starts a source (`wal_level=logical`) and two targets with the same settings, fills the
//! source with `pgbench -i -s SCALE`, a `wide` table (20 columns of mixed types, `SCALE *
//! 10,000` rows) and a `bench_marker` table, and brings both targets to the same caught-up,
//! stopped state: target A by `pgtransit apply` of an online plan, target B by `pg_dump
//! --schema-only` and a native subscription (`copy_data = true`). Once both stream, a marker row
//! is inserted on the source and both must apply it (so both stream, and both are caught up);
//! then pgtransit is stopped with SIGTERM (a resumable state) and the subscription disabled.
//! `pgtransit status --format json` must then say `stopped` with every table `copied`: its next
//! `apply` only streams.
//!
//! Then, for each run and each workload:
//!
//! 1. With both appliers stopped, pgbench (`-c CLIENTS`, `--backlog-transactions` in all) writes
//!    the backlog on the source, which both slots keep, and one last transaction inserts a
//!    marker row. Workloads, 4 row changes per transaction each:
//!    - `tpcb`: pgbench's tpcb-like transaction (3 updates, of which two hit the few hot rows of
//!      `pgbench_branches` and `pgbench_tellers`, and 1 insert into `pgbench_history`);
//!    - `uniform`: 4 updates of `pgbench_accounts` rows drawn uniformly over the whole table
//!      (one in each quarter of its keys, in key order, so concurrent clients never deadlock);
//!    - `wide`: one `INSERT` of 4 rows into `wide`.
//! 2. Each applier in turn (which goes first alternates from one backlog to the next, and so
//!    from run to run for each workload) is started alone and timed (wall clock) until its
//!    target has the whole backlog: pgtransit from the start of `pgtransit apply PLAN
//!    --auto-approve` (its start-up included; its plan must copy nothing, and it must not report
//!    a copy), native from `ALTER SUBSCRIPTION ... ENABLE` (its worker's start-up included).
//!    "Whole backlog" is the marker row on the target and the target's replication origin past
//!    the position before the marker's transaction; a kept-open connection asks every 20 ms.
//!    Then pgtransit is stopped with SIGTERM (it must say "Streaming stopped") and the
//!    subscription is disabled again.
//! 3. Every table of both targets is compared with the source (row count and two sums of row
//!    hashes); any difference stops the benchmark, which then exits 1.
//!
//! CPU, read from `/proc/<pid>/stat` the moment the backlog is applied (each process started
//! with the measurement): pgtransit's process; the target server's backends doing the work
//! (pgtransit's sessions, found in `pg_stat_activity` by application name; the native apply
//! worker, from `pg_stat_subscription`); the source's walsender. pgtransit's peak memory is the
//! `VmHWM` of its process, read just before it is stopped.
//!
//! It prints each run, then per workload the median changes per second of both, the ratio
//! pgtransit / native (and run by run), CPU microseconds per change on each side and
//! pgtransit's peak RSS; it writes the results to `target/bench-sync.json` and every tool's
//! output to `target/bench-sync/`. It measures only: there are no thresholds. It exits 1 when a
//! target differs from the source or an applier fails.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgtransit::cluster::LocalCluster;
use serde_json::{Value, json};

mod common;
use common::{
    DB, Log, Probe, R, Running, TempDir, clean_cmd, load_average, machine_json, mb, median,
    output_of, pgbench_init, pgtransit_cmd, positive, print_machine, private_pgtransit,
    proc_cpu_seconds, proc_peak_rss_kb, procs_cpu_seconds, server_settings, settings_json,
    start_logged, sums, tail, target_dir, thousands, unix_time, user_tables, version_of, wait_for,
    write_results,
};

const USAGE: &str = "\
usage: cargo bench --bench sync -- [OPTIONS]

  --scale N                  pgbench scale of the source: N * 100,000 accounts, N * 10,000
                             rows of `wide` (default 10)
  --backlog-transactions N   transactions in each backlog, 4 row changes each, split across
                             the clients (default 100,000)
  --clients N                pgbench clients writing the backlog (default 4)
  --runs N                   backlogs of each workload, each applied by both (default 3);
                             medians are reported
  --workloads LIST           comma-separated, of tpcb, uniform, wide (default all three)
";

/// The migration's name: its slot, publication and replication origin are `pgtransit_bench`.
const MIGRATION: &str = "bench";
/// pgtransit's slot on the source, and its replication origin on target A.
const PGTRANSIT_SLOT: &str = "pgtransit_bench";
/// The native publication (source), subscription (target B) and its slot (source).
const NATIVE: &str = "bench_native";
/// Server settings of all three clusters (on top of the harness's fsync=off,
/// synchronous_commit=off, full_page_writes=off); the source adds `wal_level=logical`.
const SETTINGS: [(&str, &str); 4] = [
    ("shared_buffers", "512MB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    ("maintenance_work_mem", "256MB"),
];
/// Settings shown in the report (read back from the servers).
const SHOWN_SETTINGS: [&str; 11] = [
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "wal_level",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "autovacuum",
    "max_worker_processes",
    "max_logical_replication_workers",
    "server_version",
];
/// How often a target is asked whether the marker arrived (on a kept-open connection).
const POLL: Duration = Duration::from_millis(20);
/// The longest a measurement, an initial sync or a stop may take before the benchmark fails.
const LIMIT: Duration = Duration::from_secs(30 * 60);
/// Row changes per backlog transaction, in every workload.
const CHANGES_PER_TXN: u64 = 4;
/// Rows of `wide` per unit of scale.
const WIDE_ROWS_PER_SCALE: u64 = 10_000;

fn main() -> ExitCode {
    common::main(parse_args, run)
}

// ---------------------------------------------------------------------------------------------
// Options, appliers, workloads
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Pgtransit,
    Native,
}

impl Tool {
    fn key(self) -> &'static str {
        match self {
            Tool::Pgtransit => "pgtransit",
            Tool::Native => "native",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Pgtransit => "pgtransit apply (online)",
            Tool::Native => "native subscription",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Tpcb,
    Uniform,
    Wide,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Tpcb, Workload::Uniform, Workload::Wide];

    fn key(self) -> &'static str {
        match self {
            Workload::Tpcb => "tpcb",
            Workload::Uniform => "uniform",
            Workload::Wide => "wide",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Tpcb => {
                "pgbench tpcb-like: 3 updates (hot branches and tellers) + 1 insert per transaction"
            }
            Workload::Uniform => "4 updates per transaction, uniform over pgbench_accounts",
            Workload::Wide => "4 inserts per transaction into a 20-column table",
        }
    }

    /// The pgbench script (None: pgbench's built-in tpcb-like).
    fn script(self) -> Option<&'static str> {
        match self {
            Workload::Tpcb => None,
            // One key in each quarter of pgbench_accounts, in key order: every transaction
            // locks its rows in the same order, so concurrent clients never deadlock.
            Workload::Uniform => Some(
                "\\set a1 random(1, :quarter)\n\
                 \\set a2 :a1 + :quarter\n\
                 \\set a3 :a2 + :quarter\n\
                 \\set a4 :a3 + :quarter\n\
                 \\set delta random(-5000, 5000)\n\
                 BEGIN;\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a1;\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a2;\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a3;\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :a4;\n\
                 END;\n",
            ),
            Workload::Wide => None,
        }
    }

    /// What pgtransit should count applied for a backlog of `txns` transactions and the marker.
    fn expected(self, txns: u64) -> Value {
        let (inserts, updates) = match self {
            Workload::Tpcb => (txns + 1, 3 * txns),
            Workload::Uniform => (1, 4 * txns),
            Workload::Wide => (4 * txns + 1, 0),
        };
        json!({
            "inserts": inserts,
            "updates": updates,
            "deletes": 0,
            "truncates": 0,
            "transactions": txns + 1,
        })
    }
}

#[derive(Debug)]
struct Opts {
    scale: u32,
    transactions: u64,
    clients: u64,
    runs: usize,
    workloads: Vec<Workload>,
}

fn parse_args() -> R<Opts> {
    let mut opts = Opts {
        scale: 10,
        transactions: 100_000,
        clients: 4,
        runs: 3,
        workloads: Workload::ALL.to_vec(),
    };
    common::each_option(USAGE, |key, value| {
        match key {
            "--scale" => opts.scale = positive(&value()?, key)?,
            "--backlog-transactions" => opts.transactions = positive(&value()?, key)?,
            "--clients" => opts.clients = positive(&value()?, key)?,
            "--runs" => opts.runs = positive(&value()?, key)?,
            "--workloads" => {
                opts.workloads = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        Workload::ALL.into_iter().find(|k| k.key() == w).ok_or_else(|| {
                            format!("--workloads: unknown workload `{w}` (tpcb, uniform, wide)")
                        })
                    })
                    .collect::<R<_>>()?;
                if opts.workloads.is_empty() {
                    return Err("--workloads: name at least one workload".into());
                }
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.transactions < opts.clients {
        return Err(format!(
            "--backlog-transactions ({}) must be at least --clients ({})",
            opts.transactions, opts.clients
        ));
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// What is measured
// ---------------------------------------------------------------------------------------------

/// One backlog, as written on the source.
#[derive(Clone, Debug)]
struct Backlog {
    workload: Workload,
    /// The marker row ending it.
    marker: Marker,
    /// Transactions committed, the marker's included.
    transactions: u64,
    /// Row changes: 4 per pgbench transaction, plus the marker's insert.
    changes: u64,
    /// Source WAL written for it.
    wal_bytes: u64,
    /// How long pgbench took, and its rate.
    seconds: f64,
    tps: f64,
}

/// A marker row inserted on the source, alone in its transaction.
#[derive(Clone, Debug)]
struct Marker {
    mark: u64,
    /// The source's WAL insert position just before its transaction: every WAL record of the
    /// transaction, its commit's included, ends after it.
    before: String,
}

/// CPU seconds spent during one measurement, by side.
#[derive(Clone, Debug, Default)]
struct Cpu {
    /// pgtransit's process (None for native: its applier is the target backend).
    applier: Option<f64>,
    /// The target server's backends doing the work: pgtransit's sessions, or the native apply
    /// worker.
    target: Option<f64>,
    /// The walsender decoding the slot on the source.
    walsender: Option<f64>,
}

impl Cpu {
    fn summary(&self, tool: Tool) -> String {
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
        match tool {
            Tool::Pgtransit => format!(
                "CPU s: pgtransit {} + target sessions {} + source walsender {}",
                f(self.applier),
                f(self.target),
                f(self.walsender)
            ),
            Tool::Native => format!(
                "CPU s: apply worker {} + source walsender {}",
                f(self.target),
                f(self.walsender)
            ),
        }
    }

    fn json(&self) -> Value {
        json!({ "applier_s": self.applier, "target_s": self.target, "walsender_s": self.walsender })
    }
}

/// One timed application of a backlog.
#[derive(Clone, Debug)]
struct Measurement {
    /// Start of the applier to the whole backlog on the target.
    seconds: f64,
    changes_per_s: f64,
    /// Whether it went first on this backlog.
    first: bool,
    /// pgtransit: start to its "Sync (change streaming)" heading (plan, checks, connections).
    startup: Option<f64>,
    cpu: Cpu,
    changes: u64,
    /// pgtransit: its peak RSS (kB).
    rss_kb: Option<u64>,
    /// pgtransit: what it counted as applied in this run (`sync.applied` difference).
    counted: Option<Value>,
}

impl Measurement {
    /// CPU microseconds per change of one side.
    fn us_per_change(&self, side: impl Fn(&Cpu) -> Option<f64>) -> Option<f64> {
        side(&self.cpu).map(|s| s * 1e6 / self.changes.max(1) as f64)
    }
}

/// One applier's measurements of one workload over the runs.
#[derive(Default)]
struct ToolResults {
    measurements: Vec<Measurement>,
}

impl ToolResults {
    fn rates(&self) -> Vec<f64> {
        self.measurements.iter().map(|m| m.changes_per_s).collect()
    }

    fn median_rate(&self) -> Option<f64> {
        median(&self.rates())
    }

    fn median_s(&self) -> Option<f64> {
        median(&self.measurements.iter().map(|m| m.seconds).collect::<Vec<_>>())
    }

    /// Median over the runs of one side's CPU microseconds per change.
    fn median_us(&self, side: impl Fn(&Cpu) -> Option<f64> + Copy) -> Option<f64> {
        median(&self.measurements.iter().filter_map(|m| m.us_per_change(side)).collect::<Vec<_>>())
    }

    fn peak_rss_kb(&self) -> Option<u64> {
        self.measurements.iter().filter_map(|m| m.rss_kb).max()
    }
}

/// Everything measured of one workload.
struct WorkloadResults {
    workload: Workload,
    backlogs: Vec<Backlog>,
    /// pgtransit's, native's.
    tools: [ToolResults; 2],
}

impl WorkloadResults {
    fn ratio(&self) -> Option<f64> {
        self.tools[0].median_rate().zip(self.tools[1].median_rate()).map(|(p, n)| p / n)
    }

    /// Same backlog, same machine, run by run: these ratios show how much of the spread is
    /// noise.
    fn pairwise(&self) -> Vec<f64> {
        self.tools[0]
            .measurements
            .iter()
            .zip(&self.tools[1].measurements)
            .map(|(p, n)| p.changes_per_s / n.changes_per_s)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

struct Bench {
    opts: Opts,
    src: LocalCluster,
    /// Target A: pgtransit's.
    tgt_a: LocalCluster,
    /// Target B: the native subscription's.
    tgt_b: LocalCluster,
    work: PathBuf,
    logs: PathBuf,
    pgtransit: PathBuf,
    plan: PathBuf,
    /// Tables of the source, as `"schema"."name"`.
    tables: Vec<String>,
    /// The replication origin of the native subscription on target B (`pg_<oid>`).
    native_origin: String,
    /// When the subscription was last enabled (see `measure_native`).
    native_enabled: Mutex<Option<Instant>>,
    /// The last marker row inserted.
    mark: u64,
}

fn run(opts: Opts) -> R<bool> {
    let started = Instant::now();
    let target = target_dir();
    let logs = common::fresh_logs("bench-sync")?;
    let work = TempDir::new("bench-sync")?;

    println!("pgtransit sync benchmark: applying a backlog, pgtransit vs native subscription");
    println!(
        "  scale {} ({} accounts, {} wide rows); per backlog {} transactions x \
         {CHANGES_PER_TXN} changes from {} clients; workloads {}; {} run(s)",
        opts.scale,
        thousands(u64::from(opts.scale) * 100_000),
        thousands(u64::from(opts.scale) * WIDE_ROWS_PER_SCALE),
        thousands(opts.transactions / opts.clients * opts.clients),
        opts.clients,
        opts.workloads.iter().map(|w| w.key()).collect::<Vec<_>>().join(", "),
        opts.runs
    );
    print_machine();
    let pgtransit = private_pgtransit(&work.0)?;

    // Three clusters, same settings; the source decodes.
    let options = |name: &str, logical: bool| common::cluster_options(name, &SETTINGS, logical);
    let t = Instant::now();
    let (src, tgt_a, tgt_b) = std::thread::scope(|s| {
        let a = s.spawn(|| LocalCluster::start(options("sync-source", true)));
        let b = s.spawn(|| LocalCluster::start(options("sync-target-a", false)));
        let c = s.spawn(|| LocalCluster::start(options("sync-target-b", false)));
        let j = |h: std::thread::ScopedJoinHandle<'_, _>| h.join().expect("cluster thread");
        (j(a), j(b), j(c))
    });
    let e = |e: pgtransit::cluster::ClusterError| e.to_string();
    let (src, tgt_a, tgt_b) = (src.map_err(e)?, tgt_a.map_err(e)?, tgt_b.map_err(e)?);
    println!(
        "  clusters started in {:.1} s: source {}, target A (pgtransit) {}, target B (native) {}",
        t.elapsed().as_secs_f64(),
        src.url(DB),
        tgt_a.url(DB),
        tgt_b.url(DB)
    );
    let shown = server_settings(&src, &SHOWN_SETTINGS)?;
    println!(
        "  server settings (source; the targets differ only in wal_level): {}",
        shown.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    );

    let plan = work.0.join("plan.yaml");
    let mut bench = Bench {
        opts,
        src,
        tgt_a,
        tgt_b,
        work: work.0.clone(),
        logs,
        pgtransit,
        plan,
        tables: Vec::new(),
        native_origin: String::new(),
        native_enabled: Mutex::new(None),
        mark: 0,
    };
    let dataset = bench.setup()?;

    let mut results: Vec<WorkloadResults> = bench
        .opts
        .workloads
        .iter()
        .map(|&workload| WorkloadResults {
            workload,
            backlogs: Vec::new(),
            tools: [ToolResults::default(), ToolResults::default()],
        })
        .collect();
    let mut aborted = None;
    let mut backlog_no = 0usize;
    'runs: for run in 1..=bench.opts.runs {
        for wr in results.iter_mut() {
            let workload = wr.workload;
            println!(
                "\nRun {run}/{}, {} (load average {})",
                bench.opts.runs,
                workload.key(),
                load_average()
            );
            let backlog = bench.backlog(workload)?;
            println!(
                "  backlog: {} transactions, {} changes, {} of WAL, written by pgbench in {:.1} s \
                 ({:.0} tps)",
                thousands(backlog.transactions),
                thousands(backlog.changes),
                mb(backlog.wal_bytes as f64),
                backlog.seconds,
                backlog.tps
            );
            // Alternate who goes first, backlog by backlog (so, for each workload, run by run
            // when the number of workloads is odd): the second finds the backlog's WAL in the
            // page cache.
            let order = if backlog_no.is_multiple_of(2) {
                [Tool::Pgtransit, Tool::Native]
            } else {
                [Tool::Native, Tool::Pgtransit]
            };
            backlog_no += 1;
            for (i, tool) in order.into_iter().enumerate() {
                bench.quiesce()?;
                let mut m = match tool {
                    Tool::Pgtransit => bench.measure_pgtransit(&backlog)?,
                    Tool::Native => bench.measure_native(&backlog)?,
                };
                m.first = i == 0;
                let mut line = format!(
                    "  {:<26} {:>8.2} s  {:>9.0} changes/s   {}",
                    tool.label(),
                    m.seconds,
                    m.changes_per_s,
                    m.cpu.summary(tool)
                );
                if let Some(s) = m.startup {
                    line.push_str(&format!(", start-up {s:.2} s"));
                }
                if let Some(kb) = m.rss_kb {
                    line.push_str(&format!(", peak RSS {}", mb(kb as f64 * 1024.0)));
                }
                println!("{line}");
                if let Some(c) = &m.counted {
                    let expected = workload.expected(backlog.transactions - 1);
                    if *c != expected {
                        println!(
                            "    note: pgtransit counted {c} applied, the backlog holds {expected}"
                        );
                    }
                }
                wr.tools[tool as usize].measurements.push(m);
            }
            match bench.verify() {
                Ok(()) => println!("  rows: both targets identical to the source (every table)"),
                Err(diff) => {
                    let msg = format!(
                        "a target differs from the source after run {run} ({}):\n{diff}",
                        workload.key()
                    );
                    println!("\n!!!!! {msg}\n");
                    aborted = Some(msg);
                    wr.backlogs.push(backlog);
                    break 'runs;
                }
            }
            wr.backlogs.push(backlog);
        }
    }

    let ok = bench.report(&results, &dataset, &shown, aborted.as_deref(), &target);
    println!(
        "\nTotal benchmark time {:.0} s. Logs: {}",
        started.elapsed().as_secs_f64(),
        bench.logs.display()
    );
    // Clusters and the scratch directory go on drop.
    Ok(ok)
}

/// The `wide` table: a key and 19 columns of mixed types.
const WIDE_TABLE: &str = "CREATE TABLE wide (
    id bigserial PRIMARY KEY,
    c_int integer, c_bigint bigint, c_smallint smallint, c_numeric numeric(14, 2),
    c_float8 double precision, c_float4 real, c_bool boolean, c_text text,
    c_varchar varchar(64), c_char char(8), c_date date, c_timestamp timestamp,
    c_timestamptz timestamptz, c_interval interval, c_uuid uuid, c_jsonb jsonb, c_bytea bytea,
    c_int_array integer[], c_inet inet)";

/// `INSERT INTO wide` of `rows` rows of random values (about 400 bytes each).
fn wide_insert(rows: u64) -> String {
    let r = "random()";
    let md5 = "md5(random()::text)";
    format!(
        "INSERT INTO wide (c_int, c_bigint, c_smallint, c_numeric, c_float8, c_float4, c_bool, \
                           c_text, c_varchar, c_char, c_date, c_timestamp, c_timestamptz, \
                           c_interval, c_uuid, c_jsonb, c_bytea, c_int_array, c_inet)
         SELECT ({r} * 1e9)::int, ({r} * 1e15)::bigint, ({r} * 30000)::int::smallint,
                round(({r} * 1e9)::numeric, 2), {r} * 1e6, ({r} * 1e3)::real, {r} < 0.5,
                {md5} || {md5} || {md5}, left({md5}, 20 + ({r} * 12)::int), left({md5}, 8),
                date '2020-01-01' + ({r} * 1500)::int,
                timestamp '2020-01-01' + {r} * interval '1500 days',
                timestamptz '2024-01-01 00:00:00+00' - {r} * interval '1000 days',
                {r} * interval '30 days', {md5}::uuid,
                jsonb_build_object('k', {md5}, 'n', ({r} * 1000)::int,
                                   'tags', jsonb_build_array(left({md5}, 6), left({md5}, 6))),
                decode({md5} || {md5}, 'hex'),
                ARRAY[({r} * 100)::int, ({r} * 100)::int, ({r} * 100)::int],
                ('10.' || ({r} * 255)::int || '.' || ({r} * 255)::int || '.'
                       || ({r} * 255)::int)::inet
         FROM generate_series(1, {rows})"
    )
}

impl Bench {
    fn psql(c: &LocalCluster, sql: &str) -> R<String> {
        c.psql(DB, sql).map_err(|e| e.to_string())
    }

    fn state_file(&self) -> PathBuf {
        self.work.join(".pgtransit").join(MIGRATION).join("state.json")
    }

    /// `sync` of pgtransit's state file (Null before there is one).
    fn sync_state(&self) -> Value {
        fs::read_to_string(self.state_file())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|s| s["sync"].clone())
            .unwrap_or(Value::Null)
    }

    /// Fills the source and brings both targets to the same caught-up, stopped state. Returns
    /// the dataset description.
    fn setup(&mut self) -> R<Value> {
        let scale = self.opts.scale;
        println!("\nSetup");
        let t = Instant::now();
        for c in [&self.src, &self.tgt_a, &self.tgt_b] {
            c.create_database(DB).map_err(|e| e.to_string())?;
        }
        pgbench_init(&self.src, scale)?;
        // The marker rows end each backlog (see `backlog`); no table is empty when copied.
        Self::psql(
            &self.src,
            &format!(
                "{WIDE_TABLE};
                 {};
                 CREATE TABLE bench_marker (mark bigint PRIMARY KEY, workload text NOT NULL,
                                            at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO bench_marker (mark, workload) VALUES (0, 'copied');
                 INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
                 VALUES (1, 1, 1, 0, now());
                 VACUUM ANALYZE;",
                wide_insert(u64::from(scale) * WIDE_ROWS_PER_SCALE)
            ),
        )?;
        let wide_bytes = Self::psql(&self.src, "SELECT avg(pg_column_size(w))::int FROM wide w")?;
        println!(
            "  source: pgbench -i -s {scale}, wide ({} rows of ~{wide_bytes} B) and bench_marker \
             in {:.1} s",
            thousands(u64::from(scale) * WIDE_ROWS_PER_SCALE),
            t.elapsed().as_secs_f64()
        );
        self.tables = user_tables(&self.src)?;

        // Target B: the schema from pg_dump, the rows from the subscription's initial copy.
        let t = Instant::now();
        let mut dump = clean_cmd(self.src.bin("pg_dump"));
        dump.args(["--schema-only", "--no-publications", "--no-subscriptions"])
            .args(["-d", &self.src.conninfo(DB)]);
        Self::psql(&self.tgt_b, &output_of(&mut dump, "pg_dump --schema-only")?)?;
        Self::psql(&self.src, &format!("CREATE PUBLICATION {NATIVE} FOR ALL TABLES"))?;
        // Defaults otherwise (streaming off, binary off; the apply worker commits with
        // synchronous_commit=off): the native subscription as most people create it.
        Self::psql(
            &self.tgt_b,
            &format!(
                "CREATE SUBSCRIPTION {NATIVE} CONNECTION '{}' PUBLICATION {NATIVE} \
                 WITH (copy_data = true)",
                self.src.conninfo(DB)
            ),
        )?;
        self.native_origin = Self::psql(
            &self.tgt_b,
            &format!("SELECT 'pg_' || oid FROM pg_subscription WHERE subname = '{NATIVE}'"),
        )?;
        wait_for(
            "the native subscription's initial copy",
            LIMIT,
            Duration::from_millis(200),
            || {
                let pending = Self::psql(
                    &self.tgt_b,
                    "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
                )?;
                Ok((pending == "0").then_some(()))
            },
        )?;
        println!(
            "  target B: pg_dump --schema-only, subscription {NATIVE} synchronised in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        // Target A: pgtransit copies and streams.
        let t = Instant::now();
        let yaml = format!(
            "version: 1\nname: {MIGRATION}\nmode: online\nsource:\n  url: {}\ntarget:\n  url: {}\n\
             # pgbench_history has no key: pgtransit sets REPLICA IDENTITY FULL on it (it only\n\
             # receives inserts, which that does not change).\n\
             sync:\n  tables_without_key: replica_identity_full\n",
            self.src.url(DB),
            self.tgt_a.url(DB)
        );
        fs::write(&self.plan, &yaml)
            .map_err(|e| format!("writing {}: {e}", self.plan.display()))?;
        let log_path = self.logs.join("setup-pgtransit.log");
        let (mut running, _log) = self.start_pgtransit(&log_path)?;
        wait_for(
            "pgtransit's initial copy and streaming",
            LIMIT,
            Duration::from_millis(200),
            || {
                if let Ok(Some(status)) = running.child.try_wait() {
                    return Err(format!(
                        "pgtransit apply exited {status} before streaming:\n{}",
                        tail(&log_path, 30)
                    ));
                }
                Ok((self.sync_state()["streaming"] == true).then_some(()))
            },
        )?;
        // Both stream: one marker row, written after both copies, must reach both targets
        // through their streams. Then both are caught up, and both stop at the same point.
        let setup_mark = self.write_marker("setup")?;
        let probe_a = Probe::connect(&self.tgt_a, "target A")?;
        let probe_b = Probe::connect(&self.tgt_b, "target B")?;
        let done_a = Self::done_query(&setup_mark, PGTRANSIT_SLOT);
        let done_b = Self::done_query(&setup_mark, &self.native_origin);
        wait_for("both targets to stream the setup marker", LIMIT, POLL, || {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "pgtransit apply exited {status} while streaming:\n{}",
                    tail(&log_path, 30)
                ));
            }
            Ok((probe_a.value(&done_a)?.as_deref() == Some("t")
                && probe_b.value(&done_b)?.as_deref() == Some("t"))
            .then_some(()))
        })?;
        self.stop_pgtransit(&mut running, &log_path)?;
        *self.native_enabled.lock().expect("lock") = Some(Instant::now());
        self.disable_native()?;
        let status = self.check_pgtransit_stopped()?;
        println!(
            "  target A: pgtransit apply (online) copied, streamed and was stopped in {:.1} s; \
             status: {status}",
            t.elapsed().as_secs_f64()
        );
        println!(
            "  both caught up (setup marker streamed to both), then stopped: pgtransit by \
             SIGTERM, the subscription disabled"
        );

        self.verify()
            .map_err(|d| format!("the targets differ from the source after setup:\n{d}"))?;
        let size: u64 = Self::psql(&self.src, &format!("SELECT pg_database_size('{DB}')"))?
            .parse()
            .map_err(|e| format!("pg_database_size: {e}"))?;
        println!(
            "  both targets identical to the source: {} tables, {}",
            self.tables.len(),
            mb(size as f64)
        );
        Ok(json!({ "database_bytes": size, "tables": self.tables }))
    }

    /// `pgtransit status PLAN --format json` with pgtransit stopped: it must say `stopped`,
    /// with no error and every table `copied`, so that the next `apply` only streams. Returns
    /// a one-line summary.
    fn check_pgtransit_stopped(&self) -> R<String> {
        let mut cmd = pgtransit_cmd(&self.pgtransit, "status", &self.work);
        cmd.arg(&self.plan).args(["--format", "json"]);
        let out = output_of(&mut cmd, "pgtransit status --format json")?;
        let status: Value = serde_json::from_str(&out)
            .map_err(|e| format!("pgtransit status --format json: {e}:\n{out}"))?;
        let tables = status["tables"].as_array().cloned().unwrap_or_default();
        let not_copied: Vec<String> = tables
            .iter()
            .filter(|t| t["state"] != "copied")
            .map(|t| format!("{} {}", t["name"], t["state"]))
            .collect();
        if status["phase"] != "stopped"
            || !status["error"].is_null()
            || tables.is_empty()
            || !not_copied.is_empty()
        {
            return Err(format!(
                "pgtransit is not in a stopped, streaming state (phase {}, error {}, tables not \
                 copied: {not_copied:?}): its next apply would not only stream",
                status["phase"], status["error"]
            ));
        }
        Ok(format!(
            "phase {}, {} tables copied, applied up to {}",
            status["phase"],
            tables.len(),
            status["applied_lsn"]
        ))
    }

    /// Starts `pgtransit apply PLAN --auto-approve` in the background, its output in `log_path`.
    fn start_pgtransit(&self, log_path: &Path) -> R<(Running, Log)> {
        let mut cmd = pgtransit_cmd(&self.pgtransit, "apply", &self.work);
        cmd.arg(&self.plan).arg("--auto-approve");
        let what =
            format!("{} apply {} --auto-approve", self.pgtransit.display(), self.plan.display());
        start_logged(&mut cmd, &what, log_path)
    }

    /// SIGTERM; pgtransit must exit 0 with "Streaming stopped", and let go of its slot.
    fn stop_pgtransit(&self, running: &mut Running, log_path: &Path) -> R<()> {
        let status = running.terminate(Duration::from_secs(60))?;
        if !status.success()
            || !fs::read_to_string(log_path).unwrap_or_default().contains("Streaming stopped")
        {
            return Err(format!(
                "pgtransit apply exited {status} after SIGTERM, without `Streaming stopped`:\n{}",
                tail(log_path, 30)
            ));
        }
        self.wait_slot_inactive(PGTRANSIT_SLOT)
    }

    fn disable_native(&self) -> R<()> {
        Self::psql(&self.tgt_b, &format!("ALTER SUBSCRIPTION {NATIVE} DISABLE"))?;
        self.wait_slot_inactive(NATIVE)
    }

    fn wait_slot_inactive(&self, slot: &str) -> R<()> {
        let what = format!("slot {slot} to be released");
        wait_for(&what, Duration::from_secs(60), Duration::from_millis(50), || {
            let active = Self::psql(
                &self.src,
                &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            )?;
            match active.as_str() {
                "f" => Ok(Some(())),
                "t" => Ok(None),
                other => Err(format!("slot {slot} on the source: `{other}` (missing?)")),
            }
        })
    }

    /// Inserts the next marker row on the source, in a transaction of its own.
    fn write_marker(&mut self, workload: &str) -> R<Marker> {
        self.mark += 1;
        let before = Self::psql(&self.src, "SELECT pg_current_wal_insert_lsn()")?;
        Self::psql(
            &self.src,
            &format!(
                "INSERT INTO bench_marker (mark, workload) VALUES ({}, '{workload}')",
                self.mark
            ),
        )?;
        Ok(Marker { mark: self.mark, before })
    }

    fn count(&self, sql: &str) -> R<u64> {
        Self::psql(&self.src, sql)?.parse().map_err(|e| format!("{sql}: {e}"))
    }

    /// Writes one backlog of `workload` on the source, with both appliers stopped, then its
    /// marker row.
    fn backlog(&mut self, workload: Workload) -> R<Backlog> {
        let before = Self::psql(&self.src, "SELECT pg_current_wal_insert_lsn()")?;
        // Rows every transaction inserts: what the appliers receive is known.
        let inserted_rows = match workload {
            Workload::Tpcb => Some(("SELECT count(*) FROM pgbench_history", 1)),
            Workload::Wide => Some(("SELECT count(*) FROM wide", 4)),
            Workload::Uniform => None,
        };
        let rows_before = inserted_rows.map(|(sql, _)| self.count(sql)).transpose()?;
        let per_client = self.opts.transactions / self.opts.clients;
        let threads = self
            .opts
            .clients
            .min(std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1));
        let n = self.mark + 1;
        let log_path = self.logs.join(format!("backlog{n}-{}-pgbench.log", workload.key()));
        let mut cmd = clean_cmd(self.src.bin("pgbench"));
        cmd.args(["-n", "-c", &self.opts.clients.to_string(), "-j", &threads.to_string()])
            .args(["-t", &per_client.to_string(), "-h", self.src.host()])
            .args(["-p", &self.src.port().to_string(), "-U", "postgres"]);
        match workload {
            Workload::Tpcb => {}
            Workload::Uniform => {
                let script = self.work.join("uniform.sql");
                fs::write(&script, workload.script().unwrap_or_default())
                    .map_err(|e| format!("writing {}: {e}", script.display()))?;
                let quarter = u64::from(self.opts.scale) * 25_000;
                cmd.args(["-D", &format!("quarter={quarter}"), "-f"]).arg(&script);
            }
            Workload::Wide => {
                let script = self.work.join("wide.sql");
                fs::write(&script, wide_insert(4).replace('\n', " ") + ";\n")
                    .map_err(|e| format!("writing {}: {e}", script.display()))?;
                cmd.arg("-f").arg(&script);
            }
        }
        cmd.arg(DB);
        let t = Instant::now();
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run pgbench: {e}"))?;
        let seconds = t.elapsed().as_secs_f64();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(&log_path, &text).map_err(|e| format!("writing {}: {e}", log_path.display()))?;
        if !out.status.success() {
            return Err(format!("pgbench failed ({}):\n{}", out.status, tail(&log_path, 20)));
        }
        let processed = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no transaction count in pgbench's output:\n{text}"))?;
        if processed != per_client * self.opts.clients {
            return Err(format!(
                "pgbench processed {processed} transactions of {}:\n{}",
                per_client * self.opts.clients,
                tail(&log_path, 20)
            ));
        }
        let tps = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if let (Some((sql, per_txn)), Some(before)) = (inserted_rows, rows_before) {
            let inserted = self.count(sql)? - before;
            if inserted != processed * per_txn {
                return Err(format!(
                    "pgbench reported {processed} transactions, but `{sql}` grew by {inserted}"
                ));
            }
        }
        let marker = self.write_marker(workload.key())?;
        let wal_bytes: u64 = Self::psql(
            &self.src,
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{before}')::bigint"),
        )?
        .parse()
        .map_err(|e| format!("WAL size: {e}"))?;
        Ok(Backlog {
            workload,
            marker,
            transactions: processed + 1,
            changes: processed * CHANGES_PER_TXN + 1,
            wal_bytes,
            seconds,
            tps,
        })
    }

    /// Checkpoints all servers and flushes the OS write-back, so no measurement pays for the
    /// previous one's dirty pages (or the backlog's).
    fn quiesce(&self) -> R<()> {
        for c in [&self.src, &self.tgt_a, &self.tgt_b] {
            c.psql("postgres", "CHECKPOINT").map_err(|e| e.to_string())?;
        }
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// Whether the target has applied everything up to `marker`: the marker row is there, and
    /// the target's replication origin (which both appliers commit with every transaction they
    /// apply, in the source's commit order) has passed the position before the marker's
    /// transaction, which only the marker's commit lies beyond. The origin alone would do; the
    /// row guards the guard.
    fn done_query(marker: &Marker, origin: &str) -> String {
        format!(
            "SELECT (SELECT count(*) FROM bench_marker WHERE mark = {}) = 1 \
                    AND coalesce(pg_replication_origin_progress('{origin}', false) \
                                 > '{}'::pg_lsn, false)",
            marker.mark, marker.before
        )
    }

    /// Starts pgtransit (it resumes streaming from its slot) and times it until the backlog is
    /// applied; then stops it with SIGTERM. Fails if it copies anything.
    fn measure_pgtransit(&self, backlog: &Backlog) -> R<Measurement> {
        self.check_pgtransit_stopped()?;
        let probe_a = Probe::connect(&self.tgt_a, "target A")?;
        let probe_src = Probe::connect(&self.src, "source")?;
        let done = Self::done_query(&backlog.marker, PGTRANSIT_SLOT);
        if probe_a.value(&done)?.as_deref() != Some("f") {
            return Err("target A has the backlog before pgtransit started".into());
        }
        let applied_before = self.sync_state()["applied"].clone();
        let log_path = self.logs.join(format!(
            "backlog{}-{}-pgtransit.log",
            backlog.marker.mark,
            backlog.workload.key()
        ));
        let start = Instant::now();
        let (mut running, log) = self.start_pgtransit(&log_path)?;
        let pid = running.child.id();
        wait_for("pgtransit to apply the backlog", LIMIT, POLL, || {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "pgtransit apply exited {status} while applying the backlog:\n{}",
                    tail(&log_path, 30)
                ));
            }
            Ok((probe_a.value(&done)?.as_deref() == Some("t")).then_some(()))
        })?;
        let seconds = start.elapsed().as_secs_f64();
        // The processes' CPU so far: they all started with this measurement.
        let applier = proc_cpu_seconds(pid);
        let sessions = probe_a.pids(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgtransit%' \
             AND backend_type = 'client backend'",
        )?;
        let walsender = probe_src.pids(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{PGTRANSIT_SLOT}'"
        ))?;
        let cpu = Cpu {
            applier,
            target: procs_cpu_seconds(&sessions),
            walsender: procs_cpu_seconds(&walsender),
        };
        // Its counters reach the state file within a second of being applied.
        std::thread::sleep(Duration::from_millis(1500));
        let rss_kb = proc_peak_rss_kb(pid);
        self.stop_pgtransit(&mut running, &log_path)?;
        let applied_after = self.sync_state()["applied"].clone();
        let counted = ["inserts", "updates", "deletes", "truncates", "transactions"]
            .iter()
            .map(|k| {
                let n = |v: &Value| v[k].as_u64().unwrap_or(0);
                (k.to_string(), Value::from(n(&applied_after).saturating_sub(n(&applied_before))))
            })
            .collect::<serde_json::Map<String, Value>>();
        log.note(&format!(
            "backlog applied after {seconds:.3} s; {}",
            cpu.summary(Tool::Pgtransit)
        ));
        let lines = log.lines.lock().map(|l| l.clone()).unwrap_or_default();
        // It must only have streamed: its plan copies nothing, and it reports no copy.
        let planned = planned_copies(&lines);
        let copied = recopied(&lines);
        if planned != Some(0) || !copied.is_empty() {
            return Err(format!(
                "pgtransit did not only stream: its plan had {} to copy, and it copied {copied:?} \
                 (see {})",
                planned.map_or("an unknown number of tables".into(), |n| n.to_string()),
                log_path.display()
            ));
        }
        Ok(Measurement {
            seconds,
            changes_per_s: backlog.changes as f64 / seconds,
            first: false,
            startup: lines.iter().find(|(_, l)| l.starts_with("Sync (")).map(|(t, _)| *t),
            cpu,
            changes: backlog.changes,
            rss_kb,
            counted: Some(Value::Object(counted)),
        })
    }

    /// Enables the subscription and times it until the backlog is applied; then disables it.
    fn measure_native(&self, backlog: &Backlog) -> R<Measurement> {
        let probe_b = Probe::connect(&self.tgt_b, "target B")?;
        let probe_src = Probe::connect(&self.src, "source")?;
        let done = Self::done_query(&backlog.marker, &self.native_origin);
        if probe_b.value(&done)?.as_deref() != Some("f") {
            return Err("target B has the backlog before the subscription ran".into());
        }
        // The launcher starts apply workers at most once per wal_retrieve_retry_interval (5 s by
        // default): wait that out, so a short run does not time the launcher's throttle.
        let interval: f64 = probe_b
            .value(
                "SELECT extract(epoch FROM current_setting('wal_retrieve_retry_interval')::interval)",
            )?
            .and_then(|v| v.parse().ok())
            .unwrap_or(5.0);
        if let Some(last) = *self.native_enabled.lock().expect("lock") {
            let ready = Duration::from_secs_f64(interval + 0.5);
            std::thread::sleep(ready.saturating_sub(last.elapsed()));
        }
        let start = Instant::now();
        *self.native_enabled.lock().expect("lock") = Some(start);
        probe_b.value(&format!("ALTER SUBSCRIPTION {NATIVE} ENABLE"))?;
        wait_for("the native subscription to apply the backlog", LIMIT, POLL, || {
            Ok((probe_b.value(&done)?.as_deref() == Some("t")).then_some(()))
        })?;
        let seconds = start.elapsed().as_secs_f64();
        // The apply worker (and, from PostgreSQL 16, its parallel apply workers): on the
        // target, the backends that apply.
        let workers = probe_b.pids(&format!(
            "SELECT pid FROM pg_stat_subscription WHERE subname = '{NATIVE}' AND pid IS NOT NULL"
        ))?;
        let walsender = probe_src.pids(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{NATIVE}'"
        ))?;
        let cpu = Cpu {
            applier: None,
            target: procs_cpu_seconds(&workers),
            walsender: procs_cpu_seconds(&walsender),
        };
        self.disable_native()?;
        Ok(Measurement {
            seconds,
            changes_per_s: backlog.changes as f64 / seconds,
            first: false,
            startup: None,
            cpu,
            changes: backlog.changes,
            rss_kb: None,
            counted: None,
        })
    }

    /// Compares both targets with the source: per table, the row count and two sums of row
    /// hashes.
    fn verify(&self) -> Result<(), String> {
        let (s, a, b) = std::thread::scope(|scope| {
            let s = scope.spawn(|| sums(&self.src, &self.tables));
            let a = scope.spawn(|| sums(&self.tgt_a, &self.tables));
            let b = scope.spawn(|| sums(&self.tgt_b, &self.tables));
            let j = |h: std::thread::ScopedJoinHandle<'_, _>| h.join().expect("checksum thread");
            (j(s), j(a), j(b))
        });
        let (s, a, b) = (s?, a?, b?);
        let mut diffs = Vec::new();
        for (i, table) in self.tables.iter().enumerate() {
            if a[i] != s[i] {
                diffs.push(format!("  {table}: source {}, target A (pgtransit) {}", s[i], a[i]));
            }
            if b[i] != s[i] {
                diffs.push(format!("  {table}: source {}, target B (native) {}", s[i], b[i]));
            }
        }
        if diffs.is_empty() { Ok(()) } else { Err(diffs.join("\n")) }
    }

    // -----------------------------------------------------------------------------------------
    // The report
    // -----------------------------------------------------------------------------------------

    fn report(
        &self,
        results: &[WorkloadResults],
        dataset: &Value,
        settings: &[(String, String)],
        aborted: Option<&str>,
        target: &Path,
    ) -> bool {
        let f1 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let f0 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        println!(
            "\nResults: scale {}, {} clients; wall-clock seconds from the applier's start to the \
             whole backlog applied; CPU in microseconds per change",
            self.opts.scale, self.opts.clients
        );
        for wr in results {
            let Some(first) = wr.backlogs.first() else { continue };
            println!(
                "\n  {}: {}\n  backlog of {} changes ({} transactions, {} of WAL) per run",
                wr.workload.key(),
                wr.workload.label(),
                thousands(first.changes),
                thousands(first.transactions),
                mb(median(&wr.backlogs.iter().map(|b| b.wal_bytes as f64).collect::<Vec<_>>())
                    .unwrap_or(0.0)),
            );
            let mut header = format!("    {:<26}", "applier");
            for r in 1..=self.opts.runs {
                header.push_str(&format!(" {:>8}", format!("run {r}")));
            }
            header.push_str(&format!(" {:>8} {:>10}", "median", "changes/s"));
            println!("{header}");
            for tool in [Tool::Pgtransit, Tool::Native] {
                let r = &wr.tools[tool as usize];
                let mut line = format!("    {:<26}", tool.label());
                for i in 0..self.opts.runs {
                    match r.measurements.get(i) {
                        Some(m) => line.push_str(&format!(
                            " {:>8}",
                            format!("{:.2}{}", m.seconds, if m.first { "*" } else { "" })
                        )),
                        None => line.push_str(&format!(" {:>8}", "-")),
                    }
                }
                line.push_str(&format!(
                    " {:>8} {:>10}",
                    r.median_s().map_or("-".into(), |m| format!("{m:.2}")),
                    f0(r.median_rate())
                ));
                println!("{line}");
            }
            let (p, n) = (&wr.tools[0], &wr.tools[1]);
            if let Some(ratio) = wr.ratio() {
                println!(
                    "    pgtransit / native: {ratio:.2}x (medians; run by run {}); * went first",
                    wr.pairwise().iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
                );
            }
            println!(
                "    CPU us/change: pgtransit {} + its target sessions {} (+ walsender {}); \
                 native apply worker {} (+ walsender {}); pgtransit peak RSS {}",
                f1(p.median_us(|c| c.applier)),
                f1(p.median_us(|c| c.target)),
                f1(p.median_us(|c| c.walsender)),
                f1(n.median_us(|c| c.target)),
                f1(n.median_us(|c| c.walsender)),
                p.peak_rss_kb().map_or("-".into(), |kb| mb(kb as f64 * 1024.0))
            );
        }

        println!("\n  Summary (medians):");
        println!(
            "    {:<9} {:>11} {:>11} {:>7} {:>22} {:>14} {:>10}",
            "workload",
            "pgtransit/s",
            "native/s",
            "ratio",
            "pgtransit us/change",
            "native us/ch.",
            "peak RSS"
        );
        for wr in results {
            let (p, n) = (&wr.tools[0], &wr.tools[1]);
            println!(
                "    {:<9} {:>11} {:>11} {:>7} {:>22} {:>14} {:>10}",
                wr.workload.key(),
                f0(p.median_rate()),
                f0(n.median_rate()),
                wr.ratio().map_or("-".into(), |r| format!("{r:.2}x")),
                format!(
                    "{} + {} target",
                    f1(p.median_us(|c| c.applier)),
                    f1(p.median_us(|c| c.target))
                ),
                format!("{} target", f1(n.median_us(|c| c.target))),
                p.peak_rss_kb().map_or("-".into(), |kb| mb(kb as f64 * 1024.0))
            );
        }
        if let Some(why) = aborted {
            println!("\n  ABORTED: {why}");
        } else {
            println!(
                "\n  rows: after every run, both targets identical to the source (per table \
                 count(*), sum(hashtextextended(row)), sum(hashtext(row)))"
            );
        }

        // JSON.
        let workloads: Vec<Value> = results
            .iter()
            .map(|wr| {
                let tools: Vec<Value> = [Tool::Pgtransit, Tool::Native]
                    .iter()
                    .map(|&tool| {
                        let r = &wr.tools[tool as usize];
                        let ms = &r.measurements;
                        json!({
                            "tool": tool.key(),
                            "label": tool.label(),
                            "runs_s": ms.iter().map(|m| m.seconds).collect::<Vec<_>>(),
                            "went_first": ms.iter().map(|m| m.first).collect::<Vec<_>>(),
                            "changes_per_s": r.rates(),
                            "median_s": r.median_s(),
                            "median_changes_per_s": r.median_rate(),
                            "cpu": ms.iter().map(|m| m.cpu.json()).collect::<Vec<_>>(),
                            "median_cpu_us_per_change": {
                                "applier": r.median_us(|c| c.applier),
                                "target": r.median_us(|c| c.target),
                                "walsender": r.median_us(|c| c.walsender),
                            },
                            "startup_s": ms.iter().map(|m| m.startup).collect::<Vec<_>>(),
                            "peak_rss_kb": ms.iter().map(|m| m.rss_kb).collect::<Vec<_>>(),
                            "counted": ms.iter().map(|m| m.counted.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "workload": wr.workload.key(),
                    "label": wr.workload.label(),
                    "backlogs": wr.backlogs.iter().map(|b| json!({
                        "transactions": b.transactions,
                        "changes": b.changes,
                        "wal_bytes": b.wal_bytes,
                        "pgbench_s": b.seconds,
                        "pgbench_tps": b.tps,
                    })).collect::<Vec<_>>(),
                    "tools": tools,
                    "pgtransit_over_native_changes_per_s": wr.ratio(),
                    "pgtransit_over_native_per_run": wr.pairwise(),
                    "pgtransit_peak_rss_kb": wr.tools[0].peak_rss_kb(),
                })
            })
            .collect();
        let doc = json!({
            "benchmark": "sync",
            "unix_time": unix_time(),
            "options": {
                "scale": self.opts.scale,
                "backlog_transactions": self.opts.transactions,
                "clients": self.opts.clients,
                "runs": self.opts.runs,
                "workloads": self.opts.workloads.iter().map(|w| w.key()).collect::<Vec<_>>(),
            },
            "machine": machine_json(),
            "server_settings": settings_json(settings),
            "versions": {
                "pgtransit": version_of(&self.pgtransit),
                "pgbench": version_of(&self.src.bin("pgbench")),
            },
            "dataset": dataset,
            "workloads": workloads,
            "rows_identical": aborted.is_none(),
            "aborted": aborted,
        });
        let path = target.join("bench-sync.json");
        write_results(&path, &doc);
        aborted.is_none()
    }
}

/// The number of tables pgtransit's plan copies (`Plan: ... N to copy, ...`), if it printed
/// its plan.
fn planned_copies(lines: &[(f64, String)]) -> Option<u64> {
    lines.iter().find_map(|(_, l)| {
        let rest = l.strip_prefix("Plan: ")?;
        rest.split(", ")
            .find_map(|part| part.strip_suffix(" to copy"))
            .and_then(|n| n.trim().parse().ok())
    })
}

/// The tables (and large objects) pgtransit reported copied in a load phase (`Load (` heading
/// to the next heading) of a run that should only have resumed streaming. The load phase's
/// other steps are not copies: the publication is set to the tables in scope on every resume.
fn recopied(lines: &[(f64, String)]) -> Vec<String> {
    let mut in_load = false;
    let mut out = Vec::new();
    for (_, line) in lines {
        // Phase headings start the line; the execution plan printed before shows them indented.
        if !line.starts_with(' ') && line.contains(" (") {
            in_load = line.starts_with("Load (");
        } else if in_load
            && let Some(rest) = line.trim().strip_prefix("done ")
            && let Some(open) = rest.rfind(" (")
            && (rest.starts_with("table ") || rest.ends_with(" large objects"))
        {
            out.push(rest[..open].to_string());
        }
    }
    out
}
