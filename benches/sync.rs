//! The sync benchmark: how fast pgtransit's online sync applies a backlog of changes, against
//! a native PostgreSQL logical replication subscription applying the same backlog, in the same
//! run, on the same local servers.
//!
//! ```sh
//! cargo bench --bench sync -- [--scale 10] [--backlog-transactions 100000] [--clients 4]
//!     [--runs 3]
//! cargo bench --bench sync -- --scale 1 --backlog-transactions 5000 --runs 1   # smoke run
//! ```
//!
//! It starts a source (`wal_level=logical`) and two targets with the same settings, fills the
//! source with `pgbench -i -s SCALE` and a `bench_marker` table, and gives both targets the
//! same starting point: target A with `pgtransit apply` of an online plan (stopped with SIGTERM
//! once it streams), target B with `pg_dump --schema-only` and a native subscription
//! (`copy_data = true`, disabled once its tables are synchronised). Then, for each run:
//!
//! 1. With both appliers stopped, `pgbench -n -c CLIENTS -t ...` (tpcb-like: 3 updates and 1
//!    insert per transaction) writes the backlog on the source, which both slots keep, and one
//!    last transaction inserts the run's marker row.
//! 2. Each applier in turn (alternating which goes first) is started and timed (wall clock)
//!    until its target has the whole backlog: pgtransit from the start of `pgtransit apply PLAN
//!    --auto-approve` (its start-up included), native from `ALTER SUBSCRIPTION ... ENABLE` (its
//!    worker's start-up included). "Whole backlog" is the marker row on the target and the
//!    target's replication origin past the marker's transaction's start; a kept-open connection
//!    asks every 20 ms. Then pgtransit is stopped with SIGTERM (it must say "Streaming
//!    stopped") and the subscription is disabled again.
//! 3. Every table of both targets is compared with the source (row count and two sums of row
//!    hashes); any difference aborts the benchmark.
//!
//! Alongside the times: the CPU seconds of the processes doing the work (pgtransit, its target
//! session and its walsender; the native apply worker and its walsender), pgtransit's peak RSS
//! and start-up, and whether pgtransit's own counters (`sync.applied` in its state file) agree
//! with the backlog.
//!
//! It prints each run, the medians and the ratio pgtransit / native in changes per second, and
//! writes the results to `target/bench-sync.json` and every tool's output to
//! `target/bench-sync/`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgtransit::cluster::{ClusterOptions, LocalCluster};
use serde_json::{Value, json};

mod common;
use common::{
    DB, Log, R, Running, TempDir, clean_cmd, load_average, machine_json, mb, median, output_of,
    pg_error, pgbench_init, pgtransit_cmd, positive, print_machine, private_pgtransit,
    server_settings, settings_json, start_logged, sums, tail, target_dir, thousands, unix_time,
    user_tables, version_of, wait_for, write_results,
};

const USAGE: &str = "\
usage: cargo bench --bench sync -- [OPTIONS]

  --scale N                  pgbench scale of the source: N * 100,000 accounts (default 10)
  --backlog-transactions N   pgbench transactions in each run's backlog, 4 changes each
                             (3 updates, 1 insert), split across the clients (default 100,000)
  --clients N                pgbench clients writing the backlog (default 4)
  --runs N                   backlogs, each applied by both tools (default 3); medians are
                             reported
";

/// The migration's name: its slot and publication are `pgtransit_bench`.
const MIGRATION: &str = "bench";
/// pgtransit's slot on the source.
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
/// Changes per pgbench tpcb-like transaction: `UPDATE pgbench_accounts`, `UPDATE
/// pgbench_tellers`, `UPDATE pgbench_branches`, `INSERT INTO pgbench_history`.
const CHANGES_PER_TXN: u64 = 4;

fn main() -> ExitCode {
    common::main(parse_args, run)
}

// ---------------------------------------------------------------------------------------------
// Options
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

#[derive(Debug)]
struct Opts {
    scale: u32,
    transactions: u64,
    clients: u64,
    runs: usize,
}

