//! `plan` and `apply` of a migration of several databases (`databases:` in the migration plan):
//! the databases of both servers listed, each selected database's member (see
//! `crate::databases`) planned in turn by the one-database pipeline (the roles one database's
//! plan creates are taken as there by the next, so each is created once), reported per
//! database, and applied one database after another.
//!
//! Online, the databases stream and are cut over together: `super::together`.

use std::io::Write;
use std::time::Duration;

use crate::catalog::{self, DatabaseInfo};
use crate::check::{Check, Severity};
use crate::conn::{self, ConnInfo, Env, RetryPolicy};
use crate::databases::{self, Member};
use crate::execution_plan::Plan;
use crate::migration_plan::{LoadedMigrationPlan, Mode};
use crate::preflight::{self, Side};
use crate::report::{self, DatabaseReport, Format, SeveralReport};
use crate::sql::{display, ident, literal};

use super::apply::ApplyArgs;
use super::plan::{APP_PLAN, Carried, Computed, PlanArgs};
use super::{Outcome, io_err};

/// What `plan` computed for every database.
pub struct Several {
    /// The report.
    pub report: SeveralReport,
    /// Each database's member and its plan, in name order.
    pub members: Vec<(Member, Computed)>,
    /// For each member, what the plans of the databases before it create.
    pub earlier: Vec<Carried>,
}

impl Several {
    /// Failed when a server check or any database failed; else whether work remains.
    pub fn outcome(&self) -> Outcome {
        let outcomes: Vec<Outcome> = self.members.iter().map(|(_, c)| c.outcome()).collect();
        if crate::check::has_errors(&self.report.checks) || outcomes.contains(&Outcome::Failed) {
            Outcome::Failed
        } else if outcomes.contains(&Outcome::ChangesPlanned) {
            Outcome::ChangesPlanned
        } else {
            Outcome::NothingToDo
        }
    }
}

/// `pgtransit plan` of a migration of several databases.
pub async fn plan(
    args: &PlanArgs,
    loaded: &LoadedMigrationPlan,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    if args.out.is_some() {
        miette::bail!(
            help = "apply the migration plan itself (`pgtransit apply FILE`, which shows the plan \
                    of every database and asks before it changes anything)",
            "a migration of several databases cannot be saved with --out yet"
        );
    }
    let several = compute(loaded, &Env::from_process(), args.connect.retry_for).await;
    report::plan_several(out, &several.report, args.format).map_err(io_err)?;
    Ok(several.outcome())
}

/// `pgtransit apply` of a migration of several databases: every database planned and shown,
/// one confirmation, then each database applied in turn (a failure stops there; the next apply
/// goes on from it). Online, the databases load from one pool of jobs, each streams once
/// loaded, and they are cut over together (see `super::together`).
pub async fn apply(
    args: &ApplyArgs,
    loaded: &LoadedMigrationPlan,
    out: &mut dyn Write,
    cutover_now: bool,
) -> miette::Result<Outcome> {
    let env = Env::from_process();
    let command = format!("apply {}", args.file.display());
    // The whole migration is locked while it is planned and applied: one apply at a time.
    let _whole = crate::state::StateDir::new(loaded.state_dir()).lock(&command)?;
    if loaded.spec.mode == Mode::Online {
        // What an interrupted cutover decided, before the databases are planned.
        super::together::settle(loaded, &env, args.connect.retry_for).await?;
    }
    let several = compute(loaded, &env, args.connect.retry_for).await;
    report::plan_several(out, &several.report, Format::Text).map_err(io_err)?;
    match several.outcome() {
        Outcome::Failed => return Ok(Outcome::Failed),
        Outcome::NothingToDo => {
            report::nothing_to_do(out).map_err(io_err)?;
            return Ok(Outcome::Done);
        }
        _ => {}
    }
    let count = several.members.len();
    let taken: Vec<String> = several.members.iter().map(|(m, _)| m.database.clone()).collect();
    if !args.auto_approve
        && !super::confirm(
            out,
            |out| {
                write!(
                    out,
                    "\nApply the plans of these {count} databases? Only 'yes' is accepted: "
                )?;
                out.flush()
            },
            "pass --auto-approve to apply without confirmation",
        )?
    {
        miette::bail!(help = "nothing was changed", "apply cancelled");
    }
    record(loaded, &taken)?;
    if loaded.spec.mode == Mode::Online {
        return super::together::apply(args, loaded, &several, out, cutover_now).await;
    }
    for (i, (member, computed)) in several.members.iter().enumerate() {
        let Some(shown) = computed.plan.as_ref().filter(|p| p.has_work()) else { continue };
        report::say(out, "database", &format!("{} ({} of {count})", member.database, i + 1))
            .map_err(io_err)?;
        let (state_dir, _lock) = super::apply::lock(&member.plan, &command)?;
        let Some(plan) = replan(&several, i, shown, &env, args, out).await? else {
            return Ok(Outcome::Failed);
        };
        let how = super::apply::How { check_stale: false, cutover_now: false, member: None };
        let outcome =
            super::apply::apply_plan(&member.plan, &plan, &state_dir, &env, args, out, how).await?;
        if outcome == Outcome::Failed {
            return Ok(Outcome::Failed);
        }
    }
    report::say(out, "done", &format!("{count} databases: {}", taken.join(", ")))
        .map_err(io_err)?;
    Ok(Outcome::Done)
}

