//! Default-deny seccomp-BPF filters built from named syscall profiles.
//!
//! An agent may only make the syscalls its profile lists: everything else fails with `EPERM`
//! (`default`) or kills the whole process (`strict`). The tables below are explicit per
//! architecture so a review can read exactly what an agent is allowed; x86_64-only legacy calls
//! (`open`, `stat`, `fork`, ...) live in the x86_64 table. The filter is compiled with
//! `seccompiler` (safe API, no libseccomp) and installed by the sandbox right before the agent's
//! `execve`, so `execve` is in every profile.
//!
//! `default` is modelled on Docker's default profile minus everything that reaches outside the
//! sandbox (mounts, namespaces, ptrace, BPF, keyrings, modules, clocks, io_uring, ...). `clone`
//! is allowed only without `CLONE_NEW*` flags and `clone3` returns `ENOSYS` (its flags live in
//! memory a filter cannot read), so libc falls back to `clone`, as under Docker.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

/// A named syscall profile, as requested by a manifest (`"syscalls": "default"`).
///
/// Ordered by permissiveness: `Strict < Default`, so a grant covers a request when
/// `request <= grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    /// The minimum a simple compute/IO program needs: no processes, threads or sockets.
    /// Anything else kills the process with `SIGSYS`.
    Strict,
    /// A broad allowlist for ordinary Linux programs; anything else fails with `EPERM`.
    Default,
}

impl Profile {
    /// Every profile, least permissive first.
    pub const ALL: [Profile; 2] = [Profile::Strict, Profile::Default];

    /// The profile's name as used in manifests and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Strict => "strict",
            Profile::Default => "default",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| SeccompError::UnknownProfile(s.to_owned()))
    }
}

/// Why a seccomp filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown syscall profile {0:?} (known: \"strict\", \"default\")")]
    UnknownProfile(String),
    #[error("no seccomp syscall table for architecture {0:?} (supported: x86_64, aarch64)")]
    UnsupportedArch(&'static str),
    #[error(
        "building the argument filter for {syscall} in the {profile} seccomp profile: {source}"
    )]
    Rule {
        profile: Profile,
        syscall: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("compiling the {profile} seccomp profile to BPF: {source}")]
    Compile {
        profile: Profile,
        #[source]
        source: BackendError,
    },
    #[error("the {profile} seccomp profile needs {len} BPF instructions, the kernel takes {max}")]
    TooLarge {
        profile: Profile,
        len: usize,
        max: usize,
    },
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
}

/// Builds the BPF program for `profile` on the running architecture
/// (`std::env::consts::ARCH`: x86_64 or aarch64).
pub fn compile(profile: Profile) -> Result<BpfProgram, SeccompError> {
    compile_for(profile, true)
}

/// [`compile`], with `memfd_create` left out unless `memfd`. Without BPF LSM nothing else stops
/// a fileless exec from a memfd (Landlock does not judge kernel-internal mounts, and a memfd
/// is not on a noexec mount), so agents that the LSM does not hold get no memfd at all.
pub fn compile_for(profile: Profile, memfd: bool) -> Result<BpfProgram, SeccompError> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => TargetArch::x86_64,
        "aarch64" => TargetArch::aarch64,
        other => return Err(SeccompError::UnsupportedArch(other)),
    };

    // Argument-filtered syscalls go through seccompiler; everything allowed whatever its
    // arguments goes through a binary search in front of it (see `fast_path`).
    let filtered = table::filtered(profile)?;
    let mut plain: Vec<u32> = table::plain(profile)
        .into_iter()
        .filter(|(_, nr)| !filtered.iter().any(|((_, f), _)| f == nr))
        .filter(|(name, _)| memfd || *name != "SYS_memfd_create")
        .map(|(_, nr)| nr as u32)
        .collect();
    plain.sort_unstable();
    plain.dedup();
    let rules: BTreeMap<i64, Vec<SeccompRule>> = filtered
        .into_iter()
        .map(|((_, nr), chain)| (nr, chain))
        .collect();

    let mismatch = match profile {
        Profile::Strict => SeccompAction::KillProcess,
        Profile::Default => SeccompAction::Errno(libc::EPERM as u32),
    };
    let clone3 = (profile == Profile::Default).then_some(table::CLONE3_NR);
    let mut program = fast_path(audit_arch(arch), clone3, &plain);
    if rules.is_empty() {
        program.push(insn(RET_K, 0, 0, u32::from(mismatch.clone())));
    } else {
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
            .map_err(|source| SeccompError::Compile { profile, source })?;
        let body: BpfProgram = filter
            .try_into()
            .map_err(|source| SeccompError::Compile { profile, source })?;
        program.extend(body);
    }

    // BPF_MAXINSNS in the kernel.
    const MAX_INSNS: usize = 4096;
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge {
            profile,
            len: program.len(),
            max: MAX_INSNS,
        });
    }
    Ok(program)
}

// Classic BPF opcodes (linux/filter.h) and the seccomp_data layout (linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn audit_arch(arch: TargetArch) -> u32 {
    match arch {
        TargetArch::x86_64 => 0xc000_003e,
        _ => 0xc000_00b7,
    }
}

