//! Helpers for online migrations: `apply` in the background, its state and output, waiting
//! for it to stream and for both sides to hold the same rows, stopping it.

use std::path::PathBuf;
use std::process::{Child, Stdio};
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

/// Waits until `ok` holds, or panics with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until this background apply streams with no lag (as `status` says: a killed apply's
/// state may still say it streamed).
pub fn wait_streaming(dir: &TempDir, name: &str, child: &mut Child) {
    let start = Instant::now();
    let plan = dir.path().join(format!("{name}.yaml"));
    let me = format!("pid {} ", child.id());
    loop {
        let s = state(dir, name);
        if s["sync"]["streaming"] == true && s["sync"]["lag_seconds"].as_f64() == Some(0.0) {
            let st = run(dir.path(), &["status", plan.to_str().unwrap(), "--format", "json"]);
            let st = st.json();
            if st["phase"] == "streaming" && st["running"].as_str().is_some_and(|r| r.contains(&me))
            {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("apply exited ({status}) before streaming:\n{}", apply_output(dir));
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "apply did not start streaming within 60 s:\n{}",
            apply_output(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every table's rows of `app` are identical on both sides (see
/// [`wait_identical_in`]).
pub fn wait_identical(src: &LocalCluster, tgt: &LocalCluster, dir: &TempDir) {
    wait_identical_in(src, tgt, "app", dir)
}

/// Waits (30 s at most) until every table's rows of `db` are identical on both sides; panics
/// naming the tables that still differ, with the background apply's output from `dir`.
pub fn wait_identical_in(src: &LocalCluster, tgt: &LocalCluster, db: &str, dir: &TempDir) {
    let start = Instant::now();
    loop {
        let (a, b) = (table_checksums(src, db), table_checksums(tgt, db));
        if a == b {
            return;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let differ: Vec<&String> = a.keys().filter(|t| a.get(*t) != b.get(*t)).collect();
            panic!("rows still differ after 30 s in {differ:?}:\n{}", apply_output(dir));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the background apply with SIGTERM and returns its exit code.
pub fn stop(child: &mut Child) -> i32 {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("apply did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
