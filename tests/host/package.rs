//! Host tier: the Debian packages and the tarball of `cargo xtask package`, for this machine's
//! architecture, installed into a clean Debian root the way an operator would: `dpkg -i` in
//! a chroot, files and modes as shipped, the unit verified by that root's own systemd, the
//! static binary running there, upgrades that keep the operator's device.json and hand the
//! agents over instead of restarting the daemon, `dpkg -r` and `dpkg -P` leaving nothing of
//! the package behind. (The daemon itself runs from the tarball under BusyBox init in the VM
//! tier, tests/vm/init.sh.)
//!
//! The root is `mmdebstrap --variant=minbase --include=systemd` of this host's suite from the
//! host's own Debian mirror: what a Debian device with systemd has, and nothing else (Debian's
//! own docs left out). Making it takes about a minute and the network, so it is cached in
//! `target/package/roots/SUITE-minbase-systemd/` (delete it to refresh) and each test works on
//! an overlay of it (a copy without overlayfs). The packages are built with the binaries this
//! test run uses anyway (`--fast`: gzip instead of xz; the fleet server is the debug build,
//! stripped).
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use nanoclaw_tests::{CliOut, require_root, run, workspace_root};

/// Debian's name for this machine's architecture.
fn deb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

fn ok(out: CliOut, what: &str) -> CliOut {
    assert_eq!(out.code, 0, "{what}: {out:?}");
    out
}

/// This host's Debian suite (`VERSION_CODENAME`): the fleet package's glibc dependency is
/// the build host's.
fn suite() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .expect("VERSION_CODENAME in /etc/os-release")
}

/// The Debian mirror apt is configured with for `suite` (one-line or deb822 sources).
fn mirror(suite: &str) -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        // One-line: `deb [options] URI SUITE COMPONENTS...`.
        for l in text.lines() {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.first() != Some(&"deb") {
                continue;
            }
            let rest: Vec<&str> = words[1..]
                .iter()
                .copied()
                .skip_while(|w| w.starts_with('['))
                .filter(|w| !w.ends_with(']'))
                .collect();
            if rest.get(1) == Some(&suite) {
                return rest[0].to_owned();
            }
        }
        // deb822: a stanza with `Suites:` naming the suite.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let suites = field("Suites:").unwrap_or_default();
            if field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
                && suites.split_whitespace().any(|s| s == suite)
                && let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next())
            {
                return uri.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// Debian's own documentation in the root: not what the test looks at.
const SLIM: [&str; 4] = [
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
];

/// The cached root, made on first use: a directory that no test changes (each one works on an
/// overlay of it).
fn cached_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let suite = suite();
        let dir = target_dir().join("package/roots");
        let root = dir.join(format!("{suite}-minbase-systemd"));
        if root.join("usr/bin/dpkg").is_file() {
            return root;
        }
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{suite}-{}", std::process::id()));
        let mirror = mirror(&suite);
        let t0 = Instant::now();
        ok(
            run(Command::new("mmdebstrap")
                .args(["--quiet", "--variant=minbase", "--include=systemd"])
                // A quarter smaller; the exclusions are dropped from the root's dpkg config at
                // the end, so the packages under test install every file they ship.
                .args(SLIM.map(|p| format!("--dpkgopt=path-exclude={p}")))
                .arg("--customize-hook=rm \"$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap\"")
                .arg(&suite)
                .arg(&tmp)
                .arg(&mirror)),
            "mmdebstrap (needs the network the first time)",
        );
        let _ = fs::remove_dir_all(&root);
        fs::rename(&tmp, &root).unwrap();
        eprintln!(
            "package: made the {suite} root from {mirror} in {:.1} s: {}",
            t0.elapsed().as_secs_f64(),
            root.display()
        );
        root
    })
}

/// A fresh clean root of its own: an overlay on the cached one (a copy where overlayfs is
/// not available), removed when dropped.
struct Root {
    /// Upper, work and mount point; removed after `drop` has unmounted the overlay.
    _dir: tempfile::TempDir,
    merged: PathBuf,
    mounted: bool,
}