/// The `i`th database planned again now, under its lock, once the databases before it are
/// applied (the roles they carried are there, as its plan assumed): its plan, if its steps are
/// those `shown` and neither server changed since. None: it could not be planned (the report
/// says why).
pub async fn replan(
    several: &Several,
    i: usize,
    shown: &Plan,
    env: &Env,
    args: &ApplyArgs,
    out: &mut dyn Write,
) -> miette::Result<Option<Plan>> {
    let member = &several.members[i].0;
    let fresh =
        super::plan::compute_after(&member.plan, env, args.connect.retry_for, &several.earlier[i])
            .await;
    {
        let Some(plan) = fresh.plan.as_ref() else {
            report::plan(out, &fresh.report, Format::Text).map_err(io_err)?;
            return Ok(None);
        };
        let (was, now) = (&shown.fingerprint, &plan.fingerprint);
        // (A sequence's value is read when planned: a source taking writes moves it on, and
        // the newer value is the one to set.)
        let same = |a: &Plan, b: &Plan| {
            let steps = |p: &Plan| -> Vec<(String, String, String)> {
                p.steps
                    .iter()
                    .map(|s| {
                        let sql = match s.work {
                            crate::execution_plan::Work::SetSequence { .. } => String::new(),
                            _ => s.sql.clone(),
                        };
                        (s.id.clone(), s.action.name().to_string(), sql)
                    })
                    .collect()
            };
            steps(a) == steps(b)
        };
        let changed = was.source != now.source || was.target != now.target || !same(shown, plan);
        if changed || !plan.is_applicable() {
            report::plan(out, &fresh.report, Format::Text).map_err(io_err)?;
            miette::bail!(
                help = "run `pgtransit apply` again: it plans every database afresh and shows \
                        what changed",
                "database {} changed since its plan was shown (above, as it is now); the \
                 databases before it are applied",
                member.database
            );
        }
        Ok(Some(plan.clone()))
    }
}

