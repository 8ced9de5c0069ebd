//! libpq-compatible connections (`pgtransit::conn`) against real servers: scram-sha-256
//! passwords from `PGPASSWORD` and password files, permanent failures that fail at once with the
//! fix (wrong or missing password, missing database, certificate mismatch), transient ones that
//! are retried (closed port), `application_name`, every TLS mode with certificates made by the
//! `openssl` CLI, and the same behaviour through `pgtransit plan`.
//!
//! "Fails at once" is `ConnectError::attempts() == 1` under a policy that would retry a
//! transient failure; "retried" is `attempts() > 1`. No test measures time.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use miette::Diagnostic;
use pgtransit::conn::{
    self, ConnInfo, ConnectError, ConnectErrorKind, Env, PasswordSource, Resolved, RetryPolicy,
};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{
    ClusterOptions, LocalCluster, Run, TempDir, checks, cluster, cluster_with, find_check,
    pgtransit, plan_yaml, sql,
};

/// The superuser password of the scram-sha-256 clusters.
const PASSWORD: &str = "Tr4nsit-pw-7731";

// ---------------------------------------------------------------------------------------------
// Passwords (scram-sha-256)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn scram_password_comes_from_pgpassword_pgpass_passfile_or_pgpassfile() {
    let c = password_cluster("pw-sources");
    let home = TempDir::new("pw-sources");
    let line = format!("127.0.0.1:{}:*:postgres:{PASSWORD}\n", c.port());

    // PGPASSWORD.
    let env = Env::from_map([("PGPASSWORD", PASSWORD)], None);
    let r = resolve(&c.conninfo("postgres"), &env);
    assert_eq!(r.password_source(), &PasswordSource::Environment);
    let client = connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_eq!(query_text(&client, "SELECT current_user").await, "postgres");

    // ~/.pgpass at 0600.
    let pgpass = private_file(&home, ".pgpass", &line, 0o600);
    let env = Env::from_map(no_vars(), Some(home.path().to_owned()));
    let r = resolve(&c.conninfo("postgres"), &env);
    assert_eq!(r.password_source(), &PasswordSource::Passfile(pgpass));
    connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);

    // The passfile keyword (its file, not ~/.pgpass, which no longer matches).
    private_file(&home, ".pgpass", "*:*:*:someone_else:nope\n", 0o600);
    let elsewhere = private_file(&home, "elsewhere.pass", &line, 0o600);
    let s = format!("{} passfile={}", c.conninfo("postgres"), elsewhere.display());
    let r = resolve(&s, &env);
    assert_eq!(r.password_source(), &PasswordSource::Passfile(elsewhere.clone()));
    connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);

    // PGPASSFILE, the keyword's environment variable.
    let env =
        Env::from_map([("PGPASSFILE", elsewhere.to_str().unwrap())], Some(home.path().to_owned()));
    let r = resolve(&c.conninfo("postgres"), &env);
    assert_eq!(r.password_source(), &PasswordSource::Passfile(elsewhere));
    connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
}

#[tokio::test]
async fn scram_without_a_usable_password_fails_at_once_naming_pgpassword_and_pgpass() {
    let c = password_cluster("pw-missing");
    let home = TempDir::new("pw-missing");

    // No password anywhere.
    let r = resolve(&c.conninfo("postgres"), &Env::from_map(no_vars(), None));
    assert!(!r.has_password());
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::PasswordRequired);
    assert_password_help(&e);

    // A password file the group and others can read is ignored, as libpq does: the right
    // password in it is not used.
    let line = format!("127.0.0.1:{}:*:postgres:{PASSWORD}\n", c.port());
    private_file(&home, ".pgpass", &line, 0o644);
    let r = resolve(&c.conninfo("postgres"), &Env::from_map(no_vars(), Some(home.path().into())));
    assert_eq!(r.password_source(), &PasswordSource::None);
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::PasswordRequired);
    assert_password_help(&e);
    assert_never_shows(&e, PASSWORD);
    // The help says the file was found and why it was skipped, with the fix.
    let help = miette::Diagnostic::help(&e).unwrap().to_string();
    assert!(help.contains("was ignored because others may read it (mode 0644)"), "{help}");
    assert!(help.contains("chmod 0600"), "{help}");

    // The same file at 0600 works (so it was the mode that made the difference).
    private_file(&home, ".pgpass", &line, 0o600);
    let r = resolve(&c.conninfo("postgres"), &Env::from_map(no_vars(), Some(home.path().into())));
    connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
}

