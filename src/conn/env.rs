//! The process environment as libpq sees it: `PG*` variables, the OS user name, the home
//! directory and the default Unix-socket directory. Tests build one from a map.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Socket directories libpq builds commonly use, in the order we probe them.
const SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// Environment variables, home directory and OS user name used to resolve a [`ConnInfo`].
///
/// Only the variables libpq reads (`PG*`) plus `USER`, `LOGNAME` and `HOME` are kept.
/// `Debug` hides `PGPASSWORD`.
///
/// [`ConnInfo`]: super::ConnInfo
#[derive(Clone)]
pub struct Env {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
    os_user: Option<String>,
    socket_dir: PathBuf,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vars: BTreeMap<&str, &str> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), if k == "PGPASSWORD" { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("Env")
            .field("vars", &vars)
            .field("home", &self.home)
            .field("os_user", &self.os_user)
            .field("socket_dir", &self.socket_dir)
            .finish()
    }
}

fn kept(name: &str) -> bool {
    name.starts_with("PG") || matches!(name, "USER" | "LOGNAME" | "HOME")
}

impl Env {
    /// The current process's environment. The OS user is the effective user's `/etc/passwd`
    /// entry (as libpq's `getpwuid(geteuid())`), else `$USER`/`$LOGNAME`; the home directory is
    /// `$HOME`, else the passwd entry's.
    pub fn from_process() -> Env {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| kept(k))
            .collect();
        let passwd = passwd_entry();
        let os_user = passwd
            .as_ref()
            .map(|(name, _)| name.clone())
            .or_else(|| vars.get("USER").cloned())
            .or_else(|| vars.get("LOGNAME").cloned())
            .filter(|u| !u.is_empty());
        let home = vars
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| passwd.map(|(_, home)| home));
        Env { vars, home, os_user, socket_dir: default_socket_dir() }
    }

    /// An environment from explicit variables (for tests and embedding). The OS user comes
    /// from `USER` or `LOGNAME` in `vars`, the home directory from `home`.
    pub fn from_map<K, V>(vars: impl IntoIterator<Item = (K, V)>, home: Option<PathBuf>) -> Env
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let os_user = vars.get("USER").or_else(|| vars.get("LOGNAME")).cloned();
        Env { vars, home, os_user, socket_dir: default_socket_dir() }
    }

    /// Overrides the OS user name (the default `user`).
    pub fn with_os_user(mut self, user: impl Into<String>) -> Env {
        self.os_user = Some(user.into());
        self
    }

    /// Overrides the default Unix-socket directory (the default `host`).
    pub fn with_socket_dir(mut self, dir: impl Into<PathBuf>) -> Env {
        self.socket_dir = dir.into();
        self
    }

    /// A variable's value; empty values count as unset, as for most libpq settings.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The home directory (for `~/.pgpass` and `~/.postgresql/`).
    pub fn home(&self) -> Option<&Path> {
        self.home.as_deref()
    }

    /// The OS user name.
    pub fn os_user(&self) -> Option<&str> {
        self.os_user.as_deref()
    }

    /// The default Unix-socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
}

/// The first well-known socket directory that exists (`/tmp` as the last resort).
fn default_socket_dir() -> PathBuf {
    SOCKET_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The effective user's name and home directory from /etc/passwd. The owner of `/proc/self`
/// is the effective uid, which avoids needing libc.
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2].parse::<u32>().ok()? == uid)
            .then(|| (fields[0].to_owned(), PathBuf::from(fields[5])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_map_and_debug() {
        let env =
            Env::from_map([("PGPASSWORD", "hunter2"), ("USER", "alice"), ("PGHOST", "")], None);
        assert_eq!(env.os_user(), Some("alice"));
        assert_eq!(env.var("PGHOST"), None);
        assert_eq!(env.var("PGPASSWORD"), Some("hunter2"));
        assert!(!format!("{env:?}").contains("hunter2"));
    }

    #[test]
    fn from_process_finds_a_user() {
        let env = Env::from_process();
        assert!(env.os_user().is_some());
        assert!(env.vars.keys().all(|k| kept(k)));
    }
}
