//! `pgtransit abort FILE`: removes what pgtransit created for a migration outside its state
//! directory, on the source (replication slot, publication, the replica identities it set)
//! and the target (replication origin), after confirmation, and says what it removed. An
//! abandoned slot keeps the source's WAL forever: abort never leaves it behind. The target's
//! tables and rows stay (a later apply copies every table again).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::apply::Servers;
use crate::conn::{self, Env};
use crate::sql::{ident, literal};

use super::{ConnectArgs, Outcome, io_err};

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

/// Something abort removes.
struct Removal {
    /// For people.
    what: String,
    /// On the source or the target.
    on_source: bool,
    /// What runs.
    sql: String,
}

/// Runs `pgtransit abort`.
pub async fn run(args: &AbortArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec_or_saved(&args.file)?;
    let migration = loaded.spec.name.value.clone();
    // Holding the lock: no apply runs meanwhile (a running one is named, and must be stopped).
    let (state_dir, _lock) =
        super::apply::lock(&loaded, &format!("abort {}", args.file.display()))?;
    let mut state = state_dir.load()?;
    let servers = Servers::new(&loaded, &Env::from_process(), args.connect.retry_for)
        .map_err(miette::Report::new)?;
    let source = conn::connect_with(&servers.source, "pgtransit/abort", &servers.policy).await?;
    // Under a cutover's fence new sessions are read-only; pgtransit's own may write.
    source
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| miette::miette!("{}", crate::apply::db_message(&e)))?;
    let target = conn::connect_with(&servers.target, "pgtransit/abort", &servers.policy).await?;
    let fail = |what: &str, e: tokio_postgres::Error| {
        miette::miette!(
            help = "nothing after this point was removed: fix the cause and run `pgtransit abort` \
                    again",
            "{what}: {}",
            crate::apply::db_message(&e)
        )
    };

    let slot = crate::naming::slot_name(&migration);
    let publication = crate::naming::publication_name(&migration);
    let origin = crate::naming::origin_name(&migration);
    let mut removals = vec![];
    if crate::catalog::read_slot(&source, &slot)
        .await
        .map_err(|e| miette::miette!("{e}"))?
        .is_some()
    {
        removals.push(Removal {
            what: format!("replication slot {slot} (source)"),
            on_source: true,
            sql: format!("SELECT pg_drop_replication_slot({})", literal(&slot)),
        });
    }
    let has_publication = source
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| fail("reading the source's publications", e))?
        .is_some();
    if has_publication {
        removals.push(Removal {
            what: format!("publication {publication} (source)"),
            on_source: true,
            sql: format!("DROP PUBLICATION {}", ident(&publication)),
        });
    }
    let full = state
        .as_ref()
        .and_then(|s| s.sync.as_ref())
        .map(|s| s.replica_identity_full.clone())
        .unwrap_or_default();
    for table in full {
        let still_full = source
            .query_opt(
                "SELECT 1 FROM pg_class WHERE oid = to_regclass($1) AND relreplident = 'f'",
                &[&table],
            )
            .await
            .map_err(|e| fail("reading the source's replica identities", e))?
            .is_some();
        if still_full {
            removals.push(Removal {
                what: format!("replica identity FULL of {table}, back to DEFAULT (source)"),
                on_source: true,
                sql: format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT"),
            });
        }
    }
    // A cutover that stopped before verification passed, without lifting its fence.
    let fenced = state.as_ref().and_then(|s| s.cutover.as_ref()).is_some_and(|c| c.fence_left_up());
    if fenced {
        let db = &loaded_database(&source).await?;
        removals.push(Removal {
            what: format!("the cutover's fence on database {db}: it takes writes again (source)"),
            on_source: true,
            sql: format!("ALTER DATABASE {} RESET default_transaction_read_only", ident(db)),
        });
    }
    if crate::catalog::read_origin(&target, &origin)
        .await
        .map_err(|e| miette::miette!("{e}"))?
        .is_some()
    {
        removals.push(Removal {
            what: format!("replication origin {origin} (target)"),
            on_source: false,
            sql: format!("SELECT pg_replication_origin_drop({})", literal(&origin)),
        });
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
            let client = if r.on_source { &source } else { &target };
            if r.sql.starts_with("SELECT pg_drop_replication_slot") {
                crate::cutover::release_slot(&source, &slot).await.map_err(|e| fail(&r.what, e))?;
            }
            client.batch_execute(&r.sql).await.map_err(|e| fail(&r.what, e))?;
            crate::report::say(out, "removed", &r.what).map_err(io_err)?;
        }
    }
    if let Some(state) = state.as_mut() {
        // What the removed objects' steps recorded no longer holds: a new plan creates them
        // again (and, the slot being gone, copies every table again).
        state.sync = None;
        state.cutover = None;
        state.steps.retain(|id, _| {
            !matches!(id.as_str(), "load:slot" | "load:publication" | "load:replica_identity")
                && !id.starts_with("sync:")
        });
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
        .map_err(|e| miette::miette!("{}", crate::apply::db_message(&e)))
}

fn confirmed(out: &mut dyn Write) -> miette::Result<bool> {
    super::confirm(
        out,
        crate::report::abort_prompt,
        "pass --auto-approve to remove them without confirmation",
    )
}
