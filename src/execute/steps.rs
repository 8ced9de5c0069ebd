//! Steps run on a worker's sessions, `jobs` at a time, each after what it needs.

use std::time::Instant;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::conn;
use crate::execution_plan::{Action, Step, Work};
use crate::sql::{literal, qualified_ident};
use crate::state::State;

use crate::execute::context::Session;
use crate::execute::context::{
    ApplyError, Ctx, Event, again_after_deadlock, already_exists, connect_target, failed,
    failpoint, step_done, step_error,
};
use crate::execute::session::cancel_session;

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
pub(crate) async fn run_phase(
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
            let me = Session::of(&target)
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
pub(crate) async fn schedule<C>(
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

/// Runs one step; `target` is the worker's target session (and who it is on the server).
pub(crate) async fn run_step(
    step: &Step,
    source: &Client,
    (target, session): (&Client, &Session),
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
    if let Work::OpenWindow { plan_path, plan_text, .. } = &step.work {
        crate::execute::window::write_plan(plan_path, plan_text).map_err(|message| {
            ApplyError::StepFailed { id: step.id.clone(), object: step.object.clone(), message }
        })?;
    }
    let work = again_after_deadlock(async || {
        match &step.work {
            Work::TargetSql => target_sql(target, &step.sql).await,
            Work::CreateRole { role } => create_role(source, target, role, &step.sql).await,
            Work::SetSequence { schema, sequence, margin } => {
                set_sequence(source, target, schema, sequence, *margin).await
            }
            Work::SourceSql => in_transaction(source, &step.sql).await,
            Work::ReplicaIdentityFull { tables } => {
                let sql = crate::planner::replica_identity_full_sql(tables);
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
            | Work::ContinuousVerify { .. }
            | Work::None => Ok(()),
            // A verified cutover's rollback window or rollback, cut off before its clean-up.
            Work::OpenWindow { slot, publication, tables, plan_path, .. } => {
                let r = crate::execute::window::open(target, slot, publication, tables).await;
                if r.is_ok() {
                    let mut state = shared.lock().await;
                    if let Some(cut) = state.cutover.as_mut() {
                        cut.rollback_plan = Some(plan_path.clone());
                    }
                }
                r
            }
            Work::LiftTargetFence { database } => {
                crate::execute::window::lift_target_fence(target, database).await
            }
            // A verified cutover's clean-up that was cut off: finished, and the cutover with it.
            Work::Cleanup { slot, publication, origin } => {
                let r =
                    crate::execute::teardown::cleanup(source, target, slot, publication, origin)
                        .await;
                if r.is_ok() {
                    let mut state = shared.lock().await;
                    if let Some(cut) = state.cutover.as_mut() {
                        cut.status = crate::state::CutoverStatus::Done;
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
    let on_target =
        matches!(step.work, Work::TargetSql | Work::SetSequence { .. } | Work::CreateRole { .. });
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

/// Creates a role whose password verifier is read from the source now (`sql`: the step's, whose
/// last statement is `globals::password_sql(role, VERIFIER)`). In one transaction: the step's
/// other statements first, then the password on its own, so that a failing statement (a role
/// already there, when an interrupted step runs again) never carries the verifier into the
/// server's log; with the server's statement logging and sampling, and statement statistics,
/// off around it where pgtransit's role may say so (a superuser).
async fn create_role(
    source: &Client,
    target: &Client,
    role: &str,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let verifier: Option<String> = source
        .query_opt("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1", &[&role])
        .await?
        .and_then(|r| r.get(0));
    let password = format!("\n{}", crate::globals::password_sql(role, crate::globals::VERIFIER));
    let others = sql.replacen(&password, "", 1);
    // Sampling is decided when a transaction begins: these are set for the session, before.
    const QUIET: &str = "('log_statement', 'none'), ('log_min_error_statement', 'panic'), \
        ('log_min_duration_statement', '-1'), ('log_min_duration_sample', '-1'), \
        ('log_statement_sample_rate', '0'), ('log_transaction_sample_rate', '0'), \
        ('pg_stat_statements.track_utility', 'off')";
    let quiet = |value: &str| {
        format!(
            "SELECT pg_catalog.set_config(name, {value}, false) FROM (VALUES {QUIET}) AS v(name, \
             value) WHERE current_setting('is_superuser') = 'on' \
             AND current_setting(name, true) IS NOT NULL"
        )
    };
    target.batch_execute(&quiet("value")).await?;
    let script = format!("BEGIN;\nSET LOCAL check_function_bodies = false;\n{others}");
    let result = async {
        target.batch_execute(&script).await?;
        let Some(verifier) = verifier else {
            // The plan saw a password: one gone since is an error, not a role without one.
            let message = format!(
                "the source role {} has no password any more (the plan read one): plan again",
                crate::sql::display(role)
            );
            target
                .execute("SELECT pg_catalog.set_config('pgtransit.message', $1, true)", &[&message])
                .await?;
            return target
                .batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION '%', current_setting('pgtransit.message'); END $$",
                )
                .await;
        };
        let password = crate::globals::password_sql(role, &crate::sql::literal(&verifier));
        target.batch_execute(&password).await?;
        target.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    // The server's own settings again for the session's next statements.
    let reset = quiet("(SELECT reset_val FROM pg_catalog.pg_settings s WHERE s.name = v.name)");
    let _ = target.batch_execute(&reset).await;
    result
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
    let row = source.query_one(&read_sequence_sql(0, &name), &[]).await?;
    let setval = setval_for(&name, &row, margin);
    // setval alone assigns no transaction id, and such a commit is not flushed even with
    // synchronous_commit = on: txid_current() makes this one durable before it returns.
    target_sql(target, &format!("SELECT txid_current(); {setval}")).await
}

/// Reads sequence `name` (quoted) on the source: `n`, its value, whether it was called, and its
/// increment.
fn read_sequence_sql(n: usize, name: &str) -> String {
    format!(
        "SELECT {n}, s.last_value, s.is_called, p.seqincrement FROM {name} s, pg_sequence p \
         WHERE p.seqrelid = {}::regclass",
        literal(name)
    )
}

/// The `setval` that sets sequence `name` on the target from a row of [`read_sequence_sql`],
/// plus `margin` in the sequence's own direction.
fn setval_for(name: &str, row: &tokio_postgres::Row, margin: u64) -> String {
    let (value, called, increment): (i64, bool, i64) = (row.get(1), row.get(2), row.get(3));
    let margin = i64::try_from(margin).unwrap_or(i64::MAX);
    let value =
        if increment < 0 { value.saturating_sub(margin) } else { value.saturating_add(margin) };
    let called = called || margin > 0;
    crate::planner::setval_sql(name, &value.to_string(), &called.to_string())
}

/// The cutover's sequences, together (what [`set_sequence`] does for one): read on the fenced
/// source in one query, set on the target in one transaction, recorded with one save of the
/// state before and one after: inside the write gap, one commit to wait for rather than one per
/// sequence. A run cut off anywhere sets them all again (`setval` is idempotent).
pub(crate) async fn set_sequences(
    steps: &[&Step],
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<(), ApplyError> {
    let todo: Vec<(&Step, String, u64)> = steps
        .iter()
        .filter(|s| s.action.is_work() && !state.is_done_in_this_plan(&s.id))
        .filter_map(|s| match &s.work {
            Work::SetSequence { schema, sequence, margin } => {
                Some((*s, qualified_ident(schema, sequence), *margin))
            }
            _ => None,
        })
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    for (step, ..) in &todo {
        failpoint("before", &step.id);
        state.start(&step.id);
        (ctx.events)(Event::Started {
            id: step.id.clone(),
            object: step.object.clone(),
            action: step.action,
        });
    }
    ctx.state_dir.save(state)?;
    let started = Instant::now();
    let servers = ctx.servers;
    let source = conn::connect_with(&servers.source, "pgtransit/cutover", &servers.policy).await?;
    let target = connect_target(servers, "pgtransit/cutover").await?;
    let read: Vec<String> =
        todo.iter().enumerate().map(|(n, (_, name, _))| read_sequence_sql(n, name)).collect();
    let set = async {
        let rows = source.query(&read.join(" UNION ALL "), &[]).await?;
        let mut sql = String::from("SELECT txid_current();");
        for row in &rows {
            let n: i32 = row.get(0);
            let (_, name, margin) = &todo[n as usize];
            sql.push_str(&format!("\n{}", setval_for(name, row, *margin)));
        }
        target_sql(&target, &sql).await?;
        Ok::<_, tokio_postgres::Error>(rows.len())
    };
    let set = match set.await {
        Ok(n) if n == todo.len() => Ok(()),
        Ok(n) => Err(format!("{n} of {} sequences were read on the source", todo.len())),
        Err(e) => Err(crate::execute::context::db_message(&e)),
    };
    if let Err(message) = set {
        // Each step failed, as it would have alone (nothing was set: one transaction).
        let (step, ..) = todo[0];
        for (s, ..) in &todo {
            state.fail(&s.id, message.clone());
        }
        ctx.state_dir.save(state)?;
        return Err(ApplyError::StepFailed {
            id: step.id.clone(),
            object: step.object.clone(),
            message,
        });
    }
    for (step, ..) in &todo {
        failpoint("after", &step.id);
        state.finish(&step.id, None);
        step_done(ctx.events, step, started);
    }
    ctx.state_dir.save(state)?;
    Ok(())
}
