//! The rollback window's commands (`cutover.rollback_window`): `pgtransit rollback FILE` cuts
//! over in the other direction (the window's own migration, which the cutover wrote), and
//! `pgtransit finish FILE` closes the window (its slot, publication and origin removed). The
//! window's stream runs in `pgtransit apply FILE`, which goes on into it after the cutover.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::migration_plan::LoadedMigrationPlan;
use crate::state::StateDir;

use super::abort::AbortArgs;
use super::cutover::CutoverArgs;
use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit rollback` and `pgtransit finish`.
#[derive(Debug, Args)]
pub struct WindowArgs {
    /// The migration plan (YAML) whose cutover opened the window.
    pub file: PathBuf,
    /// Go ahead without asking.
    #[arg(long)]
    pub auto_approve: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The rollback window's migration plan, when `loaded`'s cutover opened one that is still open:
/// not closed by `finish`, nor by a rollback that went through.
pub fn open_window(loaded: &LoadedMigrationPlan) -> miette::Result<Option<PathBuf>> {
    if !loaded.spec.cutover.rollback_window || loaded.spec.databases.is_some() {
        return Ok(None);
    }
    let state = StateDir::new(loaded.state_dir()).load()?;
    let Some(path) = state
        .and_then(|s| s.cutover)
        .filter(|c| c.done())
        .and_then(|c| c.rollback_plan)
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        return Ok(None);
    };
    let rolled_back = rollback_cutover(&path)?.is_some_and(|c| c.done());
    Ok((!rolled_back).then_some(path))
}

/// Where the rollback (the cutover of the window's migration) stands, if it began.
fn rollback_cutover(
    window: &std::path::Path,
) -> miette::Result<Option<crate::state::CutoverState>> {
    let reverse = super::plan::load_spec(window)?;
    Ok(StateDir::new(reverse.state_dir()).load()?.and_then(|s| s.cutover))
}

fn window(loaded: &LoadedMigrationPlan, command: &str) -> miette::Result<PathBuf> {
    open_window(loaded)?.ok_or_else(|| {
        miette::miette!(
            help = "a window opens at a cutover with `cutover.rollback_window: true` in the \
                    migration plan, and stays open until `pgtransit finish`",
            "`pgtransit {command}`: migration {} has no open rollback window",
            loaded.spec.name.value
        )
    })
}

/// `pgtransit rollback FILE`: the cutover of the window's migration (fence the new primary,
/// drain, sequences, verification, the old source's fence lifted, clean-up).
pub async fn rollback(args: &WindowArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec(&args.file)?;
    let path = window(&loaded, "rollback")?;
    crate::report::say(
        out,
        "rollback",
        "the cutover the other way: the new primary fenced, its changes drained to the old \
         source, which takes writes again",
    )
    .map_err(io_err)?;
    let cutover =
        CutoverArgs { file: path, auto_approve: args.auto_approve, connect: args.connect.clone() };
    super::cutover::run(&cutover, out).await
}

/// `pgtransit finish FILE`: closes the window (the target keeps no WAL for it any more); the
/// old source stays read-only.
pub async fn finish(args: &WindowArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec(&args.file)?;
    let path = window(&loaded, "finish")?;
    if rollback_cutover(&path)?.is_some_and(|c| c.verified()) {
        miette::bail!(
            help = "run `pgtransit rollback FILE` again: it finishes the rollback (the old \
                    source takes writes again, the window's leftovers go)",
            "the rollback was verified and did not finish: the old source is the primary now"
        );
    }
    let abort =
        AbortArgs { file: path, auto_approve: args.auto_approve, connect: args.connect.clone() };
    super::abort::run(&abort, out).await?;
    let dir = StateDir::new(loaded.state_dir());
    let _lock = dir.lock(&format!("finish {}", args.file.display()))?;
    if let Some(mut state) = dir.load()? {
        if let Some(cut) = state.cutover.as_mut() {
            cut.rollback_plan = None;
        }
        dir.save(&mut state)?;
    }
    crate::report::say(
        out,
        "finish",
        "the rollback window is closed: the target is the primary for good; the old source \
         stays read-only",
    )
    .map_err(io_err)?;
    Ok(Outcome::Done)
}
