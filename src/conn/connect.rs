//! Opening a `tokio_postgres::Client` from [`Resolved`] settings: libpq's per-host order and
//! `sslmode` fallbacks (`allow`, `prefer`), `target_session_attrs`, retries with exponential
//! backoff for transient failures, and errors that name the endpoint and the fix.

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use miette::Diagnostic;
use thiserror::Error;
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::resolve::{
    ChannelBinding, Host, PasswordSource, Resolved, SslMode, SslRootCert, Target,
    TargetSessionAttrs,
};
use super::tls;

/// How long and how often to retry transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Stop retrying once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    /// The first delay between attempts; it doubles after each attempt…
    pub initial: Duration,
    /// …up to this.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// About 30 s in total, 250 ms first delay, at most 5 s between attempts.
    fn default() -> Self {
        RetryPolicy {
            max_elapsed: Duration::from_secs(30),
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A single attempt, no retries.
    pub fn no_retry() -> Self {
        RetryPolicy { max_elapsed: Duration::ZERO, initial: Duration::ZERO, max: Duration::ZERO }
    }
}

/// What went wrong, to pick the fix to suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The server rejected the password (SQLSTATE 28P01).
    WrongPassword,
    /// The server asked for a password and none was supplied.
    PasswordRequired,
    /// pg_hba.conf rejected the connection, or the role does not exist (28000).
    Rejected,
    /// The database does not exist (3D000).
    DatabaseMissing,
    /// The user may not connect to the database (42501).
    PermissionDenied,
    /// The server certificate failed verification.
    Certificate,
    /// Another TLS failure (e.g. the server does not support TLS).
    Tls,
    /// Connection refused, reset, timed out or no socket (transient).
    Unreachable,
    /// The host name could not be resolved.
    HostNotFound,
    /// The server is starting up, shutting down, out of connection slots or lost the
    /// connection (57P03, 53300, 08xxx; transient).
    Unavailable,
    /// No server matched `target_session_attrs` (transient: a failover may be in progress).
    SessionAttrs,
    /// The TLS settings cannot be used (certificate files).
    Config,
    /// Anything else.
    Other,
}

/// A failed connection. The message names the endpoint ([`Resolved::display`]); it never
/// contains a password. The `help` suggests the fix.
#[derive(Debug, Error, Diagnostic)]
#[error("could not connect to {endpoint}: {message}")]
#[diagnostic(code(pgtransit::connect))]
pub struct ConnectError {
    endpoint: String,
    message: String,
    kind: ConnectErrorKind,
    transient: bool,
    #[help]
    help: Option<String>,
    attempts: u32,
    sqlstate: Option<String>,
    postgres: Option<tokio_postgres::Error>,
}

impl ConnectError {
    /// What went wrong.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// Whether retrying later may succeed (refused, timed out, server starting, too many
    /// connections, …).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// How many connection rounds were made: 1 when the failure was permanent, 0 when it
    /// happened before any connection was tried (TLS configuration).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The redacted endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying driver error, when there is one.
    pub fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        self.postgres.as_ref()
    }
}

/// One failed attempt against one server.
#[derive(Debug)]
struct Failure {
    target: Target,
    kind: ConnectErrorKind,
    transient: bool,
    message: String,
    sqlstate: Option<String>,
    postgres: Option<tokio_postgres::Error>,
}

impl Failure {
    fn new(target: &Target, kind: ConnectErrorKind, transient: bool, message: String) -> Self {
        Failure { target: target.clone(), kind, transient, message, sqlstate: None, postgres: None }
    }

    fn from_pg(target: &Target, e: tokio_postgres::Error) -> Self {
        let (kind, transient, message) = classify(&e);
        Failure {
            target: target.clone(),
            kind,
            transient,
            message,
            sqlstate: e.code().map(|c| c.code().to_owned()),
            postgres: Some(e),
        }
    }
}

/// Connects with the default [`RetryPolicy`]. `application_name` (e.g. `pgtransit/preflight`)
/// is used unless the user set `application_name` or `PGAPPNAME`.
pub async fn connect(r: &Resolved, application_name: &str) -> Result<Client, ConnectError> {
    connect_with(r, application_name, &RetryPolicy::default()).await
}

