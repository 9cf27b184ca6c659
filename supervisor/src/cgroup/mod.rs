//! Agent cgroups: memory, pids and CPU limits, OOM notification, kill, freeze, re-adoption.
//!
//! Why cgroups: they are the only kernel mechanism that bounds an agent's *whole process tree*
//! (forks included), counts its OOM kills, kills or freezes the tree without racing its forks,
//! and lets a restarted supervisor find its running agents again (DESIGN §2). Two kernel
//! interfaces hide behind one trait, [`Cgroups`], in the style of youki's libcgroups:
//!
//! - `v2`: pure cgroup v2 (the VM tier, current distributions): one directory per agent.
//! - `v1`: cgroup v1, including the systemd "hybrid" layout where the v1 controllers sit beside
//!   a controller-less cgroup2 mount at `<root>/unified` (this host). Agents get a directory
//!   there too, because BPF cgroup hooks and `CLONE_INTO_CGROUP` need a cgroup2 directory.
//!
//! The version is detected with `statfs` on a root that is passed in ([`detect`]), never guessed
//! from the kernel version. Every cgroup lives under `<hierarchy>/<subtree>/` — `agents/<name>`
//! per agent, `supervisor` for the supervisor — and `subtree` must name `nanoclaw`, so nothing
//! outside our own subtree is ever created or removed. Agent names are validated before they
//! become path components (no traversal). Only `memory` is required; missing `pids`, `cpu` or
//! `freezer` controllers are reported by [`Cgroups::missing_controllers`] so that the policy
//! layer can refuse the agent or accept the fallback (what is enforced is reported).
//!
//! Conventions: `u64::MAX` ([`UNLIMITED`]) means "no limit" wherever a limit is a `u64`.
//! Operations that wait (remove, kill, freeze) are bounded to about one second.
#![forbid(unsafe_code)]

pub mod dynmods;
mod v1;
mod v2;

use std::fs;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use rustix::io::Errno;

/// Where cgroup filesystems are conventionally mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// "No limit" for [`Limits::memory_max`], [`Limits::memory_high`], [`Limits::pids_max`] and
/// [`MemoryStats::limit`].
pub const UNLIMITED: u64 = u64::MAX;
/// The kernel's default CFS period.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Directory under the subtree holding one cgroup per agent.
const AGENTS_DIR: &str = "agents";
/// Directory under the subtree holding the supervisor (cgroup v2 forbids processes in a cgroup
/// that distributes controllers to children, so the supervisor needs a leaf of its own).
const SUPERVISOR_DIR: &str = "supervisor";

/// Bounded waits: rounds of [`RETRY_INTERVAL`].
const RETRY_ROUNDS: u32 = 100;
const RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// Rounds to let an atomic `cgroup.kill` finish before signalling pid by pid.
const KILL_GRACE_ROUNDS: u32 = 10;