impl Root {
    fn new() -> Self {
        require_root();
        let lower = cached_root();
        let dir = tempfile::Builder::new()
            .prefix("nc-debroot-")
            .tempdir()
            .unwrap();
        let merged = dir.path().join("root");
        for d in ["upper", "work", "root"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let overlay = run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged));
        let mounted = overlay.code == 0;
        if !mounted {
            eprintln!(
                "package: no overlayfs ({}); copying the root",
                overlay.stderr.trim()
            );
            ok(
                run(Command::new("cp")
                    .arg("-a")
                    .arg(lower.join("."))
                    .arg(&merged)),
                "copying the root",
            );
        }
        Self {
            _dir: dir,
            merged,
            mounted,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.merged.join(p.trim_start_matches('/'))
    }

    /// `args` inside the root, with the environment dpkg expects.
    /// `systemd-analyze verify` of an installed unit, by this root's own systemd: not a word.
    fn verify_unit(&self, unit: &str) {
        let path = format!("/lib/systemd/system/{unit}");
        let verify = self.chroot(&["systemd-analyze", "verify", "--man=no", &path]);
        assert_eq!(verify.code, 0, "{verify:?}");
        assert_eq!(
            verify.stderr.trim(),
            "",
            "systemd-analyze verify: {verify:?}"
        );
    }

    fn chroot(&self, args: &[&str]) -> CliOut {
        run(Command::new("chroot")
            .arg(&self.merged)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }

    /// Copies `deb` into the root and `dpkg -i`s it.
    fn install(&self, deb: &Path) -> CliOut {
        let name = deb.file_name().unwrap().to_str().unwrap();
        fs::copy(deb, self.path(&format!("tmp/{name}"))).unwrap();
        let out = ok(
            self.chroot(&["dpkg", "-i", &format!("/tmp/{name}")]),
            &format!("dpkg -i {name}"),
        );
        fs::remove_file(self.path(&format!("tmp/{name}"))).unwrap();
        out
    }

    /// Whether `p` exists in the root, itself (a symlink's absolute target means the host).
    fn has(&self, p: &str) -> bool {
        fs::symlink_metadata(self.path(p)).is_ok()
    }

    /// (mode, uid, gid) of `p` in the root, following symlinks (/lib is one to usr/lib).
    fn stat(&self, p: &str) -> (u32, u32, u32) {
        let m = fs::metadata(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    /// `dpkg-query -W -f=FORMAT PACKAGE`, or None when dpkg knows nothing of it.
    fn query(&self, package: &str, format: &str) -> Option<String> {
        let out = self.chroot(&["dpkg-query", "-W", &format!("-f={format}"), package]);
        (out.code == 0).then_some(out.stdout)
    }

    /// Fakes a running systemd: `/run/systemd/system` and a `systemctl` first on PATH that
    /// logs its arguments to /tmp/systemctl.log and calls every unit active.
    fn fake_systemd(&self) {
        fs::create_dir_all(self.path("run/systemd/system")).unwrap();
        let fake = self.path("usr/local/sbin/systemctl");
        fs::write(
            &fake,
            "#!/bin/sh\necho \"$*\" >>/tmp/systemctl.log\nexit 0\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The fake systemctl's log since the last call.
    fn systemctl_calls(&self) -> String {
        let log = self.path("tmp/systemctl.log");
        let text = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        text
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if self.mounted {
            let out = run(Command::new("umount").arg(&self.merged));
            if out.code != 0 {
                // Never let the temp dir's removal walk into a still mounted root.
                eprintln!("package: umount {}: {out:?}", self.merged.display());
                let _ = run(Command::new("umount").arg("-l").arg(&self.merged));
            }
        }
    }
}

/// The artefacts, built once per test process into a temporary directory.
fn packages() -> &'static Path {
    static OUT: OnceLock<tempfile::TempDir> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::Builder::new()
            .prefix("nc-pkg-")
            .tempdir()
            .unwrap();
        // The debug fleet server the e2e tests build anyway, without its 180 MB of debug info.
        let fleet = out.path().join("nanoclaw-fleet");
        ok(
            run(Command::new("strip")
                .arg("-o")
                .arg(&fleet)
                .arg(nanoclaw_tests::fleet::fleet_bin())),
            "strip",
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let t0 = Instant::now();
        ok(
            run(Command::new(cargo)
                .current_dir(workspace_root())
                .args([
                    "xtask",
                    "package",
                    "--fast",
                    "--arch",
                    std::env::consts::ARCH,
                ])
                .arg("--nanoclaw")
                .arg(&nanoclaw_tests::bins().nanoclaw)
                .arg("--fleet")
                .arg(&fleet)
                .arg("--out")
                .arg(out.path())),
            "cargo xtask package",
        );
        eprintln!("package: built in {:.1} s", t0.elapsed().as_secs_f64());
        fs::remove_file(&fleet).unwrap();
        out
    })
    .path()
}

fn version() -> String {
    let out = ok(
        nanoclaw_tests::nanoclaw(&["--version"]),
        "nanoclaw --version",
    );
    // "nanoclaw 0.1.0 (x86_64)"
    out.stdout.split_whitespace().nth(1).unwrap().to_owned()
}

fn deb(package: &str) -> PathBuf {
    let p = packages().join(format!("{package}_{}_{}.deb", version(), deb_arch()));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// Rebuilds `deb` as version `new` (same files and scripts): an upgrade to install.
fn bumped(deb: &Path, new: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    ok(
        run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree)),
        "dpkg-deb -R",
    );
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {new}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&control, text + "\n").unwrap();
    let out = dir.join(format!("nanoclaw_{new}_{}.deb", deb_arch()));
    ok(
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-b"])
            .arg(&tree)
            .arg(&out)),
        "dpkg-deb -b",
    );
    out
}

