//! Rendering: the only module that writes what the operator reads (stdout), as text for a
//! terminal or JSON for machines. Commands hand it plain data; it never decides anything.
//!
//! Colour: text output is styled with `anstyle`; the writer the caller passes (an
//! `anstream` stream) strips the styles when stdout is not a terminal, when `NO_COLOR` is set, or
//! with `--color never`.

use std::io::{self, Write};

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use crate::check::{Check, Severity};
use crate::execution_plan::{Action, Phase, Plan, PlanSummary, Step};
use crate::migration_plan::Mode;

mod several;
pub use several::{DatabaseReport, SeveralReport, plan_several, together_done, together_gap};

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people, in a terminal.
    #[default]
    Text,
    /// One JSON document, for machines.
    Json,
    /// Markdown, for a pull-request comment.
    Markdown,
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
    /// The execution plan's steps (empty when a server could not be read).
    pub steps: Vec<Step>,
    /// Counts of steps by action, when there is an execution plan.
    pub plan_summary: Option<PlanSummary>,
    /// What the load will move.
    pub load_estimate: Option<crate::execution_plan::LoadEstimate>,
    /// Online mode, once it streamed: the cutover's expected write gap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutover_estimate: Option<crate::execution_plan::CutoverEstimate>,
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
        plan: Option<&Plan>,
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
            steps: plan.map(|p| p.steps.clone()).unwrap_or_default(),
            plan_summary: plan.map(|p| p.summary),
            load_estimate: plan.and_then(|p| p.load_estimate),
            cutover_estimate: plan.and_then(|p| p.cutover_estimate.clone()),
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
        Format::Markdown => plan_markdown(out, report),
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
    let Summary { errors, warnings, info } = r.summary;
    let line = format!("{errors} errors, {warnings} warnings, {info} info.");
    if errors > 0 {
        writeln!(out, "{} {line}", paint(RED, "Preflight failed:"))?;
        writeln!(out, "Fix the errors above, then run `pgtransit plan` again.")?;
    } else {
        writeln!(out, "{} {line}", paint(GREEN, "Preflight passed:"))?;
    }
    if let Some(summary) = &r.plan_summary {
        writeln!(out)?;
        steps_text(out, &r.steps, summary)?;
        if let Some(e) = &r.load_estimate {
            writeln!(
                out,
                "Load: {} tables, ~{} rows, {}; roughly {} with {} jobs (assuming ~{:.0} MB/s per \
                 job; the benchmark measures the real rate).",
                e.tables,
                crate::preflight::thousands(e.rows),
                crate::preflight::human_bytes(e.bytes),
                human_seconds(e.seconds),
                e.jobs,
                crate::execution_plan::ASSUMED_BYTES_PER_SECOND / 1e6
            )?;
        }
        if let Some(e) = &r.cutover_estimate {
            writeln!(
                out,
                "Cutover: expected write gap ~{:.2} s now (fence {:.2}, drain {:.2}, sequences \
                 {:.2}, verification {:.2}, clean-up {:.2}), from the last measurements: {}.",
                e.total,
                e.fence,
                e.drain,
                e.sequences,
                e.verification,
                e.clean_up,
                e.basis.join("; ")
            )?;
        }
        if summary.conflicts > 0 {
            writeln!(
                out,
                "{} resolve the conflicts above on the target (pgtransit never alters or drops \
                 existing objects), then run `pgtransit plan` again.",
                paint(RED, "Blocked:")
            )?;
        }
    }
    Ok(())
}

fn check_text(out: &mut dyn Write, c: &Check) -> io::Result<()> {
    let (mark, style) = match c.severity {
        Severity::Error => ("✗ error  ", RED),
        Severity::Warning => ("! warning", YELLOW),
        Severity::Info => ("· info   ", CYAN),
    };
    writeln!(out, "  {} {}  {}", paint(style, mark), paint(BOLD, &c.code), paint(DIM, &c.object))?;
    writeln!(out, "      {}", c.message)?;
    if let Some(fix) = &c.fix {
        writeln!(out, "      {} {fix}", paint(BOLD, "fix:"))?;
    }
    Ok(())
}

