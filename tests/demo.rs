//! `pgtransit demo` end to end: it must work on a fresh machine, as the README promises.

use crate::support::{TempDir, run};

#[test]
fn demo_starts_two_servers_writes_a_plan_and_passes_preflight() {
    let dir = TempDir::new("demo");
    let work = dir.path().join("work");
    let out = run(dir.path(), &["demo", "--dir", work.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    // The plan it wrote is shown, and is a valid migration plan.
    assert!(out.stdout.contains("name: shop"), "{out:?}");
    let plan = work.join("plans/shop.yaml");
    pgtransit::migration_plan::load(&plan, &|_| None).unwrap();
    // Preflight ran against the sample and found what the sample has.
    assert!(out.stdout.contains("Preflight passed: 0 errors"), "{out:?}");
    assert!(out.stdout.contains("identity_columns"), "{out:?}");
    assert!(out.stdout.contains("7 tables in 1 schemas"), "{out:?}");
    // A text search configuration, whose DDL is pg_dump's, and an inheriting archive table.
    assert!(out.stdout.contains("create text search configuration public.shop_search"), "{out:?}");
    assert!(out.stdout.contains("TRUNCATE ONLY \"public\".\"order_notes\""), "{out:?}");
    // The roles that use the shop, created as on the source (the verifier read as it runs),
    // their memberships, and the database's settings last.
    assert!(out.stdout.contains("PASSWORD :'source_verifier'"), "{out:?}");
    assert!(out.stdout.contains("GRANT \"shop_writers\" TO \"shop_app\";"), "{out:?}");
    assert!(out.stdout.contains("ALTER DATABASE \"shop\" SET \"work_mem\" TO '16MB';"), "{out:?}");
    assert!(!out.stdout.contains("SCRAM-SHA-256$"), "a verifier was printed: {out:?}");
    assert!(out.stdout.contains("are the same on both servers"), "{out:?}");
    // It copied (the larger table included), streamed a writer's changes, showed the lag and
    // the status, and ended with identical rows and no slot left on the source.
    assert!(out.stdout.contains("public.order_events"), "{out:?}");
    assert!(out.stdout.contains("status lag"), "{out:?}");
    assert!(out.stdout.contains("reached the target in"), "{out:?}");
    assert!(out.stdout.contains("rows identical on both sides in 7 of 7 tables"), "{out:?}");
    assert!(out.stdout.contains("Migration shop - streaming"), "{out:?}");
    // The shop's types all have a binary form both servers read the same.
    assert!(out.stdout.contains("values streamed in binary"), "{out:?}");
    assert!(out.stdout.contains("Cutover complete: the write gap was"), "{out:?}");
    assert!(out.stdout.contains("Verified: 7 tables"), "{out:?}");
    assert!(out.stdout.contains("cut over: the source is read-only"), "{out:?}");
    // Without a terminal, load progress goes to the log (stderr) as lines, not bars.
    assert!(out.stderr.contains("copying"), "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "no colour codes in piped logs: {out:?}");
    // And cleaned up after itself: no server of the demo is left running.
    assert!(out.stdout.contains("stopping and removing both servers"), "{out:?}");
}

#[test]
fn demo_of_several_databases_names_the_missing_ones_then_migrates_and_verifies_each() {
    let dir = TempDir::new("demo-server");
    let work = dir.path().join("work");
    let out = run(dir.path(), &["demo", "--databases", "3", "--dir", work.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    // First the target lacks every database: preflight names each, with its statement.
    for db in ["shop", "shop_2", "shop_3"] {
        assert!(
            out.stdout.contains(&format!("target_database_missing  database {db}\n")),
            "{out:?}"
        );
        assert!(out.stdout.contains(&format!("━━ database {db} (")), "{out:?}");
        assert!(out.stdout.contains(&format!("Verify server-{db}")), "{out:?}");
    }
    // scratch stays behind; each role is created once; every database verifies.
    assert!(out.stdout.contains("not in it: postgres, scratch"), "{out:?}");
    assert_eq!(out.stdout.matches("+ create role shop_app").count(), 1, "{out:?}");
    assert_eq!(out.stdout.matches("Identical: source and target are identical.").count(), 3);
    assert!(out.stdout.contains("done 3 databases: shop, shop_2, shop_3"), "{out:?}");
    assert!(out.stdout.contains("are the same on both servers"), "{out:?}");
}

#[test]
fn demo_of_several_databases_online_streams_them_under_writes_and_cuts_over_once() {
    let dir = TempDir::new("demo-server-online");
    let work = dir.path().join("work");
    let args = ["demo", "--databases", "2", "--online", "--dir", work.to_str().unwrap()];
    let out = run(dir.path(), &args);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("transactions written; pgtransit cutover"), "{out:?}");
    assert!(out.stdout.contains("2 databases cut over together; the write gap was"), "{out:?}");
    assert_eq!(out.stdout.matches("Identical: source and target are identical.").count(), 2);
    assert!(out.stdout.contains("are the same on both servers"), "{out:?}");
}

#[test]
fn demo_with_rollback_cuts_over_writes_to_the_target_and_rolls_back() {
    let dir = TempDir::new("demo-rollback");
    let work = dir.path().join("work");
    let out = run(dir.path(), &["demo", "--rollback", "--dir", work.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("done the rollback window"), "{out:?}");
    assert!(out.stdout.contains("transactions written to the target"), "{out:?}");
    assert!(out.stdout.contains("rolled back: the old source is the primary again"), "{out:?}");
}