const ENABLED: &str = "etc/systemd/system/multi-user.target.wants/nanoclaw.service";

#[test]
fn the_device_package_installs_upgrades_and_purges_in_a_clean_debian_root() {
    let root = Root::new();
    let deb = deb("nanoclaw");
    let control = ok(
        run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
            "Package",
            "Architecture",
            "Version",
            "Depends",
        ])),
        "dpkg-deb -f",
    );
    assert_eq!(
        control.stdout,
        format!(
            "Package: nanoclaw\nArchitecture: {}\nVersion: {}\n",
            deb_arch(),
            version()
        ),
        "a static binary depends on nothing"
    );

    root.install(&deb);
    // Exactly what is shipped, with the modes and owners it is shipped with.
    for (path, mode) in [
        ("/usr/sbin/nanoclaw", 0o755),
        ("/lib/systemd/system/nanoclaw.service", 0o644),
        ("/etc/nanoclaw", 0o750),
        ("/usr/share/doc/nanoclaw/copyright", 0o644),
        ("/usr/share/doc/nanoclaw/INSTALL.md", 0o644),
        ("/usr/share/doc/nanoclaw/examples/device.json", 0o644),
        // Made by the postinst: the daemon does not start without its agents directory.
        ("/var/lib/nanoclaw/agents", 0o755),
    ] {
        assert_eq!(root.stat(path), (mode, 0, 0), "{path}");
    }
    let listed = ok(root.chroot(&["dpkg", "-L", "nanoclaw"]), "dpkg -L").stdout;
    let listed: Vec<&str> = listed.lines().collect();
    for want in [
        "/usr/sbin/nanoclaw",
        "/lib/systemd/system/nanoclaw.service",
        "/etc/nanoclaw",
        "/usr/share/doc/nanoclaw/copyright",
    ] {
        assert!(listed.contains(&want), "dpkg -L lacks {want}: {listed:?}");
    }
    // No conffiles: the package ships no device.json to overwrite or to start a daemon with.
    assert_eq!(root.query("nanoclaw", "${Conffiles}").unwrap().trim(), "");
    assert!(!root.path("etc/nanoclaw/device.json").exists());

    // The unit as this root's own systemd reads it, the binary in place.
    root.verify_unit("nanoclaw.service");
    // Enabled on installation (deb-systemd-helper), started only once provisioned.
    let link = fs::read_link(root.path(ENABLED)).unwrap();
    assert_eq!(link, Path::new("/lib/systemd/system/nanoclaw.service"));

    // The static binary runs in a root that has no musl; unprovisioned, the daemon refuses
    // with the invalid-config exit code and says what is missing.
    let v = ok(
        root.chroot(&["/usr/sbin/nanoclaw", "--version"]),
        "--version",
    );
    assert!(v.stdout.contains(std::env::consts::ARCH), "{v:?}");
    let daemon = root.chroot(&[
        "/usr/sbin/nanoclaw",
        "daemon",
        "--config",
        "/etc/nanoclaw/device.json",
    ]);
    assert_eq!(daemon.code, 6, "{daemon:?}");
    assert!(
        daemon.stderr.contains("/etc/nanoclaw/device.json"),
        "{daemon:?}"
    );

    // Provisioned; then an upgrade under a (fake) running systemd with the unit active: the
    // daemon is told to hand over (SIGUSR2 to the main process only), never restarted or
    // stopped, and device.json is untouched.
    let device = "{ \"provisioned\": \"by the operator\" }\n";
    fs::write(root.path("etc/nanoclaw/device.json"), device).unwrap();
    fs::write(root.path("var/lib/nanoclaw-state-marker"), "").unwrap();
    fs::create_dir_all(root.path("var/lib/nanoclaw/agents/sensor")).unwrap();
    root.fake_systemd();
    let dir = tempfile::tempdir().unwrap();
    let upgrade = bumped(&deb, &format!("{}+1", version()), dir.path());
    root.install(&upgrade);
    let calls = root.systemctl_calls();
    assert!(
        calls
            .lines()
            .any(|l| l == "kill --kill-who=main --signal=USR2 nanoclaw.service"),
        "no handover on upgrade: {calls}"
    );
    assert!(
        !calls.contains("restart") && !calls.contains("stop"),
        "an upgrade must not restart or stop the daemon (and with it every agent): {calls}"
    );
    assert_eq!(
        root.query("nanoclaw", "${Version}").unwrap(),
        format!("{}+1", version())
    );
    assert_eq!(
        fs::read_to_string(root.path("etc/nanoclaw/device.json")).unwrap(),
        device
    );
    assert!(root.has(ENABLED));

    // An operator's `disable` survives an upgrade (reinstalling the same version here).
    ok(
        root.chroot(&[
            "env",
            "SYSTEMD_OFFLINE=1",
            "/usr/bin/systemctl",
            "disable",
            "nanoclaw.service",
        ]),
        "systemctl disable",
    );
    assert!(!root.has(ENABLED));
    root.install(&upgrade);
    assert!(!root.has(ENABLED), "re-enabled by an upgrade");
    ok(
        root.chroot(&[
            "env",
            "SYSTEMD_OFFLINE=1",
            "/usr/bin/systemctl",
            "enable",
            "nanoclaw.service",
        ]),
        "systemctl enable",
    );
    root.systemctl_calls();

    // Removal stops the daemon (it stops its agents gracefully), removes the package's files
    // and masks the unit; the operator's device.json and the state stay until a purge.
    ok(root.chroot(&["dpkg", "-r", "nanoclaw"]), "dpkg -r");
    let calls = root.systemctl_calls();
    assert!(
        calls
            .lines()
            .any(|l| l.contains("stop") && l.contains("nanoclaw.service")),
        "dpkg -r did not stop the daemon: {calls}"
    );
    for gone in ["/usr/sbin/nanoclaw", "/lib/systemd/system/nanoclaw.service"] {
        assert!(!root.path(gone).exists(), "{gone} left after dpkg -r");
    }
    assert_eq!(
        fs::read_to_string(root.path("etc/nanoclaw/device.json")).unwrap(),
        device
    );
    assert!(root.path("var/lib/nanoclaw/agents/sensor").is_dir());

    // Purge: the package's state and enablement go; what the operator provisioned stays.
    ok(root.chroot(&["dpkg", "-P", "nanoclaw"]), "dpkg -P");
    assert_eq!(
        root.query("nanoclaw", "${Status}"),
        None,
        "dpkg still knows nanoclaw"
    );
    assert!(!root.path("var/lib/nanoclaw").exists());
    assert!(!root.has(ENABLED));
    assert!(
        !root.has("etc/systemd/system/nanoclaw.service"),
        "the removal mask was left behind"
    );
    assert!(root.path("var/lib/nanoclaw-state-marker").exists());
    assert_eq!(
        fs::read_to_string(root.path("etc/nanoclaw/device.json")).unwrap(),
        device
    );
}

