//! The sandbox as seen from inside (the `probe` role), scratch wiping, and seccomp profiles.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use nanoclaw_tests::{Device, grant, manifest};

/// The `PROBE {...}` line an agent printed.
fn probe_of(dev: &Device, name: &str) -> Value {
    let lines = dev.wait_log(name, "PROBE ");
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("PROBE "))
        .expect("a PROBE line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("probe output {line:?}: {e}"))
}

/// First field of a `/proc/self/status` id line ("70000\t70000\t70000\t70000").
fn first_id(v: &Value) -> u32 {
    v.as_str()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an id line: {v}"))
}

#[test]
fn probe_sees_a_locked_down_sandbox() {
    let mut dev = Device::new();
    let args = [
        "probe",
        "/etc/shadow",
        "/proc/1/root/etc/shadow",
        "/sys/fs/cgroup",
        "write:/probe-root",
        "write:/bin/probe-bin",
        "write:/tmp/probe-tmp",
    ];
    // Two agents, so the uid really is uid_base + slot (slots follow install order).
    for name in ["probe-a", "probe-b"] {
        dev.add_agent(
            name,
            manifest(name, "task", &args, "16MiB"),
            Some(grant("16MiB")),
        );
    }
    dev.start();
    let status = dev.json(&["status"]);
    for (slot, name) in ["probe-a", "probe-b"].into_iter().enumerate() {
        let a = dev.wait_state(name, "exited");
        assert_eq!(a["last_exit"], "exit code 0", "{a}");
        let p = probe_of(&dev, name);
        eprintln!("{name}: {p}");
        let uid = dev.uid_base + slot as u32;
        for f in ["uid", "gid"] {
            assert_eq!(first_id(&p[f]), uid, "{name} {f}: {p}");
            // Real, effective, saved and filesystem ids all dropped.
            let all: Vec<&str> = p[f]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            assert!(all.iter().all(|id| *id == uid.to_string()), "{f}: {all:?}");
        }
        let enforced = status["enforcement"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["agent"] == name))
            .unwrap_or_else(|| panic!("status lists no {name}: {status}"));
        assert_eq!(enforced["uid"], uid, "{enforced}");
        for cap in ["capeff", "capprm", "capbnd", "capamb"] {
            assert_eq!(p[cap], "0000000000000000", "{name} {cap}: {p}");
        }
        assert_eq!(p["nonewprivs"], "1", "{p}");
        assert_eq!(p["seccomp"], "2", "seccomp mode 2 = filter: {p}");
        assert_eq!(p["hostname"], name, "{p}");
        assert_eq!(
            p["root"],
            json!(["bin", "dev", "proc", "run", "tmp"]),
            "{p}"
        );
        // Its own PID namespace: the init and the probe, nothing of the host.
        let pids: u32 = p["proc_pids"].as_str().map_or_else(
            || p["proc_pids"].as_u64().unwrap_or(99) as u32,
            |s| s.parse().unwrap_or(99),
        );
        assert!(pids <= 3, "{pids} processes visible in /proc: {p}");
        assert!(p["pid"].as_u64().unwrap_or(99) <= 3, "{p}");
        let dev_nodes: Vec<&str> = p["dev"]
            .as_array()
            .expect("dev list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for n in ["null", "zero", "urandom"] {
            assert!(dev_nodes.contains(&n), "/dev lacks {n}: {dev_nodes:?}");
        }
        for n in ["mem", "kmsg", "sda", "vda", "port", "kvm"] {
            assert!(
                !dev_nodes.contains(&n),
                "/dev has host node {n}: {dev_nodes:?}"
            );
        }
        let c = &p["checks"];
        for unreachable in ["/etc/shadow", "/proc/1/root/etc/shadow", "/sys/fs/cgroup"] {
            assert_ne!(c[unreachable], "ok", "{unreachable} is reachable: {p}");
        }
        for ro in ["write:/probe-root", "write:/bin/probe-bin"] {
            let e = c[ro].as_str().unwrap_or_default();
            assert!(e.contains("Read-only file system"), "{ro}: {e}");
        }
        assert_eq!(c["write:/tmp/probe-tmp"], "ok", "{p}");
        let rootfs = dev.bundle(name).join("rootfs");
        assert!(!rootfs.join("probe-root").exists());
        assert!(!rootfs.join("bin/probe-bin").exists());
        assert!(
            !rootfs.join("tmp/probe-tmp").exists(),
            "scratch leaked to the host"
        );
    }
}

