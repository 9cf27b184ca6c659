//! `cargo xtask package`: the release artefacts in `target/package/` (docs/INSTALL.md).
//!
//! - `nanoclaw_VERSION_{amd64,arm64}.deb`: the static musl `nanoclaw` as `/usr/sbin/nanoclaw`,
//!   its systemd unit, `/etc/nanoclaw/` (0750, empty: the package ships no device.json, so an
//!   unprovisioned device never starts a daemon and an upgrade never touches the operator's),
//!   docs and an example config; maintainer scripts that hand running agents over to the new
//!   binary on an upgrade instead of restarting the daemon.
//! - `nanoclaw-fleet_VERSION_amd64.deb`: the fleet server (`--profile server`, glibc, so
//!   amd64 only: no aarch64 glibc cross toolchain here) with its unit and system user.
//! - `nanoclaw-VERSION-ARCH-linux-musl.tar.gz`: the binary with OpenRC and BusyBox init
//!   scripts and the systemd unit, for devices without dpkg.
//!
//! `dpkg-deb --root-owner-group --build` writes the packages (every Debian has dpkg, and it
//! gets the format right); the control file is written here. File times are
//! `SOURCE_DATE_EPOCH` (default: the last commit's time), so rebuilding the same commit
//! gives the same bytes. `--nanoclaw`/`--fleet` take already built binaries (the package test
//! passes the debug fleet it has anyway instead of an optimised build) and `--out` another
//! directory.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::util::{self, Result, cargo, output, run};

const SERVICE: &str = include_str!("../../packaging/systemd/nanoclaw.service");
const FLEET_SERVICE: &str = include_str!("../../packaging/systemd/nanoclaw-fleet.service");
const OPENRC: &str = include_str!("../../packaging/openrc/nanoclaw");
const OPENRC_CONF: &str = include_str!("../../packaging/openrc/nanoclaw.confd");
const BUSYBOX: &str = include_str!("../../packaging/busybox/S50nanoclaw");
const INITTAB: &str = include_str!("../../packaging/busybox/inittab");
const COPYRIGHT: &str = include_str!("../../packaging/debian/copyright");
const DEVICE_EXAMPLE: &str = include_str!("../../packaging/device.example.json");
const TARBALL_README: &str = include_str!("../../packaging/tarball/README");
const INSTALL_MD: &str = include_str!("../../docs/INSTALL.md");
const FLEET_MD: &str = include_str!("../../docs/FLEET.md");

/// (name, text) of each package's maintainer scripts.
const NANOCLAW_SCRIPTS: [(&str, &str); 3] = [
    (
        "postinst",
        include_str!("../../packaging/debian/nanoclaw/postinst"),
    ),
    (
        "prerm",
        include_str!("../../packaging/debian/nanoclaw/prerm"),
    ),
    (
        "postrm",
        include_str!("../../packaging/debian/nanoclaw/postrm"),
    ),
];
const FLEET_SCRIPTS: [(&str, &str); 3] = [
    (
        "postinst",
        include_str!("../../packaging/debian/nanoclaw-fleet/postinst"),
    ),
    (
        "prerm",
        include_str!("../../packaging/debian/nanoclaw-fleet/prerm"),
    ),
    (
        "postrm",
        include_str!("../../packaging/debian/nanoclaw-fleet/postrm"),
    ),
];

/// `Maintainer:` unless `NANOCLAW_MAINTAINER` names one (a reserved domain: no real inbox).
const MAINTAINER: &str = "nanoclaw maintainers <maintainers@nanoclaw.invalid>";

/// One device architecture.
struct Arch {
    /// Rust's name (`uname -m`).
    name: &'static str,
    /// Debian's.
    deb: &'static str,
    triple: &'static str,
}

const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        deb: "amd64",
        triple: "x86_64-unknown-linux-musl",
    },
    Arch {
        name: "aarch64",
        deb: "arm64",
        triple: "aarch64-unknown-linux-musl",
    },
];

