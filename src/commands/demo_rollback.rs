//! `pgtransit demo --rollback`: the cutover opens a rollback window; the demo writes to the
//! target as the applications would, the window streams it back to the old source, and
//! `pgtransit rollback` makes the old source the primary again with every one of those writes.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use miette::IntoDiagnostic;
use tokio::process::Child;

use crate::conn::Resolved;
use crate::report;

use super::io_err;

/// Cutover, writes on the target, rollback; whether every command succeeded.
pub async fn run(
    out: &mut dyn Write,
    exe: &Path,
    plan_path: &Path,
    mut apply: Child,
    target: &Resolved,
) -> miette::Result<bool> {
    let plan = plan_path.to_string_lossy().to_string();
    let command = async |out: &mut dyn Write, args: &[&str], why: &str| {
        report::say(out, "demo", &format!("pgtransit {} {plan} --auto-approve   ({why})", args[0]))
            .map_err(io_err)?;
        out.flush().map_err(io_err)?;
        tokio::process::Command::new(exe)
            .args(args)
            .args([plan.as_str(), "--auto-approve"])
            .status()
            .await
            .into_diagnostic()
            .map(|s| s.success())
    };
    let cut = command(
        out,
        &["cutover"],
        "fence, drain, sequences, verify, open the rollback window, clean up",
    )
    .await?;
    report::say(
        out,
        "demo",
        "the applications write to the target now, for 4 seconds; the apply streams their \
         changes back to the old source",
    )
    .map_err(io_err)?;
    let client = crate::conn::connect_with(target, "demo/writer", &Default::default()).await?;
    let written =
        super::demo::write_for(&client, Duration::from_secs(4)).await.into_diagnostic()?;
    drop(client);
    report::say(out, "demo", &format!("{written} transactions written to the target"))
        .map_err(io_err)?;
    let back = command(
        out,
        &["rollback"],
        "fence the target, drain to the old source, sequences, verify, lift the old fence",
    )
    .await?;
    let applied = apply.wait().await.into_diagnostic()?;
    if back {
        report::say(
            out,
            "demo",
            "rolled back: the old source is the primary again, with every write made on the \
             target; the target is read-only",
        )
        .map_err(io_err)?;
    }
    Ok(cut && back && applied.success())
}
