//! What every stage of execution shares: the context (`Ctx`), the events the report hears,
//! the errors, cancellation, retries after a lost connection, and the failpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::conn::{self, Env, Resolved, RetryPolicy};
use crate::execution_plan::{Action, Phase, Step};
use crate::state::{State, StateDir, StepStatus};

/// What apply tells the report, as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A phase begins.
    Phase(Phase),
    /// A step begins.
    Started {
        /// The step.
        id: String,
        /// What it is about.
        object: String,
        /// Its action.
        action: Action,
    },
    /// A copy is under way: what it has streamed so far (sent about every 200 ms).
    Copying {
        /// The step.
        id: String,
        /// What it is about.
        object: String,
        /// Bytes streamed.
        bytes: u64,
        /// Rows streamed (text COPY counts lines; binary COPY does not say).
        rows: Option<u64>,
        /// The plan's estimate for the table.
        estimate: Option<crate::execution_plan::Estimate>,
    },
    /// A step finished.
    Done {
        /// The step.
        id: String,
        /// What it is about.
        object: String,
        /// Rows copied, for copies.
        rows: Option<u64>,
        /// Bytes streamed, for copies.
        bytes: Option<u64>,
        /// How long it took.
        elapsed: Duration,
    },
    /// Change streaming's progress (about every second).
    Streaming {
        /// Source WAL not yet applied.
        lag_bytes: u64,
        /// Age of the oldest change not yet applied (0 when caught up).
        lag_seconds: f64,
        /// Changes applied so far.
        applied: crate::state::Counters,
        /// The lag is under `sync.max_lag`.
        ready: bool,
    },
    /// A step was skipped.
    Skipped {
        /// What it is about.
        object: String,
        /// Why.
        reason: &'static str,
    },
}

/// Why apply stopped.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ApplyError {
    /// The plan cannot be applied as it is.
    #[error("the execution plan has {0}")]
    #[diagnostic(help("run `pgtransit plan` and resolve the errors and conflicts it shows"))]
    NotApplicable(String),
    /// The servers changed since the plan was computed.
    #[error("stale plan: {0}")]
    #[diagnostic(
        code(pgtransit::stale_plan),
        help("nothing was changed. Run `pgtransit plan` again, review the new plan, and apply it")
    )]
    Stale(String),
    /// Stopped on request.
    #[error("interrupted: the state is saved; run `pgtransit apply` again to continue")]
    Interrupted,
    /// A step failed (its transaction was rolled back).
    #[error("step {id} ({object}) failed: {message}")]
    #[diagnostic(help(
        "the step was rolled back and the state records where apply stopped: fix the cause, then \
         run `pgtransit apply` again to continue"
    ))]
    StepFailed {
        /// Step id.
        id: String,
        /// Its object.
        object: String,
        /// The server's error.
        message: String,
    },
    /// The source's schema changed while streaming: DDL is not replicated.
    #[error("the source's schema changed: {0}")]
    #[diagnostic(
        code(pgtransit::schema_drift),
        help(
            "DDL on the source is not replicated. Make the same change on the target (`pgtransit \
             plan` shows what differs), then run `pgtransit apply` again: it resumes streaming \
             where it stopped, and the slot keeps every change until then"
        )
    )]
    Drift(String),
    /// Verification found differences: the cutover stopped and the fence was lifted.
    #[error("verification failed: rows differ in {0}")]
    #[diagnostic(
        code(pgtransit::verify_failed),
        help(
            "the cutover stopped before declaring the target ready, and the source takes writes \
             again (the fence was lifted). Find out why the rows differ (`pgtransit verify FILE` \
             compares them at any time), fix it, and run `pgtransit cutover` again"
        )
    )]
    VerifyFailed(String),
    /// Several databases cut over together: another one failed, or they were not all verified
    /// in time; every database lifted its fence.
    #[error("the databases' cutover was abandoned: {0}")]
    #[diagnostic(
        code(pgtransit::cutover_abandoned),
        help(
            "the databases are cut over all together or none: every database's fence was lifted \
             and its source takes writes again. Fix the cause named, run `pgtransit apply` to \
             stream every database again, then `pgtransit cutover`"
        )
    )]
    Abandoned(String),
    /// A server went away (network, restart) and did not come back within `--retry-for`.
    #[error("lost the connection to a server: {0}")]
    #[diagnostic(
        code(pgtransit::connection_lost),
        help(
            "nothing is lost: the state records every step done, the target the position it \
             applied, and the slot keeps every later change. Once the server answers again, run \
             `pgtransit apply` to resume (apply itself waits for --retry-for; pass a longer one \
             to ride out a longer outage)"
        )
    )]
    ConnectionLost(String),
    /// Could not connect.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Connect(#[from] conn::ConnectError),
    /// State problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] crate::state::StateError),
}