const USAGE: &str = "usage: cargo xtask package [--arch x86_64|aarch64|all] [--nanoclaw BIN] [--fleet BIN] [--no-fleet] [--out DIR] [--fast]";

#[derive(Default)]
struct Opts {
    arch: Option<String>,
    nanoclaw: Option<PathBuf>,
    fleet: Option<PathBuf>,
    no_fleet: bool,
    out: Option<PathBuf>,
    /// gzip -1 instead of xz and gzip -9 (tests: the compression is all that differs).
    fast: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| USAGE.to_owned());
        match a.as_str() {
            "--arch" => o.arch = Some(value()?),
            "--nanoclaw" => o.nanoclaw = Some(value()?.into()),
            "--fleet" => o.fleet = Some(value()?.into()),
            "--out" => o.out = Some(value()?.into()),
            "--no-fleet" => o.no_fleet = true,
            "--fast" => o.fast = true,
            _ => return Err(USAGE.into()),
        }
    }
    Ok(o)
}

/// `cargo xtask package [...]`: builds what is missing, writes the artefacts and prints their
/// SHA-256 (also written to `SHA256SUMS` next to them).
pub fn main(args: &[String]) -> Result {
    let o = parse(args)?;
    let arches: Vec<&Arch> = match o.arch.as_deref() {
        None | Some("all") => ARCHES.iter().collect(),
        Some(name) => vec![
            ARCHES
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| format!("unknown architecture {name:?}: x86_64 or aarch64"))?,
        ],
    };
    if o.nanoclaw.is_some() && arches.len() != 1 {
        return Err("--nanoclaw needs a single --arch".into());
    }
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| util::root().join("target/package"));
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let cx = Ctx {
        version: version()?,
        work: out.join("build"),
        out: out.clone(),
        epoch: source_date_epoch(),
        fast: o.fast,
    };
    let _ = fs::remove_dir_all(&cx.work);

    let mut artefacts = Vec::new();
    for a in &arches {
        let bin = match &o.nanoclaw {
            Some(b) => b.clone(),
            None => util::build_static(a.triple)?.nanoclaw,
        };
        check_static(&bin)?;
        artefacts.push(deb_nanoclaw(&cx, a, &bin)?);
        artefacts.push(tarball(&cx, a, &bin)?);
    }
    // The fleet server links glibc dynamically: the host's architecture only.
    let host = std::env::consts::ARCH;
    if !o.no_fleet && arches.iter().any(|a| a.name == host) {
        let a = ARCHES
            .iter()
            .find(|a| a.name == host)
            .ok_or("no Debian architecture for this host")?;
        let bin = match &o.fleet {
            Some(b) => b.clone(),
            None => build_fleet()?,
        };
        artefacts.push(deb_fleet(&cx, a, &bin)?);
    }
    let _ = fs::remove_dir_all(&cx.work);

    let names: Vec<String> = artefacts
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let sums = output(Command::new("sha256sum").args(&names).current_dir(&out))?;
    fs::write(out.join("SHA256SUMS"), &sums)
        .map_err(|e| format!("writing {}: {e}", out.join("SHA256SUMS").display()))?;
    println!("{} (sha256):", out.display());
    print!("{sums}");
    Ok(())
}

/// Only the tarball of `arch` with `bin`, into `out` (the VM tier boots it under BusyBox init).
pub fn tarball_only(arch: &str, bin: &Path, out: &Path) -> Result<PathBuf> {
    let a = ARCHES
        .iter()
        .find(|a| a.name == arch)
        .ok_or_else(|| format!("unknown architecture {arch:?}"))?;
    check_static(bin)?;
    let cx = Ctx {
        version: version()?,
        work: out.join("build"),
        out: out.to_path_buf(),
        epoch: source_date_epoch(),
        fast: true,
    };
    fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let tar = tarball(&cx, a, bin);
    let _ = fs::remove_dir_all(&cx.work);
    tar
}

/// The workspace version (every package shares it), from `cargo metadata`.
fn version() -> Result<String> {
    let meta = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let v: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| format!("cargo metadata: {e}"))?;
    v["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "nanoclaw"))
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| "cargo metadata names no nanoclaw package version".into())
}

