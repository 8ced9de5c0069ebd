//! The planner: a pure function from the migration plan, both catalogs, both servers' schema
//! objects and the state of earlier applies to the ordered execution plan. No I/O.
//!
//! For each source object in scope, in dependency order: missing on the target → create;
//! there and equal → unchanged; there and different → conflict (with a unified diff), except
//! that a target `public` schema left as `CREATE DATABASE` made it may have its owner, grants
//! and comment aligned. Nothing on the target is ever dropped or overwritten. Tables are
//! copied unless the target already holds their rows (copied by an earlier apply: unchanged;
//! otherwise: conflict, never overwritten). Then sequences, materialized views and statistics.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::catalog::Catalog;
use crate::check::Check;
use crate::execution_plan::{
    Action, Estimate, Fingerprint, PLAN_FORMAT, Phase, Plan, ServerIdentity, Step, StreamTable,
    VerifyTable, Work,
};
use crate::hash::hash_parts;
use crate::migration_plan::{KeylessTables, LoadedMigrationPlan, MissingRoles, Mode};
use crate::objects::{self, ObjectKey, ObjectKind, SchemaObject, Section};
use crate::scope::Scope;
use crate::sql::{display, ident, qualified, qualified_ident};
use crate::state::{State, StepStatus};

/// Everything the planner looks at.
pub struct Inputs<'a> {
    /// The migration plan.
    pub spec: &'a LoadedMigrationPlan,
    /// Source catalog (preflight's), with sequence values.
    pub source: &'a Catalog,
    /// Target catalog, with `tables_with_rows` filled for the tables in scope.
    pub target: &'a Catalog,
    /// Every schema object of the source.
    pub source_objects: &'a [SchemaObject],
    /// Every schema object of the target.
    pub target_objects: &'a [SchemaObject],
    /// Preflight findings.
    pub checks: Vec<Check>,
    /// The state of earlier applies, if any.
    pub state: Option<&'a State>,
    /// Redacted source URL.
    pub source_endpoint: String,
    /// Redacted target URL.
    pub target_endpoint: String,
}

/// Whether a source object is in the migration's scope.
pub fn in_scope(o: &SchemaObject, scope: &Scope) -> bool {
    match (&o.table, o.key.kind) {
        (_, ObjectKind::Extension) => true,
        (_, ObjectKind::Schema) => scope.schema_in_scope(schema_name(&o.key)),
        (Some((s, t)), _) => scope.table_in_scope(s, t),
        (None, ObjectKind::Table | ObjectKind::View | ObjectKind::MaterializedView)
        | (None, ObjectKind::Sequence) => scope.table_in_scope(&o.key.schema, &o.key.name),
        // Objects of the database outside schemas (casts, servers, publications, event
        // triggers...): always (one that needs something out of scope is a conflict, named).
        (None, _) if o.key.is_dumped() && o.key.schema.is_empty() => true,
        (None, _) => scope.schema_in_scope(&o.key.schema),
    }
}

fn schema_name(k: &ObjectKey) -> &str {
    if k.schema.is_empty() { &k.name } else { &k.schema }
}

