//! What a migration carries besides schema objects: roles as they are on the source (attributes,
//! password verifier, settings, memberships) and the database's own properties (owner,
//! connection limit, comment, grants, `ALTER DATABASE ... SET`); and the server parameters that
//! differ between the servers. Pure: works on two catalogs. `preflight` reports what is not
//! carried (with why, and the fix); the planner turns the rest into steps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::catalog::{Catalog, PasswordKind, Role};
use crate::check::{Check, Severity};
use crate::migration_plan::{MissingRoles, Roles};
use crate::objects::acl::AclItem;
use crate::pattern::Pattern;
use crate::sql::{display, ident, literal};

/// Where a role's step puts the password verifier it reads from the source as it runs (a psql
/// variable: run by hand without one, the statement fails instead of setting a wrong password).
pub const VERIFIER: &str = ":'source_verifier'";

/// A role to create on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRole {
    /// Name (on both servers: a created role keeps its name).
    pub name: String,
    /// `CREATE ROLE`, its password ([`password_sql`] with [`VERIFIER`]), then its
    /// `ALTER ROLE ... SET`s.
    pub sql: String,
    /// Whether `sql` has the password statement.
    pub reads_verifier: bool,
    /// Why it is created, for reviewers.
    pub why: String,
}

/// Roles to create, memberships to grant, and what is not carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolesCarried {
    /// Roles to create, by name.
    pub create: Vec<NewRole>,
    /// Member → its `GRANT role TO member` statements, for memberships the target lacks.
    pub grants: BTreeMap<String, Vec<String>>,
    /// Role → its `ALTER ROLE ... IN DATABASE <this one> SET` statements the target lacks.
    pub settings_here: BTreeMap<String, Vec<String>>,
    /// The memberships `grants` grants: (role, member).
    pub granted: Vec<(String, String)>,
    /// Every role carried (created now, or there already), mapped and predefined ones aside.
    pub carried: Vec<String>,
    /// Attributes, passwords, settings and memberships left out, and login roles left behind.
    pub findings: Vec<Check>,
}

/// Roles of managed services (their administrators, agents and replication), by name: every
/// such server has its own, and no migration creates them.
pub const PROVIDERS_OWN: &[&str] = &[
    "rdsadmin",
    "rds_superuser",
    "rds_replication",
    "rds_password",
    "rds_iam",
    "rds_ad",
    "rdstopmgr",
    "rdsrepladmin",
    "azure_pg_admin",
    "azure_superuser",
    "azuresu",
    "cloudsqladmin",
    "cloudsqlsuperuser",
    "cloudsqlagent",
    "cloudsqlreplica",
    "cloudsqliamuser",
    "cloudsqliamserviceaccount",
    "cloudsqlimportexport",
    "alloydbadmin",
    "alloydbsuperuser",
];

/// A predefined role (`pg_read_all_data`...) or a managed service's: every such server has its
/// own.
pub fn predefined(name: &str) -> bool {
    name.starts_with("pg_") || PROVIDERS_OWN.contains(&name)
}

/// `ALTER ROLE ... PASSWORD value`: the statement a role step shows with [`VERIFIER`] and runs,
/// on its own, with the source's verifier.
pub fn password_sql(role: &str, value: &str) -> String {
    format!("ALTER ROLE {} PASSWORD {value};", ident(role))
}

