//! Helpers for online migrations: `apply` in the background, its state and output, waiting
//! for it to stream and for both sides to hold the same rows, stopping it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{LocalCluster, TempDir, pgtransit, run, table_checksums};

pub fn state_file(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(".pgtransit").join(name).join("state.json")
}

pub fn state(dir: &TempDir, name: &str) -> serde_json::Value {
    std::fs::read_to_string(state_file(dir, name))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// `apply --auto-approve` in the background, its output in files of `dir`.
pub fn start_apply(dir: &TempDir, plan: &str, env: &[(&str, &str)]) -> Child {
    start_apply_with(dir, plan, env, &[])
}

/// [`start_apply`], with more arguments.
pub fn start_apply_with(dir: &TempDir, plan: &str, env: &[(&str, &str)], args: &[&str]) -> Child {
    let out = std::fs::File::create(dir.path().join("apply.out")).unwrap();
    let err = std::fs::File::create(dir.path().join("apply.err")).unwrap();
    let mut cmd = pgtransit(dir.path());
    cmd.args(["apply", plan, "--auto-approve"]).args(args);
    cmd.stdout(out).stderr(err).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start pgtransit apply")
}

pub fn apply_output(dir: &TempDir) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    format!("--- stdout\n{}\n--- stderr\n{}", read("apply.out"), read("apply.err"))
}

/// Polls `ok` every `every` until it holds (true), or until `limit` has passed (false): the one
/// polling loop of the suite, under [`wait_for`] and the other waits.
pub fn poll(limit: Duration, every: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ok() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Waits until `ok` holds, or panics with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, ok: impl FnMut() -> bool) {
    assert!(
        poll(limit, Duration::from_millis(100), ok),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Waits (`limit` at most) until `child` exits: its status, or `None` if it still runs.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll(limit, Duration::from_millis(50), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// Waits (30 s at most) until `step` of migration `name` is recorded `running` in its state,
/// while `child` (the apply) still runs; panics with the state and the apply's output if it
/// ends first or the step does not start.
pub fn wait_step_running(dir: &TempDir, name: &str, step: &str, child: &mut Child) {
    let running = poll(Duration::from_secs(30), Duration::from_millis(20), || {
        if state(dir, name)["steps"][step]["status"] == "running" {
            return true;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before {step}:\n{}",
            apply_output(dir)
        );
        false
    });
    assert!(running, "{step} never ran: {}\n{}", state(dir, name), apply_output(dir));
}

/// Whether `member`'s state says that `child` (this apply, not one killed before it, whose
/// state may still say it streamed) streams.
pub fn streams_in(dir: &TempDir, member: &str, child: &Child) -> bool {
    let s = &state(dir, member)["sync"];
    s["streaming"] == true && s["pid"].as_u64() == Some(u64::from(child.id()))
}

/// Waits until this background apply streams with no lag (as `status` says: a killed apply's
/// state may still say it streamed).
pub fn wait_streaming(dir: &TempDir, name: &str, child: &mut Child) {
    let plan = dir.path().join(format!("{name}.yaml"));
    let me = format!("pid {} ", child.id());
    let streaming = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        let s = state(dir, name);
        if s["sync"]["streaming"] == true && s["sync"]["lag_seconds"].as_f64() == Some(0.0) {
            let st = run(dir.path(), &["status", plan.to_str().unwrap(), "--format", "json"]);
            let st = st.json();
            if st["phase"] == "streaming" && st["running"].as_str().is_some_and(|r| r.contains(&me))
            {
                return true;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("apply exited ({status}) before streaming:\n{}", apply_output(dir));
        }
        false
    });
    assert!(streaming, "apply did not start streaming within 60 s:\n{}", apply_output(dir));
}

/// Waits until every table's rows of `app` are identical on both sides (see
/// [`wait_identical_in`]).
pub fn wait_identical(src: &LocalCluster, tgt: &LocalCluster, dir: &TempDir) {
    wait_identical_in(src, tgt, "app", dir)
}

/// Waits (30 s at most) until every table's rows of `db` are identical on both sides; panics
/// naming the tables that still differ, with the background apply's output from `dir`.
pub fn wait_identical_in(src: &LocalCluster, tgt: &LocalCluster, db: &str, dir: &TempDir) {
    let same = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        rows_differ(src, tgt, db).is_empty()
    });
    if !same {
        let differ: Vec<String> = rows_differ(src, tgt, db).into_keys().collect();
        panic!("rows still differ after 30 s in {differ:?}:\n{}", apply_output(dir));
    }
}

/// The tables of `db` whose rows differ between the two sides (or that one side lacks), with
/// each side's checksum (see [`table_checksums`]); empty when both hold the same rows.
pub fn rows_differ(
    src: &LocalCluster,
    tgt: &LocalCluster,
    db: &str,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let (a, b) = (table_checksums(src, db), table_checksums(tgt, db));
    let tables: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    tables
        .into_iter()
        .filter(|t| a.get(*t) != b.get(*t))
        .map(|t| (t.clone(), (a.get(t).cloned(), b.get(t).cloned())))
        .collect()
}

/// Stops the background apply with SIGTERM and returns its exit code.
pub fn stop(child: &mut Child) -> i32 {
    match terminate(child) {
        Some(status) => status.code().unwrap_or(-1),
        None => panic!("apply did not stop within 30 s of SIGTERM"),
    }
}

/// SIGTERM, as an operator stops a run, and its exit status; `None` (and killed) if it had not
/// stopped 30 s later.
pub fn terminate(child: &mut Child) -> Option<ExitStatus> {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = wait_exit(child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Runs `statement(i)` for i = 1, 2, ... with psql on `db` of `c`, every `pause`, until `stop` is
/// set (errors, as under a cutover's fence, are ignored). Returns how many went through.
pub fn keep_writing_with(
    c: &LocalCluster,
    db: &str,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    statement: impl Fn(usize) -> String + Send + 'static,
) -> std::thread::JoinHandle<usize> {
    let (psql, host, port, db) = (c.bin("psql"), c.host().to_string(), c.port(), db.to_string());
    std::thread::spawn(move || {
        let mut done = 0;
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let ok = std::process::Command::new(&psql)
                .args(["-h", &host, "-p", &port.to_string(), "-U", "postgres", "-d", &db])
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &statement(i)])
                .output()
                .is_ok_and(|o| o.status.success());
            done += usize::from(ok);
            std::thread::sleep(pause);
        }
        done
    })
}

/// Slots, publications and replication origins left in `db` of `c` (0: none).
pub fn leftovers(c: &LocalCluster, db: &str) -> String {
    super::sql(
        c,
        db,
        "SELECT (SELECT count(*) FROM pg_replication_slots) \
         + (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_origin)",
    )
}
