//! The rollback window (`cutover.rollback_window`): after the cutover the old source follows
//! the new primary, `pgtransit rollback` goes back, `pgtransit finish` closes the window.

use std::time::Duration;

use crate::support::*;

/// The window's state (its migration `<name>-rb`, whose plan lives in the migration's state
/// directory).
fn window_state(dir: &TempDir, name: &str) -> serde_json::Value {
    state(dir, &format!("{name}/.pgtransit/{name}-rb"))
}

const SHOP: &str = "
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL, note text);
CREATE TABLE events (at timestamptz NOT NULL DEFAULT now(), kind text);
ALTER TABLE events REPLICA IDENTITY FULL;
INSERT INTO orders (customer, note) SELECT g % 50, 'order ' || g FROM generate_series(1, 2000) g;
INSERT INTO events (kind) SELECT 'k' || g FROM generate_series(1, 100) g;
";

/// Cut over with the window, the applications writing to the target (inserts, updates,
/// deletes, the sequence in use, a table without a key), then `rollback`: the old source has
/// every row and sequence value the target had, takes writes again, and the new primary is
/// fenced; `finish` leaves nothing on either server.
#[test]
fn a_rollback_window_keeps_the_old_source_current_and_rollback_goes_back() {
    let (src, tgt, dir, f) =
        window_pair("window", "win", "mode: online\ncutover:\n  rollback_window: true\n");
    let f = f.as_str();

    let out = run(dir.path(), &["plan", f]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("pg_create_logical_replication_slot('pgtransit_win_rb"), "{out:?}");

    let mut child = start_apply(&dir, f, &[]);
    wait_for(Duration::from_secs(60), "the stream", || {
        state(&dir, "win")["sync"]["streaming"] == true
    });
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    // The apply goes on into the window's stream.
    let streaming = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        window_state(&dir, "win")["sync"]["streaming"] == true
    });
    assert!(streaming, "the window's stream did not start:\n{}", apply_output(&dir));
    let window_plan =
        std::fs::read_to_string(dir.path().join(".pgtransit/win/rollback.yaml")).unwrap();
    assert!(window_plan.contains("rollback_of: win"), "{window_plan}");

    // The applications on the target.
    sql(
        &tgt,
        "app",
        "INSERT INTO orders (customer, note) SELECT 7, 'after ' || g FROM generate_series(1, 300) g;
         UPDATE orders SET note = note || ' (changed)' WHERE id % 10 = 0;
         DELETE FROM orders WHERE id % 17 = 0;
         INSERT INTO events (kind) VALUES ('after');
         DELETE FROM events WHERE kind = 'k1';
         UPDATE events SET kind = 'K2' WHERE kind = 'k2';",
    );
    wait_identical(&tgt, &src, &dir);

    let out = run(dir.path(), &["rollback", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", apply_output(&dir));
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    assert_same_schema(&schema_dump(&tgt, "app"), &schema_dump(&src, "app"));
    let seq = "SELECT last_value FROM orders_id_seq";
    let (old, new): (i64, i64) =
        (sql(&src, "app", seq).parse().unwrap(), sql(&tgt, "app", seq).parse().unwrap());
    assert!(old >= new, "the old source's sequence ({old}) is behind the target's ({new})");
    // The old source takes writes again; the new primary is fenced.
    sql(&src, "app", "INSERT INTO orders (customer) VALUES (1)");
    let read_only = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d \
                     ON d.oid = s.setdatabase WHERE d.datname = 'app' \
                     AND array_to_string(s.setconfig, ',') LIKE '%default_transaction_read_only=on%'";
    assert_eq!(sql(&src, "postgres", read_only), "0");
    assert_eq!(sql(&tgt, "postgres", read_only), "1");
    for c in [&src, &tgt] {
        assert_eq!(leftovers(c, "app"), "0", "left on {}", c.port());
    }
}

/// `status` shows the window's stream; `finish` closes the window: its slot and publication
/// leave the target, its origin the old source, which stays read-only; `rollback` is then
/// refused, naming why.
#[test]
fn finish_closes_the_window_and_leaves_the_old_source_read_only() {
    let (src, tgt, dir, f) = window_pair(
        "window-finish",
        "fin",
        "mode: online\ncutover:\n  mode: auto\n  rollback_window: true\n",
    );
    let f = f.as_str();
    let mut child = start_apply(&dir, f, &[]);
    let streaming = poll(Duration::from_secs(90), Duration::from_millis(100), || {
        window_state(&dir, "fin")["sync"]["streaming"] == true
    });
    assert!(streaming, "the window's stream did not start:\n{}", apply_output(&dir));
    sql(&tgt, "app", "INSERT INTO orders (customer) VALUES (42)");
    wait_identical(&tgt, &src, &dir);
    // A transaction applied on the target under the forward migration's origin (pgtransit's
    // own, as its stream applied them) is not sent back: no loop, whatever streams when.
    let origin = "pgtransit_fin";
    sql(
        &tgt,
        "app",
        &format!(
            "SELECT pg_replication_origin_create('{origin}');
             SELECT pg_replication_origin_session_setup('{origin}');
             INSERT INTO orders (customer, note) VALUES (77, 'from pgtransit');
             SELECT pg_replication_origin_session_reset();
             SELECT pg_replication_origin_drop('{origin}');
             INSERT INTO orders (customer, note) VALUES (78, 'from the applications');"
        ),
    );
    let after = "SELECT count(*) FROM orders WHERE customer = 78";
    wait_for(Duration::from_secs(30), "the applications' row on the old source", || {
        sql(&src, "app", after) == "1"
    });
    let looped = "SELECT count(*) FROM orders WHERE customer = 77";
    assert_eq!(sql(&src, "app", looped), "0", "pgtransit's own transaction came back");
    assert_eq!(sql(&tgt, "app", looped), "1");
    sql(&tgt, "app", "DELETE FROM orders WHERE customer = 77");
    wait_identical(&tgt, &src, &dir);
    let out = run(dir.path(), &["status", f]);
    assert!(out.stdout.contains("rollback window"), "{out:?}");
    assert!(out.stdout.contains("Migration fin-rb"), "{out:?}");
    assert_eq!(stop(&mut child), 0, "{}", apply_output(&dir));

    let out = run(dir.path(), &["finish", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("the rollback window is closed"), "{out:?}");
    assert_eq!(leftovers(&tgt, "app"), "0");
    assert_eq!(leftovers(&src, "app"), "0");
    let read_only = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d \
                     ON d.oid = s.setdatabase WHERE d.datname = 'app' \
                     AND array_to_string(s.setconfig, ',') LIKE '%default_transaction_read_only=on%'";
    assert_eq!(sql(&src, "postgres", read_only), "1", "the old source stays read-only");
    let out = run(dir.path(), &["rollback", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("has no open rollback window"), "{out:?}");
}

/// Requested, the window's needs on the target are checked before any cutover: logical WAL.
#[test]
fn a_rollback_window_needs_logical_wal_on_the_target_and_plan_says_so() {
    let (src, tgt) = logical_pair("window-preflight", "CREATE TABLE t (id int PRIMARY KEY);");
    let dir = TempDir::new("window-preflight");
    let extra = "mode: online\ncutover:\n  rollback_window: true\n";
    let f = dir.write("pre.yaml", &plan_yaml("pre", &src.url("app"), &tgt.url("app"), extra));
    let out = run(dir.path(), &["plan", f.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let found = checks(&doc, "rollback_window_wal_level");
    assert_eq!(found.len(), 1, "{}", doc["checks"]);
    assert!(found[0]["fix"].as_str().unwrap().starts_with("ALTER SYSTEM SET wal_level = logical"));
}

/// Killed (as suddenly as kill -9) right after the window opened, before verification: the
/// next apply lifts the fence and closes the window (its slot gone from the target), streams
/// again, and the next cutover opens it at its own cutover point. Then SIGKILL while the window
/// streams: `apply` resumes it with nothing lost or doubled. Then killed in the rollback, once
/// verified and before the old source's fence is lifted: `finish` refuses, `rollback` again
/// finishes it.
#[test]
fn a_window_survives_kills_before_verification_and_while_it_streams() {
    let (src, tgt, dir, f) =
        window_pair("window-kill", "wk", "mode: online\ncutover:\n  rollback_window: true\n");
    let f = f.as_str();
    let window_slot =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtransit_wk_rb%'";

    let mut child =
        start_apply(&dir, f, &[("PGTRANSIT_FAILPOINT", "after:cutover:rollback_window")]);
    wait_for(Duration::from_secs(60), "the stream", || {
        state(&dir, "wk")["sync"]["streaming"] == true
    });
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_ne!(out.code, 0, "{out:?}");
    let _ = child.wait();
    assert_eq!(sql(&tgt, "app", window_slot), "1", "the window was open when it was killed");

    // The next apply lifts the fence and closes the window; the cutover after opens it anew.
    let mut child = start_apply(&dir, f, &[]);
    wait_streaming(&dir, "wk", &mut child);
    assert_eq!(sql(&tgt, "app", window_slot), "0", "closed with the fence lifted");
    sql(&src, "app", "INSERT INTO orders (customer) VALUES (1)");
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    assert!(out.stdout.contains("Rollback window open:"), "{out:?}");
    let streaming = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        window_state(&dir, "wk")["sync"]["streaming"] == true
    });
    assert!(streaming, "the window's stream did not start:\n{}", apply_output(&dir));

    // SIGKILL while the window streams, writes meanwhile, and `apply` resumes the window.
    sql(&tgt, "app", "INSERT INTO orders (customer) SELECT 9 FROM generate_series(1, 100)");
    let _ = child.kill();
    let _ = child.wait();
    sql(
        &tgt,
        "app",
        "UPDATE orders SET note = 'killed' WHERE customer = 9; DELETE FROM orders WHERE id < 100",
    );
    let lift = [("PGTRANSIT_FAILPOINT", "before:cutover:lift_target_fence")];
    let mut child = start_apply(&dir, f, &lift);
    wait_identical(&tgt, &src, &dir);

    // The rollback killed once verified, before the old source's fence is lifted: both are
    // fenced; `rollback` again finishes it.
    let out = run(dir.path(), &["rollback", f, "--auto-approve"]);
    assert_ne!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    let _ = child.wait();
    let fenced = "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d \
                  ON d.oid = s.setdatabase WHERE d.datname = 'app' \
                  AND array_to_string(s.setconfig, ',') LIKE '%default_transaction_read_only=on%'";
    assert_eq!(
        (sql(&src, "postgres", fenced), sql(&tgt, "postgres", fenced)),
        ("1".into(), "1".into())
    );
    let out = run(dir.path(), &["finish", f, "--auto-approve"]);
    assert_eq!(out.code, 1, "a verified rollback is not undone by finish: {out:?}");
    let out = run(dir.path(), &["rollback", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(sql(&src, "postgres", fenced), "0", "the old source takes writes again");
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"));
    sql(&src, "app", "INSERT INTO orders (customer) VALUES (2)");
    assert_eq!((leftovers(&src, "app"), leftovers(&tgt, "app")), ("0".into(), "0".into()));
}

/// Writes to `app` of `c` until `stop` is set (errors, as under a fence, ignored).
fn keep_writing(
    c: &LocalCluster,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    keep_writing_with(c, "app", Duration::from_millis(15), stop, |i| {
        format!(
            "INSERT INTO orders (customer, note) VALUES ({}, 'w{i}');
             UPDATE orders SET note = note || '+' WHERE id = {};
             DELETE FROM orders WHERE id = {};
             INSERT INTO events (kind) VALUES ('w{i}');",
            i % 50,
            i % 900 + 1,
            i % 900 + 1000
        )
    })
}

/// The chaos test's judgement for the rollback window: the apply killed (SIGKILL) at seeded
/// moments while the window streams the applications' writes on the target back, then once
/// more a seeded 0-300 ms after the rollback's fence went up; the next `rollback` finishes
/// (or found it done), and the old source holds exactly the target's rows, takes writes, and
/// nothing is left. `PGTRANSIT_CHAOS_SEED` (or `random`) as for the other chaos tests.
#[test]
fn chaos_rollback_window_killed_at_seeded_moments_goes_back_with_nothing_lost() {
    let seed = crate::chaos::seed();
    let mut rng = crate::chaos::Rng(seed);
    eprintln!(
        "chaos (rollback window): seed {seed} (replay: PGTRANSIT_CHAOS_SEED={seed} cargo test \
         --test integration chaos_rollback -- --nocapture)"
    );
    let (src, tgt, dir, f) =
        window_pair("window-chaos", "wc", "mode: online\ncutover:\n  rollback_window: true\n");
    let f = f.as_str();
    let mut child = start_apply(&dir, f, &[]);
    wait_streaming(&dir, "wc", &mut child);
    let out = run(dir.path(), &["cutover", f, "--auto-approve"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", apply_output(&dir));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = keep_writing(&tgt, stop.clone());
    for k in 1..=3 {
        let after = rng.ms(200, 3_000);
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("chaos (rollback window): kill {k} after {after:?}");
        child = start_apply(&dir, f, &[]);
    }
    // (This apply's stream, not the killed one's state: `status` names the apply running it.)
    let window_plan = dir.path().join(".pgtransit/wc/rollback.yaml");
    let me = format!("pid {} ", child.id());
    let streaming = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        let st = run(dir.path(), &["status", window_plan.to_str().unwrap(), "--format", "json"]);
        let st = st.json();
        st["phase"] == "streaming" && st["running"].as_str().is_some_and(|r| r.contains(&me))
    });
    assert!(streaming, "seed {seed}: the window does not stream:\n{}", apply_output(&dir));
    let mut rollback = pgtransit(dir.path())
        .args(["rollback", f, "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fencing = poll(Duration::from_secs(30), Duration::from_millis(5), || {
        window_state(&dir, "wc")["cutover"].is_object()
    });
    assert!(fencing, "seed {seed}: the rollback did not begin:\n{}", apply_output(&dir));
    let after = rng.ms(0, 300);
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
    let _ = rollback.wait();
    let status = window_state(&dir, "wc")["cutover"]["status"].clone();
    eprintln!("chaos (rollback window): killed {after:?} after the rollback's fence: {status}");
    if status != "done" {
        let out = run(dir.path(), &["rollback", f, "--auto-approve"]);
        assert_eq!(out.code, 0, "seed {seed}: {out:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 5, "the writer wrote {written}");
    assert_eq!(window_state(&dir, "wc")["cutover"]["status"], "done", "seed {seed}");
    assert_eq!(table_checksums(&src, "app"), table_checksums(&tgt, "app"), "seed {seed}");
    sql(&src, "app", "INSERT INTO orders (customer) VALUES (3)");
    assert_eq!((leftovers(&src, "app"), leftovers(&tgt, "app")), ("0".into(), "0".into()));
}

/// A source with the shop and an empty target, both with logical WAL, and an online migration
/// plan `name` (`extra`: its `mode:` and `cutover:` lines) written to `<name>.yaml`.
fn window_pair(
    label: &str,
    name: &str,
    extra: &str,
) -> (LocalCluster, LocalCluster, TempDir, String) {
    let src = logical_source(&format!("{label}-src"));
    let tgt = logical_source(&format!("{label}-tgt"));
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(&src, "app", SHOP);
    let dir = TempDir::new(label);
    let text = plan_yaml(name, &src.url("app"), &tgt.url("app"), extra);
    let f = dir.write(&format!("{name}.yaml"), &text).to_str().unwrap().to_string();
    (src, tgt, dir, f)
}
