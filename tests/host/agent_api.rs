//! Host tier: the agent socket (`/run/nanoclaw.sock` inside each sandbox) with real agents:
//! the documented example session, inter-agent channels, the outbox on disk, the health
//! check, and clients that misbehave.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nanoclaw_tests::{Device, LONG, grant, manifest, workspace_root};
use serde_json::{Value, json};

/// The request lines of the fenced block after `<!-- example: NAME -->` in a doc.
fn doc_example(doc: &str, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
    let marker = format!("<!-- example: {name} -->");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{doc} has no {marker}"));
    let block = &text[at..];
    let start = block.find("```").unwrap();
    let body = &block[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("```").unwrap();
    body[..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn answers(dev: &Device, agent: &str) -> Vec<Value> {
    dev.logs(agent)
        .iter()
        .filter_map(|l| l.strip_prefix("sock< "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The session in docs/AGENT_API.md, run by an agent, answer by answer; a message along a
/// declared channel arrives at the other agent; undeclared ones are refused and audited; the
/// outbox record is on disk before its answer.
#[test]
fn documented_session_channels_and_outbox() {
    let mut dev = Device::new();
    let mut listener = manifest(
        "display",
        "service",
        &["sock", r#"{"op":"hello","id":"l1"}"#, "stay"],
        "16MiB",
    );
    listener["restart"] = json!({ "policy": "never" });
    dev.add_agent("display", listener, Some(grant("16MiB")));
    let session = doc_example("docs/AGENT_API.md", "session");
    assert!(session.len() >= 7, "{session:?}");
    let mut args = vec!["wait-file", "/go", "sock"];
    args.extend(session.iter().map(String::as_str));
    let mut m = manifest("sensor", "task", &args, "16MiB");
    m["health"] = json!({ "heartbeat_s": 30 });
    dev.add_agent("sensor", m, Some(grant("16MiB")));
    dev.policy["channels"] = json!([{ "from": "sensor", "to": "display", "topic": "readings" }]);
    dev.start();
    dev.wait_state("display", "running");
    dev.wait_log("display", "\"id\":\"l1\"");
    std::fs::write(dev.bundle("sensor").join("rootfs/go"), b"").unwrap();
    dev.wait_state("sensor", "exited");
    let a = answers(&dev, "sensor");
    assert_eq!(a.len(), session.len(), "{:#?}", dev.logs("sensor"));
    let by_id = |id: u64| a.iter().find(|v| v["id"] == id).unwrap().clone();
    let hello = by_id(1);
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["agent"], "sensor");
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["heartbeat_s"], 30);
    assert_eq!(by_id(2)["ok"], true);
    assert!(by_id(2)["due_by_ms"].as_u64().is_some());
    let who = by_id(3);
    let uid = who["uid"].as_u64().unwrap();
    assert!(
        (u64::from(dev.uid_base)..u64::from(dev.uid_base) + 64).contains(&uid),
        "{who}"
    );
    assert_eq!(who["trust"], 100);
    let cfg = by_id(4);
    assert_eq!(cfg["memory_bytes"], 16 << 20, "{cfg}");
    assert_eq!(
        cfg["channels"]["send"],
        json!([{ "to": "display", "topic": "readings" }])
    );
    let put = by_id(5);
    assert_eq!(put["ok"], true, "{put}");
    let seq = put["seq"].as_u64().unwrap();
    assert_eq!(by_id(6)["delivered"], 1, "{:?}", by_id(6));
    let refused = by_id(7);
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no channel from sensor to display for topic secrets"),
        "{refused}"
    );
    // The message arrived at the other agent.
    let got = dev.wait_log("display", "\"event\":\"message\"");
    let msg = got.iter().find(|l| l.contains("\"event\"")).unwrap();
    let msg: Value = serde_json::from_str(msg.strip_prefix("sock< ").unwrap()).unwrap();
    assert_eq!(msg["from"], "sensor");
    assert_eq!(msg["topic"], "readings");
    assert_eq!(msg["data"]["celsius"], 21.5);
    assert_eq!(dev.audit_of("channel_refused").len(), 1);
    // The outbox record is on disk (acknowledged means fsynced).
    let outbox = std::fs::read(dev.state_dir().join("outbox/outbox.log")).unwrap();
    let text = String::from_utf8_lossy(&outbox);
    assert!(text.contains(&format!("\"seq\":{seq}")), "{text}");
    assert!(text.contains("\"topic\":\"telemetry\""), "{text}");
}

/// Malformed, oversized and flooding clients are answered, then disconnected; each is audited
/// (rate-limited), and a `bad_messages` rule fires.
#[test]
fn misbehaving_socket_clients_are_disconnected_and_audited() {
    let mut dev = Device::new();
    let noisy = manifest(
        "noisy",
        "task",
        &[
            "sock",
            "raw:{nope",
            "raw:[1]",
            r#"raw:{"op":"fly","id":9}"#,
            r#"{"op":"whoami"}"#,
        ],
        "16MiB",
    );
    dev.add_agent("noisy", noisy, Some(grant("16MiB")));
    let mut huge = manifest(
        "huge",
        "task",
        &["sock", "big:70000", r#"{"op":"whoami"}"#],
        "16MiB",
    );
    huge["restart"] = json!({ "policy": "never" });
    dev.add_agent("huge", huge, Some(grant("16MiB")));
    let flood = manifest(
        "flood",
        "task",
        &["sock", "flood:5000", "read:200"],
        "16MiB",
    );
    let mut g = grant("16MiB");
    g["on_violation"] = json!([{ "bad_messages": 1, "within_s": 60, "action": "alert" }]);
    dev.add_agent("flood", flood, Some(g));
    dev.start();
    for a in ["noisy", "huge"] {
        dev.wait_state(a, "exited");
    }
    let n = answers(&dev, "noisy");
    assert!(
        n[0]["error"].as_str().unwrap().contains("not JSON"),
        "{n:?}"
    );
    assert!(
        n[1]["error"].as_str().unwrap().contains("JSON object"),
        "{n:?}"
    );
    assert_eq!(n[2]["id"], 9, "{n:?}");
    assert!(
        n[2]["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `fly`"),
        "{n:?}"
    );
    assert!(
        n[3]["error"]
            .as_str()
            .unwrap()
            .contains("3 malformed messages"),
        "the third bad message ends the connection: {n:?}"
    );
    let h = answers(&dev, "huge");
    assert!(
        h[0]["error"]
            .as_str()
            .unwrap()
            .contains("longer than 65536 bytes"),
        "{h:?}"
    );
    // The flooder is cut off by the rate limit, and its rule fires.
    dev.wait_state("flood", "exited");
    let f = answers(&dev, "flood");
    assert!(
        f.iter().any(|v| v["error"]
            .as_str()
            .is_some_and(|e| e.contains("messages per second"))),
        "{:?}",
        dev.logs("flood")
    );
    let bad = dev.audit_of("bad_message");
    let text: Vec<&str> = bad.iter().filter_map(|r| r["reason"].as_str()).collect();
    for needle in [
        "not JSON",
        "disconnected: 3 malformed",
        "longer than 65536",
        "messages per second",
    ] {
        assert!(
            text.iter().any(|t| t.contains(needle)),
            "{needle}: {text:?}"
        );
    }
    assert!(bad.len() < 40, "audit flood: {} records", bad.len());
    let v = dev.audit_of("violation");
    assert!(
        v.iter().any(|r| r["agent"] == "flood"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("bad_messages")),
        "{v:?}"
    );
}

/// An agent that stops sending heartbeats is killed and restarted, and the audit says why.
#[test]
fn missed_heartbeats_fail_the_health_check() {
    let mut dev = Device::new();
    let mut m = manifest("pulse", "service", &["heartbeat", "300", "3"], "16MiB");
    m["health"] = json!({ "heartbeat_s": 1 });
    m["restart"] = json!({ "policy": "on-failure", "max_per_hour": 10 });
    dev.add_agent("pulse", m, Some(grant("16MiB")));
    dev.start();
    let first = dev.wait_state("pulse", "running")["pid"].clone();
    let hc = dev.wait(Duration::from_secs(20), "a health check failure", || {
        let r = dev.audit_of("health_check");
        (!r.is_empty()).then_some(r)
    });
    let reason = hc[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("no heartbeat for") && reason.contains("health.heartbeat_s = 1"),
        "{reason}"
    );
    let a = dev.wait(LONG, "a restart", || {
        let a = dev.agent("pulse");
        (a["restarts"].as_u64() >= Some(1) && a["pid"] != first && !a["pid"].is_null()).then_some(a)
    });
    assert_eq!(a["state"], "running", "{a}");
    let logs = dev.logs("pulse");
    assert!(
        logs.iter().any(|l| l.contains("going silent after 3")),
        "{logs:?}"
    );
}
