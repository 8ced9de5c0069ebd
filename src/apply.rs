//! `apply`: runs an execution plan's steps against the servers, recording each in the state.
//!
//! This is the only code (with the step bodies below) that changes a server. Rules:
//! - Every step is one target transaction: it either happened completely or not at all.
//! - The state says `running` before a step starts and `done` after its transaction commits.
//!   A step found `running` on a later run was interrupted: if its transaction had committed
//!   (the target says "already exists"), it is recorded done; otherwise it runs again. Copies
//!   always run again: `TRUNCATE` then `COPY` in one transaction, so rows are never doubled.
//! - All copies of one run read one snapshot of the source, exported by a connection that stays
//!   open until the load ends. A resumed run copies the remaining tables under a new snapshot:
//!   in offline mode the source is expected to be quiet, so each table is consistent in itself
//!   and the whole is consistent when nothing wrote to the source in between (see README).
//! - Ctrl-C (or SIGTERM) stops between steps, aborts the running copy, or cancels the running
//!   target statement (an index build; its transaction rolls back); the state is saved and the
//!   next `apply` continues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::conn::{self, Env, Resolved, RetryPolicy};
use crate::plan::{Action, Phase, Plan, Step, Work};
use crate::sql::{ident, literal, qualified_ident};
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
        estimate: Option<crate::plan::Estimate>,
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

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        while !self.requested() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The connections apply uses.
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
        loaded: &crate::spec::LoadedSpec,
        env: &Env,
        retry_for: Duration,
    ) -> Result<Servers, conn::ConnInfoError> {
        Ok(Servers {
            source: loaded.source_conninfo.resolve(env)?,
            target: loaded.target_conninfo.resolve(env)?,
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
fn already_exists(e: &tokio_postgres::Error) -> bool {
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
async fn again_after_deadlock<T>(
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
fn failed(step: &Step, e: &tokio_postgres::Error, state: &mut State, dir: &StateDir) -> ApplyError {
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
    pub spec: &'a crate::spec::Spec,
    /// Cut over as soon as ready, whatever `cutover.mode` says (`pgtransit cutover` with no
    /// apply running).
    pub cutover_now: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every step is done.
    Complete,
    /// Change streaming was stopped on request (Ctrl-C, SIGTERM): the next `apply` resumes it.
    StreamingStopped,
    /// The cutover is done: the target is ready for the applications.
    CutOver,
}

/// How often the source's schema is compared with what it was when streaming began.
pub const DRIFT_CHECK: Duration = Duration::from_secs(5);

/// Runs the plan. `state` was loaded and checked by the caller, who holds the lock.
///
/// Order: the schema phase on one connection; then the load, whose workers also build each
/// table's indexes and constraints as soon as that table's copy is done; then the rest of the
/// post-load phase (foreign keys, triggers, sequences, refreshes, statistics); then sync and
/// cutover.
pub async fn run(plan: &Plan, ctx: &Ctx<'_>, state: &mut State) -> Result<Finished, ApplyError> {
    // A cutover interrupted before verification passed (kill -9, a crash), or one that failed
    // and could not lift its fence then (the source was unreachable), may have left the source
    // fenced: lift it before anything else writes there (the publication step does).
    let interrupted = state.cutover.as_ref().is_some_and(|c| c.fence_left_up());
    let fence = plan.steps.iter().find_map(|s| match &s.work {
        Work::Fence { database, .. } => Some(database),
        _ => None,
    });
    if interrupted && let Some(database) = fence {
        tracing::warn!("an earlier cutover was interrupted before verification: lifting its fence");
        if !crate::cutover::lift(ctx, database, state, "interrupted before verification").await {
            return Err(ApplyError::ConnectionLost(format!(
                "the fence of an interrupted cutover could not be lifted (the source database \
                 {database} may still be read-only for new sessions)"
            )));
        }
    }
    if let Some(Work::Stream { slot, publication, origin, tables }) =
        plan.steps.iter().map(|s| &s.work).find(|w| matches!(w, Work::Stream { .. }))
    {
        let sync = state.sync.get_or_insert_with(Default::default);
        sync.streaming = false;
        sync.slot = slot.clone();
        sync.publication = publication.clone();
        sync.origin = origin.clone();
        sync.tables = tables.clone();
        ctx.state_dir.save(state)?;
    }
    let of = |p: Phase| plan.steps.iter().filter(|s| s.phase == p).collect::<Vec<&Step>>();
    let (early, late): (Vec<&Step>, Vec<&Step>) =
        of(Phase::PostLoad).into_iter().partition(|s| crate::planner::is_table_build(s));
    let mut load_steps = of(Phase::Load);
    load_steps.extend(early);
    let phases: [(Phase, Vec<&Step>); 5] = [
        (Phase::Schema, of(Phase::Schema)),
        (Phase::Load, load_steps),
        (Phase::PostLoad, late),
        (Phase::Sync, of(Phase::Sync)),
        (Phase::Cutover, of(Phase::Cutover)),
    ];
    for (phase, steps) in phases {
        if !steps.iter().any(|s| s.action.is_work()) {
            continue;
        }
        (ctx.events)(Event::Phase(phase));
        if phase == Phase::Sync {
            let (streams, others): (Vec<&Step>, Vec<&Step>) =
                steps.iter().partition(|s| matches!(s.work, Work::Stream { .. }));
            with_reconnect(ctx, state, async |state| run_phase(&others, 1, ctx, state).await)
                .await?;
            if let Some(step) = streams.first() {
                return sync_and_cutover(step, &of(Phase::Cutover), ctx, state);
            }
            continue;
        }
        // A server that goes away is waited for, and the phase goes on where it stopped: what
        // is done is recorded, what was cut off was rolled back.
        with_reconnect(ctx, state, async |state| match phase {
            // Copies (and each copied table's index builds) run `jobs` at a time; copies read
            // one snapshot.
            Phase::Load => load(&steps, ctx, state).await,
            // What may lock several tables runs after the builds, each after what it needs.
            Phase::PostLoad => run_phase(&steps, ctx.jobs, ctx, state).await,
            // DDL is quick: one connection, in plan order.
            _ => run_phase(&steps, 1, ctx, state).await,
        })
        .await?;
    }
    Ok(Finished::Complete)
}

/// Runs `work` again after a lost connection, with backoff, for `--retry-for` (see
/// [`Reconnect`]). An attempt that got somewhere (a step done, changes applied, the stream
/// caught up: all in `state`) opens a new window. A connection lost while the source is fenced
/// and not yet drained is not waited for: the fence is lifted instead.
async fn with_reconnect<T>(
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

/// The stream, then (when asked, or when ready with `cutover.mode: auto`) the cutover.
///
/// The stream, its target connection and the replication session share one thread of their
/// own (a current-thread runtime): every statement passes between them, and a wake-up across
/// threads for each would cost more than the statement. The cutover runs there too, as the
/// session that put up the fence must outlive the drain.
fn sync_and_cutover(
    step: &Step,
    cutover_steps: &[&Step],
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<Finished, ApplyError> {
    let Work::Stream { slot, publication, origin, tables } = &step.work else {
        return Ok(Finished::Complete);
    };
    (ctx.events)(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let scope = crate::scope::Scope::new(&ctx.spec.objects);
    let max_lag = ctx.spec.sync.max_lag.map(|d| d.0).unwrap_or(DEFAULT_MAX_LAG);
    let trigger = if ctx.cutover_now || ctx.spec.cutover.mode == crate::spec::CutoverMode::Auto {
        crate::sync::Trigger::WhenReady
    } else {
        crate::sync::Trigger::Requested(ctx.state_dir.path().join(CUTOVER_REQUEST))
    };
    let fence = cutover_steps.iter().find(|s| matches!(s.work, Work::Fence { .. }));
    let cutover = fence.map(|f| crate::sync::Cutover { trigger, fence: f });
    let work = async {
        // A server that goes away (network, restart) is waited for; the stream then resumes
        // from the target's recorded position.
        let stopped = with_reconnect(ctx, state, async |state| {
            crate::sync::stream(
                ctx,
                slot,
                publication,
                origin,
                tables,
                max_lag,
                DRIFT_CHECK,
                &scope,
                cutover.as_ref(),
                state,
            )
            .await
        })
        .await;
        match stopped {
            Ok(crate::sync::Stopped::OnRequest) => Ok(Finished::StreamingStopped),
            Ok(crate::sync::Stopped::Drained(fenced)) => {
                crate::cutover::finish(ctx, cutover_steps, *fenced, state).await?;
                Ok(Finished::CutOver)
            }
            Err(e) => {
                // Fenced, but not drained: lift the fence.
                let fenced = state.cutover.as_ref().is_some_and(|c| c.fenced_undrained());
                if fenced && let Some(Work::Fence { database, .. }) = fence.map(|f| &f.work) {
                    crate::cutover::lift(ctx, database, state, &e.to_string()).await;
                }
                Err(e)
            }
        }
    };
    tokio::task::block_in_place(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApplyError::StepFailed {
                id: step.id.clone(),
                object: step.object.clone(),
                message: format!("cannot start the stream's runtime: {e}"),
            })?
            .block_on(work)
    })
}

/// The file `pgtransit cutover` creates in the state directory to ask a running apply to cut
/// over.
pub const CUTOVER_REQUEST: &str = "cutover.request";

/// `sync.max_lag` when the migration plan does not say.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);

/// Runs `steps` one at a time, in order.
pub(crate) async fn run_steps(
    steps: &[&Step],
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<(), ApplyError> {
    run_phase(steps, 1, ctx, state).await
}

/// Runs the steps of one phase on `jobs` workers (each with its own connections), each step
/// after what it needs (see [`schedule`]).
async fn run_phase(
    steps: &[&Step],
    jobs: usize,
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<(), ApplyError> {
    let work: Vec<&Step> = steps.iter().copied().filter(|s| s.action.is_work()).collect();
    if work.is_empty() {
        return Ok(());
    }
    let shared = Mutex::new(std::mem::replace(state, State::new(&state.migration)));
    let servers = ctx.servers;
    let result = schedule(
        &work,
        jobs,
        async |n| {
            let app = if jobs > 1 {
                format!("pgtransit/apply-{}", n + 1)
            } else {
                "pgtransit/apply".into()
            };
            let target = connect_target(servers, &app).await?;
            let me = crate::sync::Session::of(&target)
                .await
                .map_err(|e| step_error("connect", "target session", &e))?;
            let source = conn::connect_with(&servers.source, &app, &servers.policy).await?;
            Ok((source, target, me))
        },
        async |step, (source, target, me)| run_step(step, source, (target, me), ctx, &shared).await,
    )
    .await;
    *state = shared.into_inner();
    ctx.state_dir.save(state)?;
    result
}

/// Which steps are waiting, running and done.
struct Schedule {
    waiting: Vec<usize>,
    running: usize,
    finished: std::collections::HashSet<String>,
    error: Option<ApplyError>,
}

/// Runs `steps` on `jobs` workers. Each worker opens its connections with `connect(n)`, then
/// repeatedly takes the first waiting step whose `after` steps (those among `steps`; others
/// are done already) have finished, and runs it with `run`. The first error stops new steps
/// from starting, lets running ones finish, and is returned; so is a set of steps that wait on
/// each other (never a hang).
async fn schedule<C>(
    steps: &[&Step],
    jobs: usize,
    connect: impl AsyncFn(usize) -> Result<C, ApplyError>,
    run: impl AsyncFn(&Step, &C) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    if steps.is_empty() {
        return Ok(());
    }
    let in_phase: std::collections::HashSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let state = Mutex::new(Schedule {
        waiting: (0..steps.len()).collect(),
        running: 0,
        finished: Default::default(),
        error: None,
    });
    let wake = tokio::sync::Notify::new();
    let worker = async |n: usize| {
        let connections = match connect(n).await {
            Ok(c) => c,
            Err(e) => {
                state.lock().await.error.get_or_insert(e);
                wake.notify_waiters();
                return;
            }
        };
        loop {
            // Created before looking, so a wake-up between the look and the wait is not lost.
            let notified = wake.notified();
            let next = {
                let mut s = state.lock().await;
                if s.error.is_some() || s.waiting.is_empty() {
                    return;
                }
                let ready = s.waiting.iter().position(|&i| {
                    steps[i]
                        .after
                        .iter()
                        .all(|a| !in_phase.contains(a.as_str()) || s.finished.contains(a))
                });
                match ready {
                    Some(p) => {
                        s.running += 1;
                        Some(s.waiting.remove(p))
                    }
                    None if s.running == 0 => {
                        let ids: Vec<&str> =
                            s.waiting.iter().map(|&i| steps[i].id.as_str()).collect();
                        s.error = Some(ApplyError::StepFailed {
                            id: ids.join(", "),
                            object: "schedule".into(),
                            message: "these steps wait on each other".into(),
                        });
                        wake.notify_waiters();
                        return;
                    }
                    None => None,
                }
            };
            let Some(i) = next else {
                notified.await;
                continue;
            };
            let result = run(steps[i], &connections).await;
            let mut s = state.lock().await;
            s.running -= 1;
            match result {
                Ok(()) => {
                    s.finished.insert(steps[i].id.clone());
                }
                Err(e) => {
                    s.error.get_or_insert(e);
                }
            }
            wake.notify_waiters();
        }
    };
    futures_util::future::join_all((0..jobs.clamp(1, steps.len())).map(worker)).await;
    match state.into_inner().error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Cancels the statement `session` runs (from a connection of its own: the session's own is
/// busy with it).
async fn cancel_session(servers: &Servers, session: &crate::sync::Session) {
    let Ok(c) = conn::connect_with(&servers.target, "pgtransit/cancel", &servers.policy).await
    else {
        return;
    };
    let _ = c
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE pid = $1 AND backend_start::text = $2",
            &[&session.pid(), &session.started()],
        )
        .await;
}

/// Runs one step; `target` is the worker's target session (and who it is on the server).
async fn run_step(
    step: &Step,
    source: &Client,
    (target, session): (&Client, &crate::sync::Session),
    ctx: &Ctx<'_>,
    shared: &Mutex<State>,
) -> Result<(), ApplyError> {
    let Ctx { state_dir, cancel, events, .. } = *ctx;
    let interrupted_before = {
        let mut state = shared.lock().await;
        if state.is_done_in_this_plan(&step.id) {
            events(Event::Skipped {
                object: step.object.clone(),
                reason: "done by an earlier apply",
            });
            return Ok(());
        }
        if cancel.requested() {
            state_dir.save(&mut state)?;
            return Err(ApplyError::Interrupted);
        }
        // Any earlier record (running, failed, or done under another plan) means an earlier
        // run executed this step, possibly to its commit.
        let interrupted = state.steps.contains_key(&step.id);
        failpoint("before", &step.id);
        state.start(&step.id);
        state_dir.save(&mut state)?;
        interrupted
    };
    events(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let started = Instant::now();
    let work = again_after_deadlock(async || {
        match &step.work {
            Work::TargetSql => target_sql(target, &step.sql).await,
            Work::SetSequence { schema, sequence, margin } => {
                set_sequence(source, target, schema, sequence, *margin).await
            }
            Work::SourceSql => in_transaction(source, &step.sql).await,
            Work::ReplicaIdentityFull { tables } => {
                let sql = tables
                    .iter()
                    .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL;"))
                    .collect::<String>();
                let r = in_transaction(source, &sql).await;
                if r.is_ok() {
                    let mut state = shared.lock().await;
                    if let Some(sync) = state.sync.as_mut() {
                        for t in tables {
                            if !sync.replica_identity_full.contains(t) {
                                sync.replica_identity_full.push(t.clone());
                            }
                        }
                    }
                }
                r
            }
            Work::CopyTable { .. }
            | Work::CopyLargeObjects { .. }
            | Work::EmptyForParts { .. }
            | Work::CreateSlot { .. }
            | Work::Stream { .. }
            | Work::Fence { .. }
            | Work::Drain
            | Work::Verify { .. }
            | Work::None => Ok(()),
            // A verified cutover's clean-up that was cut off: finished, and the cutover with it.
            Work::Cleanup { slot, publication, origin } => {
                let r = crate::cutover::cleanup(source, target, slot, publication, origin).await;
                if r.is_ok() {
                    let mut state = shared.lock().await;
                    if let Some(cut) = state.cutover.as_mut() {
                        cut.status = "done".into();
                        cut.error = None;
                        cut.finished_at.get_or_insert_with(crate::state::now_f64);
                    }
                }
                r.map(|_| ())
            }
        }
    });
    // Ctrl-C (or SIGTERM) while a target step runs (an index build may take hours): its
    // statement is cancelled, its transaction rolls back, and the next apply runs it again.
    tokio::pin!(work);
    let on_target = matches!(step.work, Work::TargetSql | Work::SetSequence { .. });
    let result = tokio::select! {
        r = &mut work => r,
        () = cancel.wait(), if on_target => {
            cancel_session(ctx.servers, session).await;
            match work.await {
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                    let mut state = shared.lock().await;
                    state_dir.save(&mut state)?;
                    return Err(ApplyError::Interrupted);
                }
                other => other,
            }
        }
    };
    let mut state = shared.lock().await;
    match result {
        Ok(()) => {}
        Err(e) if interrupted_before && step.action == Action::Create && already_exists(&e) => {
            // An earlier run had committed this step (before it could record it, or under an
            // earlier plan): what the step creates is there.
            events(Event::Skipped {
                object: step.object.clone(),
                reason: "found on the target: an interrupted apply had completed it",
            });
        }
        Err(e) => return Err(failed(step, &e, &mut state, state_dir)),
    }
    failpoint("after", &step.id);
    state.finish(&step.id, None);
    state_dir.save(&mut state)?;
    drop(state);
    step_done(events, step, started);
    Ok(())
}

/// Runs SQL on the target in one transaction. `check_function_bodies` is off, as in pg_dump's
/// scripts: a function body may name tables that are created later in the plan.
async fn target_sql(target: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let script = format!("BEGIN;\nSET LOCAL check_function_bodies = false;\n{sql}\nCOMMIT;");
    match target.batch_execute(&script).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Runs SQL on a server in one transaction.
async fn in_transaction(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;")).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn set_sequence(
    source: &Client,
    target: &Client,
    schema: &str,
    sequence: &str,
    margin: u64,
) -> Result<(), tokio_postgres::Error> {
    let name = qualified_ident(schema, sequence);
    let row = source
        .query_one(
            &format!(
                "SELECT s.last_value, s.is_called, p.seqincrement FROM {name} s, pg_sequence p \
                 WHERE p.seqrelid = {}::regclass",
                literal(&name)
            ),
            &[],
        )
        .await?;
    let (value, called, increment): (i64, bool, i64) = (row.get(0), row.get(1), row.get(2));
    // A margin moves the value on in the sequence's own direction.
    let margin = i64::try_from(margin).unwrap_or(i64::MAX);
    let value =
        if increment < 0 { value.saturating_sub(margin) } else { value.saturating_add(margin) };
    let called = called || margin > 0;
    // setval alone assigns no transaction id, and such a commit is not flushed even with
    // synchronous_commit = on: txid_current() makes this one durable before it returns.
    let sql =
        format!("SELECT txid_current(); SELECT setval({}, {value}, {called});", literal(&name));
    target_sql(target, &sql).await
}

/// The target sessions of this process's load workers. After a lost or stuck connection they
/// may live on, unaware, on the target (until TCP or the server notices), inside a copy's
/// transaction that holds its table's lock: the next load ends them first.
static LOAD_SESSIONS: std::sync::Mutex<Vec<crate::sync::Session>> =
    std::sync::Mutex::new(Vec::new());

/// The load phase: copies run `jobs` at a time, all under one exported snapshot.
async fn load(steps: &[&Step], ctx: &Ctx<'_>, state: &mut State) -> Result<(), ApplyError> {
    let Ctx { servers, state_dir, jobs, events, .. } = *ctx;
    let earlier = LOAD_SESSIONS.lock().expect("sessions lock").clone();
    if !earlier.is_empty() {
        let target = connect_target(servers, "pgtransit/apply").await?;
        for session in &earlier {
            crate::sync::end_previous(&target, session, "load session").await?;
        }
        LOAD_SESSIONS.lock().expect("sessions lock").retain(|s| !earlier.contains(s));
    }
    // Online mode: the source's replica identities and publication, then the slot, before any
    // copy: the copies read the snapshot the slot exports.
    let (setup, steps): (Vec<&Step>, Vec<&Step>) = steps.iter().partition(|s| {
        matches!(
            s.work,
            Work::SourceSql | Work::ReplicaIdentityFull { .. } | Work::CreateSlot { .. }
        )
    });
    let mut slot_session = None;
    for step in setup.into_iter().filter(|s| s.action.is_work()) {
        match &step.work {
            Work::CreateSlot { slot, command } => {
                slot_session = create_slot(step, slot, command, ctx, state).await?
            }
            _ => run_phase(&[step], 1, ctx, state).await?,
        }
    }
    let steps = &steps[..];
    // A split table is redone whole (its `empty` step, then every part) unless the state says
    // all of it was done under this plan: the planner's rule, applied to the state as it is now.
    let mut redo: std::collections::HashSet<&str> = Default::default();
    let mut complete: std::collections::HashSet<&str> = Default::default();
    for s in steps.iter().filter(|s| s.action.is_work()) {
        if let Work::EmptyForParts { parts, .. } = &s.work {
            let done = |id: &str| state.is_done_in_this_plan(id);
            if crate::planner::split_table_complete(&s.id, parts, &done) {
                complete.insert(s.id.as_str());
                complete.extend(parts.iter().map(String::as_str));
            } else {
                redo.insert(s.id.as_str());
                redo.extend(parts.iter().map(String::as_str));
            }
        }
    }
    let is_pending = |s: &Step| {
        s.action.is_work()
            && !complete.contains(s.id.as_str())
            && (redo.contains(s.id.as_str()) || !state.is_done_in_this_plan(&s.id))
    };
    let pending: Vec<&Step> = steps.iter().copied().filter(|s| is_pending(s)).collect();
    for s in steps.iter().filter(|s| s.action.is_work() && !is_pending(s)) {
        events(Event::Skipped { object: s.object.clone(), reason: "copied by an earlier apply" });
    }
    if pending.is_empty() {
        return Ok(());
    }
    // The exporting transaction (or the slot's replication session) stays open, and so the
    // snapshot valid, until every copy ends.
    let exporter =
        conn::connect_with(&servers.source, "pgtransit/snapshot", &servers.policy).await?;
    let (snapshot, snapshot_lsn, durable): (String, String, bool) = async {
        if let Some(session) = &slot_session {
            let s: &crate::stream::SlotSession = session;
            return Ok((s.snapshot.clone(), crate::stream::lsn_text(s.consistent_point), true));
        }
        exporter.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        // The insert position, not the write position: a transaction committed asynchronously
        // is visible before its commit record is written, and its commit must come before
        // the position the stream compares with.
        let row = exporter
            .query_one(
                "SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() \
                 THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text",
                &[],
            )
            .await?;
        let (snapshot, lsn): (String, String) = (row.get(0), row.get(1));
        let mut durable = wait_durable(&exporter, &lsn, Duration::from_millis(300)).await?;
        if !durable {
            // An idle server need not flush WAL that no commit waits for (the background
            // writer's running-transactions record, say), so the wait could last until the
            // next checkpoint. A commit of our own, synchronous (as every pgtransit session's),
            // flushes everything before it. Best effort: the wait below is the proof.
            if let Ok(flusher) =
                conn::connect_with(&servers.source, "pgtransit/snapshot", &servers.policy).await
            {
                let _ = flusher.batch_execute("BEGIN; SELECT txid_current(); COMMIT").await;
            }
            durable = wait_durable(&exporter, &lsn, Duration::from_secs(60)).await?;
        }
        Ok::<_, tokio_postgres::Error>((snapshot, lsn, durable))
    }
    .await
    .map_err(|e| step_error("load:snapshot", "source snapshot", &e))?;
    if !durable {
        return Err(ApplyError::StepFailed {
            id: "load:snapshot".into(),
            object: "source snapshot".into(),
            message: format!(
                "the source has not flushed its WAL up to {snapshot_lsn} within 60 s (its WAL \
                 writer flushes within a second normally: is its disk stalled?); the copies \
                 wait for it, so that a crash cannot take back rows they hold"
            ),
        });
    }

    let shared = Mutex::new(std::mem::replace(state, State::new(&state.migration)));
    let (snapshot, snapshot_lsn) = (&snapshot, &snapshot_lsn);
    let result = schedule(
        &pending,
        jobs,
        async |n| {
            let app = format!("pgtransit/load-{}", n + 1);
            let src = conn::connect_with(&servers.source, &app, &servers.policy).await?;
            let tgt = connect_target(servers, &app).await?;
            let me = crate::sync::Session::of(&tgt)
                .await
                .map_err(|e| step_error("connect", "target session", &e))?;
            LOAD_SESSIONS.lock().expect("sessions lock").push(me.clone());
            src.batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                literal(snapshot)
            ))
            .await
            .map_err(|e| {
                // The session that exports the snapshot went away (with the source): the load
                // starts again under a new one.
                if exporter.is_closed() {
                    ApplyError::ConnectionLost(format!("source snapshot: {}", db_message(&e)))
                } else {
                    step_error("load:snapshot", "source snapshot", &e)
                }
            })?;
            Ok((src, tgt, me))
        },
        async |step, (src, tgt, me)| match step.work {
            // A table's index and constraint builds, once its copy is done.
            Work::TargetSql => run_step(step, src, (tgt, me), ctx, &shared).await,
            _ => copy_one(step, src, tgt, ctx, &shared, snapshot_lsn).await,
        },
    )
    .await;
    *state = shared.into_inner();
    drop(exporter);
    drop(slot_session);
    state_dir.save(state)?;
    result
}

/// Waits until the source has flushed its WAL up to `lsn`: until then, what a snapshot taken
/// there sees may be lost in a crash of the source (a transaction committed with
/// `synchronous_commit = off` is visible before it is durable), and its ids and positions
/// reused after the restart by other transactions, which the copy must not be taken to hold.
/// The WAL writer flushes such commits within a few `wal_writer_delay`s. (A snapshot a slot
/// exports needs no wait: logical decoding reads only flushed WAL.)
/// Returns whether it did within `limit`.
async fn wait_durable(
    probe: &Client,
    lsn: &str,
    limit: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let started = Instant::now();
    loop {
        let flushed: bool = probe
            .query_one(
                "SELECT pg_is_in_recovery() OR pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await?
            .get(0);
        if flushed {
            return Ok(true);
        }
        if started.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The slot step: creates the slot on a replication session and returns that session (its
/// snapshot is the one the copies read). A slot already there (an earlier run created it and
/// stopped before recording so) is reused: the copies then read a snapshot of their own.
async fn create_slot(
    step: &Step,
    slot: &str,
    command: &str,
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<Option<crate::stream::SlotSession>, ApplyError> {
    let Ctx { servers, state_dir, events, .. } = *ctx;
    if state.is_done_in_this_plan(&step.id) {
        events(Event::Skipped { object: step.object.clone(), reason: "done by an earlier apply" });
        return Ok(None);
    }
    let fail = |message: String| ApplyError::StepFailed {
        id: step.id.clone(),
        object: step.object.clone(),
        message,
    };
    state.start(&step.id);
    state_dir.save(state)?;
    events(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let started = Instant::now();
    let source = conn::connect_with(&servers.source, "pgtransit/apply", &servers.policy).await?;
    let existing =
        crate::catalog::read_slot(&source, slot).await.map_err(|e| fail(e.to_string()))?;
    let session = match existing {
        Some(_) => None,
        None => Some(
            crate::stream::create_slot(&servers.source, slot, command, "pgtransit/slot")
                .await
                .map_err(|e| {
                    state.fail(&step.id, e.message.clone());
                    let _ = state_dir.save(state);
                    if e.transient {
                        ApplyError::ConnectionLost(format!("{}: {}", step.object, e.message))
                    } else {
                        fail(e.message)
                    }
                })?,
        ),
    };
    failpoint("after", &step.id);
    state.finish(&step.id, None);
    state_dir.save(state)?;
    step_done(events, step, started);
    Ok(session)
}

async fn copy_one(
    step: &Step,
    src: &Client,
    tgt: &Client,
    ctx: &Ctx<'_>,
    state: &Mutex<State>,
    snapshot_lsn: &str,
) -> Result<(), ApplyError> {
    let Ctx { state_dir, cancel, events, .. } = *ctx;
    if !matches!(
        step.work,
        Work::CopyTable { .. } | Work::CopyLargeObjects { .. } | Work::EmptyForParts { .. }
    ) {
        return Ok(());
    }
    if cancel.requested() {
        return Err(ApplyError::Interrupted);
    }
    failpoint("before", &step.id);
    {
        let mut s = state.lock().await;
        s.start(&step.id);
        state_dir.save(&mut s)?;
    }
    events(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let started = Instant::now();
    // The snapshot this copy reads: change streaming skips, for this table, exactly the
    // transactions it sees.
    // (txid_current_snapshot: pg_current_snapshot's older name, in every supported version.)
    let snapshot = match src.query_one("SELECT txid_current_snapshot()::text", &[]).await {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(e) => return Err(failed(step, &e, &mut *state.lock().await, state_dir)),
    };
    let binary = matches!(step.work, Work::CopyTable { binary: true, .. });
    // The watchdog of a whole table's copy, once data flows (until then the source may be
    // scanning; a part's rows may lie far apart in the table): a copy whose data stops for
    // good is on a connection that stopped answering.
    let watchdog = crate::sync::Progress::default();
    watchdog.now();
    let flowing = AtomicBool::new(false);
    let stalled = async {
        loop {
            watchdog.stuck().await;
            if flowing.load(Ordering::Relaxed) {
                return;
            }
            watchdog.now();
        }
    };
    let whole = matches!(&step.work, Work::CopyTable { part: None, .. });
    let progress = |bytes, rows| {
        watchdog.now();
        flowing.store(true, Ordering::Relaxed);
        events(Event::Copying {
            id: step.id.clone(),
            object: step.object.clone(),
            bytes,
            rows: (!binary).then_some(rows),
            estimate: step.estimate,
        })
    };
    // A copy a build of a table above it deadlocked with is copied again.
    let work = again_after_deadlock(async || {
        let result = copy_work(step, src, tgt, state, state_dir, &progress).await;
        if result.is_err() {
            let _ = tgt.batch_execute("ROLLBACK").await;
        }
        result
    });
    let outcome = tokio::select! {
        r = work => Some(Some(r)),
        _ = cancel.wait() => None,
        // A server that stopped answering on a connection still open.
        () = stalled, if whole => Some(None),
    };
    let (rows, bytes) = match outcome {
        None => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(ApplyError::Interrupted);
        }
        Some(None) => {
            let message = format!(
                "no data moved for {} s: a server stopped answering on a connection that is \
                 still open",
                crate::sync::stuck().as_secs()
            );
            let mut s = state.lock().await;
            s.fail(&step.id, message.clone());
            state_dir.save(&mut s)?;
            return Err(ApplyError::ConnectionLost(format!("{}: {message}", step.object)));
        }
        Some(Some(Ok(done))) => done,
        Some(Some(Err(e))) => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(failed(step, &e, &mut *state.lock().await, state_dir));
        }
    };
    failpoint("after", &step.id);
    {
        let mut s = state.lock().await;
        s.finish(&step.id, Some(rows));
        if let Some(record) = s.steps.get_mut(&step.id) {
            record.bytes = Some(bytes);
            record.source_lsn = Some(snapshot_lsn.to_string());
            record.source_snapshot = snapshot;
        }
        state_dir.save(&mut s)?;
    }
    events(Event::Done {
        id: step.id.clone(),
        object: step.object.clone(),
        rows: Some(rows),
        bytes: Some(bytes),
        elapsed: started.elapsed(),
    });
    Ok(())
}

/// What one copy step does on its sessions (see [`copy_one`]).
async fn copy_work(
    step: &Step,
    src: &Client,
    tgt: &Client,
    state: &Mutex<State>,
    state_dir: &StateDir,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64), tokio_postgres::Error> {
    match &step.work {
        Work::CopyTable { schema, table, columns, binary, part } => {
            let part = part.as_deref();
            copy_table(src, tgt, schema, table, columns, *binary, part, &progress).await
        }
        Work::EmptyForParts { schema, table, parts } => {
            tgt.batch_execute(&crate::planner::empty_for_parts_sql(schema, table)).await?;
            // The parts' rows are gone: so are their records.
            let mut s = state.lock().await;
            for p in parts {
                s.steps.remove(p);
            }
            // Saved again when the step finishes; if the process dies first, this step is
            // found `running` and the plan empties the table again.
            let _ = state_dir.save(&mut s);
            Ok((0, 0))
        }
        Work::CopyLargeObjects { roles } => copy_large_objects(src, tgt, roles).await,
        _ => Ok((0, 0)),
    }
}

/// Size of the pieces large objects are copied in.
const LO_CHUNK: i32 = 1 << 20;

/// Copies every large object with its id, owner and grants, 1 MB at a time (memory stays
/// bounded whatever their size), in one target transaction. An object with the same id already
/// on the target is one an interrupted run of this step copied (the planner made sure): it is
/// replaced. Returns (objects, bytes).
async fn copy_large_objects(
    src: &Client,
    tgt: &Client,
    roles: &std::collections::BTreeMap<String, String>,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let objects = src
        .query(
            "SELECT l.oid, pg_get_userbyid(l.lomowner)::text, \
                    COALESCE(array_agg(CASE WHEN x.grantee = 0 THEN '' \
                                            ELSE pg_get_userbyid(x.grantee)::text END) \
                             FILTER (WHERE x.grantee IS NOT NULL AND x.grantee <> l.lomowner), '{}'), \
                    COALESCE(array_agg(x.privilege_type::text) \
                             FILTER (WHERE x.grantee IS NOT NULL AND x.grantee <> l.lomowner), '{}'), \
                    obj_description(l.oid, 'pg_largeobject') \
             FROM pg_largeobject_metadata l LEFT JOIN LATERAL aclexplode(l.lomacl) x ON true \
             GROUP BY l.oid, l.lomowner ORDER BY l.oid",
            &[],
        )
        .await?;
    tgt.batch_execute("BEGIN").await?;
    let mut bytes = 0u64;
    for o in &objects {
        let oid: u32 = o.get(0);
        let owner: String = o.get(1);
        let grantees: Vec<String> = o.get(2);
        let privileges: Vec<String> = o.get(3);
        let comment: Option<String> = o.get(4);
        tgt.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1", &[&oid])
            .await?;
        tgt.execute("SELECT lo_create($1)", &[&oid]).await?;
        let mut offset = 0i64;
        loop {
            let row = src
                .query_one("SELECT lo_get($1, $2, $3::int)", &[&oid, &offset, &LO_CHUNK])
                .await?;
            let chunk: Vec<u8> = row.get(0);
            if chunk.is_empty() {
                break;
            }
            tgt.execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &chunk]).await?;
            offset += chunk.len() as i64;
            bytes += chunk.len() as u64;
        }
        if let Some(to) = roles.get(&owner) {
            tgt.batch_execute(&format!("ALTER LARGE OBJECT {oid} OWNER TO {}", ident(to))).await?;
        }
        if let Some(text) = &comment {
            tgt.batch_execute(&format!("COMMENT ON LARGE OBJECT {oid} IS {}", literal(text)))
                .await?;
        }
        for (grantee, privilege) in grantees.iter().zip(&privileges) {
            // PUBLIC keeps its name; a role the target lacks (roles.missing: skip) is left out.
            let to = match grantee.as_str() {
                "" => "PUBLIC".to_string(),
                g => match roles.get(g) {
                    Some(t) => ident(t),
                    None => continue,
                },
            };
            if matches!(privilege.as_str(), "SELECT" | "UPDATE") {
                tgt.batch_execute(&format!("GRANT {privilege} ON LARGE OBJECT {oid} TO {to}"))
                    .await?;
            }
        }
    }
    tgt.batch_execute("COMMIT").await?;
    Ok((objects.len() as u64, bytes))
}

/// Size of the buffers a copy hands to the target.
const COPY_BATCH: usize = 256 * 1024;

/// Streams one table: source `COPY TO STDOUT` into target `COPY FROM STDIN`, chunk by chunk
/// (memory stays bounded whatever the table's size), inside a target transaction that first
/// empties the table. `progress(bytes, rows)` is called about every 200 ms. Returns the rows and
/// bytes copied.
#[allow(clippy::too_many_arguments)]
async fn copy_table(
    src: &Client,
    tgt: &Client,
    schema: &str,
    table: &str,
    columns: &[String],
    binary: bool,
    part: Option<&str>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64), tokio_postgres::Error> {
    // A whole table is emptied and frozen in one transaction; a part is appended (its table's
    // `empty` step emptied it).
    let copy = crate::planner::CopySql::new(schema, table, columns, binary, part);
    tgt.batch_execute("BEGIN").await?;
    if let Some(empty) = &copy.empty {
        tgt.batch_execute(empty).await?;
    }
    let out = src.copy_out(&copy.source).await?;
    let sink = tgt.copy_in::<_, bytes::Bytes>(&copy.target).await?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut last = Instant::now();
    // The source sends one CopyData message per row: batch them into buffers of COPY_BATCH
    // bytes (COPY data need not align with rows) and hand them to the sink without flushing,
    // so the target gets few large messages. Memory stays bounded by one buffer per copy.
    let mut buffer = bytes::BytesMut::with_capacity(COPY_BATCH);
    while let Some(chunk) = out.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        if !binary {
            // Text COPY ends every row with a newline (newlines in values are escaped).
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= COPY_BATCH {
            sink.feed(buffer.split().freeze()).await?;
            buffer.reserve(COPY_BATCH);
        }
        if last.elapsed() >= Duration::from_millis(200) {
            progress(bytes, lines);
            last = Instant::now();
        }
    }
    if !buffer.is_empty() {
        sink.feed(buffer.freeze()).await?;
    }
    let rows = sink.as_mut().finish().await?;
    tgt.batch_execute("COMMIT").await?;
    Ok((rows, bytes))
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
