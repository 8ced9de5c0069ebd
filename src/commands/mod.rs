//! One module per command, each with its own clap arguments (`cli` parses the command line and
//! dispatches here), and what they share: `ConnectArgs`, `Outcome`, `io_err` and the terminal
//! confirmation. Each turns its arguments into calls on the pipeline's stages and hands the
//! results to `report`, which writes every line of output; the only stream a command picks
//! itself is stdout for apply's live progress view (`report::ApplyView`).

pub mod abort;
pub mod apply;
pub mod cutover;
pub mod demo;
mod demo_rollback;
mod demo_server;
pub mod plan;
pub mod rollback;
pub mod several;
pub mod status;
mod together;
pub mod verify;

use std::time::Duration;

use clap::Args;

/// What a successful command tells the exit-code policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; nothing to report through the exit code.
    Done,
    /// A plan with changes (exit 2 under `--detailed-exitcode`).
    ChangesPlanned,
    /// A plan with nothing to do.
    NothingToDo,
    /// The command ran but found errors it already reported (e.g. failing preflight checks).
    Failed,
}

/// Connection behaviour shared by every command that connects.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// How long to keep retrying a server that is unreachable or starting up (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub retry_for: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().map_err(|_| format!("`{s}` is not a duration like 30s"))?;
    match &t[split..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        other => Err(format!("unknown unit `{other}` (use ms, s or m)")),
    }
}

/// Writing to stdout failed (a closed pipe, usually).
pub fn io_err(e: std::io::Error) -> miette::Report {
    miette::miette!("cannot write the output: {e}")
}

/// Asks on the terminal (after `prompt` printed the question) and accepts only `yes`. Without a
/// terminal it is an error whose help is `no_terminal_help` (how to go on without a question).
pub fn confirm(
    out: &mut dyn std::io::Write,
    prompt: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    no_terminal_help: &str,
) -> miette::Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(miette::miette!(
            help = no_terminal_help.to_string(),
            "cannot ask for confirmation: standard input is not a terminal"
        ));
    }
    prompt(out).map_err(io_err)?;
    out.flush().map_err(io_err)?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| miette::miette!("cannot read the answer: {e}"))?;
    Ok(answer.trim() == "yes")
}
