//! One module per command. Each turns parsed arguments into calls on the pipeline's stages and
//! hands the results to `report`; none parses arguments or prints on its own.

pub mod abort;
pub mod apply;
pub mod cutover;
pub mod demo;
pub mod plan;
pub mod status;
pub mod verify;

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
    prompt(out).map_err(crate::cli::io_err)?;
    out.flush().map_err(crate::cli::io_err)?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| miette::miette!("cannot read the answer: {e}"))?;
    Ok(answer.trim() == "yes")
}
