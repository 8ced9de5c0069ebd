//! Helpers shared by the benchmarks (`benches/load.rs`, `benches/sync.rs`,
//! `benches/cutover.rs`), each of which includes this module with `mod common;`: commands
//! without the caller's libpq environment, medians and number formatting, the machine's load
//! and memory, a scratch directory, stamped logs of the tools' output, pgtransit run in the
//! background, waits, the `docs` table, and row checksums of the benchmarked database.

// Each benchmark uses part of this module.
#![allow(dead_code, reason = "each benchmark uses a part of the shared helpers")]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgtransit::cluster::LocalCluster;
use serde_json::{Value, json};

pub type R<T> = Result<T, String>;

/// The database benchmarked on every server.
pub const DB: &str = "bench";

/// A benchmark's `main`: its options parsed (exit 2 on a usage error), then the run: exit 0
/// when it passed, 1 when it did not or failed.
pub fn main<O>(parse_args: fn() -> R<O>, run: fn(O) -> R<bool>) -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\nbenchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command without the caller's libpq environment (PGHOST, PGPASSWORD, ...).
/// `target/<name>/`, emptied: where a benchmark keeps every tool's output.
pub fn fresh_logs(name: &str) -> R<PathBuf> {
    let logs = target_dir().join(name);
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    Ok(logs)
}

/// A throwaway cluster's options: `settings`, and `wal_level = logical` for a source that
/// decodes.
pub fn cluster_options(
    name: &str,
    settings: &[(&str, &str)],
    logical: bool,
) -> pgtransit::cluster::ClusterOptions {
    let mut settings: Vec<(String, String)> =
        settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if logical {
        settings.push(("wal_level".into(), "logical".into()));
    }
    pgtransit::cluster::ClusterOptions { name: name.into(), settings, ..Default::default() }
}

/// Starts a source and a target cluster at once, and says so.
pub fn start_pair(
    source: pgtransit::cluster::ClusterOptions,
    target: pgtransit::cluster::ClusterOptions,
) -> R<(LocalCluster, LocalCluster)> {
    let t = std::time::Instant::now();
    let (src, tgt) = std::thread::scope(|s| {
        let a = s.spawn(|| LocalCluster::start(source));
        let b = s.spawn(|| LocalCluster::start(target));
        (a.join().expect("cluster thread"), b.join().expect("cluster thread"))
    });
    let (src, tgt) = (src.map_err(|e| e.to_string())?, tgt.map_err(|e| e.to_string())?);
    println!(
        "  clusters started in {:.1} s: source {}, target {}",
        t.elapsed().as_secs_f64(),
        src.url(DB),
        tgt.url(DB)
    );
    Ok((src, tgt))
}

/// Reads the command line, `--key value` or `--key=value`: calls `set(key, value)` for each
/// option, where `value()` takes its value (the inline one, or the next argument). `cargo
/// bench`'s own `--bench` is skipped, and `-h`/`--help` prints `usage` and exits.
pub fn each_option(
    usage: &str,
    mut set: impl FnMut(&str, &mut dyn FnMut() -> R<String>) -> R<()>,
) -> R<()> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{key} needs a value"));
        match key.as_str() {
            // `cargo bench` passes --bench to harness = false benchmarks.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{usage}");
                std::process::exit(0);
            }
            _ => set(&key, &mut value)?,
        }
    }
    Ok(())
}

/// A positive number (`_` and `,` allowed between digits) given for option `key`.
pub fn positive<T: TryFrom<u64>>(v: &str, key: &str) -> R<T> {
    v.replace(['_', ','], "")
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{key}: `{v}` is not a positive number"))
}

pub fn clean_cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1_048_576.0)
}

/// `1.30 GB` from a gigabyte up, `12.3 MB` below.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1_073_741_824.0 { format!("{:.2} GB", b / 1_073_741_824.0) } else { mb(b) }
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints the machine's line of the report: CPUs, memory, load average.
pub fn print_machine() {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "  machine: {nproc} CPUs, {:.1} GB RAM, load average {}",
        mem_total_gb().unwrap_or(0.0),
        load_average()
    );
}

