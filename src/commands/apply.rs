//! `pgtransit apply FILE`: a saved execution plan is applied exactly as reviewed (refused as
//! stale when either server changed since); a migration plan is planned afresh, shown, and
//! applied after confirmation.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use miette::IntoDiagnostic;

use crate::conn::Env;
use crate::execute::{self as apply, ApplyError, Cancel, Servers};
use crate::execution_plan::Plan;
use crate::hash::hash_parts;
use crate::migration_plan::{self, LoadedMigrationPlan};
use crate::report::{self, Format};
use crate::state::{State, StateDir};

use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A saved execution plan (from `plan --out`, applied exactly as reviewed), or a migration
    /// plan (YAML: planned afresh, shown, and applied after confirmation).
    pub file: PathBuf,
    /// Apply a freshly computed plan without asking.
    #[arg(long)]
    pub auto_approve: bool,
    /// Tables copied at once (default: `load.jobs` from the migration plan, else 4).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `pgtransit apply`.
pub async fn run(args: &ApplyArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    run_with(args, out, false).await
}

/// Runs `pgtransit apply`; `cutover_now`: cut over as soon as ready (`pgtransit cutover` when
/// no apply runs).
pub async fn run_with(
    args: &ApplyArgs,
    out: &mut dyn Write,
    cutover_now: bool,
) -> miette::Result<Outcome> {
    let env = Env::from_process();
    let text = std::fs::read_to_string(&args.file)
        .into_diagnostic()
        .map_err(|e| e.wrap_err(format!("cannot read {}", args.file.display())))?;
    let saved: Option<Plan> = text
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Plan>(&text))
        .transpose()
        .map_err(|e| {
            miette::miette!(
                help =
                    "pass a plan saved by `pgtransit plan --out FILE`, or a migration plan (YAML)",
                "{} is not a saved execution plan: {e}",
                args.file.display()
            )
        })?;

    let is_saved = saved.is_some();
    let command = format!("apply {}", args.file.display());
    let (loaded, plan, state_dir, _lock) = match saved {
        Some(saved) => {
            if crate::planner::steps_hash(&saved.steps) != saved.steps_hash {
                miette::bail!(
                    help = "a saved plan is applied exactly as reviewed: save it again with \
                            `pgtransit plan --out FILE`",
                    "{} was modified after it was saved (its steps no longer match their hash)",
                    args.file.display()
                );
            }
            let loaded = migration_plan::parse(
                Path::new(&saved.spec_path),
                saved.spec_text.clone(),
                &|name| std::env::var(name).ok(),
            )
            .map_err(miette::Report::new)?;
            let (state_dir, lock) = lock(&loaded, &command)?;
            (loaded, saved, state_dir, lock)
        }
        None => {
            let loaded = super::plan::load_spec(&args.file)?;
            if loaded.spec.databases.is_some() {
                return super::several::apply(args, &loaded, out, cutover_now).await;
            }
            // Cut over with a rollback window open: the window's stream is what is left (not for
            // a `pgtransit cutover`, which has nothing left to do).
            if !cutover_now && let Some(window) = super::rollback::open_window(&loaded)? {
                return window_stream(args, &window, out).await;
            }
            // Locked before planning, so the plan is not computed from a state another apply
            // is changing.
            let (state_dir, lock) = lock(&loaded, &command)?;
            let computed = super::plan::compute(&loaded, &env, args.connect.retry_for).await;
            report::plan(out, &computed.report, Format::Text).map_err(io_err)?;
            let Some(plan) = computed.plan else { return Ok(Outcome::Failed) };
            if !plan.is_applicable() {
                return Ok(Outcome::Failed);
            }
            if !plan.has_work() {
                report::nothing_to_do(out).map_err(io_err)?;
                return Ok(Outcome::Done);
            }
            if !args.auto_approve && !confirmed(out, &plan)? {
                miette::bail!(help = "nothing was changed", "apply cancelled");
            }
            (loaded, plan, state_dir, lock)
        }
    };
    // A saved plan was computed earlier: check it still describes the servers. A fresh one was
    // computed a moment ago.
    let how = How { check_stale: is_saved, cutover_now, member: None };
    let outcome = apply_plan(&loaded, &plan, &state_dir, &env, args, out, how).await?;
    drop(_lock);
    // An apply that streamed until the cutover goes on into the rollback window's stream (a
    // `pgtransit cutover` that ran the stream itself ends with the cutover).
    if !cutover_now && let Some(window) = super::rollback::open_window(&loaded)? {
        return window_stream(args, &window, out).await;
    }
    Ok(outcome)
}

