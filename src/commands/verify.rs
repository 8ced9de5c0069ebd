//! `pgtransit verify FILE`: compares source and target now. Schema: the same object comparison
//! `plan` makes (what it would create, align or report as a conflict). Data: per table row
//! counts and checksums (`verify`). While an apply streams, row differences may be changes not
//! yet applied, and are reported as such.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::conn::{self, Env};
use crate::execution_plan::{Action, Phase};
use crate::report::Format;
use crate::state::StateDir;

use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The migration plan (YAML), or a saved execution plan.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `pgtransit verify`.
pub async fn run(args: &VerifyArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec_or_saved(&args.file)?;
    if loaded.spec.databases.is_none() {
        return one(&loaded, args, out).await;
    }
    let members =
        super::several::members_of(&loaded, &Env::from_process(), args.connect.retry_for).await?;
    let mut outcome = Outcome::Done;
    for member in &members {
        crate::report::say(out, "database", &member.database).map_err(io_err)?;
        if one(&member.plan, args, out).await? == Outcome::Failed {
            outcome = Outcome::Failed;
        }
    }
    Ok(outcome)
}

/// Verifies one database's migration.
async fn one(
    loaded: &crate::migration_plan::LoadedMigrationPlan,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    let env = Env::from_process();
    let computed = super::plan::compute(loaded, &env, args.connect.retry_for).await;
    let Some(plan) = computed.plan else {
        crate::report::plan(out, &computed.report, crate::report::Format::Text).map_err(io_err)?;
        return Ok(Outcome::Failed);
    };
    let schema_differences = plan
        .steps
        .iter()
        .filter(|s| matches!(s.phase, Phase::Schema | Phase::PostLoad))
        .filter(|s| matches!(s.action, Action::Create | Action::Update | Action::Conflict))
        .map(|s| format!("{} {}", s.action.name(), s.object))
        .collect();
    let servers = crate::execute::Servers::new(loaded, &env, args.connect.retry_for)
        .map_err(miette::Report::new)?;
    let source = conn::connect_with(&servers.source, "pgtransit/verify", &servers.policy).await?;
    let target = conn::connect_with(&servers.target, "pgtransit/verify", &servers.policy).await?;
    let db = |e: tokio_postgres::Error| miette::miette!("{}", crate::execute::db_message(&e));
    for c in [&source, &target] {
        crate::verify::pin(c).await.map_err(db)?;
    }
    let tables =
        crate::verify::compare(&source, &target, &plan.tables, loaded.spec.verify.checksums)
            .await
            .map_err(db)?;
    let dir = StateDir::new(loaded.state_dir());
    let sync_running = dir.holder().is_some()
        && dir.load().ok().flatten().and_then(|s| s.sync).is_some_and(|s| s.streaming);
    let report = crate::verify::Report {
        migration: loaded.spec.name.value.clone(),
        schema_differences,
        tables,
        sync_running,
    };
    crate::report::verify(out, &report, args.format).map_err(io_err)?;
    Ok(if report.identical() || report.sync_running && report.schema_differences.is_empty() {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}
