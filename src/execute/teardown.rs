//! Taking down what a migration put up on the servers: the fence (lifted after a failed
//! cutover), and the slot, publication, origin and replica identities (the cutover's clean-up,
//! and `pgtransit abort`). The statements are the planner's ([`FenceSql`], [`Leftover`]): what
//! the plan shows is what runs.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::execute::context::{ApplyError, Ctx, retry, step_error};
use crate::planner::{FenceSql, Leftover, LeftoverKind};
use crate::state::{State, now_f64};

/// Lifts the fence after a failure: the source takes writes again. A source that went away is
/// waited for (`--retry-for`); what could not be done is recorded (the next `apply` tries
/// again) and said for the operator. Returns whether the fence is lifted.
pub async fn lift(ctx: &Ctx<'_>, database: &str, state: &mut State, why: &str) -> bool {
    let sql = FenceSql::lift(database);
    let fail = |e: tokio_postgres::Error| step_error("cutover:fence", "lifting the fence", &e);
    let attempt = async || -> Result<(), ApplyError> {
        let policy = &ctx.servers.policy;
        let c = crate::conn::connect_with(&ctx.servers.source, "pgtransit/cutover", policy).await?;
        // (Two statements: one implicit transaction would start read-only.)
        c.batch_execute("SET default_transaction_read_only = off").await.map_err(fail)?;
        c.batch_execute(&sql).await.map_err(fail)
    };
    let lifted = retry(ctx, attempt).await;
    if let Err(e) = &lifted {
        tracing::error!("the fence could not be lifted ({e}): run `{sql};` on the source");
    }
    close_window(ctx, state).await;
    let cut = state.cutover.get_or_insert_with(Default::default);
    cut.status = crate::state::CutoverStatus::Failed;
    cut.error = Some(why.to_string());
    cut.fence_lifted = lifted.is_ok();
    cut.finished_at = Some(now_f64());
    let _ = ctx.state_dir.save(state);
    lifted.is_ok()
}

/// A cutover that failed before verification passed closes the rollback window it may have
/// opened (the next attempt opens it at its own cutover point). Best effort: what is left is
/// said, and dropped by that next attempt.
async fn close_window(ctx: &Ctx<'_>, state: &mut State) {
    let spec = ctx.spec;
    if !spec.cutover.rollback_window || spec.rollback_of.is_some() {
        return;
    }
    let reverse = crate::rollback::reverse_name(&spec.name.value);
    let (slot, publication) =
        (crate::naming::slot_name(&reverse), crate::naming::publication_name(&reverse));
    let attempt = async || -> Result<(), ApplyError> {
        let policy = &ctx.servers.policy;
        let c = crate::conn::connect_with(&ctx.servers.target, "pgtransit/cutover", policy).await?;
        crate::execute::window::close(&c, &slot, &publication)
            .await
            .map_err(|e| step_error("cutover:rollback_window", "the rollback window", &e))
    };
    match retry(ctx, attempt).await {
        Ok(()) => {
            if let Some(cut) = state.cutover.as_mut() {
                cut.rollback_plan = None;
            }
        }
        Err(e) => tracing::error!(
            "the rollback window's slot {slot} could not be dropped from the target ({e}): the \
             next cutover drops it, or run SELECT pg_drop_replication_slot('{slot}') there"
        ),
    }
}

/// Drops the slot (once released), the publication and the origin (once released), whichever
/// exist. Returns what it dropped.
pub async fn cleanup(
    source: &Client,
    target: &Client,
    slot: &str,
    publication: &str,
    origin: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut dropped = vec![];
    // A session opened after the fence is read-only by default; pgtransit's own may write.
    source.batch_execute("SET default_transaction_read_only = off").await?;
    for leftover in Leftover::of_streaming(slot, publication, origin) {
        if exists(source, target, &leftover).await? {
            remove(source, target, &leftover).await?;
            dropped.push(leftover.what);
        }
    }
    Ok(dropped)
}

/// Whether `leftover` is there (a fence: always, as far as the server can say).
pub async fn exists(
    source: &Client,
    target: &Client,
    leftover: &Leftover,
) -> Result<bool, tokio_postgres::Error> {
    let (client, sql, name) = match &leftover.kind {
        LeftoverKind::Slot(n) => {
            (source, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", n)
        }
        LeftoverKind::Publication(n) => {
            (source, "SELECT 1 FROM pg_publication WHERE pubname = $1", n)
        }
        LeftoverKind::Origin(n) => {
            (target, "SELECT 1 FROM pg_replication_origin WHERE roname = $1", n)
        }
        LeftoverKind::ReplicaIdentity(t) => {
            (source, "SELECT 1 FROM pg_class WHERE oid = to_regclass($1) AND relreplident = 'f'", t)
        }
        LeftoverKind::Fence(_) => return Ok(true),
    };
    Ok(client.query_opt(sql, &[name]).await?.is_some())
}

/// Removes `leftover` with its statement: a slot once the session that holds it released it
/// (or was ended), an origin once the stream's target session released it (it may take a
/// moment to end).
pub async fn remove(
    source: &Client,
    target: &Client,
    leftover: &Leftover,
) -> Result<(), tokio_postgres::Error> {
    let client = if leftover.on_source() { source } else { target };
    match &leftover.kind {
        LeftoverKind::Slot(slot) => {
            release_slot(source, slot).await?;
            client.batch_execute(&leftover.sql).await
        }
        LeftoverKind::Origin(_) => {
            let started = Instant::now();
            loop {
                match client.batch_execute(&leftover.sql).await {
                    Err(e) if started.elapsed() < Duration::from_secs(10) && e.code().is_some() => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        }
        _ => client.batch_execute(&leftover.sql).await,
    }
}

/// Waits (up to 10 s) for the slot to be released by the session that held it (an apply that
/// was just stopped or killed); then ends that session.
async fn release_slot(source: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    let started = Instant::now();
    loop {
        let pid: Option<i32> = source
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await?
            .map(|r| r.get(0));
        let Some(pid) = pid else { return Ok(()) };
        if started.elapsed() > Duration::from_secs(20) {
            // Dropping it fails and says why.
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            source.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
