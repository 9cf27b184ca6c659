//! The cgroup2 `favordynmods` mount option (Linux ≥ 6.0).
//!
//! Every process migration (writing a PID to `cgroup.procs`) takes the kernel's global
//! threadgroup rwsem for writing, which by default waits for an RCU grace period: ~9-14 ms per
//! sandbox start on a cgroup v1/hybrid host, most of nanoclaw's start time there (see
//! docs/BENCHMARKS.md). `favordynmods` keeps that lock in its writer-friendly mode, making
//! migrations fast at a small cost on every fork and exit. It is host-wide, so nanoclaw only
//! turns it on when `device.json` says `cgroup_favordynmods: true`, and turns it back off on a
//! clean shutdown if it was off before. On pure v2, `CLONE_INTO_CGROUP` avoids the migration
//! altogether.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::{CgroupError, Layout};
use crate::sys;

/// The cgroup2 mount of `layout`, if any.
fn cgroup2_mount(layout: &Layout) -> Option<&Path> {
    match layout {
        Layout::V2 { root } => Some(root),
        Layout::V1 { unified, .. } => unified.as_deref(),
    }
}

/// The per-mount flags and super-block options of the cgroup2 mount at `path`, from
/// /proc/self/mountinfo (a remount must repeat the per-mount flags or it clears them).
fn mount_options(path: &Path) -> Result<(libc::c_ulong, Vec<String>), CgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| CgroupError::Read {
        path: PathBuf::from("/proc/self/mountinfo"),
        source: e,
    })?;
    for line in info.lines() {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        let mut l = left.split(' ');
        let mount_point = l.nth(4);
        let per_mount = l.next().unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next(), r.next(), r.next());
        if fstype == Some("cgroup2") && mount_point.map(Path::new) == Some(path) {
            let flags = per_mount
                .split(',')
                .map(|f| match f {
                    "ro" => libc::MS_RDONLY,
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                })
                .fold(0, |a, b| a | b);
            let opts = opts
                .unwrap_or("")
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
            return Ok((flags, opts));
        }
    }
    Err(CgroupError::Parse {
        path: PathBuf::from("/proc/self/mountinfo"),
        detail: format!("no cgroup2 mount at {}", path.display()),
    })
}

/// Whether `favordynmods` is on for the cgroup2 mount of `layout` (`None`: no cgroup2 mount).
pub fn favordynmods(layout: &Layout) -> Result<Option<bool>, CgroupError> {
    let Some(path) = cgroup2_mount(layout) else {
        return Ok(None);
    };
    Ok(Some(
        mount_options(path)?.1.iter().any(|o| o == "favordynmods"),
    ))
}

/// Turns `favordynmods` on or off, keeping the mount's other options. Returns the previous
/// state, or `None` when there is no cgroup2 mount to change.
pub fn set_favordynmods(layout: &Layout, on: bool) -> Result<Option<bool>, CgroupError> {
    let Some(path) = cgroup2_mount(layout) else {
        return Ok(None);
    };
    let (flags, opts) = mount_options(path)?;
    let was = opts.iter().any(|o| o == "favordynmods");
    if was == on {
        return Ok(Some(was));
    }
    let mut keep: Vec<&str> = opts
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "rw" | "ro" | "favordynmods"))
        .collect();
    if on {
        keep.push("favordynmods");
    }
    let bad = |e: std::io::Error| CgroupError::SetLimit {
        path: path.to_path_buf(),
        value: format!("remount,{}", keep.join(",")),
        source: e,
    };
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| bad(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let data = CString::new(keep.join(","))
        .map_err(|_| bad(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    sys::mount(None, &target, None, libc::MS_REMOUNT | flags, Some(&data)).map_err(bad)?;
    Ok(Some(was))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Toggles the real host setting and restores it (root, this machine's cgroup2 mount).
    #[test]
    fn toggles_and_restores_keeping_other_options() {
        let Ok(layout) = super::super::detect(Path::new(super::super::DEFAULT_ROOT)) else {
            return;
        };
        let Some(path) = cgroup2_mount(&layout).map(Path::to_path_buf) else {
            return;
        };
        let (flags_before, opts_before) = mount_options(&path).unwrap();
        let was = favordynmods(&layout).unwrap().unwrap();
        assert_eq!(set_favordynmods(&layout, !was).unwrap(), Some(was));
        assert_eq!(favordynmods(&layout).unwrap(), Some(!was));
        assert_eq!(set_favordynmods(&layout, was).unwrap(), Some(!was));
        let (flags_after, opts_after) = mount_options(&path).unwrap();
        assert_eq!(flags_after, flags_before);
        assert_eq!(opts_after, opts_before);
    }
}
