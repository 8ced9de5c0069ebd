//! PostgreSQL's own regression database (see `support::regress`) migrated offline, and compared
//! with what `pg_dump | pg_restore` makes of it in the same run: the schema no further from the
//! source than the restore's, every table's rows equal by column name, sequences and large
//! objects equal.
//!
//! Opt-in locally (`PGTRANSIT_REGRESS=1`), always under `CI`; prerequisites from
//! `.ci/regression-prereqs`. `PGTRANSIT_REGRESS_KEEP=1` leaves the three clusters running and
//! prints their ports. The whole report is also written to
//! `$CARGO_TARGET_TMPDIR/regression/report.txt`, with the full diffs beside it.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::support::regress::{
    self, copy_roles, dump_diff, entry_summary, full_schema_dump, large_objects,
    regression_cluster, sequences, table_checksums_by_name, tool,
};
use crate::support::{LocalCluster, TempDir, cluster, plan_yaml, run, sql};

/// What the test found, printed at the end (and on the way, in case it dies).
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
    dir: std::path::PathBuf,
}

impl Report {
    fn new() -> Report {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("regression");
        let _ = std::fs::create_dir_all(&dir);
        Report { lines: Vec::new(), failures: Vec::new(), dir }
    }

    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("regress: {line}");
        self.lines.push(line);
        self.flush();
    }

    fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        self.say(format!("FAIL: {what}"));
        self.failures.push(what);
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        let _ = std::fs::write(&p, text);
        p.display().to_string()
    }

    fn flush(&self) {
        let mut text = self.lines.join("\n");
        text.push('\n');
        let _ = std::fs::write(self.dir.join("report.txt"), text);
    }
}

fn first_lines(text: &str, n: usize) -> String {
    let total = text.lines().count();
    let mut out: Vec<&str> = text.lines().take(n).collect();
    let more = format!("... ({} more lines)", total.saturating_sub(n));
    if total > n {
        out.push(&more);
    }
    out.join("\n")
}