/// The binary under test: a private copy in `work`, so a concurrent `cargo build --release`
/// cannot swap it between runs; its line of the report printed.
pub fn private_pgtransit(work: &Path) -> R<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pgtransit"));
    let pgtransit = work.join("pgtransit");
    fs::copy(&built, &pgtransit)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), pgtransit.display()))?;
    println!("  pgtransit: {} ({})", built.display(), version_of(&pgtransit));
    Ok(pgtransit)
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn mem_total_gb() -> Option<f64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1_048_576.0)
}

pub fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// First line of `program --version`.
pub fn version_of(program: &Path) -> String {
    clean_cmd(program)
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.contains(" INFO ") && l.chars().any(|c| c.is_ascii_digit()))
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `pgtransit-<name>-<pid>` in the temporary directory, emptied.
    pub fn new(name: &str) -> R<TempDir> {
        let dir = std::env::temp_dir().join(format!("pgtransit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A log file shared by the threads that copy a run's (or a process's) output into it, each
/// line stamped with the seconds since the run started.
#[derive(Clone)]
pub struct Log {
    file: Arc<Mutex<File>>,
    start: Instant,
    /// Stamped stdout lines of the main process, for parsing (pgtransit's phases).
    pub lines: Arc<Mutex<Vec<(f64, String)>>>,
}

impl Log {
    pub fn create(path: &Path, start: Instant) -> R<Log> {
        let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Log { file: Arc::new(Mutex::new(file)), start, lines: Arc::default() })
    }

    pub fn note(&self, text: &str) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "# {text}");
        }
    }

    /// Copies `reader` into the log line by line, on a thread.
    pub fn pump(&self, reader: impl Read + Send + 'static, tag: &'static str, keep: bool) -> Pump {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let t = log.start.elapsed().as_secs_f64();
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if let Ok(mut f) = log.file.lock() {
                    let _ = writeln!(f, "[{t:8.3} {tag}] {line}");
                }
                if keep && let Ok(mut lines) = log.lines.lock() {
                    lines.push((t, line));
                }
            }
        })
    }
}

pub type Pump = JoinHandle<()>;

pub fn join_all(pumps: Vec<Pump>) {
    for p in pumps {
        let _ = p.join();
    }
}

pub fn spawn(cmd: &mut Command, what: &str) -> R<Child> {
    cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))
}

/// How often [`Running::terminate`] looks whether the process exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Waits until `ready` returns `Some`, polling every `every`; fails after `limit` (or when
/// `ready` fails). The limit only keeps a broken run from hanging: it is no measurement.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> R<Option<T>>,
) -> R<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = ready()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("timed out after {:.0} s waiting for {what}", limit.as_secs_f64()));
        }
        std::thread::sleep(every);
    }
}

/// A server's error as `SEVERITY: message`, or the client's error.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// A child process killed (SIGKILL) if it is still running when dropped: a failed benchmark
/// leaves no pgtransit behind.
pub struct Running {
    pub child: Child,
    pub pumps: Vec<Pump>,
}

