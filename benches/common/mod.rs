//! Helpers shared by the benchmarks (`benches/load.rs`, `benches/sync.rs`), each of which
//! includes this module with `mod common;`: commands without the caller's libpq environment,
//! medians and number formatting, the machine's load and memory, a scratch directory, stamped
//! logs of the tools' output, and row checksums of the benchmarked database.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