/// Errors of this module: one variant per failing operation, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot statfs {}: {source}; is the cgroup filesystem mounted there (usually /sys/fs/cgroup)?", .path.display())]
    Statfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is neither cgroup2 nor a tmpfs holding cgroup v1 mounts (filesystem magic {magic:#x}); pass the cgroup root (usually /sys/fs/cgroup)", .path.display())]
    UnknownFilesystem { path: PathBuf, magic: u64 },
    #[error("the memory controller is not available under {}; {hint}", .path.display())]
    MemoryControllerMissing { path: PathBuf, hint: &'static str },
    #[error(
        "cannot {operation}: the {controller} controller is not available (see missing_controllers())"
    )]
    ControllerMissing {
        controller: &'static str,
        operation: &'static str,
    },
    #[error("invalid agent name {name:?}: it must match [a-z0-9][a-z0-9_-]{{0,63}}")]
    InvalidName { name: String },
    #[error("invalid cgroup subtree {subtree:?}: {reason}")]
    InvalidSubtree {
        subtree: String,
        reason: &'static str,
    },
    #[error("invalid limits: {reason}")]
    InvalidLimits { reason: &'static str },
    #[error("cannot create cgroup {}: {source}; {}", .path.display(), hint(.source))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable the {controller} controller in {}: {source}; {}", .path.display(), enable_hint(.source))]
    EnableController {
        path: PathBuf,
        controller: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}: {source}; {}", .path.display(), hint(.source))]
    SetLimit {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}; {}", .path.display(), hint(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {}: {detail}; is this the cgroup file the kernel documents?", .path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("cannot move pid {pid} into {}: {source}; {}", .path.display(), hint(.source))]
    AddProcess {
        path: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up OOM notification on {}: {source}; {}", .path.display(), hint(.source))]
    OomNotifier {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot kill the processes of {} through cgroup.kill: {source}; {}", .path.display(), hint(.source))]
    Kill {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot SIGKILL pid {pid} of {}: {source}", .path.display())]
    Signal {
        path: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("processes {pids:?} are still in {} after SIGKILL; are they in uninterruptible sleep (D state)? retry later", .path.display())]
    KillTimeout { path: PathBuf, pids: Vec<i32> },
    #[error("cannot {action} {}: {source}; {}", .path.display(), hint(.source))]
    Freeze {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{} did not become {wanted} within a second (state {state:?}); a process may be in uninterruptible sleep, retry", .path.display())]
    FreezeTimeout {
        path: PathBuf,
        wanted: &'static str,
        state: String,
    },
    #[error("cannot remove cgroup {}: {source}; {}", .path.display(), hint(.source))]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list agent cgroups in {}: {source}; {}", .path.display(), hint(.source))]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} still has processes {pids:?}; kill the agents (kill_all) and stop the supervisor first", .path.display())]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("cannot move the supervisor (pid {pid}) into {}: {source}; {}", .path.display(), hint(.source))]
    EnterSupervisor {
        path: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// What to do about an I/O error on a cgroup file.
fn hint(e: &io::Error) -> &'static str {
    match Errno::from_io_error(e) {
        Some(Errno::ACCESS | Errno::PERM) => {
            "run the supervisor as root, or give it a delegated cgroup subtree"
        }
        Some(Errno::ROFS) => "the cgroup filesystem is read-only (in a container: mount it rw)",
        Some(Errno::NOENT) => {
            "the cgroup or file does not exist: is the controller mounted (v1) or enabled (v2)?"
        }
        Some(Errno::BUSY | Errno::NOTEMPTY) => {
            "the cgroup is busy: it still has processes or child cgroups"
        }
        Some(Errno::INVAL) => "the kernel rejected the value (out of range?)",
        Some(Errno::SRCH) => "the process no longer exists",
        Some(Errno::NOSPC | Errno::AGAIN) => {
            "a cgroup limit was reached (cgroup.max.descendants, cgroup.max.depth or pids.max)"
        }
        Some(Errno::OPNOTSUPP) => "the kernel does not support this cgroup operation",
        _ => "see the kernel log (dmesg)",
    }
}

fn enable_hint(e: &io::Error) -> &'static str {
    match Errno::from_io_error(e) {
        Some(Errno::BUSY) => {
            "the cgroup has processes of its own (cgroup v2 no-internal-process rule): call enter_supervisor() before creating agents, and keep other processes out of the subtree"
        }
        Some(Errno::NOENT) => {
            "the parent does not pass this controller down: enable it in the parent's cgroup.subtree_control (systemd: Delegate=yes)"
        }
        Some(Errno::OPNOTSUPP | Errno::INVAL) => {
            "the controller cannot be enabled here (threaded cgroup, or realtime tasks for cpu)"
        }
        _ => hint(e),
    }
}

/// Which cgroup interface a machine has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 mounted at `root`.
    V2 { root: PathBuf },
    /// cgroup v1: each controller at `root/<controller>`; `unified` is the cgroup2 mount of the
    /// systemd hybrid layout (`root/unified`), if there is one.
    V1 {
        root: PathBuf,
        unified: Option<PathBuf>,
    },
}

/// Detects the cgroup layout under `root` (usually [`DEFAULT_ROOT`]) with `statfs`.
///
/// cgroup2 at `root` is v2. A tmpfs at `root` holds v1 hierarchies; a cgroup2 mount at
/// `root/unified` beside them makes it hybrid. A tmpfs with no v1 memory hierarchy but a
/// cgroup2 mount at `root/unified` is treated as v2 there: controllers not bound to v1 are
/// all available on the cgroup2 mount.
pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
    let magic = fs_magic(root).map_err(|source| CgroupError::Statfs {
        path: root.to_path_buf(),
        source,
    })?;
    match magic {
        CGROUP2_SUPER_MAGIC => Ok(Layout::V2 {
            root: root.to_path_buf(),
        }),
        TMPFS_MAGIC => {
            let unified = root.join("unified");
            let unified = (fs_magic(&unified).ok() == Some(CGROUP2_SUPER_MAGIC)).then_some(unified);
            let memory_v1 = fs_magic(&root.join("memory")).ok() == Some(CGROUP_SUPER_MAGIC);
            match unified {
                Some(unified) if !memory_v1 => Ok(Layout::V2 { root: unified }),
                // Without a memory hierarchy, open() reports what to mount.
                unified => Ok(Layout::V1 {
                    root: root.to_path_buf(),
                    unified,
                }),
            }
        }
        magic => Err(CgroupError::UnknownFilesystem {
            path: root.to_path_buf(),
            magic,
        }),
    }
}

// `f_type`'s width and signedness differ between targets; filesystem magics are positive.
#[allow(clippy::unnecessary_cast)]
fn fs_magic(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statfs(path)?;
    Ok(stat.f_type as u64)
}

/// Resource limits of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`); swap is
    /// disabled for the agent. Past it the kernel OOM-kills inside the agent's cgroup.
    pub memory_max: u64,
    /// Reclaim threshold in bytes (v2 `memory.high` throttles; v1 `memory.soft_limit_in_bytes`
    /// only reclaims under global pressure). `None` = none.
    pub memory_high: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: u64,
    /// CPU time in µs the agent may use per period; `None` = unlimited.
    pub cpu_quota_us: Option<u64>,
    /// CPU accounting period in µs, 1 000 ..= 1 000 000 ([`DEFAULT_CPU_PERIOD_US`]).
    pub cpu_period_us: u64,
}

impl Limits {
    /// Checks the ranges the kernel would reject, so the error names the field.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let reason = if self.memory_max == 0 {
            "memory_max must be > 0"
        } else if self.memory_high == Some(0) {
            "memory_high must be > 0 (None for no threshold)"
        } else if self.pids_max == 0 {
            "pids_max must be > 0"
        } else if !(1_000..=1_000_000).contains(&self.cpu_period_us) {
            "cpu_period_us must be within 1000..=1000000"
        } else if self.cpu_quota_us.is_some_and(|q| q < 1_000) {
            "cpu_quota_us must be >= 1000 (None for unlimited)"
        } else {
            return Ok(());
        };
        Err(CgroupError::InvalidLimits { reason })
    }
}

