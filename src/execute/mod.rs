//! The executor: runs an execution plan's steps against the servers, recording each in the
//! state. This package is the only code that changes a migration's servers (the demo's and the
//! tests' throwaway clusters aside); `pgtransit abort` changes them through [`teardown`] too.
//!
//! The flow, and the files, one way (each uses only those after it):
//! - `mod.rs` (here): the phases in order: schema, load, post-load, then sync and cutover.
//! - [`load`]: the slot and the source snapshot (exported, or the slot's), and the copies
//!   under it, with each table's builds as soon as its copy is done.
//! - [`sync`]: change streaming (`run`: the loop; `applier`: batches of statements on the
//!   target; `watch`: heartbeats and schema drift on the source), which puts the cutover's
//!   fence up and drains to its barrier.
//! - [`cutover`]: the cutover's lifecycle: when it is due, the fence and the barrier (put up
//!   from the stream), then sequences, refreshes, verification, clean-up and the write gap.
//! - [`proof`]: continuous verification: chunks compared at consistent points while the
//!   stream runs (the applier takes part through a handshake), and what the cutover then
//!   compares inside its fence: the rows changed since, by key.
//! - [`steps`]: steps run on workers' sessions, `jobs` at a time, each after what it needs:
//!   the one match on what a step runs.
//! - [`teardown`]: the fence lifted; the slot, publication, origin and replica identities
//!   removed (the cutover's clean-up and `abort`), with the planner's statements.
//! - [`session`]: watchdogs and the ending of sessions a lost attempt left behind.
//! - [`context`]: `Ctx`, events, errors, cancellation, retry after a lost connection,
//!   failpoints.
//!
//! Rules:
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

mod context;
mod cutover;
mod load;
mod proof;
mod session;
mod steps;
mod sync;
pub mod teardown;
pub mod together;
mod window;

use std::time::Duration;

use crate::execution_plan::{Phase, Plan, Step, Work};
use crate::state::State;

pub(crate) use context::db_message;
pub use context::{ApplyError, Cancel, Ctx, Event, Servers, connect_target};

use crate::execute::context::with_reconnect;
use crate::execute::steps::run_phase;

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
        if !crate::execute::teardown::lift(ctx, database, state, "interrupted before verification")
            .await
        {
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
                let continuous =
                    steps.iter().find(|s| matches!(s.work, Work::ContinuousVerify { .. }));
                return sync_and_cutover(step, &of(Phase::Cutover), continuous, ctx, state);
            }
            continue;
        }
        // A server that goes away is waited for, and the phase goes on where it stopped: what
        // is done is recorded, what was cut off was rolled back.
        with_reconnect(ctx, state, async |state| match phase {
            // Copies (and each copied table's index builds) run `jobs` at a time; copies read
            // one snapshot.
            Phase::Load => load::load(&steps, ctx, state).await,
            // What may lock several tables runs after the builds, each after what it needs.
            Phase::PostLoad => run_phase(&steps, ctx.jobs, ctx, state).await,
            // DDL is quick: one connection, in plan order.
            _ => run_phase(&steps, 1, ctx, state).await,
        })
        .await?;
    }
    Ok(Finished::Complete)
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
    continuous: Option<&&Step>,
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
    let trigger =
        if ctx.cutover_now || ctx.spec.cutover.mode == crate::migration_plan::CutoverMode::Auto {
            crate::execute::cutover::Trigger::WhenReady
        } else {
            crate::execute::cutover::Trigger::Requested(ctx.state_dir.path().join(CUTOVER_REQUEST))
        };
    let fence = cutover_steps.iter().find(|s| matches!(s.work, Work::Fence { .. }));
    let cutover =
        fence.map(|f| crate::execute::cutover::CutoverRequest { trigger, fence: f, tables });
    // Continuous verification, as the execution plan says.
    let settings = continuous.map(|step| match &step.work {
        Work::ContinuousVerify { tables, rows_per_second, repair } => {
            Some(crate::execute::proof::Settings {
                tables: tables.clone(),
                rows_per_second: *rows_per_second,
                repair: *repair,
            })
        }
        _ => None,
    });
    let proving =
        crate::execute::proof::Proving::new(state.verification.clone(), settings.flatten());
    let work = async {
        // A server that goes away (network, restart) is waited for; the stream then resumes
        // from the target's recorded position.
        let stopped = with_reconnect(ctx, state, async |state| {
            let request = crate::execute::sync::StreamRequest {
                slot,
                publication,
                origin,
                tables,
                max_lag,
                drift_every: DRIFT_CHECK,
                scope: &scope,
                cutover: cutover.as_ref(),
                proving: &proving,
            };
            crate::execute::sync::stream(ctx, &request, state).await
        })
        .await;
        match stopped {
            Ok(crate::execute::sync::Stopped::OnRequest) => Ok(Finished::StreamingStopped),
            Ok(crate::execute::sync::Stopped::Drained(fenced)) => {
                crate::execute::cutover::finish(ctx, cutover_steps, *fenced, &proving, state)
                    .await?;
                Ok(Finished::CutOver)
            }
            Err(e) => {
                // Fenced, but not drained: lift the fence.
                let fenced = state.cutover.as_ref().is_some_and(|c| c.fenced_undrained());
                if fenced && let Some(Work::Fence { database, .. }) = fence.map(|f| &f.work) {
                    crate::execute::teardown::lift(ctx, database, state, &e.to_string()).await;
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