fn kind_name(kind: ObjectKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn step_id(phase: Phase, what: &str, schema: &str, name: &str) -> String {
    if schema.is_empty() {
        format!("{}:{what}:{name}", phase.name())
    } else {
        format!("{}:{what}:{schema}.{name}", phase.name())
    }
}

fn sql_text(statements: &[String]) -> String {
    statements
        .iter()
        .map(|s| {
            let s = s.trim_end();
            if s.ends_with(';') { s.to_string() } else { format!("{s};") }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The role names objects get on the target: `roles.map`, else the same name when it exists
/// on the target (or will be created), else none (`roles.missing: skip`).
pub fn role_mapper<'a>(
    spec: &'a LoadedMigrationPlan,
    target: &'a Catalog,
) -> impl Fn(&str) -> Option<String> + 'a {
    move |role: &str| {
        if let Some(to) = spec.spec.roles.map.get(role) {
            return Some(to.clone());
        }
        if role == "PUBLIC"
            || target.roles.iter().any(|r| r.name == role)
            || spec.spec.roles.missing == MissingRoles::Create
            || role.starts_with("pg_")
        {
            return Some(role.to_string());
        }
        None
    }
}

fn roles_used(objects: &[&SchemaObject]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for o in objects {
        if let Some(owner) = &o.owner {
            out.insert(owner.clone());
        }
        for r in o.roles() {
            out.insert(r);
        }
    }
    out
}

/// Computes the execution plan.
pub fn plan(inputs: Inputs<'_>) -> Plan {
    let spec = &inputs.spec.spec;
    let scope = Scope::new(&spec.objects);
    let roles = role_mapper(inputs.spec, inputs.target);
    let identity = |r: &str| Some(r.to_string());

    let online = spec.mode == Mode::Online;
    let mut source_in_scope: Vec<SchemaObject> =
        inputs.source_objects.iter().filter(|o| in_scope(o, &scope)).cloned().collect();
    for o in &mut source_in_scope {
        o.key = with_mapped_user(&o.key, &roles);
    }
    let made_full = keyless_made_full(&inputs, &mut source_in_scope, online);
    // Online mode: copies count only while the slot that streams what came after them exists
    // (a slot dropped since, by `abort` or by hand, means every table is copied again).
    let slot = crate::naming::slot_name(&spec.name.value);
    let slot_exists = inputs.source.replication_slots.iter().any(|s| s.name == slot);
    let without_slot;
    // After a cutover, the migration is over: the slot is gone on purpose.
    // (Verified but not cleaned up counts: the target is the new primary either way.)
    let cut_over = inputs.state.and_then(|s| s.cutover.as_ref()).is_some_and(|c| c.verified());
    let online = online && !cut_over;
    let state = if online && !slot_exists && inputs.state.is_some() {
        without_slot = inputs.state.map(|s| s.with_copies_interrupted());
        without_slot.as_ref()
    } else {
        inputs.state
    };
    let target_by_key: HashMap<&ObjectKey, &SchemaObject> =
        inputs.target_objects.iter().map(|o| (&o.key, o)).collect();
    let source_keys: BTreeSet<&ObjectKey> = source_in_scope.iter().map(|o| &o.key).collect();

    let mut steps: Vec<Step> = vec![];

    let (role_steps, (memberships_granted, roles_carried), role_findings) =
        role_steps(&inputs, &source_in_scope);
    steps.extend(role_steps);
    let created: BTreeSet<String> = steps
        .iter()
        .filter(|s| s.id.starts_with("schema:role:"))
        .map(|s| s.id["schema:role:".len()..].to_string())
        .collect();

    // Schema objects, in dependency order.
    let order = match objects::creation_order(&source_in_scope) {
        Ok(order) => order,
        Err(e) => {
            // A dependency cycle cannot be created in any order: report it as a conflict.
            steps.push(conflict_step("cycle", &e.to_string(), None));
            (0..source_in_scope.len()).collect()
        }
    };
    // A pre-data object that needs a post-data one (a view grouping by a primary key) moves
    // after it: the effective sections say where each object really goes.
    let sections = objects::effective_sections(&source_in_scope);
    // Materialized views are refreshed in the same order: one that reads another comes after it.
    let matviews = matviews_in(&order, &source_in_scope);
    let mut post_objects = vec![];
    for i in order {
        let o = &source_in_scope[i];
        let phase = match sections[i] {
            Section::PreData => Phase::Schema,
            Section::PostData => Phase::PostLoad,
        };
        let step =
            object_step(o, phase, &target_by_key, &source_keys, &roles, &identity, inputs.target);
        if phase == Phase::PostLoad {
            post_objects.push((step, o));
        } else {
            steps.push(step);
        }
    }
    let post_objects = schedule_post_load(post_objects, inputs.source, &roles);

    let (table_steps, copied, streamed) =
        table_data_steps(&inputs, &source_in_scope, state, online);
    steps.extend(table_steps);
    if let Some(step) = large_objects_step(inputs.source, inputs.target, state, &roles) {
        steps.push(step);
    }
    if online {
        let first_copy = steps.iter().position(|s| s.phase == Phase::Load).unwrap_or(steps.len());
        let prefix = online_load_steps(&spec.name.value, inputs.source, &streamed, &made_full);
        steps.splice(first_copy..first_copy, prefix);
    }

    // Event triggers last of all, so that none fires for the migration's own DDL (the
    // refreshes and statistics below included).
    let (event_triggers, post_objects): (Vec<Step>, Vec<Step>) =
        post_objects.into_iter().partition(|s| s.id.starts_with("post_load:event_trigger:"));
    let built: Vec<String> =
        post_objects.iter().filter(|s| s.action.is_work()).map(|s| s.id.clone()).collect();
    steps.extend(post_objects);
    steps.extend(sequence_steps(&scope, inputs.source, inputs.target, &source_keys));
    steps.extend(matview_steps(&matviews, inputs.source, inputs.target, &steps, &built));
    steps.extend(analyze_step(&copied));
    let (database, database_findings) = database_step(&inputs, &steps, &created);
    steps.extend(database);
    steps.extend(event_triggers);

    let all_tables = verify_tables(inputs.source, &streamed);
    if online {
        let mut cutover = cutover_steps(spec, inputs.source, &streamed, &matviews, &scope);
        // The window opens before verification (a failure until then lifts the fence and
        // closes it again); a rollback lifts the old source's fence once verified.
        let verify = cutover.iter().position(|s| matches!(s.work, Work::Verify { .. }));
        if let (Some(at), Some(open)) = (verify, window_open_step(&inputs, &streamed)) {
            cutover.insert(at, open);
        }
        let before_cleanup = cutover.len() - 1;
        cutover.splice(before_cleanup..before_cleanup, lift_target_fence_step(&inputs));
        steps.extend(sync_steps(&spec.name.value, streamed));
        steps.extend(continuous_verify_step(spec, inputs.source, &all_tables));
        steps.extend(cutover);
    }
    if spec.rollback_of.is_some() {
        streaming_only(&mut steps);
    }
    if cut_over {
        settle_after_cutover(&mut steps, &inputs);
    }
    serialize_multi_table_steps(&mut steps, inputs.source);
    let fingerprint = fingerprint(&inputs, &source_in_scope, &scope);
    let summary = Plan::summarize(&steps);
    let load_estimate = estimate_load(&steps, spec.load.jobs.map(|j| j as usize));
    let steps_hash = steps_hash(&steps);
    Plan {
        format: PLAN_FORMAT,
        migration: spec.name.value.clone(),
        mode: spec.mode.to_string(),
        spec_path: inputs.spec.path.display().to_string(),
        spec_text: inputs.spec.text.clone(),
        fingerprint,
        source: identity_of(inputs.source, &inputs.source_endpoint),
        target: identity_of(inputs.target, &inputs.target_endpoint),
        checks: with_findings(inputs.checks, role_findings.into_iter().chain(database_findings)),
        steps,
        summary,
        load_estimate,
        tables: all_tables,
        cutover_estimate: None,
        steps_hash,
        memberships_granted,
        roles_carried,
    }
}

/// Online mode with `sync.tables_without_key: replica_identity_full`: the keyless tables, planned
/// as they will be once the load step sets REPLICA IDENTITY FULL on the source (so the target's
/// copy of each says the same, and a later plan finds both sides equal).
fn keyless_made_full(
    inputs: &Inputs<'_>,
    source_in_scope: &mut [SchemaObject],
    online: bool,
) -> Vec<String> {
    let spec = &inputs.spec.spec;
    let mut made_full = vec![];
    if online && spec.sync.tables_without_key == KeylessTables::ReplicaIdentityFull {
        for o in source_in_scope.iter_mut().filter(|o| o.key.kind == ObjectKind::Table) {
            let keyless = inputs.source.relations.iter().any(|r| {
                r.schema == o.key.schema
                    && r.name == o.key.name
                    && r.kind == crate::catalog::RelKind::Table
                    && !r.has_usable_replica_identity()
            });
            if keyless && with_replica_identity_full(o) {
                made_full.push(qualified_ident(&o.key.schema, &o.key.name));
            }
        }
    }
    made_full
}

/// Roles the migration creates, as on the source, then their memberships (`globals::roles`).
type Granted = (Vec<(String, String)>, Vec<String>);

/// The role steps, with (memberships granted, roles carried) and the findings.
fn role_steps(
    inputs: &Inputs<'_>,
    source_in_scope: &[SchemaObject],
) -> (Vec<Step>, Granted, Vec<crate::check::Check>) {
    let used = roles_used(&source_in_scope.iter().collect::<Vec<_>>());
    let carried =
        crate::globals::roles(&inputs.spec.spec.roles, &used, inputs.source, inputs.target);
    let mut steps = vec![];
    for role in carried.create {
        steps.push(Step {
            id: step_id(Phase::Schema, "role", "", &role.name),
            phase: Phase::Schema,
            action: Action::Create,
            object: format!("role {}", display(&role.name)),
            sql: role.sql,
            estimate: None,
            note: Some(if role.reads_verifier {
                format!("{}; its password verifier is read from the source as it runs", role.why)
            } else {
                role.why
            }),
            diff: None,
            work: if role.reads_verifier {
                Work::CreateRole { role: role.name }
            } else {
                Work::TargetSql
            },
            after: vec![],
            table: None,
        });
    }
    let database = display(&inputs.target.server.database);
    // A role's settings in this database, and its memberships: SQL on the target.
    let as_on_source = |what: &str, role: &str, object: String, statements: Vec<String>| Step {
        id: step_id(Phase::Schema, what, "", role),
        phase: Phase::Schema,
        action: Action::Create,
        object,
        sql: statements.join("\n"),
        estimate: None,
        note: Some("as on the source".into()),
        diff: None,
        work: Work::TargetSql,
        after: vec![],
        table: None,
    };
    for (role, statements) in carried.settings_here {
        let object = format!("settings of role {} in database {database}", display(&role));
        steps.push(as_on_source("role_settings", &role, object, statements));
    }
    for (member, grants) in carried.grants {
        let object = format!("memberships of role {}", display(&member));
        steps.push(as_on_source("role_membership", &member, object, grants));
    }
    (steps, (carried.granted, carried.carried), carried.findings)
}

/// Preflight's findings, with the plan's about the roles and the database it carries (its roles
/// come from every object in scope: policies, grantors, pg_dump's DDL name roles too).
fn with_findings(
    mut checks: Vec<crate::check::Check>,
    more: impl IntoIterator<Item = crate::check::Check>,
) -> Vec<crate::check::Check> {
    for f in more {
        if !checks.contains(&f) {
            checks.push(f);
        }
    }
    checks.sort_by_key(|c| c.severity);
    checks
}

/// The database's own properties (`globals::database`), after everything else of the
/// post-load phase: a setting such as `statement_timeout` then applies to nothing pgtransit
/// builds.
fn database_step(
    inputs: &Inputs<'_>,
    steps: &[Step],
    created: &BTreeSet<String>,
) -> (Option<Step>, Vec<crate::check::Check>) {
    let mapper = role_mapper(inputs.spec, inputs.target);
    let roles = |r: &str| mapper(r).or_else(|| created.contains(r).then(|| r.to_string()));
    let (sql, findings) = crate::globals::database(inputs.source, inputs.target, &roles);
    if sql.is_empty() {
        return (None, findings);
    }
    let database = &inputs.target.server.database;
    let step = Step {
        id: step_id(Phase::PostLoad, "database", "", database),
        phase: Phase::PostLoad,
        action: Action::Update,
        object: format!("database {}", display(database)),
        sql: sql.join("\n"),
        estimate: None,
        note: Some("the source database's properties, last".into()),
        diff: None,
        work: Work::TargetSql,
        after: steps
            .iter()
            .filter(|s| s.phase == Phase::PostLoad && s.action.is_work())
            .map(|s| s.id.clone())
            .collect(),
        table: None,
    };
    (Some(step), findings)
}

/// Table data, largest first: the copy steps, the tables copied (for ANALYZE), and every table
/// streamed online.
fn table_data_steps(
    inputs: &Inputs<'_>,
    source_in_scope: &[SchemaObject],
    state: Option<&State>,
    online: bool,
) -> (Vec<Step>, Vec<String>, Vec<StreamTable>) {
    let spec = &inputs.spec.spec;
    let mut steps = vec![];
    let mut tables: Vec<&SchemaObject> = source_in_scope
        .iter()
        .filter(|o| o.key.kind == ObjectKind::Table)
        .filter(|o| o.table_info.as_ref().is_some_and(|t| !t.partitioned))
        .collect();
    tables.sort_by(|a, b| {
        let size = |o: &SchemaObject| o.table_info.as_ref().map(|t| t.bytes).unwrap_or(0);
        size(b).cmp(&size(a)).then_with(|| a.key.cmp(&b.key))
    });
    let mut copied = vec![];
    let mut streamed = vec![];
    let split_above = split_threshold(spec);
    for t in tables {
        let table_steps = match parts_of(t, inputs.source, split_above) {
            Some(parts) => split_copy_steps(t, &parts, inputs.source, inputs.target, state),
            None => vec![copy_step(t, inputs.source, inputs.target, state, online)],
        };
        if table_steps.iter().any(|s| s.action == Action::Copy) {
            copied.push(qualified_ident(&t.key.schema, &t.key.name));
        }
        streamed.push(StreamTable {
            schema: t.key.schema.clone(),
            table: t.key.name.clone(),
            copy_step: table_steps[0].id.clone(),
            parts: table_steps.iter().skip(1).map(|s| s.id.clone()).collect(),
        });
        steps.extend(table_steps);
    }
    (steps, copied, streamed)
}

/// Fresh planner statistics for the copied tables, when any is copied.
fn analyze_step(copied: &[String]) -> Option<Step> {
    if copied.is_empty() {
        return None;
    }
    Some(Step {
        id: "post_load:analyze".into(),
        phase: Phase::PostLoad,
        action: Action::Run,
        object: format!("statistics of {} copied tables", copied.len()),
        sql: format!("ANALYZE {};", copied.join(", ")),
        estimate: None,
        note: Some("fresh planner statistics for the copied data".into()),
        diff: None,
        work: Work::TargetSql,
        after: vec![],
        table: None,
    })
}

/// After a cutover the applications write to the target: nothing is copied, set or created on it
/// again, and a clean-up that was cut off is finished.
fn settle_after_cutover(steps: &mut Vec<Step>, inputs: &Inputs<'_>) {
    let spec = &inputs.spec.spec;
    // The applications write to the target now: nothing is copied, set or created on it
    // again (not even a sequence the target has moved on).
    for step in steps.iter_mut().filter(|s| s.action.is_work()) {
        step.action = Action::Unchanged;
        step.work = Work::None;
        step.sql = String::new();
        step.note = Some("the migration was cut over: the target is the primary".into());
    }
    // Verified, but its clean-up was cut off (a crash, a lost connection): finished now.
    let cleaning_up = inputs
        .state
        .and_then(|s| s.cutover.as_ref())
        .is_some_and(|c| c.status == crate::state::CutoverStatus::CleaningUp);
    if cleaning_up {
        // (A rollback's lift of the old source's fence comes between verification and
        // clean-up: done again, it is idempotent.)
        steps.extend(lift_target_fence_step(inputs));
        steps.push(cleanup_step(
            &spec.name.value,
            "the cutover was verified and its clean-up interrupted: finished now",
        ));
    }
}

/// A step of the cutover phase (`cutover:<id>`).
fn cutover_step(id: &str, object: String, sql: String, note: &str, work: Work) -> Step {
    Step {
        id: format!("cutover:{id}"),
        phase: Phase::Cutover,
        action: Action::Run,
        object,
        sql,
        estimate: None,
        note: Some(note.into()),
        diff: None,
        work,
        after: vec![],
        table: None,
    }
}

/// A rollback (the cutover of a rollback window's own migration), once verified: the old
/// source's read-only default lifted.
fn lift_target_fence_step(inputs: &Inputs<'_>) -> Option<Step> {
    inputs.spec.spec.rollback_of.as_ref()?;
    let db = &inputs.target.server.database;
    Some(cutover_step(
        "lift_target_fence",
        format!("writes on the target database {}", crate::sql::display(db)),
        format!("{};  -- target", FenceSql::lift(db)),
        "on the old source, once verified: the fence its own cutover left is lifted, and it \
             is the primary again",
        Work::LiftTargetFence { database: db.clone() },
    ))
}

/// With `cutover.rollback_window`, before verification: the window opened on the target.
fn window_open_step(inputs: &Inputs<'_>, tables: &[StreamTable]) -> Option<Step> {
    let loaded = inputs.spec;
    let spec = &loaded.spec;
    if !spec.cutover.rollback_window || spec.rollback_of.is_some() {
        return None;
    }
    let reverse = crate::rollback::reverse_name(&spec.name.value);
    let (slot, publication) =
        (crate::naming::slot_name(&reverse), crate::naming::publication_name(&reverse));
    let names: Vec<String> = tables
        .iter()
        .filter(|t| {
            !inputs
                .source
                .relations
                .iter()
                .any(|r| r.schema == t.schema && r.name == t.table && r.unlogged)
        })
        .map(|t| qualified_ident(&t.schema, &t.table))
        .collect();
    let plan_path = crate::rollback::reverse_plan_path(loaded).to_string_lossy().to_string();
    Some(cutover_step(
        "rollback_window",
        "the rollback window".into(),
        format!(
            "{};  -- target\n{};  -- target: its start is the cutover point\n\
             -- and the window's migration plan, written to {plan_path}",
            window_publication_sql(&publication, &names, false),
            window_slot_sql(&slot),
        ),
        "on the target, drained and before anything writes there (a slot of an earlier attempt \
         is dropped first; a failure until verification passes closes the window again): the \
         target's changes from here on can stream back to the old source (`pgtransit apply` \
         goes on doing so after the cutover; `pgtransit rollback` goes back, `pgtransit \
         finish` ends it)",
        Work::OpenWindow {
            slot,
            publication,
            tables: names,
            plan_path,
            plan_text: crate::rollback::reverse_plan_text(loaded),
        },
    ))
}

/// The rollback window's publication on the target (`exists`: its tables set again).
pub fn window_publication_sql(publication: &str, tables: &[String], exists: bool) -> String {
    match (exists, tables.is_empty()) {
        (false, true) => format!("CREATE PUBLICATION {}", ident(publication)),
        (false, false) => {
            format!("CREATE PUBLICATION {} FOR TABLE {}", ident(publication), tables.join(", "))
        }
        (true, true) => String::new(),
        (true, false) => {
            format!("ALTER PUBLICATION {} SET TABLE {}", ident(publication), tables.join(", "))
        }
    }
}

/// The rollback window's slot on the target, starting where the target is now.
pub fn window_slot_sql(slot: &str) -> String {
    format!("SELECT pg_create_logical_replication_slot({}, 'pgoutput')", crate::sql::literal(slot))
}

/// A rollback window's migration streams only: every row is on its target already (it was the
/// source, fenced, when the window's slot began), and the slot, created at the cutover, must
/// be there. It changes nothing else on the old source: a schema that differs (DDL on the new
/// primary since the cutover, which no stream carries) is a conflict to resolve by hand, and
/// the old source's database properties stay as they are. (Sequences only move forward.)
fn streaming_only(steps: &mut [Step]) {
    for step in steps.iter_mut() {
        if step.id.starts_with("post_load:database") && step.action.is_work() {
            step.action = Action::Unchanged;
            step.work = Work::None;
            step.sql = String::new();
            step.note = Some("the old source's database is left as it is".into());
        }
        let keeps = matches!(step.work, Work::SetSequence { .. })
            || step.id.contains(":refresh")
            || step.id == "post_load:analyze";
        if matches!(step.phase, Phase::Schema | Phase::PostLoad) && step.action.is_work() && !keeps
        {
            step.action = Action::Conflict;
            step.work = Work::None;
            step.note = Some(format!(
                "differs between the new primary and the old source since the cutover (DDL is \
                 not streamed): make the same change on the old source by hand, or close the \
                 window (`pgtransit finish`). Planned: {}",
                step.sql.lines().next().unwrap_or_default()
            ));
            step.sql = String::new();
        }
        // (Its tables hold rows pgtransit did not copy into them: no conflict, they are the
        // rows.)
        let copy = step.action == Action::Copy
            || step.id == "post_load:analyze"
            || (step.phase == Phase::Load && step.id.starts_with("load:table:"))
            || step.id.starts_with("load:large_objects")
            || matches!(step.work, Work::EmptyForParts { .. } | Work::CopyTable { .. });
        if copy {
            step.action = Action::Unchanged;
            step.work = Work::None;
            step.sql = String::new();
            step.note = Some(
                "every row is there: the window's slot streams what changed since the cutover"
                    .into(),
            );
        }
        if step.id == "load:slot" && matches!(step.work, Work::CreateSlot { .. }) {
            step.action = Action::Conflict;
            step.work = Work::None;
            step.sql = String::new();
            step.note = Some(
                "the rollback window's slot is gone (dropped by hand?): the old source cannot be \
                 brought up to date from the cutover point. Close the window with `pgtransit \
                 finish`"
                    .into(),
            );
        }
    }
}

/// SHA-256 of the steps' JSON.
pub fn steps_hash(steps: &[Step]) -> String {
    hash_parts([serde_json::to_string(steps).expect("steps serialise").as_str()])
}

fn estimate_load(
    steps: &[Step],
    jobs: Option<usize>,
) -> Option<crate::execution_plan::LoadEstimate> {
    let copies: Vec<&Step> = steps.iter().filter(|s| s.action == Action::Copy).collect();
    if copies.is_empty() {
        return None;
    }
    let jobs = jobs.unwrap_or(crate::execution_plan::DEFAULT_JOBS).clamp(1, copies.len());
    let rows = copies.iter().filter_map(|s| s.estimate).map(|e| e.rows).sum();
    let bytes: i64 = copies.iter().filter_map(|s| s.estimate).map(|e| e.bytes).sum();
    // The largest table bounds the time from below when it is bigger than its share.
    let largest = copies.iter().filter_map(|s| s.estimate).map(|e| e.bytes).max().unwrap_or(0);
    let rate = crate::execution_plan::ASSUMED_BYTES_PER_SECOND;
    let seconds = (bytes as f64 / (rate * jobs as f64)).max(largest as f64 / rate);
    Some(crate::execution_plan::LoadEstimate { tables: copies.len(), rows, bytes, jobs, seconds })
}

/// Orders the post-load object steps for parallel execution: each step waits for the steps of
/// the objects it depends on; a primary key or unique constraint becomes a `CREATE UNIQUE INDEX`
/// (built in parallel with the other indexes) and a quick `ADD CONSTRAINT ... USING INDEX`.
/// [`serialize_multi_table_steps`] then orders what may not run in parallel.
fn schedule_post_load(
    post: Vec<(Step, &SchemaObject)>,
    source: &Catalog,
    roles: &dyn Fn(&str) -> Option<String>,
) -> Vec<Step> {
    let step_of: HashMap<&ObjectKey, String> = post
        .iter()
        .filter(|(s, _)| s.action.is_work())
        .map(|(s, o)| (&o.key, s.id.clone()))
        .collect();
    let mut out = vec![];
    for (mut step, o) in post {
        if !step.action.is_work() {
            out.push(step);
            continue;
        }
        step.after = o.depends_on.iter().filter_map(|k| step_of.get(k).cloned()).collect();
        step.after.sort();
        step.after.dedup();
        let backing = o.table.as_ref().and_then(|(schema, table)| {
            let name = o.key.name.strip_prefix(&format!("{table}."))?;
            source
                .index_backed_constraints
                .iter()
                .find(|c| &c.schema == schema && &c.table == table && c.name == name)
        });
        match backing {
            Some(c) if step.action == Action::Create && o.ddl.len() == 1 => {
                let index_id = step.id.replacen(":constraint:", ":unique_index:", 1);
                out.push(Step {
                    id: index_id.clone(),
                    object: format!("unique index for {}", step.object),
                    sql: format!("{};", c.index_def),
                    note: Some(
                        "built in parallel with the other indexes, then attached as the \
                         constraint"
                            .into(),
                    ),
                    estimate: None,
                    ..step.clone()
                });
                let mut statements = vec![format!(
                    "ALTER TABLE ONLY {} ADD CONSTRAINT {} {} USING INDEX {}",
                    qualified_ident(&c.schema, &c.table),
                    ident(&c.name),
                    c.kind,
                    ident(&c.name)
                )];
                statements.extend(o.create_statements(roles).into_iter().skip(o.ddl.len()));
                step.sql = sql_text(&statements);
                step.note = Some("attached to the index built above: a catalog change only".into());
                step.after = vec![index_id];
                out.push(step);
            }
            _ => out.push(step),
        }
    }
    out
}

/// Whether a post-load step builds an index or constraint of one table (locks that table only:
/// such steps run in parallel, alongside the load).
pub fn is_table_build(s: &Step) -> bool {
    ["post_load:index:", "post_load:constraint:", "post_load:unique_index:"]
        .iter()
        .any(|p| s.id.starts_with(p))
}

/// Post-load steps that lock one table each (index builds, constraints) run in parallel; every
/// other post-load step (foreign keys, triggers, statistics, refreshes, which may lock several
/// tables) runs after all of them, one at a time, so no two multi-table steps can deadlock.
fn serialize_multi_table_steps(steps: &mut [Step], source: &Catalog) {
    let parallel = |s: &Step| is_table_build(s);
    let builds: Vec<String> = steps
        .iter()
        .filter(|s| s.phase == Phase::PostLoad && s.action.is_work() && parallel(s))
        .map(|s| s.id.clone())
        .collect();
    // A table's index and constraint builds start as soon as its copy is done (they run with
    // the load, sharing its workers), not after every table's copy.
    let mut copies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in steps.iter().filter(|s| s.phase == Phase::Load && s.action.is_work()) {
        if let Work::CopyTable { schema, table, .. } | Work::EmptyForParts { schema, table, .. } =
            &s.work
        {
            copies.entry(qualified(schema, table)).or_default().push(s.id.clone());
        }
    }
    // A partitioned table's builds (an index, a primary key) reach every partition below it:
    // they wait for all of their copies too, or a build and a partition's copy (TRUNCATE, COPY
    // FREEZE) would take the same locks in opposite orders.
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &source.relations {
        if let Some((ps, pn)) = &r.partition_of {
            children.entry(qualified(ps, pn)).or_default().push(qualified(&r.schema, &r.name));
        }
    }
    for s in steps.iter_mut().filter(|s| s.phase == Phase::PostLoad && parallel(s)) {
        let Some(table) = s.table.clone() else { continue };
        let mut below = vec![table];
        while let Some(t) = below.pop() {
            s.after.extend(copies.get(&t).into_iter().flatten().cloned());
            below.extend(children.get(&t).into_iter().flatten().cloned());
        }
        s.after.sort();
        s.after.dedup();
    }
    let mut previous: Option<String> = None;
    for s in steps.iter_mut() {
        if s.phase != Phase::PostLoad || !s.action.is_work() || parallel(s) {
            continue;
        }
        s.after.extend(builds.iter().cloned());
        s.after.extend(previous.replace(s.id.clone()));
        s.after.sort();
        s.after.dedup();
    }
}

fn identity_of(cat: &Catalog, endpoint: &str) -> ServerIdentity {
    ServerIdentity {
        endpoint: endpoint.to_string(),
        version_num: cat.server.version_num,
        system_identifier: cat.server.system_identifier.clone(),
        database: cat.server.database.clone(),
    }
}

fn conflict_step(what: &str, message: &str, diff: Option<String>) -> Step {
    Step {
        id: format!("schema:conflict:{what}"),
        phase: Phase::Schema,
        action: Action::Conflict,
        object: what.to_string(),
        sql: String::new(),
        estimate: None,
        note: Some(message.to_string()),
        diff,
        work: Work::None,
        after: vec![],
        table: None,
    }
}

fn note_for(o: &SchemaObject) -> Option<String> {
    Some(
        match o.key.kind {
            ObjectKind::ForeignKey => {
                "added after the data, so tables load in any order; checked as it is added"
            }
            ObjectKind::Trigger => "created after the data, so it does not fire for copied rows",
            ObjectKind::Index => "built after the data (faster than maintaining it row by row)",
            ObjectKind::Constraint => "added after the data with the index that backs it",
            ObjectKind::MaterializedView => "created empty; refreshed after the data",
            _ => return None,
        }
        .to_string(),
    )
}

#[allow(clippy::too_many_arguments)]
fn object_step(
    o: &SchemaObject,
    phase: Phase,
    target_by_key: &HashMap<&ObjectKey, &SchemaObject>,
    source_keys: &BTreeSet<&ObjectKey>,
    roles: &dyn Fn(&str) -> Option<String>,
    identity: &dyn Fn(&str) -> Option<String>,
    target: &Catalog,
) -> Step {
    let kind = kind_name(o.key.kind);
    let id = step_id(phase, &kind, &o.key.schema, &o.key.name);
    let object = o.key.to_string();
    let base = Step {
        id,
        phase,
        action: Action::Unchanged,
        object,
        sql: String::new(),
        estimate: o
            .table_info
            .as_ref()
            .map(|t| Estimate { rows: t.estimated_rows, bytes: t.bytes }),
        note: None,
        diff: None,
        work: Work::None,
        after: vec![],
        table: o.table.as_ref().map(|(s, t)| qualified(s, t)),
    };
    match target_by_key.get(&o.key) {
        Some(existing) => {
            let want = o.definition(roles);
            let have = existing.definition(identity);
            if want == have {
                return base;
            }
            let pristine_public = o.key.kind == ObjectKind::Schema
                && schema_name(&o.key) == "public"
                && !target.relations.iter().any(|r| r.schema == "public");
            if pristine_public && let Some(stmts) = o.align_metadata(existing, roles) {
                return Step {
                    action: Action::Update,
                    sql: sql_text(&stmts),
                    note: Some(
                        "the target's public schema is as CREATE DATABASE made it: its owner, \
                         grants and comment are aligned with the source's"
                            .into(),
                    ),
                    work: Work::TargetSql,
                    ..base
                };
            }
            let diff = similar::TextDiff::from_lines(&have, &want)
                .unified_diff()
                .context_radius(3)
                .header("target (existing)", "source (wanted)")
                .to_string();
            Step {
                action: Action::Conflict,
                note: Some(
                    "exists on the target with another definition: pgtransit never alters or \
                     drops it. Make it match the source (or drop it) on the target, or exclude \
                     it from objects:, then plan again"
                        .into(),
                ),
                diff: Some(diff),
                ..base
            }
        }
        None => {
            let missing: Vec<String> = o
                .depends_on
                .iter()
                .filter(|d| !source_keys.contains(d) && !target_by_key.contains_key(d))
                .map(|d| d.to_string())
                .collect();
            if !missing.is_empty() {
                return Step {
                    action: Action::Conflict,
                    note: Some(format!(
                        "depends on {}, which is neither in scope nor on the target: widen \
                         objects: or create it on the target",
                        missing.join(", ")
                    )),
                    ..base
                };
            }
            Step {
                action: Action::Create,
                sql: sql_text(&for_target(o.create_statements(roles), target)),
                note: note_for(o),
                work: Work::TargetSql,
                ..base
            }
        }
    }
}

fn copy_step(
    t: &SchemaObject,
    source: &Catalog,
    target: &Catalog,
    state: Option<&State>,
    online: bool,
) -> Step {
    let info = t.table_info.as_ref().expect("tables have table info");
    let (schema, table) = (&t.key.schema, &t.key.name);
    let id = step_id(Phase::Load, "table", schema, table);
    let binary = copy_binary(source, target, schema, table);
    let base = Step {
        id: id.clone(),
        phase: Phase::Load,
        action: Action::Copy,
        object: format!("table {}", qualified(schema, table)),
        sql: CopySql::new(schema, table, &info.columns_for_copy, binary, None).display(),
        estimate: Some(Estimate { rows: info.estimated_rows, bytes: info.bytes }),
        note: Some(if binary {
            "binary COPY (same major version, built-in types only); FREEZE: rows are written \
             frozen, so no vacuum pass rewrites them later"
                .into()
        } else {
            "text COPY (binary is used only between equal major versions with built-in types); \
             FREEZE: rows are written frozen"
                .into()
        }),
        diff: None,
        work: Work::CopyTable {
            schema: schema.clone(),
            table: table.clone(),
            columns: info.columns_for_copy.clone(),
            binary,
            part: None,
        },
        after: vec![],
        table: None,
    };
    let name_q = qualified(schema, table);
    if target.tables_unreadable.contains(&name_q) {
        return Step {
            action: Action::Conflict,
            note: Some(
                "the target role may not read this existing target table, so pgtransit cannot \
                 tell whether it holds rows: grant it SELECT (and INSERT, TRUNCATE) on the \
                 table, or migrate as its owner"
                    .into(),
            ),
            work: Work::None,
            sql: String::new(),
            ..base
        };
    }
    let recorded = state.and_then(|s| s.steps.get(&id)).map(|s| s.status);
    if online && recorded == Some(StepStatus::Done) {
        // Copied, and streamed since (the target table may be empty now because the source's
        // is: the stream applied its deletes).
        return Step {
            action: Action::Unchanged,
            note: Some("copied by an earlier apply; its changes stream".into()),
            work: Work::None,
            sql: String::new(),
            ..base
        };
    }
    if target.tables_with_rows.contains(&name_q) {
        if matches!(recorded, Some(StepStatus::Running | StepStatus::Failed)) {
            // An earlier apply started this copy and was interrupted: the rows are its own
            // (committed, or not, before the state could say so). Empty and copy again.
            return Step {
                note: Some(
                    "an interrupted apply started this copy: the table is emptied and copied \
                     again"
                        .into(),
                ),
                ..base
            };
        }
        if recorded == Some(StepStatus::Done) {
            return Step {
                action: Action::Unchanged,
                note: Some("copied by an earlier apply".into()),
                work: Work::None,
                sql: String::new(),
                ..base
            };
        }
        return Step {
            action: Action::Conflict,
            note: Some(
                "the target table already holds rows that pgtransit did not copy: it never \
                 overwrites them. Empty it on the target (TRUNCATE) if they are not needed, or \
                 exclude the table from objects:"
                    .into(),
            ),
            work: Work::None,
            sql: String::new(),
            ..base
        };
    }
    if !online
        && !source.tables_with_rows.contains(&name_q)
        && !source.tables_unreadable.contains(&name_q)
    {
        // Empty on both sides: nothing to copy. (A saved plan is stale if it gains rows: the
        // source fingerprint covers which tables hold rows.)
        return Step {
            action: Action::Unchanged,
            note: Some("empty on the source".into()),
            work: Work::None,
            sql: String::new(),
            ..base
        };
    }
    base
}

/// The size above which tables are split (`load.split_larger_than`, default 10 GB).
pub fn split_threshold(spec: &crate::migration_plan::MigrationPlan) -> u64 {
    spec.load
        .split_larger_than
        .map(|b| b.0)
        .unwrap_or(crate::execution_plan::DEFAULT_SPLIT_LARGER_THAN)
        .max(1)
}

/// The `WHERE` conditions of a table's parts, when it is larger than `threshold`: ranges of its
/// integer key (from the key's min and max; the first and last parts are open-ended, so rows
/// outside the range at plan time are still copied), or else ranges of `ctid` blocks.
pub fn parts_of(t: &SchemaObject, source: &Catalog, threshold: u64) -> Option<Vec<String>> {
    let info = t.table_info.as_ref()?;
    if info.partitioned || info.bytes <= 0 || (info.bytes as u64) <= threshold {
        return None;
    }
    let n =
        (info.bytes as u64).div_ceil(threshold).clamp(2, crate::execution_plan::MAX_PARTS) as i64;
    let (schema, name) = (&t.key.schema, &t.key.name);
    let rel = source.relations.iter().find(|r| &r.schema == schema && &r.name == name)?;
    // In i128: a key range near the i64 limits must not overflow.
    let ranges = |lo: i64, hi: i64| -> Vec<i64> {
        let (lo, hi) = (lo as i128, hi as i128);
        let width = ((hi - lo) / n as i128).max(1);
        (1..n as i128).map(|k| (lo + k * width).min(i64::MAX as i128) as i64).collect()
    };
    let conditions = |col: &str, bounds: &[i64], fmt: &dyn Fn(i64) -> String| {
        let mut out = vec![];
        for k in 0..=bounds.len() {
            out.push(match (k.checked_sub(1).map(|i| bounds[i]), bounds.get(k)) {
                (None, Some(hi)) => format!("{col} < {}", fmt(*hi)),
                (Some(lo), Some(hi)) => format!("{col} >= {} AND {col} < {}", fmt(lo), fmt(*hi)),
                (Some(lo), None) => format!("{col} >= {}", fmt(lo)),
                (None, None) => "true".into(),
            });
        }
        out
    };
    match (&rel.integer_key, source.key_ranges.get(&qualified(schema, name))) {
        (Some(col), Some(&(lo, hi))) if hi > lo => {
            Some(conditions(&ident(col), &ranges(lo, hi.saturating_add(1)), &|v| v.to_string()))
        }
        _ if rel.pages > 1 => {
            let bounds = ranges(0, rel.pages);
            Some(conditions("ctid", &bounds, &|b| format!("'({b},0)'::tid")))
        }
        _ => None,
    }
}

/// The steps of a split table: one that empties it, then one per part (copied in parallel).
/// Resume: parts recorded done stay done; if any part was interrupted, the table is emptied
/// and every part copied again (an interrupted part may have committed unrecorded rows).
fn split_copy_steps(
    t: &SchemaObject,
    parts: &[String],
    source: &Catalog,
    target: &Catalog,
    state: Option<&State>,
) -> Vec<Step> {
    let whole = copy_step(t, source, target, None, false);
    let info = t.table_info.as_ref().expect("tables have table info");
    let (schema, table) = (&t.key.schema, &t.key.name);
    let binary = matches!(whole.work, Work::CopyTable { binary: true, .. });
    let n = parts.len();
    let ids: Vec<String> = (1..=n).map(|k| format!("{}:part-{k}-of-{n}", whole.id)).collect();
    let empty_id = format!("{}:empty", whole.id);
    let recorded = |id: &str| state.is_some_and(|s| s.steps.contains_key(id));
    let complete =
        split_table_complete(&empty_id, &ids, &|id| state.is_some_and(|s| s.is_done(id)));
    let anything_recorded = recorded(&empty_id) || ids.iter().any(|id| recorded(id));
    let name_q = qualified(schema, table);
    if !anything_recorded && whole.action != Action::Copy {
        // Nothing of ours is there: as for a whole table (conflict if the target has rows,
        // nothing to do if both sides are empty).
        return vec![whole];
    }
    let interrupted = anything_recorded && !complete;
    let redo = !complete;
    let mut steps = vec![Step {
        id: empty_id.clone(),
        phase: Phase::Load,
        action: if redo { Action::Run } else { Action::Unchanged },
        object: format!("table {name_q} (split into {n} parts)"),
        sql: if redo { format!("{};", empty_for_parts_sql(schema, table)) } else { String::new() },
        estimate: whole.estimate,
        note: Some(if interrupted {
            "a part was interrupted: the table is emptied and every part copied again".into()
        } else {
            "emptied once; its parts are copied in parallel under the same snapshot (no FREEZE: \
             the parts share the table)"
                .into()
        }),
        diff: None,
        work: if redo {
            Work::EmptyForParts { schema: schema.clone(), table: table.clone(), parts: ids.clone() }
        } else {
            Work::None
        },
        after: vec![],
        table: None,
    }];
    let per_part =
        whole.estimate.map(|e| Estimate { rows: e.rows / n as i64, bytes: e.bytes / n as i64 });
    for (k, (id, condition)) in ids.iter().zip(parts).enumerate() {
        let done = !redo;
        steps.push(Step {
            id: id.clone(),
            phase: Phase::Load,
            action: if done { Action::Unchanged } else { Action::Copy },
            object: format!("table {name_q} part {} of {n}", k + 1),
            sql: if done {
                String::new()
            } else {
                CopySql::new(schema, table, &info.columns_for_copy, binary, Some(condition))
                    .display()
            },
            estimate: per_part,
            note: done.then(|| "copied by an earlier apply".to_string()),
            diff: None,
            work: if done {
                Work::None
            } else {
                Work::CopyTable {
                    schema: schema.clone(),
                    table: table.clone(),
                    columns: info.columns_for_copy.clone(),
                    binary,
                    part: Some(condition.clone()),
                }
            },
            after: vec![empty_id.clone()],
            table: None,
        });
    }
    steps
}

/// Whether a split table is complete: its `empty` step and every part done (`done` says which
/// records count: any plan's for the planner, the applied plan's for apply). Anything less and
/// the table is emptied and every part copied again, all under one snapshot: parts copied under
/// different snapshots (or different boundaries) would not add up to one consistent table.
pub fn split_table_complete(empty_id: &str, parts: &[String], done: &dyn Fn(&str) -> bool) -> bool {
    done(empty_id) && parts.iter().all(|p| done(p))
}

/// Large objects are copied with the tables (under the same snapshot), all in one step. Logical
/// decoding does not carry them, so online mode copies them once too (preflight says so).
fn large_objects_step(
    source: &Catalog,
    target: &Catalog,
    state: Option<&State>,
    roles: &dyn Fn(&str) -> Option<String>,
) -> Option<Step> {
    let count = source.large_objects.count;
    if count == 0 {
        return None;
    }
    let id = "load:large_objects".to_string();
    let mapped: BTreeMap<String, String> = source
        .large_objects
        .owners
        .iter()
        .chain(&source.large_objects.grantees)
        .filter_map(|o| roles(o).map(|t| (o.clone(), t)))
        .collect();
    let base = Step {
        id: id.clone(),
        phase: Phase::Load,
        action: Action::Copy,
        object: format!("{} large objects", crate::preflight::thousands(count)),
        sql: "-- on the source, under the load snapshot, 1 MB at a time:\n\
              SELECT oid, lomowner, lomacl FROM pg_largeobject_metadata;\n\
              SELECT lo_get(oid, offset, 1048576);\n\
              -- on the target, in one transaction:\n\
              SELECT lo_create(oid); SELECT lo_put(oid, offset, chunk);\n\
              ALTER LARGE OBJECT oid OWNER TO owner; GRANT ... ON LARGE OBJECT oid TO ...;"
            .into(),
        estimate: Some(Estimate { rows: count, bytes: 0 }),
        note: Some(
            "same object ids as on the source, so columns that store them stay valid".into(),
        ),
        diff: None,
        work: Work::CopyLargeObjects { roles: mapped },
        after: vec![],
        table: None,
    };
    let recorded = state.and_then(|s| s.steps.get(&id)).map(|s| s.status);
    if target.large_objects.count > 0 && recorded.is_some() && recorded != Some(StepStatus::Done) {
        // An earlier apply started copying them (its transaction may have committed before it
        // could say so): they are ours, and the copy replaces them.
        return Some(Step {
            note: Some("an interrupted apply started this copy: it is done again".into()),
            ..base
        });
    }
    if target.large_objects.count > 0 {
        return Some(if recorded == Some(StepStatus::Done) {
            Step {
                action: Action::Unchanged,
                note: Some("copied by an earlier apply".into()),
                sql: String::new(),
                work: Work::None,
                ..base
            }
        } else {
            Step {
                action: Action::Conflict,
                note: Some(
                    "the target already has large objects that pgtransit did not copy: it never \
                     overwrites them (remove them with lo_unlink on the target if they are not \
                     needed)"
                        .into(),
                ),
                sql: String::new(),
                work: Work::None,
                ..base
            }
        });
    }
    Some(base)
}

/// Whether a table is copied in binary: only between equal major versions, and only when every
/// column type is built in (binary arrays and composites carry type OIDs, which differ between
/// servers for user-defined types).
fn copy_binary(source: &Catalog, target: &Catalog, schema: &str, table: &str) -> bool {
    source.server.major() == target.server.major()
        && source
            .relations
            .iter()
            .any(|r| r.schema == schema && r.name == table && r.builtin_types_only)
}

/// The `COPY` options of the source (`TO STDOUT`) and target (`FROM STDIN`) ends. The target
/// table is truncated in the same transaction, which is what `FREEZE` requires.
pub fn copy_options(binary: bool) -> (&'static str, &'static str) {
    if binary { (" (FORMAT binary)", " (FORMAT binary, FREEZE)") } else { ("", " (FREEZE)") }
}

/// The statements of one copy, as the plan shows them and apply runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySql {
    /// Run first, in the target transaction: empties the table (whole tables only).
    pub empty: Option<String>,
    /// The source end (`... TO STDOUT`), under the load snapshot.
    pub source: String,
    /// The target end (`... FROM STDIN`).
    pub target: String,
}

impl CopySql {
    /// A whole table (`part: None`, emptied and frozen in one transaction) or one part of a
    /// split table (`WHERE part`, appended). `ONLY` wherever a statement could reach an
    /// inheritance child: each table is copied with exactly its own rows. A table with no
    /// copyable column (none at all, or only generated ones) still has rows: its COPY names no
    /// columns (`COPY t ()` is a syntax error), and each row is an empty line.
    pub fn new(
        schema: &str,
        table: &str,
        columns: &[String],
        binary: bool,
        part: Option<&str>,
    ) -> CopySql {
        let name = qualified_ident(schema, table);
        let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let with_list = if columns.is_empty() { String::new() } else { format!(" ({list})") };
        let (out_opts, in_opts) = copy_options(binary);
        match part {
            None => CopySql {
                empty: Some(format!("TRUNCATE ONLY {name}")),
                // COPY of a table (not of a query) reads that table's rows only, never its
                // inheritance children's.
                source: format!("COPY {name}{with_list} TO STDOUT{out_opts}"),
                target: format!("COPY {name}{with_list} FROM STDIN{in_opts}"),
            },
            // FREEZE needs a truncate in the same transaction, which parts sharing a table
            // cannot have.
            Some(condition) => CopySql {
                empty: None,
                source: format!(
                    "COPY (SELECT {list} FROM ONLY {name} WHERE {condition}) TO STDOUT{out_opts}"
                ),
                target: format!(
                    "COPY {name}{with_list} FROM STDIN{}",
                    if binary { " (FORMAT binary)" } else { "" }
                ),
            },
        }
    }

    /// How the plan shows it.
    pub fn display(&self) -> String {
        let empty = self.empty.as_ref().map(|e| format!("{e};\n")).unwrap_or_default();
        format!(
            "-- on the source, under the load snapshot:\n{};\n\
             -- on the target, in one transaction:\n{empty}{};",
            self.source, self.target
        )
    }
}

/// The statement that empties a split table before its parts are copied.
pub fn empty_for_parts_sql(schema: &str, table: &str) -> String {
    format!("TRUNCATE ONLY {}", qualified_ident(schema, table))
}

/// Makes a table's definition say `REPLICA IDENTITY FULL`, where the catalog would put it
/// (before its row-security statements). Returns false when it already says so.
fn with_replica_identity_full(o: &mut SchemaObject) -> bool {
    let name = qualified_ident(&o.key.schema, &o.key.name);
    let full = format!("ALTER TABLE ONLY {name} REPLICA IDENTITY FULL");
    if o.ddl.contains(&full) {
        return false;
    }
    o.ddl.retain(|d| !d.starts_with(&format!("ALTER TABLE ONLY {name} REPLICA IDENTITY ")));
    let at = o
        .ddl
        .iter()
        .position(|d| {
            *d == format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
                || *d == format!("ALTER TABLE ONLY {name} FORCE ROW LEVEL SECURITY")
        })
        .unwrap_or(o.ddl.len());
    o.ddl.insert(at, full);
    if let Some(info) = o.table_info.as_mut() {
        info.replica_identity = "f".into();
    }
    true
}

/// Online mode, before the copies: the source's replica identities (when the migration plan
/// asks for them), the publication, and the slot whose snapshot the copies read.
fn online_load_steps(
    migration: &str,
    source: &Catalog,
    tables: &[StreamTable],
    made_full: &[String],
) -> Vec<Step> {
    let slot = crate::naming::slot_name(migration);
    let publication = crate::naming::publication_name(migration);
    let blank = |id: &str, object: String| Step {
        id: id.into(),
        phase: Phase::Load,
        action: Action::Run,
        object,
        sql: String::new(),
        estimate: None,
        note: None,
        diff: None,
        work: Work::None,
        after: vec![],
        table: None,
    };
    let mut out = vec![];
    if !made_full.is_empty() {
        out.push(Step {
            sql: replica_identity_full_sql(made_full),
            note: Some(
                "on the source (sync.tables_without_key: replica_identity_full): updates and \
                 deletes of these tables carry the whole old row, which the target matches on"
                    .into(),
            ),
            work: Work::ReplicaIdentityFull { tables: made_full.to_vec() },
            ..blank(
                "load:replica_identity",
                format!("replica identity of {} tables", made_full.len()),
            )
        });
    }
    // Unlogged tables write no WAL, so logical decoding cannot stream them (PostgreSQL refuses
    // them in a publication): copied with the load only, as preflight's `unlogged_table` says.
    let unlogged = |t: &StreamTable| {
        source.relations.iter().any(|r| r.schema == t.schema && r.name == t.table && r.unlogged)
    };
    let names: Vec<String> = tables
        .iter()
        .filter(|t| !unlogged(t))
        .map(|t| qualified_ident(&t.schema, &t.table))
        .collect();
    let exists = source.publications.contains(&publication);
    out.push(Step {
        action: if exists { Action::Update } else { Action::Create },
        sql: match (exists, names.is_empty()) {
            (false, true) => format!("CREATE PUBLICATION {};", ident(&publication)),
            (false, false) => format!(
                "CREATE PUBLICATION {} FOR TABLE {};",
                ident(&publication),
                names.join(", ")
            ),
            // Kept in step with the scope: a table that came into scope (a new partition,
            // wider `objects:`) is streamed from here on, and copied under a snapshot taken
            // after this.
            (true, true) => String::new(),
            (true, false) => {
                format!("ALTER PUBLICATION {} SET TABLE {};", ident(&publication), names.join(", "))
            }
        },
        note: Some(if exists {
            format!(
                "exists (an earlier apply created it): its tables are set to the {} in scope now",
                names.len()
            )
        } else {
            format!("on the source: the {} tables whose changes are streamed", names.len())
        }),
        work: if exists && names.is_empty() { Work::None } else { Work::SourceSql },
        ..blank("load:publication", format!("publication {}", crate::sql::display(&publication)))
    });
    let slot_exists = source.replication_slots.iter().any(|s| s.name == slot);
    let slot_command = crate::stream::create_slot_command(&slot, source.server.version_num);
    out.push(Step {
        action: if slot_exists { Action::Unchanged } else { Action::Create },
        sql: if slot_exists {
            String::new()
        } else {
            format!(
                "-- on a replication session of the source, kept open during the load:\n{};\n\
                 -- every copy reads the snapshot it exports: SET TRANSACTION SNAPSHOT '<name>';",
                slot_command
            )
        },
        note: Some(if slot_exists {
            "exists: created by an earlier apply; tables still to copy are copied under a new \
             snapshot, and the stream skips, for each table, the transactions its copy holds"
                .into()
        } else {
            "logical decoding (pgoutput): it keeps every change made after its snapshot until \
             the target has applied it. Never left behind: `pgtransit abort` or the cutover \
             drops it"
                .into()
        }),
        work: if slot_exists {
            Work::None
        } else {
            Work::CreateSlot { slot: slot.clone(), command: slot_command }
        },
        ..blank("load:slot", format!("replication slot {}", crate::sql::display(&slot)))
    });
    out
}

/// Online mode, after the load: the target's replication origin and the change stream.
fn sync_steps(migration: &str, tables: Vec<StreamTable>) -> Vec<Step> {
    let slot = crate::naming::slot_name(migration);
    let publication = crate::naming::publication_name(migration);
    let origin = crate::naming::origin_name(migration);
    let o = crate::sql::literal(&origin);
    let pinned = crate::conn::PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", crate::sql::literal(v)))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        Step {
            id: "sync:origin".into(),
            phase: Phase::Sync,
            action: Action::Run,
            object: format!("replication origin {}", crate::sql::display(&origin)),
            sql: format!(
                "SELECT pg_replication_origin_create({o}) WHERE NOT EXISTS \
                 (SELECT FROM pg_replication_origin WHERE roname = {o});"
            ),
            estimate: None,
            note: Some(
                "on the target: records the source position applied, in the same transaction \
                 as the changes (exactly once, crash-safe)"
                    .into(),
            ),
            diff: None,
            work: Work::TargetSql,
            after: vec![],
            table: None,
        },
        Step {
            id: "sync:stream".into(),
            phase: Phase::Sync,
            action: Action::Run,
            object: format!("changes of {} tables", tables.len()),
            sql: format!(
                "-- on a replication session of the source, from the origin's position:\n\
                 START_REPLICATION SLOT {} LOGICAL <pg_replication_origin_progress({o}, true)> \
                 (proto_version '1', publication_names '{}', messages 'true');\n\
                 -- on the target, once per session:\n\
                 SET synchronous_commit = on; {APPLY_SESSION} {pinned}\n\
                 SELECT pg_replication_origin_session_setup({o});\n\
                 -- then for each batch of source transactions, in commit order:\n\
                 BEGIN;\n\
                 INSERT INTO t (...) OVERRIDING SYSTEM VALUE VALUES (...); \
                 UPDATE t SET ... WHERE <key> = ...; DELETE FROM t WHERE <key> = ...; TRUNCATE t;\n\
                 SELECT pg_replication_origin_xact_setup(<commit end>, <commit time>);\n\
                 COMMIT;\n\
                 -- and on the source, every second (lag and liveness):\n\
                 SELECT pg_logical_emit_message(false, {}, '<n>');",
                ident(&slot),
                ident(&publication),
                crate::sql::literal(&crate::naming::message_prefix(&slot)),
            ),
            estimate: None,
            note: Some(
                "runs until the cutover, or until Ctrl-C (the next apply resumes from the \
                 origin's position). Triggers and foreign keys do not fire for replicated rows"
                    .into(),
            ),
            diff: None,
            work: Work::Stream { slot, publication, origin, tables },
            after: vec![],
            table: None,
        },
    ]
}

