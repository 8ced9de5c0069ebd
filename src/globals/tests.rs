use super::*;
use crate::catalog::{DatabaseProps, Membership};

fn role(name: &str) -> Role {
    Role { name: name.into(), inherit: true, connection_limit: -1, ..Default::default() }
}

fn member(role: &str, member: &str) -> Membership {
    Membership { role: role.into(), member: member.into(), ..Default::default() }
}

fn servers() -> (Catalog, Catalog) {
    let mut src = Catalog::default();
    src.server.version_num = 160004;
    src.server.database = "shop".into();
    src.server.current_user = "postgres".into();
    src.roles = vec![Role { superuser: true, ..role("postgres") }];
    let mut tgt = src.clone();
    tgt.server.is_superuser = true;
    tgt.parameters =
        [("search_path", "user"), ("work_mem", "user"), ("log_statement", "superuser")]
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
    (src, tgt)
}

fn spec(missing: MissingRoles, include: &[&str]) -> Roles {
    Roles {
        map: Default::default(),
        missing,
        include: include
            .iter()
            .map(|p| {
                let at = serde_saphyr::Location::UNKNOWN;
                serde_saphyr::Spanned::new(p.to_string(), at, at)
            })
            .collect(),
    }
}

fn used(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn created(c: &RolesCarried) -> Vec<&str> {
    c.create.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn members_of_a_carried_role_come_with_it_transitively_and_their_groups_for_their_memberships() {
    let (mut src, mut tgt) = servers();
    for r in ["readers", "app_users", "alice", "auditors", "app_owner", "deploy", "bystander"] {
        src.roles.push(Role { login: r == "alice", ..role(r) });
    }
    src.roles.push(role("existing"));
    tgt.roles.push(role("existing"));
    tgt.roles.push(role("admin"));
    src.memberships = vec![
        member("readers", "app_users"),
        member("app_users", "alice"),
        member("auditors", "alice"),
        member("app_owner", "deploy"),
        member("readers", "existing"),
        member("pg_read_all_stats", "alice"),
    ];
    tgt.roles.push(Role { grantable: true, ..role("pg_read_all_stats") });
    let mut roles = spec(MissingRoles::Create, &[]);
    roles.map.insert("app_owner".into(), "admin".into());
    let c = super::roles(&roles, &used(&["readers", "app_owner", "postgres"]), &src, &tgt);
    // deploy reaches scope through a mapped role: not followed. bystander: nothing.
    assert_eq!(created(&c), ["alice", "app_users", "auditors", "readers"]);
    let grants: Vec<String> = c.grants.values().flatten().cloned().collect();
    assert_eq!(
        grants,
        [
            "GRANT \"app_users\" TO \"alice\";",
            "GRANT \"auditors\" TO \"alice\";",
            "GRANT \"pg_read_all_stats\" TO \"alice\";",
            "GRANT \"readers\" TO \"app_users\";",
            "GRANT \"readers\" TO \"existing\";",
        ]
    );
    // A membership the target has is not granted again.
    tgt.memberships.push(member("readers", "existing"));
    let c = super::roles(&roles, &used(&["readers", "app_owner"]), &src, &tgt);
    assert!(!c.grants.contains_key("existing"), "{:?}", c.grants);
}

#[test]
fn without_create_only_named_roles_and_their_groups_come_and_login_members_left_behind_are_reported()
 {
    let (mut src, tgt) = servers();
    for r in ["readers", "alice", "bob", "ops_1", "ops_2"] {
        src.roles.push(Role { login: r != "readers", ..role(r) });
    }
    src.memberships = vec![member("readers", "alice"), member("readers", "bob")];
    let c = super::roles(
        &spec(MissingRoles::Error, &["ops_*", "bob"]),
        &used(&["readers"]),
        &src,
        &tgt,
    );
    assert_eq!(created(&c), ["bob", "ops_1", "ops_2", "readers"]);
    let missing: Vec<&str> = c
        .findings
        .iter()
        .filter(|f| f.code == "role_member_missing")
        .map(|f| f.object.as_str())
        .collect();
    assert_eq!(missing, ["role alice"]);
    assert_eq!(c.grants["bob"], ["GRANT \"readers\" TO \"bob\";"]);
}

#[test]
fn a_role_is_created_with_its_attributes_verifier_placeholder_and_settings() {
    let (mut src, tgt) = servers();
    src.roles.push(Role {
        login: true,
        createdb: true,
        replication: true,
        inherit: false,
        connection_limit: 5,
        valid_until: Some("2030-01-01 00:00:00.000000+00".into()),
        password: PasswordKind::Scram,
        settings: vec![("search_path".into(), "\"$user\", app".into())],
        settings_here: vec![("work_mem".into(), "64MB".into())],
        ..role("alice")
    });
    let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, &tgt);
    let alice = &c.create[0];
    assert!(alice.reads_verifier);
    assert_eq!(
        alice.sql,
        "CREATE ROLE \"alice\" WITH LOGIN CREATEDB REPLICATION NOINHERIT CONNECTION LIMIT 5 \
         VALID UNTIL '2030-01-01 00:00:00.000000+00';\n\
         ALTER ROLE \"alice\" PASSWORD :'source_verifier';\n\
         ALTER ROLE \"alice\" SET \"search_path\" TO '$user', 'app';"
    );
    // Its settings in this database are their own step, as for a role created by the plan of
    // another database of the migration (whose settings here the target lacks).
    assert_eq!(
        c.settings_here["alice"],
        ["ALTER ROLE \"alice\" IN DATABASE \"shop\" SET \"work_mem\" TO '64MB';"]
    );
    let mut tgt = tgt;
    tgt.roles.push(Role { settings_here: vec![], ..src.roles[1].clone() });
    let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, &tgt);
    assert!(c.create.is_empty());
    assert_eq!(c.settings_here["alice"].len(), 1);
    tgt.roles[1].settings_here = src.roles[1].settings_here.clone();
    let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, &tgt);
    assert!(c.settings_here.is_empty(), "already there: {:?}", c.settings_here);
    assert!(c.findings.is_empty(), "{:?}", c.findings);
}