/// Connects, retrying transient failures according to `policy`. Must run inside a tokio
/// runtime: the connection task is spawned on it.
pub async fn connect_with(
    r: &Resolved,
    application_name: &str,
    policy: &RetryPolicy,
) -> Result<Client, ConnectError> {
    let endpoint = r.display();
    let tls = if r.sslmode == SslMode::Disable {
        None
    } else {
        Some(tls::client_config(r).map_err(|e| ConnectError {
            endpoint: endpoint.clone(),
            message: e.message,
            kind: ConnectErrorKind::Config,
            transient: false,
            help: Some(e.help),
            attempts: 0,
            sqlstate: None,
            postgres: None,
        })?)
    };
    let app = [r.application_name(), Some(application_name), r.fallback_application_name()]
        .into_iter()
        .flatten()
        .find(|a| !a.is_empty())
        .unwrap_or("pgtransit")
        .to_owned();
    let ctx = Attempt { r, tls: tls.as_ref(), app: &app, policy };

    let start = Instant::now();
    let mut delay = policy.initial;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        tracing::debug!(endpoint = %endpoint, attempt = attempts, "connecting");
        match round(&ctx).await {
            Ok(client) => {
                tracing::debug!(endpoint = %endpoint, attempt = attempts, "connected");
                // Whatever pgtransit changes on a server is durable before it goes on: the
                // state records a step done, the cutover reports the fence up or the slot and
                // publication gone, only after a commit that a crash of the server cannot take
                // back (a server that commits asynchronously by default would lose it: the
                // chaos test found a dropped publication back after such a crash). A SET, not
                // a startup option, which poolers may refuse.
                // `row_security = off`: a query that row-level security would filter fails
                // instead, so no copy, change or verification ever sees part of a table and
                // takes it for the whole. No timeout of the role's or the database's (which
                // the migration carries to the target) cuts off an hour-long copy, index
                // build or snapshot, as pg_dump's own sessions do (`idle_session_timeout` from
                // 14, `transaction_timeout` from 17, where the server has them).
                // A rollback window's old source stays read-only (its cutover's fence) for everyone
                // but the window's own sessions.
                let writes = if r.writes_when_fenced {
                    "SET default_transaction_read_only = off; "
                } else {
                    ""
                };
                if let Err(e) = client
                    .batch_execute(&format!(
                        "{writes}SET synchronous_commit = on; SET row_security = off; \
                         SET statement_timeout = 0; SET lock_timeout = 0; \
                         SET idle_in_transaction_session_timeout = 0; \
                         SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings \
                         WHERE name IN ('idle_session_timeout', 'transaction_timeout')",
                    ))
                    .await
                {
                    return Err(ConnectError {
                        endpoint: endpoint.clone(),
                        message: format!("the session could not be set up: {e}"),
                        kind: ConnectErrorKind::Unavailable,
                        transient: true,
                        help: None,
                        attempts,
                        sqlstate: e.code().map(|c| c.code().to_string()),
                        postgres: None,
                    });
                }
                return Ok(client);
            }
            Err(failure) => {
                let elapsed = start.elapsed();
                if !failure.transient || elapsed + delay > policy.max_elapsed {
                    return Err(into_error(r, endpoint, failure, attempts, elapsed));
                }
                tracing::debug!(
                    endpoint = %endpoint,
                    attempt = attempts,
                    error = %failure.message,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "transient connection failure; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max).max(Duration::from_millis(1));
            }
        }
    }
}

struct Attempt<'a> {
    r: &'a Resolved,
    tls: Option<&'a rustls::ClientConfig>,
    app: &'a str,
    policy: &'a RetryPolicy,
}