/// Continuous verification (`verify.continuous`, with checksums): runs with the stream.
fn continuous_verify_step(
    spec: &crate::migration_plan::MigrationPlan,
    source: &Catalog,
    tables: &[VerifyTable],
) -> Option<Step> {
    let v = &spec.verify;
    if !(v.continuous && v.checksums) {
        return None;
    }
    let slot = crate::naming::slot_name(&spec.name.value);
    // Unlogged tables are not streamed: what was proven of them does not stay proven (the
    // cutover compares them in full).
    let tables: Vec<VerifyTable> = tables
        .iter()
        .filter(|t| {
            !source
                .relations
                .iter()
                .any(|r| r.schema == t.schema && r.name == t.table && r.unlogged)
        })
        .cloned()
        .collect();
    let sql = crate::verify::continuous_sql(
        &slot,
        source.server.version_num,
        v.rows_per_second,
        v.repair,
    );
    Some(Step {
        id: "sync:verify".into(),
        phase: Phase::Sync,
        action: Action::Run,
        object: format!("rows of {} tables, while streaming", tables.len()),
        sql,
        estimate: None,
        note: Some(
            "runs with the stream: each chunk is proven equal at a consistent point, and the \
             cutover then compares only rows changed since"
                .into(),
        ),
        diff: None,
        work: Work::ContinuousVerify {
            tables,
            rows_per_second: v.rows_per_second,
            repair: v.repair,
        },
        after: vec![],
        table: None,
    })
}

