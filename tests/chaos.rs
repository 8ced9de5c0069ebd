//! Chaos: a whole online migration of a database under write load, with faults at moments
//! chosen from a seed: `kill -9` of the process that runs the migration (`pgtransit apply`, or
//! `pgtransit cutover` when it streams itself), and crashes of the target and of the source
//! (`pg_ctl stop -m immediate`, then started again), and network faults (pgtransit reaches each
//! server through a small TCP proxy, which drops its connections, or freezes them for a few
//! seconds, or both), during the load, the sync and the cutover.
//! After each fault the migration goes on (`apply` again, `cutover` again); at the end the
//! cutover is done, every table's rows and the schema are identical on both sides, nothing of the
//! migration is left on either server, and the source never held more than one slot.
//!
//! The seed is `PGTRANSIT_CHAOS_SEED` (`random`: derived from the time), or else a fixed one
//! (CI runs the same faults every time); it and the fault list are
//! printed first, so `PGTRANSIT_CHAOS_SEED=<seed> cargo test --test integration chaos --
//! --nocapture` replays a run (the same faults at the same steps and stages; moments measured
//! in time land where the machine's speed puts them). `PGTRANSIT_CHAOS_FAULTS=N` injects N
//! faults (default 20, the CI run, about two minutes).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    LocalCluster, Proxy, TempDir, assert_same_schema, cluster, logical_source, pgtransit,
    plan_yaml, poll, rows_differ, run, schema_dump, sql, state, table_checksums, terminate,
};

const NAME: &str = "chaos";

/// Large enough that the load has steps worth interrupting (a few seconds of copies and index
/// builds), small enough for CI. Every kind of table the stream handles: keys, identity, a
/// trigger that writes, a partitioned table and tables without a key (replica identity full),
/// sequences owned by a column or not.
const SOURCE_SQL: &str = "
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, note text);
CREATE INDEX items_qty ON items (qty);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL REFERENCES customers,
                     item bigint, total numeric(12,2), invoice bigint,
                     placed timestamptz DEFAULT now());
CREATE INDEX orders_customer ON orders (customer);
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION orders_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_audit();
CREATE TABLE events (id int NOT NULL, kind text) PARTITION BY RANGE (id);
CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (2500);
CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (2500) TO (MAXVALUE);
CREATE TABLE ticks (i int NOT NULL, at timestamptz NOT NULL);
CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counter VALUES (1, 0);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 1000) g;
INSERT INTO items SELECT g, 'item ' || g, g % 1000, repeat('n', g % 50)
  FROM generate_series(1, 300000) g;
INSERT INTO orders (customer, item, total, invoice)
  SELECT 1 + g % 1000, g, g * 0.5, g FROM generate_series(1, 100000) g;
INSERT INTO events SELECT g, 'k' || (g % 10) FROM generate_series(1, 5000) g;
";

// -- the seed ------------------------------------------------------------------------------------

/// splitmix64: tiny, and the same sequence for the same seed everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// The seed of a plain `cargo test` (CI): one fixed run, so a red CI is a regression, not the
/// luck of the draw. `PGTRANSIT_CHAOS_SEED=random` draws a new one (printed) to hunt for more.
const DEFAULT_SEED: u64 = 2;

pub(crate) fn seed() -> u64 {
    match std::env::var("PGTRANSIT_CHAOS_SEED") {
        Err(_) => return DEFAULT_SEED,
        Ok(s) if s.trim() != "random" => {
            return s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("PGTRANSIT_CHAOS_SEED={s}: not a u64 (or `random`)"));
        }
        Ok(_) => {}
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64;
    // One round of the generator, so seeds of runs a moment apart differ in every digit.
    Rng(nanos ^ u64::from(std::process::id())).next() % 1_000_000_000_000
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

// -- faults --------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// SIGKILL of the process that runs the migration.
    Kill,
    CrashSource,
    CrashTarget,
    /// Trouble on the network between pgtransit and a server (through its [`Proxy`]).
    Network {
        server: Server,
        how: Net,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Server {
    Source,
    Target,
}

/// What the network does to pgtransit's connections to a server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Net {
    /// Every connection closed at once, both sides (a reset).
    Drop,
    /// Nothing forwarded for this long, connections kept (a blip).
    Freeze(Duration),
    /// Nothing forwarded for this long, then every connection closed (a partition).
    FreezeThenDrop(Duration),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Kill => f.write_str("kill -9 of the migration's process"),
            Kind::CrashSource => f.write_str("crash of the source"),
            Kind::CrashTarget => f.write_str("crash of the target"),
            Kind::Network { server, how } => {
                let which = if *server == Server::Source { "source" } else { "target" };
                match how {
                    Net::Drop => write!(f, "network: every connection to the {which} dropped"),
                    Net::Freeze(d) => {
                        write!(f, "network: connections to the {which} frozen {} ms", d.as_millis())
                    }
                    Net::FreezeThenDrop(d) => write!(
                        f,
                        "network: connections to the {which} frozen {} ms, then dropped",
                        d.as_millis()
                    ),
                }
            }
        }
    }
}

/// A network fault: either server, dropped, frozen (0.5 to 8 s) or both.
/// `PGTRANSIT_CHAOS_FREEZE_MS=<ms>` makes every freeze that long (to see whether pgtransit
/// notices a connection that hangs for long).
fn network_fault(rng: &mut Rng) -> Kind {
    let server = if rng.chance(50) { Server::Source } else { Server::Target };
    let freeze = |rng: &mut Rng| {
        let d = rng.ms(500, 8000);
        match std::env::var("PGTRANSIT_CHAOS_FREEZE_MS").ok().and_then(|v| v.parse().ok()) {
            Some(ms) => Duration::from_millis(ms),
            None => d,
        }
    };
    let how = match rng.below(100) {
        0..40 => Net::Drop,
        40..75 => Net::Freeze(freeze(rng)),
        _ => Net::FreezeThenDrop(freeze(rng)),
    };
    Kind::Network { server, how }
}

/// The cutover's stages, as the state records them (`waiting`: asked, not fenced yet).
const STAGES: [&str; 8] =
    ["waiting", "fencing", "draining", "finishing", "verifying", "cleaning_up", "done", "failed"];

fn stage_rank(stage: &str) -> usize {
    STAGES.iter().position(|s| *s == stage).unwrap_or(0)
}

#[derive(Clone, Debug)]
enum Moment {
    /// Load: the apply aborts itself at `PGTRANSIT_FAILPOINT=<this>` (as sudden as a kill -9).
    Failpoint(String),
    /// Load: while this step runs (or just after, if it ends between two looks at the state).
    AtStep(String),
    /// Sync: this long after the stream caught up again (or, `catching_up`, after the apply
    /// started: while it replays what the slot kept).
    After { delay: Duration, catching_up: bool },
    /// Cutover: when the cutover reaches this stage.
    Stage(&'static str),
    /// Cutover: at `PGTRANSIT_FAILPOINT=<this>` (a step after the fence and the drain).
    CutoverFailpoint(String),
    /// Sync: the apply aborts right after continuous verification took a consistent point
    /// (`PGTRANSIT_FAILPOINT=during:verify:round`): the applier had held for it, stood still at
    /// it, and the temporary slot's session and both snapshots are open.
    VerifyFailpoint,
}

/// Where [`Moment::VerifyFailpoint`] aborts.
const VERIFY_FAILPOINT: &str = "during:verify:round";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Load,
    Sync,
    Cutover,
}