/// Lists the databases of both servers, selects the source's, and plans each.
pub async fn compute(loaded: &LoadedMigrationPlan, env: &Env, retry_for: Duration) -> Several {
    let policy = RetryPolicy { max_elapsed: retry_for, ..RetryPolicy::default() };
    let spec = &loaded.spec;
    let mut report = SeveralReport {
        migration: spec.name.value.clone(),
        mode: spec.mode.to_string(),
        selected: vec![],
        checks: vec![],
        databases: vec![],
    };
    let (source, target) = tokio::join!(
        list(Side::Source, &loaded.source_conninfo, env, &policy),
        list(Side::Target, &loaded.target_conninfo, env, &policy),
    );
    let (source, target) = match (source, target) {
        (Ok(s), Ok(t)) => (s, t),
        (s, t) => {
            report.checks.extend(s.err());
            report.checks.extend(t.err());
            return Several { report, members: vec![], earlier: vec![] };
        }
    };
    let names: Vec<String> = source.iter().map(|d| d.name.clone()).collect();
    let filter = spec.databases.clone().unwrap_or_default();
    let selected = databases::select(&filter, &names);
    report.selected = selected.clone();
    report.checks.extend(server_checks(&source, &target, &selected));
    if spec.cutover.rollback_window {
        report.checks.push(Check {
            code: "rollback_window_several_not_built".into(),
            severity: Severity::Error,
            object: "migration plan".into(),
            message: "a rollback window for a migration of several databases is not built".into(),
            fix: Some("cutover.rollback_window: false, or one migration plan per database".into()),
        });
    }
    if let Some(before) = recorded(loaded) {
        report.checks.extend(changed_since(&before, &selected));
        report.checks.sort_by_key(|c| c.severity);
    }
    let present: Vec<String> =
        selected.into_iter().filter(|d| target.iter().any(|t| &t.name == d)).collect();
    if spec.mode == Mode::Online {
        report.checks.extend(capacity_checks(loaded, env, &policy, &present).await);
    }
    let mut members = vec![];
    let mut earlier = vec![];
    let mut carried = Carried::default();
    for member in databases::members(loaded, &present) {
        let computed = super::plan::compute_after(&member.plan, env, retry_for, &carried).await;
        earlier.push(carried.clone());
        carried.extend(computed.carries.clone());
        let mut database = computed.report.clone();
        // What each database's preflight says of the servers themselves is said once, above.
        // The roles left behind: the last database's list (those no database carries, as each
        // takes the roles of those before it as there).
        report.checks.retain(|c| c.code != "roles_not_carried");
        for check in take_server_level(&mut database) {
            if !report.checks.contains(&check) {
                report.checks.push(check);
            }
        }
        report
            .databases
            .push(DatabaseReport { database: member.database.clone(), report: database });
        members.push((member, computed));
    }
    report.checks.sort_by_key(|c| c.severity);
    Several { report, members, earlier }
}

/// Findings about the servers rather than one database (parameters, versions), out of a
/// database's report, its counts adjusted.
fn take_server_level(r: &mut report::PlanReport) -> Vec<Check> {
    const SERVER_LEVEL: &[&str] = &[
        "shared_preload_libraries_differ",
        "max_connections_lower",
        "versions",
        "roles_not_carried",
    ];
    let (taken, kept): (Vec<Check>, Vec<Check>) =
        r.checks.drain(..).partition(|c| SERVER_LEVEL.contains(&c.code.as_str()));
    r.checks = kept;
    for c in &taken {
        match c.severity {
            Severity::Error => r.summary.errors -= 1,
            Severity::Warning => r.summary.warnings -= 1,
            Severity::Info => r.summary.info -= 1,
        }
    }
    taken
}

/// Databases selected now that earlier applies did not take, and the other way round.
fn changed_since(before: &[String], selected: &[String]) -> Vec<Check> {
    let mut checks = vec![];
    for d in selected.iter().filter(|d| !before.contains(d)) {
        checks.push(Check {
            code: "database_added".into(),
            severity: Severity::Warning,
            object: format!("database {}", display(d)),
            message: format!(
                "database {} is selected now but was not when this migration was applied \
                 before (created on the source since, or the patterns changed): it is migrated \
                 whole by the next apply",
                display(d)
            ),
            fix: Some("exclude it (databases.exclude) if it should stay behind".into()),
        });
    }
    for d in before.iter().filter(|d| !selected.contains(d)) {
        checks.push(Check {
            code: "database_gone".into(),
            severity: Severity::Warning,
            object: format!("database {}", display(d)),
            message: format!(
                "database {} was migrated by an earlier apply but is no longer selected \
                 (dropped on the source, or excluded since): its copy on the target is left as \
                 it is",
                display(d)
            ),
            fix: None,
        });
    }
    checks
}

