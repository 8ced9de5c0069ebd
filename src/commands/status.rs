//! `pgtransit status FILE`: where a migration is, from its state and (when they answer) the
//! servers' live positions. It takes no lock and changes nothing.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::conn::{self, Env};
use crate::execute::Servers;
use crate::report::Format;
use crate::state::StateDir;
use crate::status::{self, Live};

use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The migration plan (YAML), or a saved execution plan.
    pub file: PathBuf,
    /// Output format (`json` has `phase`, `ready_for_cutover`, `lag_bytes`, `lag_seconds`,
    /// `tables`, `applied`).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `pgtransit status`.
pub async fn run(args: &StatusArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec_or_saved(&args.file)?;
    if loaded.spec.databases.is_none() {
        return one(&loaded, args, out).await;
    }
    let members =
        super::several::members_of(&loaded, &Env::from_process(), args.connect.retry_for).await?;
    for member in &members {
        crate::report::say(out, "database", &member.database).map_err(io_err)?;
        one(&member.plan, args, out).await?;
    }
    Ok(Outcome::Done)
}

/// The status of one database's migration.
async fn one(
    loaded: &crate::migration_plan::LoadedMigrationPlan,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    let migration = loaded.spec.name.value.clone();
    let dir = StateDir::new(loaded.state_dir());
    let state = dir.load()?;
    let running = dir.holder();
    let servers = Servers::new(loaded, &Env::from_process(), args.connect.retry_for)
        .map_err(miette::Report::new)?;
    let mut live = Live::default();
    match conn::connect_with(&servers.source, "pgtransit/status", &servers.policy).await {
        Ok(source) => {
            live.reachable = true;
            live.source_lsn = source
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .ok()
                .and_then(|r| crate::stream::parse_lsn(&r.get::<_, String>(0)));
            let slot = crate::naming::slot_name(&migration);
            live.slot = crate::catalog::read_slot(&source, &slot).await.ok().flatten();
        }
        Err(e) => tracing::warn!("the source did not answer ({e}): status from the state only"),
    }
    let wal_warning = loaded.spec.sync.slot_wal_warning.map(|b| b.0);
    let st = status::compute(
        &migration,
        state.as_ref(),
        running,
        &live,
        crate::state::now_f64(),
        wal_warning.unwrap_or(status::RETAINED_WAL_WARNING),
    );
    crate::report::status(out, &st, args.format).map_err(io_err)?;
    // After a cutover with a rollback window: the window's own migration (its lag, the WAL its
    // slot keeps on the target). (As JSON: `status` of the window's plan, one document each.)
    if args.format != Format::Json
        && let Some(window) = super::rollback::open_window(loaded)?
    {
        crate::report::say(out, "rollback window", &window.display().to_string())
            .map_err(io_err)?;
        let reverse = super::plan::load_spec(&window)?;
        return Box::pin(one(&reverse, args, out)).await;
    }
    Ok(Outcome::Done)
}