#[tokio::test]
async fn wrong_password_fails_at_once_and_never_appears_in_the_error() {
    let c = password_cluster("pw-wrong");
    let wrong = "Wr0ng-pw-5519";

    let env = Env::from_map([("PGPASSWORD", wrong)], None);
    let r = resolve(&c.conninfo("postgres"), &env);
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::WrongPassword);
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    assert!(help(&e).contains("the password from PGPASSWORD was rejected"), "{}", help(&e));
    assert_never_shows(&e, wrong);

    // The same from the connection string itself.
    let s = format!("{} password={wrong}", c.conninfo("postgres"));
    let r = resolve(&s, &Env::from_map(no_vars(), None));
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::WrongPassword);
    assert!(help(&e).contains("the connection string"), "{}", help(&e));
    assert_never_shows(&e, wrong);
}

// ---------------------------------------------------------------------------------------------
// Other failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_database_fails_at_once_suggesting_create_database() {
    let c = cluster("no-db", &[]);
    let r = resolve(&c.conninfo("nosuchdb"), &Env::from_map(no_vars(), None));
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::DatabaseMissing);
    assert_eq!(e.sqlstate(), Some("3D000"), "{e}");
    assert!(help(&e).contains("CREATE DATABASE nosuchdb"), "{}", help(&e));
}

