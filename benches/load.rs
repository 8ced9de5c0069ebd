//! The load benchmark: pgtransit's offline `apply` against `pgcopydb clone`,
//! `pg_dump -Fc -Z0 | pg_restore` and the raw floor (a bare binary COPY pipe per table, no
//! indexes), in the same run, on the same two local servers.
//!
//! ```sh
//! cargo bench --bench load -- [--scale 50] [--runs 3] [--jobs 2]
//!     [--tools pgtransit,pgcopydb,pg_dump,copy] [--install-missing]
//! cargo bench --bench load -- --scale 1 --runs 1      # smoke run, about a minute
//! ```
//!
//! It starts a source and a target cluster with the same settings, fills the source with
//! `pgbench -i -s SCALE` plus a `docs` table of `SCALE * 20,000` rows of about 500 bytes
//! (jsonb + bytea), then for each run and each tool (interleaved: run 1 of every tool, then
//! run 2, ...) recreates an empty target database, times the tool (wall clock), and checks the
//! target's rows against the source's (count and two row-hash sums per table). It prints each
//! run, the medians, the ratios to pgcopydb and to the floor, pgtransit's peak RSS and a verdict,
//! and writes the results to `target/bench-load.json` and every tool's output to
//! `target/bench-load/`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgtransit::cluster::{ClusterOptions, LocalCluster};
use serde_json::{Value, json};

mod common;
use common::{
    DB, Log, R, TempDir, clean_cmd, create_docs, human_bytes, join_all, load_average, machine_json,
    mb, median, output_of, pgbench_init, pgtransit_cmd, positive, print_machine, private_pgtransit,
    server_settings, settings_json, spawn, sums, tail, target_dir, thousands, unix_time,
    version_of, write_results,
};

const USAGE: &str = "\
usage: cargo bench --bench load -- [OPTIONS]

  --scale N          pgbench scale: N * 100,000 narrow rows plus N * 20,000 docs rows of
                     ~500 bytes (default 50, about 1.3 GB; 1 is a one-minute smoke run)
  --runs N           timed runs of every tool (default 3); medians are reported
  --jobs N           parallelism given to every tool (default 2)
  --tools LIST       comma-separated, in run order (default pgtransit,pgcopydb,pg_dump,copy)
  --install-missing  as root, `apt-get install -y pgcopydb` when it is missing
";

/// Server settings of both clusters (on top of the harness's fsync=off,
/// synchronous_commit=off, full_page_writes=off).
const SETTINGS: [(&str, &str); 5] = [
    ("shared_buffers", "1GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    ("maintenance_work_mem", "512MB"),
    ("max_parallel_maintenance_workers", "2"),
];
/// Settings shown in the report (read back from the servers).
const SHOWN_SETTINGS: [&str; 14] = [
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "maintenance_work_mem",
    "max_parallel_maintenance_workers",
    "max_worker_processes",
    "work_mem",
    "wal_level",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "autovacuum",
    "max_connections",
    "server_version",
];
/// The targets of the issue.
const RATIO_TARGET: f64 = 0.9;
const RSS_TARGET_MB: f64 = 256.0;
/// How often pgtransit's peak RSS is sampled.
const RSS_POLL: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    common::main(parse_args, run)
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Pgtransit,
    Pgcopydb,
    PgDump,
    Copy,
}