/// Memory accounting of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Bytes charged now.
    pub current: u64,
    /// High-water mark (v2 `memory.peak`, or `current` on kernels before 5.19; v1
    /// `memory.max_usage_in_bytes`).
    pub peak: u64,
    /// Hard limit in bytes; [`UNLIMITED`] if none.
    pub limit: u64,
    /// Processes the OOM killer killed in this cgroup since it was created (0 on v1 kernels
    /// before 4.13, which do not count them).
    pub oom_kills: u64,
}

/// The cgroups of the agents of one supervisor (one subtree), whatever the cgroup version.
pub trait Cgroups: Send + Sync {
    fn layout(&self) -> &Layout;
    /// Controllers this machine lacks among `pids`, `cpu` and `freezer` (`memory` is required
    /// by [`open`]). Their limits are not applied; the caller decides whether that is acceptable.
    fn missing_controllers(&self) -> Vec<&'static str>;
    /// Creates (or reuses, for re-adoption) `<subtree>/agents/<name>` in every hierarchy used
    /// and applies limits. On failure, the directories this call created are removed again.
    fn create(&self, name: &str, limits: &Limits) -> Result<(), CgroupError>;
    fn set_limits(&self, name: &str, limits: &Limits) -> Result<(), CgroupError>;
    /// Moves process `pid` (all its threads) into the agent's cgroup in every hierarchy.
    fn add_process(&self, name: &str, pid: i32) -> Result<(), CgroupError>;
    /// Processes in the agent's cgroup (v1: the memory hierarchy), sorted.
    fn procs(&self, name: &str) -> Result<Vec<i32>, CgroupError>;
    fn memory(&self, name: &str) -> Result<MemoryStats, CgroupError>;
    /// CPU time the agent's cgroup used so far, ns (v2 `cpu.stat` `usage_usec`; v1
    /// `cpuacct.usage`, or the hybrid cgroup2 directory's `cpu.stat`).
    fn cpu_usage_ns(&self, name: &str) -> Result<u64, CgroupError>;
    /// A file descriptor that becomes readable when something happened that may be an OOM
    /// kill: v1 = eventfd registered via `cgroup.event_control` with `memory.oom_control`; v2 =
    /// inotify `IN_MODIFY` on `memory.events`. Non-blocking and close-on-exec. The caller polls
    /// it, drains it (read), then calls [`Cgroups::memory`] to read `oom_kills`. It also
    /// becomes readable when the cgroup is removed (v1).
    fn oom_notifier(&self, name: &str) -> Result<OwnedFd, CgroupError>;
    /// SIGKILLs everything in the agent's cgroup and waits (bounded) until it is empty: v2
    /// `cgroup.kill` when present (atomic against forks), otherwise the fallback freezes the
    /// cgroup (so listed pids can neither exit and be reused nor fork), signals each listed
    /// pid, and thaws, until nothing is left. Only agent processes live there. Leaves the
    /// cgroup thawed. Ok if the cgroup does not exist.
    fn kill_all(&self, name: &str) -> Result<(), CgroupError>;
    /// Freezes or thaws the agent (v2 `cgroup.freeze`, v1 `freezer.state`) and waits (bounded)
    /// until the kernel reports the new state.
    fn freeze(&self, name: &str, frozen: bool) -> Result<(), CgroupError>;
    /// Removes the agent's cgroup in every hierarchy, retrying (bounded) while exiting
    /// processes drain. Ok if absent. Does not kill: call [`Cgroups::kill_all`] first.
    fn remove(&self, name: &str) -> Result<(), CgroupError>;
    /// Names of the agent cgroups that exist in any hierarchy (re-adoption, cleanup), sorted.
    fn list(&self) -> Result<Vec<String>, CgroupError>;
    /// The agent's cgroup2 directory (for BPF cgroup hooks and `CLONE_INTO_CGROUP`), if the
    /// machine has one: the v2 directory, or the hybrid unified directory.
    fn unified_dir(&self, name: &str) -> Option<PathBuf>;
    /// Moves the calling process into `<subtree>/supervisor` in every hierarchy.
    fn enter_supervisor(&self) -> Result<(), CgroupError>;
}