struct Fault {
    phase: Phase,
    kind: Kind,
    moment: Moment,
    /// How long a crashed server stays down.
    downtime: Duration,
    /// Cutover: `pgtransit cutover` runs the stream itself (no apply running), rather than
    /// asking a running apply.
    cutover_streams: bool,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Load => "load",
            Phase::Sync => "sync",
            Phase::Cutover => "cutover",
        };
        write!(f, "{phase}: {}", self.kind)?;
        match &self.moment {
            Moment::Failpoint(fp) => write!(f, " (abort at failpoint {fp})")?,
            Moment::AtStep(step) => write!(f, " while {step} runs")?,
            Moment::After { delay, catching_up: false } => {
                write!(f, " {} ms after the stream caught up", delay.as_millis())?
            }
            Moment::After { delay, catching_up: true } => {
                write!(f, " {} ms after apply started (catching up)", delay.as_millis())?
            }
            Moment::Stage(s) => write!(f, " at stage {s}")?,
            Moment::CutoverFailpoint(fp) => write!(f, " (abort at failpoint {fp})")?,
            Moment::VerifyFailpoint => write!(
                f,
                " during continuous verification (abort at failpoint {VERIFY_FAILPOINT})"
            )?,
        }
        if matches!(self.kind, Kind::CrashSource | Kind::CrashTarget) {
            write!(f, ", down {} ms", self.downtime.as_millis())?;
        }
        if self.phase == Phase::Cutover {
            let who = if self.cutover_streams { "`cutover` streams" } else { "apply streams" };
            write!(f, " [{who}]")?;
        }
        Ok(())
    }
}

/// `k` of `0..n` (at most `n`), in order.
fn sample_sorted(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    let mut chosen = idx[..k].to_vec();
    chosen.sort();
    chosen
}

/// The tables large enough that their copies and index builds take a while.
const LARGE_TABLES: [&str; 3] = ["public.items", "public.orders", "public.audit"];

/// Whether a load step takes long enough for a kill or a crash to land while it runs.
fn is_long(step: &str) -> bool {
    step == "post_load:analyze"
        || LARGE_TABLES.iter().any(|t| {
            step == format!("load:table:{t}")
                || (step.starts_with("post_load:")
                    && !step.starts_with("post_load:sequence_value:")
                    && (step.contains(&format!("{t}.")) || step.contains(&format!("{t}_"))))
        })
}

/// The fault list of a run: about 3/10 during the load (at steps of the plan, in order), 1/5
/// during the cutover, the rest during the sync. About 1/5 of them are network faults (a
/// quarter of those that land while a load step runs, in the sync and at cutover stages).
fn plan_faults(
    rng: &mut Rng,
    total: usize,
    load_steps: &[String],
    cutover_sequences: &[String],
) -> Vec<Fault> {
    let n_cut = (total / 5).max(2);
    let n_load = (total * 3 / 10).max(2).min(load_steps.len() / 2);
    let mut faults = vec![];

    // Load: the apply aborts at failpoints of steps anywhere in the plan; kills and crashes land
    // while steps that take a while run (copies and index builds of the large tables). In plan
    // order.
    let n_at = n_load / 2;
    let mut chosen: Vec<(usize, bool)> = sample_sorted(rng, load_steps.len(), n_load - n_at)
        .into_iter()
        .map(|i| (i, true))
        .collect();
    let long: Vec<usize> = (0..load_steps.len()).filter(|&i| is_long(&load_steps[i])).collect();
    chosen.extend(sample_sorted(rng, long.len(), n_at).into_iter().map(|i| (long[i], false)));
    chosen.sort();
    for (i, failpoint) in chosen {
        let step = &load_steps[i];
        let (kind, moment) = if failpoint {
            // The slot step has no `before` failpoint.
            let when = if step == "load:slot" || rng.chance(50) { "after" } else { "before" };
            (Kind::Kill, Moment::Failpoint(format!("{when}:{step}")))
        } else {
            let kind = if rng.chance(25) {
                network_fault(rng)
            } else {
                [Kind::Kill, Kind::CrashSource, Kind::CrashTarget][rng.below(3)]
            };
            (kind, Moment::AtStep(step.clone()))
        };
        let downtime = rng.ms(200, 2000);
        faults.push(Fault { phase: Phase::Load, kind, moment, downtime, cutover_streams: false });
    }
    let n_sync = total.saturating_sub(n_cut + faults.len()).max(1);

    for _ in 0..n_sync {
        if rng.chance(15) {
            let moment = Moment::VerifyFailpoint;
            let downtime = Duration::ZERO;
            let kind = Kind::Kill;
            faults.push(Fault {
                phase: Phase::Sync,
                kind,
                moment,
                downtime,
                cutover_streams: false,
            });
            continue;
        }
        let kind = match rng.below(100) {
            0..30 => Kind::Kill,
            30..53 => Kind::CrashTarget,
            53..75 => Kind::CrashSource,
            _ => network_fault(rng),
        };
        let catching_up = rng.chance(30);
        let delay = if catching_up { rng.ms(100, 1500) } else { rng.ms(200, 3000) };
        let downtime = rng.ms(300, 3000);
        let moment = Moment::After { delay, catching_up };
        faults.push(Fault { phase: Phase::Sync, kind, moment, downtime, cutover_streams: false });
    }

    for j in 0..n_cut {
        let cutover_streams = rng.chance(50);
        let last = j + 1 == n_cut;
        let (kind, moment) = if rng.chance(25) && !cutover_sequences.is_empty() {
            let seq = &cutover_sequences[rng.below(cutover_sequences.len())];
            let when = if rng.chance(50) { "after" } else { "before" };
            (Kind::Kill, Moment::CutoverFailpoint(format!("{when}:{seq}")))
        } else {
            let kind = if rng.chance(25) {
                network_fault(rng)
            } else {
                [Kind::Kill, Kind::CrashSource, Kind::CrashTarget][rng.below(3)]
            };
            // A fault while the cutover waits, or during its clean-up, likely lets it complete:
            // only the last one may land there.
            let stage = if last {
                ["waiting", "fencing", "draining", "finishing", "verifying", "cleaning_up"]
                    [rng.below(6)]
            } else {
                ["fencing", "draining", "finishing", "verifying", "verifying"][rng.below(5)]
            };
            (kind, Moment::Stage(stage))
        };
        let downtime = rng.ms(300, 2000);
        faults.push(Fault { phase: Phase::Cutover, kind, moment, downtime, cutover_streams });
    }
    faults
}

// -- the writer and the slot monitor -------------------------------------------------------------

