//! The cutover's lifecycle ([`crate::state::CutoverStatus`]): when it is due (its request),
//! the fence and the barrier (put up from the stream, which then drains up to the barrier),
//! then sequences, refreshes, verification, clean-up and the write gap. A failure before
//! verification passes lifts the fence ([`crate::execute::teardown::lift`]), so the source
//! takes writes again and `pgtransit cutover` can run again.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::execute::context::{ApplyError, Ctx, Event, Session, sync_error};
use crate::execute::proof::Proving;
use crate::execute::proof::check_in_fence;
use crate::execute::teardown;
use crate::execute::together::Decision;
use crate::execution_plan::{Step, Work};
use crate::planner::FenceSql;
use crate::state::{CutoverStatus, State, WriteGap, now_f64};

/// When the stream stops for the cutover.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// When `pgtransit cutover` asks: this file appears (in the state directory).
    Requested(std::path::PathBuf),
    /// As soon as the migration is ready (`cutover.mode: auto`, or `pgtransit cutover` with no
    /// apply running).
    WhenReady,
}

/// The cutover, as the stream carries out its first part.
pub struct CutoverRequest<'a> {
    /// When.
    pub trigger: Trigger,
    /// The fence step (its mode).
    pub fence: &'a crate::execution_plan::Step,
    /// The streamed tables (what `lock_tables` locks).
    pub tables: &'a [crate::execution_plan::StreamTable],
}

/// The fence, up.
pub struct Fenced {
    /// The session that put it up: for `lock_tables` it holds the locks until it ends.
    #[allow(dead_code, reason = "held, not read: its locks end with it")]
    pub client: Client,
    /// The source database.
    pub database: String,
    /// When it went up: no client session but the cutover's own is left.
    pub at: Instant,
    /// How long it took to go up (the read-only default committed, every session ended).
    pub went_up_in: Duration,
    /// Where the barrier emitted after it is (an older barrier, from a cutover that failed
    /// earlier, may come through the stream first).
    pub barrier_lsn: u64,
}

/// Whether the cutover is due: `WhenReady`, or a request file whose writer (`pgtransit
/// cutover`, waiting for the result) is still alive; a request left by one that was stopped is
/// removed.
pub(crate) fn triggered(t: &Trigger) -> bool {
    match t {
        Trigger::WhenReady => true,
        Trigger::Requested(file) => {
            let Ok(text) = std::fs::read_to_string(file) else { return false };
            let alive = text
                .split_whitespace()
                .nth(1)
                .is_some_and(|pid| std::path::Path::new("/proc").join(pid).exists());
            if !alive {
                let _ = std::fs::remove_file(file);
            }
            alive
        }
    }
}

