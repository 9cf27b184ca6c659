//! The only place with `unsafe`: thin wrappers over the Linux syscalls that neither `std` nor
//! `rustix` cover safely (clone3 into namespaces, fork/exec inside the sandbox, mount plumbing,
//! capability and signal masks). Every wrapper returns `io::Result` and takes owned/borrowed
//! Rust types, so the rest of the crate stays `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Kernel ABI of `struct clone_args` (linux/sched.h, v2 with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Namespaces every agent gets: mount, PID, IPC, UTS, network and cgroup.
pub const SANDBOX_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Everything the child needs after `clone3`, prepared before it so the child only makes
/// async-signal-safe syscalls (the supervisor may be multi-threaded).
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// `(source, target)`: the child `dup2`s each source (all ≥ 100, so never equal to a
    /// target) onto its target number. Everything else is close-on-exec.
    fds: Vec<(OwnedFd, RawFd)>,
}

impl ExecPlan {
    pub fn new(path: &str, argv: &[&str], envp: &[String]) -> io::Result<Self> {
        let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        Ok(Self {
            path: c(path)?,
            argv: argv.iter().map(|a| c(a)).collect::<io::Result<_>>()?,
            envp: envp.iter().map(|e| c(e)).collect::<io::Result<_>>()?,
            fds: Vec::new(),
        })
    }

    /// Maps `fd` to `target` in the child.
    pub fn fd(&mut self, fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
        // SAFETY: F_DUPFD_CLOEXEC on a valid borrowed fd returns a new fd that we own.
        let high = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) })?;
        // SAFETY: `high` was just returned by fcntl and is owned by nobody else.
        self.fds
            .push((unsafe { OwnedFd::from_raw_fd(high) }, target));
        Ok(())
    }
}