/// The rollback window's stream: the window's own migration applied (streaming only).
async fn window_stream(
    args: &ApplyArgs,
    window: &Path,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    report::say(
        out,
        "rollback window",
        &format!(
            "the target's changes stream back to the old source until `pgtransit finish` \
             (`pgtransit rollback` goes back); the window's migration plan: {}",
            window.display()
        ),
    )
    .map_err(io_err)?;
    let reverse = ApplyArgs { file: window.to_path_buf(), auto_approve: true, ..args.clone() };
    Box::pin(run_with(&reverse, out, false)).await
}

/// How [`apply_plan`] applies.
pub struct How<'a> {
    /// A saved plan: check it still describes the servers (a fresh one was computed a moment
    /// ago).
    pub check_stale: bool,
    /// Cut over as soon as ready.
    pub cutover_now: bool,
    /// One database of several applied at once (each on a thread of its own).
    pub member: Option<MemberRun<'a>>,
}

/// What a database applied at once with others shares with them.
pub struct MemberRun<'a> {
    /// Its member name (`<migration>-<database>`).
    pub name: &'a str,
    /// Where the databases' cutovers meet.
    pub together: &'a crate::execute::together::Together,
    /// The migration's Ctrl-C / SIGTERM, and its stop when another database fails.
    pub cancel: &'a Cancel,
    /// Where its progress lines go (one line at a time, no progress bars).
    pub view: Box<dyn Write + Send + 'a>,
    /// Called once its schema phase is done (the roles it carries are there: the next
    /// database may start).
    pub past_schema: &'a (dyn Fn() + Sync),
    /// The migration's pool of load jobs, and this database's rank in it.
    pub pool: (&'a crate::execute::together::Pool, usize),
}

/// Takes the migration's lock (held until the returned guard drops).
pub fn lock(
    loaded: &LoadedMigrationPlan,
    command: &str,
) -> miette::Result<(StateDir, crate::state::Lock)> {
    let state_dir = StateDir::new(loaded.state_dir());
    let lock = state_dir.lock(command)?;
    Ok((state_dir, lock))
}

fn confirmed(out: &mut dyn Write, plan: &Plan) -> miette::Result<bool> {
    super::confirm(
        out,
        |out| report::confirm_prompt(out, plan),
        "pass --auto-approve to apply a fresh plan without confirmation, or save it with \
         `pgtransit plan --out FILE` and apply that file",
    )
}

/// The identity of a plan, recorded in the state while it is applied.
fn plan_id(plan: &Plan) -> String {
    let f = &plan.fingerprint;
    hash_parts([f.spec.as_str(), f.source.as_str(), f.target.as_str()])
}

/// A unique id for one apply of a freshly computed plan.
fn run_id(plan: &Plan) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hash_parts([plan_id(plan).as_str(), &nanos.to_string(), &std::process::id().to_string()])
}

