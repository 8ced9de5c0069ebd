//! Preflight checks: can this migration work between these two servers, and what must change
//! first? Pure functions over the migration plan and the two catalogs (no I/O), returning every
//! finding at once, each with a stable code, a severity, the object, a message and the fix.
//!
//! The codes are part of pgtransit's interface (scripts match on them): never rename one; add
//! new ones. The README lists them.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Catalog, RelKind, Relation};
use crate::check::{Check, Severity};
use crate::migration_plan::{KeylessTables, MigrationPlan, MissingRoles, Mode};
use crate::scope::Scope;
use crate::sql::{display, ident, literal, qualified_ident};

/// Oldest source major version pgtransit supports (logical decoding with pgoutput).
pub const MIN_SOURCE_MAJOR: i32 = 10;
/// Oldest source major version the test suite covers.
pub const MIN_TESTED_MAJOR: i32 = 13;

struct Findings(Vec<Check>);

impl Findings {
    fn add(
        &mut self,
        code: &'static str,
        severity: Severity,
        object: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            code: code.to_string(),
            severity,
            object: object.into(),
            message: message.into(),
            fix,
        });
    }
}

/// A server could not be reached or read: the finding that stands in for all its checks.
pub fn unreachable(which: Side, message: String, fix: Option<String>) -> Check {
    let code = match which {
        Side::Source => "source_unreachable",
        Side::Target => "target_unreachable",
    };
    Check {
        code: code.to_string(),
        severity: Severity::Error,
        object: which.to_string(),
        message,
        fix,
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the data comes from.
    Source,
    /// Where it goes.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// The relations of `cat` in the migration's scope (extension members excluded: `CREATE
/// EXTENSION` makes those).
pub fn relations_in_scope<'a>(cat: &'a Catalog, scope: &Scope) -> Vec<&'a Relation> {
    cat.relations
        .iter()
        .filter(|r| r.extension.is_none() && scope.table_in_scope(&r.schema, &r.name))
        .collect()
}

/// Runs every check. A catalog is `None` when its server could not be read (the caller adds
/// that finding): checks needing it are skipped, all others still run.
pub fn run(spec: &MigrationPlan, source: Option<&Catalog>, target: Option<&Catalog>) -> Vec<Check> {
    let scope = Scope::new(&spec.objects);
    let mut f = Findings(vec![]);
    if let Some(src) = source {
        check_dump(&mut f, Side::Source, src, &spec.roles.map);
        check_scope(&mut f, &scope, src);
        check_source_version(&mut f, src);
        if spec.mode == Mode::Online {
            check_replication(&mut f, spec, src);
        }
        check_source_privileges(&mut f, &scope, src);
        check_keys(&mut f, spec, &scope, src);
        check_notable_objects(&mut f, spec, &scope, src);
        check_database_name(&mut f, Side::Source, src);
    }
    if let Some(tgt) = target {
        if !tgt.dump.needed_for.is_empty() {
            check_dump(&mut f, Side::Target, tgt, &spec.roles.map);
        }
        check_database_name(&mut f, Side::Target, tgt);
        check_target_settings(&mut f, tgt);
        if spec.mode == Mode::Online {
            check_target_apply_role(&mut f, tgt);
            if spec.cutover.rollback_window {
                check_rollback_window(&mut f, spec, tgt);
            }
        }
    }
    if let (Some(src), Some(tgt)) = (source, target) {
        check_versions(&mut f, spec, src, tgt);
        check_extensions(&mut f, &scope, src, tgt);
        check_roles(&mut f, spec, &scope, src, tgt);
        check_encoding(&mut f, src, tgt);
        check_target_privileges(&mut f, &scope, src, tgt);
        check_target_objects(&mut f, &scope, tgt);
        check_row_security(&mut f, spec, &scope, src, tgt);
    }
    let mut checks = f.0;
    // Errors first, then warnings, then info; the order within a severity is the order above.
    checks.sort_by_key(|c| c.severity);
    checks
}

/// The state against the servers: a state written for another migration or other servers is
/// refused (`state_mismatch`); so is a missing state while the source holds this migration's
/// slot (`state_missing`: an earlier apply ran from another state directory, or the state was
/// lost), as planning afresh would then ignore what that apply did.
pub fn check_state(
    spec: &MigrationPlan,
    state: Option<&crate::state::State>,
    state_file: &std::path::Path,
    source: Option<&Catalog>,
    target: Option<&Catalog>,
) -> Vec<Check> {
    let mut f = Findings(vec![]);
    let file = state_file.display().to_string();
    match state {
        Some(st) => {
            let sysid = |c: Option<&Catalog>| c.and_then(|c| c.server.system_identifier.clone());
            let db = |c: Option<&Catalog>| c.map(|c| c.server.database.clone());
            let (ss, ts, sd, td) = (sysid(source), sysid(target), db(source), db(target));
            if let Err(e) = st.check_belongs(
                state_file,
                &spec.name.value,
                ss.as_deref(),
                ts.as_deref(),
                (sd.as_deref(), td.as_deref()),
            ) {
                let fix = miette::Diagnostic::help(&e).map(|h| h.to_string());
                f.add("state_mismatch", Severity::Error, file, e.to_string(), fix);
            }
        }
        // (A rollback window's slot is created by the cutover, before its migration's first
        // apply.)
        None if spec.rollback_of.is_some() => {}
        None => {
            let slot = crate::naming::slot_name(&spec.name.value);
            if let Some(src) = source
                && src.replication_slots.iter().any(|s| s.name == slot)
            {
                f.add(
                    "state_missing",
                    Severity::Error,
                    file,
                    format!(
                        "there is no state in {}, but the source holds replication slot {slot}: \
                         an earlier apply of this migration ran, and its state is elsewhere or lost",
                        state_file.display()
                    ),
                    Some(
                        "run pgtransit where that state is (`state_dir` in the migration plan), \
                         or put the state file back; to start over instead, `pgtransit abort` \
                         removes the slot and publication, then empty the target's tables"
                            .into(),
                    ),
                );
            }
        }
    }
    f.0
}

fn setting_i64(cat: &Catalog, name: &str) -> Option<i64> {
    cat.settings.get(name).and_then(|v| v.parse().ok())
}

fn version_text(cat: &Catalog) -> String {
    let v = cat.server.version_num;
    if v >= 100000 {
        format!("{}.{}", v / 10000, v % 10000)
    } else {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }
}

fn check_scope(f: &mut Findings, scope: &Scope, src: &Catalog) {
    let schemas: Vec<&str> = src.schemas.iter().map(|s| s.name.as_str()).collect();
    let tables: Vec<(&str, &str)> =
        src.relations.iter().map(|r| (r.schema.as_str(), r.name.as_str())).collect();
    for pattern in scope.unmatched_patterns(&schemas, &tables) {
        f.add(
            "scope_pattern_unmatched",
            Severity::Error,
            format!("pattern {pattern}"),
            format!("the objects pattern `{pattern}` matches nothing on the source"),
            Some(
                "fix the pattern in `objects:` (names are case-sensitive; write schema.table) or \
                 remove it"
                    .into(),
            ),
        );
    }
    let in_scope = relations_in_scope(src, scope);
    let tables: Vec<_> = in_scope.iter().filter(|r| r.kind == RelKind::Table).collect();
    if tables.is_empty() {
        f.add(
            "scope_empty",
            Severity::Warning,
            "source",
            "no table of the source is in scope: there is no data to move",
            Some("check `objects:` in the migration plan".into()),
        );
    } else {
        let rows: i64 = tables.iter().map(|r| r.estimated_rows).sum();
        let bytes: i64 = tables.iter().map(|r| r.bytes).sum();
        let schemas: BTreeSet<&str> = in_scope.iter().map(|r| r.schema.as_str()).collect();
        f.add(
            "scope",
            Severity::Info,
            "source",
            format!(
                "{} tables in {} schemas are in scope: about {} rows, {}",
                tables.len(),
                schemas.len(),
                thousands(rows),
                human_bytes(bytes)
            ),
            None,
        );
    }
}

