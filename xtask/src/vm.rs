//! `cargo xtask vm`: the VM test tier (DESIGN.md §5).
//!
//! The host runs a cgroup v1 hybrid and refuses BPF LSM, so pure cgroup v2 and BPF LSM can only
//! be tested in a VM. This boots Debian's 6.1 cloud kernel under `qemu-system-* -accel tcg`
//! (KVM is unusable here) with an initramfs built here — busybox, the static `nanoclaw` and
//! demo agents (memhog, forkbomb, escape, netcheck, hostile, lsmloop, needlsm), a device
//! config and their grants — whose `/init` (`tests/vm/init.sh`) checks that memhog is
//! OOM-killed at its `memory.max` and restarted, that escape is contained, forkbomb held at
//! `pids.max`, egress enforced, every hostile act refused (by BPF LSM on x86_64, booted with
//! `lsm=landlock,bpf`; by the Landlock + seccomp fallback on arm64, which answers ENOTSUPP),
//! that enforcement holds across a `kill -9` of the daemon, that `nanoclaw status` reports
//! the posture truthfully and that SIGTERM stops the daemon cleanly. Then the guest installs
//! the release tarball (`cargo xtask package`'s, built here) as its README says and becomes
//! BusyBox init, whose rcS starts the daemon with the shipped `S50nanoclaw`;
//! `tests/vm/release.sh` checks start, an upgrade that hands the agents over, and stop. The
//! guest prints one `NANOCLAW-VM-RESULT:` line that this side parses from the serial log.
//!
//! Kernel and busybox come from Debian packages fetched with `apt-get download` and unpacked
//! into `target/vm/cache/<arch>/` (nothing is installed on the host but qemu), so the arm64
//! guest gets an arm64 busybox. The cpio archive is written here: the format is a few lines
//! and needs neither `cpio` nor root (device nodes are just headers).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Binaries, Result, output, run};

/// Debian packages the VM tier needs on the host (`cargo xtask setup` installs them).
pub const PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-arm"];

/// The guest's `/init`.
const INIT: &str = include_str!("../../tests/vm/init.sh");
/// Its last stage, which BusyBox init runs once the release tarball's rc script has started.
const RELEASE: &str = include_str!("../../tests/vm/release.sh");

/// Seconds the guest waits for the OOM kill and restart (passed as `NC_TIMEOUT`).
const GUEST_TIMEOUT_S: u64 = 120;
/// Hard limit on the whole qemu run, boot included.
const QEMU_TIMEOUT: Duration = Duration::from_secs(240);

const RESULT: &str = "NANOCLAW-VM-RESULT:";

const DEVICE_JSON: &str = r#"{
  "state_dir": "/var/lib/nanoclaw",
  "socket": "/run/nanoclaw/ctl.sock",
  "board": "sim",
  "agents_dir": "/var/lib/nanoclaw/agents",
  "policy": "/etc/nanoclaw/policy.json",
  "allow_local_policy": true,
  "allow_unsigned": true,
  "cgroup_root": "/sys/fs/cgroup",
  "cgroup_subtree": "nanoclaw",
  "stop_grace_s": 1,
  "syscall_baseline_s": 3
}
"#;

/// The grants of `configs/demo/policy.json` for the agents in the VM; `init.sh` checks
/// memory.max and pids.max against them.
const POLICY_JSON: &str = r#"{
  "version": 1,
  "signers": [],
  "device": { "memory_reserve": "64MiB" },
  "agents": {
    "memhog":   { "memory": "32MiB", "cpus": 0.5,  "pids": 8,  "scratch": "1MiB", "syscalls": "default" },
    "forkbomb": { "memory": "32MiB", "cpus": 0.25, "pids": 16, "scratch": "1MiB", "syscalls": "default" },
    "escape":   { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "1MiB", "syscalls": "default" },
    "netcheck": { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "1MiB", "syscalls": "default",
                  "network": ["127.0.0.1:1/tcp"] },
    "hostile":  { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "4MiB", "syscalls": "default" },
    "flooder":  { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "1MiB", "syscalls": "default",
                  "network": ["127.0.0.1:1/tcp"] },
    "stormy":   { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "1MiB", "syscalls": "default" },
    "lsmloop":  { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "4MiB", "syscalls": "default" },
    "needlsm":  { "memory": "16MiB", "cpus": 0.25, "pids": 8,  "scratch": "1MiB", "syscalls": "default",
                  "require": ["bpf-lsm"] }
  }
}
"#;