fn steps_text(out: &mut dyn Write, steps: &[Step], summary: &PlanSummary) -> io::Result<()> {
    writeln!(out, "{}", paint(BOLD, "Execution plan"))?;
    let mut phase: Option<Phase> = None;
    for step in steps.iter().filter(|s| s.action != Action::Unchanged) {
        if phase != Some(step.phase) {
            phase = Some(step.phase);
            writeln!(out, "  {}", paint(BOLD, step.phase.title()))?;
        }
        let style = match step.action {
            Action::Create | Action::Copy => GREEN,
            Action::Update | Action::Run => YELLOW,
            Action::Conflict => RED,
            Action::Unchanged => DIM,
        };
        let mut line = format!(
            "    {} {} {}",
            paint(style, step.action.symbol()),
            step.action.name(),
            step.object
        );
        if let Some(e) = step.estimate.filter(|_| step.action == Action::Copy) {
            line.push_str(&paint(
                DIM,
                &format!(
                    "  (~{} rows, {})",
                    crate::preflight::thousands(e.rows),
                    crate::preflight::human_bytes(e.bytes)
                ),
            ));
        }
        writeln!(out, "{line}")?;
        if let Some(note) = &step.note {
            writeln!(out, "        {}", paint(DIM, &format!("-- {note}")))?;
        }
        for l in step.sql.lines() {
            writeln!(out, "        {l}")?;
        }
        if let Some(diff) = &step.diff {
            for l in diff.lines() {
                writeln!(out, "        {l}")?;
            }
        }
    }
    if summary.unchanged > 0 {
        writeln!(
            out,
            "  {} {} objects already on the target and identical (listed with --format json)",
            paint(DIM, Action::Unchanged.symbol()),
            summary.unchanged
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{} {}", paint(BOLD, "Plan:"), summary_line(summary))
}

/// `75` → `1 min 15 s`.
pub fn human_seconds(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0 => "under a second".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// "N to create, M to update, C to copy, R to run, U unchanged, K conflicts."
pub fn summary_line(s: &PlanSummary) -> String {
    format!(
        "{} to create, {} to update, {} to copy, {} to run, {} unchanged, {} conflicts.",
        s.create, s.update, s.copy, s.run, s.unchanged, s.conflicts
    )
}

const MARKDOWN_TEMPLATE: &str = include_str!("templates/plan.md.j2");

fn plan_markdown(out: &mut dyn Write, r: &PlanReport) -> io::Result<()> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("thousands", |n: i64| crate::preflight::thousands(n));
    env.add_filter("bytes", |n: i64| crate::preflight::human_bytes(n));
    env.add_template("plan.md", MARKDOWN_TEMPLATE).map_err(io::Error::other)?;
    let phases: Vec<serde_json::Value> =
        [Phase::Schema, Phase::Load, Phase::PostLoad, Phase::Sync, Phase::Cutover]
            .iter()
            .filter_map(|p| {
                let steps: Vec<&Step> = r
                    .steps
                    .iter()
                    .filter(|s| s.phase == *p && s.action != Action::Unchanged)
                    .collect();
                (!steps.is_empty()).then(|| {
                    serde_json::json!({
                        "title": p.title(),
                        "steps": steps.iter().map(|s| serde_json::json!({
                            "symbol": s.action.symbol(),
                            "action": s.action.name(),
                            "object": s.object,
                            "sql": s.sql,
                            "note": s.note,
                            "diff": s.diff,
                            "estimate": s.estimate,
                        })).collect::<Vec<_>>(),
                    })
                })
            })
            .collect();
    let text = env
        .get_template("plan.md")
        .and_then(|t| {
            t.render(minijinja::context! {
                r => minijinja::Value::from(minijinja::value::Serde(r)),
                phases => minijinja::Value::from(minijinja::value::Serde(&phases)),
                summary_line => r.plan_summary.as_ref().map(summary_line),
            })
        })
        .map_err(io::Error::other)?;
    out.write_all(text.as_bytes())
}

/// One copied table, for the summary at the end of apply.
#[derive(Debug, Clone, Serialize)]
pub struct CopySummary {
    /// The table.
    pub object: String,
    /// Rows copied.
    pub rows: u64,
    /// Bytes streamed.
    pub bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// What the operator sees while apply runs: a line per finished step; for copies, progress
/// bars on a terminal, or a log line per table every 10 s otherwise (`tracing`, so
/// `--log-format json` makes them machine-readable); and a per-table summary at the end.
pub struct ApplyView {
    /// Steps that ran and finished.
    pub ran: usize,
    /// Steps skipped because they were done already.
    pub skipped: usize,
    bars: Option<indicatif::MultiProgress>,
    running: std::collections::HashMap<String, (indicatif::ProgressBar, std::time::Instant)>,
    copies: Vec<CopySummary>,
    started: std::time::Instant,
    stream_bar: Option<indicatif::ProgressBar>,
    stream_line: Option<std::time::Instant>,
    was_ready: bool,
    /// When change streaming began: the copies' wall clock ends there.
    sync_started: Option<std::time::Instant>,
}

/// One line about change streaming: lag, counts, readiness.
pub fn streaming_line(
    lag_bytes: u64,
    lag_seconds: f64,
    applied: &crate::state::Counters,
    ready: bool,
) -> String {
    let t = |n: u64| crate::preflight::thousands(n as i64);
    format!(
        "lag {lag_seconds:.1} s ({}); applied {} inserts, {} updates, {} deletes, {} truncates \
         in {} transactions, as {} statements{}",
        crate::preflight::human_bytes(lag_bytes as i64),
        t(applied.inserts),
        t(applied.updates),
        t(applied.deletes),
        t(applied.truncates),
        t(applied.transactions),
        t(applied.statements),
        if ready { " - ready for cutover" } else { "" }
    )
}

impl ApplyView {
    /// Bars when `interactive` (stdout is a terminal), log lines otherwise.
    pub fn new(interactive: bool) -> ApplyView {
        ApplyView {
            ran: 0,
            skipped: 0,
            bars: interactive.then(indicatif::MultiProgress::new),
            running: Default::default(),
            copies: vec![],
            started: std::time::Instant::now(),
            stream_bar: None,
            stream_line: None,
            was_ready: false,
            sync_started: None,
        }
    }

    fn line(&self, out: &mut dyn Write, text: &str) -> io::Result<()> {
        match &self.bars {
            // Printed above the bars, so they are not torn; indicatif writes to the terminal
            // itself, so the colour choice (`--color`, `NO_COLOR`) is applied here.
            Some(m) => match anstream::AutoStream::choice(&std::io::stdout()) {
                anstream::ColorChoice::Never => {
                    m.println(anstream::adapter::strip_str(text).to_string())
                }
                _ => m.println(text),
            },
            None => writeln!(out, "{text}"),
        }
    }

    /// Renders one event.
    pub fn event(&mut self, out: &mut dyn Write, e: &crate::execute::Event) -> io::Result<()> {
        use crate::execute::Event;
        match e {
            Event::Phase(p) => {
                if *p == crate::execution_plan::Phase::Sync {
                    self.sync_started.get_or_insert_with(std::time::Instant::now);
                }
                self.line(out, &paint(BOLD, p.title()))
            }
            Event::Started { .. } => Ok(()),
            Event::Copying { id, object, bytes, rows, estimate } => {
                self.copying(id, object, *bytes, *rows, *estimate);
                Ok(())
            }
            Event::Done { id, object, rows, bytes, elapsed } => {
                self.ran += 1;
                if let Some((bar, _)) = self.running.remove(id) {
                    bar.finish_and_clear();
                }
                let seconds = elapsed.as_secs_f64();
                let extra = match (rows, bytes) {
                    (Some(r), Some(b)) => {
                        self.copies.push(CopySummary {
                            object: object.clone(),
                            rows: *r,
                            bytes: *b,
                            seconds,
                        });
                        format!(
                            ", {} rows, {}",
                            crate::preflight::thousands(*r as i64),
                            crate::preflight::human_bytes(*b as i64)
                        )
                    }
                    _ => String::new(),
                };
                let text = format!(
                    "  {} {object} {}",
                    paint(GREEN, "done"),
                    paint(DIM, &format!("({seconds:.2} s{extra})"))
                );
                self.line(out, &text)
            }
            Event::Streaming { lag_bytes, lag_seconds, applied, ready } => {
                let text = streaming_line(*lag_bytes, *lag_seconds, applied, *ready);
                if let Some(m) = &self.bars {
                    let bar = self.stream_bar.get_or_insert_with(|| {
                        let b = m.add(indicatif::ProgressBar::new_spinner());
                        b.enable_steady_tick(std::time::Duration::from_millis(200));
                        b
                    });
                    bar.set_message(format!("streaming: {text}"));
                    return Ok(());
                }
                // Without a terminal: a line every 10 seconds, and when readiness changes.
                let due = self.stream_line.is_none_or(|t| t.elapsed().as_secs() >= 10);
                if due || *ready != self.was_ready {
                    self.stream_line = Some(std::time::Instant::now());
                    self.was_ready = *ready;
                    tracing::info!("streaming: {text}");
                }
                Ok(())
            }
            Event::Skipped { object, reason } => {
                self.skipped += 1;
                let text = format!(
                    "  {} {object} {}",
                    paint(DIM, "skip"),
                    paint(DIM, &format!("({reason})"))
                );
                self.line(out, &text)
            }
        }
    }

    fn copying(
        &mut self,
        id: &str,
        object: &str,
        bytes: u64,
        rows: Option<u64>,
        estimate: Option<crate::execution_plan::Estimate>,
    ) {
        // Bytes streamed against the table's size on disk (a rough guide: the wire format is
        // not the disk's), with the rows so far when the copy is text (binary does not say).
        let (pos, len) = match estimate {
            Some(e) => (bytes, e.bytes.max(bytes as i64) as u64),
            None => (bytes, bytes),
        };
        let rows_text = rows
            .map(|r| format!("{} rows", crate::preflight::thousands(r as i64)))
            .unwrap_or_default();
        let now = std::time::Instant::now();
        match &self.bars {
            Some(multi) => {
                let (bar, _) = self.running.entry(id.to_string()).or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new(len));
                    let template = "  {prefix:32!} [{bar:24}] {bytes}/~{total_bytes} \
                                    {bytes_per_sec} ETA {eta} {msg}";
                    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix(object.to_string());
                    (bar, now)
                });
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(rows_text);
            }
            None => {
                let entry = self.running.entry(id.to_string()).or_insert_with(|| {
                    (indicatif::ProgressBar::hidden(), now - std::time::Duration::from_secs(10))
                });
                if now.duration_since(entry.1) >= std::time::Duration::from_secs(10) {
                    entry.1 = now;
                    tracing::info!(
                        table = object,
                        bytes,
                        rows = rows.unwrap_or_default(),
                        estimated = len,
                        done_percent = (pos as f64 * 100.0 / len.max(1) as f64).round() as u64,
                        "copying"
                    );
                }
            }
        }
    }

    /// The per-table summary (slowest first) and the totals, like pgcopydb's.
    pub fn summary(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.copies.is_empty() {
            return Ok(());
        }
        let mut copies = self.copies.clone();
        copies.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.object.cmp(&b.object)));
        writeln!(out)?;
        writeln!(out, "{}", paint(BOLD, "Copied tables"))?;
        writeln!(
            out,
            "  {:<40} {:>12} {:>10} {:>8} {:>10}",
            "table", "rows", "bytes", "seconds", "MB/s"
        )?;
        let rate = |b: u64, s: f64| if s > 0.0 { b as f64 / s / 1e6 } else { 0.0 };
        for c in &copies {
            writeln!(
                out,
                "  {:<40} {:>12} {:>10} {:>8.2} {:>10.1}",
                c.object.trim_start_matches("table "),
                crate::preflight::thousands(c.rows as i64),
                crate::preflight::human_bytes(c.bytes as i64),
                c.seconds,
                rate(c.bytes, c.seconds)
            )?;
        }
        let rows: u64 = copies.iter().map(|c| c.rows).sum();
        let bytes: u64 = copies.iter().map(|c| c.bytes).sum();
        let wall = self
            .sync_started
            .map(|t| t.duration_since(self.started))
            .unwrap_or_else(|| self.started.elapsed())
            .as_secs_f64();
        writeln!(
            out,
            "  {:<40} {:>12} {:>10} {:>8.2} {:>10.1}",
            format!("total ({} tables, wall clock)", copies.len()),
            crate::preflight::thousands(rows as i64),
            crate::preflight::human_bytes(bytes as i64),
            wall,
            rate(bytes, wall)
        )
    }
}

