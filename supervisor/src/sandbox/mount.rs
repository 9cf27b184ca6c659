//! The agent's filesystem view, built by the init inside its new mount namespace: the bundle's
//! `rootfs/` bound read-only as `/`, a fresh `/proc` for the new PID namespace, a tmpfs `/dev`
//! holding only bind-mounted device nodes, and a size-capped tmpfs scratch at `/tmp` that dies
//! with the namespace (so it is empty on every start), and, for agents on a runtime layer, the
//! layer's `usr` tree read-only at `/usr`. Then `pivot_root` and detach the old root, so no
//! host path stays reachable.

use std::ffi::CString;
use std::path::Path;

use crate::sys;

/// Directories every rootfs needs (created by the installer): mount points of `/proc`,
/// `/dev`, the scratch `/tmp` and `/run`, which holds the agent socket.
pub const MOUNT_POINTS: [&str; 4] = ["proc", "dev", "tmp", "run"];

/// Device nodes every agent gets.
pub const BASE_DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("path {s:?} contains a NUL byte"))
}

fn mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src_c = src.map(c).transpose()?;
    let fs_c = fstype.map(c).transpose()?;
    let data_c = data.map(c).transpose()?;
    sys::mount(
        src_c.as_deref(),
        &c(target)?,
        fs_c.as_deref(),
        flags,
        data_c.as_deref(),
    )
    .map_err(|e| {
        format!(
            "mount {} on {target} ({}): {e}",
            src.unwrap_or("-"),
            fstype.unwrap_or("bind/remount")
        )
    })
}

/// A read-only, nosuid, nodev, bind mount of `src` on `target` (`noexec` too when asked).
fn bind_ro(src: &Path, target: &str, noexec: bool) -> Result<(), String> {
    let src = src
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", src.display()))?;
    mount(Some(src), target, None, libc::MS_BIND | libc::MS_REC, None)?;
    let exec = if noexec { libc::MS_NOEXEC } else { 0 };
    mount(
        None,
        target,
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | exec,
        None,
    )
}

/// Builds the root and pivots into it. Runs as root in the new mount namespace.
pub fn build_root(spec: &super::Spec) -> Result<(), String> {
    let (rootfs, scratch_bytes, uid, gid) = (&spec.rootfs, spec.scratch_bytes, spec.uid, spec.gid);
    let (devices, socket_dir) = (&spec.devices, spec.socket_dir.as_deref());
    let root = rootfs
        .to_str()
        .ok_or_else(|| format!("rootfs path {} is not UTF-8", rootfs.display()))?;
    // Nothing we mount may propagate back to the host.
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)?;

    for dir in ["proc", "dev", "tmp"] {
        let p = rootfs.join(dir);
        if !p.is_dir() {
            return Err(format!(
                "rootfs {} has no /{dir} directory to mount on (the installer creates it)",
                rootfs.display()
            ));
        }
    }
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some("proc"),
        &format!("{root}/proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;

    let dev = format!("{root}/dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,nr_inodes=64,mode=0755"),
    )?;
    for name in BASE_DEVICES
        .iter()
        .copied()
        .chain(devices.iter().map(String::as_str))
    {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("device name {name:?} is not a plain /dev entry"));
        }
        let target = format!("{dev}/{name}");
        std::fs::File::create(&target).map_err(|e| format!("creating {target}: {e}"))?;
        mount(
            Some(&format!("/dev/{name}")),
            &target,
            None,
            libc::MS_BIND,
            None,
        )?;
        // Bind mounts ignore flags on creation; apply nosuid/noexec with a remount.
        mount(
            None,
            &target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NOEXEC,
            None,
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, format!("{dev}/{link}"))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    mount(
        None,
        &dev,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,nr_inodes=64,mode=0755"),
    )?;

    // tmpfs needs at least one page; round tiny requests up so the mount succeeds. noexec:
    // nothing an agent writes may be executed (only its bundle's files are programs).
    let scratch = scratch_bytes.max(sys::page_size() as u64);
    mount(
        Some("tmpfs"),
        &format!("{root}/tmp"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!(
            "size={scratch},nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
        )),
    )?;

    // The agent's socket directory at /run (it holds only `nanoclaw.sock`). Read-only: the
    // agent connects to the socket, it cannot replace it. A rootfs without /run (installed
    // before it was a mount point) simply has no socket.
    if let Some(dir) = socket_dir
        && rootfs.join("run").is_dir()
    {
        bind_ro(dir, &format!("{root}/run"), true)?;
    }

    // The runtime layer (an interpreter and its libraries, installed once per device) at
    // /usr, read-only; the installer made rootfs/usr an empty directory for it.
    if let Some(layer) = &spec.runtime {
        if !rootfs.join("usr").is_dir() {
            return Err(format!(
                "rootfs {} has no /usr directory to mount the runtime layer on",
                rootfs.display()
            ));
        }
        bind_ro(layer, &format!("{root}/usr"), false)?;
    }

    // Read-only root, applied last so the mounts above could be made on it.
    mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;

    std::env::set_current_dir(rootfs).map_err(|e| format!("chdir {root}: {e}"))?;
    let dot = c(".")?;
    match sys::pivot_root(&dot, &dot) {
        Ok(()) => {
            // The old root is now stacked under "."; detach it so the host tree is unreachable.
            sys::umount2(&dot, libc::MNT_DETACH)
                .map_err(|e| format!("detaching the old root: {e}"))?;
        }
        // The host runs from an initramfs (rootfs cannot be pivoted away from): move the new
        // root over "/" and chroot, as `runc --no-pivot` does. The agent has no
        // CAP_SYS_CHROOT, so it cannot climb out of the chroot.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::mount(Some(&dot), &c("/")?, None, libc::MS_MOVE, None)
                .map_err(|e| format!("moving {root} over / (initramfs host): {e}"))?;
            std::os::unix::fs::chroot(".").map_err(|e| format!("chroot {root}: {e}"))?;
        }
        Err(e) => return Err(format!("pivot_root into {root}: {e}")),
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}