/// `SOURCE_DATE_EPOCH`, else the last commit's time, else 0.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            output(
                Command::new("git")
                    .args(["log", "-1", "--format=%ct"])
                    .current_dir(util::root()),
            )
            .ok()
            .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn build_fleet() -> Result<PathBuf> {
    run(cargo().args(["build", "--profile", "server", "-p", "nanoclaw-fleet"]))?;
    let bin = util::root().join("target/server/nanoclaw-fleet");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("the build did not produce {}", bin.display()))
    }
}

/// Refuses a device binary that would need a dynamic loader (a glibc build by mistake): it
/// must run on any device, BusyBox or Debian. Reads the ELF program headers for PT_INTERP.
fn check_static(bin: &Path) -> Result {
    let elf = fs::read(bin).map_err(|e| format!("reading {}: {e}", bin.display()))?;
    let bad = || format!("{} is not a 64-bit little-endian ELF file", bin.display());
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(bad());
    }
    let num = |at: usize, n: usize| -> Result<u64> {
        let b = elf.get(at..at + n).ok_or_else(bad)?;
        Ok(b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x)))
    };
    let (phoff, phentsize, phnum) = (num(0x20, 8)?, num(0x36, 2)?, num(0x38, 2)?);
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| bad())?;
        const PT_INTERP: u64 = 3;
        if num(at, 4)? == PT_INTERP {
            return Err(format!(
                "{} is dynamically linked: the device binary must be the static musl build",
                bin.display()
            ));
        }
    }
    Ok(())
}

/// What every artefact of one run shares.
struct Ctx {
    version: String,
    /// Staging trees.
    work: PathBuf,
    out: PathBuf,
    /// File times (seconds since the epoch).
    epoch: u64,
    fast: bool,
}