/// The end of a successful apply: what actually ran (not what the plan said).
pub fn apply_done(
    out: &mut dyn Write,
    view: &ApplyView,
    state_file: &std::path::Path,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{} {} steps run ({} tables copied), {} skipped as already done.",
        paint(GREEN, "Apply complete:"),
        view.ran,
        view.copies.len(),
        view.skipped
    )?;
    writeln!(out, "State: {}", state_file.display())
}

/// The cutover is done.
pub fn cutover_done(
    out: &mut dyn Write,
    cut: &crate::state::CutoverState,
    target: &str,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{} the write gap was {:.2} s (from the fence on the source to the end of the cutover).",
        paint(GREEN, "Cutover complete:"),
        cut.write_gap_seconds.unwrap_or_default()
    )?;
    if let Some(g) = &cut.write_gap {
        writeln!(
            out,
            "Write gap: drain {:.2} s, sequences {:.2} s, verification {:.2} s, clean-up {:.2} s \
             (the fence took {:.2} s to go up, just before).",
            g.drain, g.sequences, g.verification, g.clean_up, g.fence
        )?;
    }
    let rows: i64 = cut.verified.iter().map(|c| c.target_rows).sum();
    let proven: Vec<&crate::verify::TableCheck> =
        cut.verified.iter().filter(|c| c.proof.is_some()).collect();
    writeln!(
        out,
        "Verified: {} tables, {} identical on both sides ({} rows).",
        cut.verified.len(),
        if cut.checksums_compared {
            "row counts and checksums"
        } else {
            "row counts (checksums off: verify.checksums)"
        },
        crate::preflight::thousands(rows)
    )?;
    if !proven.is_empty() {
        let changed: usize = cut.verified.iter().map(|c| c.rows_by_key).sum();
        writeln!(
            out,
            "Of these, {} were proven equal while streaming: inside the fence only the {} rows \
             changed since were compared, by key; {} compared in full.",
            proven.len(),
            crate::preflight::thousands(changed as i64),
            cut.verified.len() - proven.len()
        )?;
    }
    writeln!(
        out,
        "The source database is read-only for new sessions (default_transaction_read_only); the \
         replication slot, publication and origin are gone."
    )?;
    if let Some(window) = &cut.rollback_plan {
        writeln!(
            out,
            "{} the target's changes stream back to the old source while `pgtransit apply` runs \
             (an apply that was streaming goes on doing so); `pgtransit rollback` goes back, \
             `pgtransit finish` closes the window (until then its slot keeps the target's WAL). \
             The window's migration plan: {window}",
            paint(BOLD, "Rollback window open:")
        )?;
    }
    writeln!(out, "{} point the applications at the target: {target}", paint(BOLD, "Next:"))
}