/// The front of every filter: on the native architecture, `clone3` (if given) returns
/// `ENOSYS`, and every syscall in `plain` (sorted) is allowed after a binary search (about
/// log2(n) comparisons instead of a linear chain). Anything else — a foreign architecture,
/// an argument-filtered or a denied syscall — falls through to the instructions that follow.
///
/// Besides checking fewer instructions per syscall, the tree matters at install time: the
/// kernel emulates the whole filter once per syscall number to build its allow-cache, which
/// with a ~1,450-instruction linear chain cost ~1.3 ms of every sandbox start.
fn fast_path(audit_arch: u32, clone3: Option<u32>, plain: &[u32]) -> Vec<sock_filter> {
    let mut rest = vec![insn(LD_W_ABS, 0, 0, NR_OFFSET)];
    if let Some(nr) = clone3 {
        rest.push(insn(JEQ_K, 0, 1, nr));
        rest.push(insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    }
    rest.extend(search(plain));
    let mut out = vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        insn(JEQ_K, 1, 0, audit_arch),
        // Foreign architecture: straight to what follows (seccompiler's program kills it).
        insn(JA, 0, 0, rest.len() as u32),
    ];
    out.extend(rest);
    out
}

/// Code that returns ALLOW when the accumulator (the syscall number) is one of `vals`
/// (sorted) and otherwise runs off its end.
fn search(vals: &[u32]) -> Vec<sock_filter> {
    if vals.len() <= 4 {
        let n = vals.len();
        let mut out: Vec<sock_filter> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| insn(JEQ_K, (n - i) as u8, 0, v))
            .collect();
        out.push(insn(JA, 0, 0, 1));
        out.push(insn(RET_K, 0, 0, SECCOMP_RET_ALLOW));
        return out;
    }
    let mid = vals.len() / 2;
    let left = search(&vals[..mid]);
    let right = search(&vals[mid..]);
    let mut out = vec![
        // nr >= vals[mid]: the right half; else the left half.
        insn(JGE_K, 0, 1, vals[mid]),
        insn(JA, 0, 0, left.len() as u32 + 1),
    ];
    out.extend(left);
    out.push(insn(JA, 0, 0, right.len() as u32));
    out.extend(right);
    out
}

/// `compile_for(profile, memfd)`, computed once per process and packed for the sandbox spec: the
/// supervisor compiles each profile once instead of every sandbox init compiling it per start.
pub fn packed(profile: Profile, memfd: bool) -> Result<&'static [u64], SeccompError> {
    type Cell = std::sync::OnceLock<Vec<u64>>;
    static CELLS: [Cell; 4] = [Cell::new(), Cell::new(), Cell::new(), Cell::new()];
    let cell = &CELLS[usize::from(profile == Profile::Strict) * 2 + usize::from(memfd)];
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = pack(&compile_for(profile, memfd)?);
    Ok(cell.get_or_init(|| v))
}

/// One BPF instruction per u64: `code | jt << 16 | jf << 24 | k << 32`.
pub fn pack(prog: &BpfProgram) -> Vec<u64> {
    prog.iter()
        .map(|i| {
            u64::from(i.code) | u64::from(i.jt) << 16 | u64::from(i.jf) << 24 | u64::from(i.k) << 32
        })
        .collect()
}

/// The inverse of [`pack`]; refuses an empty or oversized program.
pub fn unpack(v: &[u64]) -> Result<BpfProgram, String> {
    if v.is_empty() || v.len() > 4096 {
        return Err(format!(
            "seccomp program of {} instructions (1..=4096 allowed)",
            v.len()
        ));
    }
    Ok(v.iter()
        .map(|&w| seccompiler::sock_filter {
            code: (w & 0xffff) as u16,
            jt: (w >> 16 & 0xff) as u8,
            jf: (w >> 24 & 0xff) as u8,
            k: (w >> 32) as u32,
        })
        .collect())
}

/// Installs `prog` on the calling thread (not the other threads of the process); it is
/// inherited across `fork`/`clone` and `execve` and can never be removed.
///
/// The kernel only accepts a filter from an unprivileged task with `no_new_privs` set: the
/// sandbox sets it (`PR_SET_NO_NEW_PRIVS`) before calling this. `seccompiler` sets it again,
/// which is a no-op. With the `strict` profile every syscall after this one that the profile
/// does not list kills the process, so call it last, right before `execve`.
pub fn install(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Install)
}

/// The names of the syscalls `profile` allows on this architecture (some only with the
/// argument checks described in the module doc), sorted; for `nanoclaw status` and docs.
pub fn allowed_syscalls(profile: Profile) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = table::plain(profile)
        .into_iter()
        .chain(table::filtered_names(profile))
        .map(|(name, _)| short_name(name))
        .collect();
    names.sort_unstable();
    names
}

/// The name of syscall `nr` on this architecture, if the `default` profile knows it.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    table::plain(Profile::Default)
        .into_iter()
        .chain(table::filtered_names(Profile::Default))
        .find(|(_, n)| *n == i64::from(nr))
        .map(|(name, _)| short_name(name))
}

/// The number of syscall `name` (without `SYS_`) on this architecture, if any profile knows it.
pub fn syscall_number(name: &str) -> Option<u32> {
    table::plain(Profile::Default)
        .into_iter()
        .chain(table::filtered_names(Profile::Default))
        .find(|(n, _)| short_name(n) == name)
        .and_then(|(_, nr)| u32::try_from(nr).ok())
}