/// Applies `plan`: staleness check (for saved plans), state, steps. The caller holds the lock
/// of `state_dir` (see [`lock`]).
pub async fn apply_plan(
    loaded: &LoadedMigrationPlan,
    plan: &Plan,
    state_dir: &StateDir,
    env: &Env,
    args: &ApplyArgs,
    out: &mut dyn Write,
    how: How<'_>,
) -> miette::Result<Outcome> {
    let How { check_stale, cutover_now, member } = how;
    if !plan.is_applicable() {
        let n = crate::check::has_errors(&plan.checks);
        return Err(ApplyError::NotApplicable(if n {
            "preflight errors".to_string()
        } else {
            format!("{} conflicts", plan.summary.conflicts)
        })
        .into());
    }
    let mut state = state_dir.load()?.unwrap_or_else(|| State::new(&plan.migration));
    state.check_belongs(
        &state_dir.state_file(),
        &plan.migration,
        plan.source.system_identifier.as_deref(),
        plan.target.system_identifier.as_deref(),
        (Some(plan.source.database.as_str()), Some(plan.target.database.as_str())),
    )?;
    // A saved plan has a stable id (resuming it skips what it did); a fresh plan gets a unique
    // run id, so nothing recorded by earlier runs counts as done by it (the planner already
    // looked at the state and the target, and says itself what remains).
    let id = if check_stale { plan_id(plan) } else { run_id(plan) };
    if check_stale && state.completed.contains(&id) {
        miette::bail!(
            help = "run `pgtransit plan` again: it shows what (if anything) remains",
            "this saved plan was already applied to completion"
        );
    }
    if check_stale {
        // Recompute what the plan was computed from, and refuse it if either side moved. A
        // plan this state is already applying may find the target changed: apply changed it.
        let fresh = super::plan::compute(loaded, env, args.connect.retry_for).await;
        let Some(now) = fresh.plan else {
            report::plan(out, &fresh.report, Format::Text).map_err(io_err)?;
            return Ok(Outcome::Failed);
        };
        let resuming = state.applying.as_deref() == Some(id.as_str());
        let mut changed = vec![];
        if now.fingerprint.spec != plan.fingerprint.spec {
            changed.push("the migration plan");
        }
        if now.fingerprint.source != plan.fingerprint.source {
            changed.push("the source's schema");
        }
        if now.fingerprint.target != plan.fingerprint.target && !resuming {
            changed.push("the target's schema or data");
        }
        if !changed.is_empty() {
            return Err(ApplyError::Stale(format!(
                "{} changed since the plan was computed",
                changed.join(" and ")
            ))
            .into());
        }
    }
    state.applying = Some(id.clone());
    state.source_system_identifier = plan.source.system_identifier.clone();
    state.target_system_identifier = plan.target.system_identifier.clone();
    state.source_database = Some(plan.source.database.clone());
    state.target_database = Some(plan.target.database.clone());
    state_dir.save(&mut state)?;

    let servers = Servers::new(loaded, env, args.connect.retry_for)?;
    let jobs = args
        .jobs
        .or(loaded.spec.load.jobs.map(|j| j as usize))
        .unwrap_or(crate::execution_plan::DEFAULT_JOBS);
    let (cancel, view_out, past_schema, together, pool) = match member {
        Some(m) => (
            m.cancel.clone(),
            m.view,
            Some(m.past_schema),
            Some((m.together, m.name)),
            Some(m.pool),
        ),
        None => {
            let stdout: Box<dyn Write + Send> = Box::new(anstream::stdout());
            (Cancel::on_signals(), stdout, None, None, None)
        }
    };
    let interactive = together.is_none() && std::io::stdout().is_terminal();
    let view = std::sync::Mutex::new((report::ApplyView::new(interactive), view_out));
    let on_event = |e: apply::Event| {
        if let (Some(f), apply::Event::Phase(p)) = (past_schema, &e)
            && *p != crate::execution_plan::Phase::Schema
        {
            f();
        }
        if let Ok(mut guard) = view.lock() {
            let (view, stdout) = &mut *guard;
            let _ = view.event(stdout, &e);
        }
    };
    let ctx = apply::Ctx {
        servers: &servers,
        state_dir,
        jobs,
        cancel: &cancel,
        events: &on_event,
        spec: &loaded.spec,
        cutover_now,
        sessions: Default::default(),
        together,
        pool,
    };
    let result = apply::run(plan, &ctx, &mut state).await;
    let guard = view.lock().map_err(|_| miette::miette!("the output lock was poisoned"))?;
    guard.0.summary(out).map_err(io_err)?;
    match result? {
        apply::Finished::Complete | apply::Finished::CutOver => {
            if check_stale {
                state.completed.push(id);
            }
            state.applying = None;
            state_dir.save(&mut state)?;
            match state.cutover.as_ref().filter(|c| c.done()) {
                Some(cut) => report::cutover_done(out, cut, &plan.target.endpoint),
                None => report::apply_done(out, &guard.0, &state_dir.state_file()),
            }
            .map_err(io_err)?;
        }
        apply::Finished::StreamingStopped => {
            report::streaming_stopped(out, state.sync.as_ref(), &state_dir.state_file())
                .map_err(io_err)?;
        }
    }
    Ok(Outcome::Done)
}