/// The tables verification compares, with their single integer key when they have one.
fn verify_tables(source: &Catalog, tables: &[StreamTable]) -> Vec<VerifyTable> {
    tables
        .iter()
        .map(|t| VerifyTable {
            schema: t.schema.clone(),
            table: t.table.clone(),
            key: source
                .relations
                .iter()
                .find(|r| r.schema == t.schema && r.name == t.table)
                .and_then(|r| r.integer_key.clone()),
        })
        .collect()
}

/// The source's sequences in scope: those owned by a table in scope, and free-standing ones
/// that are themselves in scope.
fn sequences_in_scope<'a>(
    source: &'a Catalog,
    scope: &'a Scope,
) -> impl Iterator<Item = &'a crate::catalog::SequenceValue> {
    source.sequences.iter().filter(|s| match &s.owned_by {
        Some((ts, tn)) => scope.table_in_scope(ts, tn),
        None => scope.table_in_scope(&s.schema, &s.name),
    })
}

/// Online mode: the cutover, in order. Fence the source's writers, drain the stream to a
/// barrier, set every sequence, refresh materialized views, verify every table, clean up.
fn cutover_steps(
    spec: &crate::migration_plan::MigrationPlan,
    source: &Catalog,
    tables: &[StreamTable],
    matviews: &[&SchemaObject],
    scope: &Scope,
) -> Vec<Step> {
    let migration = &spec.name.value;
    let slot = crate::naming::slot_name(migration);
    let db = &source.server.database;
    let step = cutover_step;
    let fence = |mode| FenceSql::new(db, mode, tables);
    let (mode, fence_sql, fence_note) = match spec.cutover.fence {
        crate::migration_plan::Fence::ReadOnly => (
            "read_only",
            fence("read_only").shown(),
            "on the source: new sessions are read-only, and every session but this cutover's is \
             ended (applications reconnect read-only). It holds after pgtransit exits; a failure \
             before verification passes lifts it (ALTER DATABASE ... RESET \
             default_transaction_read_only)",
        ),
        crate::migration_plan::Fence::LockTables => (
            "lock_tables",
            fence("lock_tables").shown(),
            "on the source: writes to the tables in scope wait for the lock (reads go on), new \
             sessions are read-only (which holds after pgtransit exits), and every session but \
             pgtransit's is ended",
        ),
    };
    let mut out = vec![
        step(
            "fence",
            format!("writes on the source database {}", crate::sql::display(db)),
            fence_sql,
            fence_note,
            Work::Fence { database: db.clone(), mode: mode.into() },
        ),
        step(
            "drain",
            "changes up to the fence".into(),
            format!(
                "{BARRIER_BEGIN};\n{};\nCOMMIT;\n\
                 -- the stream applies everything up to the barrier, then stops",
                BARRIER_EMIT
                    .replace(
                        "$1::text",
                        &crate::sql::literal(&crate::naming::barrier_prefix(&slot))
                    )
                    .replace("$2::text", "'<now>'")
            ),
            "on the source, after the fence: nothing commits after the barrier",
            Work::Drain,
        ),
    ];
    let margin = spec.cutover.sequence_margin;
    for s in sequences_in_scope(source, scope) {
        let name = qualified_ident(&s.schema, &s.name);
        out.push(step(
            &format!("sequence:{}", qualified(&s.schema, &s.name)),
            format!("sequence {}", qualified(&s.schema, &s.name)),
            format!(
                "-- value read on the fenced source:\n{}",
                setval_sql(&name, &format!("<last_value> + {margin}"), "<is_called>")
            ),
            "sequences are not replicated: each one, owned by a column or not, is set from the \
             fenced source",
            Work::SetSequence { schema: s.schema.clone(), sequence: s.name.clone(), margin },
        ));
    }
    for m in matviews {
        let (s, n) = (&m.key.schema, &m.key.name);
        if !source.relations.iter().any(|r| r.schema == *s && r.name == *n && r.populated) {
            continue;
        }
        out.push(step(
            &format!("refresh:{}", qualified(s, n)),
            format!("materialized view {}", qualified(s, n)),
            // As a replica: the target's event triggers (created with the schema) do not fire
            // for the migration's own refresh.
            format!(
                "SET LOCAL session_replication_role = replica;\nREFRESH MATERIALIZED VIEW {};",
                qualified_ident(s, n)
            ),
            "refreshed from the final data",
            Work::TargetSql,
        ));
    }
    let verify = verify_tables(source, tables);
    out.push(step(
        "verify",
        format!("rows of {} tables", verify.len()),
        crate::verify::fence_sql(),
        "exact: nothing changes on either side now",
        Work::Verify { tables: verify },
    ));
    out.push(cleanup_step(migration, "nothing of the migration is left on either server"));
    out
}

