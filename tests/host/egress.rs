//! eBPF egress allowlist on the real kernel: an agent with a network grant reaches exactly
//! its granted destinations; everything else fails with EPERM and is audited.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use nanoclaw_tests::{Device, grant, manifest};
use serde_json::json;

/// The `connect DEST: ...` line the demo agent printed for `dest`.
fn result_for(logs: &[String], dest: &str) -> String {
    logs.iter()
        .find(|l| l.starts_with(&format!("connect {dest}: ")))
        .cloned()
        .unwrap_or_else(|| panic!("no result for {dest}: {logs:?}"))
}

#[test]
fn egress_allows_only_granted_destinations() {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (pa, po, pu) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let dests = [
        format!("127.0.0.1:{pa}"),
        format!("127.0.0.1:{po}"),
        format!("[::ffff:127.0.0.1]:{po}"),
        format!("[::1]:{po}"),
        format!("udp:127.0.0.1:{pu}"),
    ];
    let mut args = vec!["connect"];
    args.extend(dests.iter().map(String::as_str));
    let endpoint = format!("127.0.0.1:{pa}/tcp");

    let mut dev = Device::new();
    let mut m = manifest("netter", "task", &args, "16MiB");
    m["requests"]["network"] = json!([endpoint]);
    let mut g = grant("16MiB");
    g["network"] = json!([endpoint]);
    dev.add_agent("netter", m, Some(g));
    // Without a grant the agent has no network at all (empty namespace).
    dev.add_agent(
        "offline",
        manifest("offline", "task", &["connect", &dests[0]], "16MiB"),
        Some(grant("16MiB")),
    );
    dev.start();
    let status = dev.json(&["status"]);
    let egress = status["posture"]["egress"].as_str().unwrap_or_default();
    assert!(egress.starts_with("bpf allowlist"), "posture: {status}");

    dev.wait_state("netter", "exited");
    dev.wait_state("offline", "exited");
    let logs = dev.logs("netter");
    let line = |d: &str| result_for(&logs, d);
    assert!(line(&dests[0]).ends_with(": ok"), "{logs:?}");
    for d in &dests[1..] {
        let l = line(d);
        assert!(
            l.contains("denied") && l.contains("Operation not permitted"),
            "{d} was not refused with EPERM: {l}"
        );
    }
    let offline = dev.logs("offline");
    assert!(
        offline
            .iter()
            .any(|l| l.contains("denied") && !l.contains("Operation not permitted")),
        "an agent without a grant must have no network at all: {offline:?}"
    );

    // Every refusal is audited with its destination.
    let denied = dev.wait(Duration::from_secs(10), "4 denied_connect records", || {
        let d: Vec<_> = dev
            .audit_of("denied_connect")
            .into_iter()
            .filter(|r| r["agent"] == "netter")
            .collect();
        (d.len() >= 4).then_some(d)
    });
    let reasons: Vec<String> = denied
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    for want in [
        format!("connect to 127.0.0.1:{po}/tcp"),
        format!("connect to [::1]:{po}/tcp"),
        format!("sendmsg to 127.0.0.1:{pu}/udp"),
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(&want)),
            "no audit record for {want}: {reasons:?}"
        );
    }
    // The allowed listener really got the connection.
    allowed.set_nonblocking(true).unwrap();
    assert!(
        allowed.accept().is_ok(),
        "the granted connection never arrived"
    );
    drop(other);
}

