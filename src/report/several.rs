//! The plan of a migration of several databases: the checks about the server as a whole, then
//! each database's own report (text: one section each; markdown: one collapsible block each,
//! for a PR comment; JSON: one document), and a summary line per database.

use std::io::{self, Write};

use serde::Serialize;

use super::{BOLD, CYAN, Format, GREEN, PlanReport, RED, check_text, paint, summary_line};
use crate::check::Check;

/// What `plan` says of a migration of several databases.
#[derive(Debug, Clone, Serialize)]
pub struct SeveralReport {
    /// Migration name.
    pub migration: String,
    /// Online or offline.
    pub mode: String,
    /// The databases the migration takes (each planned when the target has it).
    pub selected: Vec<String>,
    /// Findings about the servers as a whole (which databases, which are missing).
    pub checks: Vec<Check>,
    /// Each database's report, in name order.
    pub databases: Vec<DatabaseReport>,
}

/// One database's report.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReport {
    /// The database.
    pub database: String,
    /// Its plan.
    #[serde(flatten)]
    pub report: PlanReport,
}

/// "0 errors, 2 warnings; 12 to create, ..." for one database.
fn one_line(d: &DatabaseReport) -> String {
    let s = d.report.summary;
    let checks = format!("{} errors, {} warnings", s.errors, s.warnings);
    match &d.report.plan_summary {
        Some(p) => format!("{checks}; {}", summary_line(p)),
        None => format!("{checks}; no execution plan"),
    }
}

/// Renders the report.
pub fn plan_several(out: &mut dyn Write, r: &SeveralReport, format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, r)?;
            writeln!(out)
        }
        Format::Text => several_text(out, r),
        Format::Markdown => several_markdown(out, r),
    }
}

fn names(r: &SeveralReport) -> String {
    r.selected.join(", ")
}

fn several_text(out: &mut dyn Write, r: &SeveralReport) -> io::Result<()> {
    writeln!(
        out,
        "{} {} ({} mode): {} databases ({})",
        paint(BOLD, "Migration"),
        r.migration,
        r.mode,
        r.selected.len(),
        names(r)
    )?;
    if !r.checks.is_empty() {
        writeln!(out)?;
        writeln!(out, "{}", paint(BOLD, "Server checks"))?;
        for c in &r.checks {
            check_text(out, c)?;
        }
    }
    let total = r.databases.len();
    for (i, d) in r.databases.iter().enumerate() {
        writeln!(out)?;
        let title = format!("━━ database {} ({} of {total}) ━━", d.database, i + 1);
        writeln!(out, "{}", paint(CYAN, &title))?;
        super::plan_text(out, &d.report)?;
    }
    writeln!(out)?;
    writeln!(out, "{}", paint(BOLD, "Databases"))?;
    let width = r.databases.iter().map(|d| d.database.len()).max().unwrap_or(0);
    for d in &r.databases {
        writeln!(out, "  {:width$}  {}", d.database, one_line(d))?;
    }
    let errors = crate::check::has_errors(&r.checks);
    let failed = r.databases.iter().filter(|d| d.report.summary.errors > 0).count();
    if errors || failed > 0 {
        writeln!(
            out,
            "{} fix the errors above (server checks, or {failed} of {total} databases), then run \
             `pgtransit plan` again.",
            paint(RED, "Preflight failed:")
        )
    } else {
        writeln!(out, "{} every database.", paint(GREEN, "Preflight passed:"))
    }
}

fn several_markdown(out: &mut dyn Write, r: &SeveralReport) -> io::Result<()> {
    writeln!(
        out,
        "## pgtransit: migration `{}` ({} mode), {} databases\n",
        r.migration,
        r.mode,
        r.selected.len()
    )?;
    if !r.checks.is_empty() {
        writeln!(out, "**Server checks**\n")?;
        for c in &r.checks {
            let fix = c.fix.as_deref().map(|f| format!(" Fix: `{f}`")).unwrap_or_default();
            writeln!(out, "- **{:?}** `{}` {}: {}{fix}", c.severity, c.code, c.object, c.message)?;
        }
        writeln!(out)?;
    }
    writeln!(out, "| database | summary |\n| --- | --- |")?;
    for d in &r.databases {
        writeln!(out, "| `{}` | {} |", d.database, one_line(d))?;
    }
    writeln!(out)?;
    for d in &r.databases {
        writeln!(
            out,
            "<details><summary><b>database {}</b>: {}</summary>\n",
            d.database,
            one_line(d)
        )?;
        super::plan_markdown(out, &d.report)?;
        writeln!(out, "\n</details>\n")?;
    }
    Ok(())
}

/// The server's write gap when several databases were cut over together: from the first
/// database's fence (once up) to the end of the last one's cutover.
pub fn together_gap(cut: &[(String, crate::state::CutoverState)]) -> Option<f64> {
    let starts = cut.iter().filter_map(|(_, c)| Some(c.finished_at? - c.write_gap_seconds?));
    let start = starts.fold(f64::INFINITY, f64::min);
    let end = cut.iter().filter_map(|(_, c)| c.finished_at).fold(f64::NEG_INFINITY, f64::max);
    (start.is_finite() && end.is_finite()).then(|| (end - start).max(0.0))
}

/// Several databases cut over together: the server's write gap, and each database's.
pub fn together_done(
    out: &mut dyn Write,
    cut: &[(String, crate::state::CutoverState)],
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{} {} databases cut over together; the write gap was {:.2} s (from the first \
         database's fence to the end of the last one's cutover).",
        paint(GREEN, "Cutover complete:"),
        cut.len(),
        together_gap(cut).unwrap_or_default()
    )?;
    for (database, c) in cut {
        let rows: i64 = c.verified.iter().map(|t| t.target_rows).sum();
        writeln!(
            out,
            "  {database}: write gap {:.2} s, {} tables verified ({rows} rows)",
            c.write_gap_seconds.unwrap_or_default(),
            c.verified.len(),
        )?;
    }
    writeln!(out, "Point the applications at the target's databases.")
}