/// The cutover's last step: the slot and publication on the source, the origin on the target.
fn cleanup_step(migration: &str, note: &str) -> Step {
    let slot = crate::naming::slot_name(migration);
    let publication = crate::naming::publication_name(migration);
    let origin = crate::naming::origin_name(migration);
    Step {
        id: "cutover:cleanup".into(),
        phase: Phase::Cutover,
        action: Action::Run,
        object: "replication slot, publication and origin".into(),
        sql: Leftover::of_streaming(&slot, &publication, &origin)
            .iter()
            .map(|l| format!("{};  -- {}", l.sql, if l.on_source() { "source" } else { "target" }))
            .collect::<Vec<_>>()
            .join("\n"),
        estimate: None,
        note: Some(note.into()),
        diff: None,
        work: Work::Cleanup { slot, publication, origin },
        after: vec![],
        table: None,
    }
}

/// `sync.tables_without_key: replica_identity_full`: the statements the replica identity step
/// shows and runs on the source (`tables` quoted).
pub fn replica_identity_full_sql(tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL;"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stream's target session: replicated rows fire no trigger or foreign-key check; updates
/// and deletes find their row by key, always through the key's index (a table that was tiny
/// when the statement was planned must not be scanned whole ever after); and no JIT (a
/// statement touches a row or a few, but under `enable_seqscan = off` a table without a key,
/// matched by a scan, costs past every JIT threshold: 71 ms of JIT were measured for a 0.1 ms
/// scan). Set-based statements keep one generic plan, a nested loop over the rows by key: with
/// the rows counted, the planner chose a merge join over the whole index (207 ms for 20,000
/// updates of a million-row table, against 102 ms).
pub const APPLY_SESSION: &str = "SET session_replication_role = replica; SET enable_seqscan = off; \
     SET jit = off; SET plan_cache_mode = force_generic_plan;";

/// The cutover's barrier on the fenced source: a transactional message (`$1` the prefix, `$2`
/// the time) in a transaction of its own, committed and flushed locally. The walsender sends a
/// commit at once; a message outside a transaction waited for the WAL writer's next round.
pub const BARRIER_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = local";

/// See [`BARRIER_BEGIN`].
pub const BARRIER_EMIT: &str = "SELECT pg_logical_emit_message(true, $1::text, $2::text)::text";

/// Sets sequence `name` (quoted) to `value`, `called` (SQL text: the cutover's step shows
/// placeholders where it runs the values read on the fenced source).
pub fn setval_sql(name: &str, value: &str, called: &str) -> String {
    format!("SELECT setval({}, {value}, {called});", crate::sql::literal(name))
}

/// The fence's statements (`cutover.fence`): what the fence step shows, and what the cutover
/// runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceSql {
    /// `lock_tables`: the lock the fencing session takes, and holds until the cutover ends
    /// (under `lock_timeout` [`FenceSql::LOCK_TIMEOUT`]).
    pub lock: Option<String>,
    /// New sessions of the source database are read-only (committed on its own).
    pub read_only: String,
    /// The sessions the fence ends, as a `pg_stat_activity` condition: every client session of
    /// the database but the one ending them; pgtransit's own are left out by their pid and start
    /// time ([`FenceSql::others_but`]), which no setting can make look like anyone else's.
    pub others: String,
}

