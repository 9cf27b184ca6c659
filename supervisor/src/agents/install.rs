//! Installing agents from unpacked bundle directories (`<agents_dir>/<dir>/manifest.json` +
//! `rootfs/`).
//!
//! The checks here are the ones that would otherwise fail late and obscurely inside the
//! sandbox: the rootfs exists, `exec[0]` is an executable regular file inside it (following
//! no symlink out of it), and the mount points the sandbox needs (`/proc`, `/dev`, `/tmp`)
//! exist, created here if the bundle lacks them. Signature verification of bundles arrives with
//! signed bundles; until then only `allow_unsigned` devices install anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::manifest::Manifest;

/// Most bundle directories scanned (the daemon also caps agents at `max_agents`).
const MAX_BUNDLES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading agents directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: Box<crate::config::ConfigError>,
    },
    #[error("bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
}

impl InstallError {
    /// The agent this error is probably about, for the audit record: the bundle directory's
    /// name when it is a valid agent name (the manifest may be unreadable), else empty.
    pub fn agent_hint(&self) -> String {
        let path = match self {
            InstallError::ReadDir { .. } => return String::new(),
            InstallError::Manifest { path, .. } | InstallError::Bundle { path, .. } => path,
        };
        path.file_name()
            .and_then(|n| n.to_str())
            .filter(|n| crate::config::check_name(n).is_ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// One valid bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Scans `agents_dir`: every subdirectory is a bundle. Returns valid bundles and, separately,
/// one error per invalid bundle, so one bad bundle never stops the others.
pub fn scan(agents_dir: &Path) -> Result<(Vec<Bundle>, Vec<InstallError>), InstallError> {
    let rd = std::fs::read_dir(agents_dir).map_err(|e| InstallError::ReadDir {
        path: agents_dir.to_path_buf(),
        source: e,
    })?;
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        // Directories, and the symlinks `nanoclaw install` points at installed versions.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
        .map(|e| e.path())
        .take(MAX_BUNDLES)
        .collect();
    dirs.sort();
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for dir in dirs {
        match check(&dir) {
            Ok(b) => ok.push(b),
            Err(e) => errs.push(e),
        }
    }
    // Two bundles claiming one name: neither is trusted to be the right one.
    let mut names: Vec<&str> = ok.iter().map(|b| b.manifest.name.as_str()).collect();
    names.sort_unstable();
    let dups: Vec<String> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].to_owned())
        .collect();
    if !dups.is_empty() {
        let (keep, drop): (Vec<_>, Vec<_>) = ok
            .into_iter()
            .partition(|b| !dups.contains(&b.manifest.name));
        for b in drop {
            errs.push(InstallError::Bundle {
                path: b.dir,
                reason: format!("another bundle also declares agent {}", b.manifest.name),
            });
        }
        ok = keep;
    }
    Ok((ok, errs))
}

/// Validates one bundle directory and creates its missing mount points.
pub fn check(dir: &Path) -> Result<Bundle, InstallError> {
    let bad = |reason: String| InstallError::Bundle {
        path: dir.to_path_buf(),
        reason,
    };
    let manifest =
        Manifest::load(&dir.join("manifest.json")).map_err(|e| InstallError::Manifest {
            path: dir.to_path_buf(),
            source: Box::new(e),
        })?;
    let rootfs = dir.join("rootfs");
    let meta =
        std::fs::symlink_metadata(&rootfs).map_err(|e| bad(format!("rootfs/ is missing ({e})")))?;
    if !meta.is_dir() {
        return Err(bad("rootfs is not a directory".into()));
    }
    let exec = manifest
        .exec
        .first()
        .ok_or_else(|| bad("exec is empty".into()))?;
    if manifest.runtime.is_some() {
        runtime_mount_point(&rootfs).map_err(bad)?;
    }
    if manifest.runtime.is_some() && exec.starts_with("/usr/") {
        // The program is in the runtime layer; the sandbox start checks it there.
        make_mount_points(&rootfs).map_err(bad)?;
        return Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
        });
    }
    let rel = exec.trim_start_matches('/');
    // Resolve symlinks as the sandbox would: inside the rootfs only.
    let mut path = rootfs.clone();
    for (i, comp) in Path::new(rel).components().enumerate() {
        path.push(comp);
        let m = std::fs::symlink_metadata(&path).map_err(|_| {
            bad(format!(
                "exec {exec}: {} does not exist in rootfs/",
                Path::new(rel)
                    .components()
                    .take(i + 1)
                    .collect::<PathBuf>()
                    .display()
            ))
        })?;
        if m.file_type().is_symlink() {
            return Err(bad(format!(
                "exec {exec}: symlinks in the exec path are not followed; point exec at the file"
            )));
        }
    }
    let m = std::fs::metadata(&path).map_err(|e| bad(format!("exec {exec}: {e}")))?;
    if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!(
            "exec {exec} is not an executable regular file in rootfs/"
        )));
    }
    make_mount_points(&rootfs).map_err(bad)?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        manifest,
    })
}

