//! Installing what a fresh Debian machine with only Rust lacks.
//!
//! Each command asks only for the packages it needs. As root, missing packages are installed
//! with apt-get; otherwise the exact command to run is printed and the task fails, so nothing
//! half-works. The pinned toolchain and musl targets come from rust-toolchain.toml via rustup.

use std::process::Command;

use crate::util::{Result, is_root, output, run};

/// Package → a file it provides (to check presence without dpkg races).
type Pkg = (&'static str, &'static str);

/// Building the supervisor: its build.rs compiles the eBPF programs in bpf/ with clang
/// against libbpf's headers.
pub const BUILD: &[Pkg] = &[
    ("clang", "/usr/bin/clang"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
];
/// Host tier and aarch64 unit tests.
pub const TEST: &[Pkg] = &[
    ("qemu-user-static", "/usr/bin/qemu-aarch64-static"),
    ("util-linux", "/usr/bin/setpriv"),
    // Key pairs for the signed-install tests (tests/host/install.rs).
    ("openssl", "/usr/bin/openssl"),
    // The fleet end-to-end tests (tests/e2e/fleet.rs): a real PostgreSQL they start, and the
    // databases' own clients to tamper with what a server stored.
    ("postgresql", "/usr/bin/pg_ctlcluster"),
    ("postgresql-client", "/usr/bin/psql"),
    ("sqlite3", "/usr/bin/sqlite3"),
    // The admin API test's HTTPS client.
    ("curl", "/usr/bin/curl"),
    // The metrics test: `promtool check metrics` and a real Prometheus scrape.
    ("prometheus", "/usr/bin/promtool"),
    // The console tests: a standard serial terminal program on a pty.
    ("socat", "/usr/bin/socat"),
    // The SDKs' own tests, and their agents in tests/host/sdk.rs (the Python and Node.js
    // runtime layers are built from these interpreters).
    ("python3", "/usr/bin/python3.11"),
    ("nodejs", "/usr/bin/node"),
    ("golang-go", "/usr/bin/go"),
    // tests/host/service.rs: `systemd-analyze verify` of the shipped units.
    ("systemd", "/usr/bin/systemd-analyze"),
    // tests/e2e/dashboard.rs drives the fleet dashboard in headless Chromium.
    ("chromium", "/usr/bin/chromium"),
    // tests/host/package.rs: the clean Debian root the packages are installed into.
    ("mmdebstrap", "/usr/bin/mmdebstrap"),
];
/// VM tier (the kernel image is downloaded, not installed, by xtask/src/vm.rs).
/// (busybox for each guest architecture is downloaded by vm.rs, not installed.)
pub const VM: &[Pkg] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("qemu-system-arm", "/usr/bin/qemu-system-aarch64"),
];
/// `cargo xtask package`: the fleet server's Depends: (dpkg-shlibdeps). dpkg-deb, tar and
/// gzip are in every Debian.
pub const PACKAGE: &[Pkg] = &[("dpkg-dev", "/usr/bin/dpkg-shlibdeps")];
/// Benchmark peers.
pub const BENCH: &[Pkg] = &[
    ("bubblewrap", "/usr/bin/bwrap"),
    ("runc", "/usr/sbin/runc"),
    ("strace", "/usr/bin/strace"),
    // The dashboard section (tests/e2e/dashboard.rs's ignored benchmark).
    ("chromium", "/usr/bin/chromium"),
];
/// Everything (`cargo xtask setup`).
pub const ALL: &[&[Pkg]] = &[BUILD, TEST, VM, PACKAGE, BENCH];
/// What `cargo xtask test` needs.
pub const TIERS: &[&[Pkg]] = &[BUILD, TEST, VM, PACKAGE];

pub trait PkgSet {
    fn pkgs(&self) -> Vec<Pkg>;
}
impl PkgSet for &[Pkg] {
    fn pkgs(&self) -> Vec<Pkg> {
        self.to_vec()
    }
}
impl PkgSet for &[&[Pkg]] {
    fn pkgs(&self) -> Vec<Pkg> {
        self.iter().flat_map(|s| s.iter().copied()).collect()
    }
}

/// Installs the missing packages of `set` (as root), or fails with the command to run.
pub fn ensure(set: impl PkgSet) -> Result {
    let missing: Vec<&str> = set
        .pkgs()
        .into_iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(p, _)| p)
        .collect();
    ensure_targets()?;
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        return Err(format!("missing Debian packages; run as root:\n  {cmd}"));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The musl targets listed in rust-toolchain.toml (rustup installs them with the toolchain,
/// but an older rustup may not: add them explicitly).
fn ensure_targets() -> Result {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        if !installed.lines().any(|l| l.trim() == t) {
            run(Command::new("rustup").args(["target", "add", t]))?;
        }
    }
    Ok(())
}