/// Writes to the source in the background, in small transactions, through every fault: a tick
/// row (a table without a key) and the counter in each, plus updates, deletes, inserts that fire
/// a trigger, rows moving between partitions, identity values and a sequence no column owns.
/// A session that fails (a crash of the source, the cutover's fence) is replaced by a new one.
/// Each committed transaction adds one tick and one to the counter: a lost change shows as a
/// missing row, a change applied twice as an extra one.
struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    /// Held while a batch runs: `pause` takes it to wait for the batch to end.
    running: Arc<Mutex<()>>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const WRITER_BATCH: u64 = 20;

fn writer_batch(first: u64) -> String {
    let mut s = String::new();
    for i in first..first + WRITER_BATCH {
        let k = (i * 7919) % 300_000 + 1;
        s.push_str(&format!(
            "BEGIN;\nINSERT INTO ticks VALUES ({i}, now());\n\
             UPDATE counter SET n = n + 1 WHERE id = 1;\n\
             UPDATE items SET qty = qty + 1, note = 'w{i}' WHERE id = {k};\n\
             INSERT INTO orders (customer, item, total, invoice) \
             VALUES ({}, {k}, {i}.25, nextval('invoice_no'));\n",
            1 + i % 1000
        ));
        if i % 5 == 0 {
            s.push_str(&format!(
                "DELETE FROM items WHERE id = {};\n",
                (i * 104_729 + 17) % 300_000
            ));
        }
        if i % 7 == 0 {
            s.push_str(&format!(
                "UPDATE events SET id = id + 2500 WHERE id = {};\n",
                (i * 31) % 2499 + 1
            ));
        }
        if i % 11 == 0 {
            s.push_str(&format!("INSERT INTO customers (name) VALUES ('w{i}');\n"));
        }
        if i % 13 == 0 {
            s.push_str(&format!("INSERT INTO items VALUES ({}, 'new', 0, NULL);\n", 300_000 + i));
        }
        s.push_str("COMMIT;\nSELECT pg_sleep(0.008);\n");
    }
    s
}

