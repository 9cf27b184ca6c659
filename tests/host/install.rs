//! Signed bundle installs through the daemon (`nanoclaw install`): verification against the
//! policy's signers before anything is unpacked, safe unpack, atomic switch, anti-rollback
//! after probation, rollback by hand, and every bad input refused with nothing left behind.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nanoclaw_tests::{Device, bins, grant, manifest, run};
use serde_json::json;

/// A P-256 key pair: (private PKCS#8 PEM, public PEM).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    nanoclaw_tests::keypair(dir, name, true)
}

fn nc(args: &[&str]) -> nanoclaw_tests::CliOut {
    run(Command::new(&bins().nanoclaw).args(args))
}

/// Packs a bundle of agent `name` at `version` (running `demo-agent sleep`) and signs it.
fn signed_bundle(dir: &Path, name: &str, version: &str, key: &Path) -> PathBuf {
    signed_bundle_running(dir, name, version, key, &["sleep"])
}

fn signed_bundle_running(
    dir: &Path,
    name: &str,
    version: &str,
    key: &Path,
    exec: &[&str],
) -> PathBuf {
    signed_bundle_with(dir, name, version, key, exec, |_| {})
}

fn signed_bundle_with(
    dir: &Path,
    name: &str,
    version: &str,
    key: &Path,
    exec: &[&str],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let src = dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(src.join("rootfs/bin")).unwrap();
    std::fs::copy(&bins().demo_agent, src.join("rootfs/bin/demo-agent")).unwrap();
    let mut m = manifest(name, "service", exec, "16MiB");
    m["version"] = json!(version);
    m["restart"] = json!({ "policy": "always", "max_per_hour": 3 });
    tweak(&mut m);
    std::fs::write(src.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let file = dir.join(format!("{name}-{version}.nclaw"));
    nanoclaw_tests::pack_and_sign(&src, &file, key);
    file
}

/// A started device that runs only signed bundles, its policy's signer `keys/demo-vendor.pub`
/// (private key returned), agent `svc` granted, and a work directory.
fn signed_device(tweak: impl FnOnce(&mut Device)) -> (Device, PathBuf, PathBuf) {
    let mut dev = Device::new();
    let keys = dev.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (vendor, vendor_pub) = keypair(&keys, "vendor");
    std::fs::rename(&vendor_pub, keys.join("demo-vendor.pub")).unwrap();
    dev.device["allow_unsigned"] = json!(false);
    dev.grant("svc", grant("16MiB"));
    tweak(&mut dev);
    dev.start();
    let work = dev.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    (dev, vendor, work)
}

#[test]
fn signed_installs_upgrades_rollback_and_bad_inputs() {
    let (dev, vendor, work) = signed_device(|dev| {
        dev.device["probation_s"] = json!(2);
    });
    let (stranger, _) = keypair(&dev.path().join("keys"), "stranger");

    // A good signed bundle installs and runs.
    let v1 = signed_bundle(&work, "svc", "1.0.0", &vendor);
    let out = dev.cli(&["install", v1.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("managed key"), "{out:?}");
    let a = dev.wait_state("svc", "running");
    assert_eq!(a["version"], "1.0.0");

    let staging_left = |dev: &Device| {
        std::fs::read_dir(dev.state_dir().join("bundles/svc"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".staging"))
    };
    let refused = |dev: &Device, file: &Path, want: &str| {
        let before = std::fs::read_link(dev.path().join("agents/svc")).unwrap();
        let out = dev.cli(&["install", file.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{file:?} was not refused: {out:?}");
        assert!(out.stderr.contains(want), "{file:?}: {out:?}");
        assert_eq!(
            std::fs::read_link(dev.path().join("agents/svc")).unwrap(),
            before
        );
        assert!(!staging_left(dev), "a staging directory was left behind");
    };

    // Tampered archive: one byte of the agent binary changed after signing.
    let v2 = signed_bundle(&work, "svc", "2.0.0", &vendor);
    let tampered = work.join("svc-2.0.0-tampered.nclaw");
    let mut bytes = std::fs::read(&v2).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&tampered, &bytes).unwrap();
    std::fs::copy(
        format!("{}.sigstore.json", v2.display()),
        format!("{}.sigstore.json", tampered.display()),
    )
    .unwrap();
    refused(&dev, &tampered, "does not verify");
    // Signed by a key the policy does not list.
    let other = signed_bundle(&work, "svc", "2.0.1", &stranger);
    refused(&dev, &other, "does not verify");
    // No signature at all.
    std::fs::remove_file(format!("{}.sigstore.json", other.display())).unwrap();
    refused(&dev, &other, "no signature");
    // Truncated, malformed signature JSON.
    std::fs::write(
        format!("{}.sigstore.json", other.display()),
        b"{\"mediaType\":",
    )
    .unwrap();
    refused(&dev, &other, "malformed bundle JSON");

    // An upgrade switches the running agent to the new version.
    let out = dev.cli(&["install", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(Duration::from_secs(20), "svc 2.0.0 running", || {
        let a = dev.agent("svc");
        (a["version"] == "2.0.0" && a["state"] == "running").then_some(a)
    });
    // Rollback by hand, before 2.0.0 passed probation.
    let out = dev.cli(&["rollback", "svc"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(Duration::from_secs(20), "svc 1.0.0 running again", || {
        let a = dev.agent("svc");
        (a["version"] == "1.0.0" && a["state"] == "running").then_some(a)
    });
    assert!(dev.audit_of("rollback").iter().any(|r| r["agent"] == "svc"));

    // 2.0.0 again (already unpacked: refused as installed), so install 2.1.0; after its
    // probation it is the minimum and an older signed version is refused (anti-rollback).
    let v21 = signed_bundle(&work, "svc", "2.1.0", &vendor);
    assert_eq!(dev.cli(&["install", v21.to_str().unwrap()]).code, 0);
    dev.wait(Duration::from_secs(30), "2.1.0 passing probation", || {
        dev.audit_of("posture").into_iter().find(|r| {
            r["agent"] == "svc"
                && r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("2.1.0 passed probation")
        })
    });
    let old = signed_bundle(&work, "svc", "1.5.0", &vendor);
    refused(&dev, &old, "anti-rollback");
    let out = dev.cli(&["rollback", "svc"]);
    assert_eq!(
        out.code, 1,
        "rollback below the minimum must be refused: {out:?}"
    );

    // A new version that crash-loops during its probation is rolled back automatically.
    let bad = signed_bundle_running(&work, "svc", "3.0.0", &vendor, &["exit", "1"]);
    assert_eq!(dev.cli(&["install", bad.to_str().unwrap()]).code, 0);
    dev.wait(
        Duration::from_secs(60),
        "the automatic rollback to 2.1.0",
        || {
            let a = dev.agent("svc");
            (a["version"] == "2.1.0" && a["state"] == "running").then_some(a)
        },
    );
    assert!(
        dev.audit_of("rollback").iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("3.0.0 crash-looped during its probation")),
        "{:?}",
        dev.audit_of("rollback")
    );

    // keep_versions (3): the oldest version went when the fourth was installed; the current
    // one and the minimum stay.
    let kept: Vec<String> = std::fs::read_dir(dev.state_dir().join("bundles/svc"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!kept.contains(&"1.0.0".to_owned()), "{kept:?}");
    assert!(
        kept.contains(&"2.1.0".to_owned()) && kept.contains(&"3.0.0".to_owned()),
        "{kept:?}"
    );

    // Every refusal is audited.
    let refusals = dev.audit_of("install_refused");
    assert!(refusals.len() >= 5, "{refusals:?}");
}

/// A new version that stops sending heartbeats during its probation is rolled back; an
/// older version below the anti-rollback minimum installs only when a fleet-signed policy pins
/// it (a local unsigned policy's pin is refused).
#[test]
fn health_check_rollback_and_signed_pins() {
    let mut fleet = None;
    let (dev, vendor, work) = signed_device(|dev| {
        dev.device["probation_s"] = json!(6);
        let (key, public) = keypair(dev.path(), "fleet");
        dev.device["policy_key"] = json!(public);
        fleet = Some(key);
    });
    let fleet = fleet.unwrap();
    let beating = |version: &str, exec: &[&str]| {
        signed_bundle_with(&work, "svc", version, &vendor, exec, |m| {
            m["health"] = json!({ "heartbeat_s": 1 });
        })
    };
    let v1 = beating("1.0.0", &["heartbeat", "300"]);
    assert_eq!(dev.cli(&["install", v1.to_str().unwrap()]).code, 0);
    dev.wait_state("svc", "running");
    // 2.0.0 answers two heartbeats, then goes silent: rolled back within its probation.
    let v2 = beating("2.0.0", &["heartbeat", "300", "2"]);
    assert_eq!(dev.cli(&["install", v2.to_str().unwrap()]).code, 0);
    dev.wait(Duration::from_secs(30), "the rollback to 1.0.0", || {
        let r = dev.audit_of("rollback");
        r.iter()
            .any(|r| {
                r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("2.0.0 failed its health check during its probation")
            })
            .then_some(())
    });
    dev.wait(Duration::from_secs(20), "1.0.0 running again", || {
        let a = dev.agent("svc");
        (a["version"] == "1.0.0" && a["state"] == "running").then_some(a)
    });
    assert!(!dev.audit_of("health_check").is_empty());
    // 1.0.0 passes probation and becomes the minimum; 0.9.0 is then refused...
    dev.wait(Duration::from_secs(30), "1.0.0 passing probation", || {
        dev.audit_of("posture").into_iter().find(|r| {
            r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("1.0.0 passed probation")
        })
    });
    let old = beating("0.9.0", &["heartbeat", "300"]);
    let out = dev.cli(&["install", old.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("anti-rollback"), "{out:?}");
    // ...also when an unsigned local policy pins it...
    let mut p = dev.policy.clone();
    p["version"] = json!(2);
    p["pinned_versions"] = json!({ "svc": "0.9.0" });
    std::fs::write(dev.policy_path(), serde_json::to_vec(&p).unwrap()).unwrap();
    assert_eq!(dev.cli(&["policy", "reload"]).code, 0);
    let out = dev.cli(&["install", old.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("only in a fleet-signed policy"),
        "{out:?}"
    );
    // ...and installs when the fleet-signed policy pins it.
    p["version"] = json!(3);
    let plain = work.join("pin.json");
    std::fs::write(&plain, serde_json::to_vec(&p).unwrap()).unwrap();
    let signed = work.join("pin.signed.json");
    let out = nc(&[
        "policy",
        "sign",
        plain.to_str().unwrap(),
        "--key",
        fleet.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = dev.cli(&["policy", "apply", signed.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = dev.cli(&["install", old.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let installs = dev.audit_of("install");
    assert!(
        installs.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("installed 0.9.0; below the anti-rollback minimum 1.0.0, pinned by fleet-signed policy version 3")),
        "{installs:?}"
    );
    dev.wait(Duration::from_secs(20), "0.9.0 running", || {
        let a = dev.agent("svc");
        (a["version"] == "0.9.0" && a["state"] == "running").then_some(a)
    });
}

/// A `kill -9` of the daemon in the middle of an install leaves either the old or the new
/// version in place, never a mix, and the next daemon clears what the install left behind. A
/// bundle that does not fit on the disk (minus the reserve) is refused before it is unpacked.
#[test]
fn interrupted_and_full_installs_leave_nothing_half_done() {
    let (mut dev, vendor, work) = signed_device(|_| {});
    let v1 = signed_bundle(&work, "svc", "1.0.0", &vendor);
    assert_eq!(dev.cli(&["install", v1.to_str().unwrap()]).code, 0);
    dev.wait_state("svc", "running");

    // A 64 MiB payload makes the install take a while; kill the daemon during it.
    let src = work.join("src-svc-1.0.0");
    let noise: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("rootfs/payload"), &noise).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    m["version"] = json!("2.0.0");
    std::fs::write(src.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let big = work.join("svc-2.0.0.nclaw");
    let packed = nc(&[
        "bundle",
        "pack",
        src.to_str().unwrap(),
        "-o",
        big.to_str().unwrap(),
    ]);
    assert_eq!(packed.code, 0, "{packed:?}");
    let signed = nc(&[
        "bundle",
        "sign",
        big.to_str().unwrap(),
        "--key",
        vendor.to_str().unwrap(),
    ]);
    assert_eq!(signed.code, 0, "{signed:?}");
    let mut cli = dev.command().arg("install").arg(&big).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    dev.kill9();
    let _ = cli.wait();
    dev.start();
    // The control socket is up before start-up finished: wait for the re-adoption.
    let a = dev.wait_state("svc", "running");
    let link = std::fs::read_link(dev.path().join("agents/svc")).unwrap();
    let version = link.file_name().unwrap().to_string_lossy().into_owned();
    assert!(version == "1.0.0" || version == "2.0.0", "{link:?}");
    assert!(link.join("manifest.json").is_file() && link.join("rootfs/bin/demo-agent").is_file());
    let leftovers: Vec<String> = std::fs::read_dir(dev.state_dir().join("bundles/svc"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{leftovers:?}\n{}",
        dev.daemon_stderr()
    );
    assert_eq!(a["version"], version.as_str());

    // Not enough space: a fresh state directory on a 48 MiB tmpfs (less than the 64 MiB
    // payload, and than the 32 MiB reserve plus it).
    let small = dev.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let out = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small));
    assert_eq!(out.code, 0, "{out:?}");
    dev.sigterm();
    std::fs::remove_file(dev.path().join("agents/svc")).unwrap();
    dev.device["state_dir"] = json!(small);
    dev.start();
    let mut m3 = m.clone();
    m3["version"] = json!("3.0.0");
    std::fs::write(src.join("manifest.json"), serde_json::to_vec(&m3).unwrap()).unwrap();
    let huge = work.join("svc-3.0.0.nclaw");
    assert_eq!(
        nc(&[
            "bundle",
            "pack",
            src.to_str().unwrap(),
            "-o",
            huge.to_str().unwrap()
        ])
        .code,
        0
    );
    assert_eq!(
        nc(&[
            "bundle",
            "sign",
            huge.to_str().unwrap(),
            "--key",
            vendor.to_str().unwrap()
        ])
        .code,
        0
    );
    let out = dev.cli(&["install", huge.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not fit"), "{out:?}");
    assert!(
        !small.join("bundles/svc/3.0.0").exists()
            && !small.join("bundles/svc/.staging-3.0.0").exists()
    );

    // The disk fills up in the middle of an unpack (13,000 one-byte files pass the space
    // check by their bytes but need a page each): refused, and nothing stays behind.
    dev.sigterm();
    dev.device["install_reserve"] = json!("4KiB");
    dev.start();
    let tiny = work.join("src-tiny");
    std::fs::create_dir_all(tiny.join("rootfs/bin")).unwrap();
    std::fs::create_dir_all(tiny.join("rootfs/many")).unwrap();
    std::fs::copy(&bins().demo_agent, tiny.join("rootfs/bin/demo-agent")).unwrap();
    for i in 0..13_000 {
        std::fs::write(tiny.join(format!("rootfs/many/{i}")), b"x").unwrap();
    }
    let mut m4 = m.clone();
    m4["version"] = json!("4.0.0");
    std::fs::write(tiny.join("manifest.json"), serde_json::to_vec(&m4).unwrap()).unwrap();
    let many = work.join("svc-4.0.0.nclaw");
    let packed = nc(&[
        "bundle",
        "pack",
        tiny.to_str().unwrap(),
        "-o",
        many.to_str().unwrap(),
    ]);
    assert_eq!(packed.code, 0, "{packed:?}");
    let signed = nc(&[
        "bundle",
        "sign",
        many.to_str().unwrap(),
        "--key",
        vendor.to_str().unwrap(),
    ]);
    assert_eq!(signed.code, 0, "{signed:?}");
    let out = dev.cli(&["install", many.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    assert!(
        !small.join("bundles/svc/4.0.0").exists()
            && !small.join("bundles/svc/.staging-4.0.0").exists()
    );
    dev.sigterm();
    let _ = run(Command::new("umount").arg("-l").arg(&small));
}