impl ApplyError {
    /// The error to stop on once waiting for a server is over: a server that could not be
    /// reached again is a lost connection (whose help says nothing is lost, and how to resume).
    pub(crate) fn gave_up(self) -> ApplyError {
        match self {
            ApplyError::Connect(e) if e.is_transient() => ApplyError::ConnectionLost(e.to_string()),
            other => other,
        }
    }

    /// A server went away (or could not be reached): trying again may work.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            ApplyError::ConnectionLost(_) => true,
            ApplyError::Connect(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// A flag set by Ctrl-C / SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that Ctrl-C and SIGTERM set.
    pub fn on_signals() -> Cancel {
        let c = Cancel::default();
        let flag = c.0.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
            flag.store(true, Ordering::SeqCst);
        });
        c
    }

    /// Asks for a stop, as Ctrl-C does.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait(&self) {
        while !self.requested() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The connections apply uses.
#[derive(Clone)]
pub struct Servers {
    /// Source settings.
    pub source: Resolved,
    /// Target settings.
    pub target: Resolved,
    /// Retry policy for every connection.
    pub policy: RetryPolicy,
}

/// A target session for apply's work. Its commits are durable before they return (every
/// session [`conn::connect_with`] opens runs with `synchronous_commit = on`): the state records
/// a step done, and the stream acknowledges the source, only after such a commit, so a target
/// crash right after cannot take back what the state or the slot were told.
pub async fn connect_target(servers: &Servers, app: &str) -> Result<Client, ApplyError> {
    Ok(conn::connect_with(&servers.target, app, &servers.policy).await?)
}

impl Servers {
    /// Resolves both endpoints of a migration plan.
    pub fn new(
        loaded: &crate::migration_plan::LoadedMigrationPlan,
        env: &Env,
        retry_for: Duration,
    ) -> Result<Servers, conn::ConnInfoError> {
        let target = loaded.target_conninfo.resolve(env)?;
        Ok(Servers {
            source: loaded.source_conninfo.resolve(env)?,
            // A rollback window's target is the old source, fenced by the cutover.
            target: if loaded.spec.rollback_of.is_some() {
                target.writing_when_fenced()
            } else {
                target
            },
            policy: RetryPolicy { max_elapsed: retry_for, ..RetryPolicy::default() },
        })
    }
}

/// Failpoints for the resume tests (debug builds only): `PGTRANSIT_FAILPOINT=after:<step id>`
/// aborts the process right after that step's work commits and before the state records it;
/// `before:<step id>` aborts just before the step starts.
pub(crate) fn failpoint(when: &str, id: &str) {
    if cfg!(debug_assertions)
        && let Ok(fp) = std::env::var("PGTRANSIT_FAILPOINT")
        && fp == format!("{when}:{id}")
    {
        std::process::abort();
    }
}

/// SQLSTATEs that mean "it is already there": duplicate relation, object, function, schema,
/// column, prepared statement; 42P16 "multiple primary keys" and 55000 "index is already
/// associated with a constraint" (re-adding a primary key). Only consulted for a step the state
/// says an earlier run started, so they mean that run had committed it.
pub(crate) fn already_exists(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        matches!(
            c.code(),
            "42P07" | "42710" | "42723" | "42P06" | "42P16" | "42701" | "42P05" | "55000"
        )
    })
}

fn deadlocked(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "40P01")
}

/// Runs `attempt` again, three times in all, while the server picks it as a deadlock victim:
/// its transaction was rolled back whole (the attempt must leave its session out of any
/// transaction when it fails), and the other side went on.
pub(crate) async fn again_after_deadlock<T>(
    mut attempt: impl AsyncFnMut() -> Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if deadlocked(&e) && tries < 3 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            other => return other,
        }
    }
}

/// Records a failed step (its transaction was rolled back) and returns the error to stop on.
/// The state keeps the error without DETAIL (row values); the operator sees all of it. A state
/// that cannot be saved is the error returned instead.
pub(crate) fn failed(
    step: &Step,
    e: &tokio_postgres::Error,
    state: &mut State,
    dir: &StateDir,
) -> ApplyError {
    state.fail(&step.id, db_summary(e));
    if let Err(save) = dir.save(state) {
        return save.into();
    }
    if is_lost(e) {
        return ApplyError::ConnectionLost(format!(
            "step {} ({}): {}",
            step.id,
            step.object,
            db_message(e)
        ));
    }
    ApplyError::StepFailed {
        id: step.id.clone(),
        object: step.object.clone(),
        message: db_message(e),
    }
}