/// The demo agents the VM runs (their manifests come from configs/demo/agents/).
const AGENTS: [&str; 3] = ["memhog", "forkbomb", "escape"];

/// An agent with one granted endpoint: eBPF egress control on this kernel lets 127.0.0.1:1
/// through (closed port: "Connection refused") and refuses everything else with EPERM: TCP
/// to another port, the same over IPv4-mapped IPv6 and IPv6, and UDP.
const NETCHECK_MANIFEST: &str = r#"{ "name": "netcheck", "version": "1.0.0", "mode": "task",
  "exec": ["/bin/demo-agent", "connect", "127.0.0.1:1", "127.0.0.1:2", "[::ffff:127.0.0.1]:2",
           "[::1]:2", "udp:127.0.0.1:2"],
  "requests": { "memory": "16MiB", "scratch": "1MiB", "network": ["127.0.0.1:1/tcp"] },
  "restart": { "policy": "never" } }
"#;

/// Tries every hostile act of the demo agent; each must be refused on both kernels (by BPF LSM
/// where it runs, by the fallback chain elsewhere).
const HOSTILE_MANIFEST: &str = r#"{ "name": "hostile", "version": "1.0.0", "mode": "task",
  "exec": ["/bin/demo-agent", "hostile"],
  "requests": { "memory": "16MiB", "scratch": "4MiB" },
  "restart": { "policy": "never" } }
"#;

/// Its policy requires BPF LSM: it runs on the x86_64 kernel and is refused on arm64.
const NEEDLSM_MANIFEST: &str = r#"{ "name": "needlsm", "version": "1.0.0", "mode": "task",
  "exec": ["/bin/demo-agent", "exit", "0"],
  "requests": { "memory": "16MiB", "scratch": "1MiB" },
  "restart": { "policy": "never" } }
"#;

/// The hostile acts every 300 ms, forever: they must stay refused while no daemon runs.
const LSMLOOP_MANIFEST: &str = r#"{ "name": "lsmloop", "version": "1.0.0", "mode": "service",
  "exec": ["/bin/demo-agent", "hostile", "300"],
  "requests": { "memory": "16MiB", "scratch": "4MiB" } }
"#;

/// 200 denied connections in a burst: the audit must stay bounded (rate limit + summaries).
const FLOODER_MANIFEST: &str = r#"{ "name": "flooder", "version": "1.0.0", "mode": "task",
  "exec": ["/bin/demo-agent", "connect", "--repeat", "200", "127.0.0.1:2"],
  "requests": { "memory": "16MiB", "scratch": "1MiB", "network": ["127.0.0.1:1/tcp"] },
  "restart": { "policy": "never" } }
"#;

/// Learns a quiet baseline (polling for /go), then storms the same syscall.
const STORMY_MANIFEST: &str = r#"{ "name": "stormy", "version": "1.0.0", "mode": "service",
  "exec": ["/bin/demo-agent", "wait-file", "/go", "stat-storm", "300000"],
  "requests": { "memory": "16MiB", "scratch": "1MiB" },
  "restart": { "policy": "never" } }
"#;

/// Agents of the VM whose manifests are written here rather than taken from configs/demo/.
const INLINE_AGENTS: [(&str, &str); 6] = [
    ("netcheck", NETCHECK_MANIFEST),
    ("flooder", FLOODER_MANIFEST),
    ("stormy", STORMY_MANIFEST),
    ("lsmloop", LSMLOOP_MANIFEST),
    ("hostile", HOSTILE_MANIFEST),
    ("needlsm", NEEDLSM_MANIFEST),
];

/// How to boot one architecture.
struct Arch {
    name: &'static str,
    /// Debian architecture.
    deb: &'static str,
    qemu: &'static str,
    qemu_package: &'static str,
    machine: &'static [&'static str],
    cmdline: &'static str,
}