/// The roles the migration carries: under `roles.missing: create`, those `used` (owning or
/// granted something in scope) and the database's owner and grantees; every role
/// `roles.include` names; then, transitively, the roles that are members of those (they reach
/// what is in scope through them), and the roles those are members of (for their
/// memberships). Roles the target has, mapped roles and predefined roles are not created; a
/// mapped role's members are not followed.
pub fn roles(spec: &Roles, used: &BTreeSet<String>, src: &Catalog, tgt: &Catalog) -> RolesCarried {
    let mut out = RolesCarried::default();
    let on_target = |n: &str| tgt.roles.iter().any(|r| r.name == n);
    let on_source = |n: &str| src.roles.iter().find(|r| r.name == n);
    let mapped = |n: &str| spec.map.contains_key(n);
    let creatable =
        |n: &str| !mapped(n) && !on_target(n) && !predefined(n) && on_source(n).is_some();
    let patterns: Vec<Pattern> =
        spec.include.iter().filter_map(|p| Pattern::parse_schema(&p.value).ok()).collect();

    let carried = closure(spec, used, src, &creatable, &patterns);
    // Error mode: login roles that reach what is in scope through a role but would be left
    // behind.
    if spec.missing != MissingRoles::Create {
        left_behind(spec, used, &carried, src, tgt, &mut out.findings);
    }
    out.findings.extend(not_carried_at_all(&carried, src, &|n: &str| on_target(n) || mapped(n)));
    out.carried = carried.iter().filter(|r| !mapped(r) && !predefined(r)).cloned().collect();
    let me = tgt.roles.iter().find(|r| r.name == tgt.server.current_user);
    let created: BTreeSet<&String> = carried.iter().filter(|r| creatable(r)).collect();
    if !created.is_empty() && !tgt.server.is_superuser && !me.is_some_and(|r| r.createrole) {
        out.findings.push(Check {
            code: "target_cannot_create_roles".into(),
            severity: Severity::Error,
            object: "target".into(),
            message: format!(
                "the migration creates {} role(s) ({}), but the target's role {} is neither a \
                 superuser nor has CREATEROLE",
                created.len(),
                examples(created.iter().map(|r| display(r))),
                display(&tgt.server.current_user)
            ),
            fix: Some(format!(
                "ALTER ROLE {} CREATEROLE;  -- on the target, as a superuser; or map the roles \
                 (roles.map) to roles the target has",
                ident(&tgt.server.current_user)
            )),
        });
    }
    let logs_statements =
        tgt.settings.get("log_statement").is_some_and(|v| v == "ddl" || v == "all")
            || tgt.settings.get("log_min_duration_statement").is_some_and(|v| v == "0");
    for name in &created {
        let Some(role) = on_source(name) else { continue };
        if logs_statements
            && !tgt.server.is_superuser
            && matches!(role.password, PasswordKind::Scram | PasswordKind::Md5)
            && !role.builtin
        {
            out.findings.push(not_carried(
                "role_password_logged",
                &format!("role {}", display(name)),
                format!(
                    "the target logs DDL statements (log_statement = {}, log_min_duration_statement \
                     = {}) and pgtransit's role {} may not turn that off: the statement that sets \
                     {}'s password verifier will be in the target's server log",
                    tgt.settings.get("log_statement").map(String::as_str).unwrap_or_default(),
                    tgt.settings
                        .get("log_min_duration_statement")
                        .map(String::as_str)
                        .unwrap_or_default(),
                    display(&tgt.server.current_user),
                    display(name)
                ),
                Some(
                    "log_statement = 'none' and log_min_duration_statement = -1 on the target \
                     while the roles are created (a superuser, or the service's parameter \
                     settings)"
                        .into(),
                ),
            ));
        }
        let why = if spec.missing == MissingRoles::Create && used.contains(*name) {
            "owns or is granted something in scope (roles.missing: create)".to_string()
        } else if patterns.iter().any(|p| p.matches_schema(name)) {
            "named by roles.include".to_string()
        } else {
            "a member of, or a group of, a role the migration carries".to_string()
        };
        out.create.push(new_role(role, &why, src, tgt, me, &mut out.findings));
    }
    // Settings in this database (`ALTER ROLE ... IN DATABASE`), for every role carried, created
    // now or earlier (by the plan of another database of the same migration).
    let here = format!("IN DATABASE {} ", ident(&tgt.server.database));
    for name in carried.iter().filter(|r| !mapped(r) && !predefined(r)) {
        let Some(role) = on_source(name) else { continue };
        let theirs = tgt.roles.iter().find(|r| &r.name == name);
        if theirs.is_none() && !created.contains(name) {
            continue;
        }
        let missing: Vec<(String, String)> = role
            .settings_here
            .iter()
            .filter(|s| !theirs.is_some_and(|t| t.settings_here.contains(s)))
            .cloned()
            .collect();
        let refused = if name == &tgt.server.current_user {
            Some(format!(
                "{} is pgtransit's own role on the target: its settings would apply to the \
                 migration's sessions",
                display(name)
            ))
        } else if theirs.is_some_and(|t| !may_alter(t, tgt)) {
            Some(format!(
                "the target's role {} may not alter {}",
                display(&tgt.server.current_user),
                display(name)
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            for (setting, value) in &missing {
                let statement =
                    format!("ALTER ROLE {} {here}SET {};", ident(name), set_clause(setting, value));
                out.findings.push(not_carried(
                    "role_setting_not_carried",
                    &format!("role {}", display(name)),
                    format!(
                        "{}'s setting {setting} = {value} here is not carried: {why}",
                        display(name)
                    ),
                    Some(format!("{statement}  -- on the target, after the migration")),
                ));
            }
            continue;
        }
        let statements = role_settings(name, &missing, &here, tgt, &mut out.findings);
        if !statements.is_empty() {
            out.settings_here.insert(name.clone(), statements);
        }
    }
    for m in &src.memberships {
        if !carried.contains(&m.member) || mapped(&m.member) || predefined(&m.member) {
            continue;
        }
        if !on_target(&m.member) && !created.contains(&m.member) {
            continue;
        }
        if tgt.memberships.iter().any(|t| t.role == m.role && t.member == m.member) {
            continue;
        }
        let what = format!("membership of {} in {}", display(&m.member), display(&m.role));
        let grant = grant_sql(m);
        let why = if let Some(to) = spec.map.get(&m.role) {
            Some(format!("{} is mapped to {} (roles.map)", display(&m.role), display(to)))
        } else if created.contains(&m.role) {
            None
        } else if let Some(group) = tgt.roles.iter().find(|r| r.name == m.role) {
            (!group.grantable).then(|| {
                format!(
                    "the target's role {} may not grant membership in {}",
                    display(&tgt.server.current_user),
                    display(&m.role)
                )
            })
        } else {
            Some(format!("{} is not carried", display(&m.role)))
        };
        match why {
            None => {
                out.grants.entry(m.member.clone()).or_default().push(grant);
                out.granted.push((m.role.clone(), m.member.clone()));
            }
            Some(why) => out.findings.push(not_carried(
                "role_membership_not_carried",
                &format!("role {}", display(&m.member)),
                format!("the {what} is not carried: {why}"),
                Some(format!("{grant}  -- on the target, if it should be")),
            )),
        }
    }
    out
}

/// The roles carried: the seeds (see [`roles`]), their members transitively (not through
/// mapped, bootstrap or predefined roles), then the groups of those to be created.
fn closure(
    spec: &Roles,
    used: &BTreeSet<String>,
    src: &Catalog,
    creatable: &dyn Fn(&str) -> bool,
    patterns: &[Pattern],
) -> BTreeSet<String> {
    let mapped = |n: &str| spec.map.contains_key(n);
    let mut seeds: BTreeSet<String> = BTreeSet::new();
    if spec.missing == MissingRoles::Create {
        seeds.extend(used.iter().filter(|r| *r != "PUBLIC").cloned());
        seeds.extend(database_roles(src));
    }
    for r in &src.roles {
        if patterns.iter().any(|p| p.matches_schema(&r.name)) && !predefined(&r.name) {
            seeds.insert(r.name.clone());
        }
    }
    // Down: members of what is carried (not through mapped roles).
    let mut carried = seeds.clone();
    let mut queue: VecDeque<String> = seeds.into_iter().collect();
    let builtin = |n: &str| src.roles.iter().any(|r| r.name == n && r.builtin);
    while let Some(group) = queue.pop_front() {
        // Members of a mapped role, of the bootstrap superuser or of a predefined role (a
        // monitoring agent in pg_monitor) do not reach the scope through it.
        if mapped(&group) || builtin(&group) || predefined(&group) {
            continue;
        }
        for m in src.memberships.iter().filter(|m| m.role == group && !predefined(&m.member)) {
            if carried.insert(m.member.clone()) {
                queue.push_back(m.member.clone());
            }
        }
    }
    // Up: the groups of the roles created, for their memberships.
    let mut queue: VecDeque<String> = carried.iter().filter(|r| creatable(r)).cloned().collect();
    while let Some(member) = queue.pop_front() {
        for m in src.memberships.iter().filter(|m| m.member == member && !predefined(&m.role)) {
            if carried.insert(m.role.clone()) && creatable(&m.role) {
                queue.push_back(m.role.clone());
            }
        }
    }
    carried
}

/// The source's roles nothing carries (`elsewhere`: on the target or mapped), said once: a
/// whole-server migration lists them, so what differs between the servers' roles afterwards
/// is on record.
fn not_carried_at_all(
    carried: &BTreeSet<String>,
    src: &Catalog,
    elsewhere: &dyn Fn(&str) -> bool,
) -> Option<Check> {
    let behind: Vec<String> = src
        .roles
        .iter()
        .filter(|r| !carried.contains(&r.name) && !r.builtin && !predefined(&r.name))
        .filter(|r| !elsewhere(&r.name))
        .map(|r| display(&r.name))
        .collect();
    (!behind.is_empty()).then(|| Check {
        code: "roles_not_carried".into(),
        severity: Severity::Info,
        object: "roles".into(),
        message: format!(
            "{} role(s) of the source that the target lacks are not carried (nothing in scope \
             needs them): {}",
            behind.len(),
            behind.join(", ")
        ),
        fix: Some("roles.include: [...]  -- to carry them too (\"*\": every role)".into()),
    })
}

/// The database's owner (when not a superuser) and grantees, on the source.
fn database_roles(src: &Catalog) -> Vec<String> {
    let mut out = vec![];
    if !src.database.owner_is_superuser && !src.database.owner.is_empty() {
        out.push(src.database.owner.clone());
    }
    for item in src.database.acl.iter().filter_map(|a| AclItem::parse(a)) {
        if !item.grantee.is_empty() {
            out.push(item.grantee);
        }
    }
    out
}

/// Warnings for login roles that reach something in scope through a role, but that the target
/// lacks and the migration does not create.
fn left_behind(
    spec: &Roles,
    used: &BTreeSet<String>,
    carried: &BTreeSet<String>,
    src: &Catalog,
    tgt: &Catalog,
    findings: &mut Vec<Check>,
) {
    for m in src.memberships.iter().filter(|m| used.contains(&m.role) || carried.contains(&m.role))
    {
        let login = src.roles.iter().any(|r| r.name == m.member && r.login);
        let missing = !tgt.roles.iter().any(|r| r.name == m.member);
        if login && missing && !carried.contains(&m.member) && !spec.map.contains_key(&m.member) {
            findings.push(not_carried(
                "role_member_missing",
                &format!("role {}", display(&m.member)),
                format!(
                    "login role {} is a member of {}, which the migration needs, but does not \
                     exist on the target: it is not created, so it cannot log in there",
                    display(&m.member),
                    display(&m.role)
                ),
                Some(format!(
                    "roles.include: [{}]  -- or roles.missing: create",
                    literal(&m.member)
                )),
            ));
        }
    }
}

/// Whether the target's connecting role may give a role `attribute`, or why not.
fn attribute_refused(attribute: &str, tgt: &Catalog, me: Option<&Role>) -> Option<String> {
    if tgt.server.is_superuser {
        return None;
    }
    let major = tgt.server.major();
    let has = |f: fn(&Role) -> bool| me.is_some_and(f);
    let allowed = match attribute {
        "SUPERUSER" => false,
        "REPLICATION" => major >= 16 && has(|r| r.replication),
        "BYPASSRLS" => major >= 16 && has(|r| r.bypassrls),
        "CREATEDB" => has(|r| r.createdb) || (major < 16 && has(|r| r.createrole)),
        "CREATEROLE" => has(|r| r.createrole),
        _ => true,
    };
    (!allowed).then(|| {
        format!(
            "the target's role {} may not give it (only a superuser{})",
            display(&tgt.server.current_user),
            if attribute == "SUPERUSER" { "" } else { ", or a role with it from PostgreSQL 16" }
        )
    })
}

/// `CREATE ROLE` with the source's attributes, password and settings.
fn new_role(
    role: &Role,
    why: &str,
    src: &Catalog,
    tgt: &Catalog,
    me: Option<&Role>,
    findings: &mut Vec<Check>,
) -> NewRole {
    let object = format!("role {}", display(&role.name));
    let mut options = vec![if role.login { "LOGIN" } else { "NOLOGIN" }.to_string()];
    let attributes = [
        ("SUPERUSER", role.superuser),
        ("CREATEDB", role.createdb),
        ("CREATEROLE", role.createrole),
        ("REPLICATION", role.replication),
        ("BYPASSRLS", role.bypassrls),
    ];
    for (attribute, set) in attributes.into_iter().filter(|(_, set)| *set) {
        let _ = set;
        match attribute_refused(attribute, tgt, me) {
            None => options.push(attribute.to_string()),
            Some(why) => findings.push(not_carried(
                "role_attribute_not_carried",
                &object,
                format!(
                    "{} has {attribute} on the source; it is created without it: {why}",
                    display(&role.name)
                ),
                Some(format!(
                    "ALTER ROLE {} {attribute};  -- on the target, as a superuser",
                    ident(&role.name)
                )),
            )),
        }
    }
    if !role.inherit {
        options.push("NOINHERIT".into());
    }
    if role.connection_limit >= 0 {
        options.push(format!("CONNECTION LIMIT {}", role.connection_limit));
    }
    if let Some(until) = &role.valid_until {
        options.push(format!("VALID UNTIL {}", literal(until)));
    }
    if role.builtin {
        // The source's bootstrap superuser, which the target names otherwise (a managed
        // service's administrator): a bare owner of what it owned, nothing of its powers.
        return NewRole {
            name: role.name.clone(),
            sql: format!("CREATE ROLE {} WITH NOLOGIN;", ident(&role.name)),
            reads_verifier: false,
            why: format!("{why}; the source's bootstrap superuser: created bare"),
        };
    }
    let reads_verifier = matches!(role.password, PasswordKind::Scram | PasswordKind::Md5);
    if role.password == PasswordKind::Md5 {
        findings.push(not_carried(
            "role_password_md5",
            &object,
            format!(
                "{}'s password is an MD5 hash: it is carried unchanged, but logs in only where \
                 pg_hba.conf says md5 (scram-sha-256 refuses it), and PostgreSQL 18 deprecates \
                 MD5 passwords",
                display(&role.name)
            ),
            Some(format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE {} PASSWORD '...';  \
                 -- on the target, with the role's password",
                ident(&role.name)
            )),
        ));
    } else if role.password == PasswordKind::Unknown && role.login {
        findings.push(not_carried(
            "role_password_not_carried",
            &object,
            format!(
                "login role {} is created without a password: the source's role {} may not \
                 read password verifiers (pg_authid, superusers only)",
                display(&role.name),
                display(&src.server.current_user)
            ),
            Some(format!("ALTER ROLE {} PASSWORD '...';  -- on the target", ident(&role.name))),
        ));
    }
    let mut sql = format!("CREATE ROLE {} WITH {};", ident(&role.name), options.join(" "));
    if reads_verifier {
        sql.push('\n');
        sql.push_str(&password_sql(&role.name, VERIFIER));
    }
    if !tgt.server.is_superuser {
        // Only a member may give a role objects (ALTER ... OWNER TO needs SET ROLE to it).
        sql.push_str(&format!(
            "\nGRANT {} TO {};",
            ident(&role.name),
            ident(&tgt.server.current_user)
        ));
        findings.push(Check {
            code: "role_granted_to_target_user".into(),
            severity: Severity::Info,
            object,
            message: format!(
                "the target's role {} is not a superuser: it is made a member of {} to give it \
                 its objects",
                display(&tgt.server.current_user),
                display(&role.name)
            ),
            fix: Some(format!(
                "REVOKE {} FROM {};  -- on the target, once the migration is over",
                ident(&role.name),
                ident(&tgt.server.current_user)
            )),
        });
    }
    for statement in role_settings(&role.name, &role.settings, "", tgt, findings) {
        sql.push('\n');
        sql.push_str(&statement);
    }
    NewRole { name: role.name.clone(), sql, reads_verifier, why: why.to_string() }
}

/// Whether the target's role may alter `role` (set its settings): a superuser; else CREATEROLE,
/// on a role that is no superuser, and from 16 with ADMIN OPTION on it.
fn may_alter(role: &Role, tgt: &Catalog) -> bool {
    let me = tgt.roles.iter().find(|r| r.name == tgt.server.current_user);
    tgt.server.is_superuser
        || (me.is_some_and(|m| m.createrole)
            && !role.superuser
            && (tgt.server.major() < 16 || role.grantable))
}

/// `ALTER ROLE ... {scope}SET` for each of `settings` the target accepts; the others reported.
fn role_settings(
    role: &str,
    settings: &[(String, String)],
    scope: &str,
    tgt: &Catalog,
    findings: &mut Vec<Check>,
) -> Vec<String> {
    let mut out = vec![];
    for (name, value) in settings {
        let statement =
            format!("ALTER ROLE {} {scope}SET {};", ident(role), set_clause(name, value));
        if NEVER_CARRIED.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            findings.push(not_carried(
                "role_setting_not_carried",
                &format!("role {}", display(role)),
                format!(
                    "{}'s setting {name} = {value} is not carried: a target must take writes",
                    display(role)
                ),
                None,
            ));
            continue;
        }
        match setting_refused(name, tgt) {
            None => out.push(statement),
            Some(why) => findings.push(not_carried(
                "role_setting_not_carried",
                &format!("role {}", display(role)),
                format!("{}'s setting {name} = {value} is not carried: {why}", display(role)),
                Some(format!("{statement}  -- on the target, as a superuser")),
            )),
        }
    }
    out
}