fn make_mount_points(rootfs: &Path) -> Result<(), String> {
    for mp in crate::sandbox::mount::MOUNT_POINTS {
        let p = rootfs.join(mp);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("rootfs/{mp} exists but is not a directory")),
            Err(_) => std::fs::create_dir(&p)
                .map_err(|e| format!("creating mount point rootfs/{mp}: {e}"))?,
        }
    }
    Ok(())
}

/// An agent on a runtime layer gets the layer at `/usr`: `rootfs/usr` must be an empty
/// directory (created when missing; anything in it would be hidden), and the merged-/usr
/// links a Debian-built interpreter needs (`/lib`, `/lib64`, `/bin`, `/sbin` into `/usr`) are
/// created where the bundle has nothing of that name.
fn runtime_mount_point(rootfs: &Path) -> Result<(), String> {
    let usr = rootfs.join("usr");
    match std::fs::symlink_metadata(&usr) {
        Ok(m) if m.is_dir() => {
            let used = std::fs::read_dir(&usr)
                .map_err(|e| format!("rootfs/usr: {e}"))?
                .next()
                .is_some();
            if used {
                return Err(
                    "rootfs/usr is not empty, but the runtime layer is mounted there and would \
                     hide it; move the agent's files elsewhere (such as /app)"
                        .into(),
                );
            }
        }
        Ok(_) => return Err("rootfs/usr exists but is not a directory".into()),
        Err(_) => std::fs::create_dir(&usr).map_err(|e| format!("creating rootfs/usr: {e}"))?,
    }
    for link in ["bin", "lib", "lib64", "sbin"] {
        let p = rootfs.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(format!("usr/{link}"), &p)
                .map_err(|e| format!("creating rootfs/{link} -> usr/{link}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MANIFEST: &str = r#"{"name":"a","version":"1","mode":"service","exec":["/bin/app"],
        "requests":{"memory":"8MiB"}}"#;

    fn bundle(dir: &Path, manifest: &str, exec_mode: Option<u32>) {
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
        if let Some(mode) = exec_mode {
            let p = dir.join("rootfs/bin/app");
            std::fs::write(&p, b"#!").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    #[test]
    fn valid_bundle_gets_mount_points() {
        let t = tempfile::tempdir().unwrap();
        bundle(t.path(), MANIFEST, Some(0o755));
        let b = check(t.path()).unwrap();
        assert_eq!(b.manifest.name, "a");
        for mp in crate::sandbox::mount::MOUNT_POINTS {
            assert!(t.path().join("rootfs").join(mp).is_dir());
        }
    }

    #[test]
    fn missing_exec_names_it() {
        let t = tempfile::tempdir().unwrap();
        bundle(t.path(), MANIFEST, None);
        let e = check(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("exec /bin/app") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn non_executable_exec_is_refused() {
        let t = tempfile::tempdir().unwrap();
        bundle(t.path(), MANIFEST, Some(0o644));
        let e = check(t.path()).unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");
    }

    #[test]
    fn symlinked_exec_is_refused() {
        let t = tempfile::tempdir().unwrap();
        bundle(t.path(), MANIFEST, None);
        std::os::unix::fs::symlink("/bin/sh", t.path().join("rootfs/bin/app")).unwrap();
        let e = check(t.path()).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn missing_rootfs_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("manifest.json"), MANIFEST).unwrap();
        let e = check(t.path()).unwrap_err().to_string();
        assert!(e.contains("rootfs/ is missing"), "{e}");
    }

    #[test]
    fn scan_skips_bad_bundles_and_duplicate_names() {
        let t = tempfile::tempdir().unwrap();
        bundle(&t.path().join("one"), MANIFEST, Some(0o755));
        bundle(&t.path().join("two"), MANIFEST, Some(0o755));
        let other = MANIFEST.replace(r#""name":"a""#, r#""name":"b""#);
        bundle(&t.path().join("three"), &other, Some(0o755));
        bundle(&t.path().join("bad"), "{", Some(0o755));
        let (ok, errs) = scan(t.path()).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].manifest.name, "b");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs.iter().any(|e| {
            e.to_string()
                .contains("another bundle also declares agent a")
        }));
    }
}
