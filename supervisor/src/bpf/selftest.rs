//! Proof that the BPF LSM hooks enforce, not just that they attached: a helper process
//! (`nanoclaw __lsm-selftest CGROUP_DIR`) joins a scratch cgroup that the daemon holds with
//! every rule and no exec device, arms itself like an agent (`no_new_privs`), and tries one
//! operation per hook, each of which root would otherwise be allowed. It prints one line per
//! hook; the daemon trusts the LSM only if every hook denied (and reported on the ring
//! buffer). Everything it could change happens in a private mount namespace of its own.

use std::ffi::CString;
use std::path::Path;

use crate::sys;

pub const ARG: &str = "__lsm-selftest";

/// The hooks the helper exercises, in order; `exec` must be denied for `mount` to run.
pub const CHECKS: [&str; 5] = ["socket", "file_open", "ptrace", "exec", "mount"];

pub fn main(args: &[String]) -> ! {
    let Some(dir) = args.get(1) else {
        println!("error: usage: nanoclaw {ARG} CGROUP_DIR");
        sys::exit_now(2);
    };
    match run(Path::new(dir)) {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            println!("error: {e}");
            sys::exit_now(1)
        }
    }
}

fn line(check: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("{check}: ALLOWED"),
        Err(e) => println!("{check}: denied ({e})"),
    }
}

fn run(dir: &Path) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags};
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // A directory of the host's mount namespace, kept across the unshare.
    let outside = rustix::fs::open("/", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| format!("open /: {e}"))?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("joining {}: {e}", dir.display()))?;
    sys::unshare_mount_ns().map_err(|e| format!("unshare: {e}"))?;
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| format!("making / private: {e}"))?;
    sys::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    // Files of the helper's own namespace stay readable: the rule is not "deny everything".
    std::fs::read("/proc/self/stat").map_err(|e| format!("control open /proc/self/stat: {e}"))?;

    line(
        "socket",
        rustix::net::socket(
            rustix::net::AddressFamily::PACKET,
            rustix::net::SocketType::RAW,
            None,
        )
        .map(drop)
        .map_err(Into::into),
    );
    let rel = exe.strip_prefix("/").unwrap_or(&exe);
    line(
        "file_open",
        rustix::fs::openat(&outside, rel, OFlags::RDONLY, Mode::empty())
            .map(drop)
            .map_err(Into::into),
    );
    let parent = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get());
    line(
        "ptrace",
        std::fs::read(format!("/proc/{parent}/environ")).map(drop),
    );
    let path = CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let argv = [path.clone(), CString::from(c"--version")];
    // Succeeds only without the exec hook: the helper then prints a version, no `exec:` line.
    line("exec", Err(sys::execve(&path, &argv, &[])));
    line(
        "mount",
        sys::mount(Some(c"tmpfs"), c"/", Some(c"tmpfs"), 0, None),
    );
    Ok(())
}

/// Reads the helper's output: `Ok` when every check was denied, else what was not.
pub fn verdict(output: &str) -> Result<(), String> {
    if let Some(e) = output.lines().find_map(|l| l.strip_prefix("error: ")) {
        return Err(format!("self-test could not run: {e}"));
    }
    let mut missing = Vec::new();
    for c in CHECKS {
        let denied = output
            .lines()
            .any(|l| l.starts_with(&format!("{c}: denied")));
        if !denied {
            missing.push(c);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "self-test: {} not denied ({})",
            missing.join(", "),
            output.trim().replace('\n', "; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_every_denial() {
        let all = CHECKS
            .iter()
            .map(|c| format!("{c}: denied (Operation not permitted)\n"))
            .collect::<String>();
        assert!(verdict(&all).is_ok());
        let partial = all.replace("mount: denied", "mount: ALLOWED");
        assert!(verdict(&partial).unwrap_err().contains("mount not denied"));
        let exec_ran = "socket: denied (x)\nfile_open: denied (x)\nptrace: denied (x)\nnanoclaw 0.1.0 (x86_64)\n";
        assert!(verdict(exec_ran).unwrap_err().contains("exec, mount"));
        assert!(verdict("error: joining /x: EACCES").is_err());
    }
}
