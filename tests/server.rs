//! Whole-server migrations (`databases:`): several databases and every role in one migration
//! plan, planned per database, applied one database after another (online: streamed, and cut
//! over together).

use std::process::Command;
use std::time::Duration;

use pgtransit::cluster::{ClusterOptions, LocalCluster};

use crate::support::*;

/// Fifteen roles: an owner, group roles with nested memberships, login roles with SCRAM
/// passwords, a read-only role, one with per-database settings.
const ROLES: &str = "
SET password_encryption = 'scram-sha-256';
CREATE ROLE app_owner;
CREATE ROLE readers;
CREATE ROLE writers IN ROLE readers;
CREATE ROLE auditors IN ROLE readers;
CREATE ROLE readonly;
CREATE ROLE app_login LOGIN PASSWORD 'app-secret' IN ROLE writers;
CREATE ROLE report_login LOGIN PASSWORD 'report-secret' CONNECTION LIMIT 3 IN ROLE readonly;
ALTER ROLE report_login SET search_path = reports, public;
CREATE ROLE auditor_login LOGIN IN ROLE auditors;
CREATE ROLE ops LOGIN CREATEDB;
CREATE ROLE batch LOGIN NOINHERIT IN ROLE writers;
CREATE ROLE tenant_admin CREATEROLE;
CREATE ROLE tenant_a LOGIN IN ROLE tenant_admin;
CREATE ROLE tenant_b LOGIN IN ROLE tenant_admin;
CREATE ROLE unused;
CREATE ROLE expired LOGIN VALID UNTIL '2020-01-01 00:00:00+00';
";

/// Ten schemas with a table each, owned by `app_owner`, read by `readonly`.
fn tenants_sql() -> String {
    let mut s = String::new();
    for i in 1..=10 {
        s.push_str(&format!(
            "CREATE SCHEMA tenant_{i} AUTHORIZATION app_owner;
             CREATE TABLE tenant_{i}.accounts (id int PRIMARY KEY, name text);
             ALTER TABLE tenant_{i}.accounts OWNER TO app_owner;
             INSERT INTO tenant_{i}.accounts SELECT g, 'account ' || g FROM generate_series(1, {}) g;
             GRANT USAGE ON SCHEMA tenant_{i} TO readonly;
             GRANT SELECT ON tenant_{i}.accounts TO readonly;\n",
            i * 100
        ));
    }
    s
}

const LOBS: &str = "
CREATE TABLE docs (id int PRIMARY KEY, doc oid);
INSERT INTO docs VALUES (1, lo_from_bytea(0, 'a small document')),
  (2, lo_from_bytea(0, decode(repeat('00ff', 50000), 'hex')));
GRANT SELECT ON docs TO auditors;
";

const DATABASES: [&str; 4] = ["lobs", "pagila", "shop", "tenants"];

