//! Safe unpacking of an untrusted bundle archive into a fresh staging directory.
//!
//! Every path is checked before anything is created: relative, no `..`, no empty or `.`
//! components, only `manifest.json` and `rootfs/…` at the top. Files are created with
//! `openat(O_CREAT|O_EXCL|O_NOFOLLOW)` below directories opened with `O_NOFOLLOW`, so no
//! symlink — in the archive or planted by a racing process — is ever followed while writing.
//! Symlinks may point anywhere *inside* the bundle (an absolute target means the agent's own
//! root); one whose target climbs out of it is refused, as are hard links to anything but a
//! regular file unpacked earlier, device nodes, FIFOs, setuid/setgid/sticky bits, more than
//! `max_entries` entries or `max_bytes` bytes of data (decompression bombs), and data that
//! would not leave `reserve_bytes` free on the filesystem. On any error the staging directory
//! is removed; on success its contents are on disk (`syncfs`) before the caller renames it
//! into place.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::BundleError;
use super::tar::{self, Kind, TarError};

/// Bounds for one unpack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    /// Total bytes of file data.
    pub max_bytes: u64,
    /// Bytes that must stay free on the target filesystem.
    pub reserve_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_bytes: 1 << 30,
            reserve_bytes: 32 << 20,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub data_bytes: u64,
}

/// The tar stream of the archive file at `path` (gunzipped when it is gzip).
pub fn open_archive(path: &Path) -> Result<Box<dyn Read>, BundleError> {
    let io = |e| BundleError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    maybe_gunzip(f).map_err(io)
}

/// Wraps the archive stream, decompressing gzip when the stream starts with its magic.
pub fn maybe_gunzip<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match r.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(r);
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(chained))
    } else {
        Box::new(chained)
    })
}

fn bad(entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        what: entry.to_owned(),
        reason: reason.into(),
    }
}

/// The components of an archive path, refusing anything that is not a plain relative path.
fn components(path: &str) -> Result<Vec<&str>, BundleError> {
    let p = path.strip_suffix('/').unwrap_or(path);
    if p.is_empty() || p.starts_with('/') {
        return Err(bad(path, "absolute or empty path"));
    }
    let parts: Vec<&str> = p.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(bad(path, "path with `..`, `.` or an empty component"));
    }
    match parts.as_slice() {
        ["manifest.json"] | ["rootfs", ..] => Ok(parts),
        _ => Err(bad(
            path,
            "outside the bundle layout (only manifest.json and rootfs/ are allowed)",
        )),
    }
}

/// Whether symlink `target`, placed at `parts` (its own path), stays inside the bundle:
/// inside `rootfs/` for links in the root filesystem (absolute targets are the agent's root).
fn link_stays_inside(parts: &[&str], target: &str) -> bool {
    if target.is_empty() || target.contains('\0') {
        return false;
    }
    // Where resolution starts, as components below the bundle root.
    let mut at: Vec<&str> = if target.starts_with('/') {
        vec!["rootfs"]
    } else {
        parts[..parts.len() - 1].to_vec()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                // Climbing above rootfs/ leaves what the agent can see.
                if at.len() <= 1 {
                    return false;
                }
                at.pop();
            }
            c => at.push(c),
        }
    }
    at.first() == Some(&"rootfs")
}

/// Free bytes for unprivileged writers on the filesystem of `fd`.
fn free_bytes(fd: impl AsFd) -> Result<u64, io::Error> {
    let st = rustix::fs::fstatvfs(fd)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

struct Staging {
    root: OwnedFd,
    path: PathBuf,
}

impl Staging {
    /// Opens the directory that holds `parts`' last component, creating missing ones
    /// (never following a symlink on the way).
    fn parent(&self, parts: &[&str], entry: &str) -> Result<OwnedFd, BundleError> {
        let mut cur = rustix::io::dup(&self.root).map_err(|e| bad(entry, e.to_string()))?;
        for c in &parts[..parts.len() - 1] {
            let open = |dir: &OwnedFd| {
                rustix::fs::openat(
                    dir,
                    *c,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            cur = match open(&cur) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755))
                        .map_err(|e| bad(entry, format!("creating directory {c}: {e}")))?;
                    open(&cur).map_err(|e| bad(entry, format!("opening directory {c}: {e}")))?
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(bad(
                        entry,
                        format!("`{c}` on its path is not a directory (a symlink or a file)"),
                    ));
                }
                Err(e) => return Err(bad(entry, format!("opening directory {c}: {e}"))),
            };
        }
        Ok(cur)
    }
}

