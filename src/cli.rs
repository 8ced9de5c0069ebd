//! The command line: the top-level clap types (each command's arguments live in its module in
//! `commands`), logging setup, dispatch, and the one exit-code policy.
//!
//! Exit codes (Terraform's): `0` success; `1` any failure, including a preflight error, an
//! invalid migration plan or a usage error; `2` success with changes planned, only with
//! `plan --detailed-exitcode`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::abort::AbortArgs;
use crate::commands::apply::ApplyArgs;
use crate::commands::cutover::CutoverArgs;
use crate::commands::demo::DemoArgs;
use crate::commands::plan::PlanArgs;
use crate::commands::status::StatusArgs;
use crate::commands::verify::VerifyArgs;
use crate::commands::{Outcome, io_err};
use crate::report;

/// Move a live PostgreSQL database between servers from a reviewable, resumable plan.
#[derive(Debug, Parser)]
#[command(name = "pgtransit", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace). `PGTRANSIT_LOG` (e.g. `pgtransit=debug`) overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to both servers, run every preflight check, and show what the migration will do.
    #[command(display_order = 1)]
    Plan(PlanArgs),
    /// Run an execution plan: schema, data, post-load objects; resumable.
    #[command(display_order = 2)]
    Apply(ApplyArgs),
    /// Show where a migration is: phase, tables, lag, applied changes, readiness for cutover.
    #[command(display_order = 3)]
    Status(StatusArgs),
    /// Cut over an online migration: fence the source's writers, drain, set sequences, verify,
    /// clean up, and report the write gap.
    #[command(display_order = 3)]
    Cutover(CutoverArgs),
    /// Compare source and target now: schema (as `plan` does) and rows (counts and checksums).
    #[command(display_order = 3)]
    Verify(VerifyArgs),
    /// Go back after a cutover with `cutover.rollback_window`: fence the new primary, drain its
    /// changes to the old source, set sequences, verify, and make the old source the primary.
    #[command(display_order = 3)]
    Rollback(crate::commands::rollback::WindowArgs),
    /// Close the rollback window: remove its slot, publication and origin (the target keeps
    /// no WAL for it any more).
    #[command(display_order = 3)]
    Finish(crate::commands::rollback::WindowArgs),
    /// Remove everything pgtransit created for a migration on the source (replication slot,
    /// publication, replica identities) and the target's replication bookkeeping.
    #[command(display_order = 4)]
    Abort(AbortArgs),
    /// Check migration plan files without connecting to any server (for CI on `plans/`).
    #[command(display_order = 5)]
    Validate {
        /// Migration plan files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the migration plan format (draft-07, for YAML editors).
    #[command(display_order = 6)]
    Schema {
        /// Write it to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start two throwaway local servers, fill one with a sample, and migrate it to the other.
    #[command(display_order = 7)]
    Demo(DemoArgs),
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// When stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses the command line, runs the command, and maps the result to the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not failures; every usage error exits 1.
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    init_logging(&cli);
    let detailed = matches!(&cli.command, Command::Plan(p) if p.detailed_exitcode);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report_error(miette::miette!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) | Ok(Outcome::NothingToDo) => ExitCode::SUCCESS,
        Ok(Outcome::ChangesPlanned) => ExitCode::from(if detailed { 2 } else { 0 }),
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            report_error(e);
            ExitCode::from(1)
        }
    }
}

fn report_error(e: miette::Report) {
    let mut err = anstream::stderr();
    let _ = writeln!(err, "{e:?}");
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.verbose {
        0 => "pgtransit=info",
        1 => "pgtransit=debug",
        _ => "pgtransit=trace",
    };
    use tracing_subscriber::prelude::*;
    let filter =
        EnvFilter::try_from_env("PGTRANSIT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The client library logs every statement it sends at debug level: whatever PGTRANSIT_LOG
    // asks, never that (a role's password verifier is one of them).
    let no_statements = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("tokio_postgres") && *m.level() > tracing::Level::INFO)
    });
    let logging = tracing_subscriber::registry().with(filter).with(no_statements);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => logging.with(layer.json()).try_init(),
        LogFormat::Text => {
            // Colour in log lines only where it would show: a terminal, no NO_COLOR.
            use std::io::IsTerminal;
            let ansi = match cli.color {
                ColorWhen::Always => true,
                ColorWhen::Never => false,
                ColorWhen::Auto => {
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            logging.with(layer.with_ansi(ansi)).try_init()
        }
    };
}

/// Runs one command.
pub async fn run(cli: Cli) -> miette::Result<Outcome> {
    let mut out = anstream::stdout();
    match cli.command {
        Command::Plan(args) => crate::commands::plan::run(&args, &mut out).await,
        Command::Apply(args) => crate::commands::apply::run(&args, &mut out).await,
        Command::Status(args) => crate::commands::status::run(&args, &mut out).await,
        Command::Cutover(args) => crate::commands::cutover::run(&args, &mut out).await,
        Command::Verify(args) => crate::commands::verify::run(&args, &mut out).await,
        Command::Rollback(args) => crate::commands::rollback::rollback(&args, &mut out).await,
        Command::Finish(args) => crate::commands::rollback::finish(&args, &mut out).await,
        Command::Abort(args) => crate::commands::abort::run(&args, &mut out).await,
        Command::Validate { files } => crate::commands::plan::validate(&files, &mut out),
        Command::Schema { out: path } => {
            let schema = crate::migration_plan::json_schema();
            match path {
                Some(p) => {
                    std::fs::write(&p, schema)
                        .map_err(|e| miette::miette!("cannot write {}: {e}", p.display()))?;
                    report::wrote(&mut out, "JSON Schema", &p).map_err(io_err)?;
                }
                None => report::raw(&mut out, &schema).map_err(io_err)?,
            }
            Ok(Outcome::Done)
        }
        Command::Demo(args) => crate::commands::demo::run(&args, &mut out).await,
    }
}
