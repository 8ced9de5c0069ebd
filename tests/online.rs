//! Online migrations: the slot whose snapshot seeds the load, change streaming applied exactly
//! once, `status`, `abort`, resume after kill -9, and DDL drift. Real servers, real processes;
//! every check compares source and target for real (row checksums, `pg_dump --schema-only`).

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    LocalCluster, Proxy, TempDir, apply_output, assert_same_schema, logical_pair, pgtransit,
    plan_yaml, run, schema_dump, sql, start_apply, start_apply_with, state, state_file, stop,
    table_checksums, wait_exit, wait_for, wait_identical, wait_step_running, wait_streaming,
};

/// An online migration plan of `app`, written in `dir`.
fn online_plan(
    dir: &TempDir,
    name: &str,
    src: &LocalCluster,
    tgt: &LocalCluster,
    extra: &str,
) -> String {
    let text = plan_yaml(name, &src.url("app"), &tgt.url("app"), &format!("mode: online\n{extra}"));
    dir.write(&format!("{name}.yaml"), &text).to_str().unwrap().to_string()
}

fn slots(src: &LocalCluster) -> String {
    sql(src, "app", "SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
}

const SHOP: &str = "
CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                        note text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers,
                     total numeric(12,2), placed timestamptz DEFAULT now(), tags text[],
                     doc jsonb, big text);
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION orders_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_audit();
CREATE TABLE events (id int, kind text) PARTITION BY RANGE (id);
CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (1000);
CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE TABLE keyless (a int, b text);
CREATE TABLE scratch (id int PRIMARY KEY);
INSERT INTO scratch SELECT generate_series(1, 10);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 50) g;
INSERT INTO orders (customer, total, tags, doc, big)
  SELECT 1 + g % 50, g * 1.5, ARRAY['x', 'y''z'], jsonb_build_object('g', g), repeat('b', 10)
  FROM generate_series(1, 500) g;
INSERT INTO events SELECT g, 'k' || g FROM generate_series(1, 1500, 7) g;
INSERT INTO keyless VALUES (1, 'one'), (1, 'one'), (2, NULL);
";

#[test]
fn online_sync_streams_every_change_kind_exactly_once_and_abort_leaves_nothing() {
    let (src, tgt) = logical_pair("online-kinds", SHOP);
    let dir = TempDir::new("online-kinds");
    let plan = online_plan(
        &dir,
        "kinds",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );

    let out = run(dir.path(), &["plan", &plan]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("CREATE PUBLICATION \"pgtransit_kinds\" FOR TABLE"), "{out:?}");
    assert!(
        out.stdout.contains("CREATE_REPLICATION_SLOT \"pgtransit_kinds\" LOGICAL pgoutput"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL"),
        "{out:?}"
    );
    assert!(out.stdout.contains("START_REPLICATION SLOT \"pgtransit_kinds\""), "{out:?}");

    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "kinds", &mut child);
    // The audit trigger exists on the target, and it must not fire for replicated rows.
    let audit_before = sql(&tgt, "app", "SELECT count(*) FROM audit");

    sql(
        &src,
        "app",
        "INSERT INTO customers (name) VALUES ('new');
         UPDATE customers SET note = 'vip' WHERE id <= 10;
         UPDATE orders SET id = id + 100000 WHERE id <= 5;
         UPDATE orders SET big = repeat('t', 200000) WHERE id = 10;
         UPDATE orders SET total = 1 WHERE id = 10;
         DELETE FROM orders WHERE id BETWEEN 20 AND 30;
         INSERT INTO orders (customer, total, doc) VALUES (3, 9.99, '{\"a\": [1, null]}');
         UPDATE events SET id = id + 1000 WHERE id < 50;
         UPDATE keyless SET b = 'uno' WHERE a = 1;
         DELETE FROM keyless WHERE b IS NULL;
         INSERT INTO keyless VALUES (3, E'tab\\there');
         TRUNCATE scratch;
         INSERT INTO scratch VALUES (7);
         BEGIN; INSERT INTO events SELECT g, 'bulk' FROM generate_series(2000, 21999) g; COMMIT;",
    );
    wait_identical(&src, &tgt, &dir);
    assert_eq!(
        sql(&tgt, "app", "SELECT count(*) FROM audit"),
        sql(&src, "app", "SELECT count(*) FROM audit"),
        "the target's trigger fired for a replicated row (before: {audit_before})"
    );
    assert_same_schema(&schema_dump(&src, "app"), &schema_dump(&tgt, "app"));

    // `status` while streaming: every table streams, the counters count, ready for cutover.
    // (The streamer reports about every second: wait for the report that follows the changes.)
    wait_for(Duration::from_secs(10), "status to report every change", || {
        let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
        st["ready_for_cutover"] == true && st["applied"]["inserts"].as_u64() >= Some(20_012)
    });
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "streaming", "{st}");
    // Every column's type has a binary form both servers read the same: values come in binary.
    assert_eq!(st["values"], "binary", "{st}");
    assert!(st["lag_seconds"].as_f64().unwrap() < 5.0, "{st}");
    assert!(st["lag_bytes"].is_u64(), "{st}");
    // 1 customer, 1 order and its audit row, 7 events moved to another partition (delete +
    // insert), 1 keyless, 1 scratch, 20,000 bulk events.
    assert_eq!(st["applied"]["inserts"], 20_012, "{st}");
    // 10 customers, 5 order keys, 2 order rows, 2 keyless rows.
    assert_eq!(st["applied"]["updates"], 19, "{st}");
    // 11 orders, 7 events (moved), 1 keyless.
    assert_eq!(st["applied"]["deletes"], 19, "{st}");
    assert_eq!(st["applied"]["truncates"], 1, "{st}");
    let tables = st["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 7, "{st}");
    assert!(tables.iter().all(|t| t["state"] == "streaming"), "{st}");
    let text = run(dir.path(), &["status", &plan]);
    assert!(text.stdout.contains("ready for cutover: yes"), "{text:?}");

    let code = stop(&mut child);
    assert_eq!(code, 0, "{}", apply_output(&dir));
    assert!(apply_output(&dir).contains("Streaming stopped"), "{}", apply_output(&dir));

    // Changes made while apply is stopped are kept by the slot and applied by the next apply.
    sql(
        &src,
        "app",
        "INSERT INTO customers (name) VALUES ('while stopped'); DELETE FROM orders WHERE id = 40;",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "kinds", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    assert!(slots(&src).contains("pgtransit_kinds"));
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "stopped", "{st}");
    assert_eq!(st["ready_for_cutover"], false, "{st}");

    // abort removes the slot, the publication, the replica identities it set, the origin.
    let out = run(dir.path(), &["abort", &plan]);
    assert_eq!(out.code, 1, "abort must ask first: {out:?}");
    assert!(out.stderr.contains("--auto-approve"), "{out:?}");
    let out = run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("removed replication slot pgtransit_kinds"), "{out:?}");
    assert!(out.stdout.contains("removed publication pgtransit_kinds"), "{out:?}");
    assert!(out.stdout.contains("removed replication origin pgtransit_kinds"), "{out:?}");
    assert_eq!(slots(&src), "");
    assert_eq!(sql(&src, "app", "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        sql(&src, "app", "SELECT relreplident FROM pg_class WHERE relname = 'keyless'"),
        "d"
    );
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_replication_origin"), "0");
    let out = run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert!(out.stdout.contains("Nothing to remove"), "{out:?}");
    // The slot being gone, a new plan copies every table again (its rows are pgtransit's own).
    let out = run(dir.path(), &["plan", &plan]);
    assert!(out.stdout.contains("7 to copy"), "{out:?}");
    assert!(out.stdout.contains("0 conflicts"), "{out:?}");
}