/// The egress programs stay attached while no supervisor runs: an agent that connects only
/// after `kill -9` of the daemon is still held, and the next daemon adopts it with its rules.
#[test]
fn egress_holds_while_the_supervisor_is_down() {
    // Port 1 on loopback: allowed but closed (ECONNREFUSED); port 2: not granted (EPERM).
    let mut dev = Device::new();
    let ok = "127.0.0.1:1";
    let bad = "127.0.0.1:2";
    let mut m = manifest(
        "late",
        "service",
        &["wait-file", "/go", "connect", "--stay", ok, bad],
        "16MiB",
    );
    m["requests"]["network"] = json!([format!("{ok}/tcp")]);
    m["restart"] = json!({ "policy": "never" });
    let mut g = grant("16MiB");
    g["network"] = json!([format!("{ok}/tcp")]);
    dev.add_agent("late", m, Some(g));
    dev.start();
    dev.wait_state("late", "running");
    dev.kill9();
    // No supervisor now: the agent connects.
    std::fs::write(dev.bundle("late").join("rootfs/go"), b"go").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    dev.start();
    let logs = dev.wait(Duration::from_secs(10), "the late agent's results", || {
        let l = dev.logs("late");
        (l.iter().filter(|l| l.starts_with("connect ")).count() == 2).then_some(l)
    });
    let find = |d: &str| result_for(&logs, d);
    assert!(
        find(ok).contains("Connection refused"),
        "granted port must reach the kernel's TCP stack: {logs:?}"
    );
    assert!(
        find(bad).contains("Operation not permitted"),
        "non-granted port must be refused by the still-attached program: {logs:?}"
    );
    assert!(!dev.audit_of("adopt").is_empty(), "not re-adopted");
    // Accounting (cgroup_skb) counted the SYN out and the RST back, also while no
    // supervisor ran.
    let status = dev.json(&["status"]);
    let e = status["enforcement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["agent"] == "late")
        .cloned()
        .unwrap();
    assert!(e["traffic"]["tx_packets"].as_u64() >= Some(1), "{e}");
    assert!(e["traffic"]["rx_packets"].as_u64() >= Some(1), "{e}");
}

/// A policy `on_violation` rule revokes the network of an agent that keeps knocking: after the
/// third denied connection even its granted destination is refused, and the audit says why.
#[test]
fn repeated_denials_revoke_the_network() {
    let ok = "127.0.0.1:1";
    let bad = "127.0.0.1:2";
    let mut dev = Device::new();
    let mut m = manifest(
        "knocker",
        "task",
        &["connect", ok, bad, bad, bad, "sleep:1500", ok],
        "16MiB",
    );
    m["requests"]["network"] = json!([format!("{ok}/tcp")]);
    let mut g = grant("16MiB");
    g["network"] = json!([format!("{ok}/tcp")]);
    g["on_violation"] =
        json!([{ "denied_connects": 3, "within_s": 60, "action": "revoke_network" }]);
    dev.add_agent("knocker", m, Some(g));
    dev.start();
    dev.wait_state("knocker", "exited");
    let logs = dev.logs("knocker");
    let results: Vec<&String> = logs.iter().filter(|l| l.starts_with("connect ")).collect();
    assert_eq!(results.len(), 5, "{logs:?}");
    assert!(results[0].contains("Connection refused"), "{logs:?}");
    assert!(
        results[4].contains("Operation not permitted"),
        "the granted destination must be refused after the revocation: {logs:?}"
    );
    let v = dev.audit_of("violation");
    assert!(
        v.iter().any(|r| r["agent"] == "knocker"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("network revoked")),
        "{v:?}"
    );
}

/// `require` in the policy: an agent whose required mechanism is missing does not start and
/// says why; one whose requirement is met starts.
#[test]
fn required_mechanisms_are_enforced_at_start() {
    let mut dev = Device::new();
    let mut g = grant("16MiB");
    g["require"] = json!(["bpf-lsm"]);
    dev.add_agent(
        "needs-lsm",
        manifest("needs-lsm", "task", &["exit", "0"], "16MiB"),
        Some(g),
    );
    let mut g = grant("16MiB");
    g["require"] = json!(["bpf-egress", "landlock"]);
    dev.add_agent(
        "needs-egress",
        manifest("needs-egress", "task", &["exit", "0"], "16MiB"),
        Some(g),
    );
    dev.start();
    let a = dev.wait_state("needs-lsm", "failed");
    let reason = a["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("requires bpf-lsm") && reason.contains("agents.needs-lsm.require"),
        "{a}"
    );
    let why = dev.cli(&["why", "needs-lsm"]);
    assert!(why.stdout.contains("requires bpf-lsm"), "{why:?}");
    dev.wait_state("needs-egress", "exited");
    assert!(
        dev.audit_of("start")
            .iter()
            .all(|r| r["agent"] != "needs-lsm"),
        "an agent whose requirement is unmet was started"
    );
}

/// An agent that floods denied connections does not flood the audit log: at most 10 records
/// per second plus a summary of the rest, and nothing is lost from the count.
#[test]
fn a_denial_flood_is_rate_limited_in_the_audit() {
    let ok = "127.0.0.1:1";
    let bad = "127.0.0.1:2";
    let mut args = vec!["connect"];
    args.extend(std::iter::repeat_n(bad, 300));
    let mut dev = Device::new();
    let mut m = manifest("flooder", "task", &args, "16MiB");
    m["requests"]["network"] = json!([format!("{ok}/tcp")]);
    let mut g = grant("16MiB");
    g["network"] = json!([format!("{ok}/tcp")]);
    dev.add_agent("flooder", m, Some(g));
    dev.start();
    dev.wait_state("flooder", "exited");
    let denied_in_logs = dev
        .logs("flooder")
        .iter()
        .filter(|l| l.contains("Operation not permitted"))
        .count();
    assert_eq!(denied_in_logs, 300);
    // Wait for the summaries of the last window.
    let recs = dev.wait(Duration::from_secs(10), "300 denials accounted for", || {
        let recs: Vec<_> = dev
            .audit_of("denied_connect")
            .into_iter()
            .filter(|r| r["agent"] == "flooder")
            .collect();
        let individual = recs
            .iter()
            .filter(|r| {
                !r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("more denied")
            })
            .count() as u64;
        let summarized: u64 = recs
            .iter()
            .filter_map(|r| {
                let s = r["reason"].as_str()?;
                s.contains("more denied")
                    .then(|| s.split_whitespace().next()?.parse::<u64>().ok())
                    .flatten()
            })
            .sum();
        (individual + summarized == 300).then_some(recs)
    });
    assert!(
        recs.len() < 60,
        "the audit was flooded: {} records",
        recs.len()
    );
}

/// A prefix grant (`127.0.0.0/8:1/tcp`) lets any address in it through on that port, and
/// nothing else.
#[test]
fn prefix_grants_cover_their_range() {
    let range = "127.0.0.0/8:1/tcp";
    let mut dev = Device::new();
    let mut m = manifest(
        "ranger",
        "task",
        &["connect", "127.0.0.1:1", "127.0.0.2:1", "127.0.0.1:2"],
        "16MiB",
    );
    // The agent asks for the whole range: the BPF map holds one /8 entry (LPM match).
    m["requests"]["network"] = json!([range]);
    let mut g = grant("16MiB");
    g["network"] = json!([range]);
    dev.add_agent("ranger", m, Some(g));
    dev.start();
    dev.wait_state("ranger", "exited");
    let logs = dev.logs("ranger");
    let find = |d: &str| result_for(&logs, d);
    assert!(
        find("127.0.0.1:1").contains("Connection refused"),
        "{logs:?}"
    );
    assert!(
        find("127.0.0.2:1").contains("Connection refused"),
        "{logs:?}"
    );
    assert!(
        find("127.0.0.1:2").contains("Operation not permitted"),
        "{logs:?}"
    );
}

/// A DNS server on 127.0.0.1: answers every A question with the address in `addr` (TTL 1 s,
/// which the supervisor clamps to its 5 s minimum) and every AAAA question with no records.
fn dns_server(addr: std::sync::Arc<std::sync::Mutex<[u8; 4]>>) -> std::net::SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            // One question, no EDNS: qtype is 4 bytes before the end.
            let q = &buf[..n];
            let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
            let mut r = q.to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            if qtype == 1 {
                r[7] = 1;
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                r.extend_from_slice(&*addr.lock().unwrap());
            }
            let _ = sock.send_to(&r, from);
        }
    });
    local
}