/// One pass over the hosts (two for `prefer-standby`). The round's failure is the first
/// permanent one if any (retrying cannot help), else the last.
async fn round(ctx: &Attempt<'_>) -> Result<Client, Failure> {
    let mut order: Vec<&Target> = ctx.r.targets.iter().collect();
    if ctx.r.load_balance_hosts {
        shuffle(&mut order);
    }
    let passes: &[TargetSessionAttrs] = match ctx.r.target_session_attrs {
        TargetSessionAttrs::PreferStandby => {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        TargetSessionAttrs::Any => &[TargetSessionAttrs::Any],
        TargetSessionAttrs::ReadWrite => &[TargetSessionAttrs::ReadWrite],
        TargetSessionAttrs::ReadOnly => &[TargetSessionAttrs::ReadOnly],
        TargetSessionAttrs::Primary => &[TargetSessionAttrs::Primary],
        TargetSessionAttrs::Standby => &[TargetSessionAttrs::Standby],
    };
    let mut failures = Vec::new();
    for want in passes {
        for target in &order {
            match connect_target(ctx, target, *want).await {
                Ok(client) => return Ok(client),
                Err(f) => {
                    tracing::debug!(target = %f.target, error = %f.message, "host failed");
                    failures.push(f);
                }
            }
        }
    }
    let permanent = failures.iter().position(|f| !f.transient);
    match permanent.or(failures.len().checked_sub(1)) {
        Some(pick) => Err(failures.swap_remove(pick)),
        None => Err(Failure::new(
            &Target { host: Host::Tcp(String::new()), hostaddr: None, port: 0 },
            ConnectErrorKind::Other,
            false,
            "no hosts to connect to".to_owned(),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Plain,
    /// TLS if the server offers it.
    PreferTls,
    /// TLS or fail.
    Tls,
}

/// TCP keepalives when the connection string does not set them (`keepalives_idle`,
/// `keepalives_interval`, `keepalives_count`): idle 15 s, then a probe every 5 s, 4 unanswered
/// probes end the connection.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVES_COUNT: u32 = 4;

/// Tries one server, with libpq's fallbacks between plaintext and TLS.
async fn connect_target(
    ctx: &Attempt<'_>,
    target: &Target,
    want: TargetSessionAttrs,
) -> Result<Client, Failure> {
    let plan: &[Wire] = match (&target.host, ctx.r.sslmode) {
        // libpq never uses TLS over Unix sockets, whatever the sslmode.
        (Host::Unix(_), _) | (_, SslMode::Disable) => &[Wire::Plain],
        (_, SslMode::Allow) => &[Wire::Plain, Wire::Tls],
        (_, SslMode::Prefer) => &[Wire::PreferTls, Wire::Plain],
        (_, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => &[Wire::Tls],
    };
    let per_attempt =
        ctx.r.connect_timeout.unwrap_or_else(|| ctx.policy.max_elapsed.max(Duration::from_secs(5)));
    let mut result = Err(Failure::new(target, ConnectErrorKind::Other, false, String::new()));
    for (i, wire) in plan.iter().enumerate() {
        result = match tokio::time::timeout(per_attempt, attempt(ctx, target, *wire, want)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                target,
                ConnectErrorKind::Unreachable,
                true,
                format!("timed out after {}s", per_attempt.as_secs_f32()),
            )),
        };
        let Err(f) = &result else { break };
        let hba = f.sqlstate.as_deref() == Some("28000");
        let fall_back = match wire {
            // allow: plaintext first; TLS if pg_hba.conf insists on it.
            Wire::Plain => hba,
            // prefer: plaintext if TLS failed or pg_hba.conf rejects TLS connections.
            Wire::PreferTls => hba || f.kind == ConnectErrorKind::Tls,
            Wire::Tls => false,
        };
        if !fall_back || i + 1 == plan.len() {
            break;
        }
        tracing::debug!(target = %target, error = %f.message, "retrying with TLS toggled");
    }
    result
}

fn pg_config(ctx: &Attempt<'_>, target: &Target, ssl: PgSslMode) -> Config {
    let r = ctx.r;
    let mut c = Config::new();
    c.user(&r.user)
        .dbname(&r.dbname)
        .application_name(ctx.app)
        .ssl_mode(ssl)
        .channel_binding(match r.channel_binding {
            ChannelBinding::Disable => PgChannelBinding::Disable,
            ChannelBinding::Prefer => PgChannelBinding::Prefer,
            ChannelBinding::Require => PgChannelBinding::Require,
        })
        .keepalives(r.keepalives)
        .port(target.port);
    match &target.host {
        Host::Tcp(h) => c.host(h),
        Host::Unix(dir) => c.host_path(dir),
    };
    if let Some(addr) = target.hostaddr {
        c.hostaddr(addr);
    }
    if let Some(pw) = &r.password {
        c.password(pw);
    }
    if let Some(o) = &r.options {
        c.options(o);
    }
    if let Some(t) = r.connect_timeout {
        c.connect_timeout(t);
    }
    // A server that vanished without a word (a network cut, a machine that lost power) is
    // noticed on an idle connection after about 35 s, not the system's default two hours:
    // pgtransit's sessions live for hours, and a stream waits on its connection.
    c.keepalives_idle(r.keepalives_idle.unwrap_or(KEEPALIVES_IDLE));
    c.keepalives_interval(r.keepalives_interval.unwrap_or(KEEPALIVES_INTERVAL));
    c.keepalives_retries(r.keepalives_count.unwrap_or(KEEPALIVES_COUNT));
    if let Some(t) = r.tcp_user_timeout {
        c.tcp_user_timeout(t);
    }
    c
}

async fn attempt(
    ctx: &Attempt<'_>,
    target: &Target,
    wire: Wire,
    want: TargetSessionAttrs,
) -> Result<Client, Failure> {
    let label = target.to_string();
    let client = match (wire, ctx.tls) {
        (Wire::Plain, _) | (_, None) => {
            let config = pg_config(ctx, target, PgSslMode::Disable);
            let (client, connection) =
                config.connect(NoTls).await.map_err(|e| Failure::from_pg(target, e))?;
            spawn_connection(connection, label);
            client
        }
        (Wire::PreferTls | Wire::Tls, Some(tls)) => {
            let mode = if wire == Wire::Tls { PgSslMode::Require } else { PgSslMode::Prefer };
            let config = pg_config(ctx, target, mode);
            let (client, connection) = config
                .connect(MakeRustlsConnect::new(tls.clone()))
                .await
                .map_err(|e| Failure::from_pg(target, e))?;
            spawn_connection(connection, label);
            client
        }
    };
    check_session(&client, target, want).await?;
    Ok(client)
}

fn spawn_connection<F>(connection: F, target: String)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target = %target, error = %e, "connection ended with an error");
        }
    });
}