/// `GRANT role TO member` with the source's options.
fn grant_sql(m: &crate::catalog::Membership) -> String {
    let mut with = vec![];
    if m.admin {
        with.push("ADMIN TRUE");
    }
    // From 16 (source, so target too) the option is always said: unsaid, it would follow the
    // member's INHERIT attribute on the target, which may differ from the source's.
    match m.inherit {
        Some(true) => with.push("INHERIT TRUE"),
        Some(false) => with.push("INHERIT FALSE"),
        None => {}
    }
    if m.set == Some(false) {
        with.push("SET FALSE");
    }
    let mut sql = format!("GRANT {} TO {}", ident(&m.role), ident(&m.member));
    if !with.is_empty() {
        // `WITH ADMIN OPTION` is the only form before 16 (where admin is the only option).
        if with == ["ADMIN TRUE"] {
            sql.push_str(" WITH ADMIN OPTION");
        } else {
            sql.push_str(&format!(" WITH {}", with.join(", ")));
        }
    }
    sql.push(';');
    sql
}

/// Why a setting cannot be set on the target by pgtransit's role, if it cannot.
fn setting_refused(name: &str, tgt: &Catalog) -> Option<String> {
    let known = tgt.parameters.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
    match known {
        // Custom settings (`app.tenant`) exist wherever they are set.
        None if name.contains('.') => None,
        None => Some(format!("PostgreSQL {} has no parameter {name}", tgt.server.major())),
        Some((_, context)) if context == "superuser" && !tgt.server.is_superuser => Some(format!(
            "only a superuser may set it, and the target's role {} is not one",
            display(&tgt.server.current_user)
        )),
        Some(_) => None,
    }
}