impl Writer {
    fn start(psql: PathBuf, conninfo: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let running = Arc::new(Mutex::new(()));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, p, r, o, f) =
            (stop.clone(), pause.clone(), running.clone(), ok.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let mut next = 0u64;
            loop {
                let guard = r.lock().unwrap();
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if p.load(Ordering::SeqCst) {
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let script = writer_batch(next);
                next += WRITER_BATCH;
                let success = run_psql_script(&psql, &conninfo, &script);
                drop(guard);
                if success {
                    o.fetch_add(1, Ordering::SeqCst);
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Writer { stop, pause, running, ok, failed, handle: Some(handle) }
    }

    /// Returns once no batch runs, and none will until `resume`.
    fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        drop(self.running.lock().unwrap());
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    fn stats(&self) -> String {
        format!(
            "{} batches of {WRITER_BATCH} transactions ran whole, {} broke off",
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst)
        )
    }
}

fn run_psql_script(psql: &Path, conninfo: &str, script: &str) -> bool {
    let Ok(mut child) = std::process::Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"])
        .env_remove("PGDATABASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    use std::io::Write;
    // A session that dies early closes the pipe: that is a failed batch, not an error here.
    let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    child.wait().map(|s| s.success()).unwrap_or(false)
}

/// Samples the source's `pg_replication_slots` every 200 ms (from the `postgres` database, which
/// the cutover's fence leaves alone), and on demand.
struct Monitor {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SlotLog>>,
    psql: PathBuf,
    conninfo: String,
    started: Instant,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SlotLog {
    samples: usize,
    unanswered: usize,
    max: usize,
    violations: Vec<String>,
}

fn sample_slots(psql: &Path, conninfo: &str) -> Option<(usize, String)> {
    let out = std::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c"])
        .arg(
            // Continuous verification's temporary slots (each lives as long as its session,
            // the server drops it when that ends, however it ends) are not counted.
            "SELECT count(*) || '|' || coalesce(string_agg(slot_name || \
             CASE WHEN active THEN ' (active)' ELSE '' END, ', '), '') FROM pg_replication_slots \
             WHERE NOT temporary",
        )
        .env_remove("PGDATABASE")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (n, names) = text.split_once('|')?;
    Some((n.parse().ok()?, names.to_string()))
}

fn record_sample(log: &Mutex<SlotLog>, sample: Option<(usize, String)>, at: f64, when: &str) {
    let mut l = log.lock().unwrap();
    l.samples += 1;
    match sample {
        None => l.unanswered += 1,
        Some((n, names)) => {
            l.max = l.max.max(n);
            if n > 1 {
                l.violations.push(format!("+{at:.1}s {when}: {n} slots on the source: {names}"));
            }
        }
    }
}

impl Monitor {
    fn start(src: &LocalCluster) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(SlotLog::default()));
        let psql = src.bin("psql");
        let conninfo = format!(
            "{} connect_timeout=2 application_name=chaos-monitor",
            src.conninfo("postgres")
        );
        let started = Instant::now();
        let (s, l, p, c) = (stop.clone(), log.clone(), psql.clone(), conninfo.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let at = started.elapsed().as_secs_f64();
                record_sample(&l, sample_slots(&p, &c), at, "sampled");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Monitor { stop, log, psql, conninfo, started, handle: Some(handle) }
    }

    /// A sample now; panics at once if the source holds more than one slot.
    fn check(&self, when: &str) {
        let at = self.started.elapsed().as_secs_f64();
        record_sample(&self.log, sample_slots(&self.psql, &self.conninfo), at, when);
        let l = self.log.lock().unwrap();
        assert!(l.violations.is_empty(), "more than one slot on the source: {:?}", l.violations);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// -- the harness ---------------------------------------------------------------------------------

/// A `pgtransit apply` or `pgtransit cutover` in the background, its output in numbered files.
struct Proc {
    child: Child,
    n: usize,
    what: &'static str,
    /// When it started (Unix seconds).
    since: f64,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn step_planned(m: &Moment) -> &String {
    match m {
        Moment::AtStep(s) => s,
        _ => unreachable!(),
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(6)) => "aborted (failpoint)".into(),
        (None, Some(9)) => "killed (SIGKILL)".into(),
        (None, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

struct Chaos {
    seed: u64,
    dir: TempDir,
    plan: String,
    src: LocalCluster,
    tgt: LocalCluster,
    /// What pgtransit connects through (the plan's URLs); the writer and the monitor do not.
    src_proxy: Proxy,
    tgt_proxy: Proxy,
    writer: Writer,
    monitor: Monitor,
    apply: Option<Proc>,
    runs: usize,
    started: Instant,
    limit: Duration,
    /// The fault being injected or recovered from (for the timeline).
    current: usize,
    timeline: Vec<String>,
    /// What pgtransit should not have done: the test fails on any, after the final checks.
    anomalies: Vec<String>,
    /// A crash of the source after the cutover read its sequences (they may then move on).
    source_crashed_after_cutover: bool,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        if let Some(p) = self.apply.as_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.writer.stop();
        self.monitor.stop();
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("pgtransit-chaos-{}", self.seed));
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::process::Command::new("cp")
                .args(["-a", self.dir.path().to_str().unwrap(), keep.to_str().unwrap()])
                .status();
            eprintln!(
                "\n=== chaos seed {} failed after {:.1} s; the plan, the state and every run's \
                 output are kept in {}\n=== timeline:\n{}\n=== source log:\n{}\n=== target \
                 log:\n{}",
                self.seed,
                self.started.elapsed().as_secs_f64(),
                keep.display(),
                self.timeline.join("\n"),
                self.src.log_tail(40),
                self.tgt.log_tail(40),
            );
        }
    }
}

impl Chaos {
    fn say(&mut self, what: String) {
        let line = format!("[chaos +{:6.1}s] {what}", self.started.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.timeline.push(line);
    }

    fn anomaly(&mut self, what: String) {
        self.say(format!("ANOMALY: {what}"));
        let n = self.current;
        self.anomalies.push(format!("fault #{n}: {what}"));
    }

    fn check_time(&self, what: &str) {
        assert!(
            self.started.elapsed() < self.limit,
            "the chaos run exceeded its {:?} while {what} (seed {})",
            self.limit,
            self.seed
        );
    }

    fn state(&self) -> serde_json::Value {
        state(&self.dir, NAME)
    }

    fn running_steps(&self) -> String {
        let s = self.state();
        let running: Vec<String> = s["steps"]
            .as_object()
            .map(|m| {
                m.iter().filter(|(_, v)| v["status"] == "running").map(|(k, _)| k.clone()).collect()
            })
            .unwrap_or_default();
        if running.is_empty() { "no step running".into() } else { running.join(", ") }
    }

    /// Starts `pgtransit <args> --auto-approve` in the background.
    fn spawn(&mut self, what: &'static str, failpoint: Option<&str>) -> Proc {
        self.runs += 1;
        let n = self.runs;
        let out =
            std::fs::File::create(self.dir.path().join(format!("{n:03}-{what}.out"))).unwrap();
        let err =
            std::fs::File::create(self.dir.path().join(format!("{n:03}-{what}.err"))).unwrap();
        let mut cmd = pgtransit(self.dir.path());
        cmd.args([what, &self.plan, "--auto-approve"]).stdout(out).stderr(err).stdin(Stdio::null());
        // Freezes forced longer than the default --retry-for: an outage that long is to be
        // waited for (what is watched then is that nothing hangs, and nothing is lost).
        let forced: Option<u64> =
            std::env::var("PGTRANSIT_CHAOS_FREEZE_MS").ok().and_then(|v| v.parse().ok());
        if let Some(ms) = forced.filter(|ms| *ms > 5_000) {
            cmd.args(["--retry-for", &format!("{}s", ms / 1000 + 60)]);
        }
        if let Some(fp) = failpoint {
            cmd.env("PGTRANSIT_FAILPOINT", fp);
        }
        let child = cmd.spawn().expect("start pgtransit");
        let p = Proc { child, n, what, since: unix_now() };
        let fp = failpoint.map(|f| format!(" with PGTRANSIT_FAILPOINT={f}")).unwrap_or_default();
        self.say(format!("started {what} #{n} (pid {}){fp}", p.pid()));
        p
    }

    fn output(&self, p: &Proc) -> String {
        let read = |ext: &str| {
            let f = self.dir.path().join(format!("{:03}-{}.{ext}", p.n, p.what));
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("--- {} #{} stdout\n{}\n--- stderr\n{}", p.what, p.n, read("out"), read("err"))
    }

    /// The gist of why a run ended: its error (from miette's `×` on), or its last lines.
    fn why(&self, p: &Proc) -> String {
        let f = self.dir.path().join(format!("{:03}-{}.err", p.n, p.what));
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim().trim_start_matches('│').trim())
            .filter(|l| !l.is_empty() && !l.contains(" INFO "))
            .collect();
        let from = lines.iter().rposition(|l| l.starts_with('×'));
        let s = match from {
            Some(i) => lines[i..].join(" "),
            None => lines[lines.len().saturating_sub(3)..].join(" | "),
        };
        match s.char_indices().nth(500) {
            Some((i, _)) => format!("{}...", &s[..i]),
            None => s,
        }
    }

    fn start_apply(&mut self, failpoint: Option<&str>) {
        assert!(self.apply.is_none());
        let p = self.spawn("apply", failpoint);
        self.apply = Some(p);
    }

    /// The apply's exit, if it exited (and then it is gone).
    fn apply_exited(&mut self) -> Option<(ExitStatus, Proc)> {
        let p = self.apply.as_mut()?;
        let status = p.child.try_wait().unwrap()?;
        let p = self.apply.take().unwrap();
        Some((status, p))
    }

    fn kill_apply(&mut self) {
        if let Some(mut p) = self.apply.take() {
            let _ = p.child.kill();
            let status = p.child.wait().unwrap();
            self.say(format!("apply #{} {}", p.n, describe(status)));
        }
    }

    /// SIGTERM, as an operator stops it: while streaming (`streaming`), it must stop cleanly
    /// (0); during the load it says `interrupted` (1), or a crash had ended it already.
    fn stop_apply(&mut self, streaming: bool) {
        let Some(mut p) = self.apply.take() else { return };
        let Some(status) = terminate(&mut p.child) else {
            let out = self.output(&p);
            panic!("apply #{} did not stop within 30 s of SIGTERM:\n{out}", p.n);
        };
        let why = self.why(&p);
        self.say(format!("stopped apply #{} with SIGTERM: {}", p.n, describe(status)));
        if status.code() != Some(0) && streaming {
            self.anomaly(format!(
                "apply #{} stopped with SIGTERM ended with {}: {why}",
                p.n,
                describe(status)
            ));
        }
    }

    /// Crashes a server (immediate stop), keeps it down for `downtime`, starts it again.
    fn crash(&mut self, source: bool, downtime: Duration) {
        let which = if source { "source" } else { "target" };
        // A crash moves the source's sequences on by what they had logged ahead: once the
        // cutover may have read them (from its `finishing` stage on), the target's may be below.
        if source
            && ["finishing", "verifying", "cleaning_up", "done"]
                .contains(&self.state()["cutover"]["status"].as_str().unwrap_or(""))
        {
            self.source_crashed_after_cutover = true;
        }
        let c = if source { &mut self.src } else { &mut self.tgt };
        c.crash().unwrap_or_else(|e| panic!("cannot crash the {which}: {e}"));
        std::thread::sleep(downtime);
        let mut attempt = 0;
        loop {
            let c = if source { &mut self.src } else { &mut self.tgt };
            match c.start_again() {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("starting the {which} again failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("cannot start the {which} again: {e}"),
            }
        }
        self.say(format!("{which} crashed, down {} ms, up again", downtime.as_millis()));
    }

    /// Drops or freezes pgtransit's connections to a server (returns when the freeze ends).
    /// While frozen, watches the apply: whether it exits, and whether it still reports (a
    /// stream that waits on a frozen connection stops reporting; one that gave up exits).
    fn network(&mut self, server: Server, how: Net) {
        let which = if server == Server::Source { "source" } else { "target" };
        let proxy = if server == Server::Source { &self.src_proxy } else { &self.tgt_proxy };
        let apply = &mut self.apply;
        let mut exited = None;
        let watch = |at: Duration| {
            if exited.is_none()
                && let Some(p) = apply.as_mut()
                && let Some(status) = p.child.try_wait().unwrap()
            {
                exited = Some(format!(
                    "apply #{} ended ({}) {:.1} s into the freeze",
                    p.n,
                    describe(status),
                    at.as_secs_f64()
                ));
            }
        };
        let what = match how {
            Net::Drop => format!("{} connections to the {which} dropped", proxy.drop_all()),
            Net::Freeze(d) => format!(
                "{} connections to the {which} frozen {} ms, forwarding again",
                proxy.freeze(d, watch),
                d.as_millis()
            ),
            Net::FreezeThenDrop(d) => {
                let n = proxy.freeze_then_drop(d, watch);
                format!("connections to the {which} frozen {} ms, then {n} dropped", d.as_millis())
            }
        };
        let seen = match (exited, how) {
            (_, Net::Drop) => String::new(),
            (Some(e), _) => format!(" ({e})"),
            // (The state's stream report; during the load: the running steps.)
            (None, _) => match self.state()["sync"]["reported_at"].as_f64() {
                Some(t) if t > 0.0 && self.state()["sync"]["streaming"] == true => {
                    format!(" (apply's last stream report {:.1} s before)", unix_now() - t)
                }
                _ => format!(" (not streaming; steps running: {})", self.running_steps()),
            },
        };
        self.say(format!("network: {what}{seen}"));
    }

    /// Injects a fault of this kind now; `runner` is the process to kill (the apply if none).
    fn inject(&mut self, kind: Kind, downtime: Duration, runner: Option<&mut Proc>) {
        match kind {
            Kind::Kill => match runner {
                Some(p) => {
                    let _ = p.child.kill();
                    let status = p.child.wait().unwrap();
                    let n = p.n;
                    self.say(format!("{} #{n} {}", p.what, describe(status)));
                }
                None => self.kill_apply(),
            },
            Kind::CrashSource => self.crash(true, downtime),
            Kind::CrashTarget => self.crash(false, downtime),
            Kind::Network { server, how } => self.network(server, how),
        }
        self.monitor.check("after a fault");
    }

    /// Whether this apply streams, caught up (a killed apply's state may still say it streamed).
    fn caught_up(&self, pid: u32) -> bool {
        let s = &self.state()["sync"];
        s["streaming"] == true
            && s["pid"].as_u64() == Some(u64::from(pid))
            && s["lag_seconds"].as_f64().is_some_and(|l| l < 2.0)
            && s["reported_at"].as_f64().is_some_and(|t| unix_now() - t < 3.0)
    }

    /// Waits until an apply streams, caught up, starting one if none runs and again if it
    /// exits. `expected_exits`: exits that are no anomaly (during the load, a crash ends it).
    fn resume_until_streaming(&mut self, expected_exits: bool) {
        let start = Instant::now();
        let mut exits = 0;
        let mut last_check = Instant::now();
        loop {
            match self.apply_exited() {
                Some((status, p)) => {
                    let why = self.why(&p);
                    let what = format!(
                        "apply #{} exited before streaming: {}: {why}",
                        p.n,
                        describe(status)
                    );
                    if expected_exits {
                        self.say(what);
                    } else {
                        self.anomaly(what);
                    }
                    if why.contains("in a read-only transaction") && self.source_fenced() {
                        // The fence of an interrupted cutover is still up and this apply did
                        // not lift it before writing to the source (it lifts it only when the
                        // stream starts): lifted by hand, as an operator would, to go on.
                        self.anomaly(format!(
                            "apply #{} could not resume: an interrupted cutover's fence was not \
                             lifted before the apply wrote to the source; lifting it by hand",
                            p.n
                        ));
                        sql(
                            &self.src,
                            "app",
                            "SET default_transaction_read_only = off; \
                             ALTER DATABASE app RESET default_transaction_read_only;",
                        );
                        exits = 0;
                    }
                    exits += 1;
                    assert!(
                        exits <= 4,
                        "apply does not resume: {exits} runs in a row exited before streaming \
                         (seed {}):\n{}",
                        self.seed,
                        self.output(&p)
                    );
                    std::thread::sleep(Duration::from_millis(300));
                    self.start_apply(None);
                }
                None if self.apply.is_none() => self.start_apply(None),
                None => {}
            }
            let pid = self.apply.as_ref().unwrap().pid();
            if self.caught_up(pid) {
                return;
            }
            if last_check.elapsed() > Duration::from_secs(1) {
                last_check = Instant::now();
                self.monitor.check("waiting for the stream");
            }
            if start.elapsed() > Duration::from_secs(90) {
                let out = self.output(self.apply.as_ref().unwrap());
                panic!(
                    "apply did not stream, caught up, within 90 s (hangs?) (seed {}):\n{out}",
                    self.seed
                );
            }
            self.check_time("waiting for the stream to catch up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sleeps `d`, minding the time limit.
    fn sleep(&self, d: Duration) {
        self.check_time("sleeping");
        std::thread::sleep(d);
    }

    fn cutover_stage(&self, since: f64) -> String {
        let c = &self.state()["cutover"];
        match c["requested_at"].as_f64() {
            Some(t) if t >= since => c["status"].as_str().unwrap_or("waiting").to_string(),
            _ => "waiting".into(),
        }
    }

    fn status_json(&self) -> serde_json::Value {
        run(self.dir.path(), &["status", &self.plan, "--format", "json"]).json()
    }

    /// Whether new sessions of the source's `app` are read-only (the cutover's fence).
    fn source_fenced(&self) -> bool {
        sql(&self.src, "app", "SHOW default_transaction_read_only") == "on"
    }

    // -- the phases ------------------------------------------------------------------------------

    /// The first step from `step` on (a long one, with `long`) that a fresh plan has to do.
    fn next_pending(&self, step: &str, load_steps: &[String], long: bool) -> Option<String> {
        let doc = run(self.dir.path(), &["plan", &self.plan, "--format", "json"]).json();
        let pending: Vec<&str> = doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["action"] != "unchanged")
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        let from = load_steps.iter().position(|s| s == step).unwrap();
        load_steps[from..]
            .iter()
            .find(|s| pending.contains(&s.as_str()) && (!long || is_long(s)))
            .cloned()
    }

    fn load_fault(&mut self, f: &Fault, load_steps: &[String]) {
        match &f.moment {
            Moment::Failpoint(fp) => {
                if self.apply.is_some() {
                    self.stop_apply(false);
                }
                // The step may be done already (copies run in parallel, an earlier fault landed
                // later than planned): the first one after it that a fresh plan still has.
                let (when, step) = fp.split_once(':').unwrap();
                let Some(step) = self.next_pending(step, load_steps, false) else {
                    self.say("no load step is left: kill -9 while catching up instead".into());
                    self.start_apply(None);
                    self.sleep(Duration::from_millis(500));
                    return self.inject(Kind::Kill, f.downtime, None);
                };
                let when = if step == "load:slot" { "after" } else { when };
                let fp = format!("{when}:{step}");
                self.start_apply(Some(&fp));
                self.await_failpoint(&fp, true);
                self.monitor.check("after a failpoint");
            }
            Moment::AtStep(step) => {
                let Some(step) = self.next_pending(step, load_steps, true) else {
                    self.say("no long load step is left: the fault lands while catching up".into());
                    if self.apply.is_none() {
                        self.start_apply(None);
                    }
                    self.sleep(Duration::from_millis(500));
                    return self.inject(f.kind, f.downtime, None);
                };
                if step != *step_planned(&f.moment) {
                    self.say(format!(
                        "{} is done: while {step} runs instead",
                        step_planned(&f.moment)
                    ));
                }
                let step = &step;
                if self.apply.is_none() {
                    self.start_apply(None);
                }
                let start = Instant::now();
                let landed = loop {
                    // (A record of an earlier run, killed while the step ran, is not this one.)
                    let since = self.apply.as_ref().unwrap().since.floor();
                    let record = &self.state()["steps"][step.as_str()];
                    let status = record["status"].as_str().unwrap_or("").to_string();
                    let now = record["started_at"].as_f64().is_some_and(|t| t >= since);
                    if status == "running" && now {
                        break format!("{step} running");
                    }
                    if status == "done" {
                        break format!("{step} had just ended; running: {}", self.running_steps());
                    }
                    if let Some((status, p)) = self.apply_exited() {
                        // Ended on its own: it should have waited for the server of an earlier
                        // fault.
                        let why = self.why(&p);
                        self.anomaly(format!(
                            "apply #{} ended during the load: {}: {why}",
                            p.n,
                            describe(status)
                        ));
                        self.start_apply(None);
                        continue;
                    }
                    let pid = self.apply.as_ref().unwrap().pid();
                    if self.caught_up(pid) {
                        break format!("{step} never seen running: streaming");
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(90),
                        "step {step} did not start within 90 s:\n{}",
                        self.output(self.apply.as_ref().unwrap())
                    );
                    self.check_time("waiting for a step");
                    std::thread::sleep(Duration::from_millis(5));
                };
                self.say(format!("landed: {landed}"));
                self.inject(f.kind, f.downtime, None);
                // A crash or a lost connection during the load is waited for (--retry-for): the
                // apply goes on by itself.
                std::thread::sleep(Duration::from_millis(300));
                if let Some((status, p)) = self.apply_exited() {
                    let why = self.why(&p);
                    let what = format!("apply #{} {}: {why}", p.n, describe(status));
                    if f.kind == Kind::Kill {
                        self.say(what);
                    } else {
                        self.anomaly(format!("{what} (it should have waited for the server)"));
                    }
                }
            }
            _ => unreachable!(),
        }
    }

    /// Waits for the apply started with failpoint `fp` to abort there (anything else is an
    /// anomaly). `or_streaming`: a failpoint the apply may pass by (its step done already) ends
    /// in a kill -9 once it streams.
    fn await_failpoint(&mut self, fp: &str, or_streaming: bool) {
        let start = Instant::now();
        loop {
            if let Some((status, p)) = self.apply_exited() {
                let why = self.why(&p);
                self.say(format!("apply #{} {}", p.n, describe(status)));
                if status.signal() != Some(6) {
                    self.anomaly(format!(
                        "apply #{} ended with {} before failpoint {fp}: {why}",
                        p.n,
                        describe(status)
                    ));
                }
                return;
            }
            let pid = self.apply.as_ref().unwrap().pid();
            if or_streaming && self.caught_up(pid) {
                self.say(format!("failpoint {fp} not reached: kill -9 while streaming"));
                return self.kill_apply();
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "apply did not reach failpoint {fp} within 90 s:\n{}",
                self.output(self.apply.as_ref().unwrap())
            );
            self.check_time("waiting for a failpoint");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The apply aborts during continuous verification, at a consistent point; the next one
    /// resumes.
    fn verify_fault(&mut self) {
        if self.apply.is_some() {
            self.stop_apply(false);
        }
        self.start_apply(Some(VERIFY_FAILPOINT));
        self.await_failpoint(VERIFY_FAILPOINT, false);
        self.start_apply(None);
    }

    fn sync_fault(&mut self, f: &Fault) {
        if matches!(f.moment, Moment::VerifyFailpoint) {
            return self.verify_fault();
        }
        let Moment::After { delay, catching_up } = f.moment else { unreachable!() };
        if catching_up {
            if self.apply.is_none() {
                self.start_apply(None);
            }
        } else {
            self.resume_until_streaming(false);
        }
        self.sleep(delay);
        if let Some((status, p)) = self.apply_exited() {
            let why = self.why(&p);
            self.anomaly(format!(
                "apply #{} exited while streaming: {}: {why}",
                p.n,
                describe(status)
            ));
        }
        let s = &self.state()["sync"];
        let landed = format!(
            "streaming {}, lag {} s, applied {} transactions",
            s["streaming"], s["lag_seconds"], s["applied"]["transactions"]
        );
        self.say(format!("landed: {landed}"));
        self.inject(f.kind, f.downtime, None);
        if f.kind == Kind::Kill {
            self.start_apply(None);
        }
        if matches!(f.kind, Kind::Network { .. }) {
            // A streaming apply rides out a network fault (it reconnects within --retry-for):
            // it must stream, caught up, again without having exited.
            self.resume_until_streaming(false);
            self.say("streaming again after the network fault".into());
        }
    }

    /// One cutover attempt, with a fault or (`None`) without. Returns whether the cutover is
    /// done.
    fn cutover_attempt(&mut self, f: Option<&Fault>, cutover_streams: bool) -> bool {
        let failpoint = match f.map(|f| &f.moment) {
            Some(Moment::CutoverFailpoint(fp)) => Some(fp.clone()),
            _ => None,
        };
        if cutover_streams {
            // `pgtransit cutover` resumes the stream itself when no apply runs.
            self.stop_apply(true);
        } else if let Some(fp) = &failpoint {
            self.stop_apply(true);
            self.start_apply(Some(fp));
            self.resume_until_streaming(false);
        } else {
            self.resume_until_streaming(false);
        }
        let since = unix_now();
        let mut cut =
            self.spawn("cutover", if cutover_streams { failpoint.as_deref() } else { None });
        let started = Instant::now();
        let mut landed = String::new();
        if let Some(f) = f {
            match &f.moment {
                Moment::CutoverFailpoint(fp) => {
                    // The process that streams aborts there by itself.
                    loop {
                        let runner_done = if cutover_streams {
                            cut.child.try_wait().unwrap().is_some()
                        } else {
                            self.apply
                                .as_mut()
                                .is_none_or(|p| p.child.try_wait().unwrap().is_some())
                        };
                        if runner_done {
                            break;
                        }
                        assert!(
                            started.elapsed() < Duration::from_secs(90),
                            "the cutover did not reach failpoint {fp} within 90 s:\n{}",
                            self.output(&cut)
                        );
                        self.check_time("waiting for a cutover failpoint");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    landed = format!("stage {} (failpoint {fp})", self.cutover_stage(since));
                }
                Moment::Stage(want) => {
                    let limit = Duration::from_secs(90).saturating_sub(started.elapsed());
                    let reached = poll(limit, Duration::from_millis(2), || {
                        let stage = self.cutover_stage(since);
                        if stage_rank(&stage) >= stage_rank(want) {
                            landed = format!("stage {stage}");
                            return true;
                        }
                        if let Some(status) = cut.child.try_wait().unwrap() {
                            landed = format!(
                                "after the cutover command ended ({}) at stage {stage}",
                                describe(status)
                            );
                            return true;
                        }
                        self.check_time("waiting for a cutover stage");
                        false
                    });
                    assert!(
                        reached,
                        "the cutover did not reach stage {want} within 90 s:\n{}",
                        self.output(&cut)
                    );
                    self.say(format!("landed: {landed}"));
                    let runner = if cutover_streams { Some(&mut cut) } else { None };
                    self.inject(f.kind, f.downtime, runner);
                }
                _ => unreachable!(),
            }
        }
        // The cutover command ends: done, failed, or the apply it waited for is gone.
        let mut status = None;
        poll(
            Duration::from_secs(120).saturating_sub(started.elapsed()),
            Duration::from_millis(50),
            || {
                status = cut.child.try_wait().unwrap();
                if status.is_none() {
                    self.check_time("waiting for the cutover command");
                }
                status.is_some()
            },
        );
        let Some(status) = status else {
            let _ = cut.child.kill();
            panic!(
                "the cutover command hangs (120 s) (seed {}):\n{}",
                self.seed,
                self.output(&cut)
            );
        };
        let why = self.why(&cut);
        let stage = self.cutover_stage(since);
        if failpoint.is_some() {
            self.say(format!("landed: {landed}"));
        }
        self.say(format!("cutover #{} {}, stage {stage}: {why}", cut.n, describe(status)));
        let done = stage == "done";
        if !cutover_streams
            && done
            && let Some(mut p) = self.apply.take()
        {
            // The apply that cut over ends by itself (unless the fault killed it after).
            let s = p.child.wait().unwrap();
            if s.code() != Some(0) {
                let out = self.output(&p);
                self.anomaly(format!(
                    "apply #{} cut over but ended with {}: {out}",
                    p.n,
                    describe(s)
                ));
            }
        }
        if f.is_none() {
            assert!(
                status.code() == Some(0) && done,
                "the cutover without a fault failed (seed {}):\n{}\n{}",
                self.seed,
                self.output(&cut),
                self.apply.as_ref().map(|p| self.output(p)).unwrap_or_default()
            );
            return true;
        }
        if done {
            return true;
        }
        if status.code() == Some(0) {
            self.anomaly(format!("cutover #{} exited 0 but the state says {stage}", cut.n));
        }
        // Whoever runs next lifts an interrupted cutover's fence: the source takes writes again.
        if let Some((status, p)) = self.apply_exited() {
            let why = self.why(&p);
            self.say(format!("apply #{} {}: {why}", p.n, describe(status)));
        }
        self.resume_until_streaming(false);
        if self.source_fenced() {
            let st = self.status_json();
            self.anomaly(format!(
                "the source is still fenced (read-only) while apply streams again after the \
                 interrupted cutover; status: {}",
                st["cutover"]
            ));
        }
        false
    }
}

// Part of `cargo test` (20 faults, a few minutes); a failure prints the seed that replays it.
#[test]
fn chaos_an_online_migration_under_writes_survives_kills_and_crashes_at_seeded_moments() {
    let seed = seed();
    let total = env_usize("PGTRANSIT_CHAOS_FAULTS", 20).max(5);
    // Generous: CI runs it beside the other tests on a small machine; a hang is what it catches.
    let limit = Duration::from_secs(420 + 10 * total.saturating_sub(20) as u64);
    eprintln!(
        "chaos: seed {seed}, {total} faults, the writer commits {} (replay: PGTRANSIT_CHAOS_SEED={seed} \
         PGTRANSIT_CHAOS_FAULTS={total} cargo test --test integration chaos -- --nocapture)",
        if std::env::var("PGTRANSIT_CHAOS_WRITER_COMMIT").is_ok_and(|v| v == "sync") {
            "synchronously"
        } else {
            "asynchronously"
        }
    );
    let started = Instant::now();

    let src = logical_source("chaos-src");
    let tgt = cluster("chaos-tgt", &[]);
    let (src_proxy, tgt_proxy) = (Proxy::start(src.port()), Proxy::start(tgt.port()));
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(&src, "app", SOURCE_SQL);
    let dir = TempDir::new("chaos");
    // pgtransit goes through the proxies (network faults); see `Proxy`.
    // `PGTRANSIT_CHAOS_DIRECT=1` connects it directly instead (network faults then do nothing).
    let direct = std::env::var("PGTRANSIT_CHAOS_DIRECT").is_ok_and(|v| v == "1");
    let (src_url, tgt_url) = if direct {
        (src.url("app"), tgt.url("app"))
    } else {
        (src_proxy.url("app"), tgt_proxy.url("app"))
    };
    let text = plan_yaml(
        NAME,
        &src_url,
        &tgt_url,
        "mode: online\nsync:\n  tables_without_key: replica_identity_full\n",
    );
    let plan = dir.write(&format!("{NAME}.yaml"), &text).to_str().unwrap().to_string();

    // The steps of the plan, where load faults land.
    let doc = run(dir.path(), &["plan", &plan, "--format", "json"]).json();
    let steps = doc["steps"].as_array().unwrap();
    let work = |s: &&serde_json::Value| s["action"] != "unchanged";
    let load_steps: Vec<String> = steps
        .iter()
        .filter(work)
        .filter(|s| ["schema", "load", "post_load", "sync"].contains(&s["phase"].as_str().unwrap()))
        .map(|s| s["id"].as_str().unwrap().to_string())
        .filter(|id| id != "sync:stream")
        .collect();
    let sequences: Vec<String> = steps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .filter(|id| id.starts_with("cutover:sequence:"))
        .collect();
    assert!(load_steps.len() > 20 && !sequences.is_empty(), "{doc}");

    let mut rng = Rng(seed);
    let faults = plan_faults(&mut rng, total, &load_steps, &sequences);
    eprintln!("chaos: {} faults planned:", faults.len());
    for (i, f) in faults.iter().enumerate() {
        eprintln!("  #{:<3} {f}", i + 1);
    }
    let final_streams = rng.chance(50);
    // Freezes add to the time a run takes.
    let frozen: Duration = faults
        .iter()
        .map(|f| match f.kind {
            Kind::Network { how: Net::Freeze(d) | Net::FreezeThenDrop(d), .. } => d,
            _ => Duration::ZERO,
        })
        .sum();
    let limit = limit + frozen;

    // The test clusters commit asynchronously (`synchronous_commit = off`), as many
    // applications do; `PGTRANSIT_CHAOS_WRITER_COMMIT=sync` has the writer commit synchronously.
    let sync_commit = std::env::var("PGTRANSIT_CHAOS_WRITER_COMMIT").is_ok_and(|v| v == "sync");
    let writer = Writer::start(
        src.bin("psql"),
        format!(
            "{} connect_timeout=2 application_name=chaos-writer options=-csynchronous_commit={}",
            src.conninfo("app"),
            if sync_commit { "on" } else { "off" }
        ),
    );
    let monitor = Monitor::start(&src);
    let mut c = Chaos {
        seed,
        dir,
        plan,
        src,
        tgt,
        src_proxy,
        tgt_proxy,
        writer,
        monitor,
        apply: None,
        runs: 0,
        started,
        limit,
        current: 0,
        timeline: vec![],
        anomalies: vec![],
        source_crashed_after_cutover: false,
    };

    let mut injected = 0;
    let mut done = false;
    let mut phase = None;
    for (i, f) in faults.iter().enumerate() {
        c.current = i + 1;
        if phase != Some(f.phase) {
            phase = Some(f.phase);
            if f.phase == Phase::Sync {
                c.resume_until_streaming(false);
                c.say("load done: streaming".into());
            }
            if f.phase == Phase::Cutover {
                // Between the sync and the cutover: everything committed so far is on the target.
                c.resume_until_streaming(false);
                c.writer.pause();
                c.resume_until_streaming(false);
                // Every table's rows identical on both sides (nothing writes meanwhile).
                let same = poll(Duration::from_secs(30), Duration::from_millis(300), || {
                    c.check_time("waiting for identical rows");
                    rows_differ(&c.src, &c.tgt, "app").is_empty()
                });
                assert!(
                    same,
                    "rows still differ after 30 s (seed {}): {:#?}\n{}",
                    c.seed,
                    rows_differ(&c.src, &c.tgt, "app"),
                    c.apply.as_ref().map(|p| c.output(p)).unwrap_or_default()
                );
                c.say("sync: rows identical on both sides (writer paused)".into());
                c.writer.resume();
            }
        }
        c.say(format!("fault #{} {f}", i + 1));
        if done {
            // The cutover completed before this fault: a crash of either server then must not
            // hurt the target's data (the apply is gone: nothing to kill).
            let kind = match f.kind {
                Kind::CrashTarget | Kind::Network { server: Server::Target, .. } => {
                    Kind::CrashTarget
                }
                _ => Kind::CrashSource,
            };
            c.say(format!("the cutover is done: {kind} instead"));
            c.inject(kind, f.downtime, None);
            injected += 1;
            continue;
        }
        match f.phase {
            Phase::Load => c.load_fault(f, &load_steps),
            Phase::Sync => c.sync_fault(f),
            Phase::Cutover => done = c.cutover_attempt(Some(f), f.cutover_streams),
        }
        injected += 1;
    }
    assert!(injected == faults.len() && injected >= total);
    c.current = 0;
    if !done {
        c.say(format!(
            "the last cutover, without a fault [{}]",
            if final_streams { "`cutover` streams" } else { "apply streams" }
        ));
        c.cutover_attempt(None, final_streams);
    }
    let elapsed_cutover = c.started.elapsed();

    // -- the checks ------------------------------------------------------------------------------
    c.writer.stop();
    c.monitor.check("at the end");
    c.monitor.stop();
    let st = c.status_json();
    assert_eq!(st["phase"], "cut_over", "{st}");
    let (src, tgt) = (&c.src, &c.tgt);
    let (a, b) = (table_checksums(src, "app"), table_checksums(tgt, "app"));
    let differ: Vec<&String> = a.keys().filter(|t| a.get(*t) != b.get(*t)).collect();
    assert!(differ.is_empty(), "rows differ in {differ:?}:\nsource {a:#?}\ntarget {b:#?}");
    assert_same_schema(&schema_dump(src, "app"), &schema_dump(tgt, "app"));
    assert_eq!(sql(src, "app", "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"), "");
    assert_eq!(sql(src, "app", "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        sql(tgt, "app", "SELECT coalesce(string_agg(roname, ','), '') FROM pg_replication_origin"),
        ""
    );
    // The writer's own invariant, on the source; and nothing doubled on the target.
    let ticks = sql(src, "app", "SELECT count(*) FROM ticks");
    assert_eq!(ticks, sql(src, "app", "SELECT n FROM counter"), "the source's own invariant");
    assert_eq!(sql(tgt, "app", "SELECT count(DISTINCT i) FROM ticks"), ticks);
    // Sequences: the target hands out no value the source handed out (a source crash after
    // the cutover may move the source's on by what it had logged ahead; so compare with the
    // source's values only when none happened).
    let mut wrong = vec![];
    for (seq, used) in [
        ("invoice_no", "SELECT coalesce(max(invoice), 0) FROM orders WHERE id > 100000"),
        ("orders_id_seq", "SELECT max(id) FROM orders"),
        ("customers_id_seq", "SELECT max(id) FROM customers"),
    ] {
        let q = format!("SELECT last_value FROM {seq}");
        let (s, t): (i64, i64) =
            (sql(src, "app", &q).parse().unwrap(), sql(tgt, "app", &q).parse().unwrap());
        let used: i64 = sql(src, "app", used).parse().unwrap();
        if t < used {
            wrong.push(format!(
                "sequence {seq}: {t} on the target, below values the source used ({used})"
            ));
        } else if t < s && !c.source_crashed_after_cutover {
            wrong.push(format!("sequence {seq}: {t} on the target, below the source's {s}"));
        }
    }
    for w in wrong {
        c.anomaly(w);
    }
    let slots = {
        let l = c.monitor.log.lock().unwrap();
        format!(
            "{} samples of the source's slots ({} unanswered: the source was down or busy), at \
             most {} slot at once",
            l.samples, l.unanswered, l.max
        )
    };
    let summary = format!(
        "chaos seed {seed}: {injected} faults, cutover after {:.1} s, checks done after {:.1} s; \
         {} committed transactions on the source ({}); {slots}; {} pgtransit runs; {} and {} \
         connections through the source's and the target's proxies",
        elapsed_cutover.as_secs_f64(),
        c.started.elapsed().as_secs_f64(),
        ticks,
        c.writer.stats(),
        c.runs,
        c.src_proxy.accepted(),
        c.tgt_proxy.accepted(),
    );
    c.say(summary);
    assert!(
        c.anomalies.is_empty(),
        "chaos seed {seed}: pgtransit misbehaved:\n{}",
        c.anomalies.join("\n")
    );
}