/// `21200` → `21,200`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `1234567` → `1.2 MB`.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[u]) }
}

fn check_source_version(f: &mut Findings, src: &Catalog) {
    let major = src.server.major();
    if major < MIN_SOURCE_MAJOR {
        f.add(
            "source_version_unsupported",
            Severity::Error,
            "source",
            format!(
                "the source runs PostgreSQL {}; pgtransit needs {MIN_SOURCE_MAJOR} or later \
                 (logical decoding with pgoutput)",
                version_text(src)
            ),
            Some(format!("upgrade the source to PostgreSQL {MIN_SOURCE_MAJOR} or later first")),
        );
    } else if major < MIN_TESTED_MAJOR {
        f.add(
            "source_version_untested",
            Severity::Warning,
            "source",
            format!(
                "the source runs PostgreSQL {}; pgtransit is tested from {MIN_TESTED_MAJOR} on",
                version_text(src)
            ),
            None,
        );
    }
}

fn check_versions(f: &mut Findings, spec: &MigrationPlan, src: &Catalog, tgt: &Catalog) {
    if tgt.server.major() < src.server.major() && spec.rollback_of.is_some() {
        // The window streams rows back to the old source, whose schema they came from.
        f.add(
            "versions",
            Severity::Info,
            "servers",
            format!(
                "PostgreSQL {} → {}: the rollback window streams rows back to the older major \
                 its schema came from (no DDL)",
                version_text(src),
                version_text(tgt)
            ),
            None,
        );
    } else if tgt.server.major() < src.server.major() {
        f.add(
            "target_version_older",
            Severity::Error,
            "target",
            format!(
                "the target runs PostgreSQL {}, older than the source's {}: pgtransit moves \
                 databases to the same or a newer major version",
                version_text(tgt),
                version_text(src)
            ),
            Some(format!("use a target running PostgreSQL {} or later", src.server.major())),
        );
    } else {
        f.add(
            "versions",
            Severity::Info,
            "servers",
            format!("PostgreSQL {} → {}", version_text(src), version_text(tgt)),
            None,
        );
    }
}

