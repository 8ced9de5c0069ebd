//! Offline migrations end to end: execution plans, saved plans and stale detection, `apply`
//! with its state, resuming after a kill, conflicts, and the lock. Every migration is checked
//! for real: `pg_dump --schema-only` of both sides and per-table row checksums.

use crate::support::{
    LocalCluster, TempDir, assert_migrated, cluster, load_pagila, pair, plan_yaml, run, sql,
    wait_step_running,
};

fn offline_plan(
    dir: &TempDir,
    name: &str,
    src: &LocalCluster,
    tgt: &LocalCluster,
    db: &str,
) -> String {
    dir.write(
        &format!("{name}.yaml"),
        &plan_yaml(name, &src.url(db), &tgt.url(db), "mode: offline\n"),
    )
    .to_str()
    .unwrap()
    .to_string()
}

#[test]
fn pagila_offline_migration_is_identical_and_a_second_plan_has_nothing_to_do() {
    let src = cluster("pagila-off-src", &[]);
    let tgt = cluster("pagila-off-tgt", &[]);
    load_pagila(&src, "pagila");
    tgt.create_database("pagila").unwrap();
    let dir = TempDir::new("pagila-off");
    let f = offline_plan(&dir, "pagila", &src, &tgt, "pagila");
    let saved = dir.path().join("pagila.plan.json");

    let out =
        run(dir.path(), &["plan", &f, "--out", saved.to_str().unwrap(), "--detailed-exitcode"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("+ create table public.film"), "{out:?}");
    assert!(out.stdout.contains("> copy table public.rental"), "{out:?}");
    // Foreign keys and triggers are explicit post-load steps that say how they are handled.
    assert!(out.stdout.contains("added after the data"), "{out:?}");
    assert!(out.stdout.contains("does not fire for copied rows"), "{out:?}");

    let out = run(dir.path(), &["apply", saved.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Apply complete"), "{out:?}");
    assert_migrated(&src, &tgt, "pagila");

    let out = run(dir.path(), &["plan", &f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "a second plan must have nothing to do: {out:?}");
    assert!(out.stdout.contains("0 to create, 0 to update, 0 to copy, 0 to run"), "{out:?}");
    assert!(out.stdout.contains("0 conflicts"), "{out:?}");
}

#[test]
fn saved_plan_is_refused_as_stale_after_a_source_change_and_the_target_is_untouched() {
    let (src, tgt) = pair(
        "stale",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a');",
    );
    let dir = TempDir::new("stale");
    let f = offline_plan(&dir, "stale", &src, &tgt, "app");
    let saved = dir.path().join("stale.plan.json");
    let out = run(dir.path(), &["plan", &f, "--out", saved.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");

    sql(&src, "app", "ALTER TABLE items ADD COLUMN price numeric;");
    let out = run(dir.path(), &["apply", saved.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("stale plan"), "{out:?}");
    assert!(out.stderr.contains("the source's schema changed"), "{out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
}

/// Mixed-case and quoted names, partitions, identity and generated columns, an FK cycle, and
/// a trigger that rewrites rows (it must not fire for copied rows).
const AWKWARD: &str = r#"
CREATE SCHEMA "Sales Dept";
CREATE TYPE "Sales Dept"."Mood" AS ENUM ('happy', 'sad', 'it''s complicated');
CREATE TABLE "Sales Dept"."Order" (
    "ID" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "select" text NOT NULL,
    "Mood" "Sales Dept"."Mood",
    total numeric(10,2),
    total_with_tax numeric(10,2) GENERATED ALWAYS AS (total * 1.2) STORED,
    touched int NOT NULL DEFAULT 0
);
CREATE FUNCTION "Sales Dept".bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END $$;
CREATE TRIGGER "Bump It" BEFORE INSERT OR UPDATE ON "Sales Dept"."Order"
    FOR EACH ROW EXECUTE FUNCTION "Sales Dept".bump();
CREATE TABLE public.a (id int PRIMARY KEY, b_id int);
CREATE TABLE public.b (id int PRIMARY KEY, a_id int REFERENCES public.a (id) DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE public.a ADD CONSTRAINT a_b FOREIGN KEY (b_id) REFERENCES public.b (id) DEFERRABLE INITIALLY DEFERRED;
CREATE TABLE public.events (id int, at date, payload jsonb, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_other PARTITION OF public.events DEFAULT;
INSERT INTO "Sales Dept"."Order" ("select", "Mood", total)
    SELECT 'item ' || i, (ARRAY['happy','sad','it''s complicated'])[1 + i % 3]::"Sales Dept"."Mood", i
    FROM generate_series(1, 500) i;
BEGIN;
INSERT INTO public.a VALUES (1, 1), (2, 2);
INSERT INTO public.b VALUES (1, 2), (2, 1);
COMMIT;
INSERT INTO public.events SELECT i, date '2023-12-25' + i, jsonb_build_object('n', i) FROM generate_series(1, 400) i;
"#;

#[test]
fn awkward_schema_migrates_identically_and_row_rewriting_triggers_do_not_fire_on_copy() {
    let (src, tgt) = pair("awk", AWKWARD);
    let dir = TempDir::new("awkward");
    let f = offline_plan(&dir, "awkward", &src, &tgt, "app");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
    // Every source row was touched once by the trigger; copying did not touch them again.
    assert_eq!(sql(&tgt, "app", r#"SELECT DISTINCT touched FROM "Sales Dept"."Order""#), "1");
    // The trigger exists and fires for new writes on the target.
    sql(&tgt, "app", r#"INSERT INTO "Sales Dept"."Order" ("select") VALUES ('new')"#);
    assert_eq!(
        sql(&tgt, "app", r#"SELECT touched FROM "Sales Dept"."Order" WHERE "select" = 'new'"#),
        "1"
    );
    // Identity continues after the source's values.
    assert_eq!(sql(&tgt, "app", r#"SELECT max("ID") FROM "Sales Dept"."Order""#), "501");
}

#[test]
fn apply_killed_mid_load_resumes_without_duplicates() {
    let (src, tgt) = pair(
        "resume",
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i;
         CREATE TABLE small (id int PRIMARY KEY, big_id int REFERENCES big (id));
         INSERT INTO small SELECT i, i FROM generate_series(1, 100) i;",
    );
    let dir = TempDir::new("resume");
    let f = offline_plan(&dir, "resume", &src, &tgt, "app");
    // Killed right after `big`'s copy committed, before the state recorded it: the worst moment.
    let out = crate::support::Run::of(
        crate::support::pgtransit(dir.path())
            .args(["apply", &f, "--auto-approve", "--jobs", "1"])
            .env("PGTRANSIT_FAILPOINT", "after:load:table:public.big")
            .output()
            .unwrap(),
    );
    assert_ne!(out.code, 0, "the failpoint must kill apply: {out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM big"), "20000");
    let state = std::fs::read_to_string(dir.path().join(".pgtransit/resume/state.json")).unwrap();
    assert!(state.contains("\"running\""), "{state}");

    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The killed run could not release its lock: this one says whose it took over.
    assert!(out.stderr.contains("took over the lock of a run that ended without"), "{out:?}");
    assert_migrated(&src, &tgt, "app");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM big"), "20000");
    // Each copy records the source position its snapshot corresponds to.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".pgtransit/resume/state.json")).unwrap(),
    )
    .unwrap();
    let lsn = state["steps"]["load:table:public.big"]["source_lsn"].as_str().unwrap();
    assert!(lsn.contains('/'), "an LSN like 0/1A2B3C: {lsn}");
}

#[test]
fn ctrl_c_during_a_long_index_build_cancels_it_and_the_next_apply_builds_it() {
    // An index whose build is slow on the target only (its function sleeps there), so that
    // Ctrl-C lands while the build runs.
    let (src, tgt) = pair(
        "cancel",
        "CREATE FUNCTION slow(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN
           IF current_setting('test.slow', true) = 'on' THEN PERFORM pg_sleep(0.05); END IF;
           RETURN i;
         END $$;
         CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 400);
         CREATE INDEX t_slow ON t (slow(id));",
    );
    sql(&tgt, "app", "ALTER DATABASE app SET test.slow = 'on'");
    let dir = TempDir::new("cancel");
    let f = offline_plan(&dir, "cancel", &src, &tgt, "app");
    let mut child = crate::support::pgtransit(dir.path())
        .args(["apply", &f, "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_step_running(&dir, "cancel", "post_load:index:public.t_slow", &mut child);
    // Ctrl-C: the build (20 s here) is cancelled, not waited for.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let asked = std::time::Instant::now();
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let waited = asked.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(waited < std::time::Duration::from_secs(10), "Ctrl-C took {waited:?}: {stderr}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_indexes WHERE indexname = 't_slow'"), "0");

    // The next apply builds it.
    sql(&tgt, "app", "ALTER DATABASE app RESET test.slow");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
}

#[test]
fn table_that_differs_on_the_target_is_a_conflict_with_a_diff_and_blocks_apply() {
    let (src, tgt) =
        pair("conflict", "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);");
    sql(&tgt, "app", "CREATE TABLE items (id int PRIMARY KEY, name varchar(20));");
    let dir = TempDir::new("conflict");
    let f = offline_plan(&dir, "conflict", &src, &tgt, "app");
    let out = run(dir.path(), &["plan", &f]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("! conflict table public.items"), "{out:?}");
    assert!(out.stdout.contains("--- target (existing)"), "{out:?}");
    assert!(out.stdout.contains("1 conflicts"), "{out:?}");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    // Untouched: still the target's own definition.
    assert_eq!(
        sql(
            &tgt,
            "app",
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'name'"
        ),
        "character varying"
    );
}

#[test]
fn second_apply_of_the_same_migration_is_refused_while_the_first_holds_the_lock() {
    let (src, tgt) = pair("lock", "CREATE TABLE t (id int PRIMARY KEY);");
    let dir = TempDir::new("lock");
    let f = offline_plan(&dir, "locked", &src, &tgt, "app");
    // This test process plays the first apply.
    let held = pgtransit::state::StateDir::new(dir.path().join(".pgtransit/locked"))
        .lock("apply (the first one)")
        .unwrap();
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("pid {}", std::process::id())), "{out:?}");
    assert!(out.stderr.contains("apply (the first one)"), "{out:?}");
    drop(held);
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn apply_of_a_fresh_plan_without_a_terminal_needs_auto_approve() {
    let (src, tgt) = pair("tty", "CREATE TABLE t (id int PRIMARY KEY);");
    let dir = TempDir::new("tty");
    let f = offline_plan(&dir, "tty", &src, &tgt, "app");
    let out = run(dir.path(), &["apply", &f]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--auto-approve"), "{out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
}

/// Nasty values, twice: `builtin` has built-in types only (copied in binary), `typed` has the same
/// columns plus a user-defined enum (copied as text). Both must arrive identical.
const NASTY: &str = r#"
CREATE TABLE burn_oids (id int); DROP TABLE burn_oids;
CREATE TYPE mood AS ENUM ('ok', 'meh');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE builtin (
    id int PRIMARY KEY, n numeric, f float8, r real, ts timestamptz, d date,
    ints int[], texts text[], nested int[][], b bytea, j jsonb, big text, iv interval, u uuid
);
CREATE TABLE typed (LIKE builtin INCLUDING ALL, m mood, p pair, moods mood[]);
INSERT INTO builtin VALUES
    (1, 'NaN', 'Infinity', '-Infinity', 'infinity', '-infinity', '{1,NULL,3}', '{"a b","c,d","e\"f",NULL}',
     '{{1,2},{3,4}}', '\x00ff10', '{"k": [1, "two", null]}', repeat('toast me ', 100000), '1 year 2 mons -3 days',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
    (2, '-0.000000000000000000001', 'NaN', '1e-40', '2000-01-01 00:00:00+00', '0001-01-01 BC', '{}', '{""}',
     NULL, '\x', 'null', E'tab\there\nnewline\\backslash', '0', NULL),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO typed SELECT *, 'meh', ROW(id, 'x,y')::pair, '{ok,meh}' FROM builtin;
CREATE TABLE refs (id int PRIMARY KEY, r regclass, t regtype, c regconfig, rs regclass[]);
INSERT INTO refs VALUES (1, 'typed', 'mood', 'english', '{builtin,typed}');
"#;

#[test]
fn binary_and_text_copies_give_identical_rows_for_nasty_values() {
    let (src, tgt) = pair("nasty", NASTY);
    let dir = TempDir::new("nasty");
    let f = offline_plan(&dir, "nasty", &src, &tgt, "app");
    let out = run(dir.path(), &["plan", &f, "--format", "json"]);
    let doc = out.json();
    let sql_of = |id: &str| {
        doc["steps"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap()["sql"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(sql_of("load:table:public.builtin").contains("(FORMAT binary, FREEZE)"));
    assert!(sql_of("load:table:public.typed").contains("FROM STDIN (FREEZE)"));
    // A reg* value's binary form is the object's oid on the source: copied in text (names).
    assert!(sql_of("load:table:public.refs").contains("FROM STDIN (FREEZE)"));
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
    // The TOASTed value arrived whole, and rows were written frozen.
    assert_eq!(sql(&tgt, "app", "SELECT length(big) FROM builtin WHERE id = 1"), "900000");
    assert_eq!(
        sql(&tgt, "app", "SELECT r::text || ' ' || t::text || ' ' || rs::text FROM refs"),
        "typed mood {builtin,typed}"
    );
    sql(&tgt, "app", "CREATE EXTENSION pg_visibility");
    for t in ["builtin", "typed"] {
        assert_eq!(
            sql(&tgt, "app", &format!("SELECT bool_and(all_frozen) FROM pg_visibility_map('{t}')")),
            "t",
            "COPY FREEZE marks every page of {t} all-frozen"
        );
    }
}

#[test]
fn large_objects_are_copied_with_their_ids_owners_and_grants() {
    let (src, tgt) = pair(
        "lo",
        "CREATE ROLE lo_owner NOLOGIN; CREATE ROLE lo_reader NOLOGIN;
         CREATE TABLE docs (id int PRIMARY KEY, content oid);
         INSERT INTO docs VALUES
             (1, lo_from_bytea(0, 'small')),
             (2, lo_from_bytea(0, decode(repeat('0123456789abcdef', 200000), 'hex')));
         SELECT lo_from_bytea(16500, 'with a chosen id');
         ALTER LARGE OBJECT 16500 OWNER TO lo_owner;
         GRANT SELECT ON LARGE OBJECT 16500 TO lo_reader;",
    );
    sql(&tgt, "postgres", "CREATE ROLE lo_owner NOLOGIN; CREATE ROLE lo_reader NOLOGIN;");
    let dir = TempDir::new("lo");
    let f = offline_plan(&dir, "lo", &src, &tgt, "app");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    let objects = "SELECT string_agg(oid || ':' || pg_get_userbyid(lomowner) || ':' \
                   || coalesce(lomacl::text, '-') || ':' || md5(lo_get(oid)), ',' ORDER BY oid) \
                   FROM pg_largeobject_metadata";
    let on_source = sql(&src, "app", objects);
    assert!(on_source.contains("16500:lo_owner:"), "{on_source}");
    assert_eq!(sql(&tgt, "app", objects), on_source);
    assert_migrated(&src, &tgt, "app");
    // A second plan knows they were copied.
    let out = run(dir.path(), &["plan", &f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// `keyed` splits by ranges of its integer key, `heap` (no key) by ranges of ctid blocks.
const SPLIT: &str = "
CREATE TABLE keyed (id bigint PRIMARY KEY, v text);
INSERT INTO keyed SELECT i, md5(i::text) || repeat('x', 200) FROM generate_series(1, 30000) i;
CREATE TABLE heap (a int, v text);
INSERT INTO heap SELECT i % 100, md5(i::text) || repeat('y', 200) FROM generate_series(1, 30000) i;
ANALYZE;";

fn split_plan(dir: &TempDir, src: &LocalCluster, tgt: &LocalCluster) -> String {
    let extra = "mode: offline\nload:\n  split_larger_than: 2MB\n  jobs: 3\n";
    dir.write("split.yaml", &plan_yaml("split", &src.url("app"), &tgt.url("app"), extra))
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn large_tables_split_by_key_and_by_ctid_arrive_complete_without_duplicates() {
    let (src, tgt) = pair("split", SPLIT);
    let dir = TempDir::new("split");
    let f = split_plan(&dir, &src, &tgt);
    let out = run(dir.path(), &["plan", &f]);
    assert!(out.stdout.contains("copy table public.keyed part 1 of"), "{out:?}");
    assert!(out.stdout.contains("WHERE \"id\" < "), "{out:?}");
    assert!(out.stdout.contains("WHERE ctid >= '("), "{out:?}");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
    let out = run(dir.path(), &["plan", &f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn split_load_killed_after_a_part_resumes_without_duplicates() {
    let (src, tgt) = pair("splitkill", SPLIT);
    let dir = TempDir::new("splitkill");
    let f = split_plan(&dir, &src, &tgt);
    let out = run(dir.path(), &["plan", &f, "--format", "json"]);
    let first_part = out.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str().unwrap().starts_with("load:table:public.keyed:part-1-of-"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Killed after the part committed and before the state recorded it.
    let killed = crate::support::Run::of(
        crate::support::pgtransit(dir.path())
            .args(["apply", &f, "--auto-approve", "--jobs", "1"])
            .env("PGTRANSIT_FAILPOINT", format!("after:{first_part}"))
            .output()
            .unwrap(),
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    let out = run(dir.path(), &["plan", &f]);
    assert!(out.stdout.contains("a part was interrupted"), "{out:?}");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
}

// Regression tests from the review of resume semantics.

#[test]
fn apply_into_a_recreated_target_copies_everything_again_instead_of_trusting_old_state() {
    let (src, tgt) = pair(
        "recreate",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    );
    let dir = TempDir::new("recreate");
    let f = offline_plan(&dir, "recreate", &src, &tgt, "app");
    assert_eq!(run(dir.path(), &["apply", &f, "--auto-approve"]).code, 0);
    sql(&tgt, "postgres", "DROP DATABASE app; CREATE DATABASE app;");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
    // And a table emptied on the target after a complete apply is copied again.
    sql(&tgt, "app", "TRUNCATE t");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM t"), "100");
}

#[test]
fn saved_plan_of_a_split_table_resumed_after_a_kill_has_no_duplicates() {
    let (src, tgt) = pair("splitsaved", &SPLIT.replace("PRIMARY KEY", ""));
    let dir = TempDir::new("splitsaved");
    let f = split_plan(&dir, &src, &tgt);
    let saved = dir.path().join("saved.json");
    let out = run(dir.path(), &["plan", &f, "--out", saved.to_str().unwrap(), "--format", "json"]);
    let part = out.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .find(|id| id.starts_with("load:table:public.keyed:part-2-of-"))
        .unwrap();
    let killed = crate::support::Run::of(
        crate::support::pgtransit(dir.path())
            .args(["apply", saved.to_str().unwrap(), "--jobs", "1"])
            .env("PGTRANSIT_FAILPOINT", format!("after:{part}"))
            .output()
            .unwrap(),
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    // No key on the table: duplicates would survive, so identical checksums prove there are none.
    let out = run(dir.path(), &["apply", saved.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_migrated(&src, &tgt, "app");
}

#[test]
fn large_objects_copy_killed_after_commit_resumes() {
    let (src, tgt) = pair("loresume", "SELECT lo_from_bytea(0, 'one'), lo_from_bytea(0, 'two');");
    let dir = TempDir::new("loresume");
    let f = offline_plan(&dir, "loresume", &src, &tgt, "app");
    let killed = crate::support::Run::of(
        crate::support::pgtransit(dir.path())
            .args(["apply", &f, "--auto-approve"])
            .env("PGTRANSIT_FAILPOINT", "after:load:large_objects")
            .output()
            .unwrap(),
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    let objects =
        "SELECT string_agg(oid || md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata";
    assert_eq!(sql(&tgt, "app", objects), sql(&src, "app", objects));
}

#[test]
fn saved_plan_applied_from_another_directory_uses_the_migrations_own_state() {
    let (src, tgt) = pair("cwd", "CREATE TABLE t (id int PRIMARY KEY);");
    let dir = TempDir::new("cwd");
    let f = offline_plan(&dir, "cwd", &src, &tgt, "app");
    let saved = dir.path().join("saved.json");
    assert_eq!(run(dir.path(), &["plan", &f, "--out", saved.to_str().unwrap()]).code, 0);
    let elsewhere = TempDir::new("cwd-elsewhere");
    let out = crate::support::Run::of(
        crate::support::pgtransit(elsewhere.path())
            .current_dir(elsewhere.path())
            .args(["apply", saved.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(dir.path().join(".pgtransit/cwd/state.json").exists(), "state beside the plan file");
    assert!(!elsewhere.path().join(".pgtransit").exists());
}

#[test]
fn saved_plan_with_edited_steps_is_refused() {
    let (src, tgt) = pair("edited", "CREATE TABLE t (id int PRIMARY KEY);");
    let dir = TempDir::new("edited");
    let f = offline_plan(&dir, "edited", &src, &tgt, "app");
    let saved = dir.path().join("saved.json");
    assert_eq!(run(dir.path(), &["plan", &f, "--out", saved.to_str().unwrap()]).code, 0);
    let text =
        std::fs::read_to_string(&saved).unwrap().replace("CREATE TABLE", "CREATE UNLOGGED TABLE");
    std::fs::write(&saved, text).unwrap();
    let out = run(dir.path(), &["apply", saved.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("was modified after it was"), "{out:?}");
}

/// Material a new user's database has and pgtransit's own tests did not: inheritance (copied in
/// any order, some split into parts), a column type without binary I/O, tables with no
/// copyable column, materialized views that read each other, a CHECK constraint calling a
/// function of the table's row type (a dependency cycle pg_dump breaks by adding it apart).
const STRANGERS: &str = "
CREATE TABLE parent (id int PRIMARY KEY, note text);
CREATE TABLE child (extra int) INHERITS (parent);
CREATE TABLE grandchild (more text) INHERITS (child);
INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, 40000) g;
INSERT INTO child SELECT g, 'child ' || g, g FROM generate_series(1, 60000) g;
INSERT INTO grandchild SELECT g, 'grandchild', g, 'x' FROM generate_series(1, 3000) g;
CREATE TABLE small_parent (id int, v text);
CREATE TABLE small_child () INHERITS (small_parent);
INSERT INTO small_parent VALUES (1, 'only one');
INSERT INTO small_child SELECT g, repeat('c', 20) FROM generate_series(1, 5000) g;
CREATE TABLE acl_col (id int PRIMARY KEY, a aclitem, arr aclitem[]);
INSERT INTO acl_col VALUES (1, 'postgres=arwdDxt/postgres', ARRAY['=r/postgres'::aclitem]);
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES; INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE only_generated (a int GENERATED ALWAYS AS (7) STORED);
INSERT INTO only_generated DEFAULT VALUES; INSERT INTO only_generated DEFAULT VALUES;
CREATE TABLE check_con_tbl (f1 int);
CREATE FUNCTION check_con_function(check_con_tbl) RETURNS bool LANGUAGE plpgsql
  AS $$ BEGIN RETURN $1.f1 > 0; END $$;
ALTER TABLE check_con_tbl ADD CHECK (check_con_function(check_con_tbl.*));
INSERT INTO check_con_tbl VALUES (1), (2);
CREATE TABLE np (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (id);
CREATE TABLE np1 PARTITION OF np FOR VALUES FROM (0) TO (1000) PARTITION BY RANGE (k);
CREATE TABLE np1a PARTITION OF np1 FOR VALUES FROM (0) TO (10);
CREATE TABLE np1b PARTITION OF np1 FOR VALUES FROM (10) TO (20);
INSERT INTO np SELECT g, g % 20 FROM generate_series(0, 999) g;
CREATE MATERIALIZED VIEW z_base AS SELECT id, note FROM ONLY parent WHERE id % 2 = 0;
CREATE MATERIALIZED VIEW a_total AS SELECT count(*) AS n FROM z_base;
";

/// Rows of one table, itself only.
fn own_rows(c: &LocalCluster, table: &str) -> i64 {
    sql(c, "app", &format!("SELECT count(*) FROM ONLY {table}")).parse().unwrap()
}

#[test]
fn inheritance_children_keep_exactly_their_own_rows_whole_and_split_in_any_order() {
    let (src, tgt) = pair("inherit", STRANGERS);
    let dir = TempDir::new("inherit");
    let extra = "mode: offline\nload:\n  split_larger_than: 1MB\n  jobs: 3\n";
    let f =
        dir.write("inherit.yaml", &plan_yaml("inherit", &src.url("app"), &tgt.url("app"), extra));
    let f = f.to_str().unwrap();
    let out = run(dir.path(), &["plan", f]);
    assert_eq!(out.code, 0, "{out:?}");
    // The parent is split, and its parts read the parent's own rows only.
    assert!(out.stdout.contains("copy table public.parent part 1 of"), "{out:?}");
    assert!(out.stdout.contains("FROM ONLY \"public\".\"parent\" WHERE"), "{out:?}");
    assert!(out.stdout.contains("TRUNCATE ONLY \"public\".\"small_parent\""), "{out:?}");
    assert!(!out.stdout.contains("TRUNCATE \"public\""), "a TRUNCATE without ONLY: {out:?}");
    // No `COPY t ()`: a table without copyable columns is copied without a column list.
    assert!(out.stdout.contains("COPY \"public\".\"no_columns\" TO STDOUT"), "{out:?}");
    assert!(!out.stdout.contains("()"), "{out:?}");
    // Nested partitions: the top table's key is built once every leaf below it is copied (a
    // build that recurses into a leaf still being copied would deadlock with the copy).
    let doc = run(dir.path(), &["plan", f, "--format", "json"]).json();
    let pkey = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "post_load:constraint:public.np.np_pkey")
        .unwrap_or_else(|| panic!("no build of np's key: {doc}"));
    let after: Vec<&str> =
        pkey["after"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for leaf in ["load:table:public.np1a", "load:table:public.np1b"] {
        assert!(after.contains(&leaf), "np's key does not wait for {leaf}: {after:?}");
    }

    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    for (table, rows) in [
        ("parent", 40000),
        ("child", 60000),
        ("grandchild", 3000),
        ("small_parent", 1),
        ("small_child", 5000),
        ("no_columns", 2),
        ("only_generated", 2),
        ("np1a", 500),
        ("np1b", 500),
    ] {
        assert_eq!(own_rows(&tgt, table), rows, "{table} on the target");
    }
    assert_eq!(sql(&tgt, "app", "SELECT a::text FROM acl_col"), "postgres=arwdDxt/postgres");
    // The view that reads another was refreshed after it.
    assert_eq!(sql(&tgt, "app", "SELECT n FROM a_total"), "20000");
    assert_migrated(&src, &tgt, "app");
    let out = run(dir.path(), &["verify", f]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Identical"), "{out:?}");

    // A table missing on the target is reported as such, with the rest still compared.
    sql(&tgt, "app", "DROP TABLE small_child");
    let out = run(dir.path(), &["verify", f, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let tables = doc["tables"].as_array().unwrap();
    let missing = tables.iter().find(|t| t["table"] == "public.small_child").unwrap();
    assert_eq!(missing["missing_on"], "target", "{doc}");
    let parent = tables.iter().find(|t| t["table"] == "public.parent").unwrap();
    assert_eq!(parent["target_rows"], 40000, "{doc}");
    let out = run(dir.path(), &["verify", f]);
    assert!(out.stdout.contains("public.small_child: missing on the target"), "{out:?}");
}

#[test]
fn a_source_role_under_row_level_security_is_refused_and_nothing_calls_a_partial_copy_whole() {
    let (src, tgt) = pair(
        "rls",
        "CREATE TABLE secrets (id int PRIMARY KEY, owner_name text);
         INSERT INTO secrets SELECT g, CASE WHEN g % 2 = 0 THEN 'migrator' ELSE 'other' END
           FROM generate_series(1, 100) g;
         ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON secrets USING (owner_name = current_user);
         CREATE ROLE migrator LOGIN;
         GRANT SELECT ON secrets TO migrator;",
    );
    // The role sees half the rows.
    let seen = std::process::Command::new(src.bin("psql"))
        .args(["-h", src.host(), "-p", &src.port().to_string(), "-U", "migrator", "-d", "app"])
        .args(["-XAtc", "SELECT count(*) FROM secrets"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "50");
    let dir = TempDir::new("rls");
    let source_url = format!("postgresql://migrator@{}:{}/app", src.host(), src.port());
    let f = dir.write(
        "rls.yaml",
        &plan_yaml(
            "rls",
            &source_url,
            &tgt.url("app"),
            "mode: offline\nroles:\n  missing: create\n",
        ),
    );
    let f = f.to_str().unwrap();
    let out = run(dir.path(), &["plan", f, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let check = crate::support::find_check(&doc, "source_row_security", "error", "secrets");
    assert!(check["fix"].as_str().unwrap().contains("BYPASSRLS"), "{check}");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = run(dir.path(), &["verify", f]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stdout.contains("Identical"), "{out:?}");
    // With the fix applied, the whole table arrives.
    sql(&src, "app", "ALTER ROLE migrator BYPASSRLS");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(own_rows(&tgt, "secrets"), 100);
}

/// Object kinds whose DDL pgtransit takes from pg_dump: a base type with its I/O functions
/// (a dependency cycle pg_dump breaks with a shell type), a cast, an operator with a comment,
/// an operator class an index uses, text search objects, a foreign-data wrapper with a server,
/// grants, user mappings (one with a password) and a foreign table, an event trigger that logs
/// DDL (created last: the target's log must hold only the source's rows), and grants changed on
/// an extension's member function.
const PG_DUMP_KINDS: &str = "
CREATE ROLE mapper;
CREATE TYPE widget;
CREATE FUNCTION widget_in(cstring) RETURNS widget AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
CREATE FUNCTION widget_out(widget) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
CREATE TYPE widget (input = widget_in, output = widget_out, like = text);
COMMENT ON TYPE widget IS 'a base type';
CREATE CAST (widget AS text) WITHOUT FUNCTION;
CREATE TABLE parts (id int PRIMARY KEY, w widget, ws widget[], doc text);
INSERT INTO parts SELECT g, ('w' || g)::widget, ARRAY[('x' || g)::widget], 'doc ' || g
  FROM generate_series(1, 1000) g;
CREATE FUNCTION eq3(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'select $1 = $2';
CREATE OPERATOR === (leftarg = int, rightarg = int, procedure = eq3);
COMMENT ON OPERATOR === (int, int) IS 'three equals';
CREATE OPERATOR CLASS reverse_int_ops FOR TYPE int USING btree AS
  OPERATOR 1 >, OPERATOR 2 >=, OPERATOR 3 =, OPERATOR 4 <=, OPERATOR 5 <,
  FUNCTION 1 btint4cmp(int, int);
CREATE INDEX parts_id_reverse ON parts (id reverse_int_ops);
CREATE TEXT SEARCH DICTIONARY my_simple (TEMPLATE = simple, STOPWORDS = english);
CREATE TEXT SEARCH CONFIGURATION my_ts (COPY = english);
ALTER TEXT SEARCH CONFIGURATION my_ts ALTER MAPPING FOR asciiword WITH my_simple;
CREATE INDEX parts_doc_ts ON parts USING gin (to_tsvector('my_ts', doc));
CREATE FOREIGN DATA WRAPPER remote_fdw;
CREATE SERVER remote FOREIGN DATA WRAPPER remote_fdw OPTIONS (host 'elsewhere', port '5432');
GRANT USAGE ON FOREIGN SERVER remote TO mapper;
CREATE USER MAPPING FOR mapper SERVER remote OPTIONS (user 'bob');
CREATE USER MAPPING FOR postgres SERVER remote OPTIONS (user 'root', password 'hunter2');
CREATE FOREIGN TABLE remote_items (id int NOT NULL, name text) SERVER remote
  OPTIONS (table_name 'items');
COMMENT ON FOREIGN TABLE remote_items IS 'lives elsewhere';
CREATE MATERIALIZED VIEW parts_count AS SELECT count(*) AS n FROM parts;
CREATE TABLE ddl_log (tag text, at timestamptz DEFAULT now());
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO ddl_log (tag, at) VALUES (tg_tag, '2000-01-01'); END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
CREATE EXTENSION hstore;
REVOKE EXECUTE ON FUNCTION akeys(hstore) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION akeys(hstore) TO mapper;
";

#[test]
fn operators_casts_base_types_text_search_foreign_servers_and_event_triggers_migrate_via_pg_dump() {
    let (src, tgt) = pair("pgdump-kinds", PG_DUMP_KINDS);
    let dir = TempDir::new("pgdump-kinds");
    let f = offline_plan(&dir, "kinds", &src, &tgt, "app");
    // A role that only the server's grant and user mapping name is still one the target needs.
    let out = run(dir.path(), &["plan", &f, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    crate::support::find_check(&out.json(), "role_missing", "error", "mapper");
    sql(&tgt, "app", "CREATE ROLE mapper");
    let out = run(dir.path(), &["plan", &f, "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert!(crate::support::checks(&doc, "object_not_migrated").is_empty(), "{doc}");
    let warning = crate::support::find_check(&doc, "user_mapping_password", "warning", "postgres");
    assert!(warning["fix"].as_str().unwrap().contains("ADD password"), "{warning}");
    // The password is in no plan, and the shell type comes before the functions that need it.
    assert!(!out.stdout.contains("hunter2"), "a password in the plan: {}", out.stdout);
    let out = run(dir.path(), &["plan", &f]);
    let at = |what: &str| out.stdout.find(what).unwrap_or_else(|| panic!("{what}: {out:?}"));
    assert!(at("create shell type public.widget") < at("create function public.widget_in"));
    assert!(at("create function public.widget_out") < at("create type public.widget"));
    assert!(at("create operator class public.reverse_int_ops") < at("parts_id_reverse"));
    // The event trigger comes last, after the refresh: it must not log the migration's DDL.
    assert!(at("create event trigger log_ddl") > at("materialized view public.parts_count"));

    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"));
    let state = std::fs::read_to_string(dir.path().join(".pgtransit/kinds/state.json")).unwrap();
    assert!(!state.contains("hunter2"));
    // Everything but the password option is there (pg_dump of both sides compared without it).
    sql(
        &tgt,
        "app",
        // (As a replica: the target's event trigger must not log this test's own DDL.)
        "SET session_replication_role = replica;
         ALTER USER MAPPING FOR postgres SERVER remote OPTIONS (ADD password 'hunter2')",
    );
    assert_migrated(&src, &tgt, "app");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM parts WHERE w::text = 'w7'"), "1");
    let out = run(dir.path(), &["plan", &f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
}

#[test]
fn without_a_usable_pg_dump_objects_only_it_can_create_are_refused_and_subscriptions_are_named() {
    let (src, tgt) = pair(
        "pgdump-missing",
        "CREATE FUNCTION eq3(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'select $1 = $2';
         CREATE OPERATOR === (leftarg = int, rightarg = int, procedure = eq3);
         CREATE SUBSCRIPTION follower CONNECTION 'host=127.0.0.1 port=1 dbname=none'
           PUBLICATION elsewhere WITH (connect = false);",
    );
    let dir = TempDir::new("pgdump-missing");
    let f = offline_plan(&dir, "missing", &src, &tgt, "app");
    let plan = |pg_dump: Option<&str>| {
        let mut cmd = crate::support::pgtransit(dir.path());
        if let Some(p) = pg_dump {
            cmd.env("PGTRANSIT_PG_DUMP", p);
        }
        crate::support::Run::of(cmd.args(["plan", &f, "--format", "json"]).output().unwrap())
    };
    let out = plan(Some("/nonexistent/pg_dump"));
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let check = crate::support::find_check(&doc, "pg_dump_unavailable", "error", "operator");
    assert!(check["fix"].as_str().unwrap().contains("postgresql-client-"), "{check}");
    // With pg_dump, the operator is created and the subscription is named, not created.
    let out = plan(None);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    crate::support::find_check(&doc, "subscription_not_migrated", "warning", "follower");
    let out = run(dir.path(), &["apply", &f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_operator WHERE oprname = '==='"), "1");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_subscription"), "0");
    let _ = sql(&src, "app", "ALTER SUBSCRIPTION follower SET (slot_name = NONE)");
    let _ = sql(&src, "app", "DROP SUBSCRIPTION follower");
}

#[test]
fn pg_dump_sql_with_mapped_roles_converges_and_literals_that_look_like_sql_stay_literals() {
    // Roles differ between the servers: alice's objects belong to bob on the target. A
    // comment's text looks like an owner statement and an entry header, another's like SQL.
    let (src, tgt) = pair(
        "pgdump-roles",
        "CREATE ROLE alice; CREATE ROLE gone;
         CREATE FUNCTION eq3(int, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'select $1 = $2';
         CREATE OPERATOR === (leftarg = int, rightarg = int, procedure = eq3);
         ALTER OPERATOR === (int, int) OWNER TO alice;
         CREATE FOREIGN DATA WRAPPER w;
         CREATE SERVER s FOREIGN DATA WRAPPER w;
         ALTER SERVER s OWNER TO alice;
         GRANT USAGE ON FOREIGN SERVER s TO gone;
         CREATE USER MAPPING FOR alice SERVER s OPTIONS (user 'remote');
         CREATE FOREIGN TABLE ft (a int, b int) SERVER s;
         COMMENT ON FOREIGN TABLE ft IS E'notes\\n\\nALTER nothing OWNER TO gone;\\n--\\n-- TOC entry 9 (class 1259 OID 9)';
         COMMENT ON COLUMN ft.a IS '; CREATE ROLE pwned SUPERUSER LOGIN; --';
         CREATE TYPE mood AS ENUM ('ok', 'meh');
         CREATE CAST (mood AS int) WITH INOUT;
         CREATE TABLE t (id int PRIMARY KEY);
         CREATE PUBLICATION pub_t FOR TABLE t;",
    );
    sql(&tgt, "app", "CREATE ROLE bob");
    let dir = TempDir::new("pgdump-roles");
    let extra = "mode: offline\nobjects:\n  schemas:\n    include: [public]\n\
                 roles:\n  map:\n    alice: bob\n  missing: skip\n";
    let f = dir.write("roles.yaml", &plan_yaml("roles", &src.url("app"), &tgt.url("app"), extra));
    let f = f.to_str().unwrap();
    let out = run(dir.path(), &["plan", f]);
    assert_eq!(out.code, 0, "{out:?}");
    // Objects outside schemas are in scope whatever the schema patterns say.
    assert!(out.stdout.contains("create cast (public.mood AS integer)"), "{out:?}");
    assert!(out.stdout.contains("create publication pub_t"), "{out:?}");
    assert!(out.stdout.contains("create user mapping bob on server s"), "{out:?}");
    let out = run(dir.path(), &["apply", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_roles WHERE rolname = 'pwned'"), "0");
    let comment = "SELECT obj_description('ft'::regclass, 'pg_class')";
    assert_eq!(sql(&tgt, "app", comment), sql(&src, "app", comment));
    let column = "SELECT col_description('ft'::regclass, 1)";
    assert_eq!(sql(&tgt, "app", column), sql(&src, "app", column));
    let owner = "SELECT pg_get_userbyid(srvowner) FROM pg_foreign_server WHERE srvname = 's'";
    assert_eq!(sql(&tgt, "app", owner), "bob");
    assert_eq!(
        sql(&tgt, "app", "SELECT count(*) FROM pg_user_mappings WHERE usename = 'bob'"),
        "1"
    );
    assert_eq!(
        sql(&tgt, "app", "SELECT count(*) FROM pg_cast WHERE castsource = 'mood'::regtype"),
        "1"
    );
    // Mapped roles compare equal: nothing is left to do, nothing conflicts.
    let out = run(dir.path(), &["plan", f, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
}
