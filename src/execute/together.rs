//! Several databases cut over together: one apply process streams each database on a thread of
//! its own, and their cutovers meet twice.
//!
//! - **Before the fence**: a database's fence goes up only once every database is ready (its
//!   cutover asked for and its lag under `sync.max_lag`), or once another one's fence is up.
//! - **Between verification and clean-up**: a verified database waits for every other one. The
//!   first that sees them all verified records the decision to go, durably (a file written and
//!   renamed in the migration's state directory) before any of them cleans up; one that failed
//!   (its fence lifted), a stop on request, or a database that did not put its fence up within
//!   [`WAIT`] decides to abort, and every database lifts its fence. All of them, or none, are
//!   cut over. (Databases whose fence is up are waited for as long as they drain and verify:
//!   each ends verified or failed.)
//!
//! After a crash, the file says what was decided: a database verified and waiting (state
//! `verified`) finishes its clean-up if the decision was to go, and lifts its fence otherwise
//! (as any cutover interrupted before it was verified).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Cancel;

/// How long a verified database waits for the others to put their fence up (not ready: a lag
/// over `sync.max_lag`) before the cutover is abandoned.
pub const WAIT: Duration = Duration::from_secs(120);

/// The file, in the migration's state directory, that records the decision.
pub const DECISION_FILE: &str = "cutover.decision";

/// What the databases' cutover came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every database was verified: each cleans up; the target is the primary.
    Go,
    /// Each lifts its fence; the source takes writes again.
    Abort(String),
}

#[derive(Default)]
struct Inner {
    ready: BTreeMap<String, bool>,
    fencing: bool,
    fenced: BTreeSet<String>,
    /// A database stopped (an error, a stop on request) before any fence went up: none may.
    stopped: bool,
    verified: BTreeSet<String>,
    decision: Option<Decision>,
}

/// The meeting points of the databases' cutovers (see the module's documentation).
pub struct Together {
    members: Vec<String>,
    file: PathBuf,
    inner: Mutex<Inner>,
}

