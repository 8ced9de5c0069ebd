//! PostgreSQL's own regression database as a fixture: the database `regression` that the core
//! regression suite (`src/test/regress`, parallel schedule) leaves behind, as pg_upgrade's test
//! dumps and restores it. Every kind of object, 500+ tables, dropped columns, inheritance
//! children whose column order differs from their parents', large objects.
//!
//! Prerequisites (`.ci/regression-prereqs` installs them, as root): the server's source package
//! unpacked under the cache directory with `regress.so` (and contrib/spi's `autoinc.so` and
//! `refint.so`) built beside `regress.c`, and `pg_regress` from `postgresql-server-dev-<major>`.
//!
//! Running the suite takes ~35 s on 2 cores, so its result is cached: the stopped cluster's data
//! directory, copied into `$PGTRANSIT_REGRESS_CACHE/clusters/<key>/data` (key: the suite's
//! source version and the server's `server_version_num`). Later runs copy it into a fresh
//! cluster (a second or two). A data directory rather than a `pg_dump` archive, because a dump
//! and restore would normalise exactly what a migration must survive: dropped columns and
//! inheritance children's column order.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{LocalCluster, TempDir, cluster, sql};

/// Where the sources, the built libraries and the cached clusters live.
pub const CACHE_ENV: &str = "PGTRANSIT_REGRESS_CACHE";
/// Default of [`CACHE_ENV`]: outside any home directory, so the server's user can read it.
pub const DEFAULT_CACHE: &str = "/var/cache/pgtransit-regress";
/// `1` runs the regression test outside CI.
pub const ENABLE_ENV: &str = "PGTRANSIT_REGRESS";
/// `1` leaves the test's clusters running and prints how to reach and stop them.
pub const KEEP_ENV: &str = "PGTRANSIT_REGRESS_KEEP";
/// A `src/test/regress` directory to use instead of the one under the cache.
pub const SRC_ENV: &str = "PGTRANSIT_REGRESS_SRC";
/// SQL run on the source's `regression` database before anything else, to look past a problem
/// while debugging (the test then fails anyway, saying so).
pub const SOURCE_SQL_ENV: &str = "PGTRANSIT_REGRESS_SOURCE_SQL";
/// Bump when the way the cached cluster is built changes.
const FIXTURE_VERSION: &str = "v1";

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Why the regression test does not run here, or `None` when it does (under `CI`, or with
/// `PGTRANSIT_REGRESS=1`).
pub fn skip_reason() -> Option<String> {
    if env_set("CI") || env_set(ENABLE_ENV) {
        None
    } else {
        Some(format!(
            "the regression-database test is opt-in locally (~2 min): set {ENABLE_ENV}=1 (CI runs \
             it); prerequisites: .ci/regression-prereqs as root"
        ))
    }
}

/// Whether to leave the clusters running at the end.
pub fn keep() -> bool {
    env_set(KEEP_ENV)
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The regression suite matching a server installation.
#[derive(Debug, Clone)]
pub struct Suite {
    /// `src/test/regress` of the source tree: schedule, sql/, expected/, data/, the `.so`s.
    pub dir: PathBuf,
    /// `pg_regress` of the installation (postgresql-server-dev-<major>).
    pub pg_regress: PathBuf,
    /// The source tree's name, e.g. `postgresql-15-15.18`.
    pub name: String,
}

fn command_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Finds the suite for the server whose tools `c.bin(..)` names: the source tree unpacked by
/// `.ci/regression-prereqs` for the same version (another minor of the same major, with a
/// warning, when the exact one is not there), or `$PGTRANSIT_REGRESS_SRC`.
pub fn find_suite(c: &LocalCluster) -> Result<Suite, String> {
    let prereqs = "run .ci/regression-prereqs as root (deb-src entries, apt-get source, \
                   postgresql-server-dev, gcc)";
    let version = command_output(Command::new(c.bin("postgres")).arg("--version"))?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let number = version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|ch| ch.is_ascii_digit()))
        .ok_or_else(|| format!("cannot read a version from `{version}`"))?
        .to_string();
    let major = number.split('.').next().unwrap().to_string();
    let libdir = command_output(Command::new(c.bin("pg_config")).arg("--pkglibdir"))?;
    let pg_regress = Path::new(&libdir).join("pgxs/src/test/regress/pg_regress");
    if !pg_regress.exists() {
        return Err(format!(
            "{} is missing (package postgresql-server-dev-{major}): {prereqs}",
            pg_regress.display()
        ));
    }
    let (dir, name) = match std::env::var_os(SRC_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => (PathBuf::from(dir), "custom".to_string()),
        None => {
            let src = cache_dir().join("src");
            let exact = format!("postgresql-{major}-{number}");
            let mut found: Vec<String> = fs::read_dir(&src)
                .map_err(|e| {
                    format!("no regression suite under {}: {e}: {prereqs}", src.display())
                })?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("postgresql-{major}-")))
                .collect();
            found.sort();
            let name = if found.contains(&exact) {
                exact
            } else {
                let other = found.pop().ok_or_else(|| {
                    format!(
                        "no postgresql-{major}-* source tree under {}: {prereqs}",
                        src.display()
                    )
                })?;
                eprintln!(
                    "regress: WARNING: the server is {number} but the suite is {other} \
                     (the exact source version is not in the package index)"
                );
                other
            };
            (src.join(&name).join("src/test/regress"), name)
        }
    };
    for needed in ["parallel_schedule", "regress.so", "autoinc.so", "refint.so"] {
        if !dir.join(needed).exists() {
            return Err(format!("{} is missing: {prereqs}", dir.join(needed).display()));
        }
    }
    Ok(Suite { dir, pg_regress, name })
}