/// Ends every client session of the source database that is not pgtransit's, and waits until
/// they are gone (`pg_terminate_backend` only signals). Re-scans, so sessions that connected
/// meanwhile are ended too. A session pgtransit may not end is an error naming it.
async fn end_sessions(
    client: &Client,
    fence: &FenceSql,
    own: &[(i32, String)],
    read_only_since: &str,
) -> Result<(), String> {
    let since = format!("{}::timestamptz", crate::sql::literal(read_only_since));
    let others = fence.others_but(own, &since);
    let started = Instant::now();
    loop {
        let rows = client
            .query(&format!("SELECT pid, usename::text FROM pg_stat_activity WHERE {others}"), &[])
            .await
            .map_err(|e| crate::execute::context::db_message(&e))?;
        if rows.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15) {
            let who: Vec<String> = rows
                .iter()
                .map(|r| format!("pid {} ({})", r.get::<_, i32>(0), r.get::<_, String>(1)))
                .collect();
            return Err(format!("these sessions did not end within 15 s: {}", who.join(", ")));
        }
        for r in &rows {
            let pid: i32 = r.get(0);
            if let Err(e) = client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await {
                let user: String = r.get(1);
                // Only a refusal is about rights; a lost connection is just that.
                let hint =
                    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                        " (connect as a superuser, or a member of pg_signal_backend, to cut over)"
                    } else {
                        ""
                    };
                return Err(format!(
                    "cannot end session pid {pid} of {user}: {}{hint}",
                    crate::execute::context::db_message(&e)
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts the fence up on the source and emits the barrier after it:
/// 1. no prepared transaction may be pending (`COMMIT PREPARED` works in a read-only session);
/// 2. `lock_tables`: this session locks the tables (until the cutover ends);
/// 3. the read-only default is committed (new sessions are read-only);
/// 4. every other session is ended, and gone;
/// 5. the barrier.
pub(crate) async fn fence(
    ctx: &Ctx<'_>,
    c: &CutoverRequest<'_>,
    barrier: &str,
    own: &[&Session],
    state: &mut State,
) -> Result<Fenced, ApplyError> {
    let crate::execution_plan::Work::Fence { database, mode } = &c.fence.work else {
        return Err(sync_error("the cutover's fence step is missing"));
    };
    let servers = ctx.servers;
    let cut = state.cutover.get_or_insert_with(Default::default);
    *cut = crate::state::CutoverState {
        status: CutoverStatus::Fencing,
        requested_at: Some(now_f64()),
        ..Default::default()
    };
    // A cutover runs whole: the records of an earlier attempt (a saved plan keeps its id) do
    // not make this one skip its sequences.
    state.steps.retain(|id, _| !id.starts_with("cutover:"));
    ctx.state_dir.save(state)?;
    if let Trigger::Requested(file) = &c.trigger {
        let _ = std::fs::remove_file(file);
    }
    let failed = |message: String| ApplyError::StepFailed {
        id: c.fence.id.clone(),
        object: c.fence.object.clone(),
        message,
    };
    let fail = |e: tokio_postgres::Error| failed(crate::execute::context::db_message(&e));
    let client =
        crate::conn::connect_with(&servers.source, "pgtransit/cutover", &servers.policy).await?;
    client.batch_execute("SET default_transaction_read_only = off").await.map_err(fail)?;
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE database = $1", &[database])
        .await
        .map_err(fail)?
        .get(0);
    if prepared > 0 {
        return Err(failed(format!(
            "{prepared} prepared transactions are pending in {database} (they could still \
             commit after the fence): COMMIT PREPARED or ROLLBACK PREPARED them, then cut over"
        )));
    }
    let sql = FenceSql::new(database, mode, c.tables);
    // Writes stop (queue behind the lock, then fail read-only) from here.
    let going_up = Instant::now();
    if let Some(lock) = &sql.lock {
        // The locks are held by this session's open transaction until the cutover ends.
        let timeout = FenceSql::LOCK_TIMEOUT;
        client
            .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{timeout}'; {lock}"))
            .await
            .map_err(fail)?;
    }
    // Committed on its own (in one implicit transaction with what follows, a session that
    // connected in between would come back read-write).
    let other =
        crate::conn::connect_with(&servers.source, "pgtransit/cutover", &servers.policy).await?;
    other.batch_execute(&sql.read_only).await.map_err(fail)?;
    // Sessions that start from now on read the read-only default: they are left alone.
    let since: String =
        other.query_one("SELECT clock_timestamp()::text", &[]).await.map_err(fail)?.get(0);
    // pgtransit's own sessions (this one, the heartbeat's) are known by pid and start time:
    // an `application_name` could be anybody's.
    let me = Session::of(&client).await.map_err(fail)?;
    let own: Vec<(i32, String)> =
        own.iter().copied().chain([&me]).map(|s| (s.pid, s.started.clone())).collect();
    end_sessions(&other, &sql, &own, &since).await.map_err(failed)?;
    let at = Instant::now();
    // In a transaction of its own, committed and flushed: the walsender sends a commit at once,
    // where a message outside a transaction waits for the WAL writer's next round (up to
    // `wal_writer_delay`, 200 ms by default, or two). (Not on the fencing session: with
    // `lock_tables` its transaction holds the locks.)
    other.batch_execute(crate::planner::BARRIER_BEGIN).await.map_err(fail)?;
    let emitted: String = other
        .query_one(crate::planner::BARRIER_EMIT, &[&barrier, &format!("{}", now_f64())])
        .await
        .map_err(fail)?
        .get(0);
    other.batch_execute("COMMIT").await.map_err(fail)?;
    let barrier_lsn = crate::stream::parse_lsn(&emitted).unwrap_or(u64::MAX);
    let cut = state.cutover.get_or_insert_with(Default::default);
    cut.status = CutoverStatus::Draining;
    cut.fenced_at = Some(now_f64());
    ctx.state_dir.save(state)?;
    tracing::info!(database = %database, mode = %mode, "source fenced; draining to the barrier");
    let went_up_in = at.duration_since(going_up);
    Ok(Fenced { client, database: database.clone(), at, went_up_in, barrier_lsn })
}

/// Runs the cutover steps after the drain (`steps`: the cutover phase, fence and drain
/// included, which are recorded done).
pub async fn finish(
    ctx: &Ctx<'_>,
    steps: &[&Step],
    fenced: Fenced,
    proving: &Proving,
    state: &mut State,
) -> Result<(), ApplyError> {
    let mut marks = vec![];
    let result = finish_steps(ctx, steps, proving, state, &mut marks).await;
    let verified = state.cutover.as_ref().is_some_and(|c| c.verified());
    match result {
        Ok(()) => {
            let cut = state.cutover.get_or_insert_with(Default::default);
            cut.status = CutoverStatus::Done;
            cut.finished_at = Some(now_f64());
            let done = Instant::now();
            cut.write_gap_seconds = Some(done.duration_since(fenced.at).as_secs_f64());
            cut.write_gap = Some(breakdown(&fenced, &marks, done));
            ctx.state_dir.save(state)?;
            // The session that put the fence up ends: `lock_tables` locks go, the read-only
            // default stays.
            drop(fenced);
            Ok(())
        }
        Err(e) if !verified => {
            let database = fenced.database.clone();
            drop(fenced);
            teardown::lift(ctx, &database, state, &e.to_string()).await;
            Err(e)
        }
        Err(e) => {
            // Verified: the target is the new primary; what failed is the clean-up, which
            // `pgtransit abort` finishes.
            let cut = state.cutover.get_or_insert_with(Default::default);
            cut.error = Some(e.to_string());
            ctx.state_dir.save(state)?;
            Err(ApplyError::StepFailed {
                id: "cutover:cleanup".into(),
                object: "clean-up".into(),
                message: format!(
                    "{e}. The target was verified and is ready for the applications; run \
                     `pgtransit apply FILE` (or `cutover`) again to finish the clean-up, or \
                     `pgtransit abort FILE --auto-approve` to remove what is left"
                ),
            })
        }
    }
}

/// Where the write gap went: from the fence to each status `marks` recorded, to `done`.
fn breakdown(fenced: &Fenced, marks: &Marks, done: Instant) -> WriteGap {
    let at = |status: CutoverStatus| marks.iter().find(|(s, _)| *s == status).map(|(_, t)| *t);
    let finishing = at(CutoverStatus::Finishing).unwrap_or(done);
    let verifying = at(CutoverStatus::Verifying).unwrap_or(finishing);
    let cleaning_up = at(CutoverStatus::CleaningUp).unwrap_or(verifying);
    let secs = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    WriteGap {
        fence: fenced.went_up_in.as_secs_f64(),
        drain: secs(fenced.at, finishing),
        sequences: secs(finishing, verifying),
        verification: secs(verifying, cleaning_up),
        clean_up: secs(cleaning_up, done),
    }
}

/// When the cutover reached each status after the drain (for the write gap's breakdown).
type Marks = Vec<(CutoverStatus, Instant)>;

async fn finish_steps(
    ctx: &Ctx<'_>,
    steps: &[&Step],
    proving: &Proving,
    state: &mut State,
    marks: &mut Marks,
) -> Result<(), ApplyError> {
    let mut set_status = |state: &mut State, status: CutoverStatus| {
        marks.push((status, Instant::now()));
        state.cutover.get_or_insert_with(Default::default).status = status;
        ctx.state_dir.save(state)
    };
    // Another database's failure abandoned the cutover while this one drained: no need to
    // set sequences and verify before lifting the fence.
    if let Some((together, _)) = ctx.together
        && let Some(Decision::Abort(why)) = together.decided()
    {
        return Err(ApplyError::Abandoned(why));
    }
    set_status(state, CutoverStatus::Finishing)?;
    // Inside the write gap: every sequence in one query and one target transaction (a commit
    // and two state saves per sequence cost 6 to 20 ms each), then the refreshes on one pair
    // of sessions.
    let (sql, staged): (Vec<&Step>, Vec<&Step>) = steps.iter().partition(|s| {
        !matches!(
            s.work,
            Work::Fence { .. }
                | Work::Drain
                | Work::Verify { .. }
                | Work::OpenWindow { .. }
                | Work::LiftTargetFence { .. }
                | Work::Cleanup { .. }
        )
    });
    let mut sql = Some(sql);
    for step in staged {
        if matches!(
            step.work,
            Work::Verify { .. }
                | Work::Cleanup { .. }
                | Work::OpenWindow { .. }
                | Work::LiftTargetFence { .. }
        ) && let Some(sql) = sql.take()
        {
            sequences_and_refreshes(&sql, ctx, state).await?;
        }
        match &step.work {
            Work::Fence { .. } | Work::Drain => {
                state.start(&step.id);
                state.finish(&step.id, None);
            }
            Work::Verify { tables } => {
                set_status(state, CutoverStatus::Verifying)?;
                (ctx.events)(Event::Started {
                    id: step.id.clone(),
                    object: step.object.clone(),
                    action: step.action,
                });
                let started = Instant::now();
                let checksums = ctx.spec.verify.checksums;
                let (source, target) = connect_pinned(ctx).await?;
                // What continuous verification proved stays proven: only rows changed since, and
                // tables it did not prove, are compared.
                let checks = check_in_fence(&source, &target, tables, proving, checksums)
                    .await
                    .map_err(|e| failed(step, &e))?;
                let differ: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.equal())
                    .map(|c| {
                        let mut s = format!("{} ({})", c.table, c.counts());
                        if !c.differing_ranges.is_empty() {
                            s.push_str(&format!("; at {}", c.differing_ranges.join(", ")));
                        }
                        s
                    })
                    .collect();
                let cut = state.cutover.get_or_insert_with(Default::default);
                cut.verified = checks;
                cut.checksums_compared = checksums;
                if !differ.is_empty() {
                    return Err(ApplyError::VerifyFailed(differ.join("; ")));
                }
                state.start(&step.id);
                state.finish(&step.id, None);
                if let Some((together, member)) = ctx.together {
                    // Not the primary until every database is: wait for the others, and go
                    // (the decision is on disk) or lift the fence with them.
                    set_status(state, CutoverStatus::Verified)?;
                    done(ctx, step, started);
                    if let Decision::Abort(why) = together.verified(member, ctx.cancel).await {
                        return Err(ApplyError::Abandoned(format!(
                            "this database was verified, but {why}"
                        )));
                    }
                    crate::execute::context::failpoint("after", "cutover:together");
                    set_status(state, CutoverStatus::CleaningUp)?;
                } else {
                    set_status(state, CutoverStatus::CleaningUp)?;
                    done(ctx, step, started);
                }
            }
            Work::OpenWindow { .. } | Work::LiftTargetFence { .. } => {
                crate::execute::context::failpoint("before", &step.id);
                let started = Instant::now();
                window_step(ctx, step, state).await?;
                crate::execute::context::failpoint("after", &step.id);
                state.start(&step.id);
                state.finish(&step.id, None);
                ctx.state_dir.save(state)?;
                done(ctx, step, started);
            }
            Work::Cleanup { slot, publication, origin } => {
                crate::execute::context::failpoint("before", &step.id);
                let started = Instant::now();
                // Verified: the target is the primary now. A server that goes away meanwhile
                // is waited for, as everywhere (everything here is idempotent).
                crate::execute::context::retry(ctx, async || {
                    let policy = &ctx.servers.policy;
                    let app = "pgtransit/cutover";
                    let source =
                        crate::conn::connect_with(&ctx.servers.source, app, policy).await?;
                    let target =
                        crate::conn::connect_with(&ctx.servers.target, app, policy).await?;
                    teardown::cleanup(&source, &target, slot, publication, origin)
                        .await
                        .map_err(|e| failed(step, &e))
                })
                .await?;
                state.start(&step.id);
                state.finish(&step.id, None);
                done(ctx, step, started);
            }
            _ => {}
        }
    }
    if let Some(sql) = sql {
        sequences_and_refreshes(&sql, ctx, state).await?;
    }
    Ok(())
}

/// The rollback window opened, or the old source's fence lifted at the end of a rollback:
/// after verification, so a server that goes away is waited for (both are idempotent).
async fn window_step(ctx: &Ctx<'_>, step: &Step, state: &mut State) -> Result<(), ApplyError> {
    if let Work::OpenWindow { plan_path, plan_text, .. } = &step.work {
        crate::execute::window::write_plan(plan_path, plan_text).map_err(|message| {
            ApplyError::StepFailed { id: step.id.clone(), object: step.object.clone(), message }
        })?;
    }
    crate::execute::context::retry(ctx, async || {
        let app = "pgtransit/cutover";
        let target =
            crate::conn::connect_with(&ctx.servers.target, app, &ctx.servers.policy).await?;
        match &step.work {
            Work::OpenWindow { slot, publication, tables, .. } => {
                crate::execute::window::open(&target, slot, publication, tables).await
            }
            Work::LiftTargetFence { database } => {
                crate::execute::window::lift_target_fence(&target, database).await
            }
            _ => Ok(()),
        }
        .map_err(|e| failed(step, &e))
    })
    .await?;
    if let Work::OpenWindow { plan_path, .. } = &step.work {
        state.cutover.get_or_insert_with(Default::default).rollback_plan = Some(plan_path.clone());
    }
    Ok(())
}

/// The sequences, all at once, then the refreshes (and any other step), in plan order.
async fn sequences_and_refreshes(
    steps: &[&Step],
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<(), ApplyError> {
    crate::execute::steps::set_sequences(steps, ctx, state).await?;
    let others: Vec<&Step> =
        steps.iter().copied().filter(|s| !matches!(s.work, Work::SetSequence { .. })).collect();
    crate::execute::steps::run_steps(&others, ctx, state).await
}

fn done(ctx: &Ctx<'_>, step: &Step, started: Instant) {
    crate::execute::context::step_done(ctx.events, step, started);
}

fn failed(step: &Step, e: &tokio_postgres::Error) -> ApplyError {
    crate::execute::context::step_error(&step.id, &step.object, e)
}

async fn connect_pinned(ctx: &Ctx<'_>) -> Result<(Client, Client), ApplyError> {
    let servers = ctx.servers;
    let source =
        crate::conn::connect_with(&servers.source, "pgtransit/verify", &servers.policy).await?;
    let target =
        crate::conn::connect_with(&servers.target, "pgtransit/verify", &servers.policy).await?;
    for c in [&source, &target] {
        crate::verify::pin(c).await.map_err(|e| ApplyError::StepFailed {
            id: "cutover:verify".into(),
            object: "verification".into(),
            message: crate::execute::context::db_message(&e),
        })?;
    }
    Ok((source, target))
}