#[test]
fn what_the_targets_role_may_not_give_is_reported_and_left_out() {
    let (mut src, mut tgt) = servers();
    tgt.server.is_superuser = false;
    tgt.server.current_user = "admin".into();
    tgt.server.version_num = 150000;
    tgt.roles.push(Role { createrole: true, ..role("admin") });
    src.roles.push(Role {
        superuser: true,
        login: true,
        bypassrls: true,
        createdb: true,
        password: PasswordKind::Unknown,
        settings: vec![("log_statement".into(), "all".into()), ("no_such".into(), "1".into())],
        ..role("dba")
    });
    let c = super::roles(&spec(MissingRoles::Error, &["dba"]), &used(&[]), &src, &tgt);
    // Before 16, CREATEROLE may give CREATEDB.
    // The target's role becomes a member, to give it its objects.
    assert_eq!(
        c.create[0].sql,
        "CREATE ROLE \"dba\" WITH LOGIN CREATEDB;\nGRANT \"dba\" TO \"admin\";"
    );
    let codes: Vec<(&str, &str)> =
        c.findings.iter().map(|f| (f.code.as_str(), f.message.as_str())).collect();
    let has = |code: &str, text: &str| codes.iter().any(|(c, m)| *c == code && m.contains(text));
    assert!(has("role_attribute_not_carried", "SUPERUSER"), "{codes:?}");
    assert!(has("role_attribute_not_carried", "BYPASSRLS"), "{codes:?}");
    assert!(has("role_password_not_carried", "without a password"), "{codes:?}");
    assert!(has("role_setting_not_carried", "log_statement"), "{codes:?}");
    assert!(has("role_setting_not_carried", "has no parameter no_such"), "{codes:?}");
    // A role that may create no role at all stops the plan.
    tgt.roles.retain(|r| r.name != "admin");
    tgt.roles.push(role("admin"));
    let c = super::roles(&spec(MissingRoles::Error, &["dba"]), &used(&[]), &src, &tgt);
    assert!(
        c.findings
            .iter()
            .any(|f| f.code == "target_cannot_create_roles" && f.severity == Severity::Error)
    );
}

#[test]
fn membership_options_of_postgresql_16_are_kept() {
    let (mut src, _) = servers();
    src.roles.push(role("m"));
    src.roles.push(Role { inherit: false, ..role("n") });
    let m = |admin, inherit, set| Membership {
        role: "g".into(),
        member: "m".into(),
        admin,
        inherit,
        set,
    };
    assert_eq!(grant_sql(&m(false, None, None)), "GRANT \"g\" TO \"m\";");
    assert_eq!(grant_sql(&m(true, None, None)), "GRANT \"g\" TO \"m\" WITH ADMIN OPTION;");
    assert_eq!(
        grant_sql(&m(true, Some(false), Some(false))),
        "GRANT \"g\" TO \"m\" WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;"
    );
    // From 16, INHERIT is always said (unsaid, the target's member attribute would decide).
    assert_eq!(
        grant_sql(&m(false, Some(true), Some(true))),
        "GRANT \"g\" TO \"m\" WITH INHERIT TRUE;"
    );
    let n = Membership { member: "n".into(), ..m(false, Some(true), Some(true)) };
    assert_eq!(grant_sql(&n), "GRANT \"g\" TO \"n\" WITH INHERIT TRUE;");
}