/// A grant by host name allows what the supervisor resolves the name to, and follows the
/// name when its address changes (after the TTL), without restarting the agent.
#[test]
fn host_names_are_resolved_and_refreshed_on_ttl() {
    let a1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = a1.local_addr().unwrap().port();
    let a2 = TcpListener::bind(("127.0.0.2", port)).unwrap();
    let answer = std::sync::Arc::new(std::sync::Mutex::new([127, 0, 0, 1]));
    let dns = dns_server(answer.clone());

    let first = format!("127.0.0.1:{port}");
    let second = format!("127.0.0.2:{port}");
    let mut dev = Device::new();
    dev.device["dns_servers"] = json!([dns.to_string()]);
    let name = format!("svc.nanoclaw.test:{port}/tcp");
    let mut m = manifest(
        "named",
        "task",
        &[
            "connect",
            "sleep:1500",
            &first,
            "sleep:8000",
            &first,
            &second,
        ],
        "16MiB",
    );
    m["requests"]["network"] = json!([name]);
    let mut g = grant("16MiB");
    g["network"] = json!([name]);
    dev.add_agent("named", m, Some(g));
    dev.start();

    let first_result = dev.wait(Duration::from_secs(10), "the first connect", || {
        dev.logs("named")
            .into_iter()
            .find(|l| l.starts_with(&format!("connect {first}: ")))
    });
    assert!(first_result.ends_with(": ok"), "{first_result}");
    // The name moves; the agent keeps running.
    *answer.lock().unwrap() = [127, 0, 0, 2];
    dev.wait_state("named", "exited");
    let logs = dev.logs("named");
    let results: Vec<&String> = logs.iter().filter(|l| l.starts_with("connect ")).collect();
    assert_eq!(results.len(), 3, "{logs:?}");
    assert!(
        results[1].contains("Operation not permitted"),
        "the old address must be refused after the TTL: {logs:?}"
    );
    assert!(
        results[2].ends_with(": ok"),
        "the new address must be allowed: {logs:?}"
    );
    assert_eq!(dev.agent("named")["restarts"], 0);
    drop((a1, a2));
}

