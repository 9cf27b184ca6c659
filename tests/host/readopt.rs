//! `kill -9` of the supervisor leaves agents running inside their limits; the next supervisor
//! re-adopts them (no duplicates), keeps enforcing their budgets, and SIGTERM stops everything.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

use nanoclaw_tests::{Device, LONG, alive, cmdline};

const MIB: u64 = 1 << 20;

fn pid_of(a: &Value) -> i32 {
    a["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {a}")) as i32
}

#[test]
fn kill9_leaves_agents_running_and_a_new_daemon_readopts_them() {
    let mut dev = Device::new();
    dev.add_demo_agent("sensor");
    // Hogs memory only once the test creates /go in its rootfs: after the re-adoption.
    let hog = json!({
        "name": "hog", "version": "1.0.0", "mode": "service",
        "exec": ["/bin/demo-agent", "wait-file", "/go", "memhog", "2"],
        "requests": { "memory": "32MiB", "pids": 8, "scratch": "1MiB" },
        "restart": { "policy": "on-failure", "max_per_hour": 3 },
    });
    dev.add_agent("hog", hog, Some(nanoclaw_tests::grant("32MiB")));
    dev.start();

    let names = ["sensor", "hog"];
    let mut pids = BTreeMap::new();
    let mut procs = BTreeMap::new();
    for n in names {
        let pid = pid_of(&dev.wait_state(n, "running"));
        // The init and the agent it forked.
        let p = dev.wait(LONG, &format!("{n}'s agent process"), || {
            let p = dev.procs(n);
            (p.len() == 2).then_some(p)
        });
        assert!(p.contains(&pid), "{p:?} lacks init {pid}");
        pids.insert(n, pid);
        procs.insert(n, p);
    }

    dev.kill9();
    for n in names {
        for &p in &procs[n] {
            assert!(alive(p), "{n}: pid {p} died with the supervisor");
        }
        assert_eq!(dev.procs(n), procs[n], "{n}: its cgroup changed");
    }

    // A new supervisor takes them over.
    dev.start();
    let adopted = dev.wait(LONG, "two adopt records", || {
        let a = dev.audit_of("adopt");
        (a.len() == 2).then_some(a)
    });
    let adopt_seq = adopted
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0);
    for n in names {
        assert!(
            adopted.iter().any(|r| r["agent"] == n
                && r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("pid {}", pids[n]))),
            "{n} not adopted: {adopted:?}"
        );
        let a = dev.agent(n);
        assert_eq!(a["state"], "running", "{a}");
        assert_eq!(pid_of(&a), pids[n], "{n} has a new pid: {a}");
        // No second copy was started: same processes, one init.
        assert_eq!(
            dev.procs(n),
            procs[n],
            "{n}: processes changed on re-adoption"
        );
        let inits = dev
            .procs(n)
            .into_iter()
            .filter(|&p| cmdline(p).first().is_some_and(|a| a == "nanoclaw-init"))
            .count();
        assert_eq!(inits, 1, "{n}: {inits} sandbox inits");
        let pids_max =
            std::fs::read_to_string(dev.cgroup_file("pids", n, "pids.max")).expect("pids.max");
        assert_eq!(pids_max.trim(), "8", "{n}");
    }
    assert!(
        dev.audit_of("start")
            .iter()
            .all(|r| r["seq"].as_u64() < Some(adopt_seq)),
        "the new supervisor started an agent instead of adopting it"
    );
    let status = dev.json(&["status"]);
    for e in status["enforcement"].as_array().expect("enforcement") {
        assert_eq!(e["adopted"], true, "{e}");
    }
    // Budgets still hold: the kernel limits are in place...
    assert_eq!(dev.memory_limit("sensor"), 16 * MIB);
    assert_eq!(dev.memory_limit("hog"), 32 * MIB);

    // ...and enforced: the adopted hog is OOM-killed, noticed and restarted by the new
    // supervisor, and the instance it starts is OOM-killed too.
    std::fs::write(dev.bundle("hog").join("rootfs/go"), b"go").expect("creating /go");
    let ooms = dev.wait(LONG, "two OOM kills of hog after the re-adoption", || {
        let o: Vec<Value> = dev
            .audit_of("oom_kill")
            .into_iter()
            .filter(|r| r["agent"] == "hog" && r["seq"].as_u64() > Some(adopt_seq))
            .collect();
        (o.len() >= 2).then_some(o)
    });
    for r in &ooms {
        assert!(
            r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("memory limit {} bytes", 32 * MIB)),
            "{r}"
        );
    }
    let a = dev.agent("hog");
    assert!(a["restarts"].as_u64() >= Some(1), "{a}");
    assert!(!alive(pids["hog"]), "the adopted hog survived its OOM kill");
    // The sensor was not disturbed.
    let s = dev.agent("sensor");
    assert_eq!(s["state"], "running");
    assert_eq!(pid_of(&s), pids["sensor"]);
    // The adopted sensor's output is captured again without a restart: the new supervisor
    // took the log pipe back from its sandbox init (pidfd_getfd).
    dev.wait(LONG, "output of the adopted sensor", || {
        dev.logs("sensor")
            .iter()
            .any(|l| l.starts_with("reading "))
            .then_some(())
    });
    // After an operator restart, output comes from the new instance.
    let readings = |dev: &Device| {
        dev.logs("sensor")
            .iter()
            .filter(|l| l.starts_with("reading 1: "))
            .count()
    };
    let first_run = readings(&dev);
    let out = dev.cli(&["restart", "sensor"]);
    assert_eq!(out.code, 0, "{out:?}");
    let s = dev.wait_state("sensor", "running");
    assert_ne!(pid_of(&s), pids["sensor"]);
    assert!(
        !alive(pids["sensor"]),
        "the adopted sensor survived its restart"
    );
    dev.wait(LONG, "the restarted sensor's first reading", || {
        (readings(&dev) > first_run).then_some(())
    });
    procs.insert("sensor", dev.procs("sensor"));

    // SIGTERM stops everything and exits 0, leaving no process in the subtree.
    let status = dev.sigterm();
    assert_eq!(status.code(), Some(0), "daemon exit: {status}");
    assert!(
        dev.subtree_procs().is_empty(),
        "left behind: {:?}",
        dev.subtree_procs()
    );
    for n in names {
        for &p in &procs[n] {
            assert!(!alive(p), "{n}: pid {p} outlived the supervisor's SIGTERM");
        }
        assert!(
            !dev.cgroup_file("memory", n, "").exists(),
            "{n}'s cgroup was not removed"
        );
    }
    let stopped = std::fs::read_to_string(dev.path().join("daemon-1.err")).unwrap_or_default();
    assert!(stopped.contains("[daemon_stop]"), "{stopped}");
}