/// Parameters whose value is a list of quoted names (pg_dump's `variable_is_guc_list_quote`):
/// each element is its own literal.
const LIST_QUOTED: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `"name" TO value` for `ALTER ROLE/DATABASE ... SET`, from the value as stored (as pg_dump
/// writes it: a list parameter's elements each as a literal).
pub fn set_clause(name: &str, value: &str) -> String {
    let value = if LIST_QUOTED.iter().any(|l| l.eq_ignore_ascii_case(name)) {
        let list = split_guc_list(value);
        if list.is_empty() {
            "''".to_string()
        } else {
            list.iter().map(|e| literal(e)).collect::<Vec<_>>().join(", ")
        }
    } else {
        literal(value)
    };
    format!("{} TO {value}", ident(name))
}

/// The elements of a stored list value: comma-separated, each bare or double-quoted (`""` for
/// a quote), blanks around them ignored.
fn split_guc_list(value: &str) -> Vec<String> {
    let mut out = vec![];
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut element = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                element.push(c);
            }
            while chars.peek().is_some_and(|&c| c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                element.push(c);
                chars.next();
            }
            element = element.trim_end().to_string();
        }
        out.push(element);
        if chars.next().is_none() {
            break;
        }
    }
    out
}

fn not_carried(code: &str, object: &str, message: String, fix: Option<String>) -> Check {
    Check { code: code.into(), severity: Severity::Warning, object: object.into(), message, fix }
}