const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        deb: "amd64",
        qemu: "qemu-system-x86_64",
        qemu_package: "qemu-system-x86",
        machine: &["-M", "q35"],
        cmdline: "console=ttyS0 lsm=landlock,bpf NC_LSM=bpf",
    },
    Arch {
        name: "aarch64",
        deb: "arm64",
        qemu: "qemu-system-aarch64",
        qemu_package: "qemu-system-arm",
        machine: &["-M", "virt", "-cpu", "cortex-a72"],
        // No BPF LSM on arm64 6.1 (no BPF trampoline), DESIGN.md §2.
        cmdline: "console=ttyAMA0 NC_LSM=fallback",
    },
];

fn arch(name: &str) -> Result<&'static Arch> {
    ARCHES
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| format!("unknown VM architecture {name:?}: use x86_64 or aarch64"))
}

/// `cargo xtask vm [x86_64|aarch64|all]` (default x86_64).
pub fn main(args: &[String]) -> Result {
    // `--arch A` is accepted as a spelling of `A` (the issue's and CI scripts' form).
    let args: Vec<&str> = match args {
        [flag, a] if flag == "--arch" => vec![a.as_str()],
        _ => args.iter().map(String::as_str).collect(),
    };
    let names: Vec<&str> = match args.as_slice() {
        [] => vec!["x86_64"],
        ["all"] => ARCHES.iter().map(|a| a.name).collect(),
        [a] => vec![*a],
        _ => return Err("usage: cargo xtask vm [--arch] [x86_64|aarch64|all]".into()),
    };
    for name in names {
        arch(name)?;
        let bins = util::build_static(&format!("{name}-unknown-linux-musl"))?;
        smoke(name, &bins)?;
    }
    Ok(())
}

/// Boots `arch`'s VM with `bins` and runs the cgroup v2 OOM-kill-and-restart test in it.
pub fn smoke(arch_name: &str, bins: &Binaries) -> Result {
    let a = arch(arch_name)?;
    ensure_qemu(a)?;
    let vm_dir = util::root().join("target").join("vm");
    let cache = vm_dir.join("cache").join(a.name);
    let (kernel, kernel_pkg) = fetch(a, "linux-image-cloud", &cache.join("kernel"), |dir| {
        find_prefixed(&dir.join("boot"), "vmlinuz-")
    })?;
    let (busybox, _) = fetch(a, "busybox-static", &cache.join("busybox"), |dir| {
        Some(dir.join("bin/busybox")).filter(|p| p.is_file())
    })?;
    let tarball = crate::package::tarball_only(
        a.name,
        &bins.nanoclaw,
        &vm_dir.join(format!("{}-release", a.name)),
    )?;
    let initrd = vm_dir.join(format!("{}-initramfs.cpio", a.name));
    write_initramfs(&initrd, &busybox, bins, &tarball)?;

    let log = vm_dir.join(format!("{}.log", a.name));
    eprintln!(
        "vm {}: booting {kernel_pkg} under {} -accel tcg (log: {})",
        a.name,
        a.qemu,
        log.display()
    );
    let mut started = Instant::now();
    let mut outcome = boot(a, &kernel, &initrd, &log);
    let mut text = read_log(&log);
    if outcome.is_err() || !text.contains(&format!("{RESULT} PASS")) {
        // A guest that stops making progress under TCG (seen twice in about forty x86_64
        // runs: once a soft lockup of both vCPUs, once a silent stall; the cause is not found
        // yet) is stopped early (softlockup_panic=1, or no console output for STALL); such a
        // run is kept for inspection and repeated once, with a warning. A guest that reports
        // a result, pass or fail, is never repeated.
        let hung = !text.contains(RESULT);
        if hung || text.contains("soft lockup") {
            let kept = log.with_extension("lockup.log");
            let _ = fs::rename(&log, &kept);
            eprintln!(
                "vm {}: WARNING: the guest {} (log kept in {}); running once more",
                a.name,
                if text.contains("soft lockup") {
                    "kernel reported a soft lockup"
                } else {
                    "stopped making progress"
                },
                kept.display()
            );
            started = Instant::now();
            outcome = boot(a, &kernel, &initrd, &log);
            text = read_log(&log);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let verdict = outcome.and_then(|()| {
        match text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(RESULT))
        {
            Some(r) if r.trim() == "PASS" => Ok(()),
            Some(r) => Err(format!("the guest reported {}", r.trim())),
            None => Err(format!("the guest printed no {RESULT} line")),
        }
    });
    match verdict {
        Ok(()) => {
            eprintln!("vm {}: PASS in {secs:.1} s (boot and test)", a.name);
            Ok(())
        }
        Err(e) => {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {}", log.display());
            for l in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{l}");
            }
            Err(format!("vm {} after {secs:.1} s: {e}", a.name))
        }
    }
}

