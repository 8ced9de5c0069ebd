//! `pgtransit plan` and `pgtransit validate`: load the migration plan, read both servers'
//! catalogs and schema objects, run the preflight checks, compute the execution plan, report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use miette::{IntoDiagnostic, WrapErr};
use tokio_postgres::Client;

use crate::catalog::{self, Catalog};
use crate::check::{Check, Severity};
use crate::conn::{self, ConnInfo, Env, RetryPolicy};
use crate::execution_plan::Plan;
use crate::migration_plan::{self, LoadedMigrationPlan};
use crate::objects::{self, ObjectKind, SchemaObject};
use crate::planner;
use crate::preflight::{self, Side};
use crate::report::{self, Format, PlanReport, ServerSummary};
use crate::scope::Scope;
use crate::state::StateDir;

use super::{ConnectArgs, Outcome, io_err};

/// `pgtransit plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The migration plan (YAML).
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit 0 when there is nothing to do, 2 when changes are planned (1 stays "failed").
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the execution plan to this file (JSON) for `pgtransit apply FILE`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `application_name` of the connections `plan` opens.
pub const APP_PLAN: &str = "pgtransit/plan";

/// Runs `pgtransit plan FILE`.
pub async fn run(args: &PlanArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let loaded = load_spec(&args.file)?;
    if loaded.spec.databases.is_some() {
        return super::several::plan(args, &loaded, out).await;
    }
    let computed = compute(&loaded, &Env::from_process(), args.connect.retry_for).await;
    report::plan(out, &computed.report, args.format).map_err(io_err)?;
    if let (Some(path), Some(plan)) = (&args.out, &computed.plan) {
        save_plan(path, plan)?;
        // JSON and markdown on stdout stay one clean document: the note goes to the log.
        match args.format {
            report::Format::Text => report::wrote(out, "execution plan", path).map_err(io_err)?,
            _ => tracing::info!(path = %path.display(), "wrote the execution plan"),
        }
    }
    Ok(computed.outcome())
}

/// Writes a saved plan (JSON; it holds no secrets).
pub fn save_plan(path: &Path, plan: &Plan) -> miette::Result<()> {
    let text = serde_json::to_string_pretty(plan).into_diagnostic()?;
    std::fs::write(path, text + "\n")
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write the execution plan to {}", path.display()))
}

/// Loads a migration plan with the process environment, as a located miette error on failure.
pub fn load_spec(path: &Path) -> miette::Result<LoadedMigrationPlan> {
    migration_plan::load(path, &|name| std::env::var(name).ok()).map_err(miette::Report::new)
}

/// The migration plan of `path`: a migration plan (YAML), or the one a saved execution plan
/// (`plan --out`, JSON) was computed from.
pub fn load_spec_or_saved(path: &Path) -> miette::Result<LoadedMigrationPlan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read {}: {e}", path.display()))?;
    if !text.trim_start().starts_with('{') {
        return load_spec(path);
    }
    let saved: crate::execution_plan::Plan = serde_json::from_str(&text).map_err(|e| {
        miette::miette!(
            help = "pass a migration plan (YAML) or a plan saved by `pgtransit plan --out FILE`",
            "{} is not a saved execution plan: {e}",
            path.display()
        )
    })?;
    migration_plan::parse(Path::new(&saved.spec_path), saved.spec_text, &|name| {
        std::env::var(name).ok()
    })
    .map_err(miette::Report::new)
}

/// Runs `pgtransit validate FILE...`: every file is checked; all problems are reported.
pub fn validate(files: &[PathBuf], out: &mut dyn Write) -> miette::Result<Outcome> {
    let mut failed = 0;
    for f in files {
        match migration_plan::load(f, &|name| std::env::var(name).ok()) {
            Ok(_) => report::say(out, "valid", &f.display().to_string()).map_err(io_err)?,
            Err(e) => {
                failed += 1;
                report::diagnostic(&miette::Report::new(e));
            }
        }
    }
    Ok(if failed > 0 { Outcome::Failed } else { Outcome::Done })
}

/// What `plan` computed.
pub struct Computed {
    /// The report to render (checks, and the steps when both servers were read).
    pub report: PlanReport,
    /// The execution plan, when both servers were read.
    pub plan: Option<Plan>,
    /// The roles the plan carries and the memberships it grants (for the next database of a
    /// migration of several).
    pub carries: Carried,
}

/// Roles and memberships (cluster-wide) carried by the plans of earlier databases of a
/// migration of several: there by the time the next one applies, so it does not plan them
/// again, and carries those roles too (their settings in its database).
#[derive(Debug, Clone, Default)]
pub struct Carried {
    /// Roles, as on the source.
    pub roles: Vec<catalog::Role>,
    /// Memberships.
    pub memberships: Vec<catalog::Membership>,
}