/// Runs `pgbench` against the source's `app` (as the harness's superuser, over TCP).
fn pgbench(src: &LocalCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(src.bin("pgbench"))
        .args(["-h", src.host(), "-p", &src.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg("app")
        .env_remove("PGDATABASE")
        .output()
        .expect("run pgbench")
}

/// A writer on the source, in the background: `n` transactions, each inserting a row into a
/// keyless table and incrementing a counter. A change lost shows as a missing row or a lower
/// counter; a change applied twice, as an extra row or a higher counter.
fn writer(src: &LocalCluster, n: usize) -> std::thread::JoinHandle<()> {
    let url = src.conninfo("app");
    let psql = src.bin("psql");
    std::thread::spawn(move || {
        let script: String = (0..n)
            .map(|i| {
                format!(
                    "BEGIN; INSERT INTO ticks VALUES ({i}, now()); \
                     UPDATE counter SET n = n + 1; COMMIT;\n"
                )
            })
            .collect();
        let mut child = std::process::Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run psql");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "the writer failed");
    })
}

#[test]
fn kill_9_while_streaming_then_resume_loses_and_doubles_nothing() {
    let (src, tgt) = logical_pair(
        "online-kill",
        "CREATE TABLE ticks (i int, at timestamptz);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint);
         INSERT INTO counter VALUES (1, 0);",
    );
    let dir = TempDir::new("online-kill");
    let plan = online_plan(
        &dir,
        "kill",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "kill", &mut child);

    let w = writer(&src, 4000);
    // Kill -9 twice while the writer runs, resuming each time.
    for _ in 0..2 {
        wait_for(Duration::from_secs(30), "some ticks to reach the target", || {
            sql(&tgt, "app", "SELECT count(*) FROM ticks").parse::<i64>().unwrap() > 0
        });
        std::thread::sleep(Duration::from_millis(700));
        child.kill().unwrap();
        let _ = child.wait();
        // The killed stream's walsender may hold the slot a moment: apply waits for it.
        child = start_apply(&dir, &plan, &[]);
        wait_streaming(&dir, "kill", &mut child);
    }
    w.join().unwrap();
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT n FROM counter"), "4000");
    assert_eq!(sql(&tgt, "app", "SELECT count(*), count(DISTINCT i) FROM ticks"), "4000|4000");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    let out = run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(slots(&src), "");
}

#[test]
fn ddl_on_the_source_stops_the_stream_with_what_changed_and_apply_resumes_once_fixed() {
    let (src, tgt) = logical_pair(
        "online-ddl",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a');",
    );
    let dir = TempDir::new("online-ddl");
    let plan = online_plan(&dir, "ddl", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "ddl", &mut child);

    sql(
        &src,
        "app",
        "ALTER TABLE items ADD COLUMN price numeric; INSERT INTO items VALUES (2, 'b', 9.5);",
    );
    let status =
        wait_exit(&mut child, Duration::from_secs(30)).expect("apply kept streaming after DDL");
    let output = apply_output(&dir);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("the source's schema changed"), "{output}");
    assert!(output.contains("public.items"), "{output}");
    assert!(output.contains("DDL on the source is not replicated"), "{output}");
    // Nothing after the DDL was applied, and nothing is lost: the slot kept it.
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM items"), "1");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "failed", "{st}");
    assert!(st["error"].as_str().unwrap().contains("items"), "{st}");

    // The operator applies the same DDL on the target; the next apply resumes.
    sql(&tgt, "app", "ALTER TABLE items ADD COLUMN price numeric;");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "ddl", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
}

#[test]
fn a_binary_stream_that_meets_an_older_version_of_a_table_goes_on_in_text_and_loses_nothing() {
    let (src, tgt) = logical_pair(
        "online-retype",
        "CREATE TABLE items (id int PRIMARY KEY, qty int, at timestamptz);
         INSERT INTO items SELECT g, g, now() FROM generate_series(1, 10) g;
         CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE feelings (m mood PRIMARY KEY, n posint, moods text[]);
         INSERT INTO feelings VALUES ('sad', 1, '{a}'), ('ok', 2, NULL);",
    );
    let dir = TempDir::new("online-retype");
    let plan = online_plan(&dir, "retype", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "retype", &mut child);
    // An enum key, a domain and an array stream in binary (the table is not coalesced: its
    // array column's values cannot be one element each of an array parameter).
    sql(
        &src,
        "app",
        "INSERT INTO feelings VALUES ('happy', 3, '{x,\"y z\"}');
         UPDATE feelings SET n = 7, moods = '{b}' WHERE m = 'sad';
         DELETE FROM feelings WHERE m = 'ok';
         UPDATE items SET qty = qty * 10 WHERE id <= 3;",
    );
    wait_identical(&src, &tgt, &dir);
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["values"], "binary", "{st}");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));

    // While apply is stopped: changes in the table as it was (qty int4, as id is, whose binary
    // form an int8 column cannot read), then the column's type changed on both servers, and
    // more changes.
    sql(
        &src,
        "app",
        "INSERT INTO items VALUES (11, 11, now()); UPDATE items SET qty = -1 WHERE id = 2",
    );
    sql(&src, "app", "ALTER TABLE items ALTER COLUMN qty TYPE int8");
    sql(&tgt, "app", "ALTER TABLE items ALTER COLUMN qty TYPE int8");
    sql(&src, "app", "INSERT INTO items VALUES (12, 9000000000, now())");
    // The next apply starts in binary for the table as it is, meets its older version in the
    // stream, and streams again in text: every change arrives once.
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "retype", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT qty FROM items WHERE id = 2"), "-1");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    let values = st["values"].as_str().unwrap_or_default();
    assert!(values.starts_with("text (an earlier stream"), "{st}");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    assert!(apply_output(&dir).contains("not chosen for"), "{}", apply_output(&dir));
    // The state keeps it: the next apply streams in text from the start.
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "retype", &mut child);
    sql(&src, "app", "INSERT INTO items VALUES (13, 13, now())");
    wait_identical(&src, &tgt, &dir);
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert!(st["values"].as_str().unwrap_or_default().starts_with("text (an earlier"), "{st}");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
}