/// `apply` stopped streaming on request.
pub fn streaming_stopped(
    out: &mut dyn Write,
    sync: Option<&crate::state::SyncState>,
    state_file: &std::path::Path,
) -> io::Result<()> {
    writeln!(out)?;
    let at = sync.and_then(|s| s.applied_lsn.clone()).unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "{} applied up to source position {at}. The replication slot keeps every later change: \
         run `pgtransit apply` again to resume, or `pgtransit abort` to remove what pgtransit \
         created for this migration.",
        paint(BOLD, "Streaming stopped:")
    )?;
    writeln!(out, "State: {}", state_file.display())
}

/// `pgtransit status`.
pub fn status(out: &mut dyn Write, st: &crate::status::Status, format: Format) -> io::Result<()> {
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, st)?;
        return writeln!(out);
    }
    let md = format == Format::Markdown;
    let heading = if md { "## Migration" } else { "Migration" };
    writeln!(out, "{} {} - {}", paint(BOLD, heading), st.migration, st.phase.replace('_', " "))?;
    if let Some(r) = &st.running {
        writeln!(out, "  running: {r}")?;
    }
    if st.max_lag_seconds.is_some() {
        let lag = match (st.lag_seconds, st.lag_bytes) {
            (Some(s), Some(b)) => format!("{s:.1} s ({})", crate::preflight::human_bytes(b as i64)),
            (Some(s), None) => format!("{s:.1} s"),
            (None, Some(b)) => crate::preflight::human_bytes(b as i64),
            (None, None) => "unknown".into(),
        };
        writeln!(
            out,
            "  lag: {lag} (ready for cutover under {:.1} s)",
            st.max_lag_seconds.unwrap_or_default()
        )?;
        let a = &st.applied;
        let t = |n: u64| crate::preflight::thousands(n as i64);
        writeln!(
            out,
            "  applied: {} inserts, {} updates, {} deletes, {} truncates in {} transactions, as {} \
             statements on the target",
            t(a.inserts),
            t(a.updates),
            t(a.deletes),
            t(a.truncates),
            t(a.transactions),
            t(a.statements)
        )?;
        if let Some(at) = &st.applied_lsn {
            writeln!(
                out,
                "  applied up to: {at} (source now at {})",
                st.source_lsn.as_deref().unwrap_or("?")
            )?;
        }
        if let Some(values) = &st.values {
            writeln!(out, "  values streamed in {values}")?;
        }
        let ready = if st.ready_for_cutover {
            paint(GREEN, "ready for cutover: yes")
        } else {
            paint(YELLOW, "ready for cutover: no")
        };
        writeln!(out, "  {ready}")?;
    }
    if !st.tables.is_empty() {
        writeln!(out)?;
        if md {
            writeln!(out, "| table | state | rows copied | bytes | inserts | updates | deletes |")?;
            writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
        } else {
            writeln!(out, "{}", paint(BOLD, "Tables"))?;
        }
        for t in &st.tables {
            let rows = t.rows.map(|r| crate::preflight::thousands(r as i64)).unwrap_or("-".into());
            let bytes =
                t.bytes.map(|b| crate::preflight::human_bytes(b as i64)).unwrap_or("-".into());
            let a = &t.applied;
            if md {
                writeln!(
                    out,
                    "| {} | {} | {rows} | {bytes} | {} | {} | {} |",
                    t.name, t.state, a.inserts, a.updates, a.deletes
                )?;
            } else {
                writeln!(
                    out,
                    "  {:<10} {}  {}",
                    t.state,
                    t.name,
                    paint(
                        DIM,
                        &format!(
                            "({rows} rows, {bytes} copied; +{} ~{} -{} since)",
                            a.inserts, a.updates, a.deletes
                        )
                    )
                )?;
            }
            if let Some(p) = &t.proven {
                let when = p
                    .as_of
                    .map(|t| format!(" as of {}", crate::state::utc_text(t as u64)))
                    .unwrap_or_default();
                let line = format!("{:.0}% proven equal while streaming{when}", p.fraction * 100.0);
                writeln!(
                    out,
                    "  {:<10} {}",
                    "",
                    if md { line.clone() } else { paint(DIM, &line) }
                )?;
                for d in &p.differing {
                    writeln!(out, "  {:<10} {} {d}", "", paint(RED, "differs:"))?;
                }
                if !p.differing.is_empty() {
                    writeln!(
                        out,
                        "  {:<10} (the cutover refuses while rows differ: fix them on the target, \
                         or set verify.repair: true to have apply copy them again from the \
                         source at a consistent point)",
                        ""
                    )?;
                }
            }
        }
    }
    if let Some(v) = &st.verification {
        writeln!(out)?;
        writeln!(
            out,
            "Continuous verification: {} complete pass(es), {} rows compared, {} consistent \
             points (the stream stood still at most {:.3} s for one){}",
            v.passes,
            crate::preflight::thousands(v.rows_compared as i64),
            v.rounds,
            v.longest_pause,
            v.error.as_deref().map(|e| format!("; last round failed: {e}")).unwrap_or_default()
        )?;
        for r in &v.repairs {
            writeln!(
                out,
                "  {} {}: {} ({} row(s) copied again from the source at {}, {})",
                paint(YELLOW, "repaired"),
                r.table,
                r.keys.join(", "),
                r.rows_copied,
                r.lsn,
                crate::state::utc_text(r.at as u64)
            )?;
        }
    }
    if let Some(slot) = &st.slot {
        writeln!(out)?;
        writeln!(
            out,
            "Slot: {}, retains {} of WAL{}",
            if slot.active { "active" } else { "inactive" },
            slot.retained_bytes.map(crate::preflight::human_bytes).unwrap_or("?".into()),
            slot.wal_status.as_deref().map(|w| format!(", wal_status {w}")).unwrap_or_default()
        )?;
    }
    if let Some(c) = &st.cutover {
        writeln!(out)?;
        match c.status {
            crate::state::CutoverStatus::Done => writeln!(
                out,
                "Cutover: done, write gap {:.2} s, {} tables verified identical",
                c.write_gap_seconds.unwrap_or_default(),
                c.verified.len()
            )?,
            crate::state::CutoverStatus::Failed => writeln!(
                out,
                "Cutover: failed ({}); {}",
                c.error.as_deref().unwrap_or("-"),
                if c.fence_lifted { "the fence was lifted" } else { "the source may be fenced" }
            )?,
            other => writeln!(out, "Cutover: {other}")?,
        }
    }
    for w in &st.warnings {
        writeln!(out, "{} {w}", paint(YELLOW, "warning:"))?;
    }
    if let Some(e) = &st.error {
        writeln!(out, "{} {e}", paint(RED, "stopped by an error:"))?;
    }
    Ok(())
}