impl Running {
    /// SIGTERM, then waits for the exit; its status.
    pub fn terminate(&mut self, limit: Duration) -> R<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.wait(limit, "pgtransit to exit after SIGTERM")
    }

    /// Waits (up to `limit`) for the process to exit, and for its output to be logged.
    pub fn wait(&mut self, limit: Duration, what: &str) -> R<ExitStatus> {
        let status = wait_for(what, limit, EXIT_POLL, || {
            self.child.try_wait().map_err(|e| format!("waiting for the process: {e}"))
        })?;
        join_all(std::mem::take(&mut self.pumps));
        Ok(status)
    }

    /// Waits for the process to exit, however long it takes (returns the moment it does, not
    /// at the next poll), and for its output to be logged.
    pub fn wait_blocking(&mut self) -> R<ExitStatus> {
        let status = self.child.wait().map_err(|e| format!("waiting for the process: {e}"))?;
        join_all(std::mem::take(&mut self.pumps));
        Ok(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `pgtransit SUBCOMMAND` run in `dir` (its home too, so no `~/.pgpass` of the caller's
/// applies), without colour or the caller's log settings.
pub fn pgtransit_cmd(pgtransit: &Path, subcommand: &str, dir: &Path) -> Command {
    let mut cmd = clean_cmd(pgtransit);
    cmd.arg(subcommand)
        .current_dir(dir)
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env_remove("PGTRANSIT_LOG");
    cmd
}

/// Starts `cmd` in the background, its stdout (lines kept, see [`Log::lines`]) and stderr
/// copied into a new log at `log_path`, whose first line is `what`.
pub fn start_logged(cmd: &mut Command, what: &str, log_path: &Path) -> R<(Running, Log)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let log = Log::create(log_path, Instant::now())?;
    log.note(what);
    let mut child = spawn(cmd, what)?;
    let pumps = vec![
        log.pump(child.stdout.take().expect("piped"), "out", true),
        log.pump(child.stderr.take().expect("piped"), "err", false),
    ];
    Ok((Running { child, pumps }, log))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The values of these settings on `c`, as `(name, value)`.
pub fn server_settings(c: &LocalCluster, shown: &[&str]) -> R<Vec<(String, String)>> {
    let sql = shown
        .iter()
        .map(|s| format!("SELECT '{s}=' || current_setting('{s}');"))
        .collect::<String>();
    let out = c.psql("postgres", &sql).map_err(|e| e.to_string())?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// `count sum(hashtextextended(row, 0)) sum(hashtext(row))` of every table, in order.
pub fn sums(c: &LocalCluster, tables: &[String]) -> R<Vec<String>> {
    let sql: String = tables
        .iter()
        .map(|t| {
            format!(
                "SELECT count(*) || ' ' || coalesce(sum(hashtextextended(x::text, 0)), 0) || ' ' \
                        || coalesce(sum(hashtext(x::text)), 0) FROM {t} x;\n"
            )
        })
        .collect();
    let out = c.psql(DB, &sql).map_err(|e| e.to_string())?;
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    if lines.len() != tables.len() {
        return Err(format!(
            "checksum query returned {} lines for {} tables",
            lines.len(),
            tables.len()
        ));
    }
    Ok(lines)
}

/// `pgbench -i -s SCALE -q` of the benchmarked database of `c`.
pub fn pgbench_init(c: &LocalCluster, scale: u32) -> R<()> {
    let mut cmd = clean_cmd(c.bin("pgbench"));
    cmd.args(["-i", "-s", &scale.to_string(), "-q", "-h", c.host()]).args([
        "-p",
        &c.port().to_string(),
        "-U",
        "postgres",
        DB,
    ]);
    output_of(&mut cmd, "pgbench -i").map(drop)
}

/// The ordinary tables of the benchmarked database of `c`, as `"schema"."name"`, by name.
pub fn user_tables(c: &LocalCluster) -> R<Vec<String>> {
    let out = c
        .psql(
            DB,
            "SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1",
        )
        .map_err(|e| e.to_string())?;
    Ok(out.lines().map(str::to_string).collect())
}

/// The `docs` table's rows `lo..=hi`: ~300 bytes of jsonb and ~200 bytes of bytea, from md5
/// and random() so they compress little.
fn docs_insert(lo: u64, hi: u64) -> String {
    let md5 = "md5(random()::text)";
    let blob = [md5; 12].join(" || ");
    format!(
        "INSERT INTO docs (id, body, blob)
         SELECT i,
                jsonb_build_object(
                  'id', i,
                  'customer', md5(i::text),
                  'email', left(md5((i * 7)::text), 12) || '@example.com',
                  'tags', jsonb_build_array(left({md5}, 8), left({md5}, 8), left({md5}, 8)),
                  'score', round((random() * 1000)::numeric, 3),
                  'active', i % 3 = 0,
                  'created_at', to_char(timestamp '2024-01-01' + i * interval '1 second',
                                        'YYYY-MM-DD\"T\"HH24:MI:SS'),
                  'note', {md5} || {md5}),
                decode({blob} || left({md5}, 16), 'hex')
         FROM generate_series({lo}, {hi}) AS i;"
    )
}

/// Creates and fills `docs (id bigint PRIMARY KEY, body jsonb, blob bytea)` in the benchmarked
/// database of `c`: `scale * 20,000` rows of about 500 bytes, inserted by up to 4 sessions at
/// once, and prints its line of the report. Returns the number of rows.
pub fn create_docs(c: &LocalCluster, scale: u32) -> R<u64> {
    let psql = |sql: &str| c.psql(DB, sql).map_err(|e| e.to_string());
    let t = Instant::now();
    let rows = u64::from(scale) * 20_000;
    psql("CREATE TABLE docs (id bigint, body jsonb, blob bytea)")?;
    let parts = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    let parts = u64::try_from(parts).unwrap_or(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..parts)
            .map(|p| {
                let (lo, hi) = (rows * p / parts + 1, rows * (p + 1) / parts);
                s.spawn(move || psql(&docs_insert(lo, hi)))
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("insert thread").map(drop))
    })?;
    psql("ALTER TABLE docs ADD PRIMARY KEY (id)")?;
    println!(
        "  docs: {} rows in {:.1} s (average jsonb {} B, bytea {} B)",
        thousands(rows),
        t.elapsed().as_secs_f64(),
        psql("SELECT avg(pg_column_size(body))::int FROM docs")?,
        psql("SELECT avg(pg_column_size(blob))::int FROM docs")?,
    );
    Ok(rows)
}

/// Runs `cmd` to its end, its stdout and stderr captured: its stdout, or an error naming
/// `what` with its exit status and stderr.
pub fn output_of(cmd: &mut Command, what: &str) -> R<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The machine, for the results file: CPUs, memory, load average at the end.
pub fn machine_json() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "mem_gb": mem_total_gb(),
        "load_average_end": load_average(),
    })
}

