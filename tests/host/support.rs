//! `nanoclaw support-bundle`: the archive a field engineer gets, unpacked with the system `tar`
//! — complete with a running daemon, still useful without one, and free of the secrets the
//! configs hold.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nanoclaw_tests::{Device, grant, manifest, nanoclaw, run};
use serde_json::Value;

const SECRET: &str = "s3cr3t-value";

/// Runs `nanoclaw support-bundle ARGS`.
fn support_bundle(args: &[&Path]) -> nanoclaw_tests::CliOut {
    let mut a: Vec<&str> = vec!["support-bundle"];
    a.extend(args.iter().map(|p| p.to_str().expect("utf-8 path")));
    nanoclaw(&a)
}

/// Unpacks `archive` with the system tar into a fresh directory; returns it and the bundle's
/// single top directory.
fn extract(archive: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path()));
    assert_eq!(out.code, 0, "tar -xzf: {out:?}");
    let tops: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tops.len(), 1, "one top directory: {tops:?}");
    let top = tops[0].clone();
    let name = top.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("nanoclaw-support-") && name.ends_with('Z'),
        "{name}"
    );
    (dir, top)
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn bundle_of_a_running_daemon_is_complete_and_redacted() {
    let mut dev = Device::new();
    dev.add_demo_agent("sensor");
    let mut m = json(&dev.bundle("sensor").join("manifest.json"));
    m["env"]["API_TOKEN"] = SECRET.into();
    dev.write_manifest("sensor", &m);
    // A task that exits: not running, so the bundle asks the daemon why.
    dev.add_agent(
        "once",
        manifest("once", "task", &["exit", "0"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait_state("sensor", "running");
    dev.wait_state("once", "exited");

    let out_dir = tempfile::tempdir().expect("tempdir");
    let archive = out_dir.path().join("sb.tar.gz");
    // No --socket: the socket comes from device.json.
    let out = support_bundle(&[
        "-o".as_ref(),
        &archive,
        "--config".as_ref(),
        &dev.config_path(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("wrote {}", archive.display()))
            && out.stdout.contains("values redacted"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("warning"), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&archive).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let (_x, top) = extract(&archive);
    for f in [
        "status.json",
        "agents.json",
        "battery.json",
        "audit.json",
        "device.json",
        "policy.json",
        "agents/sensor/manifest.json",
        "agents/once/manifest.json",
        "why/once.json",
    ] {
        json(&top.join(f));
    }
    for f in ["README.txt", "kernel.txt", "daemon.txt", "logs/sensor.log"] {
        assert!(top.join(f).is_file(), "{f} missing");
    }
    assert!(
        !top.join("why/sensor.json").exists(),
        "no `why` for a running agent"
    );
    let audit = json(&top.join("audit.json"));
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "daemon_start"),
        "{audit}"
    );
    let agents = json(&top.join("agents.json"));
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "sensor" && a["state"] == "running"),
        "{agents}"
    );
    let m = json(&top.join("agents/sensor/manifest.json"));
    assert_eq!(m["env"]["API_TOKEN"], "<redacted>");
    assert_eq!(m["name"], "sensor");
    // Key paths stay (the policy's signer key is a path); only secrets go.
    let policy = json(&top.join("policy.json"));
    assert_eq!(policy["signers"][0]["key"], "keys/demo-vendor.pub");
    let kernel = fs::read_to_string(top.join("kernel.txt")).unwrap();
    for section in [
        "# uname",
        "# /proc/version",
        "# /proc/self/mounts",
        "# /proc/meminfo",
    ] {
        assert!(kernel.contains(section), "{section}:\n{kernel}");
    }
    let readme = fs::read_to_string(top.join("README.txt")).unwrap();
    assert!(
        readme.contains("Redaction") && readme.contains(env!("CARGO_PKG_VERSION")),
        "{readme}"
    );

    for f in files(&top) {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
}

#[test]
fn bundle_without_a_daemon_still_has_host_facts() {
    let dev = Device::new();
    dev.write_configs();
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("sb.tar.gz");
    // The config's socket has nobody behind it (the daemon was never started) ...
    let out = support_bundle(&[
        "-o".as_ref(),
        &archive,
        "--config".as_ref(),
        &dev.config_path(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("warning"), "{out:?}");
    let (_x, top) = extract(&archive);
    let daemon = fs::read_to_string(top.join("daemon.txt")).unwrap();
    assert!(
        daemon.contains("NOT REACHABLE") && daemon.contains(dev.socket().to_str().unwrap()),
        "{daemon}"
    );
    assert!(top.join("kernel.txt").is_file());
    json(&top.join("device.json"));
    assert!(!top.join("status.json").exists());

    // ... and neither has an explicit --socket; a missing config is noted, not fatal.
    let sock = dir.path().join("nobody-listens.sock");
    let archive = dir.path().join("sb2.tar.gz");
    let out = support_bundle(&[
        "-o".as_ref(),
        &archive,
        "--config".as_ref(),
        &dir.path().join("no-device.json"),
        "--socket".as_ref(),
        &sock,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let (_x, top) = extract(&archive);
    for f in [
        "daemon.txt",
        "kernel.txt",
        "device.json.error",
        "README.txt",
    ] {
        assert!(top.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn unwritable_output_exits_1_and_missing_output_exits_2() {
    nanoclaw_tests::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("no-such-dir/sb.tar.gz");
    let sock = dir.path().join("nobody.sock");
    let out = support_bundle(&[
        "-o".as_ref(),
        &archive,
        "--config".as_ref(),
        &dir.path().join("device.json"),
        "--socket".as_ref(),
        &sock,
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(archive.to_str().unwrap()),
        "names the path: {out:?}"
    );
    assert!(!archive.exists());

    for args in [
        &["support-bundle"][..],
        &["support-bundle", "-o"],
        &["support-bundle", "-o", "x", "--bogus"],
    ] {
        let out = nanoclaw(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("usage"), "{args:?}: {out:?}");
    }
}