fn examples(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.len() > 5 { format!("{}, ...", items[..5].join(", ")) } else { items.join(", ") }
}

/// A database setting pgtransit never carries: the read-only default is how a source is fenced
/// (by pgtransit or by hand), and a target must take writes.
pub const NEVER_CARRIED: &[&str] = &["default_transaction_read_only"];

/// Statements giving the target's database the source's properties, and what is not carried.
/// `roles` maps a source role to the target's (None: not there).
pub fn database(
    src: &Catalog,
    tgt: &Catalog,
    roles: &dyn Fn(&str) -> Option<String>,
) -> (Vec<String>, Vec<Check>) {
    let db = ident(&tgt.server.database);
    let object = format!("database {}", display(&tgt.server.database));
    let mut sql = vec![];
    let mut findings = vec![];
    // (statement, what it carries, whether only a superuser may run it)
    let mut wanted: Vec<(String, String, bool)> = vec![];
    let mut add = |statement: String, what: &str, needs_superuser: bool| {
        wanted.push((statement, what.to_string(), needs_superuser));
    };
    let (s, t) = (&src.database, &tgt.database);
    // The owner first: its implicit privileges (and explicit grants to the old owner) move to
    // the new one, so the grants below are computed as they will stand after it. Only a
    // superuser gives a database away, and the other properties need no ownership then.
    let mut owner_after = t.owner.clone();
    if !s.owner_is_superuser && !s.owner.is_empty() {
        match roles(&s.owner) {
            Some(owner) if owner != t.owner => {
                add(format!("ALTER DATABASE {db} OWNER TO {};", ident(&owner)), "owner", true);
                if tgt.server.is_superuser {
                    owner_after = owner;
                }
            }
            Some(_) => {}
            None => findings.push(not_carried(
                "database_property_not_carried",
                &object,
                format!("the source database's owner {} is not on the target", display(&s.owner)),
                None,
            )),
        }
    }
    if s.connection_limit != t.connection_limit {
        // A limit counts pgtransit's own sessions too, unless a superuser's: only then is it
        // carried before the migration ends.
        add(
            format!("ALTER DATABASE {db} CONNECTION LIMIT {};", s.connection_limit),
            "connection limit",
            s.connection_limit >= 0,
        );
    }
    if s.comment.is_some() && s.comment != t.comment {
        let comment = literal(s.comment.as_deref().unwrap_or_default());
        add(format!("COMMENT ON DATABASE {db} IS {comment};"), "comment", false);
    }
    for (name, value) in &s.settings {
        if NEVER_CARRIED.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if t.settings.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        let statement = format!("ALTER DATABASE {db} SET {};", set_clause(name, value));
        match setting_refused(name, tgt) {
            Some(why) if !why.starts_with("only a superuser") => findings.push(not_carried(
                "database_property_not_carried",
                &object,
                format!("the source database's setting {name} = {value} is not carried: {why}"),
                None,
            )),
            Some(_) => add(statement, &format!("setting {name}"), true),
            None => add(statement, &format!("setting {name}"), false),
        }
    }
    for statement in database_grants(src, tgt, roles, &owner_after, &mut findings) {
        add(statement, "grants", false);
    }
    let may_alter = tgt.server.is_superuser || tgt.server.owns_database;
    for (statement, what, needs_superuser) in wanted {
        let allowed = if needs_superuser { tgt.server.is_superuser } else { may_alter };
        if allowed {
            sql.push(statement);
        } else {
            findings.push(not_carried(
                "database_property_not_carried",
                &object,
                format!(
                    "the source database's {what} is not carried: the target's role {} {}",
                    display(&tgt.server.current_user),
                    if needs_superuser {
                        "is not a superuser"
                    } else {
                        "does not own the database"
                    }
                ),
                Some(format!("{statement}  -- on the target, as its owner or a superuser")),
            ));
        }
    }
    (sql, findings)
}