impl Tool {
    fn key(self) -> &'static str {
        match self {
            Tool::Pgtransit => "pgtransit",
            Tool::Pgcopydb => "pgcopydb",
            Tool::PgDump => "pg_dump",
            Tool::Copy => "copy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Pgtransit => "pgtransit apply",
            Tool::Pgcopydb => "pgcopydb clone",
            Tool::PgDump => "pg_dump -Z0 | pg_restore",
            Tool::Copy => "raw COPY floor",
        }
    }

    fn parse(s: &str) -> Option<Tool> {
        match s.trim() {
            "pgtransit" => Some(Tool::Pgtransit),
            "pgcopydb" => Some(Tool::Pgcopydb),
            "pg_dump" | "pg_restore" | "pg_dump|pg_restore" => Some(Tool::PgDump),
            "copy" | "floor" | "raw" => Some(Tool::Copy),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Opts {
    scale: u32,
    runs: usize,
    jobs: usize,
    tools: Vec<Tool>,
    install_missing: bool,
}

fn parse_args() -> R<Opts> {
    let mut opts = Opts {
        scale: 50,
        runs: 3,
        jobs: 2,
        tools: vec![Tool::Pgtransit, Tool::Pgcopydb, Tool::PgDump, Tool::Copy],
        install_missing: false,
    };
    common::each_option(USAGE, |key, value| {
        match key {
            "--scale" => opts.scale = positive(&value()?, key)?,
            "--runs" => opts.runs = positive(&value()?, key)?,
            "--jobs" => opts.jobs = positive(&value()?, key)?,
            "--tools" => {
                let list = value()?;
                let mut tools = Vec::new();
                for name in list.split(',').filter(|s| !s.trim().is_empty()) {
                    let tool = Tool::parse(name).ok_or_else(|| {
                        format!(
                            "--tools: unknown tool `{name}` (known: pgtransit, pgcopydb, \
                             pg_dump, copy)\n\n{USAGE}"
                        )
                    })?;
                    if !tools.contains(&tool) {
                        tools.push(tool);
                    }
                }
                if tools.is_empty() {
                    return Err(format!("--tools: no tool given\n\n{USAGE}"));
                }
                opts.tools = tools;
            }
            "--install-missing" => opts.install_missing = true,
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
        Ok(())
    })?;
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// Small helpers (those shared with the other benchmarks are in benches/common)
// ---------------------------------------------------------------------------------------------

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs `first | second` (both with stdout and stderr piped), their other output pumped into
/// the log under their tags, and waits for both: (first's status, second's status).
fn pipe(
    log: &Log,
    (first, first_tag): (&mut Command, &'static str),
    (second, second_tag): (&mut Command, &'static str),
) -> R<(std::process::ExitStatus, std::process::ExitStatus)> {
    let mut a = spawn(first, first_tag)?;
    second.stdin(Stdio::from(a.stdout.take().expect("piped")));
    let mut b = match spawn(second, second_tag) {
        Ok(b) => b,
        Err(e) => {
            let _ = a.kill();
            let _ = a.wait();
            return Err(e);
        }
    };
    let pumps = vec![
        log.pump(a.stderr.take().expect("piped"), first_tag, false),
        log.pump(b.stdout.take().expect("piped"), second_tag, false),
        log.pump(b.stderr.take().expect("piped"), second_tag, false),
    ];
    let bs = b.wait().map_err(|e| format!("waiting for {second_tag}: {e}"))?;
    let as_ = a.wait().map_err(|e| format!("waiting for {first_tag}: {e}"))?;
    join_all(pumps);
    Ok((as_, bs))
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// pgtransit's time split by phase (from the moment each phase heading is printed).
#[derive(Clone, Debug, Default)]
struct Phases {
    /// Start to the load heading: planning (catalogs, checks) and the schema phase.
    plan_and_schema: Option<f64>,
    /// The load phase.
    load: Option<f64>,
    /// Post-load to exit: indexes, constraints, sequences, ANALYZE.
    post_load: Option<f64>,
    /// `(phase, object, seconds)` of every step pgtransit reported done.
    steps: Vec<(String, String, f64)>,
}

impl Phases {
    fn parse(lines: &[(f64, String)], total: f64) -> Phases {
        let mut p = Phases::default();
        let (mut t_load, mut t_post) = (None, None);
        let mut phase = String::from("?");
        for (t, line) in lines {
            // Phase headings start the line; the execution plan printed before shows the same
            // headings indented.
            let l = line.as_str();
            if l.starts_with("Schema (") {
                phase = "schema".into();
            } else if l.starts_with("Load (") {
                phase = "load".into();
                t_load.get_or_insert(*t);
            } else if l.starts_with("Post-load (") {
                phase = "post-load".into();
                t_post.get_or_insert(*t);
            } else if let Some(rest) = l.trim().strip_prefix("done ")
                && let Some(open) = rest.rfind(" (")
                && let Some(secs) =
                    rest[open + 2..].split(" s").next().and_then(|s| s.parse::<f64>().ok())
            {
                p.steps.push((phase.clone(), rest[..open].to_string(), secs));
            }
        }
        p.plan_and_schema = t_load;
        if let Some(l) = t_load {
            p.load = Some(t_post.unwrap_or(total) - l);
        }
        if let Some(pl) = t_post {
            p.post_load = Some(total - pl);
        }
        p
    }

    fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1} s"));
        format!(
            "plan+schema {}, load {}, post-load {}",
            f(self.plan_and_schema),
            f(self.load),
            f(self.post_load)
        )
    }

    fn json(&self) -> Value {
        json!({
            "plan_and_schema_s": self.plan_and_schema,
            "load_s": self.load,
            "post_load_s": self.post_load,
            "steps": self.steps.iter().map(|(phase, object, s)| json!({
                "phase": phase, "object": object, "seconds": s
            })).collect::<Vec<_>>(),
        })
    }
}

/// One tool's results over the runs.
struct ToolResults {
    tool: Tool,
    /// Seconds of each successful run, in run order.
    seconds: Vec<f64>,
    /// pgtransit: peak RSS (kB) of each run.
    rss_kb: Vec<u64>,
    /// pgtransit: CPU seconds (user + system) of each run.
    cpu_s: Vec<f64>,
    /// pgtransit: phases of each run.
    phases: Vec<Phases>,
    /// Logs of each run.
    logs: Vec<PathBuf>,
    /// Why the tool stopped being run.
    failure: Option<String>,
    /// Why it was never run.
    skipped: Option<String>,
}

impl ToolResults {
    fn median(&self) -> Option<f64> {
        if self.failure.is_some() { None } else { median(&self.seconds) }
    }
}

/// What one timed run produced.
struct RunOutcome {
    seconds: f64,
    rss_kb: Option<u64>,
    /// pgtransit: CPU seconds (user + system) of the process.
    cpu_s: Option<f64>,
    phases: Option<Phases>,
}

struct Bench {
    opts: Opts,
    src: LocalCluster,
    tgt: LocalCluster,
    work: PathBuf,
    logs: PathBuf,
    pgtransit: PathBuf,
    pgcopydb: Option<PathBuf>,
    /// Tables of the source, largest first, as `"schema"."name"`.
    tables: Vec<String>,
    /// Per table: `count sum(hashtextextended) sum(hashtext)` on the source.
    source_sums: Vec<String>,
    /// Index and constraint counts on the source.
    source_objects: String,
}

fn run(opts: Opts) -> R<bool> {
    let started = Instant::now();
    let target = target_dir();
    let logs = common::fresh_logs("bench-load")?;
    let work = TempDir::new("bench")?;

    println!("pgtransit load benchmark");
    println!(
        "  scale {} ({} narrow rows + {} docs rows), {} run(s), jobs {}, tools: {}",
        opts.scale,
        thousands(u64::from(opts.scale) * 100_000),
        thousands(u64::from(opts.scale) * 20_000),
        opts.runs,
        opts.jobs,
        opts.tools.iter().map(|t| t.key()).collect::<Vec<_>>().join(", ")
    );
    print_machine();
    let pgtransit = private_pgtransit(&work.0)?;

    // pgcopydb: found, installed on request, or skipped with instructions.
    let mut skipped: Vec<(Tool, String)> = Vec::new();
    let mut pgcopydb = None;
    if opts.tools.contains(&Tool::Pgcopydb) {
        match find_pgcopydb(opts.install_missing) {
            Ok(path) => {
                println!("  pgcopydb: {} ({})", path.display(), version_of(&path));
                pgcopydb = Some(path);
            }
            Err(why) => {
                println!("  SKIPPING pgcopydb: {why}");
                skipped.push((Tool::Pgcopydb, why));
            }
        }
    }

    // Two clusters, same settings.
    let settings: Vec<(String, String)> =
        SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = |name: &str| ClusterOptions {
        name: name.into(),
        settings: settings.clone(),
        ..ClusterOptions::default()
    };
    let (src, tgt) = common::start_pair(options("bench-source"), options("bench-target"))?;
    let shown = server_settings(&src, &SHOWN_SETTINGS)?;
    println!(
        "  server settings (both): {}",
        shown.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    );
    println!("  pg_dump: {}", version_of(&src.bin("pg_dump")));

    let mut bench = Bench {
        opts,
        src,
        tgt,
        work: work.0.clone(),
        logs,
        pgtransit,
        pgcopydb,
        tables: Vec::new(),
        source_sums: Vec::new(),
        source_objects: String::new(),
    };
    let dataset = bench.generate()?;

    let mut results: Vec<ToolResults> = bench
        .opts
        .tools
        .iter()
        .map(|&tool| ToolResults {
            tool,
            seconds: Vec::new(),
            rss_kb: Vec::new(),
            cpu_s: Vec::new(),
            phases: Vec::new(),
            logs: Vec::new(),
            failure: None,
            skipped: skipped.iter().find(|(t, _)| *t == tool).map(|(_, why)| why.clone()),
        })
        .collect();

    let mut rows_identical = true;
    let mut aborted = None;
    'runs: for run in 1..=bench.opts.runs {
        println!("\nRun {run}/{} (load average {})", bench.opts.runs, load_average());
        for res in results.iter_mut() {
            if res.skipped.is_some() || res.failure.is_some() {
                continue;
            }
            let tool = res.tool;
            let log_path = bench.logs.join(format!("run{run}-{}.log", tool.key()));
            res.logs.push(log_path.clone());
            let outcome =
                bench.prepare_target(tool).and_then(|()| bench.time(tool, run, &log_path));
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    println!("  {:<24} FAILED: {e}", tool.label());
                    res.failure = Some(e);
                    continue;
                }
            };
            let check = bench.verify(tool != Tool::Copy);
            let mut line = format!("  {:<24} {:>8.2} s", tool.label(), outcome.seconds);
            if let Some(kb) = outcome.rss_kb {
                line.push_str(&format!("   peak RSS {}", mb(kb as f64 * 1024.0)));
            }
            if let Some(cpu) = outcome.cpu_s {
                line.push_str(&format!(", CPU {cpu:.2} s"));
            }
            if let Some(p) = &outcome.phases {
                line.push_str(&format!("   ({})", p.summary()));
            }
            match &check {
                Ok(()) => line.push_str("   rows identical"),
                Err(_) => line.push_str("   ROWS DIFFER"),
            }
            println!("{line}");
            res.seconds.push(outcome.seconds);
            if let Some(kb) = outcome.rss_kb {
                res.rss_kb.push(kb);
            }
            if let Some(cpu) = outcome.cpu_s {
                res.cpu_s.push(cpu);
            }
            if let Some(p) = outcome.phases {
                res.phases.push(p);
            }
            if let Err(diff) = check {
                rows_identical = rows_identical && tool != Tool::Pgtransit;
                let msg =
                    format!("the target differs from the source after {}:\n{diff}", tool.label());
                println!("\n!!!!! {msg}\n");
                res.failure = Some(msg.clone());
                if tool == Tool::Pgtransit {
                    aborted = Some(msg);
                    break 'runs;
                }
            }
        }
    }

    let ok = bench.report(&results, &dataset, &shown, rows_identical, aborted.as_deref(), &target);
    println!(
        "\nTotal benchmark time {:.0} s. Logs: {}",
        started.elapsed().as_secs_f64(),
        bench.logs.display()
    );
    // Clusters and the scratch directory go on drop.
    Ok(ok)
}

/// pgcopydb on PATH; with `--install-missing` as root, installed with apt-get first.
fn find_pgcopydb(install: bool) -> Result<PathBuf, String> {
    if let Some(p) = find_on_path("pgcopydb") {
        return Ok(p);
    }
    let how = "install it with `apt-get install pgcopydb` (Debian/Ubuntu), or run this benchmark \
               as root with `--install-missing`";
    if !install {
        return Err(format!("pgcopydb is not installed: {how}"));
    }
    if !is_root() {
        return Err(format!("pgcopydb is not installed and --install-missing needs root: {how}"));
    }
    println!("  pgcopydb is missing: apt-get update && apt-get install -y pgcopydb ...");
    for args in [&["update"][..], &["install", "-y", "pgcopydb"][..]] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "apt-get {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    find_on_path("pgcopydb")
        .ok_or_else(|| "apt-get installed pgcopydb but it is not on PATH".into())
}

impl Bench {
    fn src_psql(&self, sql: &str) -> R<String> {
        self.src.psql(DB, sql).map_err(|e| e.to_string())
    }

    /// Fills the source: pgbench, docs, VACUUM ANALYZE. Returns the dataset description.
    fn generate(&mut self) -> R<Value> {
        let scale = self.opts.scale;
        println!("\nDataset");
        let t = Instant::now();
        self.src.create_database(DB).map_err(|e| e.to_string())?;
        pgbench_init(&self.src, scale)?;
        println!("  pgbench -i -s {scale} -q: {:.1} s", t.elapsed().as_secs_f64());

        create_docs(&self.src, scale)?;
        let t = Instant::now();
        self.src_psql("VACUUM ANALYZE")?;
        self.src_psql("CHECKPOINT")?;
        println!("  VACUUM ANALYZE: {:.1} s", t.elapsed().as_secs_f64());

        let size: u64 = self
            .src_psql(&format!("SELECT pg_database_size('{DB}')"))?
            .parse()
            .map_err(|e| format!("pg_database_size: {e}"))?;
        let listing = self.src_psql(
            "SELECT format('%I.%I', n.nspname, c.relname) || '|' || pg_table_size(c.oid) || '|' \
                    || pg_indexes_size(c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY pg_table_size(c.oid) DESC, 1",
        )?;
        let rows: Vec<(String, u64, u64)> = listing
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split('|').collect();
                let [name, data, index] = f[..] else { return None };
                Some((name.to_string(), data.parse().ok()?, index.parse().ok()?))
            })
            .collect();
        self.tables = rows.iter().map(|(name, _, _)| name.clone()).collect();
        let t = Instant::now();
        self.source_sums = sums(&self.src, &self.tables)?;
        self.source_objects = objects(&self.src)?;
        let checksums_s = t.elapsed().as_secs_f64();
        println!(
            "  source database `{DB}`: {} (pg_database_size, {size} bytes)",
            human_bytes(size)
        );
        let mut tables = Vec::new();
        for ((name, data, index), sums) in rows.iter().zip(&self.source_sums) {
            let count: u64 = sums.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0);
            println!(
                "    {name:<32} {:>12} rows  {:>10} data  {:>10} indexes",
                thousands(count),
                human_bytes(*data),
                human_bytes(*index)
            );
            tables.push(json!({
                "table": name, "rows": count, "table_bytes": data, "index_bytes": index
            }));
        }
        println!("  source checksums ({}) in {checksums_s:.1} s", self.source_objects);
        Ok(json!({ "database_bytes": size, "tables": tables }))
    }

    /// An empty target database, both servers checkpointed and the OS write-back flushed, so
    /// no run pays for the previous one. For the floor: the tables without indexes or keys.
    fn prepare_target(&self, tool: Tool) -> R<()> {
        let e = |e: pgtransit::cluster::ClusterError| e.to_string();
        self.tgt
            .psql("postgres", &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            .map_err(e)?;
        self.tgt.create_database(DB).map_err(e)?;
        if tool == Tool::Copy {
            let mut dump = clean_cmd(self.src.bin("pg_dump"));
            dump.args(["--schema-only", "--section=pre-data", "-d", &self.src.conninfo(DB)]);
            let schema = output_of(&mut dump, "pg_dump --section=pre-data")?;
            self.tgt.psql(DB, &schema).map_err(e)?;
        }
        self.src.psql("postgres", "CHECKPOINT").map_err(e)?;
        self.tgt.psql("postgres", "CHECKPOINT").map_err(e)?;
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// Times one run of `tool`.
    fn time(&self, tool: Tool, run: usize, log_path: &Path) -> R<RunOutcome> {
        match tool {
            Tool::Pgtransit => self.time_pgtransit(run, log_path),
            Tool::Pgcopydb => self.time_pgcopydb(run, log_path),
            Tool::PgDump => self.time_pg_dump(log_path),
            Tool::Copy => self.time_copy(log_path),
        }
    }

    fn time_pgtransit(&self, run: usize, log_path: &Path) -> R<RunOutcome> {
        let dir = self.work.join(format!("pgtransit-run{run}"));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let plan = dir.join("plan.yaml");
        let jobs = self.opts.jobs;
        let yaml = format!(
            "version: 1\nname: bench\nmode: offline\nsource:\n  url: {}\ntarget:\n  url: {}\n\
             load:\n  jobs: {jobs}\n",
            self.src.url(DB),
            self.tgt.url(DB)
        );
        fs::write(&plan, &yaml).map_err(|e| format!("writing {}: {e}", plan.display()))?;
        let mut cmd = pgtransit_cmd(&self.pgtransit, "apply", &dir);
        cmd.arg(&plan)
            .args(["--auto-approve", "--jobs", &jobs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let start = Instant::now();
        let log = Log::create(log_path, start)?;
        log.note(&format!(
            "{} apply {} --auto-approve --jobs {jobs}",
            self.pgtransit.display(),
            plan.display()
        ));
        let mut child = spawn(&mut cmd, "pgtransit")?;
        let pid = child.id();
        let pumps = vec![
            log.pump(child.stdout.take().expect("piped"), "out", true),
            log.pump(child.stderr.take().expect("piped"), "err", false),
        ];
        // Peak RSS: VmHWM, sampled until the process is reaped (the last value read wins; it
        // only grows).
        let done = Arc::new(AtomicBool::new(false));
        let poller = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut last = None;
                while !done.load(Ordering::SeqCst) {
                    if let Some(sample) = proc_sample(pid, "pgtransit") {
                        last = Some(sample);
                    }
                    std::thread::sleep(RSS_POLL);
                }
                last
            })
        };
        let status = child.wait().map_err(|e| format!("waiting for pgtransit: {e}"))?;
        let seconds = start.elapsed().as_secs_f64();
        done.store(true, Ordering::SeqCst);
        let sample = poller.join().expect("poller thread");
        let (peak, cpu) = (sample.map(|s| s.0), sample.map(|s| s.1));
        join_all(pumps);
        log.note(&format!("exit {status} after {seconds:.3} s, VmHWM {peak:?} kB, CPU {cpu:?} s"));
        if !status.success() {
            return Err(format!("pgtransit apply exited {status}:\n{}", tail(log_path, 25)));
        }
        let lines = log.lines.lock().map(|l| l.clone()).unwrap_or_default();
        Ok(RunOutcome {
            seconds,
            rss_kb: peak,
            cpu_s: cpu,
            phases: Some(Phases::parse(&lines, seconds)),
        })
    }

    fn time_pgcopydb(&self, run: usize, log_path: &Path) -> R<RunOutcome> {
        let program = self.pgcopydb.as_ref().ok_or("pgcopydb is not installed")?;
        let home = self.work.join(format!("pgcopydb-home{run}"));
        fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
        // A fresh work directory that does not exist yet.
        let dir = self.work.join(format!("pgcopydb-run{run}"));
        let jobs = self.opts.jobs.to_string();
        // The cluster's pg_dump and pg_restore first on PATH.
        let bin_dir = self.src.bin("pg_dump").parent().map(Path::to_path_buf).unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(bin_dir)
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .map_err(|e| e.to_string())?;
        let mut cmd = clean_cmd(program);
        cmd.args(["clone", "--source", &self.src.url(DB), "--target", &self.tgt.url(DB)])
            .args(["--table-jobs", &jobs, "--index-jobs", &jobs])
            .arg("--dir")
            .arg(&dir)
            .env("PATH", path)
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(&home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let log = Log::create(log_path, start)?;
        log.note(&format!("{cmd:?}"));
        let mut child = spawn(&mut cmd, "pgcopydb")?;
        let pumps = vec![
            log.pump(child.stdout.take().expect("piped"), "out", true),
            log.pump(child.stderr.take().expect("piped"), "err", true),
        ];
        let status = child.wait().map_err(|e| format!("waiting for pgcopydb: {e}"))?;
        let seconds = start.elapsed().as_secs_f64();
        join_all(pumps);
        log.note(&format!("exit {status} after {seconds:.3} s"));
        if !status.success() {
            return Err(format!("pgcopydb clone exited {status}:\n{}", tail(log_path, 25)));
        }
        Ok(RunOutcome { seconds, rss_kb: None, cpu_s: None, phases: None })
    }

    fn time_pg_dump(&self, log_path: &Path) -> R<RunOutcome> {
        let mut dump = clean_cmd(self.src.bin("pg_dump"));
        // -Z0: in a pipe, compression only costs time. With the default (zlib), pg_dump alone
        // takes ~35 s of one core at scale 50, and the pipe ~60 s instead of ~17 s.
        dump.args(["-Fc", "-Z0", "-d", &self.src.conninfo(DB)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut restore = clean_cmd(self.src.bin("pg_restore"));
        restore.args(["-d", &self.tgt.conninfo(DB)]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let log = Log::create(log_path, start)?;
        log.note(&format!("{dump:?} | {restore:?}"));
        let (ds, rs) = pipe(&log, (&mut dump, "pg_dump"), (&mut restore, "pg_restore"))?;
        let seconds = start.elapsed().as_secs_f64();
        log.note(&format!("pg_dump exit {ds}, pg_restore exit {rs}, after {seconds:.3} s"));
        if !ds.success() || !rs.success() {
            return Err(format!(
                "pg_dump exited {ds}, pg_restore exited {rs}:\n{}",
                tail(log_path, 25)
            ));
        }
        Ok(RunOutcome { seconds, rss_kb: None, cpu_s: None, phases: None })
    }

    /// The floor: per table, `psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN`,
    /// `jobs` tables at once, largest first, into tables without indexes or keys.
    fn time_copy(&self, log_path: &Path) -> R<RunOutcome> {
        let start = Instant::now();
        let log = Log::create(log_path, start)?;
        let queue = Mutex::new(self.tables.iter().cloned().collect::<VecDeque<_>>());
        let psql = self.src.bin("psql");
        let copy_one = |table: &str| -> R<()> {
            let mut out = clean_cmd(&psql);
            out.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.src.conninfo(DB), "-c"])
                .arg(format!("COPY {table} TO STDOUT (FORMAT binary)"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut inp = clean_cmd(&psql);
            inp.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.tgt.conninfo(DB), "-c"])
                .arg(format!("COPY {table} FROM STDIN (FORMAT binary)"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let t = Instant::now();
            let (os, is) = pipe(&log, (&mut out, "copy-out"), (&mut inp, "copy-in"))?;
            log.note(&format!("{table}: {:.3} s (out {os}, in {is})", t.elapsed().as_secs_f64()));
            if os.success() && is.success() {
                Ok(())
            } else {
                Err(format!("COPY of {table} failed (out {os}, in {is}):\n{}", tail(log_path, 10)))
            }
        };
        let results: Vec<R<()>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.opts.jobs)
                .map(|_| {
                    s.spawn(|| {
                        loop {
                            let next = queue.lock().expect("queue").pop_front();
                            let Some(table) = next else { return Ok(()) };
                            copy_one(&table)?;
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("copy worker")).collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        results.into_iter().collect::<R<Vec<()>>>()?;
        Ok(RunOutcome { seconds, rss_kb: None, cpu_s: None, phases: None })
    }

    /// Compares the target with the source: per table, the row count and two sums of row
    /// hashes; with `with_objects`, the number of indexes and constraints too.
    fn verify(&self, with_objects: bool) -> Result<(), String> {
        let target = sums(&self.tgt, &self.tables)?;
        let mut diffs = Vec::new();
        for ((table, s), t) in self.tables.iter().zip(&self.source_sums).zip(&target) {
            if s != t {
                diffs.push(format!("  {table}: source count/hash/hash {s}, target {t}"));
            }
        }
        if with_objects {
            let t = objects(&self.tgt)?;
            if t != self.source_objects {
                diffs.push(format!("  objects: source {}, target {t}", self.source_objects));
            }
        }
        if diffs.is_empty() { Ok(()) } else { Err(diffs.join("\n")) }
    }

    // -----------------------------------------------------------------------------------------
    // The report
    // -----------------------------------------------------------------------------------------

    fn report(
        &self,
        results: &[ToolResults],
        dataset: &Value,
        settings: &[(String, String)],
        rows_identical: bool,
        aborted: Option<&str>,
        target: &Path,
    ) -> bool {
        let find = |tool: Tool| results.iter().find(|r| r.tool == tool);
        let copydb = find(Tool::Pgcopydb).and_then(ToolResults::median);
        let floor = find(Tool::Copy).and_then(ToolResults::median);
        let runs = self.opts.runs;

        println!(
            "\nResults: scale {}, {} of data, jobs {}; wall-clock seconds, median of {runs}",
            self.opts.scale,
            human_bytes(dataset["database_bytes"].as_u64().unwrap_or(0)),
            self.opts.jobs
        );
        let mut header = format!("  {:<24}", "tool");
        for r in 1..=runs {
            header.push_str(&format!(" {:>8}", format!("run {r}")));
        }
        header.push_str(&format!(" {:>8} {:>12} {:>9}", "median", "vs pgcopydb", "vs floor"));
        println!("{header}");
        let ratio = |m: Option<f64>, base: Option<f64>| match (m, base) {
            (Some(m), Some(b)) if b > 0.0 => format!("{:.2}x", m / b),
            _ => "-".into(),
        };
        for r in results {
            let mut line = format!("  {:<24}", r.tool.label());
            if let Some(why) = &r.skipped {
                line.push_str(&format!(" skipped: {}", why.lines().next().unwrap_or("")));
                println!("{line}");
                continue;
            }
            for i in 0..runs {
                match r.seconds.get(i) {
                    Some(s) => line.push_str(&format!(" {s:>8.2}")),
                    None => line.push_str(&format!(
                        " {:>8}",
                        if r.failure.is_some() { "FAIL" } else { "-" }
                    )),
                }
            }
            let m = r.median();
            line.push_str(&format!(
                " {:>8} {:>12} {:>9}",
                m.map_or("-".into(), |m| format!("{m:.2}")),
                ratio(m, copydb),
                ratio(m, floor)
            ));
            println!("{line}");
        }

        let pgt = find(Tool::Pgtransit);
        let max_rss_kb = pgt.and_then(|r| r.rss_kb.iter().copied().max());
        // Run by run, both tools saw the same machine: these ratios show how much of the
        // spread is noise.
        let pairwise: Vec<f64> = match (pgt, find(Tool::Pgcopydb)) {
            (Some(p), Some(c)) if p.failure.is_none() && c.failure.is_none() => {
                p.seconds.iter().zip(&c.seconds).map(|(p, c)| p / c).collect()
            }
            _ => Vec::new(),
        };
        if !pairwise.is_empty() {
            println!(
                "  pgtransit / pgcopydb run by run: {} (median {:.2})",
                pairwise.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
                median(&pairwise).unwrap_or(0.0)
            );
        }
        if let Some(r) = pgt
            && !r.rss_kb.is_empty()
        {
            println!(
                "  pgtransit peak RSS (VmHWM) per run: {}",
                r.rss_kb.iter().map(|kb| mb(*kb as f64 * 1024.0)).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(r) = pgt
            && !r.cpu_s.is_empty()
        {
            println!(
                "  pgtransit process CPU (user + system) per run: {}",
                r.cpu_s.iter().map(|c| format!("{c:.2} s")).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(r) = pgt
            && let Some(m) = r.median()
        {
            // The run whose time is the median: its phases and slowest steps.
            let idx = r
                .seconds
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - m).abs().total_cmp(&(b.1 - m).abs()))
                .map(|(i, _)| i)
                .unwrap_or(0);
            if let Some(p) = r.phases.get(idx) {
                println!("  pgtransit median run (run {}): {}", idx + 1, p.summary());
                let mut steps = p.steps.clone();
                steps.sort_by(|a, b| b.2.total_cmp(&a.2));
                let top: Vec<String> = steps
                    .iter()
                    .take(6)
                    .map(|(phase, object, s)| format!("{object} [{phase}] {s:.1} s"))
                    .collect();
                println!("    slowest steps: {}", top.join("; "));
            }
        }
        if let Some(r) = find(Tool::Pgcopydb)
            && let Some(m) = r.median()
        {
            let idx = r
                .seconds
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - m).abs().total_cmp(&(b.1 - m).abs()))
                .map(|(i, _)| i)
                .unwrap_or(0);
            if let Some(log) = r.logs.get(idx) {
                let summary = pgcopydb_summary(log);
                if !summary.is_empty() {
                    println!("  pgcopydb median run (run {}), its own summary:", idx + 1);
                    for l in summary {
                        println!("    {l}");
                    }
                }
            }
        }

        // Verdict.
        let pgt_median = pgt.and_then(ToolResults::median);
        let speed_ok = match (pgt_median, copydb) {
            (Some(p), Some(c)) => {
                let ok = p <= RATIO_TARGET * c;
                println!(
                    "\nVerdict: speed  {}: pgtransit {p:.2} s vs {RATIO_TARGET} x pgcopydb \
                     {c:.2} s = {:.2} s (ratio {:.2})",
                    if ok { "MET" } else { "NOT MET" },
                    RATIO_TARGET * c,
                    p / c
                );
                Some(ok)
            }
            _ => {
                println!("\nVerdict: speed  UNKNOWN: pgtransit and pgcopydb both need a median");
                None
            }
        };
        let rss_ok = max_rss_kb.map(|kb| {
            let m = kb as f64 / 1024.0;
            let ok = m < RSS_TARGET_MB;
            println!(
                "         memory {}: pgtransit peak RSS {m:.1} MB (max of its runs) \
                 vs < {RSS_TARGET_MB} MB",
                if ok { "MET" } else { "NOT MET" }
            );
            ok
        });
        if rss_ok.is_none() {
            println!("         memory UNKNOWN: no pgtransit run measured");
        }
        let pgt_runs = pgt.map_or(0, |r| r.seconds.len());
        let others_differ: Vec<&str> = results
            .iter()
            .filter(|r| r.tool != Tool::Pgtransit)
            .filter(|r| r.failure.as_deref().is_some_and(|f| f.contains("differs")))
            .map(|r| r.tool.key())
            .collect();
        println!(
            "         rows   {}: after each of pgtransit's {pgt_runs} run(s), per table count(*), \
             sum(hashtextextended(row)) and sum(hashtext(row)) on source and target; \
             other tools checked the same way: {}",
            if rows_identical && aborted.is_none() && pgt_runs > 0 {
                "IDENTICAL"
            } else {
                "DIFFER"
            },
            if others_differ.is_empty() {
                "identical".to_string()
            } else {
                format!("{} DIFFER", others_differ.join(", "))
            }
        );
        if let Some(why) = aborted {
            println!("         ABORTED: {why}");
        }

        // JSON.
        let tools: Vec<Value> = results
            .iter()
            .map(|r| {
                let m = r.median();
                json!({
                    "tool": r.tool.key(),
                    "label": r.tool.label(),
                    "runs_s": r.seconds,
                    "median_s": m,
                    "ratio_vs_pgcopydb": m.zip(copydb).map(|(m, c)| m / c),
                    "ratio_vs_floor": m.zip(floor).map(|(m, f)| m / f),
                    "peak_rss_kb": r.rss_kb,
                    "cpu_s": r.cpu_s,
                    "phases": r.phases.iter().map(Phases::json).collect::<Vec<_>>(),
                    "logs": r.logs,
                    "failure": r.failure,
                    "skipped": r.skipped,
                })
            })
            .collect();
        let doc = json!({
            "benchmark": "load",
            "unix_time": unix_time(),
            "options": {
                "scale": self.opts.scale,
                "runs": self.opts.runs,
                "jobs": self.opts.jobs,
                "tools": self.opts.tools.iter().map(|t| t.key()).collect::<Vec<_>>(),
            },
            "machine": machine_json(),
            "server_settings": settings_json(settings),
            "versions": {
                "pgtransit": version_of(&self.pgtransit),
                "pgcopydb": self.pgcopydb.as_deref().map(version_of),
                "pg_dump": version_of(&self.src.bin("pg_dump")),
            },
            "dataset": dataset,
            "tools": tools,
            "verdict": {
                "pgtransit_over_pgcopydb_per_run": pairwise,
                "pgtransit_median_s": pgt_median,
                "pgcopydb_median_s": copydb,
                "floor_median_s": floor,
                "ratio_target": RATIO_TARGET,
                "speed_met": speed_ok,
                "peak_rss_mb": max_rss_kb.map(|kb| kb as f64 / 1024.0),
                "rss_target_mb": RSS_TARGET_MB,
                "rss_met": rss_ok,
                "rows_identical": rows_identical && aborted.is_none(),
                "aborted": aborted,
            },
        });
        let path = target.join("bench-load.json");
        write_results(&path, &doc);
        aborted.is_none() && rows_identical && results.iter().all(|r| r.failure.is_none())
    }
}

/// `N indexes, M constraints` outside the system schemas.
fn objects(c: &LocalCluster) -> R<String> {
    c.psql(
        DB,
        "SELECT (SELECT count(*) FROM pg_indexes
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')) || ' indexes, '
             || (SELECT count(*) FROM pg_constraint co
                 JOIN pg_namespace n ON n.oid = co.connamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) || ' constraints'",
    )
    .map_err(|e| e.to_string())
}

/// `VmHWM` (kB) and CPU seconds (user + system) of `pid`, if it is still the process named
/// `name`.
fn proc_sample(pid: u32, name: &str) -> Option<(u64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut same = false;
    let mut hwm = None;
    for line in status.lines() {
        if let Some(n) = line.strip_prefix("Name:") {
            same = n.trim() == name;
        } else if let Some(v) = line.strip_prefix("VmHWM:") {
            hwm = v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    // "pid (comm) state ..." where comm may hold spaces: fields 14 and 15 (utime, stime, in
    // clock ticks of USER_HZ = 100) are the 12th and 13th after the closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    if same { Some((hwm?, ticks as f64 / 100.0)) } else { None }
}

/// pgcopydb's own timing summary (the table it logs at the end), without the log prefixes.
fn pgcopydb_summary(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    // The per-table table (copy and index durations), then the steps.
    let Some(start) = lines
        .iter()
        .rposition(|l| l.contains("copy duration"))
        .or_else(|| lines.iter().rposition(|l| l.contains("Step") && l.contains("Duration")))
    else {
        return Vec::new();
    };
    let end = lines[start..]
        .iter()
        .position(|l| l.contains("Total Wall Clock"))
        .map_or(lines.len(), |p| start + p + 1);
    lines[start..end]
        .iter()
        .map(|l| match l.find("] ") {
            Some(i) if l.starts_with('[') => l[i + 2..].trim_end().to_string(),
            _ => l.trim_end().to_string(),
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}