#[test]
fn a_second_daemon_on_the_same_config_changes_nothing() {
    let mut dev = Device::new();
    for n in ["steady", "parked"] {
        dev.add_agent(
            n,
            nanoclaw_tests::manifest(n, "service", &["sleep"], "16MiB"),
            Some(nanoclaw_tests::grant("16MiB")),
        );
    }
    dev.add_agent(
        "once",
        nanoclaw_tests::manifest("once", "task", &["exit", "0"], "16MiB"),
        Some(nanoclaw_tests::grant("16MiB")),
    );
    dev.start();
    let pid = pid_of(&dev.wait_state("steady", "running"));
    dev.wait_state("parked", "running");
    dev.wait_state("once", "exited");
    assert_eq!(dev.cli(&["stop", "parked"]).code, 0);
    dev.wait_state("parked", "stopped");
    let steady = dev.procs("steady");

    let (code, stderr) = dev.run_second_daemon(LONG);
    assert_ne!(code, Some(0), "a second daemon ran: {stderr}");
    assert!(code.is_some(), "a second daemon kept running: {stderr}");
    assert!(stderr.contains("another nanoclaw daemon"), "{stderr}");

    // The first daemon's world is unchanged: nothing was started, stopped or taken over.
    assert!(
        dev.procs("parked").is_empty(),
        "the stopped agent runs again: {:?}",
        dev.procs("parked")
    );
    assert!(
        dev.procs("once").is_empty(),
        "the finished task runs again: {:?}",
        dev.procs("once")
    );
    assert_eq!(dev.procs("steady"), steady);
    let a = dev.agent("steady");
    assert_eq!(pid_of(&a), pid);
    assert_eq!(dev.agent("parked")["state"], "stopped");
    assert_eq!(dev.agent("once")["state"], "exited");
    assert!(
        dev.audit_of("adopt").is_empty(),
        "{:?}",
        dev.audit_of("adopt")
    );
}

/// A crash-looping agent stays `failed` until an operator starts it; a supervisor restart must
/// not hand it a fresh `max_per_hour` budget (else a supervisor that is itself restarted, by
/// a watchdog or an upgrade, re-runs every crash loop from scratch).
#[test]

fn crash_loop_verdict_survives_a_supervisor_restart() {
    let mut dev = Device::new();
    let mut m = nanoclaw_tests::manifest("looper", "service", &["exit", "3"], "16MiB");
    m["restart"] = json!({ "policy": "on-failure", "max_per_hour": 2 });
    dev.add_agent("looper", m, Some(nanoclaw_tests::grant("16MiB")));
    dev.start();
    dev.wait_state("looper", "failed");
    dev.kill9();
    dev.start();
    let a = dev.agent("looper");
    assert_eq!(a["state"], "failed", "{a}");
    let starts = dev
        .audit_of("start")
        .into_iter()
        .filter(|r| r["agent"] == "looper")
        .count();
    assert_eq!(
        starts, 2,
        "the new supervisor started the crash-looping agent again"
    );
}

/// SIGUSR2 hands over (an upgrade of nanoclaw itself): the daemon exits 0, audits it, leaves
/// the agents running untouched, and the next daemon re-adopts the same processes.
#[test]
fn sigusr2_hands_agents_over_to_the_next_daemon() {
    let mut dev = Device::new();
    dev.add_demo_agent("sensor");
    dev.start();
    let pid = pid_of(&dev.wait_state("sensor", "running"));
    let procs = dev.wait(LONG, "sensor's agent process", || {
        let p = dev.procs("sensor");
        (p.len() == 2).then_some(p)
    });
    let status = dev.signal_exit(rustix::process::Signal::USR2);
    assert!(status.success(), "{status}");
    for &p in &procs {
        assert!(alive(p), "pid {p} died with the hand-over");
    }
    assert_eq!(dev.procs("sensor"), procs, "its cgroup changed");
    dev.start();
    dev.wait(LONG, "the adoption", || {
        (dev.audit_of("adopt").len() == 1).then_some(())
    });
    let a = dev.agent("sensor");
    assert_eq!(
        (a["state"].as_str(), pid_of(&a)),
        (Some("running"), pid),
        "{a}"
    );
    assert_eq!(
        dev.procs("sensor"),
        procs,
        "processes changed on re-adoption"
    );
    let stops = dev.audit_of("daemon_stop");
    assert!(
        stops.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("1 agent(s) left running")),
        "{stops:?}"
    );
    assert!(dev.audit_of("stop").is_empty(), "no agent was stopped");
}