/// GRANTs of the database privileges the source gives and the target lacks (mapped); what the
/// target gives beyond the source is reported, never revoked.
fn database_grants(
    src: &Catalog,
    tgt: &Catalog,
    roles: &dyn Fn(&str) -> Option<String>,
    owner_after: &str,
    findings: &mut Vec<Check>,
) -> Vec<String> {
    let db = ident(&tgt.server.database);
    let object = format!("database {}", display(&tgt.server.database));
    let parse = |acl: &[String]| acl.iter().filter_map(|a| AclItem::parse(a)).collect::<Vec<_>>();
    let s = parse(&src.database.acl);
    // The target's ACL as it will be once the owner step (first) has run.
    let t = crate::objects::acl::rename_role(
        &parse(&tgt.database.acl),
        &tgt.database.owner,
        owner_after,
    );
    let target_has = |grantee: &str, c: char, grantable: bool| {
        grantee == owner_after
            || t.iter().any(|i| {
                i.grantee == grantee
                    && i.privileges.contains(c)
                    && (!grantable || i.grantable.contains(c))
            })
    };
    let keyword = |c: char| match c {
        'C' => "CREATE",
        'c' => "CONNECT",
        'T' => "TEMPORARY",
        _ => "",
    };
    let mut out = vec![];
    let mut wanted: BTreeSet<(String, char)> = BTreeSet::new();
    for item in &s {
        if item.grantee == src.database.owner {
            continue;
        }
        let grantee =
            if item.grantee.is_empty() { Some(String::new()) } else { roles(&item.grantee) };
        let Some(grantee) = grantee else {
            findings.push(not_carried(
                "database_property_not_carried",
                &object,
                format!(
                    "the grant on the database to {} is not carried: the role is not on the target",
                    display(&item.grantee)
                ),
                None,
            ));
            continue;
        };
        let spec = if grantee.is_empty() { "PUBLIC".to_string() } else { ident(&grantee) };
        for c in item.privileges.chars().filter(|&c| !keyword(c).is_empty()) {
            wanted.insert((grantee.clone(), c));
            let with = item.grantable.contains(c);
            if !target_has(&grantee, c, with) {
                let option = if with { " WITH GRANT OPTION" } else { "" };
                out.push(format!("GRANT {} ON DATABASE {db} TO {spec}{option};", keyword(c)));
            }
        }
    }
    for item in t.iter().filter(|i| i.grantee != owner_after) {
        for c in item.privileges.chars().filter(|&c| !keyword(c).is_empty()) {
            if !wanted.contains(&(item.grantee.clone(), c)) {
                let who = if item.grantee.is_empty() {
                    "PUBLIC".to_string()
                } else {
                    display(&item.grantee)
                };
                let spec = if item.grantee.is_empty() {
                    "PUBLIC".to_string()
                } else {
                    ident(&item.grantee)
                };
                findings.push(Check {
                    code: "database_grant_extra".into(),
                    severity: Severity::Warning,
                    object: object.clone(),
                    message: format!("the target gives {who} {} on the database, the source does not: left as it is", keyword(c)),
                    fix: Some(format!("REVOKE {} ON DATABASE {db} FROM {spec};  -- on the target, if it should not", keyword(c))),
                });
            }
        }
    }
    out
}

