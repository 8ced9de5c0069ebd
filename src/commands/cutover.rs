//! `pgtransit cutover FILE`: asks a running `apply` to cut over and waits for the result, or,
//! with no apply running, resumes the stream itself and cuts over as soon as ready.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::report;
use crate::state::{StateDir, now_f64};

use super::apply::ApplyArgs;
use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit cutover`.
#[derive(Debug, Args)]
pub struct CutoverArgs {
    /// The migration plan (YAML), or a saved execution plan.
    pub file: PathBuf,
    /// Cut over without asking.
    #[arg(long)]
    pub auto_approve: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `pgtransit cutover`.
pub async fn run(args: &CutoverArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = super::plan::load_spec_or_saved(&args.file)?;
    if loaded.spec.mode != crate::migration_plan::Mode::Online {
        miette::bail!(
            help = "an offline migration is complete when `pgtransit apply` ends",
            "cutover is for online migrations (this migration plan says `mode: offline`)"
        );
    }
    let dir = StateDir::new(loaded.state_dir());
    if !args.auto_approve && !confirmed(out)? {
        miette::bail!(help = "nothing was changed", "cutover cancelled");
    }
    if loaded.spec.databases.is_some() {
        return super::together::cutover(args, &loaded, out).await;
    }
    let holder = match dir.holder() {
        Some(holder) => holder,
        None => {
            // No apply runs: this command applies (resuming the stream) and cuts over when
            // ready, unless an apply started meanwhile (then it is asked, as below).
            report::say(out, "cutover", "no apply is running: resuming the stream to cut over")
                .map_err(io_err)?;
            let apply = ApplyArgs {
                file: args.file.clone(),
                auto_approve: true,
                jobs: None,
                connect: args.connect.clone(),
            };
            let result = super::apply::run_with(&apply, out, true).await;
            match started_meanwhile(result, &dir) {
                Ok(holder) => holder,
                Err(result) => return result,
            }
        }
    };
    let asked = now_f64();
    let request = dir.path().join(crate::execute::CUTOVER_REQUEST);
    // The running apply acts on it only while this process waits (a request left by a
    // cutover command that was stopped is ignored and removed).
    std::fs::write(&request, format!("{asked} {}\n", std::process::id()))
        .map_err(|e| miette::miette!("cannot write {}: {e}", request.display()))?;
    report::say(
        out,
        "cutover",
        &format!("asked the running apply ({holder}) to cut over once ready; waiting"),
    )
    .map_err(io_err)?;
    loop {
        // Often: the applications wait for this command to say the target is ready.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // (Read before the state: an apply that ends meanwhile has saved it.)
        let ended = dir.holder().is_none();
        let state = dir.load()?;
        let cut = state
            .as_ref()
            .and_then(|s| s.cutover.clone())
            .filter(|c| c.finished_at.is_some_and(|f| f >= asked));
        match cut {
            Some(c) if c.done() => {
                let target = crate::execute::Servers::new(
                    &loaded,
                    &crate::conn::Env::from_process(),
                    args.connect.retry_for,
                )
                .map(|s| s.target.display())
                .unwrap_or_default();
                report::cutover_done(out, &c, &target).map_err(io_err)?;
                return Ok(Outcome::Done);
            }
            Some(c) => {
                miette::bail!(
                    help = if c.fence_lifted {
                        "the fence was lifted: the source takes writes again. Fix the cause and \
                         run `pgtransit cutover` again"
                    } else {
                        "see `pgtransit status`; the source may still be fenced"
                    },
                    "the cutover failed: {}",
                    c.error.unwrap_or_default()
                );
            }
            None if ended => {
                let _ = std::fs::remove_file(&request);
                miette::bail!(
                    help = "run `pgtransit status` to see where it stopped, then `pgtransit \
                            cutover` again",
                    "the apply stopped before it cut over"
                );
            }
            None => {}
        }
    }
}

/// The holder of the lock, when `result` (of this command's own apply) is the refusal of a lock
/// that an apply started since `holder()` found none has taken: that apply is then asked to cut
/// over. Otherwise the result as it is.
pub(super) fn started_meanwhile(
    result: miette::Result<Outcome>,
    dir: &StateDir,
) -> Result<String, miette::Result<Outcome>> {
    match result {
        Err(e) if matches!(e.downcast_ref(), Some(crate::state::StateError::Locked { .. })) => {
            dir.holder().ok_or(Err(e))
        }
        other => Err(other),
    }
}

fn confirmed(out: &mut dyn Write) -> miette::Result<bool> {
    super::confirm(
        out,
        crate::report::cutover_prompt,
        "pass --auto-approve to cut over without confirmation",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(dir: &StateDir) -> miette::Result<Outcome> {
        Ok(dir.lock("cutover m.yaml").map(|_| Outcome::Done)?)
    }

    #[test]
    fn a_cutover_whose_own_apply_finds_the_lock_just_taken_asks_the_apply_that_took_it() {
        let path = std::env::temp_dir().join(format!("pgtransit-meanwhile-{}", std::process::id()));
        let dir = StateDir::new(path.clone());
        let held = dir.lock("apply m.yaml").unwrap();
        let holder = started_meanwhile(locked(&dir), &dir).unwrap();
        assert!(holder.contains("running `pgtransit apply m.yaml`"), "{holder}");
        // Any other failure is the command's result, as it is.
        let other = started_meanwhile(Err(miette::miette!("the source is gone")), &dir);
        assert!(matches!(other, Err(Err(e)) if e.to_string() == "the source is gone"));
        // A refusal whose holder has ended since is the result too.
        let refused = locked(&dir);
        drop(held);
        let ended = started_meanwhile(refused, &dir);
        assert!(matches!(ended, Err(Err(e)) if e.to_string().contains("holds the lock")));
        std::fs::remove_dir_all(path).unwrap();
    }
}