#[test]
fn scratch_is_empty_after_a_restart() {
    let mut dev = Device::new();
    dev.add_agent(
        "scratchy",
        manifest("scratchy", "service", &["scratch"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    let lines = dev.wait_log("scratchy", "scratch: after:");
    let before: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("scratch: before:"))
        .collect();
    assert_eq!(before, ["scratch: before: []"], "{lines:?}");
    assert!(
        lines.contains(&"scratch: after: [marker]".to_owned()),
        "the agent could not write its scratch: {lines:?}"
    );
    let pid = dev.agent("scratchy")["pid"].clone();
    let out = dev.cli(&["restart", "scratchy"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines = dev.wait(nanoclaw_tests::LONG, "the second run's listing", || {
        let l = dev.logs("scratchy");
        (l.iter()
            .filter(|l| l.starts_with("scratch: after:"))
            .count()
            >= 2)
            .then_some(l)
    });
    let before: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("scratch: before:"))
        .collect();
    assert_eq!(
        before,
        ["scratch: before: []", "scratch: before: []"],
        "the second run saw the first run's scratch: {lines:?}"
    );
    let a = dev.agent("scratchy");
    assert_eq!(a["state"], "running");
    assert_ne!(a["pid"], pid, "restart must start a new instance");
}

#[test]
fn seccomp_default_denies_mount_and_strict_kills_on_socket() {
    let mut dev = Device::new();
    dev.add_agent(
        "mounter",
        manifest("mounter", "task", &["try-mount"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.add_agent(
        "sock-default",
        manifest("sock-default", "task", &["syscall-socket"], "16MiB"),
        Some(grant("16MiB")),
    );
    let mut strict = manifest("sock-strict", "task", &["syscall-socket"], "16MiB");
    strict["requests"]["syscalls"] = json!("strict");
    let mut strict_grant = grant("16MiB");
    strict_grant["syscalls"] = json!("strict");
    dev.add_agent("sock-strict", strict, Some(strict_grant));
    dev.start();

    // default: mount(2) is refused by the filter (EPERM before the kernel looks at the path,
    // which does not exist: without the filter the answer would be ENOENT).
    let a = dev.wait_state("mounter", "exited");
    assert_eq!(a["last_exit"], "exit code 0");
    let lines = dev.logs("mounter");
    assert!(
        lines.iter().any(|l| l.contains("failed with errno 1 ")),
        "mount() did not fail with EPERM: {lines:?}"
    );

    // default: an AF_UNIX socket is fine (the control for the strict case below).
    let a = dev.wait_state("sock-default", "exited");
    assert_eq!(a["last_exit"], "exit code 0");
    let lines = dev.logs("sock-default");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("socket() returned a descriptor")),
        "{lines:?}"
    );

    // strict: socket(2) kills the process with SIGSYS (31).
    let a = dev.wait_state("sock-strict", "failed");
    assert_eq!(a["last_exit"], "killed by signal 31", "{a}");
    let lines = dev.logs("sock-strict");
    assert!(
        lines.iter().any(|l| l.contains("calling socket")),
        "the agent died before reaching socket(): {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("socket() returned") || l.contains("socket() failed")),
        "socket() returned under strict: {lines:?}"
    );
    let exits: Vec<Value> = dev
        .audit_of("exit")
        .into_iter()
        .filter(|r| r["agent"] == "sock-strict")
        .collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["reason"], "killed by signal 31");
    let started = dev
        .audit_of("start")
        .into_iter()
        .find(|r| r["agent"] == "sock-strict")
        .expect("a start record");
    assert!(
        started["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("seccomp strict"),
        "{started}"
    );
}

/// A device the policy grants (and the manifest requests) by path appears in the agent's
/// `/dev`; one it does not request stays absent.
#[test]
fn granted_device_is_bound_into_dev() {
    let mut dev = Device::new();
    let mut m = manifest("with-tty", "task", &["probe", "/dev/tty"], "16MiB");
    m["requests"]["devices"] = serde_json::json!(["/dev/tty"]);
    let mut g = grant("16MiB");
    g["devices"] = serde_json::json!(["/dev/tty"]);
    dev.add_agent("with-tty", m, Some(g));
    dev.add_agent(
        "without-tty",
        manifest("without-tty", "task", &["probe", "/dev/tty"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait_state("with-tty", "exited");
    dev.wait_state("without-tty", "exited");
    let with = probe_of(&dev, "with-tty");
    let without = probe_of(&dev, "without-tty");
    assert!(
        with["dev"].as_array().unwrap().iter().any(|d| d == "tty"),
        "{with}"
    );
    assert_eq!(with["checks"]["/dev/tty"], "ok", "{with}");
    assert!(
        !without["dev"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "tty"),
        "{without}"
    );
    assert_ne!(without["checks"]["/dev/tty"], "ok", "{without}");
}

/// A program copied into the scratch cannot be executed (noexec tmpfs, Landlock without
/// execute rights on writable places).
#[test]
fn programs_smuggled_into_scratch_do_not_run() {
    let mut dev = Device::new();
    dev.add_agent(
        "smuggler",
        manifest("smuggler", "task", &["exec-scratch"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait_state("smuggler", "exited");
    let logs = dev.logs("smuggler");
    assert!(
        logs.iter()
            .any(|l| l.starts_with("exec-scratch: denied") && l.contains("Permission denied")),
        "{logs:?}"
    );
}

/// Hostile acts the fallback chain refuses on every kernel: raw sockets (no CAP_NET_RAW),
/// mounting (seccomp), ptrace of a sibling (seccomp), a binary smuggled into the scratch
/// (noexec), a fileless exec from a memfd (seccomp: no memfd_create without BPF LSM), host
/// files through /proc/1/root. The start record names the fallback that holds the agent.
#[test]
fn hostile_acts_are_refused() {
    let mut dev = Device::new();
    dev.add_agent(
        "hostile",
        manifest("hostile", "task", &["hostile"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    dev.wait_state("hostile", "exited");
    let logs = dev.logs("hostile");
    for act in [
        "raw-socket",
        "mount-tmpfs",
        "ptrace-sibling",
        "scratch-exec",
        "memfd-exec",
        "proc-root-host-file",
    ] {
        let line = logs
            .iter()
            .find(|l| l.starts_with(&format!("hostile {act}: ")))
            .unwrap_or_else(|| panic!("no result for {act}: {logs:?}"));
        assert!(line.contains(": denied ("), "{line}");
    }
    // This kernel refuses BPF LSM (EPERM): status and the start record say what holds it.
    let status = dev.json(&["status"]);
    let lsm = status["posture"]["lsm"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(lsm.starts_with("unavailable: "), "posture lsm: {lsm}");
    let starts = dev.audit_of("start");
    assert!(
        starts.iter().any(|r| r["kind"] == "start"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("lsm landlock+seccomp (bpf-lsm unavailable: "))),
        "{starts:?}"
    );
}
