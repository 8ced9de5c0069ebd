//! libpq-compatible PostgreSQL connections: this module owns connection-string parsing (URI and
//! key=value forms), resolution against `PG*` environment variables and libpq defaults, password
//! lookup (`PGPASSWORD`, the password file), TLS setup with rustls (every libpq `sslmode`), and
//! connecting with retries and actionable errors.
//!
//! The flow is [`ConnInfo::parse`] → [`ConnInfo::resolve`] → [`connect`]. Passwords never
//! appear in `Debug` output, [`Resolved::display`], error messages or logs.

mod connect;
mod conninfo;
mod env;
mod pgpass;
mod replication;
mod resolve;
mod tls;
mod x509;

pub use connect::{ConnectError, ConnectErrorKind, RetryPolicy, connect, connect_with};
pub use conninfo::{ConnInfo, ConnInfoError};
pub use env::Env;
pub use replication::{PINNED_SETTINGS, replication_config};
pub use resolve::{
    ChannelBinding, Host, PasswordSource, Resolved, SslMode, SslRootCert, Target,
    TargetSessionAttrs,
};

/// A temporary directory for unit tests, removed on drop (no dev-dependency needed).
#[cfg(test)]
pub(crate) mod testdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);

    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn tempdir() -> std::io::Result<TestDir> {
        use std::os::unix::fs::PermissionsExt;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pgtransit-conn-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(TestDir(path))
    }
}