/// Summarises `plan --format json`: checks by severity and code, with a few objects each.
fn summarise_checks(doc: &serde_json::Value) -> Vec<String> {
    let mut by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in doc["checks"].as_array().into_iter().flatten() {
        let key = (
            c["severity"].as_str().unwrap_or("?").to_string(),
            c["code"].as_str().unwrap_or("?").to_string(),
        );
        by.entry(key).or_default().push(format!(
            "{} — {}",
            c["object"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        ));
    }
    let mut out = Vec::new();
    for ((severity, code), objects) in by {
        out.push(format!("{severity} {code}: {} object(s)", objects.len()));
        for o in objects.iter().take(5) {
            out.push(format!("    {}", o.chars().take(300).collect::<String>()));
        }
    }
    out
}

/// Compares rows, sequences and large objects of `db` between `a` and `b`; returns failures and
/// `b`'s checksum of each table whose rows differ. A table in `accepted` differs from the source
/// in the baseline too (a materialized view refreshed by pg_restore reads the data of now, not
/// the source's stale contents): it passes when `b`'s rows equal the baseline's.
fn compare_data(
    report: &mut Report,
    label: &str,
    a: &LocalCluster,
    b: &LocalCluster,
    db: &str,
    accepted: &BTreeMap<String, String>,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut failures = Vec::new();
    let (sa, ea) = table_checksums_by_name(a, db);
    let (sb, eb) = table_checksums_by_name(b, db);
    report.say(format!(
        "{label}: rows: {} tables read on the source ({} unreadable), {} on the other side ({} unreadable)",
        sa.len(),
        ea.len(),
        sb.len(),
        eb.len()
    ));
    for (t, e) in ea.iter().take(10) {
        report.say(format!("  unreadable on the source (not compared): {t}: {e}"));
    }
    let missing: Vec<&String> = sa.keys().filter(|t| !sb.contains_key(*t)).collect();
    let mut differing = BTreeMap::new();
    let mut differ = Vec::new();
    for (t, s) in &sa {
        let Some(o) = sb.get(t) else { continue };
        if o == s {
            continue;
        }
        differing.insert(t.clone(), o.clone());
        if accepted.get(t) == Some(o) {
            report
                .say(format!("{label}: {t} differs from the source exactly as pg_restore's does"));
        } else {
            differ.push(format!("{t} (source {s}, other {o})"));
        }
    }
    let extra: Vec<&String> =
        sb.keys().filter(|t| !sa.contains_key(*t) && !ea.contains_key(*t)).collect();
    if !missing.is_empty() {
        let why: Vec<String> = missing
            .iter()
            .take(20)
            .map(|t| format!("{t}{}", eb.get(*t).map(|e| format!(" ({e})")).unwrap_or_default()))
            .collect();
        failures.push(format!(
            "{label}: {} table(s) not readable on the other side: {}",
            missing.len(),
            why.join(", ")
        ));
    }
    if !differ.is_empty() {
        failures.push(format!(
            "{label}: rows differ in {} table(s): {}",
            differ.len(),
            differ.iter().take(30).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !extra.is_empty() {
        report.say(format!("{label}: {} table(s) only on the other side: {extra:?}", extra.len()));
    }
    let (qa, qb) = (sequences(a, db), sequences(b, db));
    let seq_diff: Vec<String> = qa
        .iter()
        .filter(|(n, v)| qb.get(*n) != Some(v))
        .map(|(n, v)| format!("{n} (source {v:?}, other {:?})", qb.get(n)))
        .collect();
    report.say(format!("{label}: {} sequences, {} differ", qa.len(), seq_diff.len()));
    if !seq_diff.is_empty() {
        failures.push(format!("{label}: sequences differ: {}", seq_diff.join("; ")));
    }
    let (la, lb) = (large_objects(a, db), large_objects(b, db));
    report.say(format!(
        "{label}: {} large objects on the source, {} on the other side",
        la.len(),
        lb.len()
    ));
    if la != lb {
        failures.push(format!("{label}: large objects differ: source {la:?}, other {lb:?}"));
    }
    (failures, differing)
}

#[test]
fn regression_database_migrates_offline_no_worse_than_pg_dump_and_pg_restore() {
    if let Some(why) = regress::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let all = Instant::now();
    let mut report = Report::new();
    let db = "regression";

    // The source: the suite's own leftovers (cached data directory after the first run).
    let (src, suite, fixture) = regression_cluster("regress-src");
    report.say(format!(
        "source: suite {} ({}), {} in {:.1} s; suite tests that failed while building it: {}",
        suite.name,
        suite.dir.display(),
        if fixture.cached { "copied from the cache" } else { "built by pg_regress" },
        fixture.seconds,
        if fixture.failed_tests.is_empty() {
            "none".into()
        } else {
            fixture.failed_tests.join(", ")
        }
    ));
    report.say(format!(
        "source: {} tables, {} relations in all, {} large objects",
        sql(&src, db, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"),
        sql(&src, db, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"),
        sql(&src, db, "SELECT count(*) FROM pg_largeobject_metadata"),
    ));

    // A debugging knob: SQL run on the source first (e.g. to break a conflict and see what
    // apply does next). Everything below compares against the changed source.
    if let Ok(prepare) = std::env::var(regress::SOURCE_SQL_ENV)
        && !prepare.trim().is_empty()
    {
        report.say(format!("{}: running on the source first: {prepare}", regress::SOURCE_SQL_ENV));
        sql(&src, db, &prepare);
        report.fail(format!(
            "the source was changed by {} (a debugging run)",
            regress::SOURCE_SQL_ENV
        ));
    }

    // The baseline: pg_dump -Fc | pg_restore into a third cluster.
    let t = Instant::now();
    let base = cluster("regress-base", &[]);
    let role_errors = copy_roles(&src, &base);
    if !role_errors.is_empty() {
        report.say(format!("baseline: creating roles: {role_errors}"));
    }
    base.create_database(db).unwrap();
    let scratch = TempDir::new("regress");
    let archive = scratch.path().join("regression.dump");
    let (ok, err) =
        tool(&src, "pg_dump", &["-Fc", "--no-sync", "-d", db, "-f", archive.to_str().unwrap()]);
    assert!(ok, "pg_dump -Fc of the source failed: {err}");
    let (ok, err) = tool(&base, "pg_restore", &["-d", db, archive.to_str().unwrap()]);
    let restore_errors = err.lines().filter(|l| l.contains("error")).count();
    report.say(format!(
        "baseline: pg_dump -Fc | pg_restore in {:.1} s, restore {} ({restore_errors} error lines){}",
        t.elapsed().as_secs_f64(),
        if ok { "succeeded" } else { "reported errors" },
        if err.is_empty() { String::new() } else { format!(":\n{}", first_lines(&err, 30)) }
    ));

    // The migration: an empty target database, an offline plan, plan then apply.
    let tgt = cluster("regress-tgt", &[]);
    let role_errors = copy_roles(&src, &tgt);
    if !role_errors.is_empty() {
        report.say(format!("target: creating roles: {role_errors}"));
    }
    tgt.create_database(db).unwrap();
    if regress::keep() {
        report.say(format!(
            "keeping the clusters ({}=1): source port {}, target port {}, baseline port {} \
             (psql -h 127.0.0.1 -U postgres -d regression -p PORT)",
            regress::KEEP_ENV,
            src.port(),
            tgt.port(),
            base.port()
        ));
    }
    let dir = TempDir::new("regress-plan");
    let yaml = dir.write(
        "regression.yaml",
        &plan_yaml("regression", &src.url(db), &tgt.url(db), "mode: offline\n"),
    );
    let saved = dir.path().join("regression.plan.json");
    let t = Instant::now();
    let plan = run(
        dir.path(),
        &["plan", yaml.to_str().unwrap(), "--format", "json", "--out", saved.to_str().unwrap()],
    );
    report.say(format!("pgtransit plan: exit {} in {:.1} s", plan.code, t.elapsed().as_secs_f64()));
    let planned = plan.code == 0 && saved.exists();
    match serde_json::from_str::<serde_json::Value>(&plan.stdout) {
        Ok(doc) => {
            report.say(format!("  steps by action: {}", doc["plan_summary"]));
            for line in summarise_checks(&doc) {
                report.say(format!("  {line}"));
            }
            for step in doc["steps"].as_array().into_iter().flatten() {
                if step["action"] == "conflict" {
                    report.say(format!(
                        "  conflict {}: {}",
                        step["object"].as_str().unwrap_or("?"),
                        step["note"].as_str().unwrap_or("")
                    ));
                }
            }
            let path = report.file("plan.json", &plan.stdout);
            report.say(format!("  (the whole plan: {path})"));
        }
        Err(_) => report.say(format!("  plan output:\n{}", first_lines(&format!("{plan:?}"), 80))),
    }
    if !planned {
        report.fail(format!(
            "pgtransit plan refused the regression database (exit {}); stderr:\n{}",
            plan.code,
            first_lines(&plan.stderr, 60)
        ));
    } else {
        let t = Instant::now();
        let apply = run(dir.path(), &["apply", saved.to_str().unwrap(), "--auto-approve"]);
        report.say(format!(
            "pgtransit apply: exit {} in {:.1} s",
            apply.code,
            t.elapsed().as_secs_f64()
        ));
        let path = report.file("apply.txt", &format!("{apply:?}"));
        if apply.code != 0 {
            report.fail(format!(
                "pgtransit apply failed (exit {}) (whole output: {path}):\n--- stdout (last lines)\n{}\n--- stderr\n{}",
                apply.code,
                apply.stdout.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
                first_lines(&apply.stderr, 60)
            ));
        }
    }

    // (a) Schema: pg_dump --schema-only, the target against the baseline.
    let (src_dump, tgt_dump, base_dump) =
        (full_schema_dump(&src, db), full_schema_dump(&tgt, db), full_schema_dump(&base, db));
    let (base_n, base_diff) = dump_diff(&src_dump, &base_dump, "source", "pg_dump|pg_restore");
    let (tgt_n, tgt_diff) = dump_diff(&src_dump, &tgt_dump, "source", "pgtransit");
    report.file("schema-source.sql", &src_dump);
    report.file("schema-pgtransit.sql", &tgt_dump);
    report.file("schema-baseline.sql", &base_dump);
    let tgt_path = report.file("schema-pgtransit.diff", &tgt_diff);
    report.file("schema-baseline.diff", &base_diff);
    report.say(format!(
        "schema: {} lines in the source's dump; pg_dump|pg_restore differs by {base_n} lines, \
         pgtransit by {tgt_n} lines",
        src_dump.lines().count()
    ));
    if base_n > 0 {
        report.say(format!("baseline diff:\n{}", first_lines(&base_diff, 60)));
    }
    let (by_kind, examples) = entry_summary(&src_dump, &tgt_dump);
    if !by_kind.is_empty() {
        report.say(
            "pgtransit's schema by object type (missing on target / only on target / different):",
        );
        for (kind, [m, o, d]) in &by_kind {
            report.say(format!("  {kind}: {m} / {o} / {d}"));
        }
        report.file("schema-pgtransit-entries.txt", &examples.join("\n"));
    }
    if tgt_n > base_n {
        report.fail(format!(
            "schema: pgtransit leaves {tgt_n} differing lines, pg_dump|pg_restore {base_n} \
             (whole diff: {tgt_path}); first 200 lines:\n{}",
            first_lines(&tgt_diff, 200)
        ));
    }

    // (b), (c) Data. The baseline must agree with the source, or the comparison is unsound.
    let (_, base_rows) = compare_data(&mut report, "baseline", &src, &base, db, &BTreeMap::new());
    if !base_rows.is_empty() {
        report.say(format!(
            "baseline: {} table(s) whose rows pg_dump|pg_restore changes (accepted for pgtransit \
             when its rows equal the restore's): {:?}",
            base_rows.len(),
            base_rows.keys().collect::<Vec<_>>()
        ));
    }
    let (failures, _) = compare_data(&mut report, "pgtransit", &src, &tgt, db, &base_rows);
    for f in failures {
        report.fail(f);
    }

    report.say(format!("total {:.1} s", all.elapsed().as_secs_f64()));
    if regress::keep() {
        let stop: Vec<String> = [&src, &tgt, &base].iter().map(|c| c.stop_command()).collect();
        report.say(format!("left running; stop them with:\n  {}", stop.join("\n  ")));
        std::mem::forget(src);
        std::mem::forget(tgt);
        std::mem::forget(base);
    }
    assert!(
        report.failures.is_empty(),
        "the regression database did not migrate faithfully ({} problem(s), report in {}):\n\n{}",
        report.failures.len(),
        report.dir.join("report.txt").display(),
        report.failures.join("\n\n")
    );
}