/// How long the guest may print nothing before the run counts as hung (the daemon logs every
/// audit record to the console, and memhog is restarted every second or so).
const STALL: Duration = Duration::from_secs(60);

/// Whether the serial log has not grown for [`STALL`]; `last` is (size, when it last grew).
fn stalled(log: &Path, last: &mut (u64, Instant)) -> bool {
    let size = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    if size != last.0 {
        *last = (size, Instant::now());
        return false;
    }
    last.1.elapsed() >= STALL
}

fn read_log(log: &Path) -> String {
    fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// Runs qemu with the serial console captured to `log`, killing it at [`QEMU_TIMEOUT`].
fn boot(a: &Arch, kernel: &Path, initrd: &Path, log: &Path) -> Result {
    let file = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("duplicating the log file handle: {e}"))?;
    let mut cmd = Command::new(a.qemu);
    cmd.args(a.machine)
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "{} panic=-1 softlockup_panic=1 loglevel=7 NC_TIMEOUT={GUEST_TIMEOUT_S}",
            a.cmdline
        ))
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    eprintln!("+ {}", util::show(&cmd));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", a.qemu))?;
    let deadline = Instant::now() + QEMU_TIMEOUT;
    let mut last = (0u64, Instant::now());
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("{} failed: {st}", a.qemu)),
            Ok(None) if Instant::now() >= deadline || stalled(log, &mut last) => {
                // Our own child, by handle: nothing else is touched.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no progress (timeout {} s, or no console output for {} s); killed {}",
                    QEMU_TIMEOUT.as_secs(),
                    STALL.as_secs(),
                    a.qemu
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {}: {e}", a.qemu)),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn ensure_qemu(a: &Arch) -> Result {
    if on_path(a.qemu) {
        return Ok(());
    }
    if !util::is_root() {
        return Err(format!(
            "{} is missing: run `cargo xtask setup` (or apt-get install {}) as root",
            a.qemu,
            PACKAGES.join(" ")
        ));
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", a.qemu_package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The first entry of `dir` whose name starts with `prefix`.
fn find_prefixed(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Returns the file `pick` finds in `dest`, the unpacked Debian package `package` for `a`
/// (for a metapackage such as `linux-image-cloud`, the versioned package it depends on), and
/// the name of the `.deb` it came from. Downloads and unpacks it unless already cached.
fn fetch(
    a: &Arch,
    package: &str,
    dest: &Path,
    pick: impl Fn(&Path) -> Option<PathBuf>,
) -> Result<(PathBuf, String)> {
    let stamp = dest.join("PACKAGE");
    if let (Some(file), Ok(deb)) = (pick(dest), fs::read_to_string(&stamp)) {
        return Ok((file, deb.trim().to_owned()));
    }
    let host = output(Command::new("dpkg").arg("--print-architecture"))?;
    let foreign = host.trim() != a.deb;
    if foreign {
        let archs = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
        if !archs.split_whitespace().any(|x| x == a.deb) {
            run(Command::new("dpkg").args(["--add-architecture", a.deb]))?;
            run(Command::new("apt-get").arg("update"))?;
        }
    }
    let qualify = |name: &str| {
        if foreign {
            format!("{name}:{}", a.deb)
        } else {
            name.to_owned()
        }
    };
    let name = if package == "linux-image-cloud" {
        kernel_package(&qualify(&format!("linux-image-cloud-{}", a.deb)))?
    } else {
        package.to_owned()
    };

    let dl = dest.with_extension("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).map_err(|e| format!("creating {}: {e}", dl.display()))?;
    let download = || {
        run(Command::new("apt-get")
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(qualify(&name))
            .current_dir(&dl))
    };
    if download().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        download()?;
    }
    let deb = find_prefixed(&dl, &format!("{name}_"))
        .ok_or_else(|| format!("apt-get download left no {name}_*.deb in {}", dl.display()))?;
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unpacked = dl.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    fs::write(unpacked.join("PACKAGE"), format!("{deb_name}\n"))
        .map_err(|e| format!("writing the cache stamp: {e}"))?;
    let _ = fs::remove_dir_all(dest);
    fs::rename(&unpacked, dest).map_err(|e| format!("moving into {}: {e}", dest.display()))?;
    let _ = fs::remove_dir_all(&dl);
    let file = pick(dest).ok_or_else(|| format!("{deb_name} lacks the expected file"))?;
    Ok((file, deb_name))
}

/// The versioned kernel image package `meta` depends on (`linux-image-6.1.0-NN-cloud-amd64`).
fn kernel_package(meta: &str) -> Result<String> {
    let depends = || output(Command::new("apt-cache").args(["depends", meta]));
    let text = match depends() {
        Ok(t) => t,
        Err(_) => {
            run(Command::new("apt-get").arg("update"))?;
            depends()?
        }
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().split(':').next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| format!("apt-cache depends {meta} names no linux-image package:\n{text}"))
}

/// Writes the initramfs: busybox, `/init`, `nanoclaw`, the config and the demo bundles, and
/// the release tarball with the stage that checks it.
fn write_initramfs(path: &Path, busybox: &Path, bins: &Binaries, tarball: &Path) -> Result {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut c = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc/nanoclaw",
        "etc/init.d",
        "etc/vm",
        "newroot",
        "proc",
        "run",
        "sys",
        "tmp",
        "var/tmp",
    ] {
        c.dir_all(d);
    }
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    c.entry("dev/console", 0o020_600, (5, 1), &[]);
    c.file("bin/busybox", 0o755, &read(busybox)?);
    c.symlink("bin/sh", "busybox");
    c.file("bin/nanoclaw", 0o755, &read(&bins.nanoclaw)?);
    c.file("init", 0o755, INIT.as_bytes());
    c.file("etc/vm/release.sh", 0o755, RELEASE.as_bytes());
    c.file("var/tmp/nanoclaw.tar.gz", 0o644, &read(tarball)?);
    c.file("etc/nanoclaw/device.json", 0o644, DEVICE_JSON.as_bytes());
    c.file("etc/nanoclaw/policy.json", 0o644, POLICY_JSON.as_bytes());
    let agent_bin = read(&bins.demo_agent)?;
    let mut manifests: Vec<(&str, Vec<u8>)> = Vec::new();
    for agent in AGENTS {
        let path = util::root().join(format!("configs/demo/agents/{agent}/manifest.json"));
        manifests.push((agent, read(&path)?));
    }
    manifests.extend(INLINE_AGENTS.map(|(a, m)| (a, m.as_bytes().to_vec())));
    for (agent, manifest) in manifests {
        let bundle = format!("var/lib/nanoclaw/agents/{agent}");
        for d in ["bin", "proc", "dev", "tmp"] {
            c.dir_all(&format!("{bundle}/rootfs/{d}"));
        }
        c.file(&format!("{bundle}/manifest.json"), 0o644, &manifest);
        c.file(
            &format!("{bundle}/rootfs/bin/demo-agent"),
            0o755,
            &agent_bin,
        );
    }
    let bytes = c.finish();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    File::create(path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A `newc` cpio archive in memory, every entry owned by root.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    /// `path` and its missing ancestors, parents first (the kernel needs them in that order).
    fn dir_all(&mut self, path: &str) {
        let mut at = 0;
        while at < path.len() {
            let end = path[at..].find('/').map_or(path.len(), |i| at + i);
            let dir = &path[..end];
            if self.dirs.insert(dir.to_owned()) {
                self.entry(dir, 0o040_755, (0, 0), &[]);
            }
            at = end + 1;
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, (0, 0), target.as_bytes());
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}