fn fill_source(src: &LocalCluster) {
    sql(src, "postgres", ROLES);
    load_pagila(src, "pagila");
    sql(src, "pagila", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO readers");
    sql(src, "pagila", "ALTER ROLE report_login IN DATABASE pagila SET work_mem = '32MB'");
    src.create_database("shop").unwrap();
    let shop =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands/demo_sample.sql");
    src.psql_file("shop", &shop).unwrap();
    src.create_database("lobs").unwrap();
    sql(src, "lobs", LOBS);
    src.create_database("tenants").unwrap();
    sql(src, "tenants", &tenants_sql());
    sql(src, "postgres", "ALTER DATABASE tenants SET search_path = tenant_1, public");
    sql(src, "postgres", "ALTER DATABASE pagila SET \"TimeZone\" = 'America/New_York'");
    sql(src, "postgres", "CREATE DATABASE scratch");
}

#[test]
fn four_databases_and_fifteen_roles_move_in_one_plan_and_a_database_added_later_is_reported() {
    let src = cluster("server-src", &[]);
    fill_source(&src);
    let password = "target-secret";
    let tgt = cluster_with(ClusterOptions {
        name: "server-tgt".into(),
        superuser_password: Some(password.into()),
        ..Default::default()
    });
    let dir = TempDir::new("server");
    let extra = "mode: offline\n\
                 databases:\n  include: [\"*\"]\n  exclude: [postgres, scratch]\n\
                 roles:\n  missing: create\n  include: [\"*\"]\n";
    let source_url = format!("postgresql://postgres@{}:{}/postgres", src.host(), src.port());
    let target_url = format!("postgresql://postgres@{}:{}/postgres", tgt.host(), tgt.port());
    let f = dir.write("server.yaml", &plan_yaml("server", &source_url, &target_url, extra));
    let f = f.to_str().unwrap();
    let pgtransit_run = |args: &[&str]| {
        Run::of(pgtransit(dir.path()).env("PGPASSWORD", password).args(args).output().unwrap())
    };

    // The target lacks the databases: each is named, with the statement that creates it.
    let out = pgtransit_run(&["plan", f, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    for db in DATABASES {
        let check = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["code"] == "target_database_missing" && c["object"] == format!("database {db}")
            })
            .unwrap_or_else(|| panic!("{db} not reported missing: {}", doc["checks"]));
        let fix = check["fix"].as_str().unwrap();
        assert!(fix.starts_with(&format!("CREATE DATABASE \"{db}\" TEMPLATE template0")), "{fix}");
        tgt.create_database(db).unwrap();
    }

    // One plan, a section per database; each role is created once (by the first database
    // that needs it).
    let out = pgtransit_run(&["plan", f]);
    assert_eq!(out.code, 0, "{out:?}");
    for db in DATABASES {
        assert!(out.stdout.contains(&format!("━━ database {db} (")), "{out:?}");
    }
    assert_eq!(out.stdout.matches("create role app_login").count(), 1, "{out:?}");
    assert!(out.stdout.contains("not in it: postgres, scratch"), "{out:?}");
    // What each database's preflight says of the servers is said once, with the server checks.
    assert_eq!(out.stdout.matches("versions  servers").count(), 1, "{out:?}");
    assert_eq!(out.stdout.matches("roles_not_carried").count(), 0, "every role is: {out:?}");
    let md = pgtransit_run(&["plan", f, "--format", "markdown"]);
    assert_eq!(md.stdout.matches("<details><summary><b>database ").count(), 4, "{md:?}");

    let out = pgtransit_run(&["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");

    // pg_dumpall's globals are the same; every database's schema and rows are the same.
    let dumpall = tgt.bin("pg_dumpall");
    assert_eq!(dumpall_globals(&dumpall, &tgt, &[]), dumpall_globals(&dumpall, &src, &[]));
    for db in DATABASES {
        assert_migrated(&src, &tgt, db);
        let settings = "SELECT coalesce(r.rolname, '-'), s.setconfig FROM pg_db_role_setting s \
                        LEFT JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d \
                        ON d.oid = s.setdatabase WHERE d.datname = current_database() ORDER BY 1";
        assert_eq!(sql(&tgt, db, settings), sql(&src, db, settings), "settings of {db}");
    }
    assert_lobs_and_login(&src, &tgt, "pagila");

    // Nothing is left to do; status and verify speak of every database.
    let out = pgtransit_run(&["plan", f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
    let out = pgtransit_run(&["verify", f]);
    assert_eq!(out.code, 0, "{out:?}");
    for db in DATABASES {
        assert!(out.stdout.contains(&format!("database {db}\n")), "{out:?}");
    }
    let out = pgtransit_run(&["status", f]);
    assert_eq!(out.code, 0, "{out:?}");
    for db in DATABASES {
        assert!(out.stdout.contains(&format!("database {db}\n")), "{out:?}");
    }

    // A database created on the source since is reported, and migrated by the next apply.
    src.create_database("reports").unwrap();
    sql(&src, "reports", "CREATE TABLE r (id int PRIMARY KEY); INSERT INTO r VALUES (1), (2);");
    tgt.create_database("reports").unwrap();
    let out = pgtransit_run(&["plan", f, "--format", "json"]);
    let doc = out.json();
    let added = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["code"] == "database_added" && c["object"] == "database reports");
    assert!(added, "{}", doc["checks"]);
    let out = pgtransit_run(&["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "reports");

    // Offline: nothing to cut over, nothing of it on the servers.
    let out = pgtransit_run(&["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cutover is for online migrations"), "{out:?}");
}

/// An apply of several databases killed (as suddenly as kill -9) right after a role of the first
/// database is created, and again in the middle of the second database's load: each next apply
/// goes on from there, and the end is every database identical, every role once.
#[test]
fn a_migration_of_several_databases_killed_twice_resumes_to_identical_databases_and_roles() {
    let src = cluster("server-kill-src", &[]);
    let tgt = cluster("server-kill-tgt", &[]);
    sql(
        &src,
        "postgres",
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE readers; CREATE ROLE alice LOGIN PASSWORD 'a' IN ROLE readers;",
    );
    sql(&src, "postgres", "CREATE ROLE alpha_owner");
    for (db, rows) in [("alpha", 1_000), ("beta", 200_000), ("gamma", 10)] {
        src.create_database(db).unwrap();
        tgt.create_database(db).unwrap();
        sql(
            &src,
            db,
            &format!(
                "CREATE TABLE {db}_rows (id int PRIMARY KEY, note text);
                 INSERT INTO {db}_rows SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
                 GRANT SELECT ON {db}_rows TO readers;"
            ),
        );
    }
    // A role only alpha needs, with a setting in gamma: alpha's plan creates it, gamma's
    // carries its setting there.
    sql(&src, "alpha", "ALTER TABLE alpha_rows OWNER TO alpha_owner");
    sql(&src, "postgres", "ALTER ROLE alpha_owner IN DATABASE gamma SET work_mem = '8MB'");
    let dir = TempDir::new("server-kill");
    let extra = "mode: offline\ndatabases:\n  include: [alpha, beta, gamma]\n\
                 roles:\n  missing: create\n";
    let f = dir.write("k.yaml", &plan_yaml("k", &src.url("postgres"), &tgt.url("postgres"), extra));
    let f = f.to_str().unwrap();
    let killed_at = |failpoint: &str| {
        let out = Run::of(
            pgtransit(dir.path())
                .env("PGTRANSIT_FAILPOINT", failpoint)
                .args(["apply", f, "--auto-approve"])
                .output()
                .unwrap(),
        );
        assert_ne!(out.code, 0, "the failpoint {failpoint} did not stop it: {out:?}");
    };
    killed_at("after:schema:role:alice");
    killed_at("after:load:table:public.beta_rows");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    for db in ["alpha", "beta", "gamma"] {
        assert_migrated(&src, &tgt, db);
    }
    let settings = "SELECT r.rolname, d.datname, s.setconfig FROM pg_db_role_setting s \
                    JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d ON d.oid = s.setdatabase";
    assert_eq!(sql(&tgt, "postgres", settings), "alpha_owner|gamma|{work_mem=8MB}");
    let roles = "SELECT r.rolname, r.rolcanlogin, a.rolpassword IS NOT NULL, \
                 (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) \
                 FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid \
                 WHERE r.rolname IN ('alice', 'readers') ORDER BY 1";
    assert_eq!(sql(&tgt, "postgres", roles), sql(&src, "postgres", roles));
    let verifier = "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'";
    assert_eq!(sql(&tgt, "postgres", verifier), sql(&src, "postgres", verifier));
    let out = run(dir.path(), &["plan", f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
}

/// Writes to `db` of `src` until `stop` is set: inserts, updates, deletes and a sequence in use
/// (errors, as under the cutover's read-only fence, are ignored). Returns how many statements
/// went through.
fn keep_writing(
    src: &LocalCluster,
    db: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    keep_writing_with(src, db, Duration::from_millis(20), stop, move |i| {
        format!(
            "INSERT INTO {db}_rows (id, note) VALUES (nextval('{db}_ids'), 'written {i}');
             UPDATE {db}_rows SET note = note || '+' WHERE id = {};
             DELETE FROM {db}_rows WHERE id = {};",
            i % 500 + 1,
            i % 500 + 600
        )
    })
}

/// Three databases online in one plan, under writes to two of them: the apply is killed (as
/// suddenly as kill -9) in the middle of the biggest database's load while the first one
/// streams; the next apply resumes them all; one `cutover` fences, drains, verifies and cleans
/// up every database together, with one write gap for all; nothing is left on either server.
#[test]
fn several_databases_stream_and_cut_over_together_after_a_kill_during_one_load() {
    let src = logical_source("together-src");
    let tgt = cluster("together-tgt", &[]);
    // (beta's copy is big enough for alpha to reach its stream first on a busy machine: a CI
    // run saw alpha still in its post-load steps when 200,000 rows had been copied.)
    for (db, rows) in [("alpha", 1_000), ("beta", 600_000), ("gamma", 1_000)] {
        written_to(&src, &tgt, db, rows);
    }
    let dir = TempDir::new("together");
    let extra = "mode: online\ndatabases:\n  include: [alpha, beta, gamma]\n";
    let f = dir.write("t.yaml", &plan_yaml("t", &src.url("postgres"), &tgt.url("postgres"), extra));
    let f = f.to_str().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers =
        [keep_writing(&src, "alpha", stop.clone()), keep_writing(&src, "gamma", stop.clone())];

    // Killed right after beta's copy, alpha streaming meanwhile.
    let out = Run::of(
        pgtransit(dir.path())
            .env("PGTRANSIT_FAILPOINT", "after:load:table:public.beta_rows")
            .args(["apply", f, "--auto-approve"])
            .output()
            .unwrap(),
    );
    assert_ne!(out.code, 0, "the failpoint did not stop it: {out:?}");
    assert!(state(&dir, "t/t-alpha")["sync"]["slot"].is_string(), "alpha streams: {out:?}");
    assert!(out.stdout.contains("[alpha] "), "each database's lines are named: {out:?}");
    // (alpha, first in the pool and a thousand rows, streams long before beta's copy ends.)
    assert!(out.stdout.contains("[alpha] Sync (change streaming)"), "alpha streams: {out:?}");

    let mut child = start_apply(&dir, f, &[]);
    for member in ["t/t-alpha", "t/t-beta", "t/t-gamma"] {
        wait_for(Duration::from_secs(90), "every database to stream", || {
            streams_in(&dir, member, &child)
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("3 databases cut over together"), "{out:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(written.iter().all(|n| *n > 5), "the writers wrote: {written:?}");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", apply_output(&dir));

    // One write gap for all: every database was fenced before any was cleaned up.
    let cut: Vec<serde_json::Value> = ["t/t-alpha", "t/t-beta", "t/t-gamma"]
        .iter()
        .map(|m| state(&dir, m)["cutover"].clone())
        .collect();
    let last_fence = cut
        .iter()
        .map(|c| c["finished_at"].as_f64().unwrap() - c["write_gap_seconds"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let first_end = cut.iter().map(|c| c["finished_at"].as_f64().unwrap()).fold(f64::MAX, f64::min);
    assert!(last_fence < first_end, "a database was cut over before another was fenced: {cut:?}");
    for db in ["alpha", "beta", "gamma"] {
        assert_migrated(&src, &tgt, db);
        assert_eq!(sequence_values(&tgt, db), sequence_values(&src, db), "sequences of {db}");
        assert_nothing_left(&src, &tgt, db);
    }
}

/// All or none: a database whose verification fails (a row the source lacks, written on the
/// target) abandons the others' cutover too: every fence is lifted, none is cut over; `abort`
/// then removes every database's slot and publication.
#[test]
fn one_database_failing_verification_lifts_every_fence_and_abort_removes_every_slot() {
    let (src, tgt, dir, f, mut child) = two_streaming("together-fail", "u", &[]);
    let f = f.as_str();
    sql(&tgt, "two", "INSERT INTO r VALUES (1000)");
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stderr.contains("the cutover failed"), "{out:?}");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_ne!(status.and_then(|s| s.code()), Some(0), "{}", apply_output(&dir));
    assert_eq!(state(&dir, "u/u-two")["cutover"]["status"], "failed");
    for (db, member) in [("one", "u/u-one"), ("two", "u/u-two")] {
        // (`one` may have been stopped before its fence went up, or have lifted it.)
        let cut = &state(&dir, member)["cutover"];
        assert_ne!(cut["status"], "done", "{db}: {cut}");
        assert!(cut.is_null() || cut["fence_lifted"] == true, "{db}: {cut}");
        let read_only = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d \
                         ON d.oid = s.setdatabase WHERE array_to_string(s.setconfig, ',') \
                         LIKE '%default_transaction_read_only%'";
        assert_eq!(sql(&src, "postgres", read_only), "0", "a fence is left");
        sql(&src, db, "INSERT INTO r VALUES (2000)");
    }
    let out = run(dir.path(), &["abort", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    for db in ["one", "two"] {
        assert_nothing_left(&src, &tgt, db);
    }
}

/// Killed (as suddenly as kill -9) once every database was verified and the decision to go
/// recorded, before the clean-up (one database's state still says it waits for the others): the
/// next apply finishes every database's cutover, the source stays fenced meanwhile, and
/// nothing is left.
#[test]
fn several_databases_killed_after_the_decision_to_go_finish_their_cutover_on_the_next_apply() {
    let failpoint = [("PGTRANSIT_FAILPOINT", "after:cutover:together")];
    let (src, tgt, dir, f, mut child) = two_streaming("together-go", "g", &failpoint);
    let f = f.as_str();
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}\n{}", apply_output(&dir));
    assert!(wait_exit(&mut child, Duration::from_secs(30)).is_some(), "{}", apply_output(&dir));
    let decision = std::fs::read_to_string(dir.path().join(".pgtransit/g/cutover.decision"));
    assert_eq!(decision.unwrap(), "go\n");
    let waiting: Vec<serde_json::Value> = ["g/g-one", "g/g-two"]
        .iter()
        .map(|m| state(&dir, m)["cutover"]["status"].clone())
        .collect();
    assert!(waiting.contains(&"verified".into()), "killed while verified and waiting: {waiting:?}");
    let read_only = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d \
                     ON d.oid = s.setdatabase WHERE array_to_string(s.setconfig, ',') \
                     LIKE '%default_transaction_read_only=on%'";
    assert_eq!(sql(&src, "postgres", read_only), "2", "both sources stay fenced");

    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    for (db, member) in [("one", "g/g-one"), ("two", "g/g-two")] {
        assert_eq!(state(&dir, member)["cutover"]["status"], "done", "{db}: {out:?}");
        assert_migrated(&src, &tgt, db);
        assert_nothing_left(&src, &tgt, db);
    }
    assert_eq!(sql(&src, "postgres", read_only), "2", "the old primary stays read-only");
    assert!(!dir.path().join(".pgtransit/g/cutover.decision").exists(), "settled, then forgotten");
}

/// The four databases and fifteen roles of the offline test, online in one plan under writes to
/// two of them (pagila and shop), cut over once: `pg_dumpall --globals-only` of both servers is
/// the same, every database's schema and rows are, the SCRAM login works with the same
/// password, and the write gap reported is the server's.
#[test]
fn four_databases_and_fifteen_roles_move_online_under_writes_with_one_cutover() {
    let src = logical_source("server-online-src");
    fill_source(&src);
    let tgt = cluster("server-online-tgt", &[]);
    for db in ["pagila", "shop"] {
        sql(
            &src,
            db,
            &format!(
                "CREATE SEQUENCE {db}_ids START 1000000;
                 CREATE TABLE {db}_rows (id bigint PRIMARY KEY, note text);
                 INSERT INTO {db}_rows SELECT g, md5(g::text) FROM generate_series(1, 1000) g;"
            ),
        );
    }
    for db in DATABASES {
        tgt.create_database(db).unwrap();
    }
    let dir = TempDir::new("server-online");
    let extra = "mode: online\n\
                 databases:\n  include: [\"*\"]\n  exclude: [postgres, scratch]\n\
                 roles:\n  missing: create\n  include: [\"*\"]\n";
    let f = dir.write("s.yaml", &plan_yaml("s", &src.url("postgres"), &tgt.url("postgres"), extra));
    let f = f.to_str().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers =
        [keep_writing(&src, "pagila", stop.clone()), keep_writing(&src, "shop", stop.clone())];
    let mut child = start_apply(&dir, f, &[]);
    for db in DATABASES {
        wait_for(Duration::from_secs(120), "every database to stream", || {
            state(&dir, &format!("s/s-{db}"))["sync"]["streaming"] == true
        });
    }
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("4 databases cut over together; the write gap was"), "{out:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(written.iter().all(|n| *n > 5), "the writers wrote: {written:?}");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", apply_output(&dir));

    let dumpall = tgt.bin("pg_dumpall");
    assert_eq!(dumpall_globals(&dumpall, &tgt, &[]), dumpall_globals(&dumpall, &src, &[]));
    for db in DATABASES {
        assert_migrated(&src, &tgt, db);
        assert_eq!(sequence_values(&tgt, db), sequence_values(&src, db), "sequences of {db}");
        assert_eq!(sql(&src, db, "SELECT count(*) FROM pg_replication_slots"), "0");
    }
    assert_lobs_and_login(&src, &tgt, "shop");
}

/// Databases `one` and `two` (a table of 100 rows each) on a logical source and a target, and an
/// online migration `name` of both, applied in the background (with `env`) until both stream.
fn two_streaming(
    name: &str,
    short: &str,
    env: &[(&str, &str)],
) -> (LocalCluster, LocalCluster, TempDir, String, std::process::Child) {
    let src = logical_source(&format!("{name}-src"));
    let tgt = cluster(&format!("{name}-tgt"), &[]);
    for db in ["one", "two"] {
        src.create_database(db).unwrap();
        tgt.create_database(db).unwrap();
        sql(
            &src,
            db,
            "CREATE TABLE r (id int PRIMARY KEY); INSERT INTO r SELECT generate_series(1, 100);",
        );
    }
    let dir = TempDir::new(name);
    let extra = "mode: online\ndatabases:\n  include: [one, two]\n";
    let plan = plan_yaml(short, &src.url("postgres"), &tgt.url("postgres"), extra);
    let f = dir.write(&format!("{short}.yaml"), &plan).to_str().unwrap().to_string();
    let child = start_apply(&dir, &f, env);
    for db in ["one", "two"] {
        wait_for(Duration::from_secs(60), "both databases to stream", || {
            state(&dir, &format!("{short}/{short}-{db}"))["sync"]["streaming"] == true
        });
    }
    (src, tgt, dir, f, child)
}

/// No slot or publication on the source's `db`, no replication origin on the target.
fn assert_nothing_left(src: &LocalCluster, tgt: &LocalCluster, db: &str) {
    let leftovers = "SELECT (SELECT count(*) FROM pg_publication) \
                     + (SELECT count(*) FROM pg_replication_slots)";
    assert_eq!(sql(src, db, leftovers), "0", "left on the source's {db}");
    assert_eq!(sql(tgt, db, "SELECT count(*) FROM pg_replication_origin"), "0");
}

/// The large objects of `lobs` are the same on both servers, and `app_login` logs in to `db` on
/// the target with its password on the source (its SCRAM verifier carried).
fn assert_lobs_and_login(src: &LocalCluster, tgt: &LocalCluster, db: &str) {
    let lobs = "SELECT id, md5(lo_get(doc)) FROM docs ORDER BY id";
    assert_eq!(sql(tgt, "lobs", lobs), sql(src, "lobs", lobs));
    let login = Command::new(tgt.bin("psql"))
        .args(["-h", tgt.host(), "-p", &tgt.port().to_string(), "-U", "app_login", "-d", db])
        .args(["-XAtc", "SELECT current_user"])
        .env("PGPASSWORD", "app-secret")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), "app_login", "{login:?}");
}

/// The chaos test's judgement for several databases cut over together: the apply killed
/// (SIGKILL) at seeded moments while the databases load and stream under writes to two of them,
/// then once more while `cutover` runs (before the fences, while they drain or verify, while
/// they wait for each other, or cleaning up); the next `cutover` finishes it, and every
/// database is identical, its sequences set, nothing left on either server.
/// `PGTRANSIT_CHAOS_SEED` (or `random`) as for the other chaos test; the seed is printed.
#[test]
fn chaos_several_databases_killed_at_seeded_moments_cut_over_together_with_nothing_lost() {
    let seed = crate::chaos::seed();
    let mut rng = crate::chaos::Rng(seed);
    eprintln!(
        "chaos (several databases): seed {seed} (replay: PGTRANSIT_CHAOS_SEED={seed} cargo test \
         --test integration chaos_several -- --nocapture)"
    );
    let src = logical_source("chaos-several-src");
    let tgt = cluster("chaos-several-tgt", &[]);
    for (db, rows) in [("alpha", 2_000), ("beta", 300_000), ("gamma", 2_000)] {
        written_to(&src, &tgt, db, rows);
    }
    let dir = TempDir::new("chaos-several");
    let extra = "mode: online\nload:\n  jobs: 2\ndatabases:\n  include: [alpha, beta, gamma]\n";
    let f = dir.write("c.yaml", &plan_yaml("c", &src.url("postgres"), &tgt.url("postgres"), extra));
    let f = f.to_str().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers =
        [keep_writing(&src, "alpha", stop.clone()), keep_writing(&src, "gamma", stop.clone())];
    let members = ["c/c-alpha", "c/c-beta", "c/c-gamma"];
    for k in 1..=3 {
        let mut child = start_apply(&dir, f, &[]);
        let after = rng.ms(300, 5_000);
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("chaos (several databases): kill {k} after {after:?}");
    }
    let mut child = start_apply(&dir, f, &[]);
    // (In this apply: `cutover` started before the apply holds its lock would apply itself.)
    for member in members {
        wait_for(Duration::from_secs(120), "every database to stream", || {
            streams_in(&dir, member, &child)
        });
    }
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let mut cutover = pgtransit(dir.path())
        .args(["cutover", f, "--auto-approve"])
        .stdout(log("cutover.out"))
        .stderr(log("cutover.err"))
        .spawn()
        .unwrap();
    // Killed a seeded moment after the first fence goes up.
    let fencing = poll(Duration::from_secs(30), Duration::from_millis(5), || {
        members.iter().any(|m| state(&dir, m)["cutover"].is_object())
    });
    if !fencing {
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        let syncs: Vec<String> =
            members.iter().map(|m| state(&dir, m)["sync"].to_string()).collect();
        panic!(
            "seed {seed}: no cutover began (cutover exited: {:?}):\n--- cutover\n{}{}\n--- \
             sync states\n{}\n{}",
            cutover.try_wait(),
            read("cutover.out"),
            read("cutover.err"),
            syncs.join("\n"),
            apply_output(&dir)
        );
    }
    let after = rng.ms(0, 300);
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
    let _ = cutover.wait();
    let statuses: Vec<String> =
        members.iter().map(|m| state(&dir, m)["cutover"]["status"].to_string()).collect();
    eprintln!("chaos (several databases): killed {after:?} after the first fence: {statuses:?}");
    // All or none: once one database is cut over, every other one is, or was verified when
    // all were and the decision to go is on disk.
    let done = statuses.iter().filter(|s| s.as_str() == "\"done\"").count();
    let past_go = ["\"done\"", "\"cleaning_up\"", "\"verified\""];
    if done > 0 {
        assert!(
            statuses.iter().all(|s| past_go.contains(&s.as_str())),
            "seed {seed}: cut over partly: {statuses:?}"
        );
    }
    if done > 0 && done < 3 {
        let decision = std::fs::read_to_string(dir.path().join(".pgtransit/c/cutover.decision"));
        assert_eq!(decision.ok().as_deref(), Some("go\n"), "seed {seed}: {statuses:?}");
    }

    // (No apply runs: `cutover` resumes every stream, or finishes a decided clean-up.)
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "seed {seed}: {out:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(written.iter().all(|n| *n > 5), "the writers wrote: {written:?}");
    for (db, member) in ["alpha", "beta", "gamma"].iter().zip(members) {
        assert_eq!(state(&dir, member)["cutover"]["status"], "done", "seed {seed}: {db}");
        assert_migrated(&src, &tgt, db);
        assert_eq!(sequence_values(&tgt, db), sequence_values(&src, db), "sequences of {db}");
        assert_nothing_left(&src, &tgt, db);
    }
}

/// Online, every database streams at once with a slot and a WAL sender of its own: a source
/// with room for fewer is refused by `plan`, with the settings that fit; one with too few
/// connections for their loads is warned about.
#[test]
fn several_databases_online_need_a_slot_each_and_plan_says_which_setting_fits() {
    let settings =
        [("wal_level", "logical"), ("max_replication_slots", "2"), ("max_connections", "15")];
    let src = cluster("capacity-src", &settings);
    let tgt = cluster("capacity-tgt", &[]);
    for db in ["one", "two", "three"] {
        src.create_database(db).unwrap();
        tgt.create_database(db).unwrap();
    }
    let dir = TempDir::new("capacity");
    let extra = "mode: online\ndatabases:\n  include: [one, two, three]\n";
    let f = dir.write("p.yaml", &plan_yaml("p", &src.url("postgres"), &tgt.url("postgres"), extra));
    let out = run(dir.path(), &["plan", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let check = checks(&doc, "replication_capacity");
    assert_eq!(check.len(), 1, "{}", doc["checks"]);
    assert_eq!(check[0]["severity"], "error");
    let fix = check[0]["fix"].as_str().unwrap();
    assert!(fix.starts_with("ALTER SYSTEM SET max_replication_slots = 3;"), "{fix}");
    // Three databases loading at once with 4 jobs each do not fit in 15 connections either.
    let short = checks(&doc, "connections_short");
    assert_eq!(short.len(), 1, "{}", doc["checks"]);
    assert_eq!(short[0]["object"], "source");
}

/// Database `db` on both servers; on the source, `<db>_rows` with `rows` rows and the sequence
/// `<db>_ids` that [`keep_writing`] uses.
fn written_to(src: &LocalCluster, tgt: &LocalCluster, db: &str, rows: u32) {
    src.create_database(db).unwrap();
    tgt.create_database(db).unwrap();
    sql(
        src,
        db,
        &format!(
            "CREATE SEQUENCE {db}_ids START 1000000;
             CREATE TABLE {db}_rows (id bigint PRIMARY KEY, note text);
             INSERT INTO {db}_rows SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
        ),
    );
}
