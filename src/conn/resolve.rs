//! Resolution of a [`ConnInfo`] into concrete settings, as libpq does at connect time: unset
//! keywords come from `PG*` environment variables, then libpq's defaults; the password comes from
//! the string, `PGPASSWORD` or the password file; TLS files are located and checked.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::conninfo::{ConnInfo, ConnInfoError, KEYWORDS, Support, encode, keyword};
use super::env::Env;
use super::pgpass;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Plaintext first; TLS (unverified) if the server rejects plaintext.
    Allow,
    /// TLS (unverified) if the server supports it, else plaintext. The default.
    Prefer,
    /// TLS, unverified, unless a root certificate file exists (then as `VerifyCa`).
    Require,
    /// TLS; the certificate chain must lead to a trusted root.
    VerifyCa,
    /// TLS; chain verified and the certificate must match the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "\"{s}\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetSessionAttrs {
    /// Any server.
    Any,
    /// A server whose sessions are read-write by default.
    ReadWrite,
    /// A server whose sessions are read-only by default.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery (hot standby).
    Standby,
    /// A standby if one is reachable, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use it when TLS and SCRAM-SHA-256-PLUS are available. The default.
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

impl ChannelBinding {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// Where a server is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]"),
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One server to try: a host, an optional address that overrides name resolution (`hostaddr`),
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host; also the name checked against the server certificate.
    pub host: Host,
    /// The IP address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    /// The TCP port, or the Unix socket's number.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Unix(dir) => {
                write!(f, "{}", dir.join(format!(".s.PGSQL.{}", self.port)).display())
            }
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// Where the password came from (never the password itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PasswordSource {
    /// No password was found; the server may not need one.
    None,
    /// The `password` keyword of the connection string.
    ConnInfo,
    /// The `PGPASSWORD` environment variable.
    Environment,
    /// A line of this password file.
    Passfile(PathBuf),
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::None => f.write_str("no password"),
            PasswordSource::ConnInfo => f.write_str("the connection string"),
            PasswordSource::Environment => f.write_str("PGPASSWORD"),
            PasswordSource::Passfile(p) => write!(f, "the password file {}", p.display()),
        }
    }
}

/// Trusted roots for verifying the server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SslRootCert {
    /// A PEM file of certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// How the server certificate is checked (after libpq's `sslmode` rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// Any certificate (handshake signatures are still checked).
    None,
    /// The chain must lead to a trusted root.
    Chain,
    /// The chain, and the certificate must match the host name.
    Full,
}

