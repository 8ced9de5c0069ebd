//! Settings for a replication-protocol session (`replication=database`), from the same resolved
//! connection settings every other connection uses: host, port, user, password (from the
//! environment or the password file), database, `sslmode` and certificates, `options`.
//!
//! The replication transport (`pgwire_replication`) has its own connector: it reaches the first
//! host of the list (libpq would try each in turn) and knows `sslmode` `disable`, `prefer`,
//! `require`, `verify-ca` and `verify-full` (`allow` is taken as `prefer`).

use pgwire_replication::{ReplicationConfig, TlsConfig};

use super::resolve::{Host, Resolved, SslMode, SslRootCert};

/// The session parameters every replication session and every apply session pin, so values are
/// written and read back in one text form (dates, intervals, floats, bytea) whatever the
/// servers' defaults.
pub const PINNED_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
];

/// The replication session settings for `slot` and `publication`.
pub fn replication_config(
    r: &Resolved,
    application_name: &str,
    slot: &str,
    publication: &str,
) -> ReplicationConfig {
    let target = &r.targets()[0];
    let password = r.password.clone().unwrap_or_default();
    let mut cfg = match &target.host {
        Host::Unix(dir) => ReplicationConfig::unix(
            dir.display().to_string(),
            target.port,
            r.user(),
            password,
            r.dbname(),
            slot,
            publication,
        ),
        Host::Tcp(host) => {
            let addr = target.hostaddr.map(|a| a.to_string()).unwrap_or_else(|| host.clone());
            let root = match &r.sslrootcert {
                Some(SslRootCert::File(p)) => Some(p.clone()),
                _ => None,
            };
            let mut tls = match r.sslmode() {
                SslMode::Disable => TlsConfig::disabled(),
                SslMode::Allow | SslMode::Prefer => {
                    TlsConfig { mode: pgwire_replication::SslMode::Prefer, ..TlsConfig::disabled() }
                }
                SslMode::Require if root.is_some() => TlsConfig::verify_ca(root),
                SslMode::Require => TlsConfig::require(),
                SslMode::VerifyCa => TlsConfig::verify_ca(root),
                SslMode::VerifyFull => TlsConfig::verify_full(root),
            };
            if target.hostaddr.is_some() {
                tls = tls.with_sni_hostname(host.clone());
            }
            if let (Some(cert), Some(key)) = (&r.sslcert, &r.sslkey) {
                tls = tls.with_client_cert(cert.clone(), key.clone());
            }
            ReplicationConfig::new(addr, r.user(), password, r.dbname(), slot, publication)
                .with_port(target.port)
                .with_tls(tls)
        }
    };
    let pinned =
        PINNED_SETTINGS.iter().map(|(k, v)| format!("-c {k}={v}")).collect::<Vec<_>>().join(" ");
    let options = match r.options() {
        Some(o) if !o.is_empty() => format!("{o} {pinned}"),
        _ => pinned,
    };
    cfg = cfg.with_options(options).with_application_name(application_name);
    cfg
}