/// `pgtransit verify`.
pub fn verify(out: &mut dyn Write, r: &crate::verify::Report, format: Format) -> io::Result<()> {
    if format == Format::Json {
        let mut v = serde_json::to_value(r)?;
        v["identical"] = r.identical().into();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        return writeln!(out);
    }
    writeln!(out, "{} {}", paint(BOLD, "Verify"), r.migration)?;
    if r.schema_differences.is_empty() {
        writeln!(out, "  {} schema: every object in scope is identical", paint(GREEN, "ok"))?;
    } else {
        writeln!(
            out,
            "  {} schema: {} differences",
            paint(RED, "differ"),
            r.schema_differences.len()
        )?;
        for d in &r.schema_differences {
            writeln!(out, "      {d}")?;
        }
    }
    let mut differ = 0;
    for c in &r.tables {
        if c.equal() {
            writeln!(
                out,
                "  {} {} {}",
                paint(GREEN, "ok"),
                c.table,
                paint(DIM, &format!("({} rows)", crate::preflight::thousands(c.target_rows)))
            )?;
        } else if let Some(side) = &c.missing_on {
            differ += 1;
            writeln!(out, "  {} {}: missing on the {side}", paint(RED, "missing"), c.table)?;
        } else {
            differ += 1;
            let label = if r.sync_running { paint(YELLOW, "behind") } else { paint(RED, "differ") };
            let mut text = format!("  {label} {}: {}", c.table, c.counts());
            if !c.differing_ranges.is_empty() {
                text.push_str(&format!(" (at {})", c.differing_ranges.join(", ")));
            }
            writeln!(out, "{text}")?;
        }
    }
    if r.identical() {
        writeln!(out, "{} source and target are identical.", paint(GREEN, "Identical:"))
    } else if r.sync_running && r.schema_differences.is_empty() {
        writeln!(
            out,
            "{} {differ} tables differ while changes stream: within the lag, they may be changes \
             not yet applied (compare again after the cutover's fence, or with apply stopped and \
             the source quiet).",
            paint(YELLOW, "Behind:")
        )
    } else {
        writeln!(out, "{} {differ} tables differ.", paint(RED, "Different:"))
    }
}