/// Connection settings with everything libpq would fill in. `Debug` and [`Resolved::display`]
/// never show the password.
#[derive(Clone)]
pub struct Resolved {
    pub(super) targets: Vec<Target>,
    pub(super) dbname: String,
    pub(super) user: String,
    pub(super) password: Option<String>,
    pub(super) password_source: PasswordSource,
    /// When a password file exists but was ignored (permissions): why, for error messages.
    pub(super) passfile_note: Option<String>,
    pub(super) sslmode: SslMode,
    pub(super) verify: Verify,
    pub(super) sslrootcert: Option<SslRootCert>,
    pub(super) sslcert: Option<PathBuf>,
    pub(super) sslkey: Option<PathBuf>,
    pub(super) sslsni: bool,
    pub(super) tls12: bool,
    pub(super) tls13: bool,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) application_name: Option<String>,
    pub(super) fallback_application_name: Option<String>,
    pub(super) options: Option<String>,
    pub(super) target_session_attrs: TargetSessionAttrs,
    pub(super) channel_binding: ChannelBinding,
    pub(super) keepalives: bool,
    pub(super) keepalives_idle: Option<Duration>,
    pub(super) keepalives_interval: Option<Duration>,
    pub(super) keepalives_count: Option<u32>,
    pub(super) tcp_user_timeout: Option<Duration>,
    pub(super) load_balance_hosts: bool,
    /// pgtransit writes here although a cutover fenced it (read-only by default): the old
    /// source a rollback window streams into (each session sets
    /// `default_transaction_read_only = off` for itself).
    pub(super) writes_when_fenced: bool,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("targets", &self.targets)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_source", &self.password_source)
            .field("sslmode", &self.sslmode)
            .field("verify", &self.verify)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("sslsni", &self.sslsni)
            .field("tls12", &self.tls12)
            .field("tls13", &self.tls13)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .field("fallback_application_name", &self.fallback_application_name)
            .field("options", &self.options)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("channel_binding", &self.channel_binding)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("load_balance_hosts", &self.load_balance_hosts)
            .finish()
    }
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl Resolved {
    /// The same endpoint, where pgtransit's sessions write although a cutover fenced the
    /// database (the old source of a rollback window).
    pub fn writing_when_fenced(mut self) -> Resolved {
        self.writes_when_fenced = true;
        self
    }

    /// The servers to try, in order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The hosts, in order (one per target).
    pub fn hosts(&self) -> Vec<&Host> {
        self.targets.iter().map(|t| &t.host).collect()
    }

    /// The ports, one per target.
    pub fn ports(&self) -> Vec<u16> {
        self.targets.iter().map(|t| t.port).collect()
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Where the password came from.
    pub fn password_source(&self) -> &PasswordSource {
        &self.password_source
    }

    /// The `sslmode`.
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// The trusted roots used to verify the server (`None` when it is not verified).
    pub fn sslrootcert(&self) -> Option<&SslRootCert> {
        self.sslrootcert.as_ref()
    }

    /// The client certificate file sent to the server, if any.
    pub fn sslcert(&self) -> Option<&Path> {
        self.sslcert.as_deref()
    }

    /// The client certificate's private key file, if any.
    pub fn sslkey(&self) -> Option<&Path> {
        self.sslkey.as_deref()
    }

    /// Whether the server certificate's chain is verified (`verify-ca`, `verify-full`, or
    /// `require` with a root certificate file).
    pub fn verifies_certificate(&self) -> bool {
        self.verify != Verify::None
    }

    /// Whether the server certificate must match the host name (`verify-full`).
    pub fn verifies_host_name(&self) -> bool {
        self.verify == Verify::Full
    }

    /// The per-host connection timeout (`None`: wait indefinitely).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The user's `application_name` (or `PGAPPNAME`), which overrides pgtransit's own.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The `fallback_application_name` from the connection string.
    pub fn fallback_application_name(&self) -> Option<&str> {
        self.fallback_application_name.as_deref()
    }

    /// Command-line options sent to the server (`options`).
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// The `target_session_attrs`.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// The `channel_binding`.
    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// These settings as libpq environment variables (`PGHOST`, `PGPORT`, ..., `PGPASSWORD`),
    /// for a libpq program pgtransit runs (pg_dump): the same server, role, password and TLS
    /// checks as pgtransit's own sessions. Passed in a child's environment only, never shown.
    pub fn libpq_env(&self, application_name: &str) -> Vec<(&'static str, String)> {
        let join = |f: &dyn Fn(&Target) -> String| {
            self.targets.iter().map(f).collect::<Vec<_>>().join(",")
        };
        let mut env = vec![
            // Bare names (libpq's host list has no brackets around IPv6 addresses).
            (
                "PGHOST",
                join(&|t| match &t.host {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => p.display().to_string(),
                }),
            ),
            ("PGPORT", join(&|t| t.port.to_string())),
            ("PGDATABASE", self.dbname.clone()),
            ("PGUSER", self.user.clone()),
            ("PGSSLMODE", self.sslmode.as_str().to_string()),
            ("PGAPPNAME", self.application_name.clone().unwrap_or(application_name.into())),
            ("PGTARGETSESSIONATTRS", self.target_session_attrs.as_str().to_string()),
            ("PGCHANNELBINDING", self.channel_binding.as_str().to_string()),
        ];
        if self.targets.iter().any(|t| t.hostaddr.is_some()) {
            env.push((
                "PGHOSTADDR",
                join(&|t| t.hostaddr.map(|a| a.to_string()).unwrap_or_default()),
            ));
        }
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        match &self.sslrootcert {
            Some(SslRootCert::File(f)) => env.push(("PGSSLROOTCERT", f.display().to_string())),
            Some(SslRootCert::System) => env.push(("PGSSLROOTCERT", "system".into())),
            None => {}
        }
        if let Some(c) = &self.sslcert {
            env.push(("PGSSLCERT", c.display().to_string()));
        }
        if let Some(k) = &self.sslkey {
            env.push(("PGSSLKEY", k.display().to_string()));
        }
        if let Some(o) = &self.options {
            env.push(("PGOPTIONS", o.clone()));
        }
        if let Some(t) = self.connect_timeout {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(2).to_string()));
        }
        env
    }

    /// Whether a password is available (without revealing it).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// A URL for messages, e.g.
    /// `postgresql://migrator@10.0.0.5:5432/pagila?sslmode=verify-full`. Never contains the
    /// password.
    pub fn display(&self) -> String {
        let mut out = format!("postgresql://{}@", encode(&self.user));
        let mut query: Vec<(&str, String)> = Vec::new();
        if self.targets.iter().all(|t| matches!(t.host, Host::Tcp(_))) {
            let hosts: Vec<String> = self
                .targets
                .iter()
                .map(|t| match &t.host {
                    Host::Tcp(h) if h.contains(':') => {
                        format!("[{}]:{}", encode(h).replace("%3A", ":"), t.port)
                    }
                    Host::Tcp(h) => format!("{}:{}", encode(h), t.port),
                    Host::Unix(_) => unreachable!("all hosts are TCP"),
                })
                .collect();
            out.push_str(&hosts.join(","));
        } else {
            let hosts: Vec<String> = self.targets.iter().map(|t| t.host.to_string()).collect();
            let ports: Vec<String> = self.targets.iter().map(|t| t.port.to_string()).collect();
            query.push(("host", hosts.join(",")));
            query.push(("port", ports.join(",")));
        }
        out.push('/');
        out.push_str(&encode(&self.dbname));
        if self.targets.iter().any(|t| t.hostaddr.is_some()) {
            let addrs: Vec<String> = self
                .targets
                .iter()
                .map(|t| t.hostaddr.map(|a| a.to_string()).unwrap_or_default())
                .collect();
            query.push(("hostaddr", addrs.join(",")));
        }
        query.push(("sslmode", self.sslmode.to_string()));
        if self.target_session_attrs != TargetSessionAttrs::Any {
            query.push(("target_session_attrs", self.target_session_attrs.as_str().to_owned()));
        }
        let query: Vec<String> =
            query.into_iter().map(|(k, v)| format!("{k}={}", encode_query(&v))).collect();
        out.push('?');
        out.push_str(&query.join("&"));
        out
    }
}