/// A directory tree being staged, every mode explicit (the umask plays no part).
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: PathBuf) -> Result<Self> {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        set_mode(&root, 0o755)?;
        Ok(Self { root })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `rel` with `mode`, its missing ancestors 0755.
    fn dir(&self, rel: &str, mode: u32) -> Result {
        self.parents(rel)?;
        let p = self.path(rel);
        if !p.is_dir() {
            fs::create_dir(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
        set_mode(&p, mode)
    }

    /// Creates the missing ancestors of `rel`, 0755.
    fn parents(&self, rel: &str) -> Result {
        let ancestors: Vec<&Path> = Path::new(rel).ancestors().skip(1).collect();
        for a in ancestors.into_iter().rev() {
            let p = self.root.join(a);
            if !p.is_dir() {
                fs::create_dir(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
                set_mode(&p, 0o755)?;
            }
        }
        Ok(())
    }

    /// `rel` with `data` and `mode`, its missing ancestors 0755.
    fn file(&self, rel: &str, mode: u32, data: &[u8]) -> Result {
        self.parents(rel)?;
        let p = self.path(rel);
        fs::write(&p, data).map_err(|e| format!("writing {}: {e}", p.display()))?;
        set_mode(&p, mode)
    }

    fn copy(&self, rel: &str, mode: u32, src: &Path) -> Result {
        let data = fs::read(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        self.file(rel, mode, &data)
    }

    /// Sets every entry's time to `epoch` and returns the installed size in KiB (as dpkg
    /// counts it: each file rounded up, each directory one).
    fn finish(&self, epoch: u64) -> Result<u64> {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
        let mut kib = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(p) = stack.pop() {
            let meta = fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            if meta.is_dir() {
                kib += 1;
                for e in fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                    stack.push(e.map_err(|e| format!("{}: {e}", p.display()))?.path());
                }
            } else {
                kib += meta.len().div_ceil(1024);
            }
            fs::File::open(&p)
                .and_then(|f| f.set_modified(when))
                .map_err(|e| format!("setting the time of {}: {e}", p.display()))?;
        }
        Ok(kib)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", p.display()))
}

/// The control file of a binary package.
struct Control<'a> {
    package: &'a str,
    version: &'a str,
    arch: &'a str,
    depends: Option<String>,
    summary: &'a str,
    description: &'a str,
}

impl Control<'_> {
    fn text(&self, installed_kib: u64) -> String {
        let maintainer =
            std::env::var("NANOCLAW_MAINTAINER").unwrap_or_else(|_| MAINTAINER.to_owned());
        let mut s = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: {maintainer}\n\
             Installed-Size: {installed_kib}\n",
            self.package, self.version, self.arch
        );
        if let Some(d) = &self.depends {
            s.push_str(&format!("Depends: {d}\n"));
        }
        s.push_str(&format!(
            "Section: admin\nPriority: optional\nDescription: {}\n",
            self.summary
        ));
        for line in self.description.lines() {
            s.push_str(&if line.is_empty() {
                " .\n".to_owned()
            } else {
                format!(" {line}\n")
            });
        }
        s
    }
}

/// Writes `DEBIAN/` into `tree` and builds `OUT/PACKAGE_VERSION_ARCH.deb`.
fn build_deb(
    cx: &Ctx,
    tree: &Tree,
    control: &Control,
    scripts: &[(&str, &str)],
) -> Result<PathBuf> {
    // Installed-Size counts what is installed: the tree before DEBIAN/ is added.
    let kib = tree.finish(cx.epoch)?;
    tree.dir("DEBIAN", 0o755)?;
    for (name, text) in scripts {
        tree.file(&format!("DEBIAN/{name}"), 0o755, text.as_bytes())?;
    }
    tree.file("DEBIAN/control", 0o644, control.text(kib).as_bytes())?;
    tree.finish(cx.epoch)?;
    let deb = cx.out.join(format!(
        "{}_{}_{}.deb",
        control.package, control.version, control.arch
    ));
    let compress: &[&str] = if cx.fast {
        &["-Zgzip", "-z1"]
    } else {
        &["-Zxz"]
    };
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .args(compress)
        .arg("--build")
        .arg(&tree.root)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", cx.epoch.to_string()))?;
    Ok(deb)
}

const NANOCLAW_DESCRIPTION: &str = "\
nanoclaw runs untrusted agents on Linux edge devices, each in its own sandbox
(namespaces, seccomp, Landlock, cgroups, eBPF egress control), holds each to a
memory, CPU and energy budget, verifies every agent bundle's signature offline and
keeps its policy in sync with a fleet server over an intermittent link.

This package holds the static `nanoclaw` binary (daemon, CLI, console) and its
systemd unit. The daemon starts once /etc/nanoclaw/device.json is provisioned
(see /usr/share/doc/nanoclaw/INSTALL.md); upgrading the package hands the running
agents over to the new binary without stopping them.";

fn deb_nanoclaw(cx: &Ctx, a: &Arch, bin: &Path) -> Result<PathBuf> {
    let t = Tree::new(cx.work.join(format!("nanoclaw_{}", a.deb)))?;
    t.copy("usr/sbin/nanoclaw", 0o755, bin)?;
    t.file(
        "lib/systemd/system/nanoclaw.service",
        0o644,
        SERVICE.as_bytes(),
    )?;
    t.dir("etc/nanoclaw", 0o750)?;
    let doc = "usr/share/doc/nanoclaw";
    t.file(&format!("{doc}/copyright"), 0o644, COPYRIGHT.as_bytes())?;
    t.file(&format!("{doc}/INSTALL.md"), 0o644, INSTALL_MD.as_bytes())?;
    t.file(
        &format!("{doc}/examples/device.json"),
        0o644,
        DEVICE_EXAMPLE.as_bytes(),
    )?;
    let control = Control {
        package: "nanoclaw",
        version: &cx.version,
        arch: a.deb,
        depends: None,
        summary: "sandboxing supervisor for untrusted agents on edge devices",
        description: NANOCLAW_DESCRIPTION,
    };
    build_deb(cx, &t, &control, &NANOCLAW_SCRIPTS)
}

const FLEET_DESCRIPTION: &str = "\
nanoclaw-fleet is the central server of a nanoclaw fleet: devices check in over
TLS 1.3 with mutual authentication; operators push signed policies and agent
bundles and collect audit trails and telemetry.

The unit runs it as the nanoclaw-fleet system user with its state in
/var/lib/nanoclaw-fleet; it starts once `nanoclaw-fleet init` has made the
fleet's CA there (see /usr/share/doc/nanoclaw-fleet/FLEET.md).";

fn deb_fleet(cx: &Ctx, a: &Arch, bin: &Path) -> Result<PathBuf> {
    // dpkg-shlibdeps wants the tree at debian/PACKAGE next to a debian/control.
    let src = cx.work.join(format!("nanoclaw-fleet_{}", a.deb));
    let t = Tree::new(src.join("debian/nanoclaw-fleet"))?;
    t.copy("usr/bin/nanoclaw-fleet", 0o755, bin)?;
    t.file(
        "lib/systemd/system/nanoclaw-fleet.service",
        0o644,
        FLEET_SERVICE.as_bytes(),
    )?;
    let doc = "usr/share/doc/nanoclaw-fleet";
    t.file(&format!("{doc}/copyright"), 0o644, COPYRIGHT.as_bytes())?;
    t.file(&format!("{doc}/FLEET.md"), 0o644, FLEET_MD.as_bytes())?;
    fs::write(
        src.join("debian/control"),
        format!(
            "Source: nanoclaw\n\nPackage: nanoclaw-fleet\nArchitecture: {}\n",
            a.deb
        ),
    )
    .map_err(|e| format!("writing debian/control: {e}"))?;
    let shlibs = output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "-edebian/nanoclaw-fleet/usr/bin/nanoclaw-fleet"])
            .current_dir(&src),
    )?;
    let libs = shlibs
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .ok_or_else(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {shlibs}"))?;
    let control = Control {
        package: "nanoclaw-fleet",
        version: &cx.version,
        arch: a.deb,
        // passwd: useradd and groupadd for the system user.
        depends: Some(format!("{libs}, passwd")),
        summary: "fleet server for nanoclaw devices",
        description: FLEET_DESCRIPTION,
    };
    build_deb(cx, &t, &control, &FLEET_SCRIPTS)
}