impl Carried {
    /// The roles `plan` carries and the memberships it grants, read from the source catalog.
    fn of(plan: &Plan, source: &Catalog) -> Carried {
        let mut out = Carried::default();
        for name in &plan.roles_carried {
            out.roles.extend(source.roles.iter().find(|r| &r.name == name).cloned());
        }
        for (role, member) in &plan.memberships_granted {
            let granted =
                source.memberships.iter().filter(|m| &m.role == role && &m.member == member);
            out.memberships.extend(granted.cloned());
        }
        out
    }

    /// Adds `more`.
    pub fn extend(&mut self, more: Carried) {
        self.roles.extend(more.roles);
        self.memberships.extend(more.memberships);
    }
}

impl Computed {
    /// For the exit-code policy: failed on any error or conflict; otherwise whether work
    /// remains.
    pub fn outcome(&self) -> Outcome {
        match &self.plan {
            None => Outcome::Failed,
            Some(p) if !p.is_applicable() => Outcome::Failed,
            Some(p) if p.has_work() => Outcome::ChangesPlanned,
            Some(_) => Outcome::NothingToDo,
        }
    }
}

/// One server, read.
struct Inspected {
    endpoint: String,
    catalog: Option<Catalog>,
    objects: Vec<SchemaObject>,
    client: Option<Client>,
    problem: Option<Check>,
}

/// Connects to both servers (at once), reads their catalogs and objects, runs every check and
/// computes the execution plan. Never fails: a server that cannot be reached or read becomes an
/// error finding, and the plan is then absent.
pub async fn compute(loaded: &LoadedMigrationPlan, env: &Env, retry_for: Duration) -> Computed {
    compute_after(loaded, env, retry_for, &Carried::default()).await
}