/// `abort`: what will be removed.
pub fn abort_preview(
    out: &mut dyn Write,
    migration: &str,
    items: &[(String, String)],
) -> io::Result<()> {
    writeln!(out, "{} {migration} will remove:", paint(BOLD, "Abort"))?;
    for (what, sql) in items {
        writeln!(out, "  - {what}")?;
        writeln!(out, "      {}", paint(DIM, &format!("{sql};")))?;
    }
    writeln!(out, "The target's tables and rows stay as they are.")
}

/// `abort`: there is nothing to remove.
pub fn abort_nothing(out: &mut dyn Write, migration: &str) -> io::Result<()> {
    writeln!(
        out,
        "{} pgtransit has no replication slot, publication, replica identity or replication \
         origin for {migration} on either server.",
        paint(GREEN, "Nothing to remove:")
    )
}

/// `cutover`: the question.
pub fn cutover_prompt(out: &mut dyn Write) -> io::Result<()> {
    write!(
        out,
        "Cut over: writes on the source are stopped for every session but the cutover's own. \
         Only 'yes' is accepted: "
    )
}

/// `abort`: the question.
pub fn abort_prompt(out: &mut dyn Write) -> io::Result<()> {
    write!(out, "\nRemove them? Only 'yes' is accepted: ")?;
    out.flush()
}