/// Opens the agent cgroups of `subtree` (a relative path whose last component contains
/// `nanoclaw`, e.g. `nanoclaw`, `system.slice/nanoclaw.service`, or `nanoclaw-test-<pid>` in
/// tests). Creates nothing until [`Cgroups::create`] or [`Cgroups::enter_supervisor`].
pub fn open(layout: Layout, subtree: &str) -> Result<Box<dyn Cgroups>, CgroupError> {
    let subtree = validate_subtree(subtree)?;
    match layout {
        Layout::V2 { root } => {
            let cgroups = v2::V2Cgroups::new(root, subtree)?;
            if cgroups.missing("memory") {
                return Err(CgroupError::MemoryControllerMissing {
                    path: cgroups.root().to_path_buf(),
                    hint: "it is not listed in cgroup.controllers: unbind it from cgroup v1, or have the parent delegate it (systemd: Delegate=yes)",
                });
            }
            Ok(Box::new(cgroups))
        }
        Layout::V1 { root, unified } => Ok(Box::new(v1::V1Cgroups::new(root, unified, subtree)?)),
    }
}

/// Removes `<subtree>` from every hierarchy of `layout` (tests, uninstall), deepest first.
/// Fails, before removing anything, if any cgroup in it still has processes.
pub fn remove_subtree(layout: &Layout, subtree: &str) -> Result<(), CgroupError> {
    let subtree = validate_subtree(subtree)?;
    let dirs: Vec<PathBuf> = hierarchies(layout)
        .iter()
        .map(|h| h.join(&subtree))
        .collect();
    for dir in &dirs {
        check_no_procs(dir)?;
    }
    for dir in &dirs {
        remove_tree(dir)?;
    }
    Ok(())
}