/// Continuous verification takes each consistent point with a temporary slot, on a
/// replication session of its own: one more slot and WAL sender than the stream's, for a
/// moment. Without them it cannot prove anything, and the cutover compares every row inside
/// its fence.
fn check_proof_slot(f: &mut Findings, spec: &MigrationPlan, src: &Catalog, ours: bool) {
    if !(spec.verify.continuous && spec.verify.checksums) {
        return;
    }
    let slot_name = crate::naming::slot_name(&spec.name.value);
    let streaming = src.replication_slots.iter().any(|s| s.name == slot_name && s.active);
    let slots = src.replication_slots.len() as i64 + i64::from(!ours) + 1;
    let senders = src.active_wal_senders + if streaming { 1 } else { 2 };
    let (max_slots, max_senders) =
        (setting_i64(src, "max_replication_slots"), setting_i64(src, "max_wal_senders"));
    let short: Vec<String> = [
        max_slots
            .filter(|m| slots > *m)
            .map(|m| format!("max_replication_slots = {slots} (now {m})")),
        max_senders
            .filter(|m| senders > *m)
            .map(|m| format!("max_wal_senders = {senders} (now {m})")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if short.is_empty() {
        return;
    }
    f.add(
        "continuous_verification_without_slot",
        Severity::Warning,
        "source",
        format!(
            "continuous verification needs one more replication slot and WAL sender than the \
             stream, for a moment at each consistent point; without them the cutover compares \
             every row inside its fence (its write gap grows with the data): {}",
            short.join(", ")
        ),
        Some(format!(
            "{}; then restart the source (needs a restart), or set verify.continuous: false",
            short
                .iter()
                .map(|s| format!("ALTER SYSTEM SET {}", s.split(" (").next().unwrap_or(s)))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    );
}

fn check_replication(f: &mut Findings, spec: &MigrationPlan, src: &Catalog) {
    if src.server.version_num < 140000 {
        f.add(
            "source_version_online_unsupported",
            Severity::Error,
            "source",
            format!(
                "online mode needs a source of PostgreSQL 14 or newer (this one runs {}): 13's \
                 pgoutput has no `messages` option, and pgtransit's lag heartbeat and cutover \
                 barrier are logical messages",
                version_text(src)
            ),
            Some(
                "use `mode: offline` (with the applications stopped), or upgrade the source to \
                 PostgreSQL 14 or newer first"
                    .into(),
            ),
        );
    }
    let wal_level = src.settings.get("wal_level").map(String::as_str).unwrap_or("unknown");
    if wal_level != "logical" {
        f.add(
            "wal_level_not_logical",
            Severity::Error,
            "source",
            format!(
                "wal_level is `{wal_level}`; online mode streams changes with logical \
                 decoding, which needs `logical`"
            ),
            Some(
                "ALTER SYSTEM SET wal_level = logical; then restart the source server (the \
                 setting needs a restart). On managed services set the parameter instead \
                 (RDS/Aurora: rds.logical_replication = 1; Azure: wal_level = logical; Cloud \
                 SQL: cloudsql.logical_decoding = on). Or use `mode: offline`."
                    .into(),
            ),
        );
    }
    let slot_name = crate::naming::slot_name(&spec.name.value);
    let ours = src.replication_slots.iter().any(|s| s.name == slot_name);
    let used = src.replication_slots.len() as i64;
    if let Some(max) = setting_i64(src, "max_replication_slots")
        && !ours
        && used >= max
    {
        {
            f.add(
                "no_free_replication_slot",
                Severity::Error,
                "source",
                format!(
                    "all {max} replication slots (max_replication_slots) are in use; pgtransit \
                     needs one"
                ),
                Some(format!(
                    "ALTER SYSTEM SET max_replication_slots = {}; then restart the source (needs \
                     a restart), or drop an unused slot: SELECT pg_drop_replication_slot('...');",
                    used + 1
                )),
            );
        }
    }
    if let Some(max) = setting_i64(src, "max_wal_senders")
        && src.active_wal_senders >= max
    {
        {
            f.add(
                "no_free_wal_sender",
                Severity::Error,
                "source",
                format!(
                    "all {max} WAL senders (max_wal_senders) are busy; pgtransit's change \
                     stream needs one"
                ),
                Some(format!(
                    "ALTER SYSTEM SET max_wal_senders = {}; then restart the source (needs a \
                     restart)",
                    src.active_wal_senders + 1
                )),
            );
        }
    }
    check_proof_slot(f, spec, src, ours);
    if ours {
        f.add(
            "replication_slot_exists",
            Severity::Info,
            "source",
            format!(
                "the replication slot {slot_name} exists: it belongs to this migration and \
                 will be reused"
            ),
            None,
        );
    }
    if !src.server.can_replicate {
        let user = &src.server.current_user;
        f.add(
            "source_role_cannot_replicate",
            Severity::Error,
            format!("role {}", display(user)),
            format!(
                "the source role {} has neither REPLICATION nor SUPERUSER: it cannot create a \
                 replication slot or stream changes",
                display(user)
            ),
            Some(format!(
                "ALTER ROLE {} REPLICATION; (on RDS/Aurora: GRANT rds_replication TO {};)",
                ident(user),
                ident(user)
            )),
        );
    }
}

/// `cutover.rollback_window`: the target streams its changes back after the cutover, so it
/// needs what a source of online mode needs (logical WAL, a role that may replicate, a free slot
/// and WAL sender), known before the cutover rather than found at it.
fn check_rollback_window(f: &mut Findings, spec: &MigrationPlan, tgt: &Catalog) {
    let mut need = |code: &'static str, message: String, fix: String| {
        f.add(code, Severity::Error, "target", message, Some(fix));
    };
    if tgt.server.version_num < 140000 {
        need(
            "rollback_window_target_version",
            format!(
                "the rollback window streams the target's changes back, which needs a target of \
                 PostgreSQL 14 or newer (this one runs {})",
                version_text(tgt)
            ),
            "cutover.rollback_window: false".into(),
        );
    }
    let wal_level = tgt.settings.get("wal_level").map(String::as_str).unwrap_or("unknown");
    if wal_level != "logical" {
        need(
            "rollback_window_wal_level",
            format!(
                "the rollback window streams the target's changes back with logical decoding, \
                 which needs wal_level = logical on the target (it is `{wal_level}`)"
            ),
            "ALTER SYSTEM SET wal_level = logical; then restart the target (before the \
             cutover), or cutover.rollback_window: false"
                .into(),
        );
    }
    if !tgt.server.can_replicate {
        need(
            "rollback_window_replication_role",
            format!(
                "the rollback window's stream reads the target as {}, which may not open \
                 replication connections",
                crate::sql::display(&tgt.server.current_user)
            ),
            format!(
                "ALTER ROLE {} REPLICATION;  -- on the target, or cutover.rollback_window: false",
                crate::sql::ident(&tgt.server.current_user)
            ),
        );
    }
    let mut mapped: BTreeMap<&String, &String> = BTreeMap::new();
    for (from, to) in &spec.roles.map {
        if let Some(other) = mapped.insert(to, from) {
            need(
                "rollback_window_roles_map",
                format!(
                    "roles.map maps {} and {} to {}: the window streams back with the map \
                     inverted, which cannot tell which of them to give back",
                    crate::sql::display(other),
                    crate::sql::display(from),
                    crate::sql::display(to)
                ),
                "map each source role to a role of its own, or cutover.rollback_window: false"
                    .into(),
            );
        }
    }
    let slot = crate::naming::slot_name(&crate::rollback::reverse_name(&spec.name.value));
    let ours = tgt.replication_slots.iter().any(|s| s.name == slot);
    let used = tgt.replication_slots.len() as i64;
    if let Some(max) = setting_i64(tgt, "max_replication_slots")
        && !ours
        && used >= max
    {
        need(
            "rollback_window_no_slot",
            format!(
                "all {max} replication slots of the target (max_replication_slots) are in use; \
                 the rollback window needs one"
            ),
            format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart the target",
                used + 1
            ),
        );
    }
    if let Some(max) = setting_i64(tgt, "max_wal_senders")
        && tgt.active_wal_senders >= max
    {
        need(
            "rollback_window_no_wal_sender",
            format!(
                "all {max} WAL senders of the target (max_wal_senders) are busy; the rollback \
                 window's stream needs one"
            ),
            format!(
                "ALTER SYSTEM SET max_wal_senders = {}; then restart the target",
                tgt.active_wal_senders + 1
            ),
        );
    }
}

fn check_source_privileges(f: &mut Findings, scope: &Scope, src: &Catalog) {
    let user = ident(&src.server.current_user);
    for s in src.schemas.iter().filter(|s| scope.schema_in_scope(&s.name) && !s.can_use) {
        f.add(
            "source_schema_not_readable",
            Severity::Error,
            format!("schema {}", display(&s.name)),
            format!("the source role may not use schema {}", display(&s.name)),
            Some(format!("GRANT USAGE ON SCHEMA {} TO {user};", ident(&s.name))),
        );
    }
    for r in relations_in_scope(src, scope) {
        if r.readable || !matches!(r.kind, RelKind::Table | RelKind::Sequence) {
            continue;
        }
        let what = if r.kind == RelKind::Sequence { "SEQUENCE " } else { "" };
        f.add(
            "source_relation_not_readable",
            Severity::Error,
            format!("{} {}", r.kind.describe(), r.qualified()),
            format!("the source role may not read {} {}", r.kind.describe(), r.qualified()),
            Some(format!(
                "GRANT SELECT ON {what}{} TO {user};",
                qualified_ident(&r.schema, &r.name)
            )),
        );
    }
}

/// Row-level security: a role it applies to reads (and changes) only the rows its policies let
/// through, so a copy or a verification through it would be partial and look complete. Every
/// pgtransit session also runs with `row_security = off`, which makes such a query fail rather
/// than filter; this check says so before anything runs.
fn check_row_security(
    f: &mut Findings,
    spec: &MigrationPlan,
    scope: &Scope,
    src: &Catalog,
    tgt: &Catalog,
) {
    let tables = || relations_in_scope(src, scope).into_iter().filter(|r| r.kind == RelKind::Table);
    for r in tables().filter(|r| r.row_security_applies) {
        f.add(
            "source_row_security",
            Severity::Error,
            format!("table {}", r.qualified()),
            format!(
                "row-level security applies to the source role {} on {}: it would copy only the \
                 rows the table's policies show it",
                display(&src.server.current_user),
                r.qualified()
            ),
            Some(format!(
                "ALTER ROLE {} BYPASSRLS; (as a superuser), or migrate as the table's owner {}",
                ident(&src.server.current_user),
                display(&r.owner)
            )),
        );
    }
    let user = &tgt.server.current_user;
    for r in tables() {
        let on_target = tgt.relations.iter().find(|t| t.schema == r.schema && t.name == r.name);
        let applies = match on_target {
            Some(t) => t.row_security_applies,
            // Created with the source's settings and owner (mapped).
            None => {
                let owner = spec.roles.map.get(&r.owner).unwrap_or(&r.owner);
                let exists = tgt.roles.iter().any(|t| t.name == *owner);
                // Owned by the connecting role, one whose privileges it has, or (a missing
                // owner with `roles.missing: skip`) the connecting role itself.
                let owns = owner == user
                    || tgt.roles.iter().any(|t| t.name == *owner && t.has_privileges_of)
                    || !exists && spec.roles.missing == MissingRoles::Skip;
                r.row_security && !tgt.server.bypass_rls && (r.row_security_forced || !owns)
            }
        };
        if applies {
            f.add(
                "target_row_security",
                Severity::Error,
                format!("table {}", r.qualified()),
                format!(
                    "row-level security will apply to the target role {} on {}: loading, \
                     changes and verification would see only the rows its policies allow",
                    display(user),
                    r.qualified()
                ),
                Some(format!("ALTER ROLE {} BYPASSRLS; (as a superuser)", ident(user))),
            );
        }
    }
}

/// pg_dump: the DDL of the objects pgtransit takes from it, and the yardstick of coverage.
fn check_dump(f: &mut Findings, side: Side, cat: &Catalog, roles: &BTreeMap<String, String>) {
    let d = &cat.dump;
    if let Some(problem) = &d.problem {
        let major = cat.server.major();
        let fix = if d.failed {
            format!(
                "pg_dump ran as the {side} role and failed: let the role read every schema in \
                 scope (USAGE on the schemas, SELECT on their tables and sequences), or exclude \
                 what it may not read in objects:"
            )
        } else {
            crate::dump::install_hint(major)
        };
        if d.needed_for.is_empty() {
            f.add(
                "pg_dump_unavailable",
                Severity::Warning,
                format!("{side} schema"),
                format!(
                    "{problem}: the {side}'s schema was not cross-checked against pg_dump's, so \
                     an object of a kind pgtransit does not migrate would not be named here"
                ),
                Some(fix),
            );
        } else {
            f.add(
                "pg_dump_unavailable",
                Severity::Error,
                examples(&d.needed_for),
                format!(
                    "{problem}: the {side} has {} whose DDL pgtransit takes from pg_dump",
                    plural(d.needed_for.len(), "object")
                ),
                Some(fix),
            );
        }
    }
    // What the target's own pg_dump says is only for comparing: what to create comes from the
    // source's.
    if side == Side::Target {
        return;
    }
    for tag in &d.passwords_left_out {
        // `USER MAPPING <user> SERVER <server>`
        let names = tag.strip_prefix("USER MAPPING ").and_then(|t| t.split_once(" SERVER "));
        let (user, server) = names.unwrap_or(("<user>", "<server>"));
        let user = match roles.get(user) {
            _ if user == "public" => "PUBLIC".to_string(),
            Some(mapped) => ident(mapped),
            None => ident(user),
        };
        f.add(
            "user_mapping_password",
            Severity::Warning,
            format!("user mapping for {user} on server {}", display(server)),
            format!(
                "the user mapping for {user} on server {} has a password option: it is created \
                 on the target without it (pgtransit never writes a password into a plan or a \
                 state)",
                display(server)
            ),
            Some(format!(
                "after apply, on the target: ALTER USER MAPPING FOR {user} SERVER {} OPTIONS \
                 (ADD password '...');",
                ident(server)
            )),
        );
    }
    for name in &d.subscriptions {
        f.add(
            "subscription_not_migrated",
            Severity::Warning,
            format!("subscription {}", display(name)),
            format!(
                "subscription {} is not created on the target: it would start pulling changes \
                 from its publisher there",
                display(name)
            ),
            Some(
                "once the target is the primary, recreate the subscription there if it should \
                 follow its publisher (CREATE SUBSCRIPTION ... WITH (copy_data = false) to start \
                 where the source's left off), and drop it on the source"
                    .into(),
            ),
        );
    }
    for (what, schema) in &d.not_migrated {
        let object =
            if schema.is_empty() { what.clone() } else { format!("{what} (schema {schema})") };
        f.add(
            "object_not_migrated",
            Severity::Error,
            &object,
            format!(
                "pg_dump dumps {object}, which pgtransit does not migrate: the target would lack it"
            ),
            Some(
                "create it on the target yourself once the schema is there (`pg_dump \
                 --schema-only` of the source shows its SQL), or drop it on the source; then plan \
                 again"
                    .into(),
            ),
        );
    }
}

fn check_keys(f: &mut Findings, spec: &MigrationPlan, scope: &Scope, src: &Catalog) {
    for r in relations_in_scope(src, scope) {
        if spec.mode == Mode::Online && r.kind == RelKind::Table && r.key_has_generated_column {
            f.add(
                "table_key_generated",
                Severity::Error,
                format!("table {}", r.qualified()),
                format!(
                    "the replica identity of {} has a generated column, which logical decoding \
                     never sends: its updates and deletes could not be matched on the target",
                    r.qualified()
                ),
                Some(format!(
                    "ALTER TABLE ONLY {} REPLICA IDENTITY FULL; (on the source: rows are then \
                     matched on every column that is sent)",
                    qualified_ident(&r.schema, &r.name)
                )),
            );
        }
        if r.kind != RelKind::Table || r.has_usable_replica_identity() {
            continue;
        }
        let object = format!("table {}", r.qualified());
        let name = qualified_ident(&r.schema, &r.name);
        match (spec.mode, spec.sync.tables_without_key) {
            (Mode::Offline, _) => f.add(
                "table_without_key",
                Severity::Info,
                object,
                format!(
                    "{} has no primary key: it is copied as is, and verification compares \
                     whole rows",
                    r.qualified()
                ),
                None,
            ),
            (Mode::Online, KeylessTables::ReplicaIdentityFull) => f.add(
                "table_without_key",
                Severity::Warning,
                object,
                format!(
                    "{} has no primary key or replica identity: pgtransit will set REPLICA \
                     IDENTITY FULL on the source (sync.tables_without_key), so updates and \
                     deletes log the whole old row (more WAL)",
                    r.qualified()
                ),
                None,
            ),
            (Mode::Online, KeylessTables::Error) => f.add(
                "table_without_key",
                Severity::Error,
                object,
                format!(
                    "{} has no primary key or replica identity: once it is published, UPDATE and \
                     DELETE on it fail on the source, and changes cannot be matched on the target",
                    r.qualified()
                ),
                Some(format!(
                    "ALTER TABLE {name} ADD PRIMARY KEY (...); or ALTER TABLE {name} REPLICA \
                     IDENTITY USING INDEX <unique index on NOT NULL columns>; or set \
                     `sync.tables_without_key: replica_identity_full` in the migration plan, or \
                     exclude the table in `objects.tables.exclude`"
                )),
            ),
        }
    }
}

fn check_notable_objects(f: &mut Findings, spec: &MigrationPlan, scope: &Scope, src: &Catalog) {
    let online = spec.mode == Mode::Online;
    let in_scope = relations_in_scope(src, scope);
    if src.large_objects.count > 0 {
        let (severity, message) = if online {
            (
                Severity::Warning,
                format!(
                    "{} large objects: logical decoding does not carry large objects, so they \
                     are copied once during the load and later changes to them are not streamed",
                    src.large_objects.count
                ),
            )
        } else {
            (Severity::Info, format!("{} large objects will be copied", src.large_objects.count))
        };
        f.add("large_objects_present", severity, "source", message, None);
    }
    for r in &in_scope {
        let object = format!("{} {}", r.kind.describe(), r.qualified());
        if r.unlogged && r.kind == RelKind::Table {
            let (severity, message) = if online {
                (
                    Severity::Warning,
                    format!(
                        "{} is UNLOGGED: its changes are not in the WAL, so it is copied during \
                         the load but not kept in sync afterwards",
                        r.qualified()
                    ),
                )
            } else {
                (
                    Severity::Info,
                    format!("{} is UNLOGGED; it is created UNLOGGED and copied", r.qualified()),
                )
            };
            f.add("unlogged_table", severity, &object, message, None);
        }
        match r.kind {
            RelKind::ForeignTable => f.add(
                "foreign_table",
                Severity::Warning,
                &object,
                format!(
                    "{} is a foreign table: it is created on the target with its server and user \
                     mappings (from pg_dump's DDL), and its data stays on the remote server, \
                     which the target must reach",
                    r.qualified()
                ),
                Some(
                    "check that the target reaches the remote server, and set any user mapping's \
                     password on the target (pgtransit never copies passwords)"
                        .into(),
                ),
            ),
            RelKind::MaterializedView => f.add(
                "materialized_view",
                Severity::Info,
                &object,
                format!("{} is created after the load and refreshed on the target", r.qualified()),
                None,
            ),
            RelKind::PartitionedTable => f.add(
                "partitioned_table",
                Severity::Info,
                &object,
                format!(
                    "{} is partitioned: its partitions are created, copied and streamed one by \
                     one",
                    r.qualified()
                ),
                None,
            ),
            _ => {}
        }
        if !r.generated_columns.is_empty() {
            f.add(
                "generated_columns",
                Severity::Info,
                &object,
                format!(
                    "generated columns {} are not copied: the target computes them",
                    r.generated_columns.iter().map(|c| display(c)).collect::<Vec<_>>().join(", ")
                ),
                None,
            );
        }
        if !r.identity_columns.is_empty() {
            f.add(
                "identity_columns",
                Severity::Info,
                &object,
                format!(
                    "identity columns {} keep their values; their sequences are set on the \
                     target from the source's",
                    r.identity_columns.iter().map(|c| display(c)).collect::<Vec<_>>().join(", ")
                ),
                None,
            );
        }
    }
    let ours = crate::naming::publication_name(&spec.name.value);
    for p in src.publications.iter().filter(|p| **p != ours && !p.starts_with("pgtransit_")) {
        f.add(
            "publication",
            Severity::Info,
            format!("publication {}", display(p)),
            format!(
                "publication {} is created on the target after the data (from pg_dump's DDL); \
                 subscribers keep following the source until they are pointed at the target",
                display(p)
            ),
            None,
        );
    }
    // Names that differ only by case: both move (every identifier is quoted), but anything
    // that folds case (unquoted SQL, some tools and ORMs) sees one name for two objects.
    let mut by_folded: BTreeMap<(String, String), Vec<&Relation>> = BTreeMap::new();
    for r in &in_scope {
        by_folded.entry((r.schema.to_lowercase(), r.name.to_lowercase())).or_default().push(r);
    }
    for group in by_folded.values().filter(|g| g.len() > 1) {
        let names: Vec<String> = group.iter().map(|r| r.qualified()).collect();
        f.add(
            "case_colliding_names",
            Severity::Warning,
            names.join(", "),
            format!(
                "{} differ only by case: pgtransit quotes every identifier so each moves as \
                 itself, but unquoted SQL and case-folding tools will confuse them",
                names.join(" and ")
            ),
            None,
        );
    }
}

fn check_database_name(f: &mut Findings, side: Side, cat: &Catalog) {
    let db = &cat.server.database;
    if db.contains(';') || db.contains('\'') || db.contains('"') {
        f.add(
            "database_name_special",
            Severity::Warning,
            format!("{side} database {}", display(db)),
            format!(
                "the {side} database name {} contains `;` or quotes: pgtransit quotes it, but \
                 shell scripts and other tools around the migration may break on it",
                ident(db)
            ),
            None,
        );
    }
}

fn check_target_settings(f: &mut Findings, tgt: &Catalog) {
    if let Some(n) = setting_i64(tgt, "max_worker_processes")
        && n < 4
    {
        f.add(
            "target_few_worker_processes",
            Severity::Warning,
            "target",
            format!(
                "max_worker_processes is {n} on the target: index builds after the load cannot \
                 use parallel workers"
            ),
            Some(
                "ALTER SYSTEM SET max_worker_processes = 8; then restart the target (needs a \
                 restart)"
                    .into(),
            ),
        );
    }
}

/// Online mode: the stream's target session sets `session_replication_role` (so target triggers
/// and foreign keys do not fire for replicated rows) and uses a replication origin: superuser
/// things, which PostgreSQL 15 lets a superuser grant.
fn check_target_apply_role(f: &mut Findings, tgt: &Catalog) {
    if tgt.server.is_superuser {
        return;
    }
    let user = ident(&tgt.server.current_user);
    let grantable = tgt.server.version_num >= 150000;
    f.add(
        "target_apply_privileges",
        if grantable { Severity::Warning } else { Severity::Error },
        "target",
        format!(
            "the target role {} is not a superuser: change streaming sets \
             session_replication_role = replica and records its position with a replication \
             origin{}",
            display(&tgt.server.current_user),
            if grantable {
                ", which need the grants below"
            } else {
                ", which only a superuser may do before PostgreSQL 15"
            }
        ),
        Some(if grantable {
            format!(
                "GRANT SET ON PARAMETER session_replication_role TO {user}; GRANT EXECUTE ON \
                 FUNCTION pg_replication_origin_create(text), pg_replication_origin_drop(text), \
                 pg_replication_origin_session_setup(text), \
                 pg_replication_origin_xact_setup(pg_lsn, timestamptz), \
                 pg_replication_origin_progress(text, boolean) TO {user}; (or migrate as the \
                 provider's admin role: rds_superuser, azure_pg_admin, cloudsqlsuperuser)"
            )
        } else {
            "connect to the target as a superuser (or the provider's admin role)".to_string()
        }),
    );
}

fn check_extensions(f: &mut Findings, scope: &Scope, src: &Catalog, tgt: &Catalog) {
    for ext in &src.extensions {
        if ext.name == "plpgsql"
            || !scope.schema_in_scope(&ext.schema) && ext.schema != "pg_catalog"
        {
            continue;
        }
        let installed = tgt.extensions.iter().find(|e| e.name == ext.name);
        let available = tgt.available_extensions.get(&ext.name);
        let object = format!("extension {}", ext.name);
        match (installed, available) {
            (Some(t), _) if t.version == ext.version => {}
            (Some(t), _) => f.add(
                "extension_version_differs",
                Severity::Warning,
                object,
                format!(
                    "extension {} is {} on the source and {} on the target",
                    ext.name, ext.version, t.version
                ),
                Some(format!(
                    "ALTER EXTENSION {} UPDATE;  -- on whichever side is older",
                    ident(&ext.name)
                )),
            ),
            (None, None) => f.add(
                "extension_unavailable",
                Severity::Error,
                object,
                format!(
                    "extension {} {} is installed on the source but not available on the \
                     target server",
                    ext.name, ext.version
                ),
                Some(format!(
                    "install it on the target server (Debian/Ubuntu: the \
                     postgresql-{}-{} or postgresql-contrib package; managed services: allow it \
                     in the parameters, e.g. azure.extensions), or exclude the objects that use it",
                    tgt.server.major(),
                    ext.name
                )),
            ),
            (None, Some(versions)) if !versions.contains(&ext.version) => f.add(
                "extension_version_unavailable",
                Severity::Warning,
                object,
                format!(
                    "extension {} is {} on the source; the target offers {}: the target's \
                     default version will be installed",
                    ext.name,
                    ext.version,
                    versions.join(", ")
                ),
                None,
            ),
            (None, Some(_)) => {}
        }
    }
}

fn check_roles(
    f: &mut Findings,
    spec: &MigrationPlan,
    scope: &Scope,
    src: &Catalog,
    tgt: &Catalog,
) {
    // role → what it owns, and what it is granted privileges on, in scope.
    let add = |role: &str, what: String, uses: &mut BTreeMap<String, Vec<String>>| {
        if role != "PUBLIC" {
            uses.entry(role.to_string()).or_default().push(what);
        }
    };
    let mut owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut granted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in src.schemas.iter().filter(|s| s.extension.is_none() && scope.schema_in_scope(&s.name))
    {
        let what = format!("schema {}", display(&s.name));
        add(&s.owner, what.clone(), &mut owned);
        for g in &s.grantees {
            add(g, what.clone(), &mut granted);
        }
    }
    for r in relations_in_scope(src, scope) {
        let what = format!("{} {}", r.kind.describe(), r.qualified());
        add(&r.owner, what.clone(), &mut owned);
        for g in &r.grantees {
            add(g, what.clone(), &mut granted);
        }
    }
    for o in src.routines_and_types.iter().filter(|o| scope.schema_in_scope(&o.schema)) {
        let what = format!("{} {}", o.kind, o.name);
        add(&o.owner, what.clone(), &mut owned);
        for g in &o.grantees {
            add(g, what.clone(), &mut granted);
        }
    }
    for owner in &src.large_objects.owners {
        add(owner, "large objects".into(), &mut owned);
    }
    for (role, what) in &src.dump.roles {
        add(role, what.clone(), &mut owned);
    }
    let referenced: BTreeSet<&String> = owned.keys().chain(granted.keys()).collect();
    // What the roles and the database carry, and what not, the planner reports (its roles come
    // from every object in scope); the servers' parameters are preflight's.
    f.0.extend(crate::globals::server_differences(src, tgt));
    let exists = |name: &str| tgt.roles.iter().any(|r| r.name == name);
    for (from, to) in &spec.roles.map {
        if !src.roles.iter().any(|r| &r.name == from) {
            f.add(
                "role_mapping_unused",
                Severity::Warning,
                format!("role {}", display(from)),
                format!("roles.map names {}, which does not exist on the source", display(from)),
                Some("remove the entry or fix its name (role names are case-sensitive)".into()),
            );
        } else if !exists(to) {
            f.add(
                "role_mapping_target_missing",
                Severity::Error,
                format!("role {}", display(to)),
                format!(
                    "roles.map maps {} to {}, which does not exist on the target",
                    display(from),
                    display(to)
                ),
                Some(format!(
                    "CREATE ROLE {} NOLOGIN;  -- on the target, or fix roles.map",
                    ident(to)
                )),
            );
        }
    }
    for role in referenced {
        if spec.roles.map.contains_key(role) || exists(role) {
            continue;
        }
        let o = owned.get(role).map(Vec::as_slice).unwrap_or(&[]);
        let g = granted.get(role).map(Vec::as_slice).unwrap_or(&[]);
        let mut parts = vec![];
        if !o.is_empty() {
            parts.push(format!("owns {} ({})", plural(o.len(), "object"), examples(o)));
        }
        if !g.is_empty() {
            parts.push(format!(
                "is granted privileges on {} ({})",
                plural(g.len(), "object"),
                examples(g)
            ));
        }
        let object = format!("role {}", display(role));
        let what = format!("role {} {}", display(role), parts.join(" and "));
        if crate::globals::predefined(role) {
            // Another server's own role (a managed service's): never created elsewhere.
            f.add(
                "role_missing",
                Severity::Error,
                object,
                format!("{what}, but is a predefined or managed service's role the target lacks"),
                Some(format!("roles.map: {{ {}: <target role> }}", literal(role))),
            );
            continue;
        }
        match spec.roles.missing {
            MissingRoles::Error => f.add(
                "role_missing",
                Severity::Error,
                object,
                format!("{what}, but does not exist on the target"),
                Some(format!(
                    "CREATE ROLE {} NOLOGIN;  -- on the target; or map it: roles.map: {{ {}: \
                     <target role> }}; or set roles.missing: create | skip",
                    ident(role),
                    literal(role)
                )),
            ),
            MissingRoles::Create => f.add(
                "role_missing",
                Severity::Info,
                object,
                format!(
                    "{what}; pgtransit will create it on the target as on the source \
                     (roles.missing: create)"
                ),
                None,
            ),
            MissingRoles::Skip => f.add(
                "role_missing",
                Severity::Warning,
                object,
                format!(
                    "{what}; its objects will be owned by the target's connecting role {} and \
                     its grants left out (roles.missing: skip)",
                    display(&tgt.server.current_user)
                ),
                None,
            ),
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

fn examples(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
    if items.len() > 3 { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}

fn check_encoding(f: &mut Findings, src: &Catalog, tgt: &Catalog) {
    let (s, t) = (&src.server, &tgt.server);
    if s.encoding != t.encoding {
        if t.encoding == "UTF8" && s.encoding != "SQL_ASCII" {
            f.add(
                "encoding_differs",
                Severity::Warning,
                "servers",
                format!("the source database is {} and the target UTF8: text is converted to UTF8 as it is copied", s.encoding),
                None,
            );
        } else {
            f.add(
                "encoding_mismatch",
                Severity::Error,
                "target",
                format!(
                    "the source database is {} and the target {}: text may not convert, or may \
                     convert wrongly",
                    s.encoding, t.encoding
                ),
                Some(format!(
                    "create the target database with ENCODING '{}' (or UTF8): CREATE DATABASE \
                     {} ENCODING 'UTF8' TEMPLATE template0 LOCALE '...';",
                    s.encoding,
                    ident(&t.database)
                )),
            );
        }
    }
    if s.locale_provider != t.locale_provider {
        f.add(
            "collation_provider_differs",
            Severity::Warning,
            "servers",
            format!(
                "the source database uses the {} locale provider and the target {}: text may \
                 sort differently, so ORDER BY results and index order can change",
                s.locale_provider, t.locale_provider
            ),
            Some("create the target database with the same LOCALE_PROVIDER as the source".into()),
        );
    }
    if s.collate != t.collate || s.ctype != t.ctype || s.locale != t.locale {
        f.add(
            "collation_differs",
            Severity::Warning,
            "servers",
            format!(
                "the databases' locales differ (source LC_COLLATE {} LC_CTYPE {}, target {} and \
                 {}): text may sort and compare differently on the target",
                s.collate, s.ctype, t.collate, t.ctype
            ),
            Some(format!(
                "create the target database with LC_COLLATE {} LC_CTYPE {} TEMPLATE template0",
                literal(&s.collate),
                literal(&s.ctype)
            )),
        );
    }
}

fn check_target_privileges(f: &mut Findings, scope: &Scope, src: &Catalog, tgt: &Catalog) {
    let user = ident(&tgt.server.current_user);
    let needed: BTreeSet<&str> = relations_in_scope(src, scope)
        .iter()
        .map(|r| r.schema.as_str())
        .chain(
            src.schemas
                .iter()
                .filter(|s| s.extension.is_none() && scope.schema_in_scope(&s.name))
                .map(|s| s.name.as_str()),
        )
        .collect();
    for schema in needed {
        match tgt.schemas.iter().find(|s| s.name == schema) {
            Some(s) if !s.can_create && !tgt.server.is_superuser => f.add(
                "target_schema_not_writable",
                Severity::Error,
                format!("schema {}", display(schema)),
                format!(
                    "schema {} exists on the target but the target role {} may not create \
                     objects in it",
                    display(schema),
                    display(&tgt.server.current_user)
                ),
                Some(format!("GRANT CREATE, USAGE ON SCHEMA {} TO {user};", ident(schema))),
            ),
            None if !tgt.server.can_create_schema && !tgt.server.is_superuser => f.add(
                "target_cannot_create_schema",
                Severity::Error,
                format!("schema {}", display(schema)),
                format!(
                    "schema {} must be created on the target, but the target role {} may not \
                     create schemas in database {}",
                    display(schema),
                    display(&tgt.server.current_user),
                    display(&tgt.server.database)
                ),
                Some(format!(
                    "GRANT CREATE ON DATABASE {} TO {user};",
                    ident(&tgt.server.database)
                )),
            ),
            _ => {}
        }
    }
}

fn check_target_objects(f: &mut Findings, scope: &Scope, tgt: &Catalog) {
    let existing = relations_in_scope(tgt, scope);
    if existing.is_empty() {
        return;
    }
    let names: Vec<String> =
        existing.iter().map(|r| format!("{} {}", r.kind.describe(), r.qualified())).collect();
    f.add(
        "target_objects_exist",
        Severity::Warning,
        "target",
        format!(
            "{} in scope already exist on the target ({}): the execution plan compares them \
             with the source and never drops or overwrites them",
            plural(existing.len(), "relation"),
            examples(&names)
        ),
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Extension, Role, Server};
    use crate::check::has_errors;

    fn spec(extra: &str) -> MigrationPlan {
        let text = format!(
            "version: 1\nname: t\nsource: {{url: 'host=s'}}\ntarget: {{url: 'host=t'}}\n{extra}"
        );
        crate::migration_plan::parse(std::path::Path::new("t.yaml"), text, &|_| None).unwrap().spec
    }

    fn catalog(version_num: i32) -> Catalog {
        let mut c = Catalog {
            server: Server {
                version_num,
                database: "app".into(),
                encoding: "UTF8".into(),
                collate: "C.UTF-8".into(),
                ctype: "C.UTF-8".into(),
                locale_provider: "libc".into(),
                current_user: "postgres".into(),
                is_superuser: true,
                can_replicate: true,
                can_create_schema: true,
                ..Default::default()
            },
            roles: vec![Role { name: "postgres".into(), superuser: true, ..Default::default() }],
            ..Default::default()
        };
        for (k, v) in [
            ("wal_level", "logical"),
            ("max_replication_slots", "10"),
            ("max_wal_senders", "10"),
            ("max_worker_processes", "8"),
        ] {
            c.settings.insert(k.into(), v.into());
        }
        c
    }

    fn table(name: &str, owner: &str, pk: bool) -> Relation {
        Relation {
            schema: "public".into(),
            name: name.into(),
            owner: owner.into(),
            has_primary_key: pk,
            replica_identity: "d".into(),
            readable: true,
            ..Default::default()
        }
    }

    fn codes(checks: &[Check]) -> Vec<(&str, Severity)> {
        checks.iter().map(|c| (c.code.as_str(), c.severity)).collect()
    }

    #[test]
    fn what_pg_dump_dumps_and_nothing_migrates_is_refused_by_name() {
        let tgt = catalog(150018);
        let mut src = catalog(150018);
        src.dump.not_migrated = vec![("WIDGET THING w".into(), "public".into())];
        src.dump.subscriptions = vec!["sub".into()];
        src.dump.passwords_left_out = vec!["USER MAPPING alice SERVER remote".into()];
        let checks = run(&spec(""), Some(&src), Some(&tgt));
        let found = codes(&checks);
        assert!(found.contains(&("object_not_migrated", Severity::Error)), "{found:?}");
        assert!(found.contains(&("subscription_not_migrated", Severity::Warning)), "{found:?}");
        let password = checks.iter().find(|c| c.code == "user_mapping_password").unwrap();
        assert_eq!(
            password.fix.as_deref(),
            Some(
                "after apply, on the target: ALTER USER MAPPING FOR \"alice\" SERVER \"remote\" \
                 OPTIONS (ADD password '...');"
            )
        );
        let not_migrated = checks.iter().find(|c| c.code == "object_not_migrated").unwrap();
        assert!(not_migrated.object.contains("WIDGET THING w"), "{not_migrated:?}");
    }

    #[test]
    fn a_missing_pg_dump_is_an_error_only_where_objects_need_it() {
        let tgt = catalog(150018);
        let mut src = catalog(170002);
        src.dump.problem = Some("no pg_dump found".into());
        let checks = run(&spec("mode: offline"), Some(&src), Some(&tgt));
        assert!(codes(&checks).contains(&("pg_dump_unavailable", Severity::Warning)));
        src.dump.needed_for = vec!["operator public.===(integer,integer)".into()];
        let checks = run(&spec("mode: offline"), Some(&src), Some(&tgt));
        let check = checks.iter().find(|c| c.code == "pg_dump_unavailable").unwrap();
        assert_eq!(check.severity, Severity::Error);
        assert!(check.fix.as_deref().unwrap().contains("postgresql-client-17"), "{check:?}");
    }

    #[test]
    fn row_security_on_a_table_to_create_is_predicted_from_its_owner_on_the_target() {
        let mut src = catalog(150018);
        let mut t = table("t", "app", true);
        t.row_security = true;
        src.relations.push(t);
        let mut tgt = catalog(150018);
        tgt.server.current_user = "migrator".into();
        let applies = |tgt: &Catalog, extra: &str| {
            run(&spec(extra), Some(&src), Some(tgt)).iter().any(|c| c.code == "target_row_security")
        };
        // `app` is another role on the target: its policies would filter what migrator does.
        tgt.roles.push(Role { name: "app".into(), ..Default::default() });
        assert!(applies(&tgt, ""));
        // ... unless migrator has app's privileges, or app is mapped to migrator.
        tgt.roles.last_mut().unwrap().has_privileges_of = true;
        assert!(!applies(&tgt, ""));
        tgt.roles.pop();
        assert!(!applies(&tgt, "roles: {map: {app: migrator}}"));
        // A missing owner with roles.missing: skip: the connecting role owns the table.
        assert!(!applies(&tgt, "roles: {missing: skip}"));
        tgt.server.bypass_rls = true;
        assert!(!applies(&tgt, "roles: {missing: create}"));
    }

    #[test]
    fn a_generated_column_in_the_replica_identity_is_refused_online_only() {
        let mut src = catalog(150018);
        let mut t = table("doubled", "app", true);
        t.key_has_generated_column = true;
        src.relations.push(t);
        let tgt = catalog(150018);
        let found = |extra: &str| {
            run(&spec(extra), Some(&src), Some(&tgt))
                .iter()
                .any(|c| c.code == "table_key_generated")
        };
        assert!(found(""));
        assert!(!found("mode: offline"));
    }

    #[test]
    fn online_from_13_is_refused_and_from_14_is_not() {
        let tgt = catalog(180000);
        let checks = run(&spec(""), Some(&catalog(130016)), Some(&tgt));
        assert!(codes(&checks).contains(&("source_version_online_unsupported", Severity::Error)));
        let checks = run(&spec(""), Some(&catalog(140010)), Some(&tgt));
        assert!(!checks.iter().any(|c| c.code == "source_version_online_unsupported"));
        let checks = run(&spec("mode: offline"), Some(&catalog(130016)), Some(&tgt));
        assert!(!checks.iter().any(|c| c.code == "source_version_online_unsupported"));
    }

    #[test]
    fn a_missing_state_is_refused_while_the_source_holds_the_migrations_slot() {
        let s = spec("mode: online\n");
        let file = std::path::Path::new("/x/.pgtransit/t/state.json");
        let mut src = catalog(150000);
        assert!(check_state(&s, None, file, Some(&src), None).is_empty(), "a first run");
        src.replication_slots.push(crate::catalog::ReplicationSlot {
            name: crate::naming::slot_name("t"),
            ..Default::default()
        });
        let checks = check_state(&s, None, file, Some(&src), None);
        assert_eq!(codes(&checks), [("state_missing", Severity::Error)]);
        assert!(checks[0].message.contains(&crate::naming::slot_name("t")), "{:?}", checks[0]);
        assert!(checks[0].fix.as_deref().unwrap().contains("pgtransit abort"));
        // With its state, the slot is this migration's own: nothing to say.
        let st = crate::state::State::new("t");
        assert!(check_state(&s, Some(&st), file, Some(&src), None).is_empty());
    }

    #[test]
    fn a_state_from_another_server_or_migration_is_refused() {
        let s = spec("");
        let file = std::path::Path::new("state.json");
        let mut src = catalog(150000);
        src.server.system_identifier = Some("222".into());
        let mut st = crate::state::State::new("t");
        st.source_system_identifier = Some("111".into());
        let checks = check_state(&s, Some(&st), file, Some(&src), None);
        assert_eq!(codes(&checks), [("state_mismatch", Severity::Error)]);
        assert!(checks[0].message.contains("111") && checks[0].message.contains("222"));
        let other = crate::state::State::new("another");
        let checks = check_state(&s, Some(&other), file, None, None);
        assert_eq!(codes(&checks), [("state_mismatch", Severity::Error)]);
    }

    #[test]
    fn online_needs_a_target_role_that_may_apply_as_a_replica() {
        let mut tgt = catalog(150018);
        tgt.server.is_superuser = false;
        tgt.server.current_user = "mig".into();
        let checks = run(&spec(""), Some(&catalog(150018)), Some(&tgt));
        let c = checks.iter().find(|c| c.code == "target_apply_privileges").unwrap();
        assert_eq!(c.severity, Severity::Warning);
        assert!(
            c.fix.as_deref().unwrap().contains("GRANT SET ON PARAMETER session_replication_role")
        );
        let old = Catalog { server: Server { version_num: 140010, ..tgt.server.clone() }, ..tgt };
        let checks = run(&spec(""), Some(&catalog(140010)), Some(&old));
        assert!(codes(&checks).contains(&("target_apply_privileges", Severity::Error)));
        let checks = run(&spec("mode: offline"), Some(&catalog(140010)), Some(&old));
        assert!(!codes(&checks).iter().any(|(c, _)| *c == "target_apply_privileges"));
    }

    #[test]
    fn target_older_than_source_is_an_error() {
        let checks = run(&spec(""), Some(&catalog(160004)), Some(&catalog(150018)));
        assert!(codes(&checks).contains(&("target_version_older", Severity::Error)));
        let checks = run(&spec(""), Some(&catalog(150018)), Some(&catalog(170002)));
        let v = checks.iter().find(|c| c.code == "versions").unwrap();
        assert_eq!(v.message, "PostgreSQL 15.18 → 17.2");
    }

    #[test]
    fn source_versions_below_10_are_refused_and_below_13_untested() {
        let checks = run(&spec(""), Some(&catalog(90624)), Some(&catalog(150018)));
        let c = checks.iter().find(|c| c.code == "source_version_unsupported").unwrap();
        assert_eq!(c.severity, Severity::Error);
        assert!(c.message.contains("9.6.24"));
        let checks = run(&spec(""), Some(&catalog(120020)), Some(&catalog(150018)));
        assert!(codes(&checks).contains(&("source_version_untested", Severity::Warning)));
    }

    #[test]
    fn errors_come_first_in_the_result() {
        let mut src = catalog(150018);
        src.settings.insert("wal_level".into(), "replica".into());
        src.relations.push(table("t", "postgres", true));
        let checks = run(&spec(""), Some(&src), Some(&catalog(150018)));
        assert_eq!(checks[0].severity, Severity::Error);
        assert!(checks.windows(2).all(|w| w[0].severity <= w[1].severity));
    }

    #[test]
    fn keyless_table_is_a_warning_when_the_plan_asks_for_replica_identity_full() {
        let mut src = catalog(150018);
        src.relations.push(table("log", "postgres", false));
        let strict = run(&spec(""), Some(&src), Some(&catalog(150018)));
        assert!(codes(&strict).contains(&("table_without_key", Severity::Error)));
        let lenient = run(
            &spec("sync: {tables_without_key: replica_identity_full}"),
            Some(&src),
            Some(&catalog(150018)),
        );
        assert!(codes(&lenient).contains(&("table_without_key", Severity::Warning)));
        assert!(!has_errors(&lenient));
    }

    #[test]
    fn replica_identity_index_or_full_counts_as_a_key() {
        let mut t = table("t", "postgres", false);
        t.replica_identity = "f".into();
        assert!(t.has_usable_replica_identity());
        t.replica_identity = "i".into();
        assert!(!t.has_usable_replica_identity());
        t.has_replica_identity_index = true;
        assert!(t.has_usable_replica_identity());
        t.replica_identity = "n".into();
        assert!(!t.has_usable_replica_identity());
    }

    #[test]
    fn missing_roles_follow_roles_missing() {
        let mut src = catalog(150018);
        src.relations.push(table("t", "app", true));
        let tgt = catalog(150018);
        let by = |extra: &str| {
            let checks = run(&spec(extra), Some(&src), Some(&tgt));
            checks.iter().find(|c| c.code == "role_missing").map(|c| c.severity)
        };
        assert_eq!(by(""), Some(Severity::Error));
        assert_eq!(by("roles: {missing: create}"), Some(Severity::Info));
        assert_eq!(by("roles: {missing: skip}"), Some(Severity::Warning));
        assert_eq!(by("roles: {map: {app: postgres}}"), None);
    }

    #[test]
    fn extension_versions_are_compared() {
        let mut src = catalog(150018);
        src.extensions.push(Extension {
            name: "hstore".into(),
            version: "1.8".into(),
            schema: "public".into(),
        });
        let mut tgt = catalog(150018);
        tgt.available_extensions.insert("hstore".into(), vec!["1.7".into()]);
        let checks = run(&spec(""), Some(&src), Some(&tgt));
        assert!(codes(&checks).contains(&("extension_version_unavailable", Severity::Warning)));
        tgt.available_extensions.insert("hstore".into(), vec!["1.7".into(), "1.8".into()]);
        let checks = run(&spec(""), Some(&src), Some(&tgt));
        assert!(!checks.iter().any(|c| c.code.starts_with("extension")));
    }

    #[test]
    fn conversion_to_utf8_is_a_warning_and_provider_difference_is_reported() {
        let mut src = catalog(150018);
        src.server.encoding = "LATIN1".into();
        let mut tgt = catalog(150018);
        tgt.server.locale_provider = "icu".into();
        let checks = run(&spec(""), Some(&src), Some(&tgt));
        assert!(codes(&checks).contains(&("encoding_differs", Severity::Warning)));
        assert!(codes(&checks).contains(&("collation_provider_differs", Severity::Warning)));
    }

    #[test]
    fn our_own_slot_is_reused_and_does_not_count_against_max_replication_slots() {
        let mut src = catalog(150018);
        src.settings.insert("max_replication_slots".into(), "1".into());
        src.replication_slots.push(crate::catalog::ReplicationSlot {
            name: "pgtransit_t".into(),
            slot_type: "logical".into(),
            ..Default::default()
        });
        let checks = run(&spec(""), Some(&src), Some(&catalog(150018)));
        assert!(!codes(&checks).iter().any(|(c, _)| *c == "no_free_replication_slot"));
        assert!(codes(&checks).contains(&("replication_slot_exists", Severity::Info)));
    }

    #[test]
    fn unreachable_server_still_runs_the_other_servers_checks() {
        let mut src = catalog(150018);
        src.settings.insert("wal_level".into(), "minimal".into());
        let checks = run(&spec(""), Some(&src), None);
        assert!(codes(&checks).contains(&("wal_level_not_logical", Severity::Error)));
    }

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(thousands(21200), "21,200");
        assert_eq!(thousands(-1234567), "-1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