/// `on_violation` with `freeze` and `stop`: after two denied connections one agent is frozen
/// (its cgroup really stops it) and the other is stopped, each with a `violation` record.
#[test]
fn violations_freeze_or_stop_the_agent() {
    let ok = "127.0.0.1:1";
    let bad = "127.0.0.1:2";
    let mut dev = Device::new();
    for (name, action) in [("icy", "freeze"), ("halted", "stop")] {
        let mut m = manifest(
            name,
            "service",
            &["connect", bad, bad, "sleep:60000"],
            "16MiB",
        );
        m["requests"]["network"] = json!([format!("{ok}/tcp")]);
        m["restart"] = json!({ "policy": "never" });
        let mut g = grant("16MiB");
        g["network"] = json!([format!("{ok}/tcp")]);
        g["on_violation"] = json!([{ "denied_connects": 2, "within_s": 60, "action": action }]);
        dev.add_agent(name, m, Some(g));
    }
    dev.start();
    let icy = dev.wait_state("icy", "frozen");
    assert!(
        icy["pid"].as_i64().is_some(),
        "a frozen agent keeps its process: {icy}"
    );
    // The kernel holds it: every task of its cgroup is frozen.
    let pid = icy["pid"].as_i64().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let freezer = cg
        .lines()
        .find_map(|l| l.split_once(":freezer:").map(|(_, p)| p.to_owned()));
    let state = match freezer {
        Some(p) => std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{p}/freezer.state"))
            .unwrap()
            .trim()
            .to_owned(),
        None => {
            let p = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let events =
                std::fs::read_to_string(format!("/sys/fs/cgroup{p}/cgroup.events")).unwrap();
            if events.contains("frozen 1") {
                "FROZEN".into()
            } else {
                events
            }
        }
    };
    assert_eq!(state, "FROZEN");
    let halted = dev.wait(Duration::from_secs(20), "halted to be stopped", || {
        let a = dev.agent("halted");
        (a["state"] == "stopped" && a["pid"].is_null()).then_some(a)
    });
    let reasons: Vec<String> = dev
        .audit_of("violation")
        .iter()
        .map(|r| format!("{} {}", r["agent"], r["reason"]))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("icy") && r.contains("frozen")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("halted") && r.contains("stopping")),
        "{reasons:?} {halted}"
    );
}