/// Every hierarchy this module may have created directories in.
fn hierarchies(layout: &Layout) -> Vec<PathBuf> {
    match layout {
        Layout::V2 { root } => vec![root.clone()],
        Layout::V1 { root, unified } => v1::CONTROLLERS
            .iter()
            .map(|c| root.join(c))
            .chain(unified.clone())
            .collect(),
    }
}

/// Checks an agent name: `[a-z0-9][a-z0-9_-]{0,63}`, so it is one safe path component.
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

fn validate_subtree(subtree: &str) -> Result<PathBuf, CgroupError> {
    let err = |reason| CgroupError::InvalidSubtree {
        subtree: subtree.chars().take(200).collect(),
        reason,
    };
    if subtree.is_empty() || subtree.len() > 200 {
        return Err(err("it must be 1 to 200 bytes long"));
    }
    if subtree.contains('\0') {
        return Err(err("it must not contain NUL"));
    }
    let path = Path::new(subtree);
    let mut last = None;
    for component in path.components() {
        match component {
            Component::Normal(c) => last = Some(c),
            _ => return Err(err("it must be a relative path without '.' or '..'")),
        }
    }
    // `components()` hides a trailing slash and repeated slashes; reject them explicitly.
    if subtree.ends_with('/') || subtree.contains("//") {
        return Err(err("it must not contain empty components"));
    }
    match last.and_then(|c| c.to_str()) {
        Some(c) if c.contains("nanoclaw") => Ok(path.to_path_buf()),
        _ => Err(err(
            "its last component must contain \"nanoclaw\", so that only our own cgroups are touched",
        )),
    }
}

fn agent_path(hierarchy: &Path, subtree: &Path, name: &str) -> PathBuf {
    hierarchy.join(subtree).join(AGENTS_DIR).join(name)
}

fn agents_path(hierarchy: &Path, subtree: &Path) -> PathBuf {
    hierarchy.join(subtree).join(AGENTS_DIR)
}

fn supervisor_path(hierarchy: &Path, subtree: &Path) -> PathBuf {
    hierarchy.join(subtree).join(SUPERVISOR_DIR)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let text = text.trim();
    if text == "max" {
        return Ok(UNLIMITED);
    }
    text.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        detail: format!("expected a number or \"max\", found {:?}", truncate(text)),
    })
}

/// Reads a single-number file; `max` is [`UNLIMITED`].
fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