#[test]
fn the_fleet_package_runs_as_its_own_system_user_and_keeps_its_ca_on_purge() {
    let root = Root::new();
    let deb = deb("nanoclaw-fleet");
    let depends = ok(
        run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends")),
        "dpkg-deb -f",
    );
    assert!(depends.stdout.contains("libc6 (>= "), "{depends:?}");
    // Its dependencies are all in a minimal Debian: dpkg -i alone installs it.
    root.install(&deb);
    // Idempotent: a second configure neither fails nor makes a second user.
    root.install(&deb);

    let user = ok(
        root.chroot(&["getent", "passwd", "nanoclaw-fleet"]),
        "getent",
    );
    let fields: Vec<&str> = user.stdout.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    let gid: u32 = fields[3].parse().unwrap();
    assert!(uid < 1000, "not a system user: {user:?}");
    assert_eq!(fields[5], "/var/lib/nanoclaw-fleet");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    assert_eq!(root.stat("/var/lib/nanoclaw-fleet"), (0o750, uid, gid));
    for (path, mode) in [
        ("/usr/bin/nanoclaw-fleet", 0o755),
        ("/lib/systemd/system/nanoclaw-fleet.service", 0o644),
        ("/usr/share/doc/nanoclaw-fleet/copyright", 0o644),
        ("/usr/share/doc/nanoclaw-fleet/FLEET.md", 0o644),
    ] {
        assert_eq!(root.stat(path), (mode, 0, 0), "{path}");
    }
    root.verify_unit("nanoclaw-fleet.service");
    // It runs against the root's own glibc, as its user.
    let v = ok(
        root.chroot(&[
            "setpriv",
            "--reuid=nanoclaw-fleet",
            "--regid=nanoclaw-fleet",
            "--clear-groups",
            "nanoclaw-fleet",
            "--version",
        ]),
        "nanoclaw-fleet --version",
    );
    assert!(v.stdout.starts_with("nanoclaw-fleet "), "{v:?}");

    fs::write(
        root.path("var/lib/nanoclaw-fleet/ca.pem"),
        "the fleet's CA\n",
    )
    .unwrap();
    ok(root.chroot(&["dpkg", "-P", "nanoclaw-fleet"]), "dpkg -P");
    assert_eq!(root.query("nanoclaw-fleet", "${Status}"), None);
    assert!(!root.path("usr/bin/nanoclaw-fleet").exists());
    // Every enrolled device pins that CA: not even a purge deletes it.
    assert!(root.path("var/lib/nanoclaw-fleet/ca.pem").is_file());
}