/// `nanoclaw-VERSION-ARCH-linux-musl.tar.gz`: one directory of that name (README says what
/// goes where for each init system).
fn tarball(cx: &Ctx, a: &Arch, bin: &Path) -> Result<PathBuf> {
    let name = format!("nanoclaw-{}-{}-linux-musl", cx.version, a.name);
    let t = Tree::new(cx.work.join(&name))?;
    t.file("README", 0o644, TARBALL_README.as_bytes())?;
    t.file("INSTALL.md", 0o644, INSTALL_MD.as_bytes())?;
    t.file("copyright", 0o644, COPYRIGHT.as_bytes())?;
    t.file("device.example.json", 0o644, DEVICE_EXAMPLE.as_bytes())?;
    t.copy("sbin/nanoclaw", 0o755, bin)?;
    t.file("openrc/init.d/nanoclaw", 0o755, OPENRC.as_bytes())?;
    t.file("openrc/conf.d/nanoclaw", 0o644, OPENRC_CONF.as_bytes())?;
    t.file("busybox/S50nanoclaw", 0o755, BUSYBOX.as_bytes())?;
    t.file("busybox/inittab", 0o644, INITTAB.as_bytes())?;
    t.file("systemd/nanoclaw.service", 0o644, SERVICE.as_bytes())?;
    t.finish(cx.epoch)?;
    let file = cx.out.join(format!("{name}.tar.gz"));
    let gzip = if cx.fast { "gzip -1n" } else { "gzip -9n" };
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--use-compress-program={gzip}"))
        .arg("-cf")
        .arg(&file)
        .arg("-C")
        .arg(&cx.work)
        .arg(&name))?;
    Ok(file)
}