fn parse_args() -> R<Opts> {
    let mut opts = Opts { scale: 10, transactions: 100_000, clients: 4, runs: 3 };
    common::each_option(USAGE, |key, value| {
        match key {
            "--scale" => opts.scale = positive(&value()?, key)?,
            "--backlog-transactions" => opts.transactions = positive(&value()?, key)?,
            "--clients" => opts.clients = positive(&value()?, key)?,
            "--runs" => opts.runs = positive(&value()?, key)?,
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
// Small helpers (those shared with the other benchmarks are in benches/common)
// ---------------------------------------------------------------------------------------------

/// CPU seconds (user + system) and `VmHWM` (kB) of a process, from /proc. Every server process
/// of the clusters is readable: the benchmark runs as their user or as root.
fn proc_sample(pid: u32) -> Option<(f64, Option<u64>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..." where comm may hold spaces: fields 14 and 15 (utime, stime, in
    // clock ticks of USER_HZ = 100) are the 12th and 13th after the closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hwm = fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    });
    Some((ticks as f64 / 100.0, hwm))
}

fn cpu_of(pid: Option<u32>) -> Option<f64> {
    pid.and_then(proc_sample).map(|s| s.0)
}

/// A kept-open connection for the polls and small statements of the measurements: a psql
/// process per poll (fork, connect, backend start) would cost the 2-core machine more CPU than
/// the poll's query, and blur the timings.
struct Probe {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    name: String,
}

impl Probe {
    fn connect(c: &LocalCluster, name: &str) -> R<Probe> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let conninfo = format!("{} application_name=bench-probe", c.conninfo(DB));
        let (client, connection) = rt
            .block_on(tokio_postgres::connect(&conninfo, tokio_postgres::NoTls))
            .map_err(|e| format!("connecting to {name}: {}", pg_error(&e)))?;
        // A current-thread runtime: the connection makes progress inside `block_on` calls.
        rt.spawn(async move {
            let _ = connection.await;
        });
        Ok(Probe { rt, client, name: name.to_string() })
    }

    /// The first column of the first row `sql` returns (None for no row or NULL).
    fn value(&self, sql: &str) -> R<Option<String>> {
        let messages = self
            .rt
            .block_on(self.client.simple_query(sql))
            .map_err(|e| format!("{} on {}: {}", sql.trim(), self.name, pg_error(&e)))?;
        Ok(messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).map(str::to_string))
                }
                _ => None,
            })
            .flatten())
    }

    fn pid(&self, sql: &str) -> R<Option<u32>> {
        Ok(self.value(sql)?.and_then(|v| v.parse().ok()))
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// One run's backlog, as written on the source.
#[derive(Clone, Debug)]
struct Backlog {
    /// pgbench transactions committed, plus the marker's.
    transactions: u64,
    /// Row changes: 4 per pgbench transaction, plus the marker's insert.
    changes: u64,
    /// Source WAL written for it.
    wal_bytes: u64,
    /// How long pgbench took, and its rate.
    seconds: f64,
    tps: f64,
    /// The source's WAL insert position just before the marker's transaction.
    before_marker: String,
}

/// CPU seconds spent during one measurement, by process.
#[derive(Clone, Debug, Default)]
struct Cpu {
    /// pgtransit's process, or the native apply worker (which is also its target backend).
    applier: Option<f64>,
    /// pgtransit's session on the target (the backend that runs its statements).
    target_backend: Option<f64>,
    /// The walsender decoding the slot on the source.
    walsender: Option<f64>,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.applier.unwrap_or(0.0)
            + self.target_backend.unwrap_or(0.0)
            + self.walsender.unwrap_or(0.0)
    }

    fn summary(&self, tool: Tool) -> String {
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1}"));
        match tool {
            Tool::Pgtransit => format!(
                "CPU s: pgtransit {} + target backend {} + source walsender {}",
                f(self.applier),
                f(self.target_backend),
                f(self.walsender)
            ),
            Tool::Native => format!(
                "CPU s: apply worker {} + source walsender {}",
                f(self.applier),
                f(self.walsender)
            ),
        }
    }

    fn json(&self) -> Value {
        json!({
            "applier_s": self.applier,
            "target_backend_s": self.target_backend,
            "walsender_s": self.walsender,
        })
    }
}

/// One timed application of a backlog.
#[derive(Clone, Debug)]
struct Measurement {
    /// Start of the applier to the whole backlog on the target.
    seconds: f64,
    /// pgtransit: start to its "Sync (change streaming)" heading (plan, checks, connections).
    startup: Option<f64>,
    /// pgtransit: tables it copied again before streaming (none expected).
    recopied: Vec<String>,
    cpu: Cpu,
    /// pgtransit: its peak RSS (kB).
    rss_kb: Option<u64>,
    /// pgtransit: what it counted as applied in this run (`sync.applied` difference).
    counted: Option<Value>,
}