#[tokio::test]
async fn closed_port_is_retried_then_says_to_check_the_server_is_listening() {
    let port = closed_port();
    let s = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let r = resolve(&s, &Env::from_map(no_vars(), None));
    let policy = RetryPolicy {
        max_elapsed: Duration::from_millis(500),
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let e = failed(conn::connect_with(&r, "pgtransit/test", &policy).await);
    assert_eq!(e.kind(), ConnectErrorKind::Unreachable, "{e}");
    assert!(e.is_transient(), "{e}");
    assert!(e.attempts() > 1, "a refused connection must be retried: {e}");
    assert!(e.to_string().contains(&format!("gave up after {} attempts", e.attempts())), "{e}");
    let help = help(&e);
    assert!(help.contains("is the server running and listening"), "{help}");
    assert!(help.contains(&format!("127.0.0.1:{port}")), "{help}");
}

// ---------------------------------------------------------------------------------------------
// application_name
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn application_name_is_pgtransits_unless_the_user_sets_one() {
    let c = cluster("appname", &[]);
    let query = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    let env = Env::from_map(no_vars(), None);

    let r = resolve(&c.conninfo("postgres"), &env);
    let client = connected(conn::connect_with(&r, "pgtransit/preflight", &retrying()).await);
    assert_eq!(query_text(&client, query).await, "pgtransit/preflight");

    let r = resolve(&format!("{} application_name=mine", c.conninfo("postgres")), &env);
    let client = connected(conn::connect_with(&r, "pgtransit/preflight", &retrying()).await);
    assert_eq!(query_text(&client, query).await, "mine");

    let env = Env::from_map([("PGAPPNAME", "from-env")], None);
    let r = resolve(&c.conninfo("postgres"), &env);
    let client = connected(conn::connect_with(&r, "pgtransit/preflight", &retrying()).await);
    assert_eq!(query_text(&client, query).await, "from-env");
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_modes_against_a_server_with_a_ca_signed_certificate() {
    let dir = TempDir::new("tls");
    let certs = make_certs(&dir);
    let mut c = cluster("tls", &[]);
    hand_key_to_server(&certs.server_key, &c);
    c.restart_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", certs.server_cert.to_str().unwrap()),
        ("ssl_key_file", certs.server_key.to_str().unwrap()),
    ])
    .unwrap();
    let port = c.port();
    let ca = certs.ca.display();
    let other_ca = certs.other_ca.display();
    let env = Env::from_map(no_vars(), None);
    let tls = async |s: &str, env: &Env| -> Result<bool, ConnectError> {
        let r = resolve(s, env);
        let client = conn::connect_with(&r, "pgtransit/test", &retrying()).await?;
        Ok(query_text(&client, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await
            == "t")
    };
    let plain = c.conninfo("postgres");

    // prefer (the default) and require: TLS, certificate not checked.
    assert!(connected(tls(&plain, &env).await), "sslmode=prefer");
    assert!(connected(tls(&format!("{plain} sslmode=require"), &env).await), "require");
    // verify-ca: the chain leads to the CA.
    let s = format!("{plain} sslmode=verify-ca sslrootcert={ca}");
    assert!(resolve(&s, &env).verifies_certificate());
    assert!(connected(tls(&s, &env).await), "verify-ca");
    // verify-full: the chain, and the host name matches the certificate.
    let full = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
         sslmode=verify-full sslrootcert={ca}"
    );
    assert!(connected(tls(&full, &env).await), "verify-full");
    // disable: no TLS at all.
    assert!(!connected(tls(&format!("{plain} sslmode=disable"), &env).await), "disable");

    // verify-full to a name the certificate does not have.
    let wrong_host = full.replace("host=localhost", "host=wronghost");
    let e = failed(tls(&wrong_host, &env).await);
    assert_fails_at_once(&e, ConnectErrorKind::Certificate);
    assert!(help(&e).contains("the host name must also match the certificate"), "{}", help(&e));
    assert!(help(&e).contains("sslmode=verify-ca skips that check"), "{}", help(&e));

    // verify-ca trusting another CA: the chain check is real.
    let e = failed(tls(&format!("{plain} sslmode=verify-ca sslrootcert={other_ca}"), &env).await);
    assert_fails_at_once(&e, ConnectErrorKind::Certificate);
    assert!(help(&e).contains("check sslrootcert"), "{}", help(&e));
    assert!(help(&e).contains(&other_ca.to_string()), "{}", help(&e));

    // libpq's quirk: with ~/.postgresql/root.crt present, require verifies the chain.
    let home = TempDir::new("tls-home");
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&certs.other_ca, home.path().join(".postgresql/root.crt")).unwrap();
    let home_env = Env::from_map(no_vars(), Some(home.path().to_owned()));
    let e = failed(tls(&format!("{plain} sslmode=require"), &home_env).await);
    assert_fails_at_once(&e, ConnectErrorKind::Certificate);
    assert!(help(&e).contains("because a root certificate file exists"), "{}", help(&e));
    // …and with the right CA there, require connects (verified).
    std::fs::copy(&certs.ca, home.path().join(".postgresql/root.crt")).unwrap();
    assert!(connected(tls(&format!("{plain} sslmode=require"), &home_env).await));
}

