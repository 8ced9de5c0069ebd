//! Roles and the database's own properties, carried as on the source: attributes, SCRAM
//! verifiers, settings, nested memberships, `ALTER DATABASE ... SET`, owner, grants.

use std::process::Command;

use pgtransit::cluster::{ClusterOptions, LocalCluster};

use crate::support::*;

const ROLES: &str = "
SET password_encryption = 'scram-sha-256';
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE readers NOLOGIN;
CREATE ROLE writers NOLOGIN IN ROLE readers;
CREATE ROLE alice LOGIN PASSWORD 'alice-secret' CONNECTION LIMIT 7
  VALID UNTIL '2031-02-03 04:05:06+00' IN ROLE writers;
CREATE ROLE reporting LOGIN NOINHERIT CREATEDB BYPASSRLS PASSWORD 'rep-secret';
ALTER ROLE reporting SET search_path = reports, \"$user\", public;
ALTER ROLE reporting SET statement_timeout = '5min';
ALTER ROLE reporting IN DATABASE app SET work_mem = '64MB';
GRANT readers TO reporting WITH ADMIN OPTION;
GRANT pg_read_all_stats TO reporting;
CREATE ROLE ops LOGIN;
CREATE ROLE unrelated LOGIN;
CREATE SCHEMA shop AUTHORIZATION app_owner;
CREATE TABLE shop.items (id int PRIMARY KEY, name text);
ALTER TABLE shop.items OWNER TO app_owner;
INSERT INTO shop.items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
GRANT USAGE ON SCHEMA shop TO readers;
GRANT SELECT ON shop.items TO readers;
GRANT INSERT, UPDATE ON shop.items TO writers;
ALTER DATABASE app OWNER TO app_owner;
ALTER DATABASE app SET \"TimeZone\" = 'Europe/Paris';
ALTER DATABASE app SET search_path = shop, public;
ALTER DATABASE app CONNECTION LIMIT 40;
COMMENT ON DATABASE app IS 'the shop';
REVOKE TEMPORARY ON DATABASE app FROM PUBLIC;
GRANT CONNECT ON DATABASE app TO readers;
";

/// `pg_dumpall --globals-only --no-role-passwords`, without the lines naming `skip`.
fn globals(c: &LocalCluster, skip: &[&str]) -> String {
    dumpall_globals(&c.bin("pg_dumpall"), c, skip)
}