/// One tool's results over the runs.
#[derive(Default)]
struct ToolResults {
    seconds: Vec<f64>,
    changes_per_s: Vec<f64>,
    measurements: Vec<Measurement>,
}

impl ToolResults {
    fn median_s(&self) -> Option<f64> {
        median(&self.seconds)
    }

    fn median_rate(&self) -> Option<f64> {
        median(&self.changes_per_s)
    }
}

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
}

fn run(opts: Opts) -> R<bool> {
    let started = Instant::now();
    let target = target_dir();
    let logs = target.join("bench-sync");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let work = TempDir::new("bench-sync")?;

    println!("pgtransit sync benchmark: applying a backlog, pgtransit vs native subscription");
    println!(
        "  scale {} ({} accounts), backlog {} transactions x {CHANGES_PER_TXN} changes from {} \
         clients, {} run(s)",
        opts.scale,
        thousands(u64::from(opts.scale) * 100_000),
        thousands(opts.transactions / opts.clients * opts.clients),
        opts.clients,
        opts.runs
    );
    print_machine();
    let pgtransit = private_pgtransit(&work.0)?;

    // Three clusters, same settings; the source decodes.
    let options = |name: &str, logical: bool| {
        let mut settings: Vec<(String, String)> =
            SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if logical {
            settings.push(("wal_level".into(), "logical".into()));
        }
        ClusterOptions { name: name.into(), settings, ..ClusterOptions::default() }
    };
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
    };
    let dataset = bench.setup()?;

    let mut results = [ToolResults::default(), ToolResults::default()];
    let mut backlogs: Vec<Backlog> = Vec::new();
    let mut aborted = None;
    for run in 1..=bench.opts.runs {
        println!("\nRun {run}/{} (load average {})", bench.opts.runs, load_average());
        let backlog = bench.backlog(run)?;
        println!(
            "  backlog: {} transactions, {} changes, {} of WAL, written by pgbench in {:.1} s \
             ({:.0} tps)",
            thousands(backlog.transactions),
            thousands(backlog.changes),
            mb(backlog.wal_bytes as f64),
            backlog.seconds,
            backlog.tps
        );
        // Alternate who goes first: the second one finds the backlog's WAL in the page cache,
        // and runs after the first one's checkpoint.
        let order = if run % 2 == 1 {
            [Tool::Pgtransit, Tool::Native]
        } else {
            [Tool::Native, Tool::Pgtransit]
        };
        for tool in order {
            bench.quiesce()?;
            let m = match tool {
                Tool::Pgtransit => bench.measure_pgtransit(run, &backlog)?,
                Tool::Native => bench.measure_native(run, &backlog)?,
            };
            let rate = backlog.changes as f64 / m.seconds;
            let mut line = format!(
                "  {:<26} {:>8.2} s  {:>9.0} changes/s   {}",
                tool.label(),
                m.seconds,
                rate,
                m.cpu.summary(tool)
            );
            if let Some(s) = m.startup {
                line.push_str(&format!(", start-up {s:.2} s"));
            }
            if let Some(kb) = m.rss_kb {
                line.push_str(&format!(", peak RSS {}", mb(kb as f64 * 1024.0)));
            }
            println!("{line}");
            if !m.recopied.is_empty() {
                println!(
                    "    !!!!! pgtransit copied again, before streaming: {} (so part of this \
                     backlog arrived by COPY, not as changes)",
                    m.recopied.join(", ")
                );
            }
            if let Some(c) = &m.counted {
                let expected = json!({
                    "inserts": backlog.transactions,
                    "updates": (backlog.transactions - 1) * 3,
                    "deletes": 0,
                    "truncates": 0,
                    "transactions": backlog.transactions,
                });
                if *c != expected {
                    println!(
                        "    pgtransit counted {c} applied, expected {expected} (its counters \
                         disagree with the backlog)"
                    );
                }
            }
            let r = &mut results[tool as usize];
            r.seconds.push(m.seconds);
            r.changes_per_s.push(rate);
            r.measurements.push(m);
        }
        match bench.verify() {
            Ok(()) => println!("  rows: both targets identical to the source (every table)"),
            Err(diff) => {
                let msg = format!("a target differs from the source after run {run}:\n{diff}");
                println!("\n!!!!! {msg}\n");
                aborted = Some(msg);
                backlogs.push(backlog);
                break;
            }
        }
        backlogs.push(backlog);
    }

    let ok = bench.report(&results, &backlogs, &dataset, &shown, aborted.as_deref(), &target);
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

    /// Fills the source and brings both targets to the same starting point. Returns the
    /// dataset description.
    fn setup(&mut self) -> R<Value> {
        let scale = self.opts.scale;
        println!("\nSetup");
        let t = Instant::now();
        for c in [&self.src, &self.tgt_a, &self.tgt_b] {
            c.create_database(DB).map_err(|e| e.to_string())?;
        }
        pgbench_init(&self.src, scale)?;
        // One row per run, inserted after its backlog (see `measure`). Both tables get a row
        // now, so that no table is empty on the targets: `pgtransit apply` copies again, when it
        // resumes, a table that is empty on the target although its copy is recorded as done
        // (planner.rs `copy_step`), which would replace streamed changes with a copy.
        Self::psql(
            &self.src,
            "CREATE TABLE bench_marker (run int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             INSERT INTO bench_marker (run) VALUES (0);
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now());
             VACUUM ANALYZE;",
        )?;
        println!(
            "  source: pgbench -i -s {scale} and bench_marker in {:.1} s",
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
        *self.native_enabled.lock().expect("lock") = Some(Instant::now());
        self.disable_native()?;
        println!(
            "  target B: pg_dump --schema-only, subscription {NATIVE} synchronised and disabled \
             in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        // Target A: pgtransit copies and starts streaming; stopped once caught up.
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
                let s = self.sync_state();
                Ok((s["streaming"] == true && s["lag_seconds"].as_f64() == Some(0.0)).then_some(()))
            },
        )?;
        self.stop_pgtransit(&mut running, &log_path)?;
        println!(
            "  target A: pgtransit apply (online) copied, streamed and was stopped in {:.1} s",
            t.elapsed().as_secs_f64()
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

    /// Writes one run's backlog on the source, with both appliers stopped.
    fn backlog(&self, run: usize) -> R<Backlog> {
        let lsn = || Self::psql(&self.src, "SELECT pg_current_wal_insert_lsn()");
        let before = lsn()?;
        let history = || -> R<u64> {
            Self::psql(&self.src, "SELECT count(*) FROM pgbench_history")?
                .parse()
                .map_err(|e| format!("count: {e}"))
        };
        let history_before = history()?;
        let per_client = self.opts.transactions / self.opts.clients;
        let threads = self
            .opts
            .clients
            .min(std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1));
        let log_path = self.logs.join(format!("run{run}-pgbench.log"));
        let t = Instant::now();
        let out = clean_cmd(self.src.bin("pgbench"))
            .args(["-n", "-c", &self.opts.clients.to_string(), "-j", &threads.to_string()])
            .args(["-t", &per_client.to_string(), "-h", self.src.host()])
            .args(["-p", &self.src.port().to_string(), "-U", "postgres", DB])
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
        let tps = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        // Every transaction inserted one history row: what the appliers receive is known.
        let inserted = history()? - history_before;
        if inserted != processed {
            return Err(format!(
                "pgbench reported {processed} transactions but pgbench_history grew by {inserted}"
            ));
        }
        // Every WAL record of the marker's transaction, its commit's included, ends after this.
        let before_marker = lsn()?;
        Self::psql(&self.src, &format!("INSERT INTO bench_marker (run) VALUES ({run})"))?;
        let wal_bytes: u64 = Self::psql(
            &self.src,
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{before}')::bigint"),
        )?
        .parse()
        .map_err(|e| format!("WAL size: {e}"))?;
        Ok(Backlog {
            transactions: processed + 1,
            changes: processed * CHANGES_PER_TXN + 1,
            wal_bytes,
            seconds,
            tps,
            before_marker,
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

    /// Whether the target has applied `run`'s whole backlog: its marker row is there, and the
    /// target's replication origin (which both appliers commit with every transaction they
    /// apply, in the source's commit order) has passed the position before the marker's
    /// transaction, which only the marker's commit lies beyond. The origin alone would do; the
    /// row guards the guard.
    fn done_query(run: usize, origin: &str, backlog: &Backlog) -> String {
        format!(
            "SELECT (SELECT count(*) FROM bench_marker WHERE run = {run}) = 1 \
                    AND coalesce(pg_replication_origin_progress('{origin}', false) \
                                 > '{}'::pg_lsn, false)",
            backlog.before_marker
        )
    }

    /// Starts pgtransit (it resumes streaming from its slot) and times it until the backlog is
    /// applied; then stops it with SIGTERM.
    fn measure_pgtransit(&self, run: usize, backlog: &Backlog) -> R<Measurement> {
        let probe_a = Probe::connect(&self.tgt_a, "target A")?;
        let probe_src = Probe::connect(&self.src, "source")?;
        let done = Self::done_query(run, PGTRANSIT_SLOT, backlog);
        if probe_a.value(&done)?.as_deref() != Some("f") {
            return Err(format!("target A has run {run}'s backlog before pgtransit started"));
        }
        let applied_before = self.sync_state()["applied"].clone();
        let log_path = self.logs.join(format!("run{run}-pgtransit.log"));
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
        // The processes' CPU so far (pgtransit's, its target session's, its walsender's): they
        // started with this run.
        let sample = proc_sample(pid);
        let backend = probe_a.pid(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgtransit/sync' \
             AND backend_type = 'client backend'",
        )?;
        let walsender = probe_src.pid(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{PGTRANSIT_SLOT}'"
        ))?;
        let cpu = Cpu {
            applier: sample.map(|s| s.0),
            target_backend: cpu_of(backend),
            walsender: cpu_of(walsender),
        };
        // Its counters reach the state file within a second of being applied.
        std::thread::sleep(Duration::from_millis(1500));
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
        Ok(Measurement {
            seconds,
            startup: lines.iter().find(|(_, l)| l.starts_with("Sync (")).map(|(t, _)| *t),
            recopied: recopied(&lines),
            cpu,
            rss_kb: sample.and_then(|s| s.1),
            counted: Some(Value::Object(counted)),
        })
    }

    /// Enables the subscription and times it until the backlog is applied; then disables it.
    fn measure_native(&self, run: usize, backlog: &Backlog) -> R<Measurement> {
        let probe_b = Probe::connect(&self.tgt_b, "target B")?;
        let probe_src = Probe::connect(&self.src, "source")?;
        let done = Self::done_query(run, &self.native_origin, backlog);
        if probe_b.value(&done)?.as_deref() != Some("f") {
            return Err(format!("target B has run {run}'s backlog before the subscription ran"));
        }
        // The launcher starts apply workers at most once per wal_retrieve_retry_interval (5 s by
        // default): wait that out, so a short run does not time the launcher's throttle.
        let interval: f64 = probe_b
            .value("SELECT extract(epoch FROM current_setting('wal_retrieve_retry_interval')::interval)")?
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
        let worker = probe_b.pid(&format!(
            "SELECT pid FROM pg_stat_subscription WHERE subname = '{NATIVE}' AND relid IS NULL"
        ))?;
        let walsender = probe_src.pid(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{NATIVE}'"
        ))?;
        let cpu =
            Cpu { applier: cpu_of(worker), target_backend: None, walsender: cpu_of(walsender) };
        self.disable_native()?;
        Ok(Measurement {
            seconds,
            startup: None,
            recopied: Vec::new(),
            cpu,
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
        results: &[ToolResults; 2],
        backlogs: &[Backlog],
        dataset: &Value,
        settings: &[(String, String)],
        aborted: Option<&str>,
        target: &Path,
    ) -> bool {
        let runs = self.opts.runs;
        let changes = backlogs.first().map_or(0, |b| b.changes);
        println!(
            "\nResults: scale {}, backlog of {} changes ({} transactions, {} of WAL) per run, \
             {} clients; wall-clock seconds from start to the whole backlog applied",
            self.opts.scale,
            thousands(changes),
            thousands(backlogs.first().map_or(0, |b| b.transactions)),
            mb(median(&backlogs.iter().map(|b| b.wal_bytes as f64).collect::<Vec<_>>())
                .unwrap_or(0.0)),
            self.opts.clients
        );
        let mut header = format!("  {:<26}", "tool");
        for r in 1..=runs {
            header.push_str(&format!(" {:>8}", format!("run {r}")));
        }
        header.push_str(&format!(" {:>8} {:>11} {:>12}", "median", "changes/s", "CPU s/run"));
        println!("{header}");
        for tool in [Tool::Pgtransit, Tool::Native] {
            let r = &results[tool as usize];
            let mut line = format!("  {:<26}", tool.label());
            for i in 0..runs {
                match r.seconds.get(i) {
                    Some(s) => line.push_str(&format!(" {s:>8.2}")),
                    None => line.push_str(&format!(" {:>8}", "-")),
                }
            }
            let cpu = median(&r.measurements.iter().map(|m| m.cpu.total()).collect::<Vec<_>>());
            line.push_str(&format!(
                " {:>8} {:>11} {:>12}",
                r.median_s().map_or("-".into(), |m| format!("{m:.2}")),
                r.median_rate().map_or("-".into(), |m| format!("{m:.0}")),
                cpu.map_or("-".into(), |c| format!("{c:.1}"))
            ));
            println!("{line}");
        }
        let (pgt, native) = (&results[0], &results[1]);
        // Same backlog, same machine, run by run: these ratios show how much of the spread is
        // noise.
        let pairwise: Vec<f64> =
            pgt.changes_per_s.iter().zip(&native.changes_per_s).map(|(p, n)| p / n).collect();
        let ratio = pgt.median_rate().zip(native.median_rate()).map(|(p, n)| p / n);
        if let Some(ratio) = ratio {
            println!(
                "\n  pgtransit / native, changes per second: {ratio:.2}x (medians); run by run: {}",
                pairwise.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
            );
            println!(
                "  {}",
                if ratio >= 1.0 {
                    format!("pgtransit applies the backlog {ratio:.2} times as fast as native")
                } else {
                    format!(
                        "native applies the backlog {:.2} times as fast as pgtransit",
                        1.0 / ratio
                    )
                }
            );
        }
        let startups: Vec<f64> = pgt.measurements.iter().filter_map(|m| m.startup).collect();
        if let Some(s) = median(&startups) {
            println!(
                "  pgtransit start-up (start to streaming: plan, checks, connections), median: \
                 {s:.2} s of its total"
            );
        }
        for tool in [Tool::Pgtransit, Tool::Native] {
            let r = &results[tool as usize];
            if let Some(m) = r.median_s()
                && let Some((i, _)) = r
                    .seconds
                    .iter()
                    .enumerate()
                    .min_by(|a, b| (a.1 - m).abs().total_cmp(&(b.1 - m).abs()))
            {
                let c = &r.measurements[i].cpu;
                println!(
                    "  {} median run (run {}): {}; {:.0} changes per CPU second",
                    tool.label(),
                    i + 1,
                    c.summary(tool),
                    changes as f64 / c.total().max(0.001)
                );
            }
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
        let tools: Vec<Value> = [Tool::Pgtransit, Tool::Native]
            .iter()
            .map(|&tool| {
                let r = &results[tool as usize];
                json!({
                    "tool": tool.key(),
                    "label": tool.label(),
                    "runs_s": r.seconds,
                    "changes_per_s": r.changes_per_s,
                    "median_s": r.median_s(),
                    "median_changes_per_s": r.median_rate(),
                    "startup_s": r.measurements.iter().map(|m| m.startup).collect::<Vec<_>>(),
                    "cpu": r.measurements.iter().map(|m| m.cpu.json()).collect::<Vec<_>>(),
                    "peak_rss_kb": r.measurements.iter().map(|m| m.rss_kb).collect::<Vec<_>>(),
                    "counted": r.measurements.iter().map(|m| m.counted.clone()).collect::<Vec<_>>(),
                    "recopied": r.measurements.iter().map(|m| m.recopied.clone()).collect::<Vec<_>>(),
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
            },
            "machine": machine_json(),
            "server_settings": settings_json(settings),
            "versions": {
                "pgtransit": version_of(&self.pgtransit),
                "pgbench": version_of(&self.src.bin("pgbench")),
            },
            "dataset": dataset,
            "backlogs": backlogs.iter().map(|b| json!({
                "transactions": b.transactions,
                "changes": b.changes,
                "wal_bytes": b.wal_bytes,
                "pgbench_s": b.seconds,
                "pgbench_tps": b.tps,
            })).collect::<Vec<_>>(),
            "tools": tools,
            "pgtransit_over_native_changes_per_s": ratio,
            "pgtransit_over_native_per_run": pairwise,
            "rows_identical": aborted.is_none(),
            "aborted": aborted,
        });
        let path = target.join("bench-sync.json");
        write_results(&path, &doc);
        aborted.is_none()
    }
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