/// Like [`encode`] but keeps `/`, `,` and `:` readable (valid in a query value).
fn encode_query(s: &str) -> String {
    encode(s).replace("%2F", "/").replace("%2C", ",").replace("%3A", ":")
}

/// A setting and where it came from.
struct Setting {
    value: String,
    /// The environment variable it came from (`None`: the connection string).
    env: Option<&'static str>,
}

struct Lookup<'a> {
    info: &'a ConnInfo,
    env: &'a Env,
}

impl Lookup<'_> {
    /// The non-empty value from the connection string, else from the keyword's variable.
    fn get(&self, name: &str) -> Option<Setting> {
        if let Some(v) = self.info.get(name).filter(|v| !v.is_empty()) {
            return Some(Setting { value: v.to_owned(), env: None });
        }
        let var = keyword(name)?.env?;
        self.env.var(var).map(|v| Setting { value: v.to_owned(), env: Some(var) })
    }

    fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConnInfoError> {
        match self.get(name) {
            None => Ok(None),
            Some(s) => parse(s.value.trim())
                .map(Some)
                .map_err(|reason| ConnInfoError::invalid(name, s.env, reason)),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ConnInfoError> {
        self.parse(name, |v| v.parse::<i64>().map_err(|_| format!("\"{v}\" is not an integer")))
    }

    fn bool01(&self, name: &str) -> Result<Option<bool>, ConnInfoError> {
        self.parse(name, |v| match v.parse::<i64>() {
            Ok(n) => Ok(n != 0),
            Err(_) => Err(format!("\"{v}\" is not 0 or 1")),
        })
    }

    fn seconds(&self, name: &str) -> Result<Option<Duration>, ConnInfoError> {
        Ok(self.int(name)?.filter(|n| *n > 0).map(|n| Duration::from_secs(n.unsigned_abs())))
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|p| p.trim().to_owned()).collect()
}

/// The home-relative default path `~/.postgresql/<name>`.
fn home_file(env: &Env, name: &str) -> Option<PathBuf> {
    env.home().map(|h| h.join(".postgresql").join(name))
}

pub(super) fn resolve(info: &ConnInfo, env: &Env) -> Result<Resolved, ConnInfoError> {
    let l = Lookup { info, env };
    warn_unsupported_env(info, env);

    let targets = resolve_targets(&l, env)?;

    let user = match l.get("user") {
        Some(s) => s.value,
        None => env.os_user().map(str::to_owned).ok_or_else(|| {
            ConnInfoError::invalid("user", None, "no user name given and the OS user is unknown")
        })?,
    };
    let dbname = l.get("dbname").map_or_else(|| user.clone(), |s| s.value);

    let (password, password_source, passfile_note) =
        resolve_password(&l, env, &targets, &dbname, &user);

    let connect_timeout = l.int("connect_timeout")?.filter(|n| *n > 0).map(|n| {
        // libpq: the minimum is 2 seconds.
        Duration::from_secs(n.max(2).unsigned_abs())
    });

    let target_session_attrs = l
        .parse("target_session_attrs", |v| {
            Ok(match v {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                "read-only" => TargetSessionAttrs::ReadOnly,
                "primary" => TargetSessionAttrs::Primary,
                "standby" => TargetSessionAttrs::Standby,
                "prefer-standby" => TargetSessionAttrs::PreferStandby,
                _ => {
                    return Err(format!(
                        "\"{v}\" is not one of any, read-write, read-only, primary, standby, \
                         prefer-standby"
                    ));
                }
            })
        })?
        .unwrap_or(TargetSessionAttrs::Any);

    let channel_binding = l
        .parse("channel_binding", |v| {
            Ok(match v {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => return Err(format!("\"{v}\" is not one of disable, prefer, require")),
            })
        })?
        .unwrap_or(ChannelBinding::Prefer);

    let load_balance_hosts = l
        .parse("load_balance_hosts", |v| match v {
            "disable" => Ok(false),
            "random" => Ok(true),
            _ => Err(format!("\"{v}\" is not one of disable, random")),
        })?
        .unwrap_or(false);

    let tcp_user_timeout = l
        .int("tcp_user_timeout")?
        .filter(|n| *n > 0)
        .map(|n| Duration::from_millis(n.unsigned_abs()));
    let keepalives_count =
        l.int("keepalives_count")?.filter(|n| *n > 0).map(|n| u32::try_from(n).unwrap_or(u32::MAX));

    let mut resolved = Resolved {
        writes_when_fenced: false,
        targets,
        dbname,
        user,
        password,
        password_source,
        passfile_note,
        sslmode: SslMode::Prefer,
        verify: Verify::None,
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        sslsni: l.bool01("sslsni")?.unwrap_or(true),
        tls12: true,
        tls13: true,
        connect_timeout,
        application_name: l.get("application_name").map(|s| s.value),
        fallback_application_name: l.get("fallback_application_name").map(|s| s.value),
        options: l.get("options").map(|s| s.value),
        target_session_attrs,
        channel_binding,
        keepalives: l.bool01("keepalives")?.unwrap_or(true),
        keepalives_idle: l.seconds("keepalives_idle")?,
        keepalives_interval: l.seconds("keepalives_interval")?,
        keepalives_count,
        tcp_user_timeout,
        load_balance_hosts,
    };
    resolve_tls(&l, env, &mut resolved)?;
    Ok(resolved)
}

/// Environment variables for keywords pgtransit does not support are ignored, with a warning.
fn warn_unsupported_env(info: &ConnInfo, env: &Env) {
    for kw in KEYWORDS {
        let (Support::No { tolerated, .. }, Some(var)) = (kw.support, kw.env) else {
            continue;
        };
        if info.get(kw.name).is_some() {
            continue;
        }
        if let Some(v) = env.var(var)
            && !tolerated.iter().any(|t| t.eq_ignore_ascii_case(v.trim()))
        {
            tracing::warn!(
                variable = var,
                "{var} is set, but pgtransit does not support \"{}\"; ignoring it",
                kw.name
            );
        }
    }
}

/// libpq's host/hostaddr/port rules: comma-separated lists; hostaddr must have as many entries
/// as host; port has one entry or one per host; empty entries take the defaults.
fn resolve_targets(l: &Lookup<'_>, env: &Env) -> Result<Vec<Target>, ConnInfoError> {
    let host = l.get("host");
    let hostaddr = l.get("hostaddr");
    let port = l.get("port");

    let hosts = host.as_ref().map(|s| split_list(&s.value));
    let addrs = match &hostaddr {
        None => None,
        Some(s) => Some(
            split_list(&s.value)
                .into_iter()
                .map(|a| {
                    if a.is_empty() {
                        return Ok(None);
                    }
                    a.parse::<IpAddr>().map(Some).map_err(|_| {
                        ConnInfoError::invalid(
                            "hostaddr",
                            s.env,
                            format!("\"{a}\" is not an IP address (use host for names)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let count = match (&hosts, &addrs) {
        (Some(h), Some(a)) if h.len() != a.len() => {
            return Err(ConnInfoError::invalid(
                "hostaddr",
                hostaddr.as_ref().and_then(|s| s.env),
                format!("{} addresses given for {} hosts", a.len(), h.len()),
            ));
        }
        (Some(h), _) => h.len(),
        (None, Some(a)) => a.len(),
        (None, None) => 1,
    };

    let ports: Vec<u16> = match &port {
        None => vec![5432; count],
        Some(s) => {
            let list = split_list(&s.value)
                .into_iter()
                .map(|p| {
                    if p.is_empty() {
                        return Ok(5432);
                    }
                    match p.parse::<u16>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(ConnInfoError::invalid(
                            "port",
                            s.env,
                            format!("\"{p}\" is not a port number"),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            match list.len() {
                1 => vec![list[0]; count],
                n if n == count => list,
                n => {
                    return Err(ConnInfoError::invalid(
                        "port",
                        s.env,
                        format!("{n} ports given for {count} hosts"),
                    ));
                }
            }
        }
    };

    Ok((0..count)
        .map(|i| {
            let name = hosts.as_ref().map(|h| h[i].clone()).unwrap_or_default();
            let addr = addrs.as_ref().and_then(|a| a[i]);
            let host = if name.starts_with('/') {
                Host::Unix(PathBuf::from(name))
            } else if !name.is_empty() {
                Host::Tcp(name)
            } else if let Some(addr) = addr {
                Host::Tcp(addr.to_string())
            } else {
                Host::Unix(env.socket_dir().to_owned())
            };
            Target { host, hostaddr: addr, port: ports[i] }
        })
        .collect())
}

/// `password` → `PGPASSWORD` → the password file (first target with a matching line).
fn resolve_password(
    l: &Lookup<'_>,
    env: &Env,
    targets: &[Target],
    dbname: &str,
    user: &str,
) -> (Option<String>, PasswordSource, Option<String>) {
    if let Some(s) = l.get("password") {
        let source =
            if s.env.is_some() { PasswordSource::Environment } else { PasswordSource::ConnInfo };
        return (Some(s.value), source, None);
    }
    let path = match l.get("passfile") {
        Some(s) => PathBuf::from(s.value),
        None => match env.home() {
            Some(home) => home.join(".pgpass"),
            None => return (None, PasswordSource::None, None),
        },
    };
    let hosts: Vec<(String, String)> = targets
        .iter()
        .map(|t| {
            let host = match &t.host {
                Host::Tcp(h) => h.clone(),
                // libpq: the default socket directory matches "localhost".
                Host::Unix(dir) if dir == env.socket_dir() => "localhost".to_owned(),
                Host::Unix(dir) => dir.display().to_string(),
            };
            (host, t.port.to_string())
        })
        .collect();
    let lookups: Vec<pgpass::Lookup<'_>> =
        hosts.iter().map(|(host, port)| pgpass::Lookup { host, port, dbname, user }).collect();
    match pgpass::lookup(&path, &lookups) {
        Some(pw) => (Some(pw), PasswordSource::Passfile(path), None),
        None => (None, PasswordSource::None, pgpass::ignored_because(&path)),
    }
}

fn resolve_tls(l: &Lookup<'_>, env: &Env, r: &mut Resolved) -> Result<(), ConnInfoError> {
    let rootcert = l.get("sslrootcert");
    let system = rootcert.as_ref().is_some_and(|s| s.value == "system");
    let mode = l.parse("sslmode", |v| v.parse::<SslMode>())?;
    r.sslmode = mode.unwrap_or(if system { SslMode::VerifyFull } else { SslMode::Prefer });
    if system && r.sslmode != SslMode::VerifyFull {
        return Err(ConnInfoError::InvalidValue {
            keyword: "sslmode".to_owned(),
            origin: l
                .get("sslmode")
                .and_then(|s| s.env)
                .map(|e| format!(" (from {e})"))
                .unwrap_or_default(),
            reason: format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system",
                r.sslmode
            ),
            help: Some("use sslmode=verify-full (the default with sslrootcert=system)".to_owned()),
        });
    }
    if r.sslmode == SslMode::Disable {
        return Ok(());
    }

    let (min, max) = (l.get("ssl_min_protocol_version"), l.get("ssl_max_protocol_version"));
    let version = |s: &Setting, name: &str| match s.value.as_str() {
        "TLSv1" | "TLSv1.1" => Ok(11),
        "TLSv1.2" => Ok(12),
        "TLSv1.3" => Ok(13),
        v => Err(ConnInfoError::invalid(
            name,
            s.env,
            format!("\"{v}\" is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
        )),
    };
    let min = min.map(|s| version(&s, "ssl_min_protocol_version")).transpose()?.unwrap_or(12);
    let max_setting = max;
    let max = max_setting
        .as_ref()
        .map(|s| version(s, "ssl_max_protocol_version"))
        .transpose()?
        .unwrap_or(13);
    if max < 12 {
        return Err(ConnInfoError::invalid(
            "ssl_max_protocol_version",
            max_setting.and_then(|s| s.env),
            "TLS versions before 1.2 are not supported",
        ));
    }
    if min > max {
        return Err(ConnInfoError::invalid(
            "ssl_min_protocol_version",
            None,
            "the minimum TLS version is above the maximum",
        ));
    }
    r.tls12 = min <= 12;
    r.tls13 = max >= 13;

    // Trusted roots: sslrootcert, else ~/.postgresql/root.crt.
    let root_file: Option<PathBuf> = match &rootcert {
        Some(_) if system => None,
        Some(s) => Some(PathBuf::from(&s.value)),
        None => home_file(env, "root.crt"),
    };
    let root_exists = root_file.as_ref().is_some_and(|p| p.exists());
    r.verify = match r.sslmode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        // libpq's backward-compatible quirk: with a root certificate file, require = verify-ca.
        SslMode::Require if root_exists => Verify::Chain,
        _ => Verify::None,
    };
    if r.verify != Verify::None {
        r.sslrootcert = if system {
            Some(SslRootCert::System)
        } else {
            match root_file {
                Some(path) if root_exists => Some(SslRootCert::File(path)),
                Some(path) => {
                    return Err(ConnInfoError::TlsFile {
                        message: format!(
                            "root certificate file \"{}\" does not exist (needed for sslmode={})",
                            path.display(),
                            r.sslmode
                        ),
                        help: Some(
                            "provide the file, use the system's trusted roots with \
                             sslrootcert=system, or use sslmode=require to skip verification"
                                .to_owned(),
                        ),
                    });
                }
                None => {
                    return Err(ConnInfoError::TlsFile {
                        message: format!(
                            "no root certificate file for sslmode={} (no home directory to \
                             find ~/.postgresql/root.crt)",
                            r.sslmode
                        ),
                        help: Some("set sslrootcert to the CA certificate file".to_owned()),
                    });
                }
            }
        };
    }

    // Client certificate: sslcert, else ~/.postgresql/postgresql.crt, used when it exists.
    let cert = l
        .get("sslcert")
        .map(|s| PathBuf::from(s.value))
        .or_else(|| home_file(env, "postgresql.crt"));
    let Some(cert) = cert.filter(|p| p.exists()) else {
        return Ok(());
    };
    let key = l
        .get("sslkey")
        .map(|s| PathBuf::from(s.value))
        .or_else(|| home_file(env, "postgresql.key"))
        .filter(|p| p.exists())
        .ok_or_else(|| ConnInfoError::TlsFile {
            message: format!(
                "client certificate \"{}\" is present, but not its private key file",
                cert.display()
            ),
            help: Some("set sslkey to the key file, or remove the certificate".to_owned()),
        })?;
    check_key_permissions(&key)?;
    r.sslcert = Some(cert);
    r.sslkey = Some(key);
    Ok(())
}

/// libpq refuses a private key the group or others can read (0640 is allowed if root owns it).
fn check_key_permissions(key: &Path) -> Result<(), ConnInfoError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| ConnInfoError::TlsFile {
        message: format!("cannot read private key file \"{}\": {e}", key.display()),
        help: None,
    })?;
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mode = meta.mode();
    let bad = if Some(meta.uid()) == euid {
        mode & 0o077 != 0
    } else if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        false
    };
    if bad || !meta.is_file() {
        return Err(ConnInfoError::TlsFile {
            message: format!(
                "private key file \"{}\" has group or world access (mode {:o})",
                key.display(),
                mode & 0o777
            ),
            help: Some("chmod 0600 the key file (0640 is allowed if root owns it)".to_owned()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_map(vars.iter().copied(), None)
            .with_os_user("osuser")
            .with_socket_dir("/var/run/postgresql")
    }

    fn resolve(s: &str, env: &Env) -> Resolved {
        ConnInfo::parse(s).unwrap().resolve(env).unwrap()
    }

    fn url(rest: &str) -> String {
        format!("{}://{}", "postgresql", rest)
    }

    #[test]
    fn defaults_like_libpq() {
        let r = resolve("", &env(&[]));
        assert_eq!(
            r.targets(),
            &[Target {
                host: Host::Unix("/var/run/postgresql".into()),
                hostaddr: None,
                port: 5432
            }]
        );
        assert_eq!(r.user(), "osuser");
        assert_eq!(r.dbname(), "osuser");
        assert_eq!(r.sslmode(), SslMode::Prefer);
        assert_eq!(r.password_source(), &PasswordSource::None);
        assert_eq!(r.target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(r.channel_binding(), ChannelBinding::Prefer);
        assert_eq!(r.connect_timeout(), None);
        assert!(!r.verifies_certificate());
        // dbname defaults to the resolved user, not the OS user.
        assert_eq!(resolve("user=alice", &env(&[])).dbname(), "alice");
    }

    #[test]
    fn environment_fallback() {
        let e = env(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGDATABASE", "envdb"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGOPTIONS", "-c work_mem=64MB"),
            ("PGTARGETSESSIONATTRS", "primary"),
            ("PGCHANNELBINDING", "require"),
        ]);
        let r = resolve("", &e);
        assert_eq!(r.hosts(), vec![&Host::Tcp("envhost".into())]);
        assert_eq!(r.ports(), vec![6000]);
        assert_eq!((r.dbname(), r.user()), ("envdb", "envuser"));
        assert_eq!(r.password_source(), &PasswordSource::Environment);
        assert!(r.has_password());
        assert_eq!(r.sslmode(), SslMode::Require);
        assert_eq!(r.application_name(), Some("envapp"));
        assert_eq!(r.connect_timeout(), Some(Duration::from_secs(2)), "1 means 2, as in libpq");
        assert_eq!(r.options(), Some("-c work_mem=64MB"));
        assert_eq!(r.target_session_attrs(), TargetSessionAttrs::Primary);
        assert_eq!(r.channel_binding(), ChannelBinding::Require);

        // The connection string wins over the environment.
        let r = resolve("host=h port=7000 dbname=d user=u password=p sslmode=disable", &e);
        assert_eq!((r.hosts()[0], r.ports()[0]), (&Host::Tcp("h".into()), 7000));
        assert_eq!((r.dbname(), r.user()), ("d", "u"));
        assert_eq!(r.password_source(), &PasswordSource::ConnInfo);
        assert_eq!(r.sslmode(), SslMode::Disable);

        // Empty values count as unset.
        let r = resolve("host='' user=''", &e);
        assert_eq!(r.hosts(), vec![&Host::Tcp("envhost".into())]);
        assert_eq!(r.user(), "envuser");
    }

    #[test]
    fn invalid_values_name_their_origin() {
        let e = ConnInfo::parse("").unwrap().resolve(&env(&[("PGSSLMODE", "verify")])).unwrap_err();
        assert!(e.to_string().contains("sslmode") && e.to_string().contains("PGSSLMODE"), "{e}");
        let e = ConnInfo::parse("port=abc").unwrap().resolve(&env(&[])).unwrap_err();
        assert!(e.to_string().contains("\"abc\" is not a port number"), "{e}");
        let e = ConnInfo::parse("host=a,b port=1,2,3").unwrap().resolve(&env(&[])).unwrap_err();
        assert!(e.to_string().contains("3 ports given for 2 hosts"), "{e}");
        let e =
            ConnInfo::parse("host=a,b hostaddr=10.0.0.1").unwrap().resolve(&env(&[])).unwrap_err();
        assert!(e.to_string().contains("hostaddr"), "{e}");
        assert!(ConnInfo::parse("hostaddr=db.example.com").unwrap().resolve(&env(&[])).is_err());
        assert!(ConnInfo::parse("connect_timeout=soon").unwrap().resolve(&env(&[])).is_err());
        assert!(ConnInfo::parse("target_session_attrs=rw").unwrap().resolve(&env(&[])).is_err());
    }

    #[test]
    fn multiple_hosts_ports_and_hostaddr() {
        let r = resolve(&url("h1,h2:5433,[::1]:5434/db"), &env(&[("PGPORT", "9999")]));
        assert_eq!(
            r.hosts(),
            vec![&Host::Tcp("h1".into()), &Host::Tcp("h2".into()), &Host::Tcp("::1".into())]
        );
        // An empty port entry is 5432, not PGPORT (as in libpq).
        assert_eq!(r.ports(), vec![5432, 5433, 5434]);
        let r = resolve("host=a,b port=6000", &env(&[]));
        assert_eq!(r.ports(), vec![6000, 6000]);
        let r = resolve("host=db.example.com,/tmp hostaddr=10.0.0.5,", &env(&[]));
        assert_eq!(r.targets()[0].hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(r.targets()[1].host, Host::Unix("/tmp".into()));
        let r = resolve("hostaddr=10.0.0.7", &env(&[]));
        assert_eq!(r.hosts(), vec![&Host::Tcp("10.0.0.7".into())]);
        let r = resolve("host=,h2", &env(&[]));
        assert_eq!(r.hosts()[0], &Host::Unix("/var/run/postgresql".into()));
    }

    #[test]
    fn display_is_redacted() {
        let s = url("migrator:hunter2@10.0.0.5:5432/pagila?sslmode=verify-full&sslrootcert=system");
        let r = resolve(&s, &env(&[]));
        assert_eq!(r.display(), "postgresql://migrator@10.0.0.5:5432/pagila?sslmode=verify-full");
        assert!(!format!("{r:?}").contains("hunter2"));
        assert!(format!("{r:?}").contains("<redacted>"));
        let r = resolve("user=a@b password=hunter2 host=h1,::1 port=1,2 dbname='my db'", &env(&[]));
        assert_eq!(r.display(), "postgresql://a%40b@h1:1,[::1]:2/my%20db?sslmode=prefer");
        let r =
            resolve("host=/tmp target_session_attrs=primary", &env(&[("PGPASSWORD", "hunter2")]));
        assert_eq!(
            r.display(),
            "postgresql://osuser@/osuser?host=/tmp&port=5432&sslmode=prefer&\
             target_session_attrs=primary"
        );
        assert!(!format!("{r:?} {r}").contains("hunter2"));
    }

    fn write_pgpass(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(".pgpass");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn passfile_lookup() {
        let home = crate::conn::testdir::tempdir().unwrap();
        let path = write_pgpass(
            home.path(),
            "db1:5432:app:alice:from-file\nlocalhost:5432:*:*:local\n/tmp:5432:*:*:tmp-socket\n",
            0o600,
        );
        let e = Env::from_map([("USER", "alice")], Some(home.path().to_owned()))
            .with_socket_dir("/var/run/postgresql");
        let r = resolve("host=db1 dbname=app", &e);
        assert_eq!(r.password_source(), &PasswordSource::Passfile(path.clone()));
        assert!(r.has_password());
        // The default socket directory matches "localhost"; other directories match literally.
        let r = resolve("dbname=app", &e);
        assert_eq!(r.password.as_deref(), Some("local"));
        let r = resolve("host=/tmp dbname=app", &e);
        assert_eq!(r.password.as_deref(), Some("tmp-socket"));
        // First host with a matching line.
        let r = resolve("host=nomatch,db1 dbname=app", &e);
        assert_eq!(r.password.as_deref(), Some("from-file"));
        // PGPASSWORD comes before the file; the explicit password before both.
        let e2 =
            Env::from_map([("USER", "alice"), ("PGPASSWORD", "env")], Some(home.path().into()));
        assert_eq!(resolve("host=db1 dbname=app", &e2).password.as_deref(), Some("env"));
        assert_eq!(
            resolve("host=db1 dbname=app password=lit", &e2).password.as_deref(),
            Some("lit")
        );
        // Group/world-readable files are ignored.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = resolve("host=db1 dbname=app", &e);
        assert_eq!(r.password_source(), &PasswordSource::None);
    }

    #[test]
    fn passfile_keyword_and_variable() {
        let dir = crate::conn::testdir::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for (p, pw) in [(&a, "pw-a"), (&b, "pw-b")] {
            std::fs::write(p, format!("*:*:*:*:{pw}\n")).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = env(&[("PGPASSFILE", b.to_str().unwrap())]);
        assert_eq!(resolve("host=h", &e).password.as_deref(), Some("pw-b"));
        let s = format!("host=h passfile='{}'", a.display());
        assert_eq!(resolve(&s, &e).password.as_deref(), Some("pw-a"));
        assert_eq!(resolve(&s, &e).password_source(), &PasswordSource::Passfile(a));
    }

    #[test]
    fn tls_settings() {
        let home = crate::conn::testdir::tempdir().unwrap();
        let e = Env::from_map([("USER", "u")], Some(home.path().to_owned()));
        // verify-* needs a root certificate file; the error names it.
        let err = ConnInfo::parse("sslmode=verify-full").unwrap().resolve(&e).unwrap_err();
        let root = home.path().join(".postgresql/root.crt");
        assert!(err.to_string().contains(&root.display().to_string()), "{err}");
        let err = ConnInfo::parse("sslmode=verify-ca sslrootcert=/nonexistent/ca.pem")
            .unwrap()
            .resolve(&e)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        // require without a root file does not verify; with one it behaves like verify-ca.
        let r = resolve("sslmode=require", &e);
        assert!(!r.verifies_certificate());
        assert!(!resolve("sslmode=require sslrootcert=/nonexistent", &e).verifies_certificate());
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        std::fs::write(&root, "").unwrap();
        let r = resolve("sslmode=require", &e);
        assert!(r.verifies_certificate() && !r.verifies_host_name());
        assert_eq!(r.sslrootcert(), Some(&SslRootCert::File(root)));
        let r = resolve("sslmode=verify-full", &e);
        assert!(r.verifies_host_name());
        assert!(!resolve("sslmode=prefer", &e).verifies_certificate());
        // sslrootcert=system: verify-full by default, weaker modes refused.
        let r = resolve("sslrootcert=system", &e);
        assert_eq!(r.sslmode(), SslMode::VerifyFull);
        assert_eq!(r.sslrootcert(), Some(&SslRootCert::System));
        assert!(
            ConnInfo::parse("sslrootcert=system sslmode=require").unwrap().resolve(&e).is_err()
        );
        // TLS versions.
        let r = resolve("ssl_min_protocol_version=TLSv1.3", &e);
        assert!(!r.tls12 && r.tls13);
        assert!(ConnInfo::parse("ssl_max_protocol_version=TLSv1.1").unwrap().resolve(&e).is_err());
    }

    #[test]
    fn client_certificates() {
        let home = crate::conn::testdir::tempdir().unwrap();
        let e = Env::from_map([("USER", "u")], Some(home.path().to_owned()));
        let dir = home.path().join(".postgresql");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(resolve("", &e).sslcert(), None);
        std::fs::write(dir.join("postgresql.crt"), "").unwrap();
        let err = ConnInfo::parse("").unwrap().resolve(&e).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        let key = dir.join("postgresql.key");
        std::fs::write(&key, "").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ConnInfo::parse("").unwrap().resolve(&e).unwrap_err();
        assert!(err.to_string().contains("group or world access"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let r = resolve("", &e);
        assert_eq!(r.sslcert(), Some(dir.join("postgresql.crt").as_path()));
        assert_eq!(r.sslkey(), Some(key.as_path()));
        // No TLS, no certificates.
        assert_eq!(resolve("sslmode=disable", &e).sslcert(), None);
    }
}
