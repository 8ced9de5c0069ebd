//! `pgtransit abort FILE`: removes what pgtransit created for a migration outside its state
//! directory, on the source (replication slot, publication, the replica identities it set)
//! and the target (replication origin), after confirmation, and says what it removed. An
//! abandoned slot keeps the source's WAL forever: abort never leaves it behind. The target's
//! tables and rows stay (a later apply copies every table again).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{ConnectArgs, Outcome, io_err};
use crate::conn::{self, Env};
use crate::execute::Servers;
use crate::execute::teardown;
use crate::planner::Leftover;

/// `pgtransit abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The migration plan (YAML), or a saved execution plan.
    pub file: PathBuf,
    /// Remove without asking.
    #[arg(long)]
    pub auto_approve: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `pgtransit abort`.
pub async fn run(args: &AbortArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec_or_saved(&args.file)?;
    if loaded.spec.databases.is_none() {
        return abort(&loaded, args, out).await;
    }
    // Every database's, under the migration's lock (no apply runs meanwhile).
    let dir = crate::state::StateDir::new(loaded.state_dir());
    let _whole = dir.lock(&format!("abort {}", args.file.display()))?;
    let env = Env::from_process();
    // A cutover decided before a crash is settled first: a database verified when every one
    // was (the decision to go) is a primary, whose fence stays; only its leftovers go.
    super::together::settle(&loaded, &env, args.connect.retry_for).await?;
    for member in super::several::members_of(&loaded, &env, args.connect.retry_for).await? {
        crate::report::say(out, "database", &member.database).map_err(io_err)?;
        abort(&member.plan, args, out).await?;
    }
    Ok(Outcome::Done)
}

/// Aborts the migration of one database.
async fn abort(
    loaded: &crate::migration_plan::LoadedMigrationPlan,
    args: &AbortArgs,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    let migration = loaded.spec.name.value.clone();
    // Holding the lock: no apply runs meanwhile (a running one is named, and must be stopped).
    let (state_dir, _lock) = super::apply::lock(loaded, &format!("abort {}", args.file.display()))?;
    let mut state = state_dir.load()?;
    let servers = Servers::new(loaded, &Env::from_process(), args.connect.retry_for)
        .map_err(miette::Report::new)?;
    let source = conn::connect_with(&servers.source, "pgtransit/abort", &servers.policy).await?;
    // Under a cutover's fence new sessions are read-only; pgtransit's own may write.
    source
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| miette::miette!("{}", crate::execute::db_message(&e)))?;
    let target = conn::connect_with(&servers.target, "pgtransit/abort", &servers.policy).await?;
    let fail = |what: &str, e: tokio_postgres::Error| {
        miette::miette!(
            help = "nothing after this point was removed: fix the cause and run `pgtransit abort` \
                    again",
            "{what}: {}",
            crate::execute::db_message(&e)
        )
    };

    let slot = crate::naming::slot_name(&migration);
    let publication = crate::naming::publication_name(&migration);
    let origin = crate::naming::origin_name(&migration);
    // The same leftovers, removed by the same statements, as the cutover's clean-up.
    let [slot, publication, origin] = Leftover::of_streaming(&slot, &publication, &origin);
    let mut candidates = vec![slot, publication];
    let full = state
        .as_ref()
        .and_then(|s| s.sync.as_ref())
        .map(|s| s.replica_identity_full.clone())
        .unwrap_or_default();
    candidates.extend(full.iter().map(|t| Leftover::replica_identity(t)));
    // A cutover that stopped before verification passed, without lifting its fence.
    let fenced = state.as_ref().and_then(|s| s.cutover.as_ref()).is_some_and(|c| c.fence_left_up());
    if fenced {
        candidates.push(Leftover::fence(&loaded_database(&source).await?));
    }
    candidates.push(origin);
    let mut removals = vec![];
    for leftover in candidates {
        let there = teardown::exists(&source, &target, &leftover)
            .await
            .map_err(|e| fail(&format!("looking for the {}", leftover.what), e))?;
        if there {
            removals.push(leftover);
        }
    }

    let items: Vec<(String, String)> =
        removals.iter().map(|r| (r.what.clone(), r.sql.clone())).collect();
    if removals.is_empty() {
        crate::report::abort_nothing(out, &migration).map_err(io_err)?;
    } else {
        crate::report::abort_preview(out, &migration, &items).map_err(io_err)?;
        if !args.auto_approve && !confirmed(out)? {
            miette::bail!(help = "nothing was removed", "abort cancelled");
        }
        for r in &removals {
            teardown::remove(&source, &target, r).await.map_err(|e| fail(&r.what, e))?;
            crate::report::say(out, "removed", &r.what).map_err(io_err)?;
        }
    }
    // A rollback (a window's cutover) that was verified: the old source is the primary, and
    // takes writes again.
    let rolled_back = state.as_ref().and_then(|s| s.cutover.as_ref()).is_some_and(|c| c.verified());
    if loaded.spec.rollback_of.is_some() && rolled_back {
        let db = loaded_database(&target).await?;
        target
            .batch_execute(&crate::planner::FenceSql::lift(&db))
            .await
            .map_err(|e| fail("lifting the old source's read-only default", e))?;
        crate::report::say(out, "lifted", &format!("the read-only default of {db} on the target"))
            .map_err(io_err)?;
    }
    if let Some(state) = state.as_mut() {
        if let Some(cut) = state.cutover.as_mut().filter(|c| c.verified()) {
            // A cutover that was verified stays on record, now complete: the target is the
            // primary, and no later plan may copy into it again.
            cut.status = crate::state::CutoverStatus::Done;
            cut.finished_at.get_or_insert_with(crate::state::now_f64);
        } else {
            // What the removed objects' steps recorded no longer holds: a new plan creates
            // them again (and, the slot being gone, copies every table again).
            state.sync = None;
            state.cutover = None;
            state.steps.retain(|id, _| {
                !matches!(id.as_str(), "load:slot" | "load:publication" | "load:replica_identity")
                    && !id.starts_with("sync:")
            });
        }
        state_dir.save(state)?;
    }
    crate::report::abort_done(out, !removals.is_empty()).map_err(io_err)?;
    Ok(Outcome::Done)
}

async fn loaded_database(source: &tokio_postgres::Client) -> miette::Result<String> {
    source
        .query_one("SELECT current_database()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| miette::miette!("{}", crate::execute::db_message(&e)))
}

fn confirmed(out: &mut dyn Write) -> miette::Result<bool> {
    super::confirm(
        out,
        crate::report::abort_prompt,
        "pass --auto-approve to remove them without confirmation",
    )
}