/// libpq's `target_session_attrs` checks.
async fn check_session(
    client: &Client,
    target: &Target,
    want: TargetSessionAttrs,
) -> Result<(), Failure> {
    let (query, expect, wrong) = match want {
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => return Ok(()),
        TargetSessionAttrs::ReadWrite => {
            ("SHOW transaction_read_only", "off", "sessions are read-only")
        }
        TargetSessionAttrs::ReadOnly => {
            ("SHOW transaction_read_only", "on", "sessions are read-write")
        }
        TargetSessionAttrs::Primary => {
            ("SELECT pg_catalog.pg_is_in_recovery()", "f", "the server is a standby")
        }
        TargetSessionAttrs::Standby => {
            ("SELECT pg_catalog.pg_is_in_recovery()", "t", "the server is not a standby")
        }
    };
    let rows = client.simple_query(query).await.map_err(|e| Failure::from_pg(target, e))?;
    let value = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    if value.as_deref() == Some(expect) {
        return Ok(());
    }
    Err(Failure::new(
        target,
        ConnectErrorKind::SessionAttrs,
        true,
        format!("{wrong} (target_session_attrs={})", want.as_str()),
    ))
}

/// Fisher–Yates with a clock-seeded xorshift (load_balance_hosts=random needs no more).
fn shuffle<T>(items: &mut [T]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut state =
        (u64::from(nanos) << 32) ^ u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

/// The io::Error and rustls::Error inside a driver error, if any.
fn causes(e: &tokio_postgres::Error) -> (Option<&io::Error>, Option<&rustls::Error>) {
    let mut io_err = None;
    let mut tls_err = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            io_err.get_or_insert(io);
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                tls_err.get_or_insert(t);
            }
        }
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            tls_err.get_or_insert(t);
        }
        next = err.source();
    }
    (io_err, tls_err)
}

/// The driver error with its causes (its `Display` shows only the outermost one).
fn full_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        let part = err.to_string();
        if !text.ends_with(&part) {
            let _ = write!(text, ": {part}");
        }
        next = err.source();
    }
    text
}

/// Sorts a driver error into a kind, whether it is transient, and a short message.
fn classify(e: &tokio_postgres::Error) -> (ConnectErrorKind, bool, String) {
    use ConnectErrorKind as K;
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            let _ = write!(message, " ({detail})");
        }
        let _ = write!(message, " [SQLSTATE {code}]");
        let (kind, transient) = match code {
            "28P01" => (K::WrongPassword, false),
            "28000" => (K::Rejected, false),
            "3D000" => (K::DatabaseMissing, false),
            "42501" => (K::PermissionDenied, false),
            "57P03" | "53300" => (K::Unavailable, true),
            c if c.starts_with("08") => (K::Unavailable, true),
            _ => (K::Other, false),
        };
        return (kind, transient, message);
    }
    let text = full_text(e);
    let (io_err, tls_err) = causes(e);
    if let Some(t) = tls_err {
        let kind = match t {
            rustls::Error::InvalidCertificate(_) => K::Certificate,
            _ => K::Tls,
        };
        return (kind, false, text);
    }
    if text.starts_with("error performing TLS handshake") {
        if io_err.is_some_and(|io| is_transient_io(io.kind())) {
            return (K::Unreachable, true, text);
        }
        return (K::Tls, false, text);
    }
    if text.contains("password missing") {
        return (K::PasswordRequired, false, "the server requested a password".to_owned());
    }
    if let Some(io) = io_err {
        if is_transient_io(io.kind()) {
            return (K::Unreachable, true, text);
        }
        let msg = io.to_string();
        if msg.contains("lookup address") || msg.contains("Name or service not known") {
            let transient = msg.contains("Temporary failure");
            return (K::HostNotFound, transient, text);
        }
        return (K::Other, false, text);
    }
    if e.is_closed() {
        return (K::Unreachable, true, text);
    }
    (K::Other, false, text)
}

