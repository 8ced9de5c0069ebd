//! `pgtransit plan` preflight checks against real servers: a clean pagila migration passes, and
//! each problem a check exists for is provoked on a real cluster and reported with its code.

use crate::support::{
    ClusterOptions, TempDir, cluster, cluster_with, find_check, load_pagila, logical_source,
    plan_yaml, run, sql,
};

#[test]
fn pagila_to_an_empty_database_passes_preflight_with_changes_planned() {
    let src = logical_source("pagila-src");
    let tgt = cluster("pagila-tgt", &[]);
    load_pagila(&src, "pagila");
    tgt.create_database("pagila").unwrap();
    let dir = TempDir::new("pagila");
    let file =
        dir.write("pagila.yaml", &plan_yaml("pagila", &src.url("pagila"), &tgt.url("pagila"), ""));
    let f = file.to_str().unwrap();

    let out = run(dir.path(), &["plan", f, "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["summary"]["errors"], 0, "{out:?}");
    assert_eq!(doc["migration"], "pagila");
    assert!(doc["source"]["version"].as_str().unwrap().starts_with("PostgreSQL 1"));
    let scope = find_check(&doc, "scope", "info", "source");
    assert!(scope["message"].as_str().unwrap().starts_with("21 tables in 1 schemas"), "{scope}");
    find_check(&doc, "partitioned_table", "info", "public.payment");
    find_check(&doc, "materialized_view", "info", "public.rental_by_category");

    let out = run(dir.path(), &["plan", f, "--detailed-exitcode"]);
    assert_eq!(out.code, 2, "an empty target means changes are planned: {out:?}");
    assert!(out.stdout.contains("Preflight passed: 0 errors"), "{out:?}");
}

#[test]
fn target_that_already_has_everything_exits_0_with_detailed_exitcode() {
    let src = logical_source("done-src");
    let tgt = cluster("done-tgt", &[]);
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, name text);";
    for c in [&src, &tgt] {
        c.create_database("app").unwrap();
        sql(c, "app", ddl);
    }
    let dir = TempDir::new("done");
    // Offline: an online plan always has work (the slot, the stream, the cutover).
    let extra = "mode: offline\n";
    let file = dir.write("p.yaml", &plan_yaml("done", &src.url("app"), &tgt.url("app"), extra));
    let out = run(dir.path(), &["plan", file.to_str().unwrap(), "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// The issue's acceptance case: wal_level=replica, a table without a key, an extension the
/// target lacks, and an owner role the target lacks.
#[test]
fn broken_source_exits_1_naming_each_problem_with_code_and_fix() {
    let src = cluster("broken-src", &[("wal_level", "replica")]);
    let tgt = cluster_with(ClusterOptions {
        name: "broken-tgt".into(),
        without_extensions: vec!["hstore".into()],
        ..Default::default()
    });
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(
        &src,
        "app",
        "CREATE EXTENSION hstore;
         CREATE TABLE keyless (payload hstore);
         CREATE ROLE app_owner NOLOGIN;
         CREATE TABLE owned (id int PRIMARY KEY);
         ALTER TABLE owned OWNER TO app_owner;",
    );
    let dir = TempDir::new("broken");
    let file = dir.write("p.yaml", &plan_yaml("broken", &src.url("app"), &tgt.url("app"), ""));
    let f = file.to_str().unwrap();

    let out = run(dir.path(), &["plan", f, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let wal = find_check(&doc, "wal_level_not_logical", "error", "source");
    assert!(wal["fix"].as_str().unwrap().contains("ALTER SYSTEM SET wal_level = logical"));
    assert!(wal["fix"].as_str().unwrap().contains("restart"));
    let key = find_check(&doc, "table_without_key", "error", "table public.keyless");
    assert!(
        key["fix"].as_str().unwrap().contains("ALTER TABLE \"public\".\"keyless\" ADD PRIMARY KEY")
    );
    let ext = find_check(&doc, "extension_unavailable", "error", "extension hstore");
    assert!(ext["fix"].as_str().unwrap().contains("install it on the target"));
    let role = find_check(&doc, "role_missing", "error", "role app_owner");
    assert!(role["message"].as_str().unwrap().contains("owns 1 object (table public.owned)"));
    assert!(role["fix"].as_str().unwrap().starts_with("CREATE ROLE \"app_owner\" NOLOGIN;"));

    // The text report names the same problems, one block each, and says preflight failed.
    let out = run(dir.path(), &["plan", f]);
    assert_eq!(out.code, 1);
    for code in
        ["wal_level_not_logical", "table_without_key", "extension_unavailable", "role_missing"]
    {
        assert!(out.stdout.contains(&format!("✗ error   {code}")), "{code}: {out:?}");
    }
    assert!(out.stdout.contains("Preflight failed: 4 errors"), "{out:?}");
}

/// Every remaining check, provoked on one pair of servers: privileges, slots and senders, object
/// kinds that need special handling, names, encodings, roles, target permissions and scope.
#[test]
fn every_other_check_is_provoked_on_real_servers() {
    let src = cluster(
        "all-src",
        &[("wal_level", "logical"), ("max_replication_slots", "1"), ("max_wal_senders", "0")],
    );
    let tgt = cluster("all-tgt", &[("max_worker_processes", "2")]);
    let db = "shop;prod";
    src.create_database(db).unwrap();
    sql(
        &src,
        db,
        r#"SELECT pg_create_physical_replication_slot('someone_elses');
        CREATE ROLE migrator LOGIN;
        CREATE ROLE app_owner NOLOGIN;
        CREATE ROLE reporting NOLOGIN;
        CREATE SCHEMA app;
        CREATE TABLE app.hidden (id int PRIMARY KEY);
        CREATE SCHEMA sales;
        CREATE TABLE sales.orders (id int PRIMARY KEY);
        CREATE TABLE public.readable (id int PRIMARY KEY);
        CREATE TABLE public.secret (id int PRIMARY KEY);
        CREATE TABLE public.owned (id int PRIMARY KEY);
        ALTER TABLE public.owned OWNER TO app_owner;
        GRANT SELECT ON public.readable TO reporting;
        CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY);
        CREATE TABLE public."Users" (id int PRIMARY KEY);
        CREATE TABLE public.users (id int PRIMARY KEY);
        CREATE TABLE public.measurements (
            id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            celsius numeric,
            fahrenheit numeric GENERATED ALWAYS AS (celsius * 9 / 5 + 32) STORED);
        CREATE TABLE public.doubled (x int, y int GENERATED ALWAYS AS (x * 2) STORED PRIMARY KEY);
        CREATE TABLE public.events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
        CREATE TABLE public.events_2024 PARTITION OF public.events
            FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE MATERIALIZED VIEW public.readable_count AS SELECT count(*) FROM public.readable;
        CREATE EXTENSION postgres_fdw;
        CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw;
        CREATE FOREIGN TABLE public.remote_items (id int) SERVER remote;
        SELECT lo_from_bytea(0, 'hello');
        CREATE PUBLICATION reports FOR TABLE public.readable;
        GRANT USAGE ON SCHEMA sales TO migrator;
        GRANT SELECT ON ALL TABLES IN SCHEMA public, sales TO migrator;
        REVOKE SELECT ON public.secret FROM migrator;"#,
    );
    sql(
        &tgt,
        "postgres",
        "CREATE ROLE deployer LOGIN;
         CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;",
    );
    sql(&tgt, "latin", "CREATE SCHEMA app; CREATE TABLE public.readable (id int PRIMARY KEY);");

    let source_url = src.url(db).replace("postgres@", "migrator@");
    let target_url = tgt.url("latin").replace("postgres@", "deployer@");
    assert!(source_url.contains("shop%3Bprod"), "{source_url}");
    let extra = "objects:\n  tables:\n    exclude: ['public.nosuch_*']\n\
                 roles:\n  map:\n    ghost: postgres\n    reporting: analyst\n";
    let dir = TempDir::new("all");
    let file = dir.write("p.yaml", &plan_yaml("all", &source_url, &target_url, extra));
    let out = run(dir.path(), &["plan", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let expect = [
        ("no_free_replication_slot", "error", "source"),
        ("no_free_wal_sender", "error", "source"),
        ("continuous_verification_without_slot", "warning", "source"),
        ("source_role_cannot_replicate", "error", "role migrator"),
        ("source_schema_not_readable", "error", "schema app"),
        ("source_relation_not_readable", "error", "table public.secret"),
        ("large_objects_present", "warning", "source"),
        ("unlogged_table", "warning", "table public.scratch"),
        ("table_key_generated", "error", "table public.doubled"),
        ("foreign_table", "warning", "foreign table public.remote_items"),
        ("materialized_view", "info", "public.readable_count"),
        ("partitioned_table", "info", "public.events"),
        ("generated_columns", "info", "public.measurements"),
        ("identity_columns", "info", "public.measurements"),
        ("case_colliding_names", "warning", "public.\"Users\", public.users"),
        ("database_name_special", "warning", "source database"),
        ("target_few_worker_processes", "warning", "target"),
        ("role_missing", "error", "role app_owner"),
        ("role_missing", "error", "role migrator"),
        ("role_mapping_unused", "warning", "role ghost"),
        ("role_mapping_target_missing", "error", "role analyst"),
        ("encoding_mismatch", "error", "target"),
        ("collation_differs", "warning", "servers"),
        ("target_schema_not_writable", "error", "schema public"),
        ("target_schema_not_writable", "error", "schema app"),
        ("target_cannot_create_schema", "error", "schema sales"),
        ("target_objects_exist", "warning", "target"),
        ("scope_pattern_unmatched", "error", "public.nosuch_*"),
        ("versions", "info", "servers"),
        ("publication", "info", "publication reports"),
    ];
    for (code, severity, object) in expect {
        let c = find_check(&doc, code, severity, object);
        if severity == "error" {
            assert!(c["fix"].is_string(), "error {code} has no fix: {c}");
        }
    }
    // Fixes are exact SQL with quoted identifiers.
    let slot = find_check(&doc, "no_free_replication_slot", "error", "source");
    assert!(slot["fix"].as_str().unwrap().contains("max_replication_slots = 2"));
    let proof = find_check(&doc, "continuous_verification_without_slot", "warning", "source");
    assert!(
        proof["fix"].as_str().unwrap().contains("ALTER SYSTEM SET max_replication_slots = 3"),
        "{proof}"
    );
    let secret = find_check(&doc, "source_relation_not_readable", "error", "public.secret");
    assert_eq!(secret["fix"], "GRANT SELECT ON \"public\".\"secret\" TO \"migrator\";");
    let create = find_check(&doc, "target_cannot_create_schema", "error", "schema sales");
    assert_eq!(create["fix"], "GRANT CREATE ON DATABASE \"latin\" TO \"deployer\";");
    // `public.readable` is readable; no finding about it.
    assert!(
        !doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "source_relation_not_readable"
                && c["object"].as_str().unwrap().contains("readable")),
    );
}

#[test]
fn offline_mode_does_not_require_logical_replication() {
    let src = cluster("offline-src", &[("wal_level", "replica")]);
    let tgt = cluster("offline-tgt", &[]);
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(&src, "app", "CREATE TABLE keyless (a int); INSERT INTO keyless VALUES (1);");
    let dir = TempDir::new("offline");
    let file =
        dir.write("p.yaml", &plan_yaml("off", &src.url("app"), &tgt.url("app"), "mode: offline\n"));
    let out = run(dir.path(), &["plan", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert!(crate::support::checks(&doc, "wal_level_not_logical").is_empty());
    find_check(&doc, "table_without_key", "info", "public.keyless");
}
