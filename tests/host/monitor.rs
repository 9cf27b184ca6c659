//! Syscall monitoring on the real kernel: the eBPF tracepoint counts an agent's syscalls, the
//! daemon learns a baseline, and a syscall outside it raises a `syscall_anomaly` audit record.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nanoclaw_tests::{Device, grant, manifest};
use serde_json::json;

#[test]
fn a_syscall_outside_the_learned_baseline_is_reported() {
    let mut dev = Device::new();
    dev.device["syscall_baseline_s"] = json!(1);
    // Waits quietly (the baseline: sleeping and polling for /go), then opens a socket and
    // connects: syscalls it never made while the baseline was learned.
    dev.add_agent(
        "quiet",
        manifest(
            "quiet",
            "service",
            &["wait-file", "/go", "connect", "--stay", "127.0.0.1:1"],
            "16MiB",
        ),
        Some(grant("16MiB")),
    );
    dev.start();
    let status = dev.json(&["status"]);
    let posture = status["posture"]["syscall_monitor"]
        .as_str()
        .unwrap_or_default();
    assert!(posture.starts_with("bpf tracepoint"), "{status}");
    dev.wait(Duration::from_secs(20), "the learned baseline", || {
        dev.audit_of("posture").into_iter().find(|r| {
            r["agent"] == "quiet"
                && r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("learned the syscall baseline")
        })
    });
    assert!(
        dev.audit_of("syscall_anomaly").is_empty(),
        "anomalies while only waiting: {:?}",
        dev.audit_of("syscall_anomaly")
    );
    std::fs::write(dev.bundle("quiet").join("rootfs/go"), b"go").unwrap();
    let found = dev.wait(Duration::from_secs(20), "a syscall_anomaly record", || {
        let a: Vec<_> = dev
            .audit_of("syscall_anomaly")
            .into_iter()
            .filter(|r| r["agent"] == "quiet")
            .collect();
        (!a.is_empty()).then_some(a)
    });
    let reasons: Vec<&str> = found.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("syscall socket") || r.contains("syscall connect")),
        "{reasons:?}"
    );
    let why = dev.cli(&["why", "quiet"]);
    assert!(why.stdout.contains("syscall_anomaly"), "{why:?}");
}

/// A syscall storm: the agent makes only syscalls it made while learning, but one of them
/// thousands of times faster; the rate rule reports it.
#[test]
fn a_syscall_storm_trips_the_rate_rule() {
    let mut dev = Device::new();
    dev.device["syscall_baseline_s"] = json!(3);
    dev.add_agent(
        "stormy",
        manifest(
            "stormy",
            "service",
            &["wait-file", "/go", "stat-storm", "300000"],
            "16MiB",
        ),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait(Duration::from_secs(20), "the learned baseline", || {
        dev.audit_of("posture").into_iter().find(|r| {
            r["agent"] == "stormy"
                && r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("learned the syscall baseline")
        })
    });
    std::fs::write(dev.bundle("stormy").join("rootfs/go"), b"go").unwrap();
    dev.wait_log("stormy", "stat-storm: 300000 stats");
    let found = dev.wait(Duration::from_secs(20), "a rate anomaly", || {
        dev.audit_of("syscall_anomaly").into_iter().find(|r| {
            r["agent"] == "stormy" && r["reason"].as_str().unwrap_or_default().contains("jumped")
        })
    });
    let reason = found["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stat"), "{reason}");
}

/// A bundle that states its syscall profile is judged against it from the first second: no
/// learning, and a syscall outside it is reported at once.
#[test]
fn an_explicit_profile_in_the_manifest_replaces_learning() {
    let mut dev = Device::new();
    let mut m = manifest(
        "declared",
        "service",
        &["connect", "--stay", "127.0.0.1:1"],
        "16MiB",
    );
    m["syscall_profile"] = json!({ "read": 0, "write": 0, "clock_nanosleep": 10, "nanosleep": 10 });
    dev.add_agent("declared", m, Some(grant("16MiB")));
    dev.start();
    let posture = dev.wait(Duration::from_secs(10), "the stated baseline", || {
        dev.audit_of("posture")
            .into_iter()
            .find(|r| r["agent"] == "declared")
    });
    assert!(
        posture["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("syscall baseline from the manifest's syscall_profile: 4 syscalls"),
        "{posture}"
    );
    let found = dev.wait(Duration::from_secs(20), "an anomaly", || {
        let a: Vec<_> = dev
            .audit_of("syscall_anomaly")
            .into_iter()
            .filter(|r| r["agent"] == "declared")
            .collect();
        (!a.is_empty()).then_some(a)
    });
    let reasons: Vec<&str> = found.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("syscall socket") || r.contains("syscall connect")),
        "{reasons:?}"
    );
    assert!(
        !dev.audit_of("posture")
            .iter()
            .any(|r| r["agent"] == "declared"
                && r["reason"].as_str().unwrap_or_default().contains("learned")),
        "nothing is learned for a declared profile"
    );
}