fn short_name(name: &'static str) -> &'static str {
    name.strip_prefix("SYS_").unwrap_or(name)
}

/// A syscall as `("SYS_name", number)` on the running architecture.
type Sys = (&'static str, i64);

/// Syscall numbers: libc's `SYS_*`, plus the few that libc's aarch64 tables lack (gnu or musl)
/// (numbers from the kernel's asm-generic/unistd.h, which aarch64 uses).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(non_upper_case_globals)]
mod nr {
    pub use libc::*;

    #[cfg(target_arch = "aarch64")]
    pub const SYS_renameat: i64 = 38;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_sync_file_range: i64 = 84;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_getrlimit: i64 = 163;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_setrlimit: i64 = 164;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_fchmodat2: i64 = 452;
}

/// `syscalls![SYS_read, SYS_write]` is `&[("SYS_read", nr::SYS_read), ...]`.
macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), nr::$name)),*]
    };
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod table {
    use super::*;

    /// Flags that make `clone` create namespaces (`CLONE_NEWTIME` is clone3/unshare-only).
    const CLONE_NEW_MASK: u64 = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;

    /// `personality(2)` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
    /// UNAME26|PER_LINUX32 and the 0xffffffff query.
    const SAFE_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

    /// Terminal ioctls a strict agent may issue: isatty, window size, bytes available,
    /// non-blocking and close-on-exec toggles.
    const STRICT_IOCTLS: [libc::Ioctl; 6] = [
        libc::TCGETS,
        libc::TIOCGWINSZ,
        libc::FIONREAD,
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::FIONCLEX,
    ];

    /// Ioctls no agent may issue: faking terminal input and the VT console multiplexer.
    const DENIED_IOCTLS: [libc::Ioctl; 2] = [libc::TIOCSTI, libc::TIOCLINUX];

    /// An ioctl request as a filter operand (`libc::Ioctl` is `c_ulong` on glibc, `c_int` on
    /// musl; requests are 32-bit values either way).
    #[allow(clippy::unnecessary_cast)]
    fn ioctl_cmd(cmd: libc::Ioctl) -> u64 {
        cmd as u64
    }

    /// `strict`, both architectures.
    #[rustfmt::skip]
    const STRICT_COMMON: &[Sys] = syscalls![
        // file descriptors and files
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_close, SYS_lseek,
        SYS_openat, SYS_fstat, SYS_newfstatat, SYS_statx, SYS_faccessat, SYS_faccessat2, SYS_fcntl,
        SYS_getdents64, SYS_getcwd, SYS_readlinkat, SYS_dup, SYS_dup3, SYS_pipe2, SYS_ppoll,
        // memory
        SYS_brk, SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise,
        // signals
        SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sigaltstack, SYS_tgkill,
        SYS_restart_syscall,
        // time
        SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep, SYS_gettimeofday,
        // process and runtime
        SYS_futex, SYS_getpid, SYS_gettid, SYS_getppid, SYS_getuid, SYS_geteuid, SYS_getgid,
        SYS_getegid, SYS_getrandom, SYS_set_tid_address, SYS_set_robust_list, SYS_rseq,
        SYS_prlimit64, SYS_sched_yield, SYS_sched_getaffinity, SYS_uname, SYS_execve, SYS_exit,
        SYS_exit_group,
    ];

    /// `strict`, x86_64 only: legacy forms of calls listed above, which musl (the usual libc
    /// of static agents) still uses there, e.g. `open` for `open(3)`.
    #[cfg(target_arch = "x86_64")]
    #[rustfmt::skip]
    const STRICT_ARCH: &[Sys] = syscalls![
        SYS_arch_prctl, SYS_open, SYS_stat, SYS_lstat, SYS_access, SYS_readlink, SYS_poll,
        SYS_pipe, SYS_dup2,
    ];
    #[cfg(target_arch = "aarch64")]
    const STRICT_ARCH: &[Sys] = syscalls![];

    /// `default`, both architectures.
    #[rustfmt::skip]
    const DEFAULT_COMMON: &[Sys] = syscalls![
        // file descriptors and files
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_preadv,
        SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_openat, SYS_openat2, SYS_close, SYS_close_range,
        SYS_lseek, SYS_fstat, SYS_newfstatat, SYS_statx, SYS_statfs, SYS_fstatfs, SYS_faccessat,
        SYS_faccessat2, SYS_fcntl, SYS_flock, SYS_fsync, SYS_fdatasync, SYS_sync, SYS_syncfs,
        SYS_sync_file_range, SYS_truncate, SYS_ftruncate, SYS_fallocate, SYS_fadvise64,
        SYS_readahead, SYS_getdents64, SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_mkdirat, SYS_mknodat,
        SYS_unlinkat, SYS_renameat, SYS_renameat2, SYS_linkat, SYS_symlinkat, SYS_readlinkat,
        SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown, SYS_fchownat, SYS_umask, SYS_utimensat,
        SYS_dup, SYS_dup3, SYS_pipe2, SYS_sendfile, SYS_splice, SYS_tee, SYS_vmsplice,
        SYS_copy_file_range, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr, SYS_listxattr,
        SYS_llistxattr, SYS_flistxattr, SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_removexattr,
        SYS_lremovexattr, SYS_fremovexattr, SYS_inotify_init1, SYS_inotify_add_watch,
        SYS_inotify_rm_watch, SYS_memfd_create,
        // polling and event fds
        SYS_ppoll, SYS_pselect6, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait,
        SYS_epoll_pwait2, SYS_eventfd2, SYS_signalfd4, SYS_timerfd_create, SYS_timerfd_settime,
        SYS_timerfd_gettime,
        // Linux AIO
        SYS_io_setup, SYS_io_destroy, SYS_io_submit, SYS_io_cancel, SYS_io_getevents,
        // memory
        SYS_brk, SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise, SYS_mincore,
        SYS_msync, SYS_mlock, SYS_mlock2, SYS_munlock, SYS_mlockall, SYS_munlockall, SYS_membarrier,
        SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect, SYS_remap_file_pages, SYS_mseal,
        // processes, threads, credentials (no capabilities: these can only drop)
        SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group, SYS_wait4, SYS_waitid, SYS_kill,
        SYS_tkill, SYS_tgkill, SYS_getpid, SYS_getppid, SYS_gettid, SYS_getpgid, SYS_setpgid,
        SYS_getsid, SYS_setsid, SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid, SYS_getresuid,
        SYS_getresgid, SYS_getgroups, SYS_setuid, SYS_setgid, SYS_setreuid, SYS_setregid,
        SYS_setresuid, SYS_setresgid, SYS_setgroups, SYS_setfsuid, SYS_setfsgid, SYS_capget,
        SYS_capset, SYS_prctl, SYS_getrlimit, SYS_setrlimit, SYS_prlimit64, SYS_getrusage,
        SYS_getpriority, SYS_setpriority, SYS_sched_yield, SYS_sched_getaffinity,
        SYS_sched_setaffinity, SYS_sched_getparam, SYS_sched_setparam, SYS_sched_getscheduler,
        SYS_sched_setscheduler, SYS_sched_getattr, SYS_sched_setattr, SYS_sched_get_priority_max,
        SYS_sched_get_priority_min, SYS_sched_rr_get_interval, SYS_ioprio_get, SYS_ioprio_set,
        SYS_getcpu, SYS_set_tid_address, SYS_set_robust_list, SYS_get_robust_list, SYS_rseq,
        SYS_futex, SYS_futex_waitv, SYS_restart_syscall, SYS_pidfd_open, SYS_pidfd_send_signal,
        SYS_process_mrelease, SYS_uname, SYS_sysinfo, SYS_getrandom,
        // self-restriction only
        SYS_seccomp, SYS_landlock_create_ruleset, SYS_landlock_add_rule, SYS_landlock_restrict_self,
        // signals
        SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigpending,
        SYS_rt_sigtimedwait, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_rt_sigsuspend,
        SYS_sigaltstack,
        // time (reading and timers only)
        SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep, SYS_gettimeofday,
        SYS_times, SYS_getitimer, SYS_setitimer, SYS_timer_create, SYS_timer_settime,
        SYS_timer_gettime, SYS_timer_getoverrun, SYS_timer_delete,
        // sockets (the network is an empty netns plus eBPF egress rules); `socket` is filtered
        SYS_socketpair, SYS_bind, SYS_listen, SYS_accept, SYS_accept4, SYS_connect, SYS_shutdown,
        SYS_getsockname, SYS_getpeername, SYS_getsockopt, SYS_setsockopt, SYS_sendto, SYS_recvfrom,
        SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg, SYS_recvmmsg,
        // System V and POSIX IPC (private IPC namespace)
        SYS_shmget, SYS_shmat, SYS_shmdt, SYS_shmctl, SYS_semget, SYS_semop, SYS_semtimedop,
        SYS_semctl, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_mq_open, SYS_mq_unlink,
        SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr,
    ];

    /// `default`, x86_64 only: the legacy calls aarch64 never had.
    #[cfg(target_arch = "x86_64")]
    #[rustfmt::skip]
    const DEFAULT_ARCH: &[Sys] = syscalls![
        SYS_open, SYS_creat, SYS_stat, SYS_lstat, SYS_access, SYS_poll, SYS_select, SYS_pipe,
        SYS_dup2, SYS_fork, SYS_vfork, SYS_epoll_create, SYS_epoll_wait, SYS_inotify_init,
        SYS_eventfd, SYS_signalfd, SYS_mkdir, SYS_rmdir, SYS_rename, SYS_link, SYS_unlink,
        SYS_symlink, SYS_readlink, SYS_chmod, SYS_chown, SYS_lchown, SYS_getdents, SYS_alarm,
        SYS_pause, SYS_time, SYS_utime, SYS_utimes, SYS_futimesat, SYS_getpgrp, SYS_mknod,
        SYS_arch_prctl,
    ];
    #[cfg(target_arch = "aarch64")]
    const DEFAULT_ARCH: &[Sys] = syscalls![];

    /// Syscalls `profile` allows whatever their arguments.
    pub(super) fn plain(profile: Profile) -> Vec<Sys> {
        let (common, arch) = match profile {
            Profile::Strict => (STRICT_COMMON, STRICT_ARCH),
            Profile::Default => (DEFAULT_COMMON, DEFAULT_ARCH),
        };
        common.iter().chain(arch).copied().collect()
    }

    /// Syscalls `profile` allows only with some arguments (see [`filtered`]).
    pub(super) fn filtered_names(profile: Profile) -> Vec<Sys> {
        match profile {
            Profile::Strict => syscalls![SYS_ioctl].to_vec(),
            Profile::Default => {
                syscalls![SYS_ioctl, SYS_clone, SYS_personality, SYS_socket].to_vec()
            }
        }
    }

    /// The argument-filtered syscalls of `profile` with their rule chains (a call is allowed
    /// when any rule matches; a rule matches when all its conditions hold).
    pub(super) fn filtered(profile: Profile) -> Result<Vec<(Sys, Vec<SeccompRule>)>, SeccompError> {
        let mut out = Vec::new();
        for sys in filtered_names(profile) {
            let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|source| {
                    SeccompError::Rule {
                        profile,
                        syscall: short_name(sys.0),
                        source,
                    }
                })
            };
            let rule = |conditions: Vec<SeccompCondition>| {
                SeccompRule::new(conditions).map_err(|source| SeccompError::Rule {
                    profile,
                    syscall: short_name(sys.0),
                    source,
                })
            };
            // Every argument compared here is a 32-bit `int`/`unsigned int` in the kernel (or,
            // for clone's flags, only low bits are checked), so Dword comparisons are exact.
            let chain = match (profile, sys.0) {
                // ioctl(fd, cmd, ...): cmd is arg 1.
                (Profile::Strict, "SYS_ioctl") => STRICT_IOCTLS
                    .iter()
                    .map(|&cmd| rule(vec![cond(1, SeccompCmpOp::Eq, ioctl_cmd(cmd))?]))
                    .collect::<Result<_, _>>()?,
                (Profile::Default, "SYS_ioctl") => vec![rule(
                    DENIED_IOCTLS
                        .iter()
                        .map(|&cmd| cond(1, SeccompCmpOp::Ne, ioctl_cmd(cmd)))
                        .collect::<Result<_, _>>()?,
                )?],
                // clone(flags, ...) on both x86_64 and aarch64: no namespace flags.
                (Profile::Default, "SYS_clone") => vec![rule(vec![cond(
                    0,
                    SeccompCmpOp::MaskedEq(CLONE_NEW_MASK),
                    0,
                )?])?],
                (Profile::Default, "SYS_personality") => SAFE_PERSONALITIES
                    .iter()
                    .map(|&p| rule(vec![cond(0, SeccompCmpOp::Eq, p)?]))
                    .collect::<Result<_, _>>()?,
                // socket(domain, ...): no vsock, which is not namespaced and reaches the host.
                (Profile::Default, "SYS_socket") => vec![rule(vec![cond(
                    0,
                    SeccompCmpOp::Ne,
                    libc::AF_VSOCK as u64,
                )?])?],
                (_, name) => {
                    // filtered_names and this match are kept in step by the unit tests.
                    return Err(SeccompError::Rule {
                        profile,
                        syscall: short_name(name),
                        source: BackendError::EmptyRule,
                    });
                }
            };
            out.push((sys, chain));
        }
        Ok(out)
    }

    /// `clone3`, which returns `ENOSYS` under the default profile.
    pub(super) const CLONE3_NR: u32 = nr::SYS_clone3 as u32;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod table {
    //! No tables: `compile` refuses other architectures before looking here.
    use super::*;

    pub(super) fn plain(_: Profile) -> Vec<Sys> {
        Vec::new()
    }
    pub(super) fn filtered_names(_: Profile) -> Vec<Sys> {
        Vec::new()
    }
    pub(super) fn filtered(_: Profile) -> Result<Vec<(Sys, Vec<SeccompRule>)>, SeccompError> {
        Ok(Vec::new())
    }
    pub(super) const CLONE3_NR: u32 = 0;
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    /// Runs the subset of classic BPF that `fast_path` emits; `None` = ran off the end.
    fn eval(prog: &[sock_filter], arch: u32, nr: u32) -> Option<u32> {
        let (mut pc, mut acc) = (0usize, 0u32);
        while pc < prog.len() {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = if i.k == ARCH_OFFSET { arch } else { nr },
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                JA => pc += i.k as usize,
                RET_K => return Some(i.k),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        None
    }

    #[test]
    fn fast_path_allows_exactly_the_plain_set() {
        const ARCH: u32 = 0xc000_003e;
        for n in [0usize, 1, 4, 5, 9, 64, 300] {
            // Sparse, sorted syscall numbers.
            let plain: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
            let prog = fast_path(ARCH, Some(435), &plain);
            for nr in 0..1200u32 {
                let want = if nr == 435 {
                    Some(SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
                } else if plain.binary_search(&nr).is_ok() {
                    Some(SECCOMP_RET_ALLOW)
                } else {
                    None
                };
                assert_eq!(eval(&prog, ARCH, nr), want, "n={n} nr={nr}");
                // A foreign architecture never matches anything here.
                assert_eq!(eval(&prog, 0x4000_0003, nr), None, "n={n} nr={nr}");
            }
        }
    }

    #[test]
    fn filters_are_small_enough_for_a_fast_install() {
        // The linear chain was ~1,450 instructions; the tree keeps each profile well below.
        for p in Profile::ALL {
            let len = compile(p).unwrap().len();
            assert!(len < 900, "{p}: {len} instructions");
        }
    }

    #[test]
    fn pack_round_trips_and_caches() {
        for p in Profile::ALL {
            let prog = compile(p).unwrap();
            let packed = packed(p, true).unwrap();
            let back = unpack(packed).unwrap();
            assert_eq!(back.len(), prog.len());
            for (a, b) in back.iter().zip(&prog) {
                assert_eq!((a.code, a.jt, a.jf, a.k), (b.code, b.jt, b.jf, b.k));
            }
            assert!(std::ptr::eq(packed, packed_again(p)));
        }
        assert!(unpack(&[]).is_err());
        assert!(unpack(&vec![0; 4097]).is_err());
    }

    fn packed_again(p: Profile) -> &'static [u64] {
        packed(p, true).unwrap()
    }
}

#[cfg(test)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
// Raw syscalls are the point of these tests; they go through `crate::sys` like all unsafe.
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Output};

    /// Syscalls no profile may allow (names without `SYS_`).
    #[rustfmt::skip]
    const DENIED: &[&str] = &[
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "ptrace",
        "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "keyctl", "add_key",
        "request_key", "kexec_load", "kexec_file_load", "init_module", "finit_module",
        "delete_module", "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime",
        "adjtimex", "clock_adjtime", "open_by_handle_at", "name_to_handle_at", "userfaultfd",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "syslog", "quotactl",
        "quotactl_fd", "lookup_dcookie", "fanotify_init", "mount_setattr", "fsopen", "fsmount",
        "fsconfig", "fspick", "move_mount", "open_tree", "clone3", "kcmp", "pidfd_getfd",
        "process_madvise", "sethostname", "setdomainname", "vhangup", "mbind", "set_mempolicy",
        "migrate_pages", "move_pages", "nfsservctl",
        // x86_64 only
        "iopl", "ioperm", "modify_ldt", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
        "stime",
    ];

    fn numbers(profile: Profile) -> Vec<Sys> {
        let mut all = table::plain(profile);
        all.extend(table::filtered_names(profile));
        all
    }

    #[test]
    fn both_profiles_compile_on_this_arch() {
        for profile in Profile::ALL {
            let prog = compile(profile).unwrap();
            assert!(prog.len() > 100, "{profile}: {} instructions", prog.len());
        }
    }

    #[test]
    fn profile_names_round_trip_and_order() {
        for profile in Profile::ALL {
            assert_eq!(profile.to_string().parse::<Profile>().unwrap(), profile);
        }
        assert_eq!("strict".parse::<Profile>().unwrap(), Profile::Strict);
        assert_eq!("default".parse::<Profile>().unwrap(), Profile::Default);
        let err = "Default".parse::<Profile>().unwrap_err();
        assert!(err.to_string().contains("\"Default\""), "{err}");
        assert!(Profile::Strict < Profile::Default);
    }

    #[test]
    fn denied_syscalls_are_absent_from_every_table() {
        for profile in Profile::ALL {
            let allowed = allowed_syscalls(profile);
            for name in DENIED {
                assert!(!allowed.contains(name), "{profile} allows {name}");
            }
        }
        // clone3 is answered by the prelude, never by the allowlist.
        let clone3 = nr::SYS_clone3;
        assert!(numbers(Profile::Default).iter().all(|&(_, n)| n != clone3));
    }

    #[test]
    fn denied_numbers_are_absent_from_every_table() {
        #[rustfmt::skip]
        let denied: &[Sys] = syscalls![
            SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_unshare, SYS_setns, SYS_ptrace,
            SYS_process_vm_readv, SYS_process_vm_writev, SYS_bpf, SYS_perf_event_open, SYS_keyctl,
            SYS_add_key, SYS_request_key, SYS_kexec_load, SYS_init_module, SYS_finit_module,
            SYS_delete_module, SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct, SYS_settimeofday,
            SYS_clock_settime, SYS_adjtimex, SYS_clock_adjtime, SYS_open_by_handle_at,
            SYS_userfaultfd, SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
            SYS_syslog, SYS_quotactl, SYS_lookup_dcookie, SYS_fanotify_init, SYS_mount_setattr,
            SYS_fsopen, SYS_fsmount, SYS_fsconfig, SYS_fspick, SYS_move_mount, SYS_open_tree,
            SYS_clone3, SYS_kcmp, SYS_pidfd_getfd,
        ];
        for profile in Profile::ALL {
            let allowed: HashSet<i64> = numbers(profile).iter().map(|&(_, n)| n).collect();
            for (name, n) in denied {
                assert!(!allowed.contains(n), "{profile} allows {name} ({n})");
            }
        }
    }

    #[test]
    fn tables_have_no_duplicates_and_strict_is_a_subset_of_default() {
        for profile in Profile::ALL {
            let all = numbers(profile);
            let names: HashSet<_> = all.iter().map(|&(name, _)| name).collect();
            let nrs: HashSet<_> = all.iter().map(|&(_, n)| n).collect();
            assert_eq!(names.len(), all.len(), "{profile}: a name is listed twice");
            assert_eq!(nrs.len(), all.len(), "{profile}: two names share a number");
        }
        let default: HashSet<_> = allowed_syscalls(Profile::Default).into_iter().collect();
        for name in allowed_syscalls(Profile::Strict) {
            assert!(
                default.contains(name),
                "strict allows {name}, default does not"
            );
        }
    }

    #[test]
    fn every_filtered_syscall_has_rules() {
        for profile in Profile::ALL {
            let filtered = table::filtered(profile).unwrap();
            assert_eq!(filtered.len(), table::filtered_names(profile).len());
            assert!(filtered.iter().all(|(_, chain)| !chain.is_empty()));
        }
    }

    // ---- real-kernel tests: each re-runs this test binary as a child that installs a
    // ---- filter, because a filter can never be removed from the process that installed it.

    const CHILD_ENV: &str = "NANOCLAW_SECCOMP_TEST_CHILD";

    /// In the child run of `test`?
    fn in_child(test: &str) -> bool {
        std::env::var(CHILD_ENV).as_deref() == Ok(test)
    }

    /// Runs this test binary again with only `test` selected, as a child. `None` when the
    /// binary cannot be re-executed (ENOEXEC: an emulated target under qemu-user, which cannot
    /// test the kernel's sandboxing anyway; the VM tier covers that architecture).
    fn run_child(test: &str) -> Option<Output> {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let result = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::{test}")])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, test)
            .output();
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                crate::log!("SKIPPED {test}: cannot re-execute the test binary ({e}): emulated?");
                None
            }
            other => Some(other.unwrap()),
        }
    }

    fn describe(out: &Output) -> String {
        format!(
            "child {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Ends the child: 0 when `result` is Ok, 1 with the message on stderr otherwise.
    fn exit_child(result: Result<(), String>) -> ! {
        match result {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                crate::log!("CHILD FAILED: {e}");
                std::process::exit(1)
            }
        }
    }

    /// no_new_privs (as the sandbox does), no core dumps, then `profile`'s filter.
    fn sandbox_self(profile: Profile) -> Result<(), String> {
        let prog = compile(profile).map_err(|e| e.to_string())?;
        crate::sys::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        crate::sys::set_rlimit(libc::RLIMIT_CORE as libc::c_int, 0)
            .map_err(|e| format!("setrlimit: {e}"))?;
        install(&prog).map_err(|e| e.to_string())
    }

    /// `ret` and errno of a raw syscall with six integer arguments.
    fn raw(nr: i64, args: [i64; 6]) -> (i64, i32) {
        crate::sys::testing::syscall6(nr, args)
    }

    fn expect_errno(what: &str, (ret, errno): (i64, i32), want: i32) -> Result<(), String> {
        if ret == -1 && errno == want {
            Ok(())
        } else {
            Err(format!(
                "{what}: got ret={ret} errno={errno}, want errno {want}"
            ))
        }
    }

    fn default_child() -> Result<(), String> {
        sandbox_self(Profile::Default)?;

        // Allowed: identity, threads (clone3 -> ENOSYS -> clone fallback), fork, exec, pipes.
        let (pid, _) = raw(nr::SYS_getpid, [0; 6]);
        if pid != i64::from(std::process::id()) {
            return Err(format!("getpid returned {pid}"));
        }
        let answer = std::thread::spawn(|| 42)
            .join()
            .map_err(|_| "thread panicked")?;
        if answer != 42 {
            return Err("thread".into());
        }
        // This test child is single-threaded here (the thread above was joined).
        let child = crate::sys::fork().map_err(|e| format!("fork: {e}"))?;
        if child == 0 {
            crate::sys::exit_now(7);
        }
        let waited = rustix::process::waitpid(
            rustix::process::Pid::from_raw(child),
            rustix::process::WaitOptions::empty(),
        );
        match waited {
            Ok(Some((_, st))) if st.exit_status() == Some(7) => {}
            other => return Err(format!("fork: pid {child}, wait {other:?}")),
        }
        let out = Command::new("/bin/sh")
            .args(["-c", "echo hi | cat"])
            .output()
            .map_err(|e| format!("spawning /bin/sh: {e}"))?;
        if !out.status.success() || out.stdout != b"hi\n" {
            return Err(format!("/bin/sh pipeline: {out:?}"));
        }
        let (query, _) = raw(nr::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]);
        if query < 0 {
            return Err("personality query denied".into());
        }
        let (fd, errno) = raw(
            nr::SYS_socket,
            [libc::AF_UNIX.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
        );
        if fd < 0 {
            return Err(format!("AF_UNIX socket denied: errno {errno}"));
        }

        // Denied with EPERM; without the filter each of these fails differently or succeeds.
        let eperm = libc::EPERM;
        expect_errno("clone3", raw(nr::SYS_clone3, [0; 6]), libc::ENOSYS)?;
        // The mount point does not exist, so without the filter this fails with ENOENT.
        let mounted = crate::sys::mount(
            Some(c"none"),
            c"/nonexistent-nanoclaw-seccomp-test",
            Some(c"tmpfs"),
            0,
            None,
        );
        let mount_errno = mounted.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
        expect_errno(
            "mount",
            (if mount_errno == 0 { 0 } else { -1 }, mount_errno),
            eperm,
        )?;
        expect_errno(
            "unshare(CLONE_NEWNS)",
            raw(nr::SYS_unshare, [libc::CLONE_NEWNS.into(), 0, 0, 0, 0, 0]),
            eperm,
        )?;
        let flags = i64::from(libc::CLONE_NEWUSER | libc::SIGCHLD);
        let cloned = raw(nr::SYS_clone, [flags, 0, 0, 0, 0, 0]);
        if cloned.0 == 0 {
            // We are an unexpected fork-like child: leave at once.
            crate::sys::exit_now(0);
        }
        expect_errno("clone(CLONE_NEWUSER)", cloned, eperm)?;
        expect_errno(
            "personality(ADDR_NO_RANDOMIZE)",
            raw(nr::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]),
            eperm,
        )?;
        expect_errno(
            "socket(AF_VSOCK)",
            raw(
                nr::SYS_socket,
                [libc::AF_VSOCK.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
            ),
            eperm,
        )?;
        expect_errno(
            "ioctl(TIOCSTI)",
            raw(nr::SYS_ioctl, [0, libc::TIOCSTI as i64, 0, 0, 0, 0]),
            eperm,
        )?;
        // Harmless argument sets (bogus commands, null pointers, bad fds).
        let denied: &[(&str, i64, [i64; 6])] = &[
            ("ptrace", nr::SYS_ptrace, [-1, 0, 0, 0, 0, 0]),
            ("bpf", nr::SYS_bpf, [-1, 0, 0, 0, 0, 0]),
            (
                "perf_event_open",
                nr::SYS_perf_event_open,
                [0, 0, -1, -1, 0, 0],
            ),
            ("keyctl", nr::SYS_keyctl, [-1, 0, 0, 0, 0, 0]),
            ("userfaultfd", nr::SYS_userfaultfd, [-1, 0, 0, 0, 0, 0]),
            ("io_uring_setup", nr::SYS_io_uring_setup, [0, 0, 0, 0, 0, 0]),
            ("setns", nr::SYS_setns, [-1, 0, 0, 0, 0, 0]),
            ("pivot_root", nr::SYS_pivot_root, [0, 0, 0, 0, 0, 0]),
            ("chroot", nr::SYS_chroot, [0, 0, 0, 0, 0, 0]),
            ("swapoff", nr::SYS_swapoff, [0, 0, 0, 0, 0, 0]),
            ("syslog", nr::SYS_syslog, [-1, 0, 0, 0, 0, 0]),
            (
                "open_by_handle_at",
                nr::SYS_open_by_handle_at,
                [-1, 0, 0, 0, 0, 0],
            ),
            (
                "process_vm_readv",
                nr::SYS_process_vm_readv,
                [0, 0, 0, 0, 0, 0],
            ),
            ("clock_settime", nr::SYS_clock_settime, [-1, 0, 0, 0, 0, 0]),
            ("fsopen", nr::SYS_fsopen, [0, 0, 0, 0, 0, 0]),
            ("reboot", nr::SYS_reboot, [0, 0, 0, 0, 0, 0]),
        ];
        for &(name, n, args) in denied {
            expect_errno(name, raw(n, args), eperm)?;
        }
        Ok(())
    }

    #[test]
    fn default_profile_allows_programs_and_denies_escapes_with_eperm() {
        const NAME: &str = "default_profile_allows_programs_and_denies_escapes_with_eperm";
        if in_child(NAME) {
            exit_child(default_child());
        }
        let Some(out) = run_child(NAME) else {
            return;
        };
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    #[test]
    fn without_memfd_the_default_profile_refuses_memfd_create() {
        const NAME: &str = "without_memfd_the_default_profile_refuses_memfd_create";
        if in_child(NAME) {
            let run = || -> Result<(), String> {
                let prog = compile_for(Profile::Default, false).map_err(|e| e.to_string())?;
                crate::sys::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
                install(&prog).map_err(|e| e.to_string())?;
                let name = c"x".as_ptr() as i64;
                expect_errno(
                    "memfd_create",
                    raw(nr::SYS_memfd_create, [name, 0, 0, 0, 0, 0]),
                    libc::EPERM,
                )?;
                // Everything else of the default profile still works.
                std::fs::read("/proc/self/stat").map_err(|e| e.to_string())?;
                Ok(())
            };
            exit_child(run());
        }
        let Some(out) = run_child(NAME) else {
            return;
        };
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            allowed_syscalls(Profile::Default).contains(&"memfd_create"),
            "with BPF LSM holding the agent, memfd stays allowed"
        );
    }

    #[test]
    fn strict_profile_kills_on_socket() {
        const NAME: &str = "strict_profile_kills_on_socket";
        if in_child(NAME) {
            let run = || -> Result<(), String> {
                sandbox_self(Profile::Strict)?;
                // Allowed: files, isatty, time, identity.
                let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
                let tcgets = raw(nr::SYS_ioctl, [fd.into(), libc::TCGETS as i64, 0, 0, 0, 0]);
                expect_errno("ioctl(/dev/null, TCGETS)", tcgets, libc::ENOTTY)?;
                let _ = std::time::Instant::now();
                crate::log!("alive before socket, pid {}", std::process::id());
                raw(
                    nr::SYS_socket,
                    [libc::AF_UNIX.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
                );
                Err("socket() returned under the strict profile".into())
            };
            exit_child(run());
        }
        let Some(out) = run_child(NAME) else {
            return;
        };
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("alive before socket"),
            "{}",
            describe(&out)
        );
    }

    #[test]
    fn strict_profile_kills_on_unlisted_ioctl() {
        const NAME: &str = "strict_profile_kills_on_unlisted_ioctl";
        if in_child(NAME) {
            let run = || -> Result<(), String> {
                sandbox_self(Profile::Strict)?;
                raw(nr::SYS_ioctl, [0, libc::TIOCSTI as i64, 0, 0, 0, 0]);
                Err("ioctl(TIOCSTI) returned under the strict profile".into())
            };
            exit_child(run());
        }
        let Some(out) = run_child(NAME) else {
            return;
        };
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{}",
            describe(&out)
        );
    }

    #[test]
    fn strict_profile_runs_a_dynamic_binary() {
        const NAME: &str = "strict_profile_runs_a_dynamic_binary";
        if in_child(NAME) {
            let run = || -> Result<(), String> {
                sandbox_self(Profile::Strict)?;
                let err = Command::new("/bin/true").exec();
                Err(format!("exec /bin/true: {err}"))
            };
            exit_child(run());
        }
        let Some(out) = run_child(NAME) else {
            return;
        };
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
}