/// What building (or finding) the fixture did.
#[derive(Debug, Default)]
pub struct Fixture {
    /// Whether the cached cluster was used (false: the suite ran now).
    pub cached: bool,
    /// The suite's tests that failed when the cluster was built (pg_regress's summary).
    pub failed_tests: Vec<String>,
    pub seconds: f64,
}

/// A started cluster holding the `regression` database, built by the regression suite or
/// copied from the cache. Panics when the suite cannot run or leaves no database behind (a
/// failed test of the suite is only reported: some fail against an existing installation).
pub fn regression_cluster(name: &str) -> (LocalCluster, Suite, Fixture) {
    let started = Instant::now();
    let mut c = cluster(name, &[]);
    let suite = find_suite(&c).unwrap_or_else(|e| panic!("regression suite unavailable: {e}"));
    let server = sql(&c, "postgres", "SHOW server_version_num");
    let key = format!("regression-{FIXTURE_VERSION}-{}-{server}", suite.name);
    let clusters = cache_dir().join("clusters");
    fs::create_dir_all(&clusters)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", clusters.display()));
    let entry = clusters.join(&key);
    let lock_path = clusters.join(format!("{key}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // One builder at a time; the others wait and then copy its result.
    lock.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    let mut fixture = Fixture::default();
    if entry.join("data/PG_VERSION").exists() {
        fixture.cached = true;
        fixture.failed_tests = fs::read_to_string(entry.join("failed-tests"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        c.stop().unwrap_or_else(|e| panic!("{e}"));
        fs::remove_dir_all(c.data_dir()).unwrap();
        copy_tree(&entry.join("data"), c.data_dir());
        c.start_again()
            .unwrap_or_else(|e| panic!("cannot start the cached regression cluster: {e}"));
    } else {
        fixture.failed_tests = run_suite(&c, &suite);
        c.stop().unwrap_or_else(|e| panic!("{e}"));
        let tmp = clusters.join(format!("{key}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        copy_tree(c.data_dir(), &tmp.join("data"));
        fs::write(tmp.join("failed-tests"), fixture.failed_tests.join("\n")).unwrap();
        let _ = fs::remove_dir_all(&entry);
        fs::rename(&tmp, &entry)
            .unwrap_or_else(|e| panic!("cannot publish {}: {e}", entry.display()));
        c.start_again().unwrap_or_else(|e| panic!("{e}"));
    }
    drop(lock);
    let tables = sql(
        &c,
        "regression",
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%'",
    );
    let tables: usize = tables.parse().unwrap();
    assert!(
        tables > 300,
        "the regression database has only {tables} tables: the suite did not run"
    );
    fixture.seconds = started.elapsed().as_secs_f64();
    (c, suite, fixture)
}

/// `cp -a`: keeps the owner (the server's user) and modes (0700 data directory).
fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().expect("run cp");
    assert!(
        out.status.success(),
        "cp -a {} {} failed: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the parallel schedule against `c` into a new database `regression`, as pg_regress would
/// create it; returns the names of the tests that failed. Panics when pg_regress cannot run.
fn run_suite(c: &LocalCluster, suite: &Suite) -> Vec<String> {
    // pg_regress --use-existing does not create the database; this is its create_database().
    sql(
        c,
        "postgres",
        "CREATE DATABASE regression TEMPLATE template0;
         ALTER DATABASE regression SET lc_messages TO 'C';
         ALTER DATABASE regression SET lc_monetary TO 'C';
         ALTER DATABASE regression SET lc_numeric TO 'C';
         ALTER DATABASE regression SET lc_time TO 'C';
         ALTER DATABASE regression SET bytea_output TO 'hex';
         ALTER DATABASE regression SET timezone_abbreviations TO 'Default';",
    );
    // The server writes into results/ (COPY ... TO), as its own user: world-writable.
    let out = TempDir::new("regress-out");
    fs::create_dir_all(out.path().join("results")).unwrap();
    for d in [out.path().to_path_buf(), out.path().join("results")] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let bindir = c.bin("psql").parent().unwrap().to_path_buf();
    let mut cmd = Command::new(&suite.pg_regress);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(out.path())
        .arg("--use-existing")
        .arg(format!("--bindir={}", bindir.display()))
        .arg(format!("--host={}", c.host()))
        .arg(format!("--port={}", c.port()))
        .arg("--user=postgres")
        .arg(format!("--dlpath={}", suite.dir.display()))
        .arg(format!("--inputdir={}", suite.dir.display()))
        .arg(format!("--outputdir={}", out.path().display()))
        .arg(format!("--schedule={}", suite.dir.join("parallel_schedule").display()));
    let started = Instant::now();
    let result = cmd.output().expect("run pg_regress");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let code = result.status.code().unwrap_or(-1);
    eprintln!(
        "regress: pg_regress (parallel schedule) exit {code} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // 0: all passed, 1: some failed (reported, the database is still built), 2: could not run.
    assert!(
        code == 0 || code == 1,
        "pg_regress could not run (exit {code}):\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let failed: Vec<String> = stdout
        .lines()
        .filter(|l| l.contains("... FAILED"))
        .filter_map(|l| l.split_whitespace().find(|w| *w != "test"))
        .map(str::to_string)
        .collect();
    if !failed.is_empty() {
        let diffs = fs::read_to_string(out.path().join("regression.diffs")).unwrap_or_default();
        eprintln!(
            "regress: {} suite test(s) failed: {}\n{}",
            failed.len(),
            failed.join(", "),
            diffs.lines().take(60).collect::<Vec<_>>().join("\n")
        );
    }
    failed
}

/// Runs a psql script over TCP without stopping at errors; returns (stdout, stderr).
pub fn psql_lenient(c: &LocalCluster, db: &str, script: &str) -> (String, String) {
    let mut cmd = Command::new(c.bin("psql"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["-X", "-q", "-A", "-t", "-w", "-h", c.host(), "-p", &c.port().to_string()])
        .args(["-U", "postgres", "-d", db, "-f", "-"])
        .env("PGCLIENTENCODING", "UTF8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run psql");
    let mut stdin = child.stdin.take().unwrap();
    let script = script.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for psql");
    writer.join().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a PostgreSQL tool of `c`'s installation against it; returns (success, stderr).
pub fn tool(c: &LocalCluster, name: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(c.bin(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres"]).args(args);
    let out = cmd.output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The roles of `from` that `to` lacks, created there (`pg_dumpall --roles-only`, no
/// passwords), as an operator does before any migration; returns psql's errors.
pub fn copy_roles(from: &LocalCluster, to: &LocalCluster) -> String {
    let out = Command::new(from.bin("pg_dumpall"))
        .args(["--roles-only", "--no-role-passwords", "-h", from.host()])
        .args(["-p", &from.port().to_string(), "-U", "postgres"])
        .output()
        .expect("run pg_dumpall");
    assert!(out.status.success(), "pg_dumpall: {}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8_lossy(&out.stdout);
    let (_, errors) = psql_lenient(to, "postgres", &script);
    // `role "postgres" already exists` is expected.
    errors.lines().filter(|l| !l.contains("already exists")).collect::<Vec<_>>().join("\n")
}

/// `pg_dump --schema-only` of everything pg_dump dumps (publications and subscriptions
/// included), with a fixed `\restrict` key when pg_dump has one.
pub fn full_schema_dump(c: &LocalCluster, db: &str) -> String {
    let help = command_output(Command::new(c.bin("pg_dump")).arg("--help")).unwrap_or_default();
    let mut cmd = Command::new(c.bin("pg_dump"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--schema-only", "--no-sync", "-h", c.host(), "-p", &c.port().to_string()])
        .args(["-U", "postgres", "-d", db]);
    if help.contains("--restrict-key") {
        cmd.arg("--restrict-key=pgtransit");
    }
    let out = cmd.output().expect("run pg_dump");
    assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Lines that differ between two dumps (removed plus added), and a unified diff.
pub fn dump_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> (usize, String) {
    let diff =
        similar::TextDiff::configure().timeout(std::time::Duration::from_secs(60)).diff_lines(a, b);
    let changed = diff.iter_all_changes().filter(|c| c.tag() != similar::ChangeTag::Equal).count();
    let text = diff.unified_diff().context_radius(1).header(a_name, b_name).to_string();
    (changed, text)
}

/// A schema dump split into its TOC entries: `(type, "schema name")` → the entry's text.
/// Entry headers look like `-- Name: t; Type: TABLE; Schema: public; Owner: postgres`.
pub fn dump_entries(dump: &str) -> std::collections::BTreeMap<(String, String), String> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<((String, String), String)> = None;
    for line in dump.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ") {
            if let Some((k, v)) = current.take() {
                out.insert(k, v);
            }
            let mut name = header;
            let mut kind = "";
            let mut schema = "";
            if let Some((n, rest)) = header.split_once("; Type: ") {
                name = n;
                let (k, rest) = rest.split_once("; ").unwrap_or((rest, ""));
                kind = k;
                schema = rest
                    .strip_prefix("Schema: ")
                    .map(|s| s.split_once(';').map_or(s, |(s, _)| s))
                    .unwrap_or("");
            }
            current = Some(((kind.to_string(), format!("{schema} {name}")), line.to_string()));
        } else if let Some((_, text)) = current.as_mut()
            && !line.starts_with("--")
            && !line.is_empty()
        {
            text.push('\n');
            text.push_str(line);
        }
    }
    if let Some((k, v)) = current {
        out.insert(k, v);
    }
    out
}

/// Per object type: entries only on the source, only on the target, and different.
pub fn entry_summary(
    source: &str,
    target: &str,
) -> (std::collections::BTreeMap<String, [usize; 3]>, Vec<String>) {
    let (a, b) = (dump_entries(source), dump_entries(target));
    let mut by_kind: std::collections::BTreeMap<String, [usize; 3]> = Default::default();
    let mut examples = Vec::new();
    for (k, text) in &a {
        match b.get(k) {
            None => {
                by_kind.entry(k.0.clone()).or_default()[0] += 1;
                examples.push(format!("missing on target: {} {}", k.0, k.1));
            }
            Some(t) if t != text => {
                by_kind.entry(k.0.clone()).or_default()[2] += 1;
                examples.push(format!("differs: {} {}", k.0, k.1));
            }
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        by_kind.entry(k.0.clone()).or_default()[1] += 1;
        examples.push(format!("only on target: {} {}", k.0, k.1));
    }
    (by_kind, examples)
}

/// Rows of every readable table and populated materialized view, compared by column name:
/// `name` → `count|md5` of the rows as `jsonb` (keys sorted), sorted in C order, read with
/// `ONLY` under fixed session settings. Tables the query cannot read go to the second map
/// with the error.
pub fn table_checksums_by_name(
    c: &LocalCluster,
    db: &str,
) -> (std::collections::BTreeMap<String, String>, std::collections::BTreeMap<String, String>) {
    let names = sql(
        c,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
    );
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    // Line 1: settings; line i + 2: table i (psql reports errors by line).
    let mut script = String::from(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 1; SET bytea_output = 'hex'; SET row_security = off;\n",
    );
    for t in &names {
        script.push_str(&format!(
            "SELECT '{}' || '|' || count(*) || '|' || md5(coalesce(string_agg(j, E'\\n' \
             ORDER BY j COLLATE \"C\"), '')) FROM (SELECT to_jsonb(x)::text AS j FROM ONLY {t} \
             AS x) r;\n",
            t.replace('\'', "''")
        ));
    }
    let (stdout, stderr) = psql_lenient(c, db, &script);
    let mut sums = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let mut parts = line.rsplitn(3, '|');
        let (Some(md5), Some(count), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        sums.insert(name.to_string(), format!("{count}|{md5}"));
    }
    let mut errors = std::collections::BTreeMap::new();
    for line in stderr.lines() {
        // psql:<stdin>:N: ERROR:  ...
        let Some(rest) = line.strip_prefix("psql:<stdin>:") else { continue };
        let Some((n, msg)) = rest.split_once(": ") else { continue };
        if let Ok(n) = n.parse::<usize>()
            && n >= 2
            && let Some(t) = names.get(n - 2)
        {
            errors.insert(t.to_string(), msg.trim().to_string());
        }
    }
    (sums, errors)
}

/// Every sequence's `last_value` (empty before its first `nextval`).
pub fn sequences(c: &LocalCluster, db: &str) -> std::collections::BTreeMap<String, String> {
    sql(
        c,
        db,
        "SELECT format('%I.%I', schemaname, sequencename) || '|' || coalesce(last_value::text, '') \
         FROM pg_sequences ORDER BY 1",
    )
    .lines()
    .filter_map(|l| l.rsplit_once('|'))
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

/// Every large object: oid → owner, ACL, comment and the md5 of its contents.
pub fn large_objects(c: &LocalCluster, db: &str) -> std::collections::BTreeMap<String, String> {
    sql(
        c,
        db,
        "SELECT l.oid || '|' || pg_get_userbyid(l.lomowner) || '|' || coalesce(l.lomacl::text, '') \
         || '|' || coalesce(obj_description(l.oid, 'pg_largeobject'), '') || '|' || \
         md5(lo_get(l.oid)) FROM pg_largeobject_metadata l ORDER BY l.oid",
    )
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}