#[test]
fn the_tarball_holds_the_static_binary_and_the_init_scripts() {
    let name = format!(
        "nanoclaw-{}-{}-linux-musl",
        version(),
        std::env::consts::ARCH
    );
    let tar = packages().join(format!("{name}.tar.gz"));
    let list = ok(
        run(Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&tar)),
        "tar -t",
    );
    for (path, mode) in [
        ("sbin/nanoclaw", "-rwxr-xr-x"),
        ("busybox/S50nanoclaw", "-rwxr-xr-x"),
        ("busybox/inittab", "-rw-r--r--"),
        ("openrc/init.d/nanoclaw", "-rwxr-xr-x"),
        ("openrc/conf.d/nanoclaw", "-rw-r--r--"),
        ("systemd/nanoclaw.service", "-rw-r--r--"),
        ("device.example.json", "-rw-r--r--"),
        ("README", "-rw-r--r--"),
        ("INSTALL.md", "-rw-r--r--"),
    ] {
        let line = list
            .stdout
            .lines()
            .find(|l| l.ends_with(&format!(" {name}/{path}")))
            .unwrap_or_else(|| panic!("{path} is not in {}:\n{}", tar.display(), list.stdout));
        assert!(line.starts_with(&format!("{mode} 0/0 ")), "{line}");
    }
    // The scripts parse as POSIX sh (OpenRC's runner is sh too); BusyBox runs S50nanoclaw
    // for real in the VM tier.
    let dir = tempfile::tempdir().unwrap();
    ok(
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path())),
        "tar -x",
    );
    for script in ["busybox/S50nanoclaw", "openrc/init.d/nanoclaw"] {
        ok(
            run(Command::new("sh")
                .arg("-n")
                .arg(dir.path().join(&name).join(script))),
            script,
        );
    }
    let example = fs::read_to_string(dir.path().join(&name).join("device.example.json")).unwrap();
    let example: serde_json::Value = serde_json::from_str(&example).unwrap();
    assert_eq!(
        example["allow_unsigned"], false,
        "the example is for production"
    );
}
