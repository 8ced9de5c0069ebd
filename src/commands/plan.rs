//! `pgtransit plan` and `pgtransit validate`: load the migration plan, read both catalogs,
//! run the preflight checks, and report.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::catalog::{self, Catalog};
use crate::cli::{Outcome, PlanArgs, io_err};
use crate::conn::{self, ConnInfo, Env, RetryPolicy};
use crate::preflight::{self, Check, Side};
use crate::report::{self, PlanReport, ServerSummary};
use crate::scope::Scope;
use crate::spec::{self, LoadedSpec};

/// `application_name` of the connections `plan` opens.
pub const APP_PREFLIGHT: &str = "pgtransit/preflight";

/// Runs `pgtransit plan FILE`.
pub async fn run(args: &PlanArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = load_spec(&args.file)?;
    let env = Env::from_process();
    let result = preflight(&loaded, &env, args.connect.retry_for).await;
    report::plan(out, &result.report, args.format).map_err(io_err)?;
    Ok(result.outcome())
}

/// Loads a migration plan with the process environment, as a located miette error on failure.
pub fn load_spec(path: &std::path::Path) -> miette::Result<LoadedSpec> {
    spec::load(path, &|name| std::env::var(name).ok()).map_err(miette::Report::new)
}

/// Runs `pgtransit validate FILE...`: every file is checked; all problems are reported.
pub fn validate(files: &[PathBuf], out: &mut dyn Write) -> miette::Result<Outcome> {
    let mut failed = 0;
    for f in files {
        match spec::load(f, &|name| std::env::var(name).ok()) {
            Ok(_) => report::say(out, "valid", &f.display().to_string()).map_err(io_err)?,
            Err(e) => {
                failed += 1;
                let mut err = anstream::stderr();
                let _ = writeln!(err, "{:?}", miette::Report::new(e));
            }
        }
    }
    Ok(if failed > 0 { Outcome::Failed } else { Outcome::Done })
}

/// What preflight found.
pub struct PreflightResult {
    /// The report to render.
    pub report: PlanReport,
    /// The source catalog, when it could be read.
    pub source: Option<Catalog>,
    /// The target catalog, when it could be read.
    pub target: Option<Catalog>,
    /// The migration's scope.
    pub scope: Scope,
}

impl PreflightResult {
    /// The outcome for the exit-code policy: failed on any error; otherwise whether the target
    /// still lacks something in scope.
    pub fn outcome(&self) -> Outcome {
        if preflight::has_errors(&self.report.checks) {
            return Outcome::Failed;
        }
        match (&self.source, &self.target) {
            (Some(_), Some(_)) if self.work_remains() => Outcome::ChangesPlanned,
            _ => Outcome::NothingToDo,
        }
    }

    /// Whether some relation in scope on the source is missing on the target.
    fn work_remains(&self) -> bool {
        let (Some(src), Some(tgt)) = (&self.source, &self.target) else { return false };
        preflight::relations_in_scope(src, &self.scope)
            .iter()
            .any(|r| !tgt.relations.iter().any(|t| t.schema == r.schema && t.name == r.name))
    }
}

/// Connects to both servers (at once), reads their catalogs and runs every check. Never fails:
/// a server that cannot be reached or read becomes an error finding.
pub async fn preflight(loaded: &LoadedSpec, env: &Env, retry_for: Duration) -> PreflightResult {
    let policy = RetryPolicy { max_elapsed: retry_for, ..RetryPolicy::default() };
    let (source, target) = tokio::join!(
        inspect(Side::Source, &loaded.source_conninfo, env, &policy),
        inspect(Side::Target, &loaded.target_conninfo, env, &policy),
    );
    let mut checks = vec![];
    let mut summary = |r: &Inspected| {
        if let Some(problem) = &r.problem {
            checks.push(problem.clone());
        }
        ServerSummary {
            endpoint: r.endpoint.clone(),
            version: r.catalog.as_ref().map(|c| format!("PostgreSQL {}", short_version(c))),
        }
    };
    let source_summary = summary(&source);
    let target_summary = summary(&target);
    checks.extend(preflight::run(&loaded.spec, source.catalog.as_ref(), target.catalog.as_ref()));
    checks.sort_by_key(|c| c.severity);
    let report = PlanReport::new(
        &loaded.spec.name.value,
        loaded.spec.mode,
        source_summary,
        target_summary,
        checks,
    );
    let scope = Scope::new(&loaded.spec.objects);
    PreflightResult { report, source: source.catalog, target: target.catalog, scope }
}

fn short_version(c: &Catalog) -> String {
    // "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64..." → "15.18"
    c.server.version.split_whitespace().nth(1).unwrap_or("?").to_string()
}

struct Inspected {
    endpoint: String,
    catalog: Option<Catalog>,
    problem: Option<Check>,
}

async fn inspect(side: Side, info: &ConnInfo, env: &Env, policy: &RetryPolicy) -> Inspected {
    let resolved = match info.resolve(env) {
        Ok(r) => r,
        Err(e) => {
            let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
            return Inspected {
                endpoint: "(invalid)".into(),
                catalog: None,
                problem: Some(preflight::unreachable(side, format!("{side}.url: {e}"), help)),
            };
        }
    };
    let endpoint = resolved.display();
    let client = match conn::connect_with(&resolved, APP_PREFLIGHT, policy).await {
        Ok(c) => c,
        Err(e) => {
            let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
            return Inspected {
                endpoint,
                catalog: None,
                problem: Some(preflight::unreachable(side, e.to_string(), help)),
            };
        }
    };
    match catalog::read(&client).await {
        Ok(catalog) => Inspected { endpoint, catalog: Some(catalog), problem: None },
        Err(e) => Inspected {
            endpoint: endpoint.clone(),
            catalog: None,
            problem: Some(preflight::unreachable(
                side,
                format!("connected to {endpoint} but could not read its catalog: {e}"),
                Some("check that the role may read the system catalogs (pg_catalog)".into()),
            )),
        },
    }
}