fn is_transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as E;
    matches!(
        kind,
        E::ConnectionRefused
            | E::ConnectionReset
            | E::ConnectionAborted
            | E::NotConnected
            | E::TimedOut
            | E::BrokenPipe
            | E::UnexpectedEof
            | E::NotFound
            | E::AddrNotAvailable
            | E::HostUnreachable
            | E::NetworkUnreachable
            | E::NetworkDown
    )
}

/// A SQL identifier, quoted when needed.
fn ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_owned() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

const PASSWORD_HELP: &str =
    "set PGPASSWORD, add a line to ~/.pgpass (mode 0600), or use ${ENV_VAR} in the URL";

/// "; the password file ... was ignored ..." when one was, else nothing.
fn passfile_note(r: &Resolved) -> String {
    r.passfile_note.as_ref().map(|n| format!(". Note: {n}")).unwrap_or_default()
}

fn help_for(r: &Resolved, f: &Failure) -> Option<String> {
    use ConnectErrorKind as K;
    Some(match f.kind {
        K::WrongPassword => match &r.password_source {
            PasswordSource::None => {
                format!("no password was supplied: {PASSWORD_HELP}{}", passfile_note(r))
            }
            source => format!("the password from {source} was rejected: {PASSWORD_HELP}"),
        },
        K::PasswordRequired => format!(
            "the server requires a password and none was found: {PASSWORD_HELP}{}",
            passfile_note(r)
        ),
        K::Rejected if f.message.contains("does not exist") => {
            format!("create the role (CREATE ROLE {} LOGIN …) or fix user", ident(&r.user))
        }
        K::Rejected => "add a pg_hba.conf line for this user/database/address (or use \
                        sslmode=require if the line is hostssl)"
            .to_owned(),
        K::DatabaseMissing => {
            format!("create it (CREATE DATABASE {} …) or fix dbname", ident(&r.dbname))
        }
        K::PermissionDenied => format!(
            "GRANT CONNECT ON DATABASE {} TO {}, or connect as a user who has it",
            ident(&r.dbname),
            ident(&r.user)
        ),
        K::Certificate => {
            let roots = match &r.sslrootcert {
                Some(SslRootCert::File(path)) => path.display().to_string(),
                Some(SslRootCert::System) => "the system trust store".to_owned(),
                None => String::new(),
            };
            let mut help = if r.sslmode == SslMode::Require {
                format!(
                    "sslmode=require verifies the certificate chain because a root certificate \
                     file exists ({roots}), as in libpq: check sslrootcert, or point sslrootcert \
                     at a file that does not exist to skip verification"
                )
            } else {
                let mut help =
                    "check sslrootcert / use sslmode=require to skip verification".to_owned();
                if !roots.is_empty() {
                    let _ = write!(help, " (trusted roots:{roots})");
                }
                help
            };
            if r.verifies_host_name() {
                help.push_str(
                    " (with sslmode=verify-full the host name must also match the certificate; \
                     sslmode=verify-ca skips that check)",
                );
            }
            help
        }
        K::Tls if f.message.contains("server does not support TLS") => {
            "the server does not accept TLS (ssl = off): enable ssl in postgresql.conf, or use \
             sslmode=prefer or disable"
                .to_owned()
        }
        K::Tls => {
            "check the server's TLS settings (certificates, ssl_min_protocol_version)".to_owned()
        }
        K::Unreachable => match &f.target.host {
            Host::Unix(_) => format!(
                "is the server running locally and accepting connections on socket {}?",
                f.target
            ),
            _ => format!(
                "is the server running and listening on {}? check listen_addresses and firewalls",
                f.target
            ),
        },
        K::HostNotFound => format!("check the host name \"{}\" (DNS lookup failed)", f.target.host),
        K::Unavailable => "the server is starting up, shutting down or out of connection \
                           slots: try again later, or raise max_connections"
            .to_owned(),
        K::SessionAttrs => format!(
            "no server matched target_session_attrs={}; check the hosts' roles",
            r.target_session_attrs.as_str()
        ),
        K::Config | K::Other => return None,
    })
}