#[tokio::test]
async fn against_a_server_without_tls_require_fails_at_once_and_prefer_uses_plaintext() {
    let c = cluster("no-tls", &[("ssl", "off")]);
    let env = Env::from_map(no_vars(), None);
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    let r = resolve(&format!("{} sslmode=require", c.conninfo("postgres")), &env);
    let e = failed(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_fails_at_once(&e, ConnectErrorKind::Tls);
    assert!(help(&e).contains("does not accept TLS"), "{}", help(&e));

    let r = resolve(&format!("{} sslmode=prefer", c.conninfo("postgres")), &env);
    let client = connected(conn::connect_with(&r, "pgtransit/test", &retrying()).await);
    assert_eq!(query_text(&client, ssl).await, "f");
}

// ---------------------------------------------------------------------------------------------
// Through the binary
// ---------------------------------------------------------------------------------------------

#[test]
fn plan_with_an_unreachable_target_exits_1_and_still_checks_the_source() {
    let src = cluster("unreach-src", &[]);
    src.create_database("app").unwrap();
    sql(&src, "app", "CREATE TABLE items (id int PRIMARY KEY);");
    let port = closed_port();
    let target = format!("postgresql://postgres@127.0.0.1:{port}/app");
    let dir = TempDir::new("unreach");
    let file =
        dir.write("p.yaml", &plan_yaml("unreach", &src.url("app"), &target, "mode: offline\n"));

    let out = plan_json(pgtransit(dir.path()), &file, &["--retry-for", "1s"]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let unreachable = find_check(&doc, "target_unreachable", "error", "target");
    let fix = unreachable["fix"].as_str().unwrap();
    assert!(fix.contains("is the server running and listening"), "{unreachable}");
    assert!(fix.contains(&format!("127.0.0.1:{port}")), "{unreachable}");
    assert!(unreachable["message"].as_str().unwrap().contains("gave up after"), "{unreachable}");
    assert_eq!(doc["summary"]["errors"], 1, "only the target is a problem: {out:?}");
    // The source was still read and checked; checks needing both servers were skipped.
    assert!(doc["source"]["version"].as_str().unwrap().starts_with("PostgreSQL "), "{out:?}");
    assert!(doc["target"]["version"].is_null(), "{out:?}");
    find_check(&doc, "scope", "info", "source");
    assert!(checks(&doc, "versions").is_empty(), "{out:?}");
    assert!(checks(&doc, "source_unreachable").is_empty(), "{out:?}");
}

#[test]
fn plan_takes_the_source_password_from_pgpassword() {
    let src = password_cluster("pgpw-src");
    let tgt = cluster("pgpw-tgt", &[]);
    src.create_database("app").unwrap();
    sql(&src, "app", "CREATE TABLE items (id int PRIMARY KEY);");
    tgt.create_database("app").unwrap();
    let dir = TempDir::new("pgpw");
    let file = dir
        .write("p.yaml", &plan_yaml("pgpw", &src.url("app"), &tgt.url("app"), "mode: offline\n"));

    // Without it the source cannot be read, and the fix says where passwords go.
    let out = plan_json(pgtransit(dir.path()), &file, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let problem = find_check(&doc, "source_unreachable", "error", "source");
    assert!(problem["fix"].as_str().unwrap().contains("PGPASSWORD"), "{problem}");

    let mut cmd = pgtransit(dir.path());
    cmd.env("PGPASSWORD", PASSWORD);
    let out = plan_json(cmd, &file, &["--detailed-exitcode"]);
    assert!(matches!(out.code, 0 | 2), "{out:?}");
    let doc = out.json();
    assert!(checks(&doc, "source_unreachable").is_empty(), "{out:?}");
    assert!(doc["source"]["version"].is_string(), "{out:?}");
    find_check(&doc, "scope", "info", "source");
    assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A cluster whose TCP connections need scram-sha-256 with [`PASSWORD`].
fn password_cluster(name: &str) -> LocalCluster {
    cluster_with(ClusterOptions {
        name: name.into(),
        superuser_password: Some(PASSWORD.into()),
        ..Default::default()
    })
}

/// A policy that retries transient failures, so `attempts() == 1` means "not retried".
fn retrying() -> RetryPolicy {
    RetryPolicy {
        max_elapsed: Duration::from_secs(3),
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }
}

fn no_vars() -> [(&'static str, &'static str); 0] {
    []
}

fn resolve(conninfo: &str, env: &Env) -> Resolved {
    ConnInfo::parse(conninfo)
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"))
        .resolve(env)
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

fn help(e: &ConnectError) -> String {
    e.help().map(|h| h.to_string()).unwrap_or_default()
}

fn connected<T>(result: Result<T, ConnectError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}\nhelp: {}", help(&e)))
}

fn failed<T>(result: Result<T, ConnectError>) -> ConnectError {
    match result {
        Ok(_) => panic!("connected, but a failure was expected"),
        Err(e) => e,
    }
}

fn assert_fails_at_once(e: &ConnectError, kind: ConnectErrorKind) {
    assert_eq!(e.kind(), kind, "{e}\nhelp: {}", help(e));
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.attempts(), 1, "a permanent failure must not be retried: {e}");
}

fn assert_password_help(e: &ConnectError) {
    let help = help(e);
    assert!(help.contains("PGPASSWORD") && help.contains(".pgpass"), "{help}");
}

/// The password appears in none of the message, the `Debug` form, the help or the diagnostic
/// as miette renders it.
fn assert_never_shows(e: &ConnectError, password: &str) {
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut rendered, e)
        .unwrap();
    assert!(rendered.contains("help:"), "{rendered}");
    for text in [e.to_string(), format!("{e:?}"), help(e), rendered] {
        assert!(!text.contains(password), "the password leaked: {text}");
    }
}

/// The first column of the first row, as text (`t`/`f` for booleans).
async fn query_text(client: &Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes `name` in `dir` with this mode.
fn private_file(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.write(name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `pgtransit plan FILE --format json` plus `extra`.
fn plan_json(mut cmd: Command, file: &Path, extra: &[&str]) -> Run {
    cmd.args(["plan", file.to_str().unwrap(), "--format", "json"]).args(extra);
    Run::of(cmd.output().expect("run pgtransit"))
}

/// Test certificates: a CA, a server certificate it signed (CN and SAN `localhost`, SAN IP
/// 127.0.0.1) and an unrelated CA.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn make_certs(dir: &TempDir) -> Certs {
    let d = dir.path();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca =
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign";
    for (name, cn) in [("ca", "pgtransit-test-CA"), ("other-ca", "unrelated-test-CA")] {
        openssl(
            d,
            &format!(
                "req -x509 -new -days 2 -subj /CN={cn} {ec} {ca} -keyout {name}.key -out {name}.crt"
            ),
        );
    }
    openssl(d, &format!("req -new -subj /CN=localhost {ec} -keyout server.key -out server.csr"));
    dir.write(
        "server.ext",
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    );
    openssl(
        d,
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 2 \
         -extfile server.ext -out server.crt",
    );
    for crt in ["ca.crt", "other-ca.crt", "server.crt"] {
        std::fs::set_permissions(d.join(crt), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    Certs {
        ca: d.join("ca.crt"),
        other_ca: d.join("other-ca.crt"),
        server_cert: d.join("server.crt"),
        server_key: d.join("server.key"),
    }
}

/// Runs the `openssl` CLI in `dir` with these space-separated arguments; a missing `openssl`
/// fails the test with what to install.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl").args(args.split_whitespace()).current_dir(dir).output();
    let out = out.unwrap_or_else(|e| {
        panic!(
            "cannot run `openssl` ({e}): the TLS tests make their certificates with the openssl \
             command-line tool; install it (e.g. apt-get install openssl)"
        )
    });
    assert!(
        out.status.success(),
        "openssl {args} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server refuses a key others can read, and runs as the data directory's owner (the
/// `postgres` user when the tests run as root): give the key to that user, mode 0600.
fn hand_key_to_server(key: &Path, c: &LocalCluster) {
    let owner = std::fs::metadata(c.data_dir()).unwrap();
    std::os::unix::fs::chown(key, Some(owner.uid()), Some(owner.gid()))
        .unwrap_or_else(|e| panic!("chown {} to the server's user: {e}", key.display()));
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
}
