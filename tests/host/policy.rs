//! Host tier: the policy engine against the real kernel: live reloads (cgroup files and egress
//! maps change under the same PID), rollback of a reload the kernel refuses halfway, signed
//! policies and their version rule, grant tokens, violation rules and quarantine.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nanoclaw_tests::{Device, LONG, bins, cgroup_v1, grant, manifest, run, workspace_root};
use serde_json::{Value, json};

/// An Ed25519 key pair: (private PKCS#8 PEM, public PEM).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    nanoclaw_tests::keypair(dir, name, false)
}

fn nanoclaw(args: &[&str]) -> nanoclaw_tests::CliOut {
    run(Command::new(&bins().nanoclaw).args(args))
}

/// Signs `policy` with `key` into `out` (`nanoclaw policy sign`).
fn sign_policy(dev: &Device, policy: &Value, key: &Path, out: &str) -> PathBuf {
    let plain = dev.path().join(format!("{out}.plain.json"));
    std::fs::write(&plain, serde_json::to_vec_pretty(policy).unwrap()).unwrap();
    let signed = dev.path().join(out);
    let r = nanoclaw(&[
        "policy",
        "sign",
        plain.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    signed
}

fn memory_limit_file(dev: &Device, agent: &str) -> u64 {
    dev.memory_limit(agent)
}

/// Reloads change a running agent's memory limit and egress list in the kernel; the process
/// keeps its PID, the reload report says what changed live, and a later reload restores both.
#[test]
fn reload_changes_memory_and_egress_live_with_the_same_pid() {
    let (a, b) = ("127.0.0.1:9", "127.0.0.1:13");
    let mut dev = Device::new();
    let mut m = manifest(
        "live",
        "service",
        &["connect", "--repeat", "1000", a, b, "sleep:200"],
        "32MiB",
    );
    m["requests"]["network"] = json!([format!("{a}/tcp"), format!("{b}/tcp")]);
    let mut g = grant("32MiB");
    g["network"] = m["requests"]["network"].clone();
    dev.add_agent("live", m, Some(g.clone()));
    // No scratch request: its scratch follows the grant, and a scratch size is fixed at start.
    let mut roomy = manifest("roomy", "service", &["sleep"], "16MiB");
    roomy["requests"].as_object_mut().unwrap().remove("scratch");
    dev.add_agent("roomy", roomy, Some(grant("16MiB")));
    dev.start();
    let pid = dev.wait_state("live", "running")["pid"].clone();
    let roomy_pid = dev.wait_state("roomy", "running")["pid"].clone();
    assert_eq!(memory_limit_file(&dev, "live"), 32 << 20);
    dev.wait_log("live", &format!("connect {b}: denied (Connection refused"));

    // Narrower grant: 24 MiB and no b.
    let mut narrow = g.clone();
    narrow["memory"] = json!("24MiB");
    narrow["network"] = json!([format!("{a}/tcp")]);
    dev.grant("live", narrow);
    let mut bigger = grant("16MiB");
    bigger["scratch"] = json!("2MiB");
    dev.grant("roomy", bigger);
    dev.policy["version"] = json!(2);
    dev.write_configs();
    let report = dev.json(&["policy", "reload"]);
    assert_eq!(report["version"], 2, "{report:#}");
    assert_eq!(
        report["agents"]["roomy"]["restart"],
        json!(["scratch"]),
        "{report:#}"
    );
    let restarted = dev.wait(LONG, "roomy restarted with the new scratch", || {
        let a = dev.agent("roomy");
        (a["state"] == "running" && a["pid"] != roomy_pid && !a["pid"].is_null()).then_some(a)
    });
    let stops = dev.audit_of("stop");
    assert!(
        stops.iter().any(|r| r["agent"] == "roomy"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("policy reload changes scratch; restarting to apply")),
        "{stops:?} {restarted}"
    );
    let status = dev.json(&["status"]);
    let roomy_scratch = status["enforcement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["agent"] == "roomy")
        .unwrap()["scratch_bytes"]
        .clone();
    assert_eq!(roomy_scratch, 2 << 20);
    let change = &report["agents"]["live"];
    assert_eq!(change["live"], json!(["memory", "network"]), "{report:#}");
    assert_eq!(
        change["narrowed"],
        json!(["memory", "network"]),
        "{report:#}"
    );
    assert!(change.get("restart").is_none(), "{report:#}");
    assert_eq!(memory_limit_file(&dev, "live"), 24 << 20);
    let denied = format!("connect {b}: denied (Operation not permitted");
    dev.wait_log("live", &denied);
    let after = dev.logs("live");
    let last_a = after
        .iter()
        .rev()
        .find(|l| l.starts_with(&format!("connect {a}")))
        .unwrap();
    assert!(
        last_a.contains("Connection refused"),
        "a must stay allowed: {after:?}"
    );
    assert_eq!(dev.agent("live")["pid"], pid, "the agent was restarted");
    let reloads = dev.audit_of("policy_reload");
    let last = reloads.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(last.contains("live: memory, network live"), "{last}");

    // The grant comes back: so does the full request, still the same process.
    dev.grant("live", g);
    dev.policy["version"] = json!(3);
    dev.write_configs();
    let report = dev.json(&["policy", "reload"]);
    assert_eq!(
        report["agents"]["live"]["live"],
        json!(["memory", "network"]),
        "{report:#}"
    );
    assert_eq!(memory_limit_file(&dev, "live"), 32 << 20);
    let n = dev.logs("live").len();
    dev.wait(LONG, "b allowed again", || {
        let logs = dev.logs("live");
        logs[n.min(logs.len())..]
            .iter()
            .any(|l| l.starts_with(&format!("connect {b}: denied (Connection refused")))
            .then_some(())
    });
    assert_eq!(dev.agent("live")["pid"], pid);
    // A field the kernel cannot change under a running process: a graceful restart.
    let mut strict = dev.policy["agents"]["live"].clone();
    strict["syscalls"] = json!("strict");
    dev.grant("live", strict);
    dev.policy["version"] = json!(4);
    dev.write_configs();
    let report = dev.json(&["policy", "reload"]);
    // The manifest asks for the default profile: no longer admitted, stopped.
    assert!(
        report["agents"]["live"]["stop"]
            .as_str()
            .unwrap_or_default()
            .contains("requests.syscalls"),
        "{report:#}"
    );
}

/// A reload that the kernel refuses halfway (cgroup v1 will not lower a memory limit below
/// what an agent holds without swap) is undone: limits already written go back, the previous
/// policy stays in force, and the refusal names the agent and field.
#[test]
fn reload_failing_halfway_rolls_back() {
    if !cgroup_v1() {
        eprintln!("skipped: cgroup v2 lowers memory.max by OOM-killing, not by refusing");
        return;
    }
    let mut dev = Device::new();
    dev.add_agent(
        "aa-small",
        manifest("aa-small", "service", &["sleep"], "32MiB"),
        Some(grant("32MiB")),
    );
    dev.add_agent(
        "zz-hog",
        manifest("zz-hog", "service", &["memhold", "24"], "48MiB"),
        Some(grant("48MiB")),
    );
    dev.start();
    let small = dev.wait_state("aa-small", "running")["pid"].clone();
    dev.wait_log("zz-hog", "memhold: holding 24 MiB");
    let hog = dev.agent("zz-hog")["pid"].clone();
    let mut g = grant("16MiB");
    dev.grant("aa-small", g.clone());
    g["memory"] = json!("8MiB");
    dev.grant("zz-hog", g);
    dev.policy["version"] = json!(2);
    dev.write_configs();
    let out = dev.cli(&["policy", "reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("agents.zz-hog.memory") && out.stderr.contains("rolled back"),
        "{out:?}"
    );
    assert!(out.stderr.contains("keeping policy version 1"), "{out:?}");
    assert_eq!(
        memory_limit_file(&dev, "aa-small"),
        32 << 20,
        "not rolled back"
    );
    assert_eq!(memory_limit_file(&dev, "zz-hog"), 48 << 20);
    assert_eq!(dev.json(&["status"])["policy_version"], 1);
    assert_eq!(dev.agent("aa-small")["pid"], small);
    assert_eq!(dev.agent("zz-hog")["pid"], hog);
    let rejected = dev.audit_of("policy_rejected");
    assert!(
        rejected.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back")),
        "{rejected:?}"
    );
}

/// Fleet-signed policies: only the pinned key, versions only go up (also across a daemon
/// restart, whatever the configured file says), unsigned files refused when the device says so.
#[test]
fn signed_policies_and_their_version_rule() {
    let mut dev = Device::new();
    let (key, public) = keypair(dev.path(), "fleet");
    let (rogue, _) = keypair(dev.path(), "rogue");
    dev.add_agent(
        "steady",
        manifest("steady", "service", &["sleep"], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.device["policy_key"] = json!(public);
    dev.device["allow_local_policy"] = json!(false);
    dev.write_configs();
    let v1 = sign_policy(&dev, &dev.policy, &key, "policy-v1.json");
    dev.device["policy"] = json!(v1);
    dev.start();
    dev.wait_state("steady", "running");
    let status = dev.json(&["status"]);
    assert_eq!(status["policy_version"], 1);
    assert!(
        status["policy_origin"]
            .as_str()
            .unwrap()
            .starts_with("signed by sha256:"),
        "{status}"
    );

    let mut p = dev.policy.clone();
    p["version"] = json!(2);
    let v2 = sign_policy(&dev, &p, &key, "policy-v2.json");
    let out = dev.cli(&["policy", "apply", v2.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(dev.json(&["status"])["policy_version"], 2);

    let refuse = |file: &Path, needle: &str| {
        let out = dev.cli(&["policy", "apply", file.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{needle}: {out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {out:?}");
        assert!(out.stderr.contains("keeping policy version 2"), "{out:?}");
    };
    refuse(&v1, "version 1 is older than version 2 in force");
    p["version"] = json!(3);
    let forged = sign_policy(&dev, &p, &rogue, "policy-rogue.json");
    refuse(&forged, "not by the fleet key pinned in device.json");
    let unsigned = dev.path().join("unsigned.json");
    std::fs::write(&unsigned, serde_json::to_vec(&p).unwrap()).unwrap();
    refuse(&unsigned, "allow_local_policy false");
    // Tampered after signing, and a cut signature.
    let mut env: Value = serde_json::from_slice(&std::fs::read(&v2).unwrap()).unwrap();
    env["payload"]["version"] = json!(9);
    let tampered = dev.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&env).unwrap()).unwrap();
    refuse(&tampered, "does not verify");
    let mut env: Value = serde_json::from_slice(&std::fs::read(&v2).unwrap()).unwrap();
    let sig = env["signature"]["sig"].as_str().unwrap().to_owned();
    env["signature"]["sig"] = json!(&sig[..sig.len() / 2]);
    let cut = dev.path().join("cut.json");
    std::fs::write(&cut, serde_json::to_vec(&env).unwrap()).unwrap();
    refuse(&cut, "does not verify");
    // Same version, different content.
    p["version"] = json!(2);
    p["agents"]["steady"]["pids"] = json!(4);
    let same = sign_policy(&dev, &p, &key, "policy-v2b.json");
    refuse(
        &same,
        "version 2 is already in force with different content",
    );
    // A 10 MB policy is refused by size before parsing.
    let big = dev.path().join("big.json");
    std::fs::write(&big, vec![b' '; 10 << 20]).unwrap();
    let out = dev.cli(&["policy", "apply", big.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("limit"), "{out:?}");
    assert_eq!(dev.audit_of("policy_rejected").len(), 7);

    // After a restart the kept version 2 wins over the configured (older) file.
    assert!(dev.sigterm().success());
    dev.start();
    dev.wait_state("steady", "running");
    assert_eq!(dev.json(&["status"])["policy_version"], 2);
    let rejected = dev.audit_of("policy_rejected");
    assert!(
        rejected.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("older than version 2 in force"),
        "{rejected:?}"
    );
}

/// Writes a signed grant token for `agent` into its bundle (`/NAME` in its view).
fn token_file(dev: &Device, agent: &str, file: &str, key: &Path, extra: &[&str]) {
    let mut args = vec!["grant", "sign", "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = nanoclaw(&args);
    assert_eq!(out.code, 0, "{out:?}");
    let line = format!(
        r#"{{"op":"request_capability","token":{}}}"#,
        out.stdout.trim()
    );
    std::fs::write(dev.bundle(agent).join("rootfs").join(file), line).unwrap();
}

/// A grant token opens an egress entry for exactly its lifetime; tokens for another agent,
/// another device, expired, replayed, not grantable or signed by another key are refused with
/// their reason, and every step is audited.
#[test]
fn grant_token_opens_a_port_for_its_lifetime() {
    let port = "127.0.0.1:19";
    let cap = format!("net:{port}/tcp");
    let mut dev = Device::new();
    let (key, public) = keypair(dev.path(), "fleet");
    let (rogue, _) = keypair(dev.path(), "rogue");
    dev.device["policy_key"] = json!(public);
    dev.device["device_id"] = json!("dev-under-test");
    let hello = r#"{"op":"hello","id":1}"#;
    let steps: Vec<String> = vec![
        hello.to_owned(),
        format!("connect:{port}"),
        "file:/t-other-agent".into(),
        "file:/t-other-device".into(),
        "file:/t-expired".into(),
        "file:/t-not-grantable".into(),
        "file:/t-rogue".into(),
        "file:/t-good".into(),
        format!("connect:{port}"),
        "file:/t-good".into(),
        "sleep:6500".into(),
        format!("connect:{port}"),
    ];
    let mut args = vec!["wait-file", "/go", "sock"];
    args.extend(steps.iter().map(String::as_str));
    let mut m = manifest("asker", "task", &args, "16MiB");
    m["requests"]["network"] = json!([]);
    let mut g = grant("16MiB");
    g["grantable"] = json!([cap]);
    dev.add_agent("asker", m, Some(g));
    dev.start();
    dev.wait_state("asker", "running");
    let rootfs_agent = ["--agent", "asker", "--capability", &cap];
    let mk = |file: &str, key: &Path, extra: &[&str]| token_file(&dev, "asker", file, key, extra);
    mk(
        "t-other-agent",
        &key,
        &["--agent", "someone", "--capability", &cap, "--ttl", "60"],
    );
    mk(
        "t-other-device",
        &key,
        &[&rootfs_agent[..], &["--ttl", "60", "--device", "dev-2"]].concat(),
    );
    let past = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10)
        .to_string();
    mk(
        "t-expired",
        &key,
        &[&rootfs_agent[..], &["--not-after", &past]].concat(),
    );
    mk(
        "t-not-grantable",
        &key,
        &[
            "--agent",
            "asker",
            "--capability",
            "net:127.0.0.1:20/tcp",
            "--ttl",
            "60",
        ],
    );
    mk(
        "t-rogue",
        &rogue,
        &[&rootfs_agent[..], &["--ttl", "60"]].concat(),
    );
    mk(
        "t-good",
        &key,
        &[
            &rootfs_agent[..],
            &["--ttl", "4", "--device", "dev-under-test"],
        ]
        .concat(),
    );
    std::fs::write(dev.bundle("asker").join("rootfs/go"), b"").unwrap();
    dev.wait(LONG, "grant checks before expiry", || {
        let s = dev.json(&["status"]);
        let e = s["enforcement"]
            .as_array()?
            .iter()
            .find(|e| e["agent"] == "asker")?
            .clone();
        (e["grants"].as_array()?.len() == 1).then_some(e)
    });
    let a = dev.wait_state("asker", "exited");
    let logs = dev.logs("asker");
    let answers: Vec<&String> = logs.iter().filter(|l| l.starts_with("sock< ")).collect();
    let connects: Vec<&String> = logs.iter().filter(|l| l.starts_with("connect ")).collect();
    assert_eq!(answers.len(), 8, "{a}\n{logs:#?}");
    assert_eq!(connects.len(), 3, "{logs:#?}");
    assert!(
        connects[0].contains("Operation not permitted"),
        "before: {logs:#?}"
    );
    assert!(
        connects[1].contains("Connection refused"),
        "granted: {logs:#?}"
    );
    assert!(
        connects[2].contains("Operation not permitted"),
        "after expiry: {logs:#?}"
    );
    for (i, needle) in [
        (1, "for agent `someone`"),
        (2, "for device `dev-2`"),
        (3, "expired"),
        (4, "not in this agent's grantable list"),
        (5, "not by the fleet key"),
        (7, "already used (replay)"),
    ] {
        assert!(
            answers[i].contains("\"ok\":false") && answers[i].contains(needle),
            "answer {i} should say {needle}: {}",
            answers[i]
        );
    }
    assert!(answers[6].contains("\"ok\":true"), "{}", answers[6]);
    assert_eq!(dev.audit_of("grant_refused").len(), 6);
    assert_eq!(dev.audit_of("grant_applied").len(), 1);
    let expired = dev.audit_of("grant_expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
}

/// `on_violation` with quarantine: the agent is stopped, stays down across a daemon restart,
/// refuses `start`, and runs again only after `clear`.
#[test]
fn quarantine_survives_a_daemon_restart() {
    let bad = "127.0.0.1:2";
    let mut dev = Device::new();
    let mut m = manifest(
        "suspect",
        "service",
        &["connect", "--stay", bad, "sleep:100", bad],
        "16MiB",
    );
    m["requests"]["network"] = json!(["127.0.0.1:1/tcp"]);
    let mut g = grant("16MiB");
    g["network"] = json!(["127.0.0.1:1/tcp"]);
    g["on_violation"] = json!([
        { "denied_connects": 1, "within_s": 60, "action": "alert" },
        { "denied_connects": 2, "within_s": 60, "action": "quarantine" }
    ]);
    dev.add_agent("suspect", m, Some(g.clone()));
    // Another agent's first denied connect throttles it: a quarter of its CPU grant.
    let mut m = manifest("slowed", "service", &["connect", "--stay", bad], "16MiB");
    m["requests"]["network"] = json!(["127.0.0.1:1/tcp"]);
    g["on_violation"] = json!([{ "denied_connects": 1, "within_s": 60, "action": "throttle" }]);
    dev.add_agent("slowed", m, Some(g));
    dev.start();
    let slowed = dev.wait_state("slowed", "throttled");
    let quota = if cgroup_v1() {
        std::fs::read_to_string(dev.cgroup_file("cpu", "slowed", "cpu.cfs_quota_us")).unwrap()
    } else {
        std::fs::read_to_string(dev.cgroup_file("", "slowed", "cpu.max")).unwrap()
    };
    assert!(
        quota.trim().starts_with("12500"),
        "0.5 cpus / 4: {quota} {slowed}"
    );
    let a = dev.wait_state("suspect", "quarantined");
    assert!(a["pid"].is_null(), "{a}");
    let v = dev.audit_of("violation");
    let reasons: Vec<&str> = v.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("on_violation[0] (1 denied_connects within 60 s) fired: alert")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(
            |r| r.contains("on_violation[1] (2 denied_connects within 60 s) fired: quarantine")
        ),
        "{reasons:?}"
    );
    let status = dev.json(&["status"]);
    let trust = status["enforcement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["agent"] == "suspect")
        .unwrap()["trust"]
        .as_u64()
        .unwrap();
    assert!(trust <= 96, "two denied connects cost trust: {trust}");
    assert!(dev.sigterm().success());
    dev.start();
    // Give the restarted daemon time to (not) start it.
    std::thread::sleep(Duration::from_secs(2));
    let a = dev.agent("suspect");
    assert_eq!(a["state"], "quarantined", "{a}");
    let out = dev.cli(&["start", "suspect"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nanoclaw clear suspect"), "{out:?}");
    assert!(dev.procs("suspect").is_empty());
    let starts = dev.audit_of("start").len();
    let out = dev.cli(&["clear", "suspect"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(dev.audit_of("cleared").len(), 1);
    assert_eq!(
        dev.audit_of("start").len(),
        starts + 1,
        "clear starts it again"
    );
}

/// The fenced block after `<!-- example: NAME -->` in docs/POLICY.md.
fn policy_doc_example(name: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join("docs/POLICY.md")).unwrap();
    let marker = format!("<!-- example: {name} -->");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/POLICY.md has no {marker}"));
    let block = &text[at..];
    let body = &block[block.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// `nanoclaw policy check` on the documented examples: the example policy is valid under the
/// example master policy, the bad one reports exactly the documented problems (every one, in
/// order, by JSON path), excesses over the master are named, and a 10 MB file is refused by size.
#[test]
fn policy_check_on_the_documented_examples() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let policy = write("policy.json", &policy_doc_example("policy"));
    let master = write("master.json", &policy_doc_example("master"));
    let out = nanoclaw(&[
        "policy",
        "check",
        &policy,
        "--master",
        &master,
        "--device-memory",
        "1GiB",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("valid: version 7, 2 agent(s)"),
        "{out:?}"
    );

    let bad = write("bad.json", &policy_doc_example("bad-policy"));
    let out = nanoclaw(&["policy", "check", &bad, "--device-memory", "1GiB"]);
    assert_eq!(out.code, 1, "{out:?}");
    let paths = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split_once(": ").map(|(p, _)| p.to_owned()))
            .collect()
    };
    let documented = policy_doc_example("bad-policy-output");
    assert_eq!(paths(&out.stdout), paths(&documented), "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        documented
            .lines()
            .next()
            .map(|l| l.replace("policy.json", &bad))
            .as_deref()
    );
    let out = nanoclaw(&["policy", "check", &bad, "--device-memory", "1GiB", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 4);

    let mut over: Value = serde_json::from_str(&policy_doc_example("policy")).unwrap();
    over["agents"]["sensor"]["memory"] = json!("128MiB");
    over["agents"]["display"]["network"] = json!(["192.168.1.1:80/tcp"]);
    let over = write("over.json", &over.to_string());
    let out = nanoclaw(&[
        "policy",
        "check",
        &over,
        "--master",
        &master,
        "--device-memory",
        "1GiB",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        paths(&out.stdout),
        ["agents.display.network[0]", "agents.sensor.memory"],
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("128MiB exceeds the master policy's limits.memory 64MiB"),
        "{out:?}"
    );
    // Over the device's memory.
    let out = nanoclaw(&["policy", "check", &policy, "--device-memory", "96MiB"]);
    assert_eq!(out.code, 1, "{out:?}");
    let big = write("big.json", &" ".repeat(10 << 20));
    let out = nanoclaw(&["policy", "check", &big]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("larger than the 1048576-byte limit"),
        "{out:?}"
    );
    let out = nanoclaw(&["policy", "check"]);
    assert_eq!(out.code, 2, "{out:?}");
}