fn into_error(
    r: &Resolved,
    endpoint: String,
    f: Failure,
    attempts: u32,
    elapsed: Duration,
) -> ConnectError {
    let mut message = if r.targets.len() > 1 {
        format!("{}: {}", f.target, f.message)
    } else {
        f.message.clone()
    };
    if attempts > 1 {
        let _ = write!(
            message,
            " (gave up after {attempts} attempts in {:.1}s)",
            elapsed.as_secs_f32()
        );
    }
    ConnectError {
        endpoint,
        help: help_for(r, &f),
        message,
        kind: f.kind,
        transient: f.transient,
        attempts,
        sqlstate: f.sqlstate,
        postgres: f.postgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnInfo, Env};

    fn env() -> Env {
        Env::from_map([("USER", "u")], None)
    }

    #[test]
    fn retry_policy_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_elapsed, Duration::from_secs(30));
        assert_eq!(p.initial, Duration::from_millis(250));
        assert_eq!(p.max, Duration::from_secs(5));
    }

    #[test]
    fn identifiers() {
        assert_eq!(ident("pagila"), "pagila");
        assert_eq!(ident("My\"Db"), "\"My\"\"Db\"");
    }

    #[test]
    fn shuffle_keeps_items() {
        let mut v = vec![1, 2, 3, 4, 5];
        shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn refused_is_retried_then_explained() {
        // Find a closed port by binding and dropping a listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = format!("host=127.0.0.1 port={port} user=u password=hunter2 dbname=d");
        let r = ConnInfo::parse(&s).unwrap().resolve(&env()).unwrap();
        let policy = RetryPolicy {
            max_elapsed: Duration::from_millis(300),
            initial: Duration::from_millis(50),
            max: Duration::from_millis(100),
        };
        let e = connect_with(&r, "pgtransit/test", &policy).await.unwrap_err();
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable);
        assert!(e.is_transient());
        assert!(e.attempts() > 1);
        let text = format!("{e} {e:?} {}", e.help().unwrap());
        assert!(!text.contains("hunter2"), "{text}");
        let help = e.help().unwrap().to_string();
        assert!(help.contains(&format!("127.0.0.1:{port}")), "{help}");
        assert!(help.contains("is the server running"), "{help}");
        assert!(e.to_string().starts_with(&format!("could not connect to {}", r.display())));
    }

    #[tokio::test]
    async fn connect_timeout_applies_per_attempt() {
        // A listener that never answers: the TCP handshake completes, the startup does not.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = format!("host=127.0.0.1 port={port} user=u dbname=d connect_timeout=1");
        let r = ConnInfo::parse(&s).unwrap().resolve(&env()).unwrap();
        let policy = RetryPolicy { max_elapsed: Duration::from_secs(1), ..RetryPolicy::default() };
        let e = connect_with(&r, "t", &policy).await.unwrap_err();
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable, "{e}");
        assert!(e.to_string().contains("timed out after 2s"), "{e}");
        assert_eq!(e.attempts(), 1);
        drop(listener);
    }

    #[tokio::test]
    async fn missing_unix_socket_is_unreachable() {
        let dir = crate::conn::testdir::tempdir().unwrap();
        let s = format!("host={} user=u dbname=d", dir.path().display());
        let r = ConnInfo::parse(&s).unwrap().resolve(&env()).unwrap();
        let e = connect_with(&r, "t", &RetryPolicy::no_retry()).await.unwrap_err();
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable, "{e}");
        assert!(e.help().unwrap().to_string().contains(".s.PGSQL.5432"));
    }

    #[tokio::test]
    async fn unknown_host_is_permanent() {
        let r = ConnInfo::parse("host=nonexistent.invalid user=u dbname=d")
            .unwrap()
            .resolve(&env())
            .unwrap();
        let e = connect_with(&r, "t", &RetryPolicy::default()).await.unwrap_err();
        assert_eq!(e.attempts(), 1, "{e}");
        assert!(matches!(e.kind(), ConnectErrorKind::HostNotFound), "{e:?}");
    }
}