#[test]
fn pgbench_writing_during_sync_ends_with_identical_tables_and_a_later_row_arrives() {
    let (src, tgt) = logical_pair("online-pgbench", "SELECT 1;");
    let init = pgbench(&src, &["-i", "-s", "2", "-q"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let dir = TempDir::new("online-pgbench");
    // pgbench_history has no key: its inserts replicate; updates and deletes would need FULL.
    let plan = online_plan(
        &dir,
        "bench",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "bench", &mut child);

    // 5 s here; the README's figure comes from PGTRANSIT_TEST_PGBENCH_SECONDS=15.
    let seconds = std::env::var("PGTRANSIT_TEST_PGBENCH_SECONDS").unwrap_or_else(|_| "5".into());
    let bench = pgbench(&src, &["-n", "-c", "4", "-T", &seconds]);
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    sql(
        &src,
        "app",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (0, 0, 0, 424242, now())",
    );
    let sent = Instant::now();
    wait_for(Duration::from_secs(30), "the row inserted after pgbench", || {
        sql(&tgt, "app", "SELECT count(*) FROM pgbench_history WHERE delta = 424242") == "1"
    });
    let tps = String::from_utf8_lossy(&bench.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "pgbench -c 4 -T {seconds} ({tps}); a row inserted after it stopped reached the target in {:?}",
        sent.elapsed()
    );
    wait_identical(&src, &tgt, &dir);
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
}

/// A writer as role `role` on the source that keeps going until the fence ends its session:
/// orders drawing invoice numbers from a sequence no column owns. Returns how many committed.
fn app_writer(src: &LocalCluster, role: &str) -> std::thread::JoinHandle<()> {
    let url = format!("host={} port={} user={role} dbname=app", src.host(), src.port());
    let psql = src.bin("psql");
    std::thread::spawn(move || {
        let script: String = (0..100_000)
            .map(|i| {
                format!(
                    "INSERT INTO orders (customer, total, big) VALUES (1 + {i} % 50, nextval('invoice_no'), 'w');\n"
                )
            })
            .collect();
        let mut child = std::process::Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run psql");
        use std::io::Write;
        // The fence ends the session: the write fails, and so may this pipe.
        let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
        let _ = child.wait();
    })
}

/// Runs SQL on the source's `app` as `role`, over TCP.
fn psql_as(src: &LocalCluster, role: &str, sql: &str) -> std::process::Output {
    let url = format!("host={} port={} user={role} dbname=app", src.host(), src.port());
    std::process::Command::new(src.bin("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
        .output()
        .expect("run psql")
}

const APP_ROLE: &str = "
CREATE SEQUENCE invoice_no START 500;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA public TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO app;
";

#[test]
fn cutover_fences_every_writer_drains_sets_sequences_verifies_and_leaves_no_slot() {
    let (src, tgt) = logical_pair("cutover", &format!("{SHOP}{APP_ROLE}"));
    sql(&tgt, "app", "CREATE ROLE app LOGIN;");
    let dir = TempDir::new("cutover");
    let plan = online_plan(
        &dir,
        "cut",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let out = run(dir.path(), &["plan", &plan]);
    assert!(
        out.stdout.contains("ALTER DATABASE \"app\" SET default_transaction_read_only = on"),
        "{out:?}"
    );
    assert!(out.stdout.contains("sequence public.invoice_no"), "{out:?}");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "cut", &mut child);

    // An application role writes to the source through the cutover.
    let writer = app_writer(&src, "app");
    wait_for(Duration::from_secs(30), "the writer's rows on the target", || {
        sql(&tgt, "app", "SELECT count(*) FROM orders WHERE big = 'w'").parse::<i64>().unwrap()
            > 200
    });
    let out_cutover = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    let out = &out_cutover;
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("Cutover complete: the write gap was"), "{out:?}");
    writer.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", apply_output(&dir));
    assert!(apply_output(&dir).contains("Cutover complete"), "{}", apply_output(&dir));

    // The application role cannot write to the source any more (new sessions are read-only).
    let denied = psql_as(&src, "app", "INSERT INTO customers (name) VALUES ('late')");
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("read-only transaction"), "{err}");
    // Every committed transaction is on the target; rows and schema identical.
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_same_schema(&schema_dump(&src, "app"), &schema_dump(&tgt, "app"));
    // Sequences, owned or not, at or above the source's.
    for seq in ["invoice_no", "orders_id_seq", "customers_id_seq"] {
        let q = format!("SELECT last_value FROM {seq}");
        let (s, t): (i64, i64) =
            (sql(&src, "app", &q).parse().unwrap(), sql(&tgt, "app", &q).parse().unwrap());
        assert!(t >= s, "{seq}: target {t} < source {s}");
    }
    let out = run(dir.path(), &["plan", &plan, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "after the cutover there is nothing to do: {out:?}");
    // The target's triggers fire for new writes.
    let before: i64 = sql(&tgt, "app", "SELECT count(*) FROM audit").parse().unwrap();
    sql(&tgt, "app", "INSERT INTO orders (customer, total) VALUES (1, 1)");
    let after: i64 = sql(&tgt, "app", "SELECT count(*) FROM audit").parse().unwrap();
    assert_eq!(after, before + 1);
    // Nothing of the migration is left.
    assert_eq!(slots(&src), "");
    assert_eq!(sql(&src, "app", "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_replication_origin"), "0");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "cut_over", "{st}");
    let gap = st["cutover"]["write_gap_seconds"].as_f64().unwrap();
    assert!(gap < 10.0, "{st}");
    // Where it went: the parts after the fence add up to it.
    let part = |name: &str| st["cutover"]["write_gap"][name].as_f64().unwrap();
    let parts = ["drain", "sequences", "verification", "clean_up"].map(part);
    assert!(parts.iter().all(|p| *p >= 0.0) && part("fence") >= 0.0, "{st}");
    assert!((parts.iter().sum::<f64>() - gap).abs() < 0.05, "{st}");
    assert!(out_cutover.stdout.contains("Write gap: drain"), "{out_cutover:?}");
    eprintln!("write gap: {gap} s, {}", st["cutover"]["write_gap"]);
}

#[test]
fn a_writer_that_reconnects_at_once_like_a_pool_does_not_keep_the_fence_from_going_up() {
    let (src, tgt) = logical_pair(
        "pool",
        "CREATE TABLE hits (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());",
    );
    let dir = TempDir::new("pool");
    let plan = online_plan(&dir, "pool", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "pool", &mut child);
    // Like a connection pool: sessions that stay connected, writing now and then (and, once
    // fenced, failing: read-only), each replaced the moment it is ended.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let script = "INSERT INTO hits DEFAULT VALUES; SELECT pg_sleep(0.02);\n".repeat(3000);
    let script = dir.write("pool.sql", &script);
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, script) = (stop.clone(), script.clone());
            let (host, port, psql) = (src.host().to_string(), src.port(), src.bin("psql"));
            std::thread::spawn(move || {
                let url = format!("host={host} port={port} user=postgres dbname=app");
                let mut sessions = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut child = std::process::Command::new(&psql)
                        .args(["-X", "-q", "-d", &url, "-f"])
                        .arg(&script)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("run psql");
                    while child.try_wait().unwrap().is_none() {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            let _ = child.kill();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    sessions += 1;
                }
                sessions
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sessions: i32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("Cutover complete"), "{out:?}");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", apply_output(&dir));
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    // The fence ended the sessions it found, and their replacements were left alone.
    assert!(sessions >= 4, "the writers opened {sessions} sessions");
}

#[test]
fn the_applier_never_jit_compiles_even_where_a_keyless_table_makes_its_statements_look_costly() {
    let src = crate::support::logical_source("nojit-src");
    let tgt = crate::support::cluster(
        "nojit-tgt",
        &[
            ("shared_preload_libraries", "pg_stat_statements"),
            ("jit_above_cost", "0"),
            ("jit_inline_above_cost", "0"),
            ("jit_optimize_above_cost", "0"),
        ],
    );
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(
        &src,
        "app",
        "CREATE TABLE keyless (a int, b text);
         INSERT INTO keyless SELECT g, 'x' FROM generate_series(1, 300) g;",
    );
    sql(&tgt, "postgres", "CREATE EXTENSION pg_stat_statements");
    let dir = TempDir::new("nojit");
    let plan = online_plan(
        &dir,
        "nojit",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "nojit", &mut child);
    sql(
        &src,
        "app",
        "DELETE FROM keyless WHERE a <= 50; UPDATE keyless SET b = 'y' WHERE a > 250;",
    );
    wait_identical(&src, &tgt, &dir);
    stop(&mut child);
    let jitted = "SELECT coalesce(sum(jit_functions), 0) FROM pg_stat_statements \
                  WHERE query LIKE '%keyless%' AND query ~ '^(UPDATE|DELETE)'";
    let applied = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
                   WHERE query LIKE '%keyless%' AND query ~ '^(UPDATE|DELETE)'";
    assert!(sql(&tgt, "postgres", applied).parse::<i64>().unwrap() >= 100);
    assert_eq!(sql(&tgt, "postgres", jitted), "0");
    // The server would have compiled them: a statement of its own settings is.
    sql(&tgt, "app", "DELETE FROM keyless WHERE a = -1");
    let own = "SELECT coalesce(sum(jit_functions), 0) FROM pg_stat_statements \
               WHERE query LIKE 'DELETE FROM keyless WHERE a = $1%'";
    if sql(&tgt, "postgres", own) == "0" {
        eprintln!("SKIPPED the contrast: this server does not JIT-compile (no llvmjit)");
    }
}

#[test]
fn the_fence_knows_pgtransits_own_sessions_by_pid_not_by_a_name_anyone_can_set() {
    let (src, tgt) = logical_pair(
        "fence-names",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    let dir = TempDir::new("fence-names");
    let plan = online_plan(&dir, "names", &src, &tgt, "");
    // The operator's PGAPPNAME wins over pgtransit's own names, as libpq's would...
    let mut child = start_apply(&dir, &plan, &[("PGAPPNAME", "ops-migration")]);
    wait_streaming(&dir, "names", &mut child);
    let count = |name: &str| {
        let q = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'");
        sql(&src, "app", &q).parse::<i64>().unwrap()
    };
    assert!(count("ops-migration") >= 1, "pgtransit's sessions carry the operator's name");
    // ...and an application that calls itself pgtransit is not pgtransit.
    let impostor_url = format!("{} application_name=pgtransit/impostor", src.conninfo("app"));
    let mut impostor = std::process::Command::new(src.bin("psql"))
        .args(["-X", "-d", &impostor_url, "-c", "SELECT pg_sleep(300)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the impostor's session", || {
        count("pgtransit/impostor") == 1
    });

    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", apply_output(&dir));
    // The fence ended the impostor, and none of pgtransit's own sessions.
    assert!(!impostor.wait().unwrap().success(), "the impostor's session was ended");
    assert_eq!(count("pgtransit/impostor"), 0);
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_eq!(slots(&src), "");
}

#[test]
fn a_cutover_cut_off_in_its_clean_up_is_finished_by_the_next_apply() {
    let (src, tgt) = logical_pair(
        "online-cleanup",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    let dir = TempDir::new("online-cleanup");
    let plan = online_plan(&dir, "cleanup", &src, &tgt, "");
    // Verified, then killed before the slot, publication and origin are dropped.
    let mut child = start_apply(&dir, &plan, &[("PGTRANSIT_FAILPOINT", "before:cutover:cleanup")]);
    wait_streaming(&dir, "cleanup", &mut child);
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(child.wait().unwrap().signal().is_some(), "{}", apply_output(&dir));
    assert_eq!(state(&dir, "cleanup")["cutover"]["status"], "cleaning_up");
    assert_eq!(slots(&src), "pgtransit_cleanup");

    // The next apply has exactly that left to do, and does it.
    let out = run(dir.path(), &["plan", &plan]);
    assert!(out.stdout.contains("clean-up interrupted: finished now"), "{out:?}");
    assert!(out.stdout.contains("0 to copy, 1 to run"), "{out:?}");
    let out = run(dir.path(), &["apply", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(slots(&src), "");
    assert_eq!(sql(&src, "app", "SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM pg_replication_origin"), "0");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "cut_over", "{st}");
    let out = run(dir.path(), &["plan", &plan, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing left to do: {out:?}");
}

/// `abort` after a cutover verified but cut off in its clean-up removes the leftovers and
/// keeps the cutover on record: the target is the primary, and no later plan copies into it.
#[test]
fn abort_after_a_verified_cutover_removes_its_leftovers_and_no_plan_copies_again() {
    let (src, tgt) = logical_pair(
        "online-cleanup-abort",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    let dir = TempDir::new("online-cleanup-abort");
    let plan = online_plan(&dir, "cleanupabort", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[("PGTRANSIT_FAILPOINT", "before:cutover:cleanup")]);
    wait_streaming(&dir, "cleanupabort", &mut child);
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_ne!(out.code, 0, "{out:?}");
    let _ = child.wait();
    assert_eq!(state(&dir, "cleanupabort")["cutover"]["status"], "cleaning_up");
    sql(&tgt, "app", "INSERT INTO t VALUES (2)");
    let out = run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(slots(&src), "");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["phase"], "cut_over", "{st}");
    let out = run(dir.path(), &["plan", &plan, "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing to copy into the new primary: {out:?}");
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM t"), "2");
}

/// Waits until continuous verification has completed `passes` passes over every table.
fn wait_passes(dir: &TempDir, plan: &str, passes: u64) -> serde_json::Value {
    let mut st = serde_json::Value::Null;
    wait_for(Duration::from_secs(90), "a complete verification pass", || {
        st = run(dir.path(), &["status", plan, "--format", "json"]).json();
        st["verification"]["passes"].as_u64().unwrap_or(0) >= passes
    });
    st
}

#[test]
fn continuous_verification_proves_chunks_while_streaming_and_the_fence_compares_only_rows_changed_since()
 {
    // Keys up to 3 million: about 30 chunks of the integer key; a text key (one chunk, changed
    // rows found by their key); a table without a key (compared in full once changed).
    let (src, tgt) = logical_pair(
        "proof",
        "CREATE TABLE wide (id bigint PRIMARY KEY, v text);
         INSERT INTO wide SELECT g * 1000, 'v' || g FROM generate_series(1, 3000) g;
         CREATE TABLE named (code text PRIMARY KEY, n int);
         INSERT INTO named SELECT 'c' || g, g FROM generate_series(1, 500) g;
         CREATE TABLE keyless (a int, b text);
         INSERT INTO keyless VALUES (1, 'one'), (2, 'two');
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
         INSERT INTO scratch VALUES (1);",
    );
    let dir = TempDir::new("proof");
    let plan = online_plan(
        &dir,
        "proof",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\nverify:\n  rows_per_second: 0\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "proof", &mut child);
    sql(&src, "app", "UPDATE wide SET v = 'early' WHERE id = 1000");
    let st = wait_passes(&dir, &plan, 1);
    let v = &st["verification"];
    assert!(v["rounds"].as_u64().unwrap() >= 1, "{st}");
    assert!(v["rows_compared"].as_u64().unwrap() >= 3502, "{st}");
    // The stream stood still only while the target's snapshot was taken.
    let pause = v["longest_pause"].as_f64().unwrap();
    assert!(pause < 1.0, "{st}");
    let wide = st["tables"].as_array().unwrap().iter().find(|t| t["name"] == "public.wide");
    assert_eq!(wide.unwrap()["proven"]["fraction"], 1.0, "{st}");
    let saved = state(&dir, "proof");
    let chunks = saved["verification"]["tables"]["public.wide"]["complete"].as_array().unwrap();
    assert!(chunks.len() >= 30, "{saved}");
    assert!(chunks.iter().all(|c| c["equal"] == true && c["lsn"].is_string()), "{saved}");
    let text = run(dir.path(), &["status", &plan]);
    assert!(text.stdout.contains("100% proven equal while streaming as of"), "{text:?}");
    // `plan` shows the cutover's expected write gap, from these measurements.
    let out = run(dir.path(), &["plan", &plan]);
    assert!(out.stdout.contains("Cutover: expected write gap ~"), "{out:?}");
    assert!(out.stdout.contains("3 of 4 tables proven while streaming"), "{out:?}");
    // The unlogged table is not streamed: continuous verification leaves it out.
    assert!(out.stdout.contains("rows of 3 tables, while streaming"), "{out:?}");
    assert!(text.stdout.contains("Continuous verification: "), "{text:?}");

    // Changed after the proof: these rows (and the keyless table) are compared in the fence.
    sql(
        &src,
        "app",
        "UPDATE wide SET v = 'late' WHERE id IN (5000, 2999000);
         INSERT INTO named VALUES ('late', 1);
         DELETE FROM named WHERE code = 'c7';
         INSERT INTO keyless VALUES (3, 'three');",
    );
    wait_identical(&src, &tgt, &dir);
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("were proven equal while streaming"), "{out:?}");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", apply_output(&dir));
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    let verified = st["cutover"]["verified"].as_array().unwrap();
    let of = |name: &str| verified.iter().find(|c| c["table"] == name).unwrap().clone();
    // Proven tables are not compared in full inside the fence (a second pass may have
    // proven the late changes too: then none is left to compare by key).
    assert!(of("public.wide")["proof"].as_str().unwrap().contains("proven equal"), "{st}");
    assert!(of("public.named")["proof"].is_string(), "{st}");
    // What the stream does not carry is compared in full inside the fence.
    assert!(of("public.scratch")["proof"].is_null(), "{st}");
    eprintln!("{}\nwrite gap: {}", out.stdout, st["cutover"]["write_gap"]);
}

#[test]
fn rows_changed_behind_pgtransits_back_are_named_and_copied_again_at_a_consistent_point_with_verify_repair()
 {
    let (src, tgt) = logical_pair(
        "repair",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 1000) g;",
    );
    let dir = TempDir::new("repair");
    let plan =
        online_plan(&dir, "rep", &src, &tgt, "verify:\n  rows_per_second: 0\n  repair: true\n");
    // The plan shows what a repair runs.
    let out = run(dir.path(), &["plan", &plan]);
    assert!(
        out.stdout.contains("DELETE FROM ONLY <table> WHERE <key> = ANY(<keys that differ>)"),
        "{out:?}"
    );
    assert!(out.stdout.contains("TEMPORARY LOGICAL pgoutput"), "{out:?}");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "rep", &mut child);
    wait_passes(&dir, &plan, 1);
    // Behind pgtransit's back, where no trigger sees it: a row changed, one deleted, one added;
    // meanwhile the source changes too.
    sql(
        &tgt,
        "app",
        "SET session_replication_role = replica;
         UPDATE items SET name = 'corrupted' WHERE id = 500;
         DELETE FROM items WHERE id = 501;
         INSERT INTO items VALUES (5000, 'stray');",
    );
    sql(&src, "app", "UPDATE items SET name = 'moved on' WHERE id = 1");
    let mut st = serde_json::Value::Null;
    wait_for(Duration::from_secs(60), "the rows repaired", || {
        st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
        st["verification"]["repairs"].as_array().is_some_and(|r| !r.is_empty())
    });
    let repair = &st["verification"]["repairs"][0];
    assert_eq!(repair["table"], "public.items", "{st}");
    assert_eq!(repair["keys"], serde_json::json!(["id=500", "id=501", "id=5000"]), "{st}");
    assert_eq!(repair["rows_copied"], 2, "{st}");
    wait_identical(&src, &tgt, &dir);
    let text = run(dir.path(), &["status", &plan]);
    assert!(text.stdout.contains("repaired public.items: id=500, id=501, id=5000"), "{text:?}");
    // Proven again, and the cutover completes.
    wait_for(Duration::from_secs(60), "the table proven again", || {
        let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
        st["tables"][0]["proven"]["fraction"] == 1.0
    });
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", apply_output(&dir));
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
}

#[test]
fn verification_catches_a_corrupted_row_and_the_failed_cutover_leaves_the_source_writable() {
    let (src, tgt) = logical_pair(
        "verify",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 1000) g;",
    );
    let dir = TempDir::new("verify");
    let plan = online_plan(&dir, "ver", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "ver", &mut child);
    let out = run(dir.path(), &["verify", &plan]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Identical"), "{out:?}");

    // Someone changes a row on the target behind pgtransit's back, where no trigger sees it.
    sql(
        &tgt,
        "app",
        "SET session_replication_role = replica; UPDATE items SET name = 'corrupted' WHERE id = 500",
    );
    let out = run(dir.path(), &["verify", &plan, "--format", "json"]);
    let v = out.json();
    assert_eq!(v["identical"], false, "{v}");
    // Continuous verification finds it, and names it.
    let mut st = serde_json::Value::Null;
    wait_for(Duration::from_secs(60), "continuous verification to find the row", || {
        st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
        st["tables"][0]["proven"]["differing"].to_string().contains("id=500")
    });
    let text = run(dir.path(), &["status", &plan]);
    assert!(text.stdout.contains("differs: id ..99999: id=500"), "{text:?}");
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("public.items"), "{out:?}");
    assert!(out.stderr.contains("fence was lifted"), "{out:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", apply_output(&dir));
    assert!(apply_output(&dir).contains("id 0..99999"), "{}", apply_output(&dir));
    // The source takes writes again, from new sessions too.
    sql(&src, "app", "INSERT INTO items VALUES (1001, 'after')");
    assert_eq!(sql(&src, "app", "SHOW default_transaction_read_only"), "off");
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["cutover"]["status"], "failed", "{st}");
    assert_eq!(st["cutover"]["fence_lifted"], true, "{st}");

    // Had the source been unreachable when the fence was to be lifted, the fence would still
    // be up, and the state would say so: `status` warns, and the next run lifts the fence
    // before it writes to the source (its first step alters the publication).
    sql(&src, "app", "ALTER DATABASE app SET default_transaction_read_only = on");
    let file = state_file(&dir, "ver");
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    saved["cutover"]["fence_lifted"] = false.into();
    std::fs::write(&file, saved.to_string()).unwrap();
    let st = run(dir.path(), &["status", &plan]);
    assert!(st.stdout.contains("could not lift its fence"), "{st:?}");

    // Fixed, the cutover runs again (no apply running: it resumes the stream itself).
    sql(&tgt, "app", "UPDATE items SET name = 'n500' WHERE id = 500");
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Cutover complete"), "{out:?}");
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_eq!(slots(&src), "");
}

#[test]
fn a_crash_of_either_server_during_sync_is_waited_for_and_nothing_is_lost_or_doubled() {
    let (mut src, mut tgt) = logical_pair(
        "online-crash",
        "CREATE TABLE ticks (i int, at timestamptz);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint);
         INSERT INTO counter VALUES (1, 0);",
    );
    let dir = TempDir::new("online-crash");
    let plan = online_plan(
        &dir,
        "crash",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "crash", &mut child);

    // The target crashes (immediate stop) while the writer runs, and comes back.
    let w = writer(&src, 1500);
    wait_for(Duration::from_secs(30), "some ticks on the target", || {
        sql(&tgt, "app", "SELECT count(*) FROM ticks").parse::<i64>().unwrap() > 100
    });
    tgt.crash().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    tgt.start_again().unwrap();
    w.join().unwrap();
    wait_identical(&src, &tgt, &dir);
    assert!(child.try_wait().unwrap().is_none(), "apply gave up:\n{}", apply_output(&dir));

    // The source crashes and comes back; writes after it stream too.
    src.crash().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    src.start_again().unwrap();
    writer(&src, 500).join().unwrap();
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT n FROM counter"), "2000");
    assert_eq!(sql(&tgt, "app", "SELECT count(*), count(DISTINCT i) FROM ticks"), "2000|1500");
    assert!(apply_output(&dir).contains("trying again"), "{}", apply_output(&dir));
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(slots(&src), "");
}

#[test]
fn crashes_of_the_target_and_the_source_during_the_load_are_waited_for_and_the_copy_redone() {
    let (mut src, mut tgt) = logical_pair(
        "online-load-crash",
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT i, repeat('x', 50) FROM generate_series(1, 20000) i;
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO other SELECT generate_series(1, 100);
         CREATE TABLE ticks (i int, at timestamptz);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint);
         INSERT INTO counter VALUES (1, 0);",
    );
    // The target's table is there already (identical, empty), and a session holds it: the copy
    // into it waits, recorded `running`, until the target crashes (reads go on: planning).
    sql(&tgt, "app", "CREATE TABLE big (id int PRIMARY KEY, v text);");
    let hold = |c: &LocalCluster, table: &str| {
        let locker = std::process::Command::new(c.bin("psql"))
            .args(["-X", "-q", "-d", &c.conninfo("app"), "-c"])
            .arg(format!("BEGIN; LOCK TABLE {table} IN SHARE MODE; SELECT pg_sleep(120);"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let q = format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass");
        wait_for(Duration::from_secs(10), "the target's table locked", || sql(c, "app", &q) != "0");
        locker
    };
    let mut locker = hold(&tgt, "big");
    let dir = TempDir::new("online-load-crash");
    let plan = online_plan(
        &dir,
        "loadcrash",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[("PGTRANSIT_LOG", "info")]);
    let running = |dir: &TempDir| {
        state(dir, "loadcrash")["steps"]["load:table:public.big"]["status"] == "running"
    };
    wait_for(Duration::from_secs(30), "the copy of big to wait on the lock", || running(&dir));
    let w = writer(&src, 300);
    std::thread::sleep(Duration::from_millis(300));
    tgt.crash().unwrap();
    let _ = locker.wait();
    std::thread::sleep(Duration::from_secs(1));
    tgt.start_again().unwrap();
    w.join().unwrap();
    wait_streaming(&dir, "loadcrash", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert!(apply_output(&dir).contains("trying again"), "{}", apply_output(&dir));

    // Again, the source this time: a resumed load under a new snapshot, while the slot's
    // changes wait.
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    sql(&src, "app", "CREATE TABLE late (id int PRIMARY KEY); INSERT INTO late VALUES (1), (2);");
    sql(&tgt, "app", "CREATE TABLE late (id int PRIMARY KEY);");
    let mut locker = hold(&tgt, "late");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_step_running(&dir, "loadcrash", "load:table:public.late", &mut child);
    let w = writer(&src, 300);
    src.crash().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    src.start_again().unwrap();
    let _ = w.join();
    // The copy saw nothing of the crash while it waited on the target: let it go on.
    sql(
        &tgt,
        "app",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' \
         AND pid <> pg_backend_pid()",
    );
    let _ = locker.wait();
    wait_streaming(&dir, "loadcrash", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM late"), "2");
    assert!(apply_output(&dir).contains("trying again"), "{}", apply_output(&dir));
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));

    // Without its state (lost, or another directory), the migration is not started afresh over
    // what the earlier applies did: the slot on the source says one ran.
    let state_dir = dir.path().join(".pgtransit/loadcrash");
    let away = dir.path().join("moved-away");
    std::fs::rename(&state_dir, &away).unwrap();
    let out = run(dir.path(), &["apply", &plan, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("state_missing"), "{out:?}");
    assert!(out.stdout.contains("pgtransit_loadcrash"), "{out:?}");
    assert!(!state_dir.join("state.json").exists(), "a refused apply writes no state");
    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::rename(&away, &state_dir).unwrap();
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(slots(&src), "");
}

#[test]
fn a_server_that_stops_answering_on_an_open_connection_is_given_up_on_and_the_stream_resumes() {
    let (src, tgt) = logical_pair(
        "online-freeze",
        "CREATE TABLE ticks (i int, at timestamptz);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint);
         INSERT INTO counter VALUES (1, 0);",
    );
    // pgtransit reaches both servers through proxies that can stop forwarding (connections
    // stay open: no error, no reset, nothing arrives), as a frozen VM or a middlebox would.
    let (src_proxy, tgt_proxy) = (Proxy::start(src.port()), Proxy::start(tgt.port()));
    let dir = TempDir::new("online-freeze");
    let text = plan_yaml(
        "freeze",
        &src_proxy.url("app"),
        &tgt_proxy.url("app"),
        "mode: online\nsync:\n  tables_without_key: replica_identity_full\n",
    );
    let plan = dir.write("freeze.yaml", &text).to_str().unwrap().to_string();
    // Watchdogs scaled down for the test: the stream stalls after 2 s, the applier is stuck
    // after 6 s (and 2 s more to ask the target), well within the 12 s freeze below.
    let mut child = start_apply(&dir, &plan, &[("PGTRANSIT_WATCHDOG_SECS", "2")]);
    wait_streaming(&dir, "freeze", &mut child);

    // The target stops answering while changes arrive: the applier gives up on that session,
    // and the next one ends it before it reads the applied position.
    let w = writer(&src, 400);
    wait_for(Duration::from_secs(30), "some ticks on the target", || {
        sql(&tgt, "app", "SELECT count(*) FROM ticks").parse::<i64>().unwrap() > 50
    });
    tgt_proxy.freeze(Duration::from_secs(12), |_| {});
    w.join().unwrap();
    wait_identical(&src, &tgt, &dir);
    let log = apply_output(&dir);
    assert!(log.contains("nothing moved for 6 s"), "{log}");
    assert!(child.try_wait().unwrap().is_none(), "apply gave up:\n{log}");

    // The source stops answering: the heartbeat is not answered, the lag grows (never ready
    // for cutover meanwhile), and the stream starts again once it answers.
    wait_streaming(&dir, "freeze", &mut child);
    let w = writer(&src, 200);
    src_proxy.freeze(Duration::from_secs(8), |_| {});
    w.join().unwrap();
    wait_identical(&src, &tgt, &dir);
    let log = apply_output(&dir);
    assert!(log.contains("did not answer a heartbeat for 2 s"), "{log}");
    assert!(child.try_wait().unwrap().is_none(), "apply gave up:\n{log}");
    assert_eq!(sql(&tgt, "app", "SELECT n FROM counter"), "600");
    assert_eq!(sql(&tgt, "app", "SELECT count(*), count(DISTINCT i) FROM ticks"), "600|400");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(slots(&src), "");
}

#[test]
fn a_server_gone_longer_than_retry_for_ends_apply_with_a_clear_error_and_it_resumes_later() {
    let (src, mut tgt) = logical_pair(
        "online-giveup",
        "CREATE TABLE counter (id int PRIMARY KEY, n bigint); INSERT INTO counter VALUES (1, 0);",
    );
    let dir = TempDir::new("online-giveup");
    let plan = online_plan(&dir, "giveup", &src, &tgt, "");
    let mut child = start_apply_with(&dir, &plan, &[], &["--retry-for", "3s"]);
    wait_streaming(&dir, "giveup", &mut child);

    // The target goes away and stays away: apply waits 3 s, then stops, saying why and what
    // to do; nothing is lost meanwhile (the slot keeps the changes).
    tgt.crash().unwrap();
    sql(&src, "app", "UPDATE counter SET n = n + 1");
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("apply never gave up");
    let log = apply_output(&dir);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("lost the connection to a server"), "{log}");
    assert!(log.contains("run `pgtransit apply` to resume"), "{log}");
    assert_eq!(state(&dir, "giveup")["sync"]["streaming"], false);

    // Back: the next apply resumes where the target stood.
    tgt.start_again().unwrap();
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "giveup", &mut child);
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT n FROM counter"), "1");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &plan, "--auto-approve"]);
    assert_eq!(slots(&src), "");
}

#[test]
fn a_table_that_comes_into_scope_later_is_copied_and_then_streamed() {
    let (src, tgt) = logical_pair(
        "online-scope",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);",
    );
    let dir = TempDir::new("online-scope");
    let narrow = online_plan(
        &dir,
        "scope",
        &src,
        &tgt,
        "objects:\n  tables:\n    include: [\"public.a\"]\n",
    );
    let mut child = start_apply(&dir, &narrow, &[]);
    wait_streaming(&dir, "scope", &mut child);
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));

    // The same migration, with b in scope now.
    let wide = online_plan(&dir, "scope", &src, &tgt, "");
    let out = run(dir.path(), &["plan", &wide]);
    assert!(out.stdout.contains("ALTER PUBLICATION \"pgtransit_scope\" SET TABLE"), "{out:?}");
    let mut child = start_apply(&dir, &wide, &[]);
    wait_streaming(&dir, "scope", &mut child);
    sql(&src, "app", "INSERT INTO a VALUES (2); INSERT INTO b VALUES (2);");
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM b"), "2");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    run(dir.path(), &["abort", &wide, "--auto-approve"]);
}

#[test]
fn a_saved_online_plan_streams_resumes_and_cuts_over_exactly_as_reviewed() {
    let (src, tgt) = logical_pair(
        "online-saved",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 100) g;",
    );
    let dir = TempDir::new("online-saved");
    let yaml = online_plan(&dir, "saved", &src, &tgt, "");
    let saved = dir.path().join("saved.plan.json");
    let out = run(dir.path(), &["plan", &yaml, "--out", saved.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let saved = saved.to_str().unwrap().to_string();
    // The source keeps taking writes after the plan was saved: an online plan is not stale for
    // that (its rows stream).
    sql(&src, "app", "INSERT INTO items VALUES (101, 'after the plan')");
    let out_file = std::fs::File::create(dir.path().join("apply.out")).unwrap();
    let err_file = std::fs::File::create(dir.path().join("apply.err")).unwrap();
    let mut child = pgtransit(dir.path())
        .args(["apply", &saved])
        .stdout(out_file)
        .stderr(err_file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_streaming(&dir, "saved", &mut child);
    sql(&src, "app", "UPDATE items SET name = 'streamed' WHERE id = 1");
    wait_identical(&src, &tgt, &dir);
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));

    // With no apply running, cutover of the saved plan resumes it and cuts over.
    sql(&src, "app", "DELETE FROM items WHERE id = 2");
    let out = run(dir.path(), &["cutover", &saved, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Cutover complete"), "{out:?}");
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_eq!(slots(&src), "");
    let out = run(dir.path(), &["apply", &saved]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("already applied to completion"), "{out:?}");
}

#[test]
fn streamed_changes_to_inheritance_parents_and_composite_keys_reach_exactly_their_rows() {
    let (src, tgt) = logical_pair(
        "online-inherit",
        "CREATE TYPE pair AS (a int, b text);
         CREATE TABLE comp (k pair PRIMARY KEY, v int);
         INSERT INTO comp VALUES (ROW(1, 'x'), 1), (ROW(2, 'y,z'), 2);
         CREATE TABLE parent (id int PRIMARY KEY, v int);
         CREATE TABLE child (PRIMARY KEY (id)) INHERITS (parent);
         INSERT INTO parent SELECT g, 0 FROM generate_series(1, 10) g;
         INSERT INTO child SELECT g, 0 FROM generate_series(1, 1000) g;
         CREATE UNLOGGED TABLE scratchpad (id int PRIMARY KEY);
         INSERT INTO scratchpad SELECT generate_series(1, 5);",
    );
    let dir = TempDir::new("online-inherit");
    let plan = online_plan(&dir, "inh", &src, &tgt, "");
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "inh", &mut child);
    // An unlogged table cannot be published: it is copied with the load only.
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM scratchpad"), "5");
    sql(
        &src,
        "app",
        "UPDATE comp SET v = 10 WHERE k = ROW(1, 'x')::pair;
         DELETE FROM comp WHERE k = ROW(2, 'y,z')::pair;
         INSERT INTO comp VALUES (ROW(3, 'new'), 3);
         UPDATE ONLY parent SET v = 1 WHERE id <= 5;
         DELETE FROM ONLY parent WHERE id = 10;
         UPDATE child SET v = 2 WHERE id = 7;",
    );
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM ONLY child WHERE v = 0"), "999");
    // A TRUNCATE of the parent alone leaves the children's rows.
    sql(&src, "app", "TRUNCATE ONLY parent");
    wait_identical(&src, &tgt, &dir);
    assert_eq!(sql(&tgt, "app", "SELECT count(*) FROM ONLY child"), "1000");
    assert_eq!(sql(&tgt, "app", "SELECT v FROM comp WHERE (k).a = 1"), "10");
    // A composite's binary form names the source's type oids: the stream stays in text.
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    let values = st["values"].as_str().unwrap_or_default();
    assert!(values.starts_with("text (column public.comp.k of type public.pair"), "{st}");
    assert!(run(dir.path(), &["status", &plan]).stdout.contains("values streamed in text ("));
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    let out = run(dir.path(), &["cutover", &plan, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_same_schema(&schema_dump(&src, "app"), &schema_dump(&tgt, "app"));
    assert_eq!(slots(&src), "");
}

#[test]
fn many_changes_to_the_same_rows_in_one_batch_end_with_each_rows_last_version_in_order() {
    let (src, tgt) = logical_pair(
        "online-coalesce",
        "CREATE TABLE hot (id int PRIMARY KEY, n int, note text, big text);
         CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE);
         CREATE TABLE log (at int, what text);
         CREATE TABLE watched (id int PRIMARY KEY, hot_rows bigint);
         CREATE FUNCTION count_hot() RETURNS trigger LANGUAGE plpgsql AS
           'BEGIN NEW.hot_rows := (SELECT count(*) FROM public.hot); RETURN NEW; END';
         CREATE TRIGGER count_hot BEFORE INSERT ON watched FOR EACH ROW EXECUTE FUNCTION count_hot();
         ALTER TABLE watched ENABLE ALWAYS TRIGGER count_hot;
         -- stored out of line, uncompressed: an update that does not set it leaves it unchanged
         -- in TOAST, and the stream does not send it
         ALTER TABLE hot ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO hot VALUES (1, 0, 'a', repeat('x', 100000)), (2, 0, 'b', NULL);
         INSERT INTO people VALUES (1, 'x'), (2, 'y');",
    );
    let dir = TempDir::new("online-coalesce");
    let plan = online_plan(
        &dir,
        "coalesce",
        &src,
        &tgt,
        "sync:\n  tables_without_key: replica_identity_full\n",
    );
    let mut child = start_apply(&dir, &plan, &[]);
    wait_streaming(&dir, "coalesce", &mut child);
    // Nothing applied yet: the lag counts from where the slot's stream began, not from 0/0.
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_ne!(st["applied_lsn"], "0/0", "{st}");
    assert!(st["lag_bytes"].as_u64().is_some_and(|b| b < 1 << 20), "{st}");

    // One source transaction: one target batch.
    sql(
        &src,
        "app",
        "BEGIN;
         -- inserted, updated three times, deleted, inserted again, updated: its last version
         INSERT INTO hot VALUES (3, 0, 'new', NULL);
         UPDATE hot SET n = n + 1 WHERE id = 3;
         UPDATE hot SET n = n + 1, note = 'twice' WHERE id = 3;
         UPDATE hot SET n = n + 1 WHERE id = 3;
         DELETE FROM hot WHERE id = 3;
         INSERT INTO hot VALUES (3, 100, 'again', repeat('y', 50000));
         UPDATE hot SET n = n + 1 WHERE id = 3;
         -- a hot row, 500 times; then an update that leaves its TOASTed value unchanged
         DO $$ BEGIN FOR i IN 1..500 LOOP UPDATE hot SET n = n + 1 WHERE id = 1; END LOOP; END $$;
         UPDATE hot SET note = 'kept big' WHERE id = 1;
         -- a row that was there, deleted and inserted again; one inserted and deleted
         DELETE FROM hot WHERE id = 2;
         INSERT INTO hot VALUES (2, 7, 'replaced', NULL);
         INSERT INTO hot VALUES (4, 0, 'gone', NULL);
         -- a trigger that fires on the target too, and reads hot: it must see exactly what
         -- the source's did (hot's changes before it applied, none after)
         INSERT INTO watched VALUES (1);
         DELETE FROM hot WHERE id = 4;
         INSERT INTO watched VALUES (2);
         INSERT INTO hot VALUES (5, 0, 'after', NULL);
         -- two rows swap values of a unique column through a third: out of order, the
         -- target's unique index would refuse it
         UPDATE people SET email = 't' WHERE id = 1;
         UPDATE people SET email = 'x' WHERE id = 2;
         UPDATE people SET email = 'y' WHERE id = 1;
         -- a table without a key: inserts, then a delete that must find its row
         INSERT INTO log SELECT g, 'l' FROM generate_series(1, 10) g;
         DELETE FROM log WHERE at = 3;
         INSERT INTO log VALUES (3, 'again');
         COMMIT;",
    );
    wait_identical(&src, &tgt, &dir);
    assert_eq!(
        sql(&tgt, "app", "SELECT id, n, note, length(big) FROM hot ORDER BY id"),
        "1|500|kept big|100000\n2|7|replaced|\n3|101|again|50000\n5|0|after|"
    );
    assert_eq!(
        sql(&tgt, "app", "SELECT string_agg(hot_rows::text, ',' ORDER BY id) FROM watched"),
        "4,3"
    );
    assert_eq!(sql(&tgt, "app", "SELECT string_agg(email, ',' ORDER BY id) FROM people"), "y,x");
    // Counted as the source made them, one by one.
    wait_for(Duration::from_secs(10), "status to count every change", || {
        let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
        st["applied"]["updates"].as_u64() == Some(508)
    });
    let st = run(dir.path(), &["status", &plan, "--format", "json"]).json();
    assert_eq!(st["applied"]["inserts"], 18, "{st}");
    assert_eq!(st["applied"]["deletes"], 4, "{st}");
    // 530 changes, far fewer statements: each table's net changes go as a few (people's
    // updates, log's delete and watched's inserts go on their own).
    let statements = st["applied"]["statements"].as_u64().unwrap();
    assert!((5..=60).contains(&statements), "{statements} statements for 530 changes: {st}");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));
    let out = apply_output(&dir);
    assert!(
        out.contains("changes not coalesced by key") && out.contains("people_email_key"),
        "the table whose rows meet on another unique index is applied in order: {out}"
    );
    assert!(out.contains("trigger count_hot"), "the table whose trigger fires: {out}");
}