/// Server settings (see [`server_settings`]) as a JSON object.
pub fn settings_json(settings: &[(String, String)]) -> Value {
    Value::Object(settings.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect())
}

/// Writes the results file, saying where (or why not).
pub fn write_results(path: &Path, doc: &Value) {
    match serde_json::to_string_pretty(doc)
        .map_err(|e| e.to_string())
        .and_then(|s| fs::write(path, s + "\n").map_err(|e| e.to_string()))
    {
        Ok(()) => println!("\nResults written to {}", path.display()),
        Err(e) => println!("\ncannot write {}: {e}", path.display()),
    }
}

/// CPU seconds (user + system, all threads) of a process, from `/proc/<pid>/stat`. Every
/// server process of the benchmark's clusters is readable: the benchmark runs as their user or
/// as root.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..." where comm may hold spaces: fields 14 and 15 (utime, stime, in
    // clock ticks of USER_HZ = 100) are the 12th and 13th after the closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The peak resident set size (`VmHWM`, kB) of a process, from `/proc/<pid>/status`.
pub fn proc_peak_rss_kb(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// The summed CPU seconds of `pids` (those still running); None when none could be read.
pub fn procs_cpu_seconds(pids: &[u32]) -> Option<f64> {
    let read: Vec<f64> = pids.iter().filter_map(|&p| proc_cpu_seconds(p)).collect();
    (!read.is_empty()).then(|| read.iter().sum())
}

/// A kept-open connection for polls and small statements during a measurement: a psql process
/// per poll (fork, connect, backend start) would cost a 2-core machine more CPU than the poll's
/// query, and blur the timings.
pub struct Probe {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    name: String,
}

impl Probe {
    pub fn connect(c: &LocalCluster, name: &str) -> R<Probe> {
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

    /// The first column of every row `sql` returns (NULLs left out).
    pub fn column(&self, sql: &str) -> R<Vec<String>> {
        let messages = self
            .rt
            .block_on(self.client.simple_query(sql))
            .map_err(|e| format!("{} on {}: {}", sql.trim(), self.name, pg_error(&e)))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row `sql` returns (None for no row or NULL).
    pub fn value(&self, sql: &str) -> R<Option<String>> {
        Ok(self.column(sql)?.into_iter().next())
    }

    /// The process ids `sql` returns (one a row).
    pub fn pids(&self, sql: &str) -> R<Vec<u32>> {
        Ok(self.column(sql)?.iter().filter_map(|v| v.parse().ok()).collect())
    }
}