/// `abort`: done.
pub fn abort_done(out: &mut dyn Write, removed: bool) -> io::Result<()> {
    if removed {
        writeln!(
            out,
            "{} a later `pgtransit apply` starts the migration's copy and stream again.",
            paint(GREEN, "Aborted:")
        )?;
    }
    Ok(())
}

/// Nothing to apply.
pub fn nothing_to_do(out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{} the target already matches the source for this migration.",
        paint(GREEN, "Nothing to do:")
    )
}

/// The confirmation question before a fresh plan is applied.
pub fn confirm_prompt(out: &mut dyn Write, plan: &Plan) -> io::Result<()> {
    write!(
        out,
        "\n{} {}\nOnly 'yes' is accepted: ",
        paint(BOLD, "Apply this plan?"),
        summary_line(&plan.summary)
    )?;
    out.flush()
}

/// An error (or a diagnostic that is not fatal) on stderr, rendered by miette.
pub fn diagnostic(e: &miette::Report) {
    let mut err = anstream::stderr();
    let _ = writeln!(err, "{e:?}");
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
                code: "wal_level_not_logical".into(),
                severity: Severity::Error,
                object: "source".into(),
                message: "wal_level is `replica`".into(),
                fix: Some("ALTER SYSTEM SET wal_level = logical;".into()),
            }],
            None,
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