/// Server parameters applications see that differ (after the database's settings are
/// carried), `max_connections` below the source's, and libraries the source preloads and the
/// target does not.
pub fn server_differences(src: &Catalog, tgt: &Catalog) -> Vec<Check> {
    let mut out = vec![];
    let db = ident(&tgt.server.database);
    let carried =
        |name: &str| src.database.settings.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (name, value) in &src.application_settings {
        if name == "shared_preload_libraries" || carried(name) {
            continue;
        }
        let Some(theirs) = tgt.application_settings.get(name) else { continue };
        if theirs != value {
            out.push(Check {
                code: "server_setting_differs".into(),
                severity: Severity::Warning,
                object: format!("setting {name}"),
                message: format!(
                    "{name} is {} on the source and {} on the target: applications that rely \
                     on the default see a different one",
                    literal(value),
                    literal(theirs)
                ),
                fix: Some(format!(
                    "ALTER DATABASE {db} SET {};  -- on the target (or set it in the server's configuration)",
                    set_clause(name, value)
                )),
            });
        }
    }
    let libraries = |c: &Catalog| {
        c.application_settings.get("shared_preload_libraries").map(|v| split_guc_list(v))
    };
    if let (Some(theirs), Some(ours)) = (libraries(tgt), libraries(src)) {
        let missing: Vec<&String> =
            ours.iter().filter(|l| !l.is_empty() && !theirs.contains(l)).collect();
        if !missing.is_empty() {
            let used: Vec<&&String> = missing
                .iter()
                .filter(|l| {
                    src.extensions.iter().any(|e| &&e.name == *l || e.name.starts_with(l.as_str()))
                })
                .collect();
            let mut all = theirs.clone();
            all.extend(missing.iter().map(|l| l.to_string()));
            out.push(Check {
                code: "shared_preload_libraries_differ".into(),
                severity: Severity::Warning,
                object: "setting shared_preload_libraries".into(),
                message: format!(
                    "the source preloads {} and the target does not{}",
                    missing.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", "),
                    if used.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (extension(s) in this database need it: {})",
                            used.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
                fix: Some(format!(
                    "ALTER SYSTEM SET shared_preload_libraries = {};  -- on the target, then restart it \
                     (on a managed service: its parameter group or server parameters)",
                    all.iter().map(|l| literal(l)).collect::<Vec<_>>().join(", ")
                )),
            });
        }
    }
    let max = |c: &Catalog| c.settings.get("max_connections").and_then(|v| v.parse::<i64>().ok());
    if let (Some(ours), Some(theirs)) = (max(src), max(tgt))
        && theirs < ours
    {
        out.push(Check {
            code: "max_connections_lower".into(),
            severity: Severity::Warning,
            object: "setting max_connections".into(),
            message: format!(
                "the target allows {theirs} connections, the source {ours} ({} client sessions \
                 on the source now)",
                src.client_backends
            ),
            fix: Some(format!(
                "ALTER SYSTEM SET max_connections = {ours};  -- on the target, then restart it"
            )),
        });
    }
    out
}

#[cfg(test)]
mod tests;