impl FenceSql {
    /// How long the fencing session waits for its table locks.
    pub const LOCK_TIMEOUT: &str = "60s";

    /// The fence of `database` in `mode` (`read_only` or `lock_tables`); `tables` are the
    /// streamed tables (what `lock_tables` locks).
    pub fn new(database: &str, mode: &str, tables: &[StreamTable]) -> FenceSql {
        let lock = (mode == "lock_tables").then(|| {
            let names: Vec<String> =
                tables.iter().map(|t| qualified_ident(&t.schema, &t.table)).collect();
            format!("LOCK TABLE {} IN EXCLUSIVE MODE;", names.join(", "))
        });
        FenceSql {
            lock,
            read_only: format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                ident(database)
            ),
            others: format!(
                "datname = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                crate::sql::literal(database)
            ),
        }
    }

    /// [`FenceSql::others`] but for `own` sessions (pid, `backend_start` as text): pgtransit's
    /// own, which the fence must not end whatever their `application_name` says (a user's
    /// `PGAPPNAME` or connection string sets theirs too); and but for sessions that started
    /// after `read_only_since` (the server's time once the read-only default was committed, as
    /// SQL): they read that default when they started (a pool that reconnects at once must not
    /// keep the fence from ever finding none left).
    pub fn others_but(&self, own: &[(i32, String)], read_only_since: &str) -> String {
        let own: Vec<String> = own
            .iter()
            .map(|(pid, started)| format!("({pid}, {})", crate::sql::literal(started)))
            .collect();
        self.others_except(&own.join(", "), read_only_since)
    }

    fn others_except(&self, own: &str, read_only_since: &str) -> String {
        let own = if own.is_empty() {
            String::new()
        } else {
            format!("\n  AND (pid, backend_start::text) NOT IN ({own})")
        };
        format!("{}{own}\n  AND backend_start < {read_only_since}", self.others)
    }

    /// The fence step's SQL, as the plan shows it.
    pub fn shown(&self) -> String {
        let lock = self.lock.as_ref().map(|l| {
            format!(
                "{l}  -- held until the cutover ends (lock_timeout {})\n",
                FenceSql::LOCK_TIMEOUT
            )
        });
        format!(
            "{}-- refused while pg_prepared_xacts has transactions of this database\n{};\n\
             -- then, until none is left (pg_terminate_backend only signals):\n\
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity\nWHERE {};",
            lock.unwrap_or_default(),
            self.read_only,
            self.others_except(
                "<pgtransit's own sessions>",
                "<when the read-only default was committed>"
            )
        )
    }

    /// Lifts the fence: new sessions of `database` take writes again.
    pub fn lift(database: &str) -> String {
        format!("ALTER DATABASE {} RESET default_transaction_read_only", ident(database))
    }
}