/// Reads `key <number>` from a flat-keyed file (`memory.events`, `memory.oom_control`); 0 if
/// the kernel does not report that key.
fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read(path)?;
    match text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then_some(v)
    }) {
        Some(value) => parse_u64(path, value),
        None => Ok(0),
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Writes a cgroup control file in one `write(2)` (it must exist: no `O_CREAT`).
fn write_value(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn set(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_value(path, value).map_err(|source| CgroupError::SetLimit {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// Creates `dir`; `Ok(false)` if it existed.
fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Creates `base/rel` and the missing directories above it, recording those it created.
fn mkdir_all(base: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let mut dir = base.to_path_buf();
    for component in rel.components() {
        dir.push(component);
        if mkdir(&dir)? {
            created.push(dir.clone());
        }
    }
    Ok(())
}

/// Best effort: removes directories created by a failed operation, deepest first. Never
/// retries, so a directory that meanwhile got processes stays.
fn rollback(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}

/// The processes in cgroup `dir`, sorted.
fn read_procs(dir: &Path) -> io::Result<Vec<i32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))?;
    let mut pids = text
        .lines()
        .map(|l| l.trim().parse::<i32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn procs_of(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    read_procs(dir).map_err(|source| CgroupError::Read {
        path: dir.join("cgroup.procs"),
        source,
    })
}

fn add_pid(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.procs");
    if pid <= 0 {
        // "0" would move the supervisor itself into the agent's cgroup.
        return Err(CgroupError::AddProcess {
            path,
            pid,
            source: io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"),
        });
    }
    write_value(&path, &pid.to_string()).map_err(|source| CgroupError::AddProcess {
        path,
        pid,
        source,
    })
}

/// SIGKILLs `pids` (read from cgroup `dir`). Never signals pid 1 or ourselves, whatever the
/// file said; a pid that is already gone is fine.
fn kill_pids(dir: &Path, pids: &[i32]) -> Result<(), CgroupError> {
    let own = rustix::process::getpid().as_raw_nonzero().get();
    for &pid in pids {
        if pid <= 1 || pid == own {
            continue;
        }
        let Some(target) = rustix::process::Pid::from_raw(pid) else {
            continue;
        };
        match rustix::process::kill_process(target, rustix::process::Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => {
                return Err(CgroupError::Signal {
                    path: dir.to_path_buf(),
                    pid,
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Waits (bounded) until cgroup `dir` is empty, signalling what is left. `atomic_sent`: a
/// `cgroup.kill` already went out, so signal only if it has not emptied the cgroup after a
/// grace period. `freeze` requests (without waiting) a freeze or thaw, if the machine can.
fn drain(
    dir: &Path,
    atomic_sent: bool,
    freeze: &dyn Fn(bool) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    for round in 0..RETRY_ROUNDS {
        let pids = match read_procs(dir) {
            Ok(pids) => pids,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: dir.join("cgroup.procs"),
                    source,
                });
            }
        };
        if pids.is_empty() {
            return Ok(());
        }
        if !atomic_sent || round >= KILL_GRACE_ROUNDS {
            // Frozen, the listed processes can neither fork nor exit (so their pids cannot be
            // reused by someone else before the signal lands); re-list once frozen.
            let frozen = freeze(true).is_ok();
            let pids = if frozen { procs_of(dir)? } else { pids };
            let killed = kill_pids(dir, &pids);
            let thawed = if frozen { freeze(false) } else { Ok(()) };
            killed?;
            thawed?;
        }
        sleep(RETRY_INTERVAL);
    }
    Err(CgroupError::KillTimeout {
        path: dir.to_path_buf(),
        pids: procs_of(dir)?,
    })
}

/// Polls `done` until it holds, at most about a second; returns whether it did.
fn wait_for(mut done: impl FnMut() -> Result<bool, CgroupError>) -> Result<bool, CgroupError> {
    for _ in 0..RETRY_ROUNDS {
        if done()? {
            return Ok(true);
        }
        sleep(RETRY_INTERVAL);
    }
    done()
}

/// Removes cgroup `dir`, retrying while it is busy (exiting processes); Ok if absent.
fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let mut rounds = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Errno::from_io_error(&e) == Some(Errno::BUSY) && rounds < RETRY_ROUNDS => {
                rounds += 1;
                sleep(RETRY_INTERVAL);
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let list_err = |source| CgroupError::List {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        if entry.file_type().map_err(list_err)?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Fails with [`CgroupError::Busy`] if any cgroup at or below `dir` has processes.
fn check_no_procs(dir: &Path) -> Result<(), CgroupError> {
    match read_procs(dir) {
        Ok(pids) if !pids.is_empty() => {
            return Err(CgroupError::Busy {
                path: dir.to_path_buf(),
                pids,
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.join("cgroup.procs"),
                source,
            });
        }
    }
    for child in child_dirs(dir)? {
        check_no_procs(&child)?;
    }
    Ok(())
}

/// Removes cgroup `dir` and every cgroup below it, deepest first; Ok if absent.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in child_dirs(dir)? {
        remove_tree(&child)?;
    }
    rmdir_retry(dir)
}

/// Valid agent names under the `agents` directories `dirs`, sorted, without duplicates.
fn list_agents(dirs: impl IntoIterator<Item = PathBuf>) -> Result<Vec<String>, CgroupError> {
    let mut names = Vec::new();
    for dir in dirs {
        for child in child_dirs(&dir)? {
            if let Some(name) = child.file_name().and_then(|n| n.to_str())
                && validate_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// An inotify fd (non-blocking, close-on-exec) that becomes readable when `file` is modified;
/// the kernel signals changes of cgroup event files (`memory.events`, `cgroup.events`) so.
fn watch_modify(file: &Path) -> Result<OwnedFd, CgroupError> {
    use rustix::fs::inotify;
    let err = |e: Errno| CgroupError::OomNotifier {
        path: file.to_path_buf(),
        source: e.into(),
    };
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .map_err(err)?;
    inotify::add_watch(&fd, file, inotify::WatchFlags::MODIFY).map_err(err)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_safe_components() {
        for ok in ["a", "0", "agent-1", "a_b", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok:?}");
        }
        let long = "a".repeat(65);
        for bad in [
            "", "-a", "_a", "A", "a/b", ".", "..", "../x", "a.b", "a b", "é", &long, "a\0",
        ] {
            assert!(
                matches!(validate_name(bad), Err(CgroupError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subtree_must_be_ours_and_relative() {
        for ok in [
            "nanoclaw",
            "nanoclaw-test-1-2",
            "system.slice/nanoclaw.service",
        ] {
            assert_eq!(validate_subtree(ok).ok(), Some(PathBuf::from(ok)), "{ok:?}");
        }
        for bad in [
            "",
            "foo",
            "/nanoclaw",
            "../nanoclaw",
            "nanoclaw/..",
            "nanoclaw/../x",
            "./nanoclaw",
            "nanoclaw/",
            "a//nanoclaw",
            "nanoclaw/x",
            "nano\0claw",
        ] {
            assert!(
                matches!(
                    validate_subtree(bad),
                    Err(CgroupError::InvalidSubtree { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            open(
                Layout::V2 {
                    root: PathBuf::from(DEFAULT_ROOT)
                },
                "../etc"
            ),
            Err(CgroupError::InvalidSubtree { .. })
        ));
    }

    #[test]
    fn limits_are_range_checked() {
        let good = Limits {
            memory_max: 1 << 20,
            memory_high: None,
            pids_max: 1,
            cpu_quota_us: Some(1_000),
            cpu_period_us: DEFAULT_CPU_PERIOD_US,
        };
        assert!(good.validate().is_ok());
        let bad = [
            Limits {
                memory_max: 0,
                ..good
            },
            Limits {
                memory_high: Some(0),
                ..good
            },
            Limits {
                pids_max: 0,
                ..good
            },
            Limits {
                cpu_period_us: 999,
                ..good
            },
            Limits {
                cpu_period_us: 1_000_001,
                ..good
            },
            Limits {
                cpu_quota_us: Some(999),
                ..good
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.validate(), Err(CgroupError::InvalidLimits { .. })),
                "{limits:?}"
            );
        }
    }

    #[test]
    fn keyed_and_numeric_files_parse() {
        let dir =
            std::env::temp_dir().join(format!("nanoclaw-cgroup-parse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.events");
        fs::write(
            &file,
            "low 0\nhigh 3\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n",
        )
        .unwrap();
        assert_eq!(read_keyed(&file, "oom_kill").unwrap(), 2);
        assert_eq!(read_keyed(&file, "oom").unwrap(), 2);
        assert_eq!(read_keyed(&file, "absent").unwrap(), 0);
        fs::write(&file, "max\n").unwrap();
        assert_eq!(read_u64(&file).unwrap(), UNLIMITED);
        fs::write(&file, "4096\n").unwrap();
        assert_eq!(read_u64(&file).unwrap(), 4096);
        fs::write(&file, "lots\n").unwrap();
        assert!(matches!(read_u64(&file), Err(CgroupError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = CgroupError::Create {
            path: PathBuf::from("/sys/fs/cgroup/x"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(e.to_string().contains("run the supervisor as root"), "{e}");
        let e = CgroupError::EnableController {
            path: PathBuf::from("/sys/fs/cgroup/x"),
            controller: "memory",
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(e.to_string().contains("enter_supervisor"), "{e}");
    }

    /// What /proc/self/mountinfo says is mounted at `path`: the filesystem type and its
    /// super options (v1 controllers), resolving the symlinks of co-mounted controllers.
    fn mount_at(path: &Path) -> Option<(String, String)> {
        let path = fs::canonicalize(path).ok()?;
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().rev().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1)?;
            (Path::new(mount_point) == path).then(|| (fstype.to_owned(), options.to_owned()))
        })
    }

    #[test]
    fn detect_agrees_with_mountinfo() {
        let root = Path::new(DEFAULT_ROOT);
        let Some((fstype, _)) = mount_at(root) else {
            crate::log!("skipped: nothing mounted at {DEFAULT_ROOT}");
            return;
        };
        let layout = detect(root).unwrap();
        let memory_v1 = mount_at(&root.join("memory"))
            .is_some_and(|(t, o)| t == "cgroup" && o.split(',').any(|o| o == "memory"));
        let unified = mount_at(&root.join("unified")).is_some_and(|(t, _)| t == "cgroup2");
        crate::log!(
            "{DEFAULT_ROOT}: {fstype}, v1 memory {memory_v1}, unified {unified}: {layout:?}"
        );
        let expected = match fstype.as_str() {
            "cgroup2" => Layout::V2 {
                root: root.to_path_buf(),
            },
            "tmpfs" if !memory_v1 && unified => Layout::V2 {
                root: root.join("unified"),
            },
            "tmpfs" => Layout::V1 {
                root: root.to_path_buf(),
                unified: unified.then(|| root.join("unified")),
            },
            other => panic!("unexpected filesystem {other} at {DEFAULT_ROOT}"),
        };
        assert_eq!(layout, expected);
        // This host (DESIGN §2) is the systemd hybrid layout.
        if fstype == "tmpfs" && memory_v1 && unified {
            assert!(matches!(
                layout,
                Layout::V1 {
                    unified: Some(_),
                    ..
                }
            ));
        }
    }

    #[test]
    fn detect_rejects_other_filesystems() {
        assert!(matches!(
            detect(Path::new("/proc")),
            Err(CgroupError::UnknownFilesystem { .. })
        ));
        assert!(matches!(
            detect(Path::new("/nonexistent-nanoclaw")),
            Err(CgroupError::Statfs { .. })
        ));
    }
}

/// Shared by the v1 and v2 tests: real cgroups under a unique subtree, real children, and
/// cleanup that runs even when an assertion fails.
#[cfg(test)]
mod testutil {
    use super::*;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    pub fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    pub fn unique_subtree() -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "nanoclaw-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A subtree of real cgroups plus the children a test started; dropping it kills those
    /// children, kills and removes every agent cgroup in the subtree, then the subtree.
    pub struct Env {
        pub cg: Box<dyn Cgroups>,
        pub layout: Layout,
        pub subtree: String,
        pub children: Vec<Child>,
    }

    impl Env {
        pub fn with_subtree(cg: Box<dyn Cgroups>, subtree: String) -> Self {
            let layout = cg.layout().clone();
            Env {
                cg,
                layout,
                subtree,
                children: Vec::new(),
            }
        }

        /// Starts `sh -c 'read _ && exec <script>'`: it waits on stdin, so the test can move it
        /// into a cgroup before it does anything. Returns its index in `children`.
        pub fn spawn_gated(&mut self, script: &str) -> usize {
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("read _ && exec {script}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.children.push(child);
            self.children.len() - 1
        }

        pub fn pid(&self, index: usize) -> i32 {
            i32::try_from(self.children[index].id()).unwrap()
        }

        pub fn release(&mut self, index: usize) {
            let stdin = self.children[index].stdin.as_mut().unwrap();
            stdin.write_all(b"go\n").unwrap();
            stdin.flush().unwrap();
        }

        pub fn wait(&mut self, index: usize, timeout: Duration) -> Option<ExitStatus> {
            let start = Instant::now();
            while start.elapsed() < timeout {
                if let Some(status) = self.children[index].try_wait().unwrap() {
                    return Some(status);
                }
                sleep(RETRY_INTERVAL);
            }
            None
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Ok(names) = self.cg.list() {
                for name in names {
                    if let Err(e) = self.cg.kill_all(&name) {
                        crate::log!("cleanup: {e}");
                    }
                    if let Err(e) = self.cg.remove(&name) {
                        crate::log!("cleanup: {e}");
                    }
                }
            }
            if let Err(e) = remove_subtree(&self.layout, &self.subtree) {
                crate::log!("cleanup: {e}");
            }
        }
    }

    /// Whether `fd` becomes readable within `timeout`.
    pub fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap(),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        poll(&mut fds, Some(&timeout)).unwrap() == 1 && fds[0].revents().contains(PollFlags::IN)
    }

    pub fn read_trimmed(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }
}