#[test]
fn list_settings_become_one_literal_per_element_as_pg_dump_writes_them() {
    assert_eq!(
        set_clause("search_path", "\"$user\", public"),
        "\"search_path\" TO '$user', 'public'"
    );
    assert_eq!(
        set_clause("search_path", "\"My Schema\",\"a\"\"b\""),
        "\"search_path\" TO 'My Schema', 'a\"b'"
    );
    assert_eq!(set_clause("search_path", ""), "\"search_path\" TO ''");
    assert_eq!(set_clause("TimeZone", "Europe/Paris"), "\"TimeZone\" TO 'Europe/Paris'");
    assert_eq!(set_clause("app.note", "it's"), "\"app.note\" TO 'it''s'");
}

fn database_of(owner: &str, acl: &[&str], settings: &[(&str, &str)]) -> DatabaseProps {
    DatabaseProps {
        owner: owner.into(),
        owner_is_superuser: owner == "postgres",
        connection_limit: -1,
        comment: None,
        acl: acl.iter().map(|a| a.to_string()).collect(),
        settings: settings.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
    }
}

#[test]
fn database_properties_are_added_never_revoked_and_the_owner_goes_first() {
    let (mut src, mut tgt) = servers();
    src.database = database_of(
        "app_owner",
        &["=T/app_owner", "app_owner=CTc/app_owner", "readers=c/app_owner"],
        &[("search_path", "app, public"), ("default_transaction_read_only", "on")],
    );
    src.database.connection_limit = 50;
    src.database.comment = Some("the shop".into());
    tgt.database = database_of("postgres", &["=Tc/postgres", "postgres=CTc/postgres"], &[]);
    let roles = |r: &str| (r != "ghost").then(|| r.to_string());
    let (sql, findings) = database(&src, &tgt, &roles);
    assert_eq!(
        sql,
        [
            "ALTER DATABASE \"shop\" OWNER TO \"app_owner\";",
            "ALTER DATABASE \"shop\" CONNECTION LIMIT 50;",
            "COMMENT ON DATABASE \"shop\" IS 'the shop';",
            "ALTER DATABASE \"shop\" SET \"search_path\" TO 'app', 'public';",
            "GRANT CONNECT ON DATABASE \"shop\" TO \"readers\";",
        ]
    );
    // PUBLIC may connect on the target, not on the source: reported, not revoked.
    assert!(findings.iter().any(|f| f.code == "database_grant_extra"
        && f.fix.as_deref() == Some("REVOKE CONNECT ON DATABASE \"shop\" FROM PUBLIC;  -- on the target, if it should not")));
    // Once carried, nothing is left to do.
    tgt.database = src.database.clone();
    tgt.database.settings.retain(|(n, _)| n != "default_transaction_read_only");
    let (sql, _) = database(&src, &tgt, &roles);
    assert!(sql.is_empty(), "{sql:?}");
    // A grant to the target's owner before it gives the database away: its implicit
    // privileges go with the database, so the grant is made, after the owner moves.
    let mut owned = tgt.clone();
    owned.database = database_of("admin", &["=Tc/admin", "admin=CTc/admin"], &[]);
    owned.database.connection_limit = 50;
    owned.database.comment = Some("the shop".into());
    let mut granting = src.clone();
    granting.database.acl.push("admin=c/app_owner".into());
    granting.database.settings.clear();
    let (sql, _) = database(&granting, &owned, &roles);
    assert_eq!(
        sql,
        [
            "ALTER DATABASE \"shop\" OWNER TO \"app_owner\";",
            "GRANT CONNECT ON DATABASE \"shop\" TO \"readers\";",
            "GRANT CONNECT ON DATABASE \"shop\" TO \"admin\";",
        ]
    );
    // A role that owns nothing there may not alter the database: each property reported.
    tgt.database.connection_limit = 5;
    tgt.server.is_superuser = false;
    let (sql, findings) = database(&src, &tgt, &roles);
    assert!(sql.is_empty());
    assert!(findings.iter().any(
        |f| f.code == "database_property_not_carried" && f.message.contains("connection limit")
    ));
}