/// Which databases, and which the target lacks.
fn server_checks(
    source: &[DatabaseInfo],
    target: &[DatabaseInfo],
    selected: &[String],
) -> Vec<Check> {
    let mut checks = vec![];
    if selected.is_empty() {
        checks.push(Check {
            code: "databases_none_selected".into(),
            severity: Severity::Error,
            object: "databases".into(),
            message: format!(
                "databases: selects none of the source's databases ({})",
                source.iter().map(|d| display(&d.name)).collect::<Vec<_>>().join(", ")
            ),
            fix: Some("fix the patterns of databases.include and databases.exclude".into()),
        });
    }
    for name in selected {
        if target.iter().any(|t| &t.name == name) {
            continue;
        }
        let Some(db) = source.iter().find(|d| &d.name == name) else { continue };
        checks.push(Check {
            code: "target_database_missing".into(),
            severity: Severity::Error,
            object: format!("database {}", display(name)),
            message: format!("database {} is not on the target", display(name)),
            fix: Some(format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {};  \
                 -- on the target",
                ident(name),
                literal(&db.encoding),
                literal(&db.collate),
                literal(&db.ctype)
            )),
        });
    }
    let left: Vec<String> =
        source.iter().filter(|d| !selected.contains(&d.name)).map(|d| display(&d.name)).collect();
    checks.push(Check {
        code: "databases".into(),
        severity: Severity::Info,
        object: "databases".into(),
        message: format!(
            "{} database(s) of the source in this migration: {}{}",
            selected.len(),
            selected.iter().map(|d| display(d)).collect::<Vec<_>>().join(", "),
            if left.is_empty() {
                String::new()
            } else {
                format!("; not in it: {}", left.join(", "))
            }
        ),
        fix: None,
    });
    checks.sort_by_key(|c| c.severity);
    checks
}

/// The databases of one server, read through the database its URL names (`postgres` when
/// it names none).
async fn list(
    side: Side,
    info: &ConnInfo,
    env: &Env,
    policy: &RetryPolicy,
) -> Result<Vec<DatabaseInfo>, Check> {
    let client = connect(side, info, env, policy).await?;
    catalog::read_databases(&client).await.map_err(|e| {
        preflight::unreachable(side, format!("could not list the {side}'s databases: {e}"), None)
    })
}

/// A session on the database a server's URL names (`postgres` when it names none).
async fn connect(
    side: Side,
    info: &ConnInfo,
    env: &Env,
    policy: &RetryPolicy,
) -> Result<tokio_postgres::Client, Check> {
    let mut info = info.clone();
    if info.get("dbname").is_none() {
        let _ = info.set("dbname", "postgres");
    }
    let resolved = info.resolve(env).map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
        preflight::unreachable(side, format!("{side}.url: {e}"), help)
    })?;
    conn::connect_with(&resolved, APP_PLAN, policy).await.map_err(|e| {
        let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
        preflight::unreachable(side, e.to_string(), help)
    })
}

/// Online, several databases at once: the source's slots and WAL senders, and both servers'
/// sessions.
async fn capacity_checks(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    policy: &RetryPolicy,
    present: &[String],
) -> Vec<Check> {
    let spec = &loaded.spec;
    let ours: Vec<String> = databases::members(loaded, present)
        .iter()
        .map(|m| crate::naming::slot_name(&m.plan.spec.name.value))
        .collect();
    let jobs = spec.load.jobs.map(|j| j as usize).unwrap_or(crate::execution_plan::DEFAULT_JOBS);
    let mut checks = vec![];
    for (side, info) in
        [(Side::Source, &loaded.source_conninfo), (Side::Target, &loaded.target_conninfo)]
    {
        let cap = match connect(side, info, env, policy).await {
            Ok(client) => catalog::read_replication_capacity(&client).await.map_err(|e| {
                preflight::unreachable(
                    side,
                    format!("could not read the {side}'s settings: {e}"),
                    None,
                )
            }),
            Err(check) => Err(check),
        };
        match cap {
            Ok(cap) => {
                if side == Side::Source {
                    let continuous = spec.verify.continuous && spec.verify.checksums;
                    checks.extend(replication_checks(&cap, &ours, continuous));
                }
                checks.extend(connection_check(side, &cap, ours.len(), jobs));
            }
            Err(check) => checks.push(check),
        }
    }
    checks
}

