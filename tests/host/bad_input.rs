//! Bad configuration, bad bundles, misbehaving agents and misbehaving control clients: each is
//! refused or contained with a message that names the problem, and nothing else is disturbed.

// Integration tests: helpers outside #[test] functions fail the test by panicking, like the
// tests themselves (clippy only exempts #[test] bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use nanoclaw_tests::{Device, LONG, alive, grant, manifest, run};

const CONFIG_EXIT: i32 = 6;

fn sleeper(dev: &mut Device, name: &str) {
    dev.add_agent(
        name,
        manifest(name, "service", &["sleep"], "16MiB"),
        Some(grant("16MiB")),
    );
}

fn reasons(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn malformed_device_config_exits_6_naming_the_file() {
    let mut dev = Device::new();
    dev.write_configs();
    std::fs::write(dev.config_path(), b"{ \"state_dir\": \"state\", ").expect("writing");
    let (code, stderr) = dev.run_expecting_exit(LONG);
    assert_eq!(code, Some(CONFIG_EXIT), "{stderr}");
    assert!(
        stderr.contains(&dev.config_path().display().to_string()),
        "the message does not name the file: {stderr}"
    );
}

#[test]
fn oversized_policy_exits_6_naming_the_file_and_limit() {
    let mut dev = Device::new();
    dev.write_configs();
    let mut policy = serde_json::to_vec(&dev.policy).expect("policy");
    policy.extend(std::iter::repeat_n(b' ', 1024 * 1024));
    std::fs::write(dev.policy_path(), policy).expect("writing");
    let (code, stderr) = dev.run_expecting_exit(LONG);
    assert_eq!(code, Some(CONFIG_EXIT), "{stderr}");
    assert!(
        stderr.contains(&dev.policy_path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("1048576-byte limit"), "{stderr}");
}

#[test]
fn memory_budgets_above_device_memory_exit_6_naming_the_numbers() {
    let mut dev = Device::new();
    dev.device["device_memory"] = json!("256MiB");
    sleeper(&mut dev, "big-a");
    dev.grant("big-a", grant("128MiB"));
    sleeper(&mut dev, "big-b");
    dev.grant("big-b", grant("100MiB"));
    dev.write_configs();
    let (code, stderr) = dev.run_expecting_exit(LONG);
    assert_eq!(code, Some(CONFIG_EXIT), "{stderr}");
    // 228 MiB granted, 256 - 64 (reserve) = 192 MiB available.
    for n in [228u64 << 20, 192 << 20] {
        assert!(
            stderr.contains(&n.to_string()),
            "the message does not name {n}: {stderr}"
        );
    }
    assert!(stderr.contains("memory_reserve"), "{stderr}");
}

#[test]
fn unknown_manifest_key_refuses_that_bundle_only() {
    let mut dev = Device::new();
    sleeper(&mut dev, "good");
    let mut typo = manifest("typo", "service", &["sleep"], "16MiB");
    typo["colour"] = json!("blue");
    dev.add_agent("typo", typo, Some(grant("16MiB")));
    dev.start();
    dev.wait_state("good", "running");
    let names: Vec<Value> = dev
        .agents_json()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, [json!("good")], "typo was installed");
    let r = reasons(&dev.audit_json());
    assert!(
        r.iter().any(|r| r.contains("colour")
            && r.contains("agents/typo")
            && r.contains("not installed")),
        "no audit record names the key and the bundle: {r:#?}"
    );
    assert_eq!(dev.cli(&["why", "typo"]).code, 4);
}

#[test]
fn request_above_grant_is_refused_naming_the_field() {
    let mut dev = Device::new();
    sleeper(&mut dev, "good");
    dev.add_agent(
        "greedy",
        manifest("greedy", "service", &["sleep"], "64MiB"),
        Some(grant("32MiB")),
    );
    dev.start();
    dev.wait_state("good", "running");
    let a = dev.wait_state("greedy", "failed");
    assert_eq!(a["pid"], Value::Null);
    let why = dev.json(&["why", "greedy"]);
    let text = why.to_string();
    assert!(text.contains("requests.memory"), "{why:#}");
    assert!(
        why["to_allow"]
            .as_str()
            .unwrap_or_default()
            .contains("agents.greedy"),
        "{why:#}"
    );
    let denied = dev.audit_of("admission_denied");
    assert!(
        reasons(&denied)
            .iter()
            .any(|r| r.contains("requests.memory")),
        "{denied:?}"
    );
    assert!(dev.procs("greedy").is_empty());
}

#[test]
fn missing_rootfs_or_exec_refuses_the_bundle_naming_it() {
    let mut dev = Device::new();
    sleeper(&mut dev, "good");
    // A bundle with a manifest and no rootfs/ at all.
    dev.write_manifest(
        "norootfs",
        &manifest("norootfs", "service", &["sleep"], "16MiB"),
    );
    dev.grant("norootfs", grant("16MiB"));
    // A bundle whose exec names a file the rootfs lacks.
    let mut m = manifest("noexec", "service", &["sleep"], "16MiB");
    m["exec"] = json!(["/bin/nope"]);
    dev.add_agent("noexec", m, Some(grant("16MiB")));
    // An exec that is not executable.
    dev.add_agent(
        "noperm",
        manifest("noperm", "service", &["sleep"], "16MiB"),
        Some(grant("16MiB")),
    );
    let bin = dev.bundle("noperm").join("rootfs/bin/demo-agent");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // Two bundles claiming one name: neither is trusted.
    for dir in ["twin-a", "twin-b"] {
        dev.add_agent(dir, manifest("twin", "service", &["sleep"], "16MiB"), None);
    }
    dev.grant("twin", grant("16MiB"));
    dev.start();
    dev.wait_state("good", "running");
    let r = reasons(&dev.audit_json());
    assert!(
        r.iter()
            .any(|r| r.contains("agents/norootfs") && r.contains("rootfs")),
        "{r:#?}"
    );
    assert!(
        r.iter()
            .any(|r| r.contains("agents/noexec") && r.contains("/bin/nope")),
        "{r:#?}"
    );
    assert!(
        r.iter()
            .any(|r| r.contains("agents/noperm") && r.contains("not an executable")),
        "{r:#?}"
    );
    for dir in ["twin-a", "twin-b"] {
        assert!(
            r.iter().any(|r| r.contains(&format!("agents/{dir}"))
                && r.contains("another bundle also declares agent twin")),
            "{r:#?}"
        );
    }
    let names: Vec<Value> = dev
        .agents_json()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, [json!("good")]);
}