/// Whether an error means the connection went away (closed, network, server shutting down or
/// starting up) rather than a problem with what was sent: trying again on a new connection may
/// work.
pub(crate) fn is_lost(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    match e.code() {
        // No SQLSTATE: the connection closed, or an I/O error; not a client-side problem (a
        // value that does not convert, an unexpected row count), which trying again would
        // not fix.
        None => e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()),
        Some(c) => {
            let c = c.code();
            // 55006: an origin or slot still held by the session of a stream that just ended.
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "55006")
        }
    }
}

/// A server error as an [`ApplyError`] of a step: a lost connection is retried.
pub(crate) fn step_error(id: &str, object: &str, e: &tokio_postgres::Error) -> ApplyError {
    if is_lost(e) {
        return ApplyError::ConnectionLost(format!("{id} ({object}): {}", db_message(e)));
    }
    ApplyError::StepFailed { id: id.into(), object: object.into(), message: db_message(e) }
}

/// Waits, with backoff, for a server that went away: for `--retry-for` from the first loss.
/// Only an attempt that got somewhere ([`Reconnect::progressed`]) starts a new window: one that
/// merely took long (a connection attempt to a silent host, a watchdog) does not.
struct Reconnect {
    window: Duration,
    lost_since: Option<Instant>,
    backoff: Duration,
}

impl Reconnect {
    fn new(window: Duration) -> Reconnect {
        Reconnect { window, lost_since: None, backoff: Duration::from_millis(500) }
    }

    /// The last attempt got somewhere (a step done, the stream caught up): a later loss is
    /// a new outage, with a window of its own, not more of the same one.
    fn progressed(&mut self) {
        self.lost_since = None;
        self.backoff = Duration::from_millis(500);
    }

    /// After `e`: whether to try again (having waited), or give up (the window is over, or
    /// Ctrl-C).
    async fn again(&mut self, e: &ApplyError, cancel: &Cancel) -> bool {
        if !e.is_connection_loss() || cancel.requested() {
            return false;
        }
        let since = *self.lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.window {
            return false;
        }
        tracing::warn!("{e}; trying again in {:.1} s", self.backoff.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = cancel.wait() => return false,
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        true
    }
}

/// The server's error without its DETAIL, which can quote row values: what the state records.
fn db_summary(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            m
        }
        None => e.to_string(),
    }
}

/// Tells the report a step finished (not a copy: no rows or bytes).
pub(crate) fn step_done(events: &(dyn Fn(Event) + Sync), step: &Step, started: Instant) {
    events(Event::Done {
        id: step.id.clone(),
        object: step.object.clone(),
        rows: None,
        bytes: None,
        elapsed: started.elapsed(),
    });
}

/// What every part of a run shares.
pub struct Ctx<'a> {
    /// Where to connect.
    pub servers: &'a Servers,
    /// Where the state is saved.
    pub state_dir: &'a StateDir,
    /// Tables copied at once.
    pub jobs: usize,
    /// Ctrl-C / SIGTERM.
    pub cancel: &'a Cancel,
    /// Where events go.
    pub events: &'a (dyn Fn(Event) + Sync),
    /// The migration plan (sync options, scope).
    pub spec: &'a crate::migration_plan::MigrationPlan,
    /// Cut over as soon as ready, whatever `cutover.mode` says (`pgtransit cutover` with no
    /// apply running).
    pub cutover_now: bool,
    /// Sessions an earlier attempt of this run may have left on the servers.
    pub sessions: EarlierSessions,
    /// In a migration of several databases cut over together: where their cutovers meet, and
    /// this database's member name.
    pub together: Option<(&'a crate::execute::together::Together, &'a str)>,
    /// Several databases loading at once: the migration's pool of `jobs` (a copy or a build
    /// runs with one of its permits), and this database's rank in it.
    pub pool: Option<(&'a crate::execute::together::Pool, usize)>,
}

/// A session of a server, exactly: its pid and its start time (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    pub(crate) started: String,
}

impl Session {
    /// Its pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// When it started (`backend_start` as text).
    pub(crate) fn started(&self) -> &str {
        &self.started
    }

    /// The session of `client`.
    pub(crate) async fn of(client: &Client) -> Result<Session, tokio_postgres::Error> {
        let me = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity \
                 WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Session { pid: me.get(0), started: me.get(1) })
    }
}