/// Whether `side` has room for the sessions of `n` databases loading at once (`jobs` each, as
/// each opens its own, and one or two more: the snapshot's, the heartbeat's): a warning, as
/// the figures are estimates.
fn connection_check(
    side: Side,
    cap: &catalog::ReplicationCapacity,
    n: usize,
    jobs: usize,
) -> Option<Check> {
    if n < 2 {
        return None;
    }
    let each = jobs as i64 + if side == Side::Source { 2 } else { 1 };
    let need = n as i64 * each;
    let free = cap.open_connections - cap.client_backends;
    if need <= free {
        return None;
    }
    let fits = (free / n as i64 - (each - jobs as i64)).max(1);
    Some(Check {
        code: "connections_short".into(),
        severity: Severity::Warning,
        object: side.to_string(),
        message: format!(
            "the {n} databases load at once, each with sessions of its own (load.jobs = {jobs} \
             and {} more): about {need} sessions on the {side}, which has room for {free} more \
             ({} open to roles without special rights, {} in use)",
            each - jobs as i64,
            cap.open_connections,
            cap.client_backends
        ),
        fix: Some(format!(
            "load.jobs: {fits} in the migration plan, or ALTER SYSTEM SET max_connections = {} \
             on the {side} and restart it",
            need + cap.client_backends + 5
        )),
    })
}