#[test]
fn server_settings_that_differ_are_reported_unless_the_database_carries_them() {
    let (mut src, mut tgt) = servers();
    let set = |c: &mut Catalog, n: &str, v: &str| {
        c.application_settings.insert(n.into(), v.into());
    };
    set(&mut src, "TimeZone", "Europe/Paris");
    set(&mut tgt, "TimeZone", "UTC");
    set(&mut src, "DateStyle", "SQL, DMY");
    set(&mut tgt, "DateStyle", "ISO, MDY");
    src.database.settings = vec![("DateStyle".into(), "SQL, DMY".into())];
    set(&mut src, "shared_preload_libraries", "pg_stat_statements, pg_cron");
    set(&mut tgt, "shared_preload_libraries", "pg_stat_statements");
    src.extensions.push(crate::catalog::Extension { name: "pg_cron".into(), ..Default::default() });
    src.settings.insert("max_connections".into(), "500".into());
    tgt.settings.insert("max_connections".into(), "100".into());
    let found = server_differences(&src, &tgt);
    let codes: Vec<&str> = found.iter().map(|c| c.object.as_str()).collect();
    assert_eq!(
        codes,
        ["setting TimeZone", "setting shared_preload_libraries", "setting max_connections"]
    );
    assert!(found[1].message.contains("need it: pg_cron"), "{}", found[1].message);
    assert_eq!(
        found[1].fix.as_deref().unwrap().split("  --").next().unwrap(),
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'pg_cron';"
    );
}

#[test]
fn bootstrap_superusers_predefined_and_providers_roles_bring_nobody_and_are_not_recreated_whole() {
    let (mut src, tgt) = servers();
    src.roles[0].builtin = true;
    src.roles[0].login = true;
    src.roles[0].password = PasswordKind::Scram;
    for r in ["monitor_agent", "rds_superuser", "app"] {
        src.roles.push(Role { login: true, ..role(r) });
    }
    src.memberships = vec![
        member("pg_monitor", "monitor_agent"),
        member("postgres", "app"),
        member("rds_superuser", "app"),
    ];
    let mut tgt = tgt;
    tgt.roles = vec![Role { superuser: true, ..role("azure_su") }];
    tgt.server.current_user = "azure_su".into();
    let c = super::roles(
        &spec(MissingRoles::Create, &[]),
        &used(&["postgres", "pg_monitor", "rds_superuser"]),
        &src,
        &tgt,
    );
    // The source's bootstrap superuser owns things: created bare; nobody comes through it,
    // through pg_monitor or through a provider's role, which is not created either.
    assert_eq!(created(&c), ["postgres"]);
    assert_eq!(c.create[0].sql, "CREATE ROLE \"postgres\" WITH NOLOGIN;");
    assert!(!c.create[0].reads_verifier);
}

#[test]
fn a_target_that_logs_ddl_is_warned_about_when_pgtransit_may_not_turn_it_off() {
    let (mut src, mut tgt) = servers();
    src.roles.push(Role { login: true, password: PasswordKind::Scram, ..role("alice") });
    tgt.settings.insert("log_statement".into(), "ddl".into());
    let logged = |tgt: &Catalog| {
        let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, tgt);
        c.findings.iter().any(|f| f.code == "role_password_logged")
    };
    // A superuser turns it off for the transaction.
    assert!(!logged(&tgt));
    tgt.server.is_superuser = false;
    tgt.server.current_user = "admin".into();
    tgt.roles.push(Role { createrole: true, ..role("admin") });
    assert!(logged(&tgt));
    tgt.settings.insert("log_statement".into(), "none".into());
    assert!(!logged(&tgt));
}

#[test]
fn providers_roles_are_known_by_name_not_by_prefix() {
    assert!(
        predefined("rds_superuser") && predefined("cloudsqlsuperuser") && predefined("pg_monitor")
    );
    assert!(!predefined("rdsmith") && !predefined("azure_team") && !predefined("neon_app"));
}

#[test]
fn settings_of_a_role_that_exists_need_createrole_on_a_role_that_is_no_superuser() {
    let (mut src, mut tgt) = servers();
    src.roles
        .push(Role { settings_here: vec![("work_mem".into(), "8MB".into())], ..role("alice") });
    tgt.roles.push(Role { grantable: true, ..role("alice") });
    tgt.server.is_superuser = false;
    tgt.server.current_user = "admin".into();
    tgt.roles.push(role("admin"));
    let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, &tgt);
    // ADMIN OPTION alone is not enough: CREATEROLE is.
    assert!(c.settings_here.is_empty());
    assert!(c.findings.iter().any(|f| f.code == "role_setting_not_carried"));
    tgt.roles.last_mut().unwrap().createrole = true;
    let c = super::roles(&spec(MissingRoles::Error, &["alice"]), &used(&[]), &src, &tgt);
    assert_eq!(c.settings_here["alice"].len(), 1);
}