impl Together {
    /// For `members` (the databases that stream), deciding in `dir`'s [`DECISION_FILE`].
    pub fn new(members: Vec<String>, dir: &Path) -> Together {
        Together { members, file: dir.join(DECISION_FILE), inner: Mutex::default() }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `member`, `ready` or not, may put its fence up now: every database is ready, or
    /// one's fence is up already (and nothing was decided).
    pub fn may_fence(&self, member: &str, ready: bool) -> bool {
        let mut inner = self.inner();
        inner.ready.insert(member.to_string(), ready);
        if inner.decision.is_some() || inner.stopped || !ready {
            return false;
        }
        let all = self.members.iter().all(|m| inner.ready.get(m).copied().unwrap_or(false));
        if all || inner.fencing {
            inner.fencing = true;
            inner.fenced.insert(member.to_string());
            return true;
        }
        false
    }

    /// Whether a database's fence is up (or going up): the others follow as soon as they can.
    pub fn fencing(&self) -> bool {
        let inner = self.inner();
        inner.fencing && inner.decision.is_none()
    }

    /// The decision, once there is one.
    pub fn decided(&self) -> Option<Decision> {
        self.inner().decision.clone()
    }

    /// `member` failed, or stopped, before it was verified: once a fence is up, the others
    /// abort (unless every database was verified already, and went); before, no fence may go
    /// up in this run.
    pub fn failed(&self, member: &str, reason: &str) {
        let mut inner = self.inner();
        if !inner.fencing {
            inner.stopped = true;
            return;
        }
        if inner.decision.is_none() {
            let why = format!("database {member}: {reason}");
            let _ = record(&self.file, &Decision::Abort(why.clone()));
            inner.decision = Some(Decision::Abort(why));
        }
    }

    /// `member` is verified: waits for every other database (those whose fence is not up, at
    /// most [`WAIT`]; none past a stop on request), and says what was decided. "Go" is on disk before it is returned.
    pub async fn verified(&self, member: &str, cancel: &Cancel) -> Decision {
        let started = Instant::now();
        {
            let mut inner = self.inner();
            inner.verified.insert(member.to_string());
            if inner.decision.is_none() && self.members.iter().all(|m| inner.verified.contains(m)) {
                inner.decision = Some(match record(&self.file, &Decision::Go) {
                    Ok(()) => Decision::Go,
                    Err(e) => Decision::Abort(format!(
                        "the decision to go could not be recorded in {}: {e}",
                        self.file.display()
                    )),
                });
            }
        }
        loop {
            if let Some(d) = self.decided() {
                return d;
            }
            // Those whose fence is not up yet (not ready) are waited for at most WAIT.
            let unfenced: Vec<String> = {
                let inner = self.inner();
                self.members.iter().filter(|m| !inner.fenced.contains(*m)).cloned().collect()
            };
            if cancel.requested() {
                self.failed(member, "stopped on request while the others were being verified");
            } else if !unfenced.is_empty() && started.elapsed() > WAIT {
                self.failed(
                    member,
                    &format!(
                        "waited {} s for {} to be ready for the cutover (lag under \
                         sync.max_lag) and fenced",
                        WAIT.as_secs(),
                        unfenced.join(", ")
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The load jobs of several databases: `jobs` permits, each to the earliest database (in the
/// migration's order) that waits for one. The first database's copies take every job they can
/// use, so it streams first, and a later database's slot is created only once it is its turn
/// (its WAL kept from then, not from the start of the whole load).
pub struct Pool {
    inner: Mutex<PoolInner>,
    notify: tokio::sync::Notify,
}

struct PoolInner {
    free: usize,
    /// How many wait, per database rank.
    waiting: BTreeMap<usize, usize>,
}

/// A job of the pool, given back when dropped.
pub struct Permit<'a>(&'a Pool);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.inner().free += 1;
        self.0.notify.notify_waiters();
    }
}

/// Counts a waiter while it waits (also when its future is dropped).
struct Waiting<'a>(&'a Pool, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.inner();
        if let Some(n) = inner.waiting.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                inner.waiting.remove(&self.1);
            }
        }
        drop(inner);
        self.0.notify.notify_waiters();
    }
}

impl Pool {
    /// `jobs` permits (at least one).
    pub fn new(jobs: usize) -> Pool {
        Pool {
            inner: Mutex::new(PoolInner { free: jobs.max(1), waiting: BTreeMap::new() }),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for database `rank`, once one is free and no earlier database waits.
    pub async fn acquire(&self, rank: usize) -> Permit<'_> {
        *self.inner().waiting.entry(rank).or_default() += 1;
        let waiting = Waiting(self, rank);
        loop {
            // Created before looking, so a release between the look and the wait is not lost.
            let notified = self.notify.notified();
            {
                let mut inner = self.inner();
                if inner.free > 0 && inner.waiting.keys().next() == Some(&rank) {
                    inner.free -= 1;
                    drop(inner);
                    drop(waiting);
                    return Permit(self);
                }
            }
            notified.await;
        }
    }
}

/// What the file in `dir` says was decided (none: no cutover got that far, or it was cleared).
pub fn recorded(dir: &Path) -> Option<Decision> {
    let text = std::fs::read_to_string(dir.join(DECISION_FILE)).ok()?;
    let text = text.trim_end();
    match text.split_once(' ').map_or((text, ""), |(a, b)| (a, b)) {
        ("go", _) => Some(Decision::Go),
        ("abort", why) => Some(Decision::Abort(why.to_string())),
        _ => None,
    }
}

/// Forgets an earlier decision (a new attempt decides again).
pub fn clear(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(DECISION_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `decision` durably: a file of its own, synced, renamed into place, the directory
/// synced.
fn record(file: &Path, decision: &Decision) -> std::io::Result<()> {
    let text = match decision {
        Decision::Go => "go\n".to_string(),
        Decision::Abort(why) => format!("abort {}\n", why.replace('\n', " ")),
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension("decision.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgtransit-together-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn two(dir: &Path) -> Together {
        Together::new(vec!["a".into(), "b".into()], dir)
    }

    #[tokio::test]
    async fn the_pool_gives_a_free_job_to_the_earliest_database_waiting() {
        let pool = std::sync::Arc::new(Pool::new(1));
        let held = pool.acquire(0).await;
        let order = std::sync::Arc::new(Mutex::new(vec![]));
        let mut waiters = vec![];
        // A later database asks first, then the first one.
        for rank in [2, 1, 0] {
            let (pool, order) = (pool.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _p = pool.acquire(rank).await;
                order.lock().unwrap().push(rank);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        let _again = pool.acquire(5).await;
    }

    #[test]
    fn a_database_stopping_before_any_fence_decides_nothing_but_keeps_every_fence_down() {
        let dir = scratch("stopped");
        let t = two(dir.as_path());
        assert!(!t.may_fence("a", true));
        t.failed("b", "schema drift");
        assert_eq!(t.decided(), None, "no cutover was under way: nothing to abandon");
        assert_eq!(recorded(dir.as_path()), None);
        assert!(!t.may_fence("a", true) && !t.may_fence("b", true));
    }

    #[test]
    fn no_fence_goes_up_until_every_database_is_ready_then_each_may() {
        let dir = scratch("fence");
        let t = two(dir.as_path());
        assert!(!t.may_fence("a", true), "b has not said it is ready");
        assert!(!t.may_fence("b", false));
        assert!(t.may_fence("b", true), "both ready");
        assert!(t.may_fence("a", true), "one fence is up: the other follows");
        assert!(!t.may_fence("a", false), "never while not ready itself");
    }

    #[tokio::test]
    async fn go_is_recorded_on_disk_only_when_every_database_is_verified() {
        let dir = scratch("go");
        let t = std::sync::Arc::new(two(dir.as_path()));
        let cancel = Cancel::default();
        let waiting = {
            let (t, cancel) = (t.clone(), cancel.clone());
            tokio::spawn(async move { t.verified("a", &cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(recorded(dir.as_path()), None, "b is not verified yet");
        assert_eq!(t.verified("b", &cancel).await, Decision::Go);
        assert_eq!(waiting.await.unwrap(), Decision::Go);
        assert_eq!(recorded(dir.as_path()), Some(Decision::Go));
        clear(dir.as_path()).unwrap();
        assert_eq!(recorded(dir.as_path()), None);
    }

    #[tokio::test]
    async fn one_database_failing_aborts_the_verified_ones_and_no_fence_goes_up_after() {
        let dir = scratch("abort");
        let t = std::sync::Arc::new(two(dir.as_path()));
        assert!(!t.may_fence("b", true) && t.may_fence("a", true), "both ready: a fences");
        let cancel = Cancel::default();
        let waiting = {
            let (t, cancel) = (t.clone(), cancel.clone());
            tokio::spawn(async move { t.verified("a", &cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.failed("b", "rows differ");
        let Decision::Abort(why) = waiting.await.unwrap() else { panic!("went") };
        assert!(why.contains("database b: rows differ"), "{why}");
        assert!(matches!(recorded(dir.as_path()), Some(Decision::Abort(_))));
        assert!(!t.may_fence("a", true) && !t.may_fence("b", true));
        t.failed("a", "later");
        assert!(matches!(t.decided(), Some(Decision::Abort(w)) if w.contains("database b")));
    }
}