/// Something pgtransit leaves on a server while it migrates online, with the statement that
/// removes it: what the cutover's clean-up step shows and runs, and what `pgtransit abort`
/// removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// What it is, for people (`replication slot x (source)`).
    pub what: String,
    /// What removes it.
    pub sql: String,
    /// Which kind of object.
    pub kind: LeftoverKind,
}

/// The kinds of [`Leftover`], with their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftoverKind {
    /// The replication slot (source): released by the session that holds it first.
    Slot(String),
    /// The publication (source).
    Publication(String),
    /// The replication origin (target): dropped once the stream's session released it.
    Origin(String),
    /// A fence left up (source database).
    Fence(String),
    /// A replica identity pgtransit set to FULL (source table, quoted).
    ReplicaIdentity(String),
}

impl Leftover {
    /// On the source (everything but the replication origin, which is on the target).
    pub fn on_source(&self) -> bool {
        !matches!(self.kind, LeftoverKind::Origin(_))
    }

    /// The slot, the publication and the origin of a migration, in the order they go.
    pub fn of_streaming(slot: &str, publication: &str, origin: &str) -> [Leftover; 3] {
        [Leftover::slot(slot), Leftover::publication(publication), Leftover::origin(origin)]
    }

    /// The replication slot.
    pub fn slot(slot: &str) -> Leftover {
        Leftover {
            what: format!("replication slot {slot} (source)"),
            sql: format!("SELECT pg_drop_replication_slot({})", crate::sql::literal(slot)),
            kind: LeftoverKind::Slot(slot.into()),
        }
    }

    /// The publication.
    pub fn publication(publication: &str) -> Leftover {
        Leftover {
            what: format!("publication {publication} (source)"),
            sql: format!("DROP PUBLICATION {}", ident(publication)),
            kind: LeftoverKind::Publication(publication.into()),
        }
    }

    /// The replication origin.
    pub fn origin(origin: &str) -> Leftover {
        Leftover {
            what: format!("replication origin {origin} (target)"),
            sql: format!("SELECT pg_replication_origin_drop({})", crate::sql::literal(origin)),
            kind: LeftoverKind::Origin(origin.into()),
        }
    }

    /// A fence still up on the source database.
    pub fn fence(database: &str) -> Leftover {
        Leftover {
            what: format!(
                "the cutover's fence on database {database}: it takes writes again (source)"
            ),
            sql: FenceSql::lift(database),
            kind: LeftoverKind::Fence(database.into()),
        }
    }

    /// A replica identity set to FULL (`table` quoted).
    pub fn replica_identity(table: &str) -> Leftover {
        Leftover {
            what: format!("replica identity FULL of {table}, back to DEFAULT (source)"),
            sql: format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT"),
            kind: LeftoverKind::ReplicaIdentity(table.into()),
        }
    }
}

fn sequence_steps(
    scope: &Scope,
    source: &Catalog,
    target: &Catalog,
    source_keys: &BTreeSet<&ObjectKey>,
) -> Vec<Step> {
    let _ = source_keys;
    let mut out = vec![];
    for s in sequences_in_scope(source, scope) {
        let current = target.sequences.iter().find(|t| t.schema == s.schema && t.name == s.name);
        let already = current.is_some_and(|t| t.last_value == s.last_value);
        let id = step_id(Phase::PostLoad, "sequence_value", &s.schema, &s.name);
        let object = format!("sequence {}", qualified(&s.schema, &s.name));
        let name = crate::sql::literal(&qualified_ident(&s.schema, &s.name));
        let sql = match s.last_value {
            Some(v) => format!("SELECT setval({name}, {v}, true);"),
            // Never used on the source: the target's must not look used either.
            None => format!("ALTER SEQUENCE {} RESTART;", qualified_ident(&s.schema, &s.name)),
        };
        out.push(Step {
            id,
            phase: Phase::PostLoad,
            action: if already { Action::Unchanged } else { Action::Run },
            object,
            sql: if already { String::new() } else { sql },
            estimate: None,
            note: Some(
                "set to the source's value as apply reads it (the plan shows the value at \
                 plan time)"
                    .into(),
            ),
            diff: None,
            work: if already {
                Work::None
            } else {
                Work::SetSequence { schema: s.schema.clone(), sequence: s.name.clone(), margin: 0 }
            },
            after: vec![],
            table: None,
        });
    }
    out
}

/// Statements as the target's version takes them: before PostgreSQL 15 a sequence cannot say
/// `LOGGED` or `UNLOGGED` (an identity sequence whose persistence differs from its table's,
/// read from a 13 or 14 source, is logged: the only kind there is).
fn for_target(statements: Vec<String>, target: &Catalog) -> Vec<String> {
    if target.server.version_num >= 150000 {
        return statements;
    }
    statements
        .into_iter()
        .map(|s| s.replace("\n        LOGGED\n", "\n").replace("\n        UNLOGGED\n", "\n"))
        .collect()
}

/// A user mapping is named after its role: on the target, the role it maps to.
fn with_mapped_user(key: &ObjectKey, roles: &dyn Fn(&str) -> Option<String>) -> ObjectKey {
    let Some((role, server)) = key
        .name
        .strip_prefix("user mapping ")
        .and_then(|rest| rest.split_once(" on server "))
        .filter(|_| key.kind == ObjectKind::Dumped)
    else {
        return key.clone();
    };
    // `pg_identify_object` quotes a name only where it must.
    let bare = role.strip_prefix('"').and_then(|r| r.strip_suffix('"'));
    let name = bare.map(|r| r.replace("\"\"", "\"")).unwrap_or_else(|| role.to_string());
    let Some(mapped) = roles(&name).filter(|m| *m != name) else { return key.clone() };
    let plain = mapped.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && mapped.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let written = if plain || mapped == "public" { mapped } else { ident(&mapped) };
    ObjectKey::new(key.kind, &key.schema, format!("user mapping {written} on server {server}"))
}

/// The materialized views among `objects`, in creation `order`.
fn matviews_in<'a>(order: &[usize], objects: &'a [SchemaObject]) -> Vec<&'a SchemaObject> {
    order
        .iter()
        .map(|&i| &objects[i])
        .filter(|o| o.key.kind == ObjectKind::MaterializedView)
        .collect()
}

/// The refresh of each populated materialized view, once the indexes and constraints exist
/// (`built`: they may speed it up), one after the other in dependency order (a view that reads
/// another sees it populated).
fn matview_steps(
    matviews: &[&SchemaObject],
    source: &Catalog,
    target: &Catalog,
    steps: &[Step],
    built: &[String],
) -> Vec<Step> {
    let created: BTreeSet<&str> =
        steps.iter().filter(|s| s.action == Action::Create).map(|s| s.object.as_str()).collect();
    let populated = |cat: &Catalog, s: &str, n: &str| {
        cat.relations.iter().any(|r| r.schema == s && r.name == n && r.populated)
    };
    let mut out = vec![];
    for o in matviews {
        let (s, n) = (&o.key.schema, &o.key.name);
        if !populated(source, s, n) {
            continue;
        }
        let done = !created.contains(o.key.to_string().as_str()) && populated(target, s, n);
        out.push(Step {
            id: step_id(Phase::PostLoad, "refresh", s, n),
            phase: Phase::PostLoad,
            action: if done { Action::Unchanged } else { Action::Run },
            object: format!("materialized view {}", qualified(s, n)),
            sql: if done {
                String::new()
            } else {
                format!("REFRESH MATERIALIZED VIEW {};", qualified_ident(s, n))
            },
            estimate: None,
            note: Some("populated from the copied data".into()),
            diff: None,
            work: if done { Work::None } else { Work::TargetSql },
            after: vec![],
            table: None,
        });
    }
    let mut previous: Option<String> = None;
    for r in out.iter_mut().filter(|r| r.action.is_work()) {
        r.after = built.iter().cloned().chain(previous.take()).collect();
        previous = Some(r.id.clone());
    }
    out
}