/// Unpacks the tar stream `archive` into `staging`, which must not exist yet.
pub fn unpack(archive: impl Read, staging: &Path, limits: Limits) -> Result<Unpacked, BundleError> {
    std::fs::create_dir(staging).map_err(|e| BundleError::Io {
        path: staging.to_path_buf(),
        source: e,
    })?;
    let result = unpack_into(archive, staging, limits);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(staging);
    }
    result
}

fn unpack_into(
    archive: impl Read,
    staging: &Path,
    limits: Limits,
) -> Result<Unpacked, BundleError> {
    let root = rustix::fs::open(
        staging,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BundleError::Io {
        path: staging.to_path_buf(),
        source: e.into(),
    })?;
    let st = Staging {
        root,
        path: staging.to_path_buf(),
    };
    let free = free_bytes(&st.root).map_err(|e| BundleError::Io {
        path: staging.to_path_buf(),
        source: e,
    })?;
    let budget = free.saturating_sub(limits.reserve_bytes);
    let mut r = tar::Reader::new(archive);
    let mut entries = 0u64;
    let mut data = 0u64;
    let mut files: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let tar_err = |e: TarError| BundleError::Archive(e.to_string());
    while let Some(h) = r.next_header().map_err(tar_err)? {
        entries += 1;
        if entries > limits.max_entries {
            return Err(bad(
                &h.path,
                format!("more than {} entries in the archive", limits.max_entries),
            ));
        }
        let parts = components(&h.path)?;
        let key = parts.join("/");
        if !seen.insert(key.clone()) {
            return Err(bad(&h.path, "appears twice in the archive"));
        }
        if h.mode & 0o7000 != 0 {
            return Err(bad(
                &h.path,
                format!("mode {:o} has setuid, setgid or sticky bits", h.mode),
            ));
        }
        let name = *parts.last().unwrap_or(&"");
        match h.kind {
            Kind::Dir => {
                let parent = st.parent(&parts, &h.path)?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(bad(&h.path, format!("creating the directory: {e}"))),
                }
            }
            Kind::File => {
                data = data.saturating_add(h.size);
                if data > limits.max_bytes {
                    return Err(bad(
                        &h.path,
                        format!(
                            "the archive holds more than {} bytes of data (limit max_bytes)",
                            limits.max_bytes
                        ),
                    ));
                }
                if data > budget {
                    return Err(BundleError::NoSpace {
                        needed: data,
                        free,
                        reserve: limits.reserve_bytes,
                    });
                }
                let parent = st.parent(&parts, &h.path)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(if h.mode & 0o111 != 0 { 0o755 } else { 0o644 }),
                )
                .map_err(|e| bad(&h.path, format!("creating the file: {e}")))?;
                let mut f = std::fs::File::from(fd);
                r.copy_data(h.size, &mut f).map_err(|e| match e {
                    TarError::Bad { reason, .. } if reason.contains("No space") => bad(
                        &h.path,
                        format!("the disk filled up while unpacking ({reason})"),
                    ),
                    other => tar_err(other),
                })?;
                f.flush().map_err(|e| bad(&h.path, e.to_string()))?;
                files.insert(key);
            }
            Kind::Symlink => {
                if !link_stays_inside(&parts, &h.link) {
                    return Err(bad(
                        &h.path,
                        format!("symlink to `{}` leaves the bundle", h.link.escape_default()),
                    ));
                }
                let parent = st.parent(&parts, &h.path)?;
                rustix::fs::symlinkat(h.link.as_str(), &parent, name)
                    .map_err(|e| bad(&h.path, format!("creating the symlink: {e}")))?;
            }
            Kind::HardLink => {
                let target = h.link.strip_suffix('/').unwrap_or(&h.link);
                if !files.contains(target) {
                    return Err(bad(
                        &h.path,
                        format!(
                            "hard link to `{}`, which is not a regular file unpacked before it",
                            h.link.escape_default()
                        ),
                    ));
                }
                let parent = st.parent(&parts, &h.path)?;
                let tparts = components(target)?;
                let tparent = st.parent(&tparts, &h.path)?;
                let tname = *tparts.last().unwrap_or(&"");
                rustix::fs::linkat(&tparent, tname, &parent, name, rustix::fs::AtFlags::empty())
                    .map_err(|e| bad(&h.path, format!("creating the hard link: {e}")))?;
                files.insert(key);
            }
        }
    }
    if !files.contains("manifest.json") {
        return Err(bad("manifest.json", "missing from the archive"));
    }
    if !seen
        .iter()
        .any(|p| p == "rootfs" || p.starts_with("rootfs/"))
    {
        return Err(bad("rootfs", "missing from the archive"));
    }
    rustix::fs::syncfs(&st.root).map_err(|e| BundleError::Io {
        path: st.path.clone(),
        source: e.into(),
    })?;
    Ok(Unpacked {
        entries,
        data_bytes: data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_plain_and_inside_the_layout() {
        assert!(components("manifest.json").is_ok());
        assert!(components("rootfs/bin/x").is_ok());
        assert!(components("rootfs/").is_ok());
        for bad in [
            "/etc/passwd",
            "rootfs/../x",
            "rootfs/./x",
            "rootfs//x",
            "other/x",
            "..",
            "",
        ] {
            assert!(components(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let at = ["rootfs", "bin", "sh"];
        assert!(link_stays_inside(&at, "busybox"));
        assert!(link_stays_inside(&at, "/bin/busybox"));
        assert!(link_stays_inside(&at, "../lib/x"));
        assert!(!link_stays_inside(&at, "../../manifest.json"));
        assert!(!link_stays_inside(&at, "../../../etc/passwd"));
        assert!(!link_stays_inside(&at, "/../etc/passwd"));
        assert!(!link_stays_inside(&at, ""));
    }

    use crate::bundle::tar::{Header, encode};

    /// An archive from (path, kind, mode, link, data).
    fn archive(entries: &[(&str, Kind, u32, &str, &[u8])]) -> Vec<u8> {
        let mut a = Vec::new();
        for (path, kind, mode, link, data) in entries {
            let h = Header {
                path: (*path).into(),
                kind: *kind,
                mode: *mode,
                size: data.len() as u64,
                link: (*link).into(),
            };
            a.extend_from_slice(&encode(&h).unwrap());
            a.extend_from_slice(data);
            a.resize(
                a.len() + (tar::padded(data.len() as u64) as usize - data.len()),
                0,
            );
        }
        a.extend_from_slice(&[0u8; 1024]);
        a
    }

    const MANIFEST: (&str, Kind, u32, &str, &[u8]) =
        ("manifest.json", Kind::File, 0o644, "", b"{}");

    fn staging(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("nc-unpack-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn try_unpack(
        name: &str,
        a: &[u8],
        limits: Limits,
    ) -> (PathBuf, Result<Unpacked, BundleError>) {
        let dir = staging(name);
        let r = unpack(a, &dir, limits);
        (dir, r)
    }

    #[test]
    fn a_good_archive_unpacks() {
        let a = archive(&[
            MANIFEST,
            ("rootfs", Kind::Dir, 0o755, "", b""),
            ("rootfs/bin/tool", Kind::File, 0o755, "", b"#!x"),
            ("rootfs/bin/sh", Kind::Symlink, 0o777, "tool", b""),
            ("rootfs/bin/abs", Kind::Symlink, 0o777, "/bin/tool", b""),
            (
                "rootfs/bin/same",
                Kind::HardLink,
                0o755,
                "rootfs/bin/tool",
                b"",
            ),
        ]);
        let (dir, r) = try_unpack("good", &a, Limits::default());
        let u = r.unwrap();
        assert_eq!((u.entries, u.data_bytes), (6, 5));
        assert_eq!(std::fs::read(dir.join("rootfs/bin/same")).unwrap(), b"#!x");
        assert_eq!(
            std::fs::read_link(dir.join("rootfs/bin/abs")).unwrap(),
            Path::new("/bin/tool")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_archives_are_refused_and_leave_nothing() {
        let zeros = vec![0u8; 4096];
        let cases: Vec<(&str, Vec<u8>, Limits, &str)> = vec![
            (
                "traversal",
                archive(&[MANIFEST, ("rootfs/../../x", Kind::File, 0o644, "", b"x")]),
                Limits::default(),
                "`..`",
            ),
            (
                "absolute",
                archive(&[MANIFEST, ("/etc/x", Kind::File, 0o644, "", b"x")]),
                Limits::default(),
                "absolute",
            ),
            (
                "layout",
                archive(&[MANIFEST, ("etc/x", Kind::File, 0o644, "", b"x")]),
                Limits::default(),
                "bundle layout",
            ),
            (
                "symlink-escape",
                archive(&[
                    MANIFEST,
                    ("rootfs/x", Kind::Symlink, 0o777, "../../../etc/passwd", b""),
                ]),
                Limits::default(),
                "leaves the bundle",
            ),
            // A legal symlink to the agent's /etc, then a file through it: never followed.
            (
                "through-symlink",
                archive(&[
                    MANIFEST,
                    ("rootfs/etc", Kind::Symlink, 0o777, "/etc", b""),
                    ("rootfs/etc/nc-unpack-test", Kind::File, 0o644, "", b"x"),
                ]),
                Limits::default(),
                "not a directory",
            ),
            (
                "hardlink-escape",
                archive(&[
                    MANIFEST,
                    ("rootfs/x", Kind::HardLink, 0o644, "/etc/passwd", b""),
                ]),
                Limits::default(),
                "hard link",
            ),
            (
                "hardlink-to-dir",
                archive(&[
                    MANIFEST,
                    ("rootfs/d", Kind::Dir, 0o755, "", b""),
                    ("rootfs/x", Kind::HardLink, 0o644, "rootfs/d", b""),
                ]),
                Limits::default(),
                "hard link",
            ),
            (
                "setuid",
                archive(&[MANIFEST, ("rootfs/su", Kind::File, 0o4755, "", b"x")]),
                Limits::default(),
                "setuid",
            ),
            (
                "duplicate",
                archive(&[
                    MANIFEST,
                    ("rootfs/a", Kind::File, 0o644, "", b"x"),
                    ("rootfs/a", Kind::File, 0o644, "", b"y"),
                ]),
                Limits::default(),
                "twice",
            ),
            (
                "no-manifest",
                archive(&[("rootfs/a", Kind::File, 0o644, "", b"x")]),
                Limits::default(),
                "manifest.json",
            ),
            (
                "too-many",
                archive(&[
                    MANIFEST,
                    ("rootfs/a", Kind::File, 0o644, "", b""),
                    ("rootfs/b", Kind::File, 0o644, "", b""),
                ]),
                Limits {
                    max_entries: 2,
                    ..Limits::default()
                },
                "more than 2 entries",
            ),
            (
                "bomb",
                archive(&[MANIFEST, ("rootfs/z", Kind::File, 0o644, "", &zeros)]),
                Limits {
                    max_bytes: 1000,
                    ..Limits::default()
                },
                "max_bytes",
            ),
            (
                "no-space",
                archive(&[MANIFEST, ("rootfs/z", Kind::File, 0o644, "", &zeros)]),
                Limits {
                    reserve_bytes: u64::MAX / 2,
                    ..Limits::default()
                },
                "does not fit",
            ),
        ];
        for (name, a, limits, want) in cases {
            let (dir, r) = try_unpack(name, &a, limits);
            let e = r.expect_err(name).to_string();
            assert!(e.contains(want), "{name}: {e}");
            assert!(
                !dir.exists(),
                "{name}: the staging directory was left behind"
            );
        }
        assert!(!Path::new("/etc/nc-unpack-test").exists());
        // Truncated anywhere: refused.
        let good = archive(&[MANIFEST, ("rootfs/a", Kind::File, 0o644, "", b"hello")]);
        for cut in [100, 512, 600, 1030] {
            let (dir, r) = try_unpack("cut", &good[..cut], Limits::default());
            assert!(r.is_err(), "cut at {cut}");
            assert!(!dir.exists());
        }
    }

    #[test]
    fn gzip_is_detected_and_bombs_stop_at_the_limit() {
        use std::io::Write as _;
        let big = vec![0u8; 4 << 20];
        let a = archive(&[MANIFEST, ("rootfs/z", Kind::File, 0o644, "", &big)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&a).unwrap();
        let packed = gz.finish().unwrap();
        assert!(packed.len() < 64 * 1024, "{}", packed.len());
        let dir = staging("gz");
        let r = unpack(
            maybe_gunzip(io::Cursor::new(packed)).unwrap(),
            &dir,
            Limits {
                max_bytes: 1 << 20,
                ..Limits::default()
            },
        );
        assert!(r.unwrap_err().to_string().contains("max_bytes"));
        assert!(!dir.exists());
    }
}