/// Logs in over TCP (scram-sha-256 on the target) as `user` with `password`.
fn login(c: &LocalCluster, user: &str, password: &str) -> Result<String, String> {
    let out = Command::new(c.bin("psql"))
        .args(["-h", c.host(), "-p", &c.port().to_string(), "-U", user, "-d", "app"])
        .args(["-XAtc", "SELECT current_user || ' ' || current_setting('TimeZone')"])
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn roles_carry_attributes_nested_memberships_settings_and_scram_verifiers_and_the_database_its_properties()
 {
    let src = cluster("globals-src", &[]);
    src.create_database("app").unwrap();
    sql(&src, "app", ROLES);
    let password = "target-secret";
    let tgt = cluster_with(ClusterOptions {
        name: "globals-tgt".into(),
        superuser_password: Some(password.into()),
        ..Default::default()
    });
    tgt.create_database("app").unwrap();
    let dir = TempDir::new("globals");
    let extra = "mode: offline\nroles:\n  missing: create\n  include: [ops]\n";
    let f =
        dir.write("globals.yaml", &plan_yaml("globals", &src.url("app"), &tgt.url("app"), extra));
    let f = f.to_str().unwrap();
    let pgtransit_run = |args: &[&str]| {
        Run::of(pgtransit(dir.path()).env("PGPASSWORD", password).args(args).output().unwrap())
    };
    let out = pgtransit_run(&["plan", f, "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    let step = |id: &str| {
        doc["steps"].as_array().unwrap().iter().find(|s| s["id"] == id).cloned().unwrap_or_else(
            || panic!("no step {id} in {}", serde_json::to_string_pretty(&doc["steps"]).unwrap()),
        )
    };
    // The plan shows where the verifier goes, never the verifier.
    let alice = step("schema:role:alice");
    assert!(alice["sql"].as_str().unwrap().contains("PASSWORD :'source_verifier'"), "{alice}");
    assert!(!out.stdout.contains("SCRAM-SHA-256$"), "a verifier is in the plan");
    // Only what the migration needs, what the plan names, and their memberships come.
    for role in ["app_owner", "readers", "writers", "reporting", "ops"] {
        step(&format!("schema:role:{role}"));
    }
    // ... and the roles left behind are listed, so what differs between the servers' roles
    // afterwards is on record.
    let behind = find_check(&doc, "roles_not_carried", "info", "roles");
    assert!(behind["message"].as_str().unwrap().ends_with(": unrelated"), "{behind}");
    assert!(!doc["steps"].to_string().contains("unrelated"), "{out:?}");
    let database = step("post_load:database:app");
    assert!(
        database["sql"]
            .as_str()
            .unwrap()
            .starts_with("ALTER DATABASE \"app\" OWNER TO \"app_owner\";"),
        "{database}"
    );
    // PUBLIC may still use temporary tables on the target: reported, not revoked.
    find_check(&doc, "database_grant_extra", "warning", "database app");

    // Whatever the log level asks, no statement the client sends is logged.
    let out = Run::of(
        pgtransit(dir.path())
            .env("PGPASSWORD", password)
            .env("PGTRANSIT_LOG", "trace")
            .args(["apply", f, "--auto-approve"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("SCRAM-SHA-256$"), "a verifier in pgtransit's log: {out:?}");
    assert!(
        !std::fs::read_to_string(dir.path().join(".pgtransit/globals/state.json"))
            .unwrap_or_default()
            .contains("SCRAM-SHA-256$")
    );

    // pg_dumpall's globals agree but for what is not carried (and the target's own password).
    assert_eq!(globals(&tgt, &["unrelated"]), globals(&src, &["unrelated"]));
    let verifier = "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'";
    assert!(sql(&src, "app", verifier).starts_with("SCRAM-SHA-256$"));
    assert_eq!(sql(&tgt, "app", verifier), sql(&src, "app", verifier));
    // The same password logs in, and the database's time zone applies to the session.
    assert_eq!(login(&tgt, "alice", "alice-secret").unwrap(), "alice Europe/Paris");
    assert!(login(&tgt, "alice", "wrong").is_err());
    let in_database = "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s \
                       JOIN pg_roles r ON r.oid = s.setrole \
                       JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'app'";
    assert_eq!(sql(&tgt, "app", in_database), sql(&src, "app", in_database));
    let props = "SELECT pg_get_userbyid(datdba), datconnlimit, shobj_description(oid, 'pg_database'), \
                 (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0), \
                 has_database_privilege('readers', datname, 'CONNECT') \
                 FROM pg_database d WHERE datname = 'app'";
    assert_eq!(sql(&tgt, "app", props), sql(&src, "app", props));
    assert_migrated(&src, &tgt, "app");

    // Everything is there: nothing is left to do.
    let out = pgtransit_run(&["plan", f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
}

/// Roles whose definition each version spells its own way: an MD5 verifier from 13 (salted with
/// the role's name: carried unchanged, it still logs in on 18), and from 16 the INHERIT and SET
/// options of a membership. Both sides are dumped by the newer pg_dumpall.
#[test]
fn roles_from_13_to_18_and_from_16_to_17_keep_md5_verifiers_and_membership_options() {
    for (from, to) in [(13, 18), (16, 17)] {
        let Some(src) = cluster_of(from, &format!("globals-{from}"), &[]) else { return };
        let password = "target-secret";
        let Some(bin) = pg_bin(to) else { return };
        let tgt = cluster_with(ClusterOptions {
            name: format!("globals-{to}"),
            superuser_password: Some(password.into()),
            bin_dir: Some(bin),
            ..Default::default()
        });
        src.create_database("app").unwrap();
        tgt.create_database("app").unwrap();
        let mut setup = String::from(
            "SET password_encryption = 'md5';
             CREATE ROLE legacy LOGIN PASSWORD 'legacy-secret';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE readers;
             CREATE ROLE keeper LOGIN PASSWORD 'keeper-secret';
             CREATE TABLE t (id int PRIMARY KEY);
             GRANT SELECT ON t TO readers;
             GRANT readers TO legacy;",
        );
        if from >= 16 {
            setup.push_str("GRANT readers TO keeper WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;");
        } else {
            setup.push_str("GRANT readers TO keeper WITH ADMIN OPTION;");
        }
        sql(&src, "app", &setup);
        let dir = TempDir::new(&format!("globals-{from}-{to}"));
        let extra = "mode: offline\nroles:\n  missing: create\n";
        let f = dir.write("g.yaml", &plan_yaml("g", &src.url("app"), &tgt.url("app"), extra));
        let pgtransit_run = |args: &[&str]| {
            Run::of(pgtransit(dir.path()).env("PGPASSWORD", password).args(args).output().unwrap())
        };
        let out = pgtransit_run(&["plan", f.to_str().unwrap(), "--format", "json"]);
        find_check(&out.json(), "role_password_md5", "warning", "legacy");
        let out = pgtransit_run(&["apply", f.to_str().unwrap(), "--auto-approve"]);
        assert_eq!(out.code, 0, "{from} -> {to}: {out:?}");
        let dumpall = tgt.bin("pg_dumpall");
        let mut target = dumpall_globals(&dumpall, &tgt, &[]);
        if from < 16 {
            // pg_dumpall spells out a 16+ server's membership options and grantor, which an
            // older server does not record (there, INHERIT is the member's attribute).
            for default in [", INHERIT TRUE", " WITH INHERIT TRUE", " GRANTED BY postgres"] {
                target = target.replace(default, "");
            }
        }
        assert_eq!(target, dumpall_globals(&dumpall, &src, &[]), "{from} -> {to}");
        let verifiers = "SELECT rolname, rolpassword FROM pg_authid \
                         WHERE rolname IN ('legacy', 'keeper') ORDER BY 1";
        assert_eq!(sql(&tgt, "app", verifiers), sql(&src, "app", verifiers), "{from} -> {to}");
        // The target's pg_hba.conf says scram-sha-256: the SCRAM verifier logs in, the MD5 hash
        // (the same as the source's) cannot, as preflight warned.
        assert!(login(&tgt, "keeper", "keeper-secret").is_ok(), "{from} -> {to}");
        assert!(login(&tgt, "legacy", "legacy-secret").is_err(), "{from} -> {to}");
    }
}

/// A target whose role is no superuser, as on a managed service: `CREATEROLE` and the
/// database's owner. What it may not give (SUPERUSER, REPLICATION and BYPASSRLS before 16, the
/// database's owner) is reported and left out, and the rest is carried: the roles own their
/// objects. (The owner of a table needs CREATE on its schema: on the target, `app_owner` does not
/// own the database, so it needs the grant on `public` the source also gives it.)
#[test]
fn a_target_role_without_superuser_carries_what_it_may_and_reports_the_rest() {
    let src = cluster("globals-managed-src", &[]);
    src.create_database("app").unwrap();
    sql(
        &src,
        "app",
        "CREATE ROLE app_owner;
         CREATE ROLE dba LOGIN SUPERUSER;
         CREATE ROLE replicator LOGIN REPLICATION BYPASSRLS IN ROLE app_owner;
         CREATE TABLE t (id int PRIMARY KEY);
         ALTER TABLE t OWNER TO app_owner;
         INSERT INTO t SELECT generate_series(1, 10);
         ALTER DATABASE app OWNER TO app_owner;
         GRANT CREATE ON SCHEMA public TO app_owner;
         ALTER DATABASE app SET work_mem = '8MB';",
    );
    let tgt = cluster("globals-managed-tgt", &[]);
    sql(&tgt, "postgres", "CREATE ROLE admin LOGIN CREATEROLE CREATEDB");
    sql(&tgt, "postgres", "CREATE DATABASE app OWNER admin");
    let dir = TempDir::new("globals-managed");
    let target_url = format!("postgresql://admin@{}:{}/app", tgt.host(), tgt.port());
    let extra = "mode: offline\nroles:\n  missing: create\n  include: [dba]\n";
    let f = dir.write("m.yaml", &plan_yaml("m", &src.url("app"), &target_url, extra));
    let f = f.to_str().unwrap();
    let out = run(dir.path(), &["plan", f, "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    find_check(&doc, "role_attribute_not_carried", "warning", "role dba");
    let replicator = checks(&doc, "role_attribute_not_carried")
        .into_iter()
        .filter(|c| c["object"] == "role replicator")
        .count();
    assert_eq!(replicator, 2, "REPLICATION and BYPASSRLS");
    let owner = find_check(&doc, "database_property_not_carried", "warning", "database app");
    assert!(
        owner["fix"].as_str().unwrap().starts_with("ALTER DATABASE \"app\" OWNER TO"),
        "{owner}"
    );
    find_check(&doc, "role_granted_to_target_user", "info", "role app_owner");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    let roles = "SELECT rolname, rolsuper, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles \
                 WHERE rolname IN ('dba', 'replicator') ORDER BY 1";
    assert_eq!(sql(&tgt, "app", roles), "dba|f|f|f|t\nreplicator|f|f|f|t");
    assert_eq!(
        sql(&tgt, "app", "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'"),
        "app_owner"
    );
    let member = "SELECT pg_has_role('replicator', 'app_owner', 'MEMBER')";
    assert_eq!(sql(&tgt, "app", member), "t");
    let settings = "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d \
                    ON d.oid = s.setdatabase WHERE d.datname = 'app' AND s.setrole = 0";
    assert_eq!(sql(&tgt, "app", settings), "{work_mem=8MB}");
    assert_same_rows(&src, &tgt, "app");
}

/// A role step that fails (here the role appeared on the target after the plan; the same
/// happens when an interrupted step runs again) leaves no password verifier in the target's
/// server log, which records a failing statement whole: the password goes on its own, last.
#[test]
fn a_failing_role_step_leaves_no_verifier_in_the_targets_log() {
    let src = cluster("globals-log-src", &[]);
    src.create_database("app").unwrap();
    sql(
        &src,
        "app",
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE alice LOGIN PASSWORD 'alice-secret';
         CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO alice;",
    );
    let tgt = cluster(
        "globals-log-tgt",
        &[
            ("log_min_error_statement", "error"),
            ("log_statement", "all"),
            ("log_min_duration_statement", "0"),
            ("log_transaction_sample_rate", "1"),
        ],
    );
    tgt.create_database("app").unwrap();
    let dir = TempDir::new("globals-log");
    let extra = "mode: offline\nroles:\n  missing: create\n";
    let f = dir.write("l.yaml", &plan_yaml("l", &src.url("app"), &tgt.url("app"), extra));
    let f = f.to_str().unwrap();
    let saved = dir.path().join("plan.json");
    let out = run(dir.path(), &["plan", f, "--out", saved.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    sql(&tgt, "app", "CREATE ROLE alice");
    let out = run(dir.path(), &["apply", saved.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("role \"alice\" already"), "{out:?}");
    // The verifier itself (pgtransit's catalog queries name the prefix `SCRAM-SHA-256$`).
    let verifier = "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'";
    let secret = sql(&src, "app", verifier);
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let log = tgt.log_tail(1_000_000);
    assert!(log.contains("role \"alice\" already exists"), "{log}");
    assert!(!log.contains(&secret), "the verifier is in the server log:\n{log}");
    // Created for real on a target that logs every statement, its duration, and samples
    // transactions: pgtransit, a superuser there, turns all of it off for the role's step.
    sql(&tgt, "app", "DROP ROLE alice");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    let log = tgt.log_tail(1_000_000);
    assert!(log.contains("LOG:  statement: "), "the server logs statements: {log}");
    assert!(!log.contains(&secret), "the verifier is in the server log:\n{log}");
    assert_eq!(sql(&tgt, "app", verifier), secret);
}
