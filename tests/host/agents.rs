//! The example agents of `configs/demo`, with their shipped manifests and grants, each meet the
//! fate the demo promises: sensor runs, memhog is OOM-killed and crash-loops, forkbomb is held
//! at `pids.max`, escape is contained.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use nanoclaw_tests::{Device, LONG, number_after, read_procs};

const MIB: u64 = 1 << 20;

#[test]
fn sensor_runs_and_logs_readings() {
    let mut dev = Device::new();
    dev.add_demo_agent("sensor").start();
    let a = dev.wait_state("sensor", "running");
    let pid = a["pid"].as_i64().expect("a running agent has a pid");
    assert_eq!(a["version"], "1.4.0");
    assert_eq!(a["memory_limit_bytes"], 16 * MIB);
    let lines = dev.wait(LONG, "two sensor readings", || {
        let l = dev.logs("sensor");
        (l.iter().filter(|l| l.starts_with("reading ")).count() >= 2).then_some(l)
    });
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("reading 1: ") && l.ends_with(" C")),
        "{lines:?}"
    );
    // The kernel holds it to its budget.
    assert_eq!(dev.memory_limit("sensor"), 16 * MIB);
    let pids_max =
        std::fs::read_to_string(dev.cgroup_file("pids", "sensor", "pids.max")).expect("pids.max");
    assert_eq!(pids_max.trim(), "8");
    let procs = dev.procs("sensor");
    assert!(procs.contains(&(pid as i32)), "{procs:?} lacks init {pid}");
    // Still the same instance: nothing restarted it.
    let a = dev.agent("sensor");
    assert_eq!(a["pid"], pid);
    assert_eq!(a["restarts"], 0);
    assert_eq!(a["state"], "running");
}

#[test]
fn memhog_is_oom_killed_restarted_then_fails_in_a_crash_loop() {
    let mut dev = Device::new();
    dev.add_demo_agent("memhog").start();
    let a = dev.wait(LONG, "memhog to fail in a crash loop", || {
        let a = dev.agent("memhog");
        (a["state"] == "failed").then_some(a)
    });
    let audit: Vec<_> = dev
        .audit_json()
        .into_iter()
        .filter(|r| r["agent"] == "memhog")
        .collect();
    let of = |kind: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // Every instance was killed by the kernel OOM killer at its limit, never above it.
    let ooms = of("oom_kill");
    assert!(!ooms.is_empty(), "no oom_kill record: {audit:#?}");
    for r in &ooms {
        let limit = number_after(r, "memory limit ").expect("limit in the oom_kill reason");
        let peak = number_after(r, "peak ").expect("peak in the oom_kill reason");
        assert_eq!(limit, 32 * MIB, "{r}");
        assert!(peak <= limit, "peak above the limit: {r}");
    }
    let exits = of("exit");
    assert!(
        exits.iter().all(|e| e.contains("OOM")),
        "an exit that is not an OOM kill: {exits:?}"
    );
    // Restarted with new processes, max_per_hour (5) starts in all.
    let starts = of("start");
    assert_eq!(starts.len(), 5, "{starts:?}");
    let pids: BTreeSet<u64> = starts
        .iter()
        .filter_map(|s| number_after(s, " pid "))
        .collect();
    assert_eq!(pids.len(), 5, "every restart is a new process: {starts:?}");
    assert!(!of("restart").is_empty());
    assert_eq!(a["restarts"], 4, "{a}");
    assert!(
        a["last_exit"].as_str().unwrap_or_default().contains("OOM"),
        "{a}"
    );
    assert_eq!(a["pid"], serde_json::Value::Null);
    // A crash-loop record, and `why` explains it.
    assert_eq!(of("crash_loop").len(), 1, "{audit:#?}");
    let why = dev.json(&["why", "memhog"]);
    assert_eq!(why["state"], "failed");
    let reason = why["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("crash loop") && reason.contains("max_per_hour"),
        "{why}"
    );
    let human = dev.cli(&["why", "memhog"]);
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("crash loop"), "{human:?}");
    // A failed agent's cgroup is gone: nothing of it is left running.
    assert!(dev.procs("memhog").is_empty());
}

#[test]
fn forkbomb_never_exceeds_pids_max() {
    let mut dev = Device::new();
    dev.add_demo_agent("forkbomb").start();
    let procs_file = dev.cgroup_file("pids", "forkbomb", "cgroup.procs");
    let current_file = dev.cgroup_file("pids", "forkbomb", "pids.current");
    let max_file = dev.cgroup_file("pids", "forkbomb", "pids.max");
    let max: usize = dev.wait(LONG, "forkbomb's pids.max", || {
        std::fs::read_to_string(&max_file).ok()?.trim().parse().ok()
    });
    assert_eq!(max, 16, "the policy grants forkbomb 16 pids");
    // Sample the cgroup while the bomb goes off, until it reports that it gave up.
    let (mut most_procs, mut most_current, mut samples) = (0usize, 0usize, 0u32);
    let lines = dev.wait(LONG, "forkbomb to give up", || {
        for _ in 0..20 {
            let procs = read_procs(&procs_file).len();
            let current: usize = std::fs::read_to_string(&current_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            assert!(
                procs <= max,
                "{procs} processes in a cgroup with pids.max {max}"
            );
            assert!(current <= max, "pids.current {current} > pids.max {max}");
            most_procs = most_procs.max(procs);
            most_current = most_current.max(current);
            samples += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        let l = dev.logs("forkbomb");
        l.iter().any(|l| l.contains("gave up")).then_some(l)
    });
    // Keep sampling a little after it gave up: it holds its children.
    for _ in 0..50 {
        let procs = read_procs(&procs_file).len();
        assert!(
            procs <= max,
            "{procs} processes in a cgroup with pids.max {max}"
        );
        most_procs = most_procs.max(procs);
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "forkbomb: {samples} samples, at most {most_procs} procs, pids.current {most_current}"
    );
    // It really pushed against the limit (init + agent + children), and the kernel said no.
    assert!(
        most_procs >= max - 2,
        "the bomb never got near the limit: {most_procs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("the kernel refused child")),
        "{lines:?}"
    );
    let a = dev.agent("forkbomb");
    assert_eq!(a["state"], "running", "{a}");
}

#[test]
fn escape_is_contained_and_exits_0() {
    let mut dev = Device::new();
    dev.add_demo_agent("escape").start();
    let a = dev.wait_state("escape", "exited");
    assert_eq!(a["last_exit"], "exit code 0", "{a}");
    let lines = dev.logs("escape");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("every attempt was contained")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("SUCCEEDED")),
        "something got out: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("write /tmp/scratch-ok (own scratch): Ok(())")),
        "the agent's own scratch must be writable: {lines:?}"
    );
    // Its attempts left nothing in the bundle on the host.
    let rootfs = dev.bundle("escape").join("rootfs");
    for p in ["bin/pwned", "etc-pwned", "dev/pwned", "tmp/scratch-ok"] {
        assert!(!rootfs.join(p).exists(), "{p} was created on the host");
    }
}