/// A started child: its PID in our namespace and a pidfd for it.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// `clone3` into new namespaces (`flags`), optionally directly into a cgroup2 directory, then
/// `execve` per `plan` in the child. Returns once the child exists; exec errors surface to the
/// caller through whatever protocol the exec'd program speaks (the child `_exit(127)`s).
pub fn clone3_exec(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    plan: &ExecPlan,
) -> io::Result<Child> {
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let fds: Vec<(RawFd, RawFd)> = plan.fds.iter().map(|(s, t)| (s.as_raw_fd(), *t)).collect();
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass. Without CLONE_VM the child gets
    // a copy of our address space; it only runs `exec_child`, which makes async-signal-safe
    // syscalls on memory prepared above and never returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => exec_child(&plan.path, &argv, &envp, &fds),
        r if r < 0 => Err(io::Error::last_os_error()),
        pid => {
            // SAFETY: the kernel stored a new pidfd that only we own.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Child {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// Runs in the freshly cloned child: only async-signal-safe calls, then exec or `_exit(127)`.
fn exec_child(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: &[(RawFd, RawFd)],
) -> ! {
    // SAFETY: all calls below are async-signal-safe syscalls on prepared memory; the pointers
    // in argv/envp point into CStrings that the parent's copy of memory keeps alive.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for &(src, dst) in fds {
            if libc::dup2(src, dst) < 0 {
                libc::_exit(127);
            }
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// `fork()` for the single-threaded sandbox init. Returns `Ok(0)` in the child.
pub fn fork() -> io::Result<i32> {
    // SAFETY: only called from the sandbox init, which is single-threaded (a fresh exec of
    // this binary that started no threads), so the child may use any function.
    cvt(unsafe { libc::fork() })
}

/// `execve`; returns only on error.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: NULL-terminated arrays of pointers into live CStrings.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit` without running destructors or atexit handlers (forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a valid NUL-terminated string.
    cvt(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Drops every capability from the bounding and ambient sets (needs CAP_SETPCAP, so call it
/// before changing uid).
pub fn drop_bounding_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        cvt(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                let e = io::Error::last_os_error();
                // EINVAL marks the first capability this kernel does not know: done.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clears the effective, permitted and inheritable capability sets of the calling thread.
pub fn clear_caps() -> io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: v3 header with two data elements, as the ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads the effective capability set of the calling thread (64 bits).
pub fn effective_caps() -> io::Result<u64> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: v3 header with two writable data elements.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// `setgroups([])`, `setresgid`, `setresuid`, process-wide (libc broadcasts to all threads;
/// the sandbox init is single-threaded anyway).
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer syscalls.
    unsafe {
        cvt(libc::setgroups(0, std::ptr::null()))?;
        cvt(libc::setresgid(gid, gid, gid))?;
        cvt(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

/// `setrlimit` with soft = hard = `value`.
pub fn set_rlimit(resource: libc::c_int, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: valid rlimit struct; `resource` is one of the RLIMIT_* constants. The cast covers
    // musl (c_int) and glibc (u32 enum) signatures.
    cvt(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integer prctl.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `unshare(CLONE_NEWNS)`: a private copy of the mount namespace for this (single-threaded)
/// process.
pub fn unshare_mount_ns() -> io::Result<()> {
    // SAFETY: integer syscall; callers are single-threaded helper processes.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no ptrace or /proc/PID/mem access by same-uid processes.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: integer prctl.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// `setsid()`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// Resets `sig` to its default disposition.
pub fn default_signal(sig: libc::c_int) {
    // SAFETY: SIG_DFL is a valid handler for any catchable signal.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Ignores `sig` (used for SIGPIPE in the sandbox init's log relay).
pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: SIG_IGN is a valid handler for any catchable signal.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// Blocks `sigs` in this thread and returns a non-blocking, close-on-exec signalfd for them.
pub fn signalfd(sigs: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulated only through the libc helpers; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        cvt(libc::pthread_sigmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unblocks every signal in the calling thread (children of the init, before exec).
pub fn unblock_all_signals() {
    // SAFETY: empty sigset applied with SIG_SETMASK.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Reads one `signalfd_siginfo` and returns the signal number, or `None` if none is pending.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: the buffer is a properly sized, writable signalfd_siginfo.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let n = libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        );
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(info.ssi_signo as i32))
    }
}

/// Closes every fd ≥ `from` (close_range(2)).
pub fn close_from(from: u32) {
    // SAFETY: close_range only closes descriptors; callers own all fds at or above `from`
    // (it runs in a freshly forked child right before exec).
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// `dup2(src, dst)`; clears close-on-exec on `dst`.
pub fn dup2(src: BorrowedFd<'_>, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on a valid fd; the target number is replaced atomically.
    cvt(unsafe { libc::dup2(src.as_raw_fd(), dst) }).map(drop)
}

/// Takes ownership of an inherited fd number (from the exec plan of the parent).
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the fd is open (checked above) and this process was started with it for us.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Mark it close-on-exec so the agent does not inherit it.
    // SAFETY: F_SETFD on the fd we now own.
    cvt(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(owned)
}

/// The system page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf with a valid name.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 { 4096 } else { v as usize }
}

/// Raw syscalls for the tests that exercise seccomp and Landlock against the real kernel.
#[cfg(test)]
pub mod testing {
    /// `syscall(nr, args…)` with integer arguments; returns `(ret, errno)`.
    pub fn syscall6(nr: i64, args: [i64; 6]) -> (i64, i32) {
        // SAFETY: callers pass integers only (0 or -1 where the kernel expects a pointer, which
        // it rejects with EFAULT/EINVAL/EBADF without touching our memory), or the call is
        // denied by a seccomp filter before the kernel looks at the arguments.
        let ret =
            unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
        (
            ret,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        )
    }

    /// The kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0, VERSION)`), or a
    /// negative value when Landlock is unavailable.
    pub fn landlock_abi() -> i64 {
        const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
        // SAFETY: the documented ABI-version query: no ruleset pointer, size 0; it creates
        // nothing.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        }
    }
}