/// [`compute`], with what the plans of earlier databases create taken as on the target.
pub async fn compute_after(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    retry_for: Duration,
    earlier: &Carried,
) -> Computed {
    // The roles the databases before this one create are carried by this one too, for what
    // this database has of them (their settings in it): named as if by `roles.include`.
    let with_earlier;
    let loaded = if earlier.roles.is_empty() {
        loaded
    } else {
        let mut more = loaded.clone();
        let at = serde_saphyr::Location::UNKNOWN;
        for role in &earlier.roles {
            let exact = format!("\"{}\"", role.name.replace('"', "\"\""));
            more.spec.roles.include.push(serde_saphyr::Spanned::new(exact, at, at));
        }
        with_earlier = more;
        &with_earlier
    };
    let policy = RetryPolicy { max_elapsed: retry_for, ..RetryPolicy::default() };
    let scope = Scope::new(&loaded.spec.objects);
    let (mut source, mut target) = tokio::join!(
        inspect(Side::Source, &loaded.source_conninfo, env, &policy, &scope),
        inspect(Side::Target, &loaded.target_conninfo, env, &policy, &scope),
    );
    if let Some(cat) = target.catalog.as_mut() {
        for role in &earlier.roles {
            if !cat.roles.iter().any(|r| r.name == role.name) {
                // Carried by pgtransit's role, which may grant it (a member, or a superuser).
                // Its settings in that other database are not this one's.
                cat.roles.push(catalog::Role {
                    grantable: true,
                    settings_here: vec![],
                    ..role.clone()
                });
            }
        }
        cat.memberships.extend(earlier.memberships.iter().cloned());
    }
    // Which tables in scope hold rows: on the target, the plan never overwrites them; on the
    // source, a table empty on both sides needs no copy.
    for (side, which) in [(&mut source, Side::Source), (&mut target, Side::Target)] {
        let (Some(cat), Some(client)) = (side.catalog.as_mut(), side.client.as_ref()) else {
            continue;
        };
        let tables: Vec<(String, String)> = side
            .objects
            .iter()
            .filter(|o| o.key.kind == ObjectKind::Table && planner::in_scope(o, &scope))
            .filter(|o| o.table_info.as_ref().is_some_and(|t| !t.partitioned))
            .map(|o| (o.key.schema.clone(), o.key.name.clone()))
            .collect();
        if let Err(e) = catalog::read_tables_with_rows(client, cat, &tables).await {
            side.problem = Some(preflight::unreachable(
                which,
                format!("could not tell which {which} tables hold rows: {e}"),
                None,
            ));
            side.catalog = None;
        }
    }
    // Tables to split by an integer key need the key's range (one index lookup each).
    if let (Some(cat), Some(client)) = (source.catalog.as_mut(), source.client.as_ref()) {
        let threshold = planner::split_threshold(&loaded.spec);
        let to_split: Vec<(String, String, String)> = source
            .objects
            .iter()
            .filter(|o| o.key.kind == ObjectKind::Table && planner::in_scope(o, &scope))
            .filter(|o| {
                o.table_info.as_ref().is_some_and(|t| !t.partitioned && t.bytes as u64 > threshold)
            })
            .filter_map(|o| {
                let rel = cat
                    .relations
                    .iter()
                    .find(|r| r.schema == o.key.schema && r.name == o.key.name)?;
                // (A table row-level security filters is refused by preflight; its range
                // cannot be read under `row_security = off`.)
                if rel.row_security_applies {
                    return None;
                }
                Some((o.key.schema.clone(), o.key.name.clone(), rel.integer_key.clone()?))
            })
            .collect();
        if let Err(e) = catalog::read_key_ranges(client, cat, &to_split).await {
            source.problem = Some(preflight::unreachable(
                Side::Source,
                format!("could not read the key ranges of the tables to split: {e}"),
                None,
            ));
            source.catalog = None;
        }
    }
    let mut checks = vec![];
    for side in [&source, &target] {
        if let Some(p) = &side.problem {
            checks.push(p.clone());
        }
    }
    let state_dir = StateDir::new(loaded.state_dir());
    let state = match state_dir.load() {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check {
                code: "state_unreadable".into(),
                severity: Severity::Error,
                object: state_dir.state_file().display().to_string(),
                message: e.to_string(),
                fix: miette::Diagnostic::help(&e).map(|h| h.to_string()),
            });
            None
        }
    };
    checks.extend(preflight::run(&loaded.spec, source.catalog.as_ref(), target.catalog.as_ref()));
    checks.extend(preflight::check_state(
        &loaded.spec,
        state.as_ref(),
        &state_dir.state_file(),
        source.catalog.as_ref(),
        target.catalog.as_ref(),
    ));
    checks.sort_by_key(|c| c.severity);
    let summary = |r: &Inspected| ServerSummary {
        endpoint: r.endpoint.clone(),
        version: r.catalog.as_ref().map(|c| format!("PostgreSQL {}", short_version(c))),
    };
    let (source_summary, target_summary) = (summary(&source), summary(&target));
    let plan = match (&source.catalog, &target.catalog) {
        (Some(src), Some(tgt)) => Some(planner::plan(planner::Inputs {
            spec: loaded,
            source: src,
            target: tgt,
            source_objects: &source.objects,
            target_objects: &target.objects,
            checks: checks.clone(),
            state: state.as_ref(),
            source_endpoint: source.endpoint.clone(),
            target_endpoint: target.endpoint.clone(),
        })),
        _ => None,
    };
    // The cutover's expected write gap, from the last measurements.
    let mut plan = plan;
    if let (Some(p), Some(st)) = (plan.as_mut(), state.as_ref()) {
        p.cutover_estimate =
            crate::estimate::cutover(st, &p.steps, &p.tables, crate::state::now_f64());
    }
    let carries = match (&plan, &source.catalog) {
        (Some(p), Some(src)) => Carried::of(p, src),
        _ => Carried::default(),
    };
    source.client.take();
    target.client.take();
    // The plan's findings: preflight's, and those about the roles it carries.
    let checks = plan.as_ref().map(|p| p.checks.clone()).unwrap_or(checks);
    let report = PlanReport::new(
        &loaded.spec.name.value,
        loaded.spec.mode,
        source_summary,
        target_summary,
        checks,
        plan.as_ref(),
    );
    Computed { report, plan, carries }
}