#[test]
fn reload_revokes_and_restores_a_grant_live() {
    let mut dev = Device::new();
    sleeper(&mut dev, "steady");
    sleeper(&mut dev, "revoked");
    dev.start();
    let steady = dev.wait_state("steady", "running")["pid"].clone();
    let pid = dev.wait_state("revoked", "running")["pid"].clone();
    let procs = dev.procs("revoked");
    // Take the grant away: the running agent is stopped and `why` says why.
    let g = dev.policy["agents"]["revoked"].clone();
    dev.policy["agents"]
        .as_object_mut()
        .expect("agents")
        .remove("revoked");
    dev.policy["version"] = json!(2);
    dev.write_configs();
    let out = dev.cli(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(LONG, "revoked to stop", || {
        let a = dev.agent("revoked");
        (a["pid"].is_null() && a["state"] != "running").then_some(a)
    });
    for p in &procs {
        assert!(!alive(*p), "pid {p} survived the revocation");
    }
    let why = dev.json(&["why", "revoked"]);
    assert!(why.to_string().contains("not in the policy"), "{why:#}");
    assert_eq!(
        dev.cli(&["start", "revoked"]).code,
        1,
        "started without a grant"
    );
    assert!(dev.procs("revoked").is_empty());
    // Grant it again: it starts by itself.
    dev.grant("revoked", g);
    dev.policy["version"] = json!(3);
    dev.write_configs();
    assert_eq!(dev.cli(&["reload"]).code, 0);
    let a = dev.wait_state("revoked", "running");
    assert_ne!(a["pid"], pid);
    assert_eq!(
        dev.agent("steady")["pid"],
        steady,
        "an unrelated agent was restarted"
    );
    assert_eq!(dev.json(&["status"])["policy_version"], 3);
}

#[test]
fn agent_exiting_3_restarts_then_fails_in_a_crash_loop() {
    let mut dev = Device::new();
    let mut m = manifest("exit3", "service", &["exit", "3"], "16MiB");
    m["restart"] = json!({ "policy": "on-failure", "max_per_hour": 3 });
    dev.add_agent("exit3", m, Some(grant("16MiB")));
    dev.start();
    let a = dev.wait_state("exit3", "failed");
    assert_eq!(a["restarts"], 2, "{a}");
    assert_eq!(a["last_exit"], "exit code 3", "{a}");
    let audit: Vec<Value> = dev
        .audit_json()
        .into_iter()
        .filter(|r| r["agent"] == "exit3")
        .collect();
    let count = |k: &str| audit.iter().filter(|r| r["kind"] == k).count();
    assert_eq!(count("start"), 3, "{audit:#?}");
    assert_eq!(count("exit"), 3, "{audit:#?}");
    assert_eq!(count("crash_loop"), 1, "{audit:#?}");
    let why = dev.json(&["why", "exit3"]);
    assert!(
        why["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("crash loop"),
        "{why:#}"
    );
    // An operator's start clears the history and runs it again.
    let out = dev.cli(&["start", "exit3"]);
    assert_ne!(out.code, 4, "{out:?}");
    dev.wait(LONG, "a fourth start after the operator's start", || {
        let n = dev
            .audit_of("start")
            .iter()
            .filter(|r| r["agent"] == "exit3")
            .count();
        (n >= 4).then_some(())
    });
}

#[test]
fn agent_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut dev = Device::new();
    let mut m = manifest("stubborn", "service", &["ignore-term"], "16MiB");
    m["stop_grace_s"] = json!(1);
    dev.add_agent("stubborn", m, Some(grant("16MiB")));
    dev.start();
    dev.wait_log("stubborn", "SIGTERM ignored");
    let procs = dev.procs("stubborn");
    assert_eq!(procs.len(), 2, "{procs:?}");
    let out = dev.cli(&["stop", "stubborn"]);
    assert_eq!(out.code, 0, "{out:?}");
    let a = dev.wait_state("stubborn", "stopped");
    assert_eq!(a["pid"], Value::Null);
    let audit: Vec<Value> = dev
        .audit_json()
        .into_iter()
        .filter(|r| r["agent"] == "stubborn")
        .collect();
    let seq_of = |k: &str| {
        audit
            .iter()
            .find(|r| r["kind"] == k)
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {k} record: {audit:#?}"))
    };
    assert!(seq_of("stop") < seq_of("stop_timeout"));
    let timeout = audit
        .iter()
        .find(|r| r["kind"] == "stop_timeout")
        .expect("stop_timeout");
    assert!(
        timeout["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("1 s"),
        "{timeout}"
    );
    for p in procs {
        assert!(!alive(p), "pid {p} survived the stop");
    }
}

#[test]
fn reload_with_a_broken_policy_keeps_the_old_one() {
    let mut dev = Device::new();
    sleeper(&mut dev, "steady");
    dev.start();
    let pid = dev.wait_state("steady", "running")["pid"].clone();
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("syntax", b"{ \"version\": 2, ".to_vec(), "policy.json"),
        (
            "unknown key",
            serde_json::to_vec(&json!({
                "version": 2, "signers": [], "device": {},
                "agents": { "steady": { "memroy": "16MiB", "memory": "16MiB" } }
            }))
            .expect("json"),
            "memroy",
        ),
    ];
    for (what, bytes, named) in cases {
        std::fs::write(dev.policy_path(), bytes).expect("writing the policy");
        let out = dev.cli(&["reload"]);
        assert_ne!(
            out.code, 0,
            "{what}: reload accepted a broken policy: {out:?}"
        );
        assert!(out.stderr.contains(named), "{what}: {out:?}");
        assert!(
            out.stderr.contains("keeping policy version 1"),
            "{what}: {out:?}"
        );
        let status = dev.json(&["status"]);
        assert_eq!(status["policy_version"], 1, "{what}");
        let a = dev.agent("steady");
        assert_eq!(a["state"], "running", "{what}: {a}");
        assert_eq!(a["pid"], pid, "{what}: {a}");
    }
    assert_eq!(dev.audit_of("policy_rejected").len(), 2);
    // A good policy is taken.
    dev.policy["version"] = json!(2);
    dev.write_configs();
    let out = dev.cli(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(dev.json(&["status"])["policy_version"], 2);
    assert_eq!(dev.agent("steady")["pid"], pid);
    // SIGHUP reloads too.
    dev.policy["version"] = json!(3);
    dev.write_configs();
    let daemon = rustix::process::Pid::from_raw(dev.daemon_pid().expect("daemon")).expect("pid");
    rustix::process::kill_process(daemon, rustix::process::Signal::HUP).expect("SIGHUP");
    dev.wait(LONG, "policy version 3 after SIGHUP", || {
        (dev.json(&["status"])["policy_version"] == 3).then_some(())
    });
    assert_eq!(dev.agent("steady")["pid"], pid);
}

#[test]
fn client_that_disconnects_mid_request_does_not_wedge_the_daemon() {
    let mut dev = Device::new();
    dev.start();
    // Half a line, then close.
    {
        let mut s = UnixStream::connect(dev.socket()).expect("connect");
        s.write_all(b"{\"cmd\":\"sta").expect("write");
    }
    assert_eq!(dev.cli(&["status"]).code, 0);
    // Half a line, then stay connected: others are still served meanwhile.
    let mut idle = UnixStream::connect(dev.socket()).expect("connect");
    idle.write_all(b"{\"cmd\":").expect("write");
    let out = dev.cli(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Connect and close without a byte.
    drop(UnixStream::connect(dev.socket()).expect("connect"));
    // A garbage line gets an error answer, not a hang.
    let mut s = UnixStream::connect(dev.socket()).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    s.write_all(b"this is not json\n").expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("an answer");
    let v: Value = serde_json::from_str(&line).expect("a JSON answer");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    // An over-long line too.
    let mut s = UnixStream::connect(dev.socket()).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    let long = format!("{{\"cmd\":\"why\",\"agent\":\"{}\"}}\n", "a".repeat(8192));
    let _ = s.write_all(long.as_bytes());
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("an answer");
    let v: Value = serde_json::from_str(&line).expect("a JSON answer");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    drop(idle);
    assert_eq!(dev.cli(&["agents"]).code, 0);
}

#[test]
fn non_root_clients_are_refused_even_with_a_world_writable_socket() {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("setpriv (util-linux) is needed for this test: apt-get install util-linux");
    let mut dev = Device::new();
    dev.start();
    // Let uid 65534 reach the socket's directory; the socket itself stays 0600.
    std::fs::set_permissions(dev.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mode = std::fs::metadata(dev.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket is {mode:o}");
    let as_nobody = || {
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&nanoclaw_tests::bins().nanoclaw)
            .arg("--socket")
            .arg(dev.socket())
            .arg("status");
        run(&mut c)
    };
    let out = as_nobody();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    // Even if someone loosens the file mode, SO_PEERCRED keeps the door shut.
    std::fs::set_permissions(dev.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // Several times: the daemon answers a refused peer without reading its request, so the
    // answer races the client's write.
    for _ in 0..5 {
        let out = as_nobody();
        assert_eq!(out.code, 5, "{out:?}");
        assert!(out.stderr.contains("uid 65534"), "{out:?}");
    }
    assert_eq!(dev.cli(&["status"]).code, 0, "root is still served");
}

/// `stop` answers only once the agent is down, which takes up to its grace period; the CLI must
/// get that answer even for a grace period longer than the control socket's 30 s per-connection
/// cap (manifests allow up to 300 s).
#[test]
fn stop_answers_after_a_grace_period_longer_than_30_s() {
    let mut dev = Device::new();
    let mut m = manifest("slow-stop", "service", &["ignore-term"], "16MiB");
    m["stop_grace_s"] = json!(35);
    dev.add_agent("slow-stop", m, Some(grant("16MiB")));
    dev.start();
    dev.wait_log("slow-stop", "SIGTERM ignored");
    let out = dev.cli(&["stop", "slow-stop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(dev.agent("slow-stop")["state"], "stopped");
}