/// The sessions of this run's earlier attempts. After a lost or stuck connection they may live
/// on, unaware, on their servers (a stalled connection is only noticed by its server after
/// `wal_sender_timeout` or TCP's timeouts): the stream's walsender still holds the slot, its
/// target session the replication origin, maybe a batch about to commit; a load worker's
/// target session a copy's transaction that holds its table's lock. The next attempt ends them,
/// and waits until they are gone, before it reads the applied position or copies again.
#[derive(Debug, Default)]
pub struct EarlierSessions {
    /// The stream's target session.
    pub(crate) stream_target: std::sync::Mutex<Option<Session>>,
    /// The stream's walsender (the source's session that holds the slot), as the heartbeat
    /// task last saw it.
    pub(crate) walsender: Arc<std::sync::Mutex<Option<Session>>>,
    /// The load workers' target sessions.
    pub(crate) load: std::sync::Mutex<Vec<Session>>,
    /// A stream of an earlier attempt met a column its binary values were not chosen for (a
    /// table or type that came since, or an older version of a table the stream decodes): the
    /// next ones stream in text.
    pub(crate) text_values: std::sync::atomic::AtomicBool,
}

/// Runs `work` again after a lost connection, with backoff, for `--retry-for` (see
/// [`Reconnect`]). An attempt that got somewhere (a step done, changes applied, the stream
/// caught up: all in `state`) opens a new window. A connection lost while the source is fenced
/// and not yet drained is not waited for: the fence is lifted instead.
pub(crate) async fn with_reconnect<T>(
    ctx: &Ctx<'_>,
    state: &mut State,
    mut work: impl AsyncFnMut(&mut State) -> Result<T, ApplyError>,
) -> Result<T, ApplyError> {
    // How far the migration got, as the state says.
    let reached = |state: &State| {
        let done = state.steps.values().filter(|r| r.status == StepStatus::Done).count();
        let sync = state.sync.as_ref();
        (done, sync.and_then(|s| s.applied_lsn.clone()), sync.and_then(|s| s.caught_up_at))
    };
    let mut reconnect = Reconnect::new(ctx.servers.policy.max_elapsed);
    loop {
        let before = reached(state);
        match work(state).await {
            Err(e) => {
                if reached(state) != before {
                    reconnect.progressed();
                }
                let fenced = state.cutover.as_ref().is_some_and(|c| c.fenced_undrained());
                if fenced || !reconnect.again(&e, ctx.cancel).await {
                    return Err(e.gave_up());
                }
            }
            ok => return ok,
        }
    }
}

/// Runs `attempt` again after a lost connection, with backoff, for `--retry-for` from the
/// first loss (an attempt that is all or nothing: nothing to count as progress).
pub(crate) async fn retry<T>(
    ctx: &Ctx<'_>,
    mut attempt: impl AsyncFnMut() -> Result<T, ApplyError>,
) -> Result<T, ApplyError> {
    let mut reconnect = Reconnect::new(ctx.servers.policy.max_elapsed);
    loop {
        match attempt().await {
            Err(e) if reconnect.again(&e, ctx.cancel).await => {}
            other => return other.map_err(ApplyError::gave_up),
        }
    }
}

/// An error of the stream, with the operator's fix.
pub(crate) fn sync_error(message: impl Into<String>) -> ApplyError {
    ApplyError::StepFailed {
        id: "sync:stream".into(),
        object: "change stream".into(),
        message: message.into(),
    }
}

/// A server error of the stream: a lost connection is retried.
pub(crate) fn pg(e: tokio_postgres::Error) -> ApplyError {
    if is_lost(&e) {
        ApplyError::ConnectionLost(db_message(&e))
    } else {
        sync_error(db_message(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> ApplyError {
        ApplyError::ConnectionLost("connection closed".into())
    }

    #[tokio::test]
    async fn a_lost_connection_is_retried_for_the_window_and_progress_opens_a_new_one() {
        let cancel = Cancel::default();
        let window = Duration::from_millis(700);
        // Losses at 0 s (0.5 s of backoff) and 0.5 s (1 s): at 1.5 s the window is over.
        let mut r = Reconnect::new(window);
        assert!(r.again(&lost(), &cancel).await);
        assert!(r.again(&lost(), &cancel).await);
        assert!(!r.again(&lost(), &cancel).await, "given up after the window");
        // The same, but the attempt in between got somewhere: a new outage, a new window (an
        // attempt that only took long would not reset it).
        let mut r = Reconnect::new(window);
        assert!(r.again(&lost(), &cancel).await);
        assert!(r.again(&lost(), &cancel).await);
        r.progressed();
        assert!(r.again(&lost(), &cancel).await);
    }

    #[tokio::test]
    async fn what_is_not_a_lost_connection_or_comes_after_ctrl_c_is_not_retried() {
        let cancel = Cancel::default();
        let mut r = Reconnect::new(Duration::from_secs(60));
        let failed =
            ApplyError::StepFailed { id: "x".into(), object: "y".into(), message: "z".into() };
        assert!(!r.again(&failed, &cancel).await);
        cancel.0.store(true, Ordering::SeqCst);
        assert!(!r.again(&lost(), &cancel).await);
    }
}