/// Online: whether the source has a slot and a WAL sender for every database (`ours`: their
/// slots' names) at once, and one more each for continuous verification's consistent points.
/// (One database's preflight counts its own.)
fn replication_checks(
    cap: &catalog::ReplicationCapacity,
    ours: &[String],
    continuous: bool,
) -> Vec<Check> {
    let n = ours.len() as i64;
    if n < 2 {
        return vec![];
    }
    let existing = cap.slots.iter().filter(|(s, _)| ours.contains(s));
    let (there, streaming) =
        existing.fold((0, 0), |(t, s), (_, active)| (t + 1, s + i64::from(*active)));
    let slots = cap.slots.len() as i64 + n - there;
    let senders = cap.active_senders + n - streaming;
    let check = |severity, need: (i64, i64), why: String| -> Option<Check> {
        let short: Vec<String> = [
            (need.0 > cap.max_slots).then(|| format!("max_replication_slots = {}", need.0)),
            (need.1 > cap.max_senders).then(|| format!("max_wal_senders = {}", need.1)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if short.is_empty() {
            return None;
        }
        Some(Check {
            code: "replication_capacity".into(),
            severity,
            object: "source".into(),
            message: format!(
                "{why}: {} (the source has max_replication_slots = {}, {} slots now, \
                 max_wal_senders = {}, {} at work now)",
                short.join(", "),
                cap.max_slots,
                cap.slots.len(),
                cap.max_senders,
                cap.active_senders
            ),
            fix: Some(format!(
                "{}; then restart the source (needs a restart)",
                short
                    .iter()
                    .map(|s| format!("ALTER SYSTEM SET {s}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        })
    };
    let streams = check(
        Severity::Error,
        (slots, senders),
        format!("the {n} databases stream at once, each with a slot and a WAL sender of its own"),
    );
    if streams.is_some() || !continuous {
        return streams.into_iter().collect();
    }
    check(
        Severity::Warning,
        (slots + n, senders + n),
        "continuous verification needs one more slot and WAL sender per database for a \
             moment at each consistent point (without them each cutover compares every row \
             inside its fence)"
            .into(),
    )
    .into_iter()
    .collect()
}

/// The file, in the migration's state directory, that lists the databases it has applied.
const DATABASES_FILE: &str = "databases.json";

/// The databases earlier applies of this migration took, if any did.
fn recorded(loaded: &LoadedMigrationPlan) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(loaded.state_dir().join(DATABASES_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records `databases` (with those recorded before) as taken by this migration.
fn record(loaded: &LoadedMigrationPlan, databases: &[String]) -> miette::Result<()> {
    let mut all = recorded(loaded).unwrap_or_default();
    for d in databases {
        if !all.contains(d) {
            all.push(d.clone());
        }
    }
    all.sort();
    let dir = loaded.state_dir();
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::write(dir.join(DATABASES_FILE), serde_json::to_string_pretty(&all)? + "\n")
        })
        .map_err(|e| miette::miette!("cannot write {}: {e}", dir.join(DATABASES_FILE).display()))
}

/// The members of a migration of several databases: those earlier applies took, else those it
/// selects on the source now.
pub async fn members_of(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    retry_for: Duration,
) -> miette::Result<Vec<Member>> {
    if let Some(databases) = recorded(loaded) {
        return Ok(databases::members(loaded, &databases));
    }
    selected_members(loaded, env, retry_for).await
}

/// The members an apply runs now: those it selects on the source now that earlier applies took
/// (none yet: all it selects).
pub async fn members_now(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    retry_for: Duration,
) -> miette::Result<Vec<Member>> {
    let selected = selected_members(loaded, env, retry_for).await?;
    Ok(match recorded(loaded) {
        Some(taken) => selected.into_iter().filter(|m| taken.contains(&m.database)).collect(),
        None => selected,
    })
}

async fn selected_members(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    retry_for: Duration,
) -> miette::Result<Vec<Member>> {
    let policy = RetryPolicy { max_elapsed: retry_for, ..RetryPolicy::default() };
    let source = list(Side::Source, &loaded.source_conninfo, env, &policy)
        .await
        .map_err(|c| miette::miette!("{}", c.message))?;
    let names: Vec<String> = source.iter().map(|d| d.name.clone()).collect();
    let filter = loaded.spec.databases.clone().unwrap_or_default();
    Ok(databases::members(loaded, &databases::select(&filter, &names)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(
        max_slots: i64,
        max_senders: i64,
        slots: &[(&str, bool)],
    ) -> catalog::ReplicationCapacity {
        catalog::ReplicationCapacity {
            open_connections: 100,
            client_backends: 10,
            max_slots,
            max_senders,
            slots: slots.iter().map(|(s, a)| (s.to_string(), *a)).collect(),
            active_senders: slots.iter().filter(|(_, a)| *a).count() as i64,
        }
    }

    #[test]
    fn several_databases_need_a_slot_and_a_sender_each_and_their_own_count_once_there() {
        let ours = ["m_a".to_string(), "m_b".into(), "m_c".into()];
        // Another tool's slot, and room for two more: one short, with the settings that fit.
        let short = replication_checks(&capacity(3, 10, &[("other", true)]), &ours, false);
        assert_eq!(short.len(), 1, "{short:?}");
        assert_eq!(short[0].severity, Severity::Error);
        assert!(
            short[0]
                .fix
                .as_deref()
                .unwrap()
                .starts_with("ALTER SYSTEM SET max_replication_slots = 4;")
        );
        // Their slots exist and stream (a plan while apply runs): nothing more is needed.
        let running = [("m_a", true), ("m_b", true), ("m_c", true), ("other", true)];
        assert!(replication_checks(&capacity(4, 4, &running), &ours, false).is_empty());
        // Senders short though slots suffice.
        let senders = replication_checks(&capacity(10, 2, &[]), &ours, false);
        assert!(senders[0].message.contains("max_wal_senders = 3"), "{senders:?}");
        // Continuous verification: one more each, a warning.
        let proof = replication_checks(&capacity(4, 10, &[]), &ours, true);
        assert_eq!(proof[0].severity, Severity::Warning, "{proof:?}");
        assert!(proof[0].message.contains("max_replication_slots = 6"), "{proof:?}");
        // One database: its own preflight says it.
        assert!(replication_checks(&capacity(0, 0, &[]), &ours[..1], true).is_empty());
    }

    #[test]
    fn several_databases_loading_at_once_warn_when_their_sessions_do_not_fit() {
        let mut cap = capacity(10, 10, &[]);
        // 90 free: 10 databases x (8 jobs + 2) = 100 do not fit; 8 jobs -> 7 do.
        let short = connection_check(Side::Source, &cap, 10, 8).unwrap();
        assert_eq!(short.severity, Severity::Warning);
        assert!(short.fix.as_deref().unwrap().starts_with("load.jobs: 7 "), "{short:?}");
        assert!(connection_check(Side::Source, &cap, 10, 7).is_none());
        assert!(connection_check(Side::Target, &cap, 10, 8).is_none(), "one fewer each there");
        cap.client_backends = 98;
        let full = connection_check(Side::Target, &cap, 2, 1).unwrap();
        assert!(full.fix.as_deref().unwrap().starts_with("load.jobs: 1 "), "{full:?}");
        assert!(connection_check(Side::Source, &cap, 1, 100).is_none(), "one database: its own");
    }
}
