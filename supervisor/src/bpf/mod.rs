//! eBPF enforcement, loaded with aya from the C programs in `bpf/` (built by `build.rs`).
//!
//! Today: the per-agent egress allowlist (`bpf/egress.c`). An agent whose policy grants
//! network endpoints shares the host's network namespace and is held by `cgroup/connect4`,
//! `connect6`, `sendmsg4` and `sendmsg6` programs attached to its cgroup v2 directory: only
//! the granted `address:port/proto` destinations are reachable, everything else fails with
//! EPERM and comes back on a ring buffer as an audit record. Agents without a network grant
//! keep an empty network namespace. If the programs cannot be loaded and attached here,
//! networked agents also get an empty namespace (fail closed) and the posture says why.
//!
//! Maps and the agents' links are pinned under `/sys/fs/bpf/<cgroup_subtree>/`, so enforcement
//! stays in force when the supervisor is killed, and a new supervisor reuses the same maps.

pub mod egress;
pub mod lsm;
pub mod selftest;

use std::path::Path;

pub use egress::{Denial, Egress};
pub use lsm::{Lsm, LsmEvent};

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("mounting bpffs on /sys/fs/bpf: {0}")]
    MountBpffs(std::io::Error),
    #[error("mounting tracefs on /sys/kernel/tracing: {0}")]
    MountTracefs(std::io::Error),
    #[error("creating the pin directory {path}: {source}")]
    PinDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("loading the {object} eBPF object: {}", chain(source.as_ref()))]
    Load {
        object: &'static str,
        source: Box<aya::EbpfError>,
    },
    #[error("the {object} object has no program {program}")]
    MissingProgram {
        object: &'static str,
        program: &'static str,
    },
    #[error("the {object} object has no map {map}")]
    MissingMap {
        object: &'static str,
        map: &'static str,
    },
    #[error("eBPF program {program}: {}", chain(source.as_ref()))]
    Program {
        program: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {map}: {}", chain(source.as_ref()))]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("reading the bundle's root filesystem {path}: {source}")]
    Rootfs {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pinning link {path}: {reason}")]
    Pin {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// An error with its sources (aya's errors keep the errno in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

pub(crate) fn prog_err(
    program: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> BpfError {
    move |e| BpfError::Program {
        program,
        source: Box::new(e),
    }
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |e| BpfError::Map {
        map,
        source: Box::new(e),
    }
}

/// Map `name` of `bpf` (the object `object`) as the typed view `T`, e.g.
/// `HashMap<&mut MapData, u64, u32>`.
pub(crate) fn map_of<'a, T>(
    object: &'static str,
    bpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<T, BpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    bpf.map_mut(name)
        .ok_or(BpfError::MissingMap { object, map: name })?
        .try_into()
        .map_err(map_err(name))
}

/// Program `name` of `bpf` (the object `object`) as the typed program `T`.
pub(crate) fn program_of<'a, T>(
    object: &'static str,
    bpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(BpfError::MissingProgram {
            object,
            program: name,
        })?
        .try_into()
        .map_err(prog_err(name))
}

/// Takes ring buffer `name` out of `bpf` (the object `object`), with a duplicate of its fd to
/// wait on.
pub(crate) fn take_ring(
    object: &'static str,
    bpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<(aya::maps::RingBuf<aya::maps::MapData>, std::os::fd::OwnedFd), BpfError> {
    use std::os::fd::AsFd;
    let map = bpf
        .take_map(name)
        .ok_or(BpfError::MissingMap { object, map: name })?;
    let rb = aya::maps::RingBuf::try_from(map).map_err(map_err(name))?;
    let fd = rb.as_fd().try_clone_to_owned().map_err(|e| BpfError::Map {
        map: name,
        source: Box::new(aya::maps::MapError::from(e)),
    })?;
    Ok((rb, fd))
}

/// Pins a link at `path` (bpffs), so the attachment outlives this process.
pub(crate) fn pin_fd_link(
    link: aya::programs::links::FdLink,
    path: std::path::PathBuf,
) -> Result<(), BpfError> {
    link.pin(&path).map_err(|e| BpfError::Pin {
        path,
        reason: e.to_string(),
    })?;
    Ok(())
}

/// `/sys/fs/bpf/<subtree>` (bpffs mounted if missing), with its subdirectory `sub` created:
/// where one supervisor pins its maps and links.
pub(crate) fn pin_dir(subtree: &str, sub: &str) -> Result<std::path::PathBuf, BpfError> {
    ensure_bpffs()?;
    let dir = Path::new("/sys/fs/bpf").join(subtree.replace('/', "_"));
    std::fs::create_dir_all(dir.join(sub)).map_err(|e| BpfError::PinDir {
        path: dir.join(sub),
        source: e,
    })?;
    Ok(dir)
}

/// Makes sure tracefs is mounted at /sys/kernel/tracing (tracepoint programs need it).
pub fn ensure_tracefs() -> Result<(), BpfError> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    crate::sys::mount(
        Some(c"tracefs"),
        c"/sys/kernel/tracing",
        Some(c"tracefs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(BpfError::MountTracefs)
}

/// Makes sure a bpf filesystem is mounted at /sys/fs/bpf (mounting one if not).
pub fn ensure_bpffs() -> Result<(), BpfError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(BpfError::MountBpffs)?;
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    crate::sys::mount(
        Some(c"bpf"),
        c"/sys/fs/bpf",
        Some(c"bpf"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=0700"),
    )
    .map_err(BpfError::MountBpffs)
}
