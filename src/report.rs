//! Rendering: the only module that writes what the operator reads (stdout), as text for a
//! terminal or JSON for machines. Commands hand it plain data; it never decides anything.
//!
//! Colour: text output is styled with `anstyle`; the writer the caller passes (an
//! `anstream` stream) strips the styles when stdout is not a terminal, when `NO_COLOR` is set, or
//! with `--color never`.

use std::io::{self, Write};

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::preflight::{Check, Severity};
use crate::spec::Mode;

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people, in a terminal.
    #[default]
    Text,
    /// One JSON document, for machines.
    Json,
}

/// One server, as shown in reports (never with a password).
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Redacted connection URL.
    pub endpoint: String,
    /// `PostgreSQL 15.18`, when connected.
    pub version: Option<String>,
}

/// What `pgtransit plan` found.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// Migration name.
    pub migration: String,
    /// Online or offline.
    pub mode: String,
    /// Source server.
    pub source: ServerSummary,
    /// Target server.
    pub target: ServerSummary,
    /// Preflight findings, errors first.
    pub checks: Vec<Check>,
    /// Counts by severity.
    pub summary: Summary,
}

/// Counts of findings by severity.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Info.
    pub info: usize,
}

impl PlanReport {
    /// Builds the report (the summary is computed from the checks).
    pub fn new(
        migration: &str,
        mode: Mode,
        source: ServerSummary,
        target: ServerSummary,
        checks: Vec<Check>,
    ) -> PlanReport {
        let count = |s: Severity| checks.iter().filter(|c| c.severity == s).count();
        let summary = Summary {
            errors: count(Severity::Error),
            warnings: count(Severity::Warning),
            info: count(Severity::Info),
        };
        PlanReport {
            migration: migration.to_string(),
            mode: mode.to_string(),
            source,
            target,
            checks,
            summary,
        }
    }
}

const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();
const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const CYAN: Style = AnsiColor::Cyan.on_default();
const GREEN: Style = AnsiColor::Green.on_default().bold();

fn paint(style: Style, text: &str) -> String {
    format!("{}{text}{}", style.render(), style.render_reset())
}

/// Writes the plan report.
pub fn plan(out: &mut dyn Write, report: &PlanReport, format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)
        }
        Format::Text => plan_text(out, report),
    }
}

fn plan_text(out: &mut dyn Write, r: &PlanReport) -> io::Result<()> {
    writeln!(out, "{} {} ({} mode)", paint(BOLD, "Migration"), r.migration, r.mode)?;
    for (label, s) in [("source", &r.source), ("target", &r.target)] {
        let version = s.version.as_deref().unwrap_or("not connected");
        writeln!(out, "  {label}  {}  {}", s.endpoint, paint(DIM, version))?;
    }
    writeln!(out)?;
    writeln!(out, "{}", paint(BOLD, "Preflight checks"))?;
    for c in &r.checks {
        check_text(out, c)?;
    }
    writeln!(out)?;
    let Summary { errors, warnings, info } = r.summary;
    let line = format!("{errors} errors, {warnings} warnings, {info} info.");
    if errors > 0 {
        writeln!(out, "{} {line}", paint(RED, "Preflight failed:"))?;
        writeln!(out, "Fix the errors above, then run `pgtransit plan` again.")
    } else {
        writeln!(out, "{} {line}", paint(GREEN, "Preflight passed:"))
    }
}

fn check_text(out: &mut dyn Write, c: &Check) -> io::Result<()> {
    let (mark, style) = match c.severity {
        Severity::Error => ("✗ error  ", RED),
        Severity::Warning => ("! warning", YELLOW),
        Severity::Info => ("· info   ", CYAN),
    };
    writeln!(out, "  {} {}  {}", paint(style, mark), paint(BOLD, c.code), paint(DIM, &c.object))?;
    writeln!(out, "      {}", c.message)?;
    if let Some(fix) = &c.fix {
        writeln!(out, "      {} {fix}", paint(BOLD, "fix:"))?;
    }
    Ok(())
}

/// A line of narration (demo), to stdout.
pub fn say(out: &mut dyn Write, heading: &str, text: &str) -> io::Result<()> {
    writeln!(out, "{} {text}", paint(GREEN, heading))
}

/// A block of preformatted text (SQL, YAML) shown indented.
pub fn block(out: &mut dyn Write, text: &str) -> io::Result<()> {
    for line in text.lines() {
        writeln!(out, "    {}", paint(DIM, line))?;
    }
    Ok(())
}

/// Files written by a command (`pgtransit schema --out`, demo plans).
pub fn wrote(out: &mut dyn Write, what: &str, path: &std::path::Path) -> io::Result<()> {
    writeln!(out, "{} {what}: {}", paint(GREEN, "wrote"), path.display())
}

/// Raw text to stdout (the JSON Schema).
pub fn raw(out: &mut dyn Write, text: &str) -> io::Result<()> {
    out.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PlanReport {
        PlanReport::new(
            "pagila",
            Mode::Online,
            ServerSummary {
                endpoint: "postgresql://migrator@src:5432/pagila".into(),
                version: Some("PostgreSQL 15.18".into()),
            },
            ServerSummary { endpoint: "postgresql://admin@tgt:5432/pagila".into(), version: None },
            vec![Check {
                code: "wal_level_not_logical",
                severity: Severity::Error,
                object: "source".into(),
                message: "wal_level is `replica`".into(),
                fix: Some("ALTER SYSTEM SET wal_level = logical;".into()),
            }],
        )
    }

    #[test]
    fn text_report_shows_code_fix_and_failure_summary_without_colour_codes_when_stripped() {
        let mut buf = anstream::StripStream::new(Vec::new());
        plan(&mut buf, &sample(), Format::Text).unwrap();
        let text = String::from_utf8(buf.into_inner()).unwrap();
        assert!(text.contains("✗ error   wal_level_not_logical  source"), "{text}");
        assert!(text.contains("fix: ALTER SYSTEM SET wal_level = logical;"));
        assert!(text.contains("Preflight failed: 1 errors, 0 warnings, 0 info."));
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn json_report_has_checks_with_code_severity_object_message_fix() {
        let mut buf = Vec::new();
        plan(&mut buf, &sample(), Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let c = &v["checks"][0];
        assert_eq!(c["code"], "wal_level_not_logical");
        assert_eq!(c["severity"], "error");
        assert_eq!(c["object"], "source");
        assert_eq!(c["fix"], "ALTER SYSTEM SET wal_level = logical;");
        assert_eq!(v["summary"]["errors"], 1);
    }
}
