//! End-to-end fleet sync: the real daemon and the real `nanoclaw-fleet` server on loopback,
//! with a fault-injecting proxy between them (tests/src/fleet.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nanoclaw_tests::fleet::{Fault, Fleet, Proxy};
use nanoclaw_tests::{Device, bins, grant, manifest, run};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(120);

fn nc(args: &[&str]) -> nanoclaw_tests::CliOut {
    run(Command::new(&bins().nanoclaw).args(args))
}

/// A signed bundle of agent `name` carrying `pad_bytes` of incompressible data.
fn signed_bundle(dir: &Path, name: &str, version: &str, key: &Path, pad_bytes: usize) -> PathBuf {
    let src = dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(src.join("rootfs/bin")).unwrap();
    std::fs::copy(&bins().demo_agent, src.join("rootfs/bin/demo-agent")).unwrap();
    if pad_bytes > 0 {
        // xorshift bytes: incompressible and reproducible.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let pad: Vec<u8> = (0..pad_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("rootfs/pad.bin"), pad).unwrap();
    }
    let mut m = manifest(name, "service", &["sleep"], "16MiB");
    m["version"] = json!(version);
    std::fs::write(src.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let file = dir.join(format!("{name}-{version}.nclaw"));
    let out = nc(&[
        "bundle",
        "pack",
        src.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = nc(&[
        "bundle",
        "sign",
        file.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    file
}

/// A device enrolled in `fleet` (group `lab`) dialing `addr`, its policy signer key made,
/// agent `svc` granted, and `pre_audit` audit records already in its log (a device that
/// was offline for a long time).
fn fleet_device(
    fleet: &Fleet,
    id: &str,
    addr: std::net::SocketAddr,
    pre_audit: u64,
) -> (Device, PathBuf) {
    let mut dev = Device::new();
    let keys = dev.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (vendor, vendor_pub) = nanoclaw_tests::keypair(&keys, "vendor", true);
    std::fs::rename(&vendor_pub, keys.join("demo-vendor.pub")).unwrap();
    let creds = fleet.enrol(id, "lab");
    dev.device["allow_unsigned"] = json!(false);
    dev.device["device_id"] = json!(id);
    dev.device["policy_key"] = json!(fleet.dir.join("fleet-signing.pub"));
    dev.device["fleet"] = Fleet::device_section(&creds, addr, 5);
    dev.grant("svc", grant("16MiB"));
    if pre_audit > 0 {
        let mut log = nanoclaw::audit::AuditLog::open(
            &dev.state_dir().join("audit"),
            nanoclaw::audit::AuditLimits::default(),
        )
        .unwrap();
        for i in 0..pre_audit {
            log.append(
                1_700_000_000_000 + i,
                "offline",
                nanoclaw_proto::audit::AuditKind::Exit,
                &format!("record {i} from the week offline"),
                false,
            )
            .unwrap();
        }
        log.sync().unwrap();
    }
    (dev, vendor)
}

fn policy_reloads(dev: &Device) -> Vec<Value> {
    dev.audit_of("policy_reload")
        .into_iter()
        .filter(|r| r["reason"].as_str().unwrap_or("").contains("fleet"))
        .collect()
}

/// Writes `policy` (the device's own, at `version`) next to the device's keys and pushes it.
fn push_policy(fleet: &Fleet, dev: &Device, version: u64, target: &[&str]) -> String {
    let mut p = dev.policy.clone();
    p["version"] = json!(version);
    let file = dev.path().join(format!("push-{version}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    let mut args = vec!["policy", "push", file.to_str().unwrap()];
    args.extend_from_slice(target);
    fleet.ok(&args)
}

#[test]
fn policy_bundle_and_audit_arrive_exactly_once_through_a_faulty_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve(2, 0);
    let proxy = Proxy::start(server);
    let (mut dev, vendor) = fleet_device(&fleet, "dev-a", proxy.addr, 10_000);
    dev.start();

    // First check-in: the device appears, and its week of audit arrives exactly once, in order.
    let high = dev.wait(SYNC, "the backlog to be acknowledged", || {
        let d = fleet.device("dev-a");
        let high = d["audit"]["high"].as_i64()?;
        (high >= 10_000 && d["audit"]["acked"].as_i64()? >= 10_000).then_some(high)
    });
    let stored = fleet.audit("dev-a");
    assert!(stored.len() as i64 >= 10_000, "{} records", stored.len());
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(
            r["seq"].as_i64(),
            Some(i as i64 + 1),
            "in order, no gap, no repeat"
        );
    }
    assert_eq!(stored[42]["reason"], "record 42 from the week offline");
    assert!(stored.len() as i64 >= high);

    // A pushed policy is applied exactly once, whatever the link does afterwards.
    let out = push_policy(&fleet, &dev, 2, &["--group", "lab"]);
    assert!(out.contains("policy version 2"), "{out}");
    dev.wait(SYNC, "policy version 2 in force", || {
        (dev.json(&["status"])["policy_version"] == 2).then_some(())
    });
    assert_eq!(
        dev.json(&["status"])["policy_origin"]
            .as_str()
            .map(|s| s.starts_with("signed")),
        Some(true)
    );

    // A 20 MB bundle through a link that is cut every ~3 MB and flipped once: it arrives,
    // resumed rather than restarted, and installs.
    let bundle = signed_bundle(dev.path(), "svc", "1.0.0", &vendor, 20 << 20);
    let size = std::fs::metadata(&bundle).unwrap().len();
    let out = fleet.ok(&[
        "bundle",
        "publish",
        bundle.to_str().unwrap(),
        "--group",
        "lab",
    ]);
    assert!(out.contains("svc 1.0.0"), "{out}");
    proxy.set(Fault::FlipAt(3000));
    let before = proxy.connections.load(Ordering::Relaxed);
    dev.wait(SYNC, "a session through the bit flip", || {
        (proxy.connections.load(Ordering::Relaxed) > before).then_some(())
    });
    proxy.set(Fault::CutAfter(3 << 20));
    let cuts_from = proxy.connections.load(Ordering::Relaxed);
    dev.wait(
        Duration::from_secs(300),
        "svc 1.0.0 installed and running",
        || {
            dev.agents_json()
                .iter()
                .any(|a| a["name"] == "svc" && a["state"] == "running")
                .then_some(())
        },
    );
    let sessions = proxy.connections.load(Ordering::Relaxed) - cuts_from;
    let down = proxy.bytes_down.load(Ordering::Relaxed);
    assert!(
        sessions >= 7,
        "20 MiB through 3 MiB windows takes 7+ sessions, took {sessions}"
    );
    assert!(
        down < size + size / 2,
        "resumed, not restarted: {down} bytes downloaded for a {size}-byte bundle"
    );
    proxy.set(Fault::None);

    // A few more idle sessions: still exactly one application of version 2.
    let n = proxy.connections.load(Ordering::Relaxed);
    dev.wait(SYNC, "two more sessions", || {
        (proxy.connections.load(Ordering::Relaxed) >= n + 2).then_some(())
    });
    assert_eq!(policy_reloads(&dev).len(), 1, "{:#?}", policy_reloads(&dev));
    let st = dev.json(&["status"]);
    assert!(st["fleet"]["sessions_ok"].as_u64().unwrap() >= 3, "{st:#}");
    assert!(
        st["fleet"]["sessions_failed"].as_u64().unwrap() >= 7,
        "{st:#}"
    );
    assert!(
        st["fleet"]["bytes_today"].as_u64().unwrap() > size,
        "{st:#}"
    );
    drop(dev);
    fleet.kill();
}