fn fingerprint(
    inputs: &Inputs<'_>,
    source_in_scope: &[SchemaObject],
    scope: &Scope,
) -> Fingerprint {
    let identity = |r: &str| Some(r.to_string());
    let server = |c: &Catalog| {
        format!(
            "{}|{}|{}",
            c.server.system_identifier.as_deref().unwrap_or("-"),
            c.server.version_num,
            c.server.database
        )
    };
    let mut source_parts: BTreeMap<&ObjectKey, String> = BTreeMap::new();
    for o in source_in_scope {
        source_parts.insert(&o.key, o.definition(&identity));
    }
    let source_server = server(inputs.source);
    // Which source tables hold rows: part of what an offline plan was computed from, but not
    // of an online one's (the source keeps taking writes, which the stream carries).
    let online = inputs.spec.spec.mode == Mode::Online;
    let mut source_rows: Vec<&str> = if online {
        vec![]
    } else {
        inputs.source.tables_with_rows.iter().map(String::as_str).collect()
    };
    let source_lo = format!("large objects: {}", inputs.source.large_objects.count);
    if !online {
        source_rows.push(&source_lo);
    }
    let source = hash_parts(
        std::iter::once(source_server.as_str())
            .chain(source_parts.values().map(String::as_str))
            .chain(std::iter::once("|rows|"))
            .chain(source_rows),
    );
    let mut target_parts: BTreeMap<&ObjectKey, String> = BTreeMap::new();
    for o in inputs.target_objects.iter().filter(|o| in_scope(o, scope)) {
        target_parts.insert(&o.key, o.definition(&identity));
    }
    let mut rows: Vec<&str> = inputs.target.tables_with_rows.iter().map(String::as_str).collect();
    let target_lo = format!("large objects: {}", inputs.target.large_objects.count);
    rows.push(&target_lo);
    let target_server = server(inputs.target);
    let target = hash_parts(
        std::iter::once(target_server.as_str())
            .chain(target_parts.values().map(String::as_str))
            .chain(std::iter::once("|rows|"))
            .chain(rows),
    );
    Fingerprint { spec: hash_parts([inputs.spec.text.as_str()]), source, target }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::TableInfo;

    fn spec(extra: &str) -> LoadedMigrationPlan {
        let text = format!(
            "version: 1\nname: t\nmode: offline\nsource: {{url: 'host=s'}}\ntarget: {{url: 'host=t'}}\n{extra}"
        );
        crate::migration_plan::parse(std::path::Path::new("plans/t.yaml"), text, &|_| None).unwrap()
    }

    #[test]
    fn the_fence_and_the_clean_up_show_the_statements_the_cutover_and_abort_run() {
        let tables = [StreamTable {
            schema: "public".into(),
            table: "Film".into(),
            copy_step: "load:copy".into(),
            parts: vec![],
        }];
        let read_only = "-- refused while pg_prepared_xacts has transactions of this database\n\
             ALTER DATABASE \"shop db\" SET default_transaction_read_only = on;\n\
             -- then, until none is left (pg_terminate_backend only signals):\n\
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity\n\
             WHERE datname = 'shop db' AND pid <> pg_backend_pid() AND backend_type = 'client backend'\n  \
             AND (pid, backend_start::text) NOT IN (<pgtransit's own sessions>)\n  \
             AND backend_start < <when the read-only default was committed>;";
        let fence = FenceSql::new("shop db", "read_only", &tables);
        assert_eq!(fence.lock, None);
        assert_eq!(fence.shown(), read_only);
        let locked = FenceSql::new("shop db", "lock_tables", &tables);
        assert_eq!(
            locked.lock.as_deref(),
            Some("LOCK TABLE \"public\".\"Film\" IN EXCLUSIVE MODE;")
        );
        assert_eq!(
            locked.shown(),
            format!(
                "LOCK TABLE \"public\".\"Film\" IN EXCLUSIVE MODE;  -- held until the cutover ends \
                 (lock_timeout 60s)\n{read_only}"
            )
        );
        // What the fence ends is what the plan shows it ends: every client session of the
        // database but pgtransit's own, known by pid and start time (not by a name).
        assert!(fence.shown().contains(&fence.others));
        assert!(!fence.others.contains("application_name"));
        let own = [(42, "2026-12-04 10:00:00+00".to_string()), (43, "x'y".to_string())];
        let since = "'2026-12-04 10:00:01+00'::timestamptz";
        assert_eq!(
            fence.others_but(&own, since),
            format!(
                "{}\n  AND (pid, backend_start::text) NOT IN ((42, '2026-12-04 10:00:00+00'), \
                 (43, 'x''y'))\n  AND backend_start < {since}",
                fence.others
            )
        );
        assert_eq!(
            fence.others_but(&[], since),
            format!("{}\n  AND backend_start < {since}", fence.others)
        );
        let clean = cleanup_step("m", "note");
        assert_eq!(
            clean.sql,
            "SELECT pg_drop_replication_slot('pgtransit_m');  -- source\n\
             DROP PUBLICATION \"pgtransit_m\";  -- source\n\
             SELECT pg_replication_origin_drop('pgtransit_m');  -- target"
        );
        for l in Leftover::of_streaming("pgtransit_m", "pgtransit_m", "pgtransit_m") {
            assert!(clean.sql.contains(&l.sql), "{} is shown", l.what);
        }
    }

    fn key(kind: ObjectKind, schema: &str, name: &str) -> ObjectKey {
        ObjectKey::new(kind, schema, name)
    }

    fn table(name: &str, ddl: &str, rows: i64) -> SchemaObject {
        let mut o = SchemaObject::new(key(ObjectKind::Table, "public", name), vec![ddl.into()]);
        o.owner = Some("app".into());
        o.table_info = Some(TableInfo {
            columns_for_copy: vec!["id".into()],
            estimated_rows: rows,
            bytes: rows * 100,
            ..Default::default()
        });
        o
    }

    fn fk(name: &str, on: &str, to: &str) -> SchemaObject {
        let mut o = SchemaObject::new(
            key(ObjectKind::ForeignKey, "public", &format!("{on}.{name}")),
            vec![format!(
                "ALTER TABLE public.{on} ADD CONSTRAINT {name} FOREIGN KEY (x) REFERENCES public.{to}"
            )],
        );
        o.table = Some(("public".into(), on.into()));
        o.depends_on.insert(key(ObjectKind::Table, "public", on));
        o.depends_on.insert(key(ObjectKind::Table, "public", to));
        o
    }

    fn catalog_with_role(role: &str) -> Catalog {
        let mut c = Catalog::default();
        c.roles.push(crate::catalog::Role { name: role.into(), ..Default::default() });
        c
    }

    fn plan_of(
        spec: &LoadedMigrationPlan,
        src: &[SchemaObject],
        tgt: &[SchemaObject],
        rows: &[&str],
    ) -> Plan {
        let mut source = catalog_with_role("app");
        source.tables_with_rows = rows.iter().map(|r| r.to_string()).collect();
        let target = catalog_with_role("app");
        plan(Inputs {
            spec,
            source: &source,
            target: &target,
            source_objects: src,
            target_objects: tgt,
            checks: vec![],
            state: None,
            source_endpoint: "s".into(),
            target_endpoint: "t".into(),
        })
    }

    fn actions(p: &Plan) -> Vec<(String, Action)> {
        p.steps.iter().map(|s| (s.id.clone(), s.action)).collect()
    }

    #[test]
    fn missing_objects_are_created_in_phases_and_tables_copied_largest_first() {
        let s = spec("");
        let src = vec![
            fk("b_a", "b", "a"),
            table("a", "CREATE TABLE a (id int)", 10),
            table("b", "CREATE TABLE b (id int)", 1000),
        ];
        let p = plan_of(&s, &src, &[], &["public.a", "public.b"]);
        let ids: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "schema:table:public.a",
                "schema:table:public.b",
                "load:table:public.b",
                "load:table:public.a",
                "post_load:foreign_key:public.b.b_a",
                "post_load:analyze",
            ]
        );
        assert_eq!(p.summary.create, 3);
        assert_eq!(p.summary.copy, 2);
        let fk_step = &p.steps[4];
        assert!(fk_step.note.as_deref().unwrap().contains("added after the data"));
        assert!(fk_step.sql.ends_with(';'));
    }

    #[test]
    fn large_tables_split_into_open_ended_key_ranges_or_ctid_ranges() {
        let mut t = table("big", "CREATE TABLE big (id int)", 1000);
        t.table_info.as_mut().unwrap().bytes = 4_000;
        let mut source = catalog_with_role("app");
        source.relations.push(crate::catalog::Relation {
            schema: "public".into(),
            name: "big".into(),
            integer_key: Some("id".into()),
            pages: 8,
            ..Default::default()
        });
        source.key_ranges.insert("public.big".into(), (1, 100));
        let parts = parts_of(&t, &source, 1_000).unwrap();
        assert_eq!(
            parts,
            vec![
                "\"id\" < 26",
                "\"id\" >= 26 AND \"id\" < 51",
                "\"id\" >= 51 AND \"id\" < 76",
                "\"id\" >= 76"
            ]
        );
        source.key_ranges.clear();
        let parts = parts_of(&t, &source, 2_000).unwrap();
        assert_eq!(parts, vec!["ctid < '(4,0)'::tid", "ctid >= '(4,0)'::tid"]);
        assert_eq!(parts_of(&t, &source, 4_000), None, "not larger than the threshold");
    }

    #[test]
    fn the_same_inputs_give_the_same_plan_byte_for_byte() {
        let s = spec("");
        let mut src = vec![
            table("a", "CREATE TABLE a (id int)", 1),
            table("b", "CREATE TABLE b (id int)", 1),
            fk("f", "a", "b"),
        ];
        let p1 = serde_json::to_string(&plan_of(&s, &src, &[], &["public.a"])).unwrap();
        src.reverse();
        let p2 = serde_json::to_string(&plan_of(&s, &src, &[], &["public.a"])).unwrap();
        assert_eq!(p1, p2);
    }

    #[test]
    fn equal_objects_are_unchanged_and_different_ones_conflict_with_a_diff() {
        let s = spec("");
        let src = vec![
            table("same", "CREATE TABLE same (id int)", 0),
            table("diff", "CREATE TABLE diff (id int)", 0),
        ];
        let tgt = vec![
            table("same", "CREATE TABLE same (id int)", 0),
            table("diff", "CREATE TABLE diff (id bigint)", 0),
        ];
        let p = plan_of(&s, &src, &tgt, &[]);
        let a = actions(&p);
        assert!(a.contains(&("schema:table:public.same".into(), Action::Unchanged)));
        assert!(a.contains(&("schema:table:public.diff".into(), Action::Conflict)));
        let conflict = p.steps.iter().find(|s| s.action == Action::Conflict).unwrap();
        let diff = conflict.diff.as_deref().unwrap();
        assert!(
            diff.contains("-CREATE TABLE diff (id bigint)")
                && diff.contains("+CREATE TABLE diff (id int)"),
            "{diff}"
        );
        assert!(conflict.sql.is_empty(), "a conflict runs nothing");
        assert!(!p.is_applicable());
    }

    #[test]
    fn a_table_empty_on_both_sides_needs_no_copy() {
        let s = spec("");
        let p = plan_of(&s, &[table("t", "CREATE TABLE t (id int)", 0)], &[], &[]);
        let copy = p.steps.iter().find(|s| s.id == "load:table:public.t").unwrap();
        assert_eq!(copy.action, Action::Unchanged);
    }

    #[test]
    fn an_object_whose_dependency_is_out_of_scope_and_missing_is_a_conflict() {
        let s = spec("objects: {tables: {exclude: [public.a]}}");
        let src = vec![
            table("a", "CREATE TABLE a (id int)", 0),
            table("b", "CREATE TABLE b (id int)", 0),
            fk("b_a", "b", "a"),
        ];
        let p = plan_of(&s, &src, &[], &[]);
        let step = p.steps.iter().find(|s| s.id == "post_load:foreign_key:public.b.b_a").unwrap();
        assert_eq!(step.action, Action::Conflict);
        assert!(step.note.as_deref().unwrap().contains("table public.a"), "{:?}", step.note);
        assert!(!p.steps.iter().any(|s| s.id == "schema:table:public.a"), "excluded table planned");
    }

    #[test]
    fn roles_missing_create_plans_create_role_first() {
        let s = spec("roles: {missing: create}");
        let mut t = table("t", "CREATE TABLE t (id int)", 0);
        t.owner = Some("Reporting Team".into());
        let mut source = catalog_with_role("app");
        source.roles.push(crate::catalog::Role {
            name: "Reporting Team".into(),
            inherit: true,
            connection_limit: -1,
            ..Default::default()
        });
        let mut target = catalog_with_role("app");
        target.server.is_superuser = true;
        let p = plan(Inputs {
            spec: &s,
            source: &source,
            target: &target,
            source_objects: &[t],
            target_objects: &[],
            checks: vec![],
            state: None,
            source_endpoint: "s".into(),
            target_endpoint: "t".into(),
        });
        assert_eq!(p.steps[0].id, "schema:role:Reporting Team");
        assert_eq!(p.steps[0].sql, "CREATE ROLE \"Reporting Team\" WITH NOLOGIN;");
    }

    #[test]
    fn fingerprint_changes_with_the_source_schema_and_with_source_rows() {
        let s = spec("");
        let base = plan_of(&s, &[table("t", "CREATE TABLE t (id int)", 0)], &[], &[]);
        let altered = plan_of(&s, &[table("t", "CREATE TABLE t (id int, x int)", 0)], &[], &[]);
        let filled = plan_of(&s, &[table("t", "CREATE TABLE t (id int)", 0)], &[], &["public.t"]);
        assert_ne!(base.fingerprint.source, altered.fingerprint.source);
        assert_ne!(base.fingerprint.source, filled.fingerprint.source);
        assert_eq!(base.fingerprint.target, altered.fingerprint.target);
    }
}