/// Reads the schema objects, and runs pg_dump under the same snapshot: on the source always
/// (every entry of its script must be covered: what is not is refused by preflight), on the
/// target when it has objects whose DDL only pg_dump gives (to compare them). What pg_dump
/// said, or why it could not run, goes into `catalog.dump` for preflight.
async fn read_objects(
    client: &Client,
    resolved: &conn::Resolved,
    catalog: &mut Catalog,
    side: Side,
    scope: &Scope,
) -> Result<Vec<SchemaObject>, objects::ObjectsError> {
    let begin = objects::ObjectsError::query("begin");
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(begin)?;
    // A pooler or a role may refuse to export a snapshot: pg_dump then takes its own.
    let _ = client.batch_execute("SAVEPOINT export").await;
    let snapshot = match client.query_one("SELECT pg_export_snapshot()", &[]).await {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK TO SAVEPOINT export").await;
            None
        }
    };
    let read = objects::read_schema(client, catalog.server.version_num).await;
    let mut schema = match read {
        Ok(s) => s,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    catalog.dump.needed_for =
        schema.objects.iter().filter(|o| o.key.is_dumped()).map(|o| o.key.to_string()).collect();
    if side == Side::Source || !catalog.dump.needed_for.is_empty() {
        // Schemas out of scope are none of pg_dump's business (the role may not even read them).
        let excluded: Vec<String> = catalog
            .schemas
            .iter()
            .filter(|s| !scope.schema_in_scope(&s.name))
            .map(|s| s.name.clone())
            .collect();
        let ran = match crate::dump::find_pg_dump(&[catalog.server.major()]) {
            Ok((path, major)) => {
                let snapshot = snapshot.as_deref();
                let dumped =
                    crate::dump::dump_schema(&path, major, resolved, snapshot, &excluded).await;
                catalog.dump.failed = dumped.is_err();
                dumped.map(|script| (script, major))
            }
            Err(e) => Err(e),
        };
        match ran {
            Ok((script, major)) => {
                let entries = crate::dump::parse(&script);
                let attached = objects::attach_dump(&mut schema, &entries);
                catalog.dump.not_migrated = attached
                    .uncovered
                    .into_iter()
                    .map(|u| (format!("{} {}", u.kind, u.name), u.schema))
                    .collect();
                catalog.dump.passwords_left_out = attached.passwords_left_out;
                catalog.dump.subscriptions = attached.subscriptions;
                catalog.dump.roles = schema
                    .objects
                    .iter()
                    .filter(|o| o.key.is_dumped())
                    .flat_map(|o| o.roles().into_iter().map(|r| (r, o.key.to_string())))
                    .collect();
                catalog.dump.pg_dump_major = Some(major);
            }
            Err(e) => catalog.dump.problem = Some(e),
        }
    }
    let _ = client.batch_execute("ROLLBACK").await;
    Ok(schema.objects)
}

fn short_version(c: &Catalog) -> String {
    // "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64..." → "15.18"
    c.server.version.split_whitespace().nth(1).unwrap_or("?").to_string()
}

async fn inspect(
    side: Side,
    info: &ConnInfo,
    env: &Env,
    policy: &RetryPolicy,
    scope: &Scope,
) -> Inspected {
    let mut result = Inspected {
        endpoint: "(invalid)".into(),
        catalog: None,
        objects: vec![],
        client: None,
        problem: None,
    };
    let resolved = match info.resolve(env) {
        Ok(r) => r,
        Err(e) => {
            let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
            result.problem = Some(preflight::unreachable(side, format!("{side}.url: {e}"), help));
            return result;
        }
    };
    result.endpoint = resolved.display();
    // A server that goes away after the connection was made (a crash, a restart) is waited
    // for as one that does not answer yet, within the same time: the catalog is read again.
    let deadline = std::time::Instant::now() + policy.max_elapsed;
    loop {
        let client = match conn::connect_with(&resolved, APP_PLAN, policy).await {
            Ok(c) => c,
            Err(e) => {
                let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
                result.problem = Some(preflight::unreachable(side, e.to_string(), help));
                return result;
            }
        };
        let read = read_all(&client, &resolved, side, scope, &result.endpoint).await;
        let lost = client.is_closed() && std::time::Instant::now() < deadline;
        match read {
            Err(_) if lost => {}
            Ok((catalog, _)) if lost && catalog.dump.failed => {}
            Ok((catalog, objects)) => {
                result.objects = objects;
                result.catalog = Some(catalog);
                result.client = Some(client);
                return result;
            }
            Err(problem) => {
                result.problem = Some(problem);
                return result;
            }
        }
        tracing::warn!(side = %side, "the connection was lost while reading the catalog: again");
        tokio::time::sleep(policy.initial.max(std::time::Duration::from_millis(250))).await;
    }
}

/// The catalog and the schema objects of one side, or why they could not be read.
async fn read_all(
    client: &Client,
    resolved: &conn::Resolved,
    side: Side,
    scope: &Scope,
    endpoint: &str,
) -> Result<(Catalog, Vec<SchemaObject>), crate::check::Check> {
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        preflight::unreachable(
            side,
            format!("connected to {endpoint} but could not read its {what}: {e}"),
            Some("check that the role may read the system catalogs (pg_catalog)".into()),
        )
    };
    let mut catalog = catalog::read(client).await.map_err(|e| unreadable("catalog", &e))?;
    let objects = read_objects(client, resolved, &mut catalog, side, scope)
        .await
        .map_err(|e| unreadable("schema objects", &e))?;
    Ok((catalog, objects))
}
