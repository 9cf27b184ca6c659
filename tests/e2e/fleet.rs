//! End-to-end fleet sync: the real daemon and the real `nanoclaw-fleet` server on loopback,
//! with a fault-injecting proxy between them (tests/src/fleet.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nanoclaw_tests::fleet::{Body, Fault, Fleet, Proxy};
use nanoclaw_tests::{Device, bins, grant, manifest};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(120);

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
    nanoclaw_tests::pack_and_sign(&src, &file, key);
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
fn sync_through_a_faulty_link_on_sqlite() {
    scenario(None);
}

#[test]
fn sync_through_a_faulty_link_on_postgres_with_two_replicas() {
    let pg = nanoclaw_tests::fleet::Postgres::start();
    scenario(Some(&pg.url));
}

/// The dashboard's JSON views answer on this backend (their SQL is the part that differs):
/// the device's status report arrived, and every view counts it.
fn dashboard_views(fleet: &Fleet, id: &str) {
    let token = fleet.token();
    let t = Some(token.as_str());
    let v = nanoclaw_tests::wait_until(SYNC, || {
        let (_, v) = fleet.api("GET", &format!("/v1/devices/{id}"), t, Body::None);
        v["status"]["agents"].is_array().then_some(v)
    })
    .expect("a status report");
    assert_eq!(v["device"]["online"], true, "{v}");
    // The device says it applied the policy just after it did.
    let v = nanoclaw_tests::wait_until(SYNC, || {
        let (_, v) = fleet.api("GET", "/v1/overview", t, Body::None);
        (v["groups"][0]["policy"]["applied"] == 1).then_some(v)
    })
    .expect("the rollout to count the device");
    assert_eq!(
        (
            &v["devices"]["online"],
            &v["groups"][0]["policy"]["applied"]
        ),
        (&json!(1), &json!(1)),
        "{v}"
    );
    let (code, v) = fleet.api("GET", "/v1/devices?q=dev&state=online", t, Body::None);
    assert_eq!((code, &v["total"]), (200, &json!(1)), "{v}");
    let (code, v) = fleet.api("GET", "/v1/audit?q=week+offline&last=3", t, Body::None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["records"].as_array().map(Vec::len), Some(3), "{v}");
    let (code, _) = fleet.api("GET", &format!("/v1/devices/{id}/telemetry"), t, Body::None);
    assert_eq!(code, 200);
}

/// The whole story against one database: a week offline caught up in one session, a policy
/// applied exactly once, a 20 MB bundle through cuts, a bit flip, a stall and a server
/// restart, and a replayed older policy refused. With PostgreSQL, two server replicas share
/// the database and the proxy alternates between them.
fn scenario(pg: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), pg);
    let server = fleet.serve_admin(2);
    let mut replica = fleet.replica(1);
    let proxy = Proxy::start(server);
    if pg.is_some() {
        let second = replica.serve(2, 0);
        proxy.set_upstreams(vec![server, second]);
    }
    let (mut dev, vendor) = fleet_device(&fleet, "dev-a", proxy.addr, 10_000);
    dev.start();

    // The week offline: 10,000 audit records, caught up in the first session, exactly once
    // and in order.
    let high = dev.wait(SYNC, "the backlog to be acknowledged", || {
        let d = fleet.device("dev-a");
        let high = d["audit"]["high"].as_i64()?;
        (high >= 10_000 && d["audit"]["acked"].as_i64()? >= 10_000).then_some(high)
    });
    assert_eq!(
        proxy.connections.load(Ordering::Relaxed),
        1,
        "one session caught up"
    );
    let stored = fleet.audit("dev-a");
    assert!(stored.len() as i64 >= high, "{} records", stored.len());
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(
            r["seq"].as_i64(),
            Some(i as i64 + 1),
            "in order, no gap, no repeat"
        );
    }
    assert_eq!(stored[42]["reason"], "record 42 from the week offline");

    // A pushed policy is applied exactly once, whatever the link does afterwards.
    let out = push_policy(&fleet, &dev, 2, &["--group", "lab"]);
    assert!(out.contains("policy version 2"), "{out}");
    dev.wait(SYNC, "policy version 2 in force", || {
        (dev.json(&["status"])["policy_version"] == 2).then_some(())
    });
    let origin = dev.json(&["status"])["policy_origin"].clone();
    assert!(origin.as_str().unwrap().starts_with("signed"), "{origin}");
    dashboard_views(&fleet, "dev-a");

    // A 20 MB bundle through a link that flips a bit once, stalls once, and then is cut
    // every ~3 MB, with the server killed and restarted mid-transfer: it arrives, resumed
    // rather than restarted, and installs.
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
    for fault in [
        Fault::FlipAt(3000),
        Fault::StallAfter(2 << 20, Duration::from_secs(3)),
    ] {
        proxy.set(fault);
        let before = proxy.connections.load(Ordering::Relaxed);
        dev.wait(SYNC, "a session through the fault", || {
            (proxy.connections.load(Ordering::Relaxed) > before + 1).then_some(())
        });
    }
    assert!(
        dev.daemon_stderr().contains("cannot decrypt"),
        "TLS refused the flipped bit"
    );
    proxy.set(Fault::CutAfter(3 << 20));
    let cuts_from = proxy.connections.load(Ordering::Relaxed);
    let down_from = proxy.bytes_down.load(Ordering::Relaxed);
    dev.wait(SYNC, "8 MB more to arrive", || {
        (proxy.bytes_down.load(Ordering::Relaxed) > down_from + (8 << 20)).then_some(())
    });
    fleet.kill();
    std::thread::sleep(Duration::from_secs(1));
    fleet.serve(2, server.port());
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
        sessions >= 5,
        "20 MiB through 3 MiB windows takes 5+ sessions, took {sessions}"
    );
    assert!(
        down < size + size / 2,
        "resumed, not restarted: {down} bytes downloaded for a {size}-byte bundle"
    );
    proxy.set(Fault::None);

    // Version 3, then the database is made to hand out version 2's envelope as the newest
    // (a restored backup, a compromised server): the device refuses the older policy.
    push_policy(&fleet, &dev, 3, &["--device", "dev-a"]);
    dev.wait(SYNC, "policy version 3 in force", || {
        (dev.json(&["status"])["policy_version"] == 3).then_some(())
    });
    fleet.sql("UPDATE policies SET version = 99 WHERE version = 2");
    let refused = dev.wait(SYNC, "the replayed policy refused", || {
        dev.audit_of("policy_rejected")
            .into_iter()
            .find(|r| r["reason"].as_str().unwrap_or("").contains("older"))
    });
    assert!(
        refused["reason"].as_str().unwrap().contains("version 2"),
        "{refused}"
    );
    assert_eq!(dev.json(&["status"])["policy_version"], 3);

    // Exactly one application of each version, however many sessions ran.
    let reloads = policy_reloads(&dev);
    assert_eq!(reloads.len(), 2, "{reloads:#?}");
    let st = dev.json(&["status"]);
    assert!(st["fleet"]["sessions_ok"].as_u64().unwrap() >= 3, "{st:#}");
    assert!(
        st["fleet"]["sessions_failed"].as_u64().unwrap() >= 5,
        "{st:#}"
    );
    assert!(
        st["fleet"]["bytes_today"].as_u64().unwrap() > size,
        "{st:#}"
    );
    drop(dev);
    fleet.kill();
    replica.kill();
}

#[test]
fn a_device_certificate_from_another_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve(2, 0);
    let other = Fleet::init(&tmp.path().join("other"), None);
    // Enrolled with the other fleet's CA, but pinning this fleet's CA for the server.
    let creds = other.enrol("stranger", "lab");
    std::fs::copy(fleet.dir.join("ca.pem"), creds.join("fleet-ca.pem")).unwrap();
    let mut dev = Device::new();
    dev.device["device_id"] = json!("stranger");
    dev.device["fleet"] = Fleet::device_section(&creds, server, 5);
    dev.start();
    let err = dev.wait(SYNC, "a refused session", || {
        dev.json(&["status"])["fleet"]["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(dev.json(&["status"])["fleet"]["sessions_ok"], 0, "{err}");
    // The server refused the chain itself (not a lookup miss after a handshake).
    dev.wait(SYNC, "the server's refusal in its log", || {
        fleet
            .log_text()
            .contains("TLS: invalid peer certificate: UnknownIssuer")
            .then_some(())
    });
    fleet.kill();
}

/// A grant and outbox records through the fleet, then a metered link: once the day's bytes
/// are spent only a security event (a crash loop) opens a session.
#[test]
fn grants_outbox_and_the_daily_byte_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve(2, 0);
    let proxy = Proxy::start(server);
    let mut dev = Device::new();
    let creds = fleet.enrol("dev-g", "lab");
    dev.device["device_id"] = json!("dev-g");
    dev.device["policy_key"] = json!(fleet.dir.join("fleet-signing.pub"));
    let mut section = Fleet::device_section(&creds, proxy.addr, 5);
    section["daily_bytes"] = json!("64KiB");
    dev.device["fleet"] = section;
    let cap = "net:127.0.0.1:19/tcp";
    let steps = [
        r#"{"op":"hello","id":1}"#,
        r#"{"op":"outbox_put","id":2,"topic":"reading","data":{"n":1}}"#,
        r#"{"op":"outbox_put","id":3,"topic":"reading","data":{"n":2}}"#,
        r#"{"op":"outbox_put","id":4,"topic":"reading","data":{"n":3}}"#,
        "sleep:600000",
    ];
    let mut args = vec!["sock"];
    args.extend(steps);
    let mut m = manifest("asker", "service", &args, "16MiB");
    m["requests"]["network"] = json!([]);
    let mut g = grant("16MiB");
    g["grantable"] = json!([cap]);
    dev.add_agent("asker", m, Some(g));
    let mut crasher = manifest(
        "crasher",
        "service",
        &["wait-file", "/go", "exit", "1"],
        "16MiB",
    );
    crasher["restart"] = json!({ "policy": "always", "max_per_hour": 1 });
    dev.add_agent("crasher", crasher, Some(grant("16MiB")));
    dev.start();

    // The three outbox records arrive once each, in order, and leave the device's outbox.
    let recs = dev.wait(SYNC, "the outbox at the server", || {
        let out = fleet.ok(&["outbox", "--device", "dev-g"]);
        let recs: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (recs.len() >= 3).then_some(recs)
    });
    assert_eq!(recs.len(), 3, "{recs:#?}");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["record"]["data"]["n"], i as u64 + 1);
        assert_eq!(r["record"]["agent"], "asker");
    }

    // A grant issued at the fleet is applied on the device once, and not sent again.
    let out = fleet.ok(&[
        "grant",
        "--agent",
        "asker",
        "--capability",
        cap,
        "--ttl",
        "600",
        "--device",
        "dev-g",
    ]);
    assert!(out.contains("signature"), "{out}");
    dev.wait(SYNC, "the grant applied", || {
        (!dev.audit_of("grant_applied").is_empty()).then_some(())
    });
    let n = proxy.connections.load(Ordering::Relaxed);
    dev.wait(SYNC, "two more sessions", || {
        (proxy.connections.load(Ordering::Relaxed) >= n + 2).then_some(())
    });
    assert_eq!(dev.audit_of("grant_applied").len(), 1);
    assert!(
        dev.audit_of("grant_refused").is_empty(),
        "{:#?}",
        dev.audit_of("grant_refused")
    );
    let status = dev.json(&["status"]);
    let grants = &status["enforcement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["agent"] == "asker")
        .unwrap()["grants"];
    assert_eq!(grants[0]["capability"], cap, "{grants}");

    // The budget: sessions stop once 64 KiB went through the socket today...
    dev.wait(Duration::from_secs(300), "the day's budget spent", || {
        let f = dev.json(&["status"])["fleet"].clone();
        (f["bytes_today"].as_u64()? >= 64 * 1024).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let spent_at = proxy.connections.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        proxy.connections.load(Ordering::Relaxed),
        spent_at,
        "no session over budget"
    );
    assert!(
        dev.json(&["status"])["fleet"]["next_in_s"]
            .as_u64()
            .unwrap()
            > 10
    );
    // ...a field engineer's `nanoclaw sync` still goes out (not counted as urgent)...
    let ok = |dev: &Device| {
        dev.json(&["status"])["fleet"]["sessions_ok"]
            .as_u64()
            .unwrap()
    };
    let before = ok(&dev);
    let out = dev.cli(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(SYNC, "the asked-for session", || {
        (ok(&dev) > before).then_some(())
    });
    assert!(proxy.connections.load(Ordering::Relaxed) > spent_at);
    let spent_at = proxy.connections.load(Ordering::Relaxed);
    assert_eq!(dev.json(&["status"])["fleet"]["urgent_sessions"], 0);
    // ...and a crash loop still goes out at once.
    std::fs::write(dev.bundle("crasher").join("rootfs/go"), b"").unwrap();
    dev.wait(SYNC, "the crash loop at the server", || {
        fleet
            .audit("dev-g")
            .iter()
            .any(|r| r["kind"] == "crash_loop")
            .then_some(())
    });
    dev.wait(SYNC, "the urgent session done", || {
        (dev.json(&["status"])["fleet"]["urgent_sessions"].as_u64()? >= 1).then_some(())
    });
    assert!(proxy.connections.load(Ordering::Relaxed) > spent_at);
    fleet.kill();
}

/// The admin HTTP API over real HTTPS (curl, the fleet CA pinned): the token is required,
/// bad input is refused with a JSON error that names it, and a device enrolled through the
/// API gets a policy, a bundle and a grant pushed through it, whose audit the API then reads.
#[test]
fn the_admin_api_runs_the_fleet_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve_admin(2);
    let token = fleet.token();
    let t = Some(token.as_str());

    // No token or a wrong one: 401, for reads and writes alike; /healthz needs none.
    let (code, v) = fleet.api("GET", "/healthz", None, Body::None);
    assert_eq!((code, &v["ok"]), (200, &json!(true)), "{v}");
    for tok in [None, Some("0123456789abcdef0123456789abcdef")] {
        let (code, v) = fleet.api("GET", "/v1/devices", tok, Body::None);
        assert_eq!(code, 401, "{v}");
        assert!(v["error"].as_str().unwrap().contains("admin token"), "{v}");
        let (code, _) = fleet.api(
            "POST",
            "/v1/devices",
            tok,
            Body::Json(r#"{"id":"intruder"}"#),
        );
        assert_eq!(code, 401);
    }
    assert_eq!(
        fleet.device("intruder"),
        Value::Null,
        "nothing was enrolled"
    );

    // Enrolment: a new identity from the fleet CA; twice is a conflict; bad input named.
    let (code, v) = fleet.api(
        "POST",
        "/v1/devices",
        t,
        Body::Json(r#"{"id":"dev-api","group":"lab"}"#),
    );
    assert_eq!(code, 201, "{v}");
    let creds = tmp.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    for (field, file) in [
        ("key", "device.key"),
        ("certificate", "device.pem"),
        ("ca", "fleet-ca.pem"),
        ("policy_key", "fleet-signing.pub"),
    ] {
        let pem = v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {v}"));
        assert!(pem.starts_with("-----BEGIN"), "{field}: {pem}");
        std::fs::write(creds.join(file), pem).unwrap();
    }
    let (code, v) = fleet.api("POST", "/v1/devices", t, Body::Json(r#"{"id":"dev-api"}"#));
    assert_eq!(code, 409, "{v}");
    for (body, needle) in [
        (r#"{"id":"dev-x","colour":"red"}"#, "unknown field `colour`"),
        (r#"{"id":"../etc"}"#, "device id `../etc`"),
        (
            r#"{"id":"dev-y","certificate":"hello"}"#,
            "not a PEM certificate",
        ),
        (r#"{"id":"#, "EOF"),
    ] {
        let (code, v) = fleet.api("POST", "/v1/devices", t, Body::Json(body));
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let big = format!(r#"{{"id":"dev-z","group":"{}"}}"#, "g".repeat(100 * 1024));
    let (code, _) = fleet.api("POST", "/v1/devices", t, Body::Json(&big));
    assert_eq!(
        code, 413,
        "a body over 64 KiB is refused before it is read whole"
    );
    let (code, v) = fleet.api("GET", "/v1/devices/dev-api/audit?limit=3", t, Body::None);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    let (code, _) = fleet.api("GET", "/v1/devices/nobody/audit", t, Body::None);
    assert_eq!(code, 404);

    // The device with that identity checks in.
    let mut dev = Device::new();
    let keys = dev.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (vendor, vendor_pub) = nanoclaw_tests::keypair(&keys, "vendor", true);
    std::fs::rename(&vendor_pub, keys.join("demo-vendor.pub")).unwrap();
    dev.device["allow_unsigned"] = json!(false);
    dev.device["device_id"] = json!("dev-api");
    dev.device["policy_key"] = json!(creds.join("fleet-signing.pub"));
    dev.device["fleet"] = Fleet::device_section(&creds, server, 5);
    dev.grant("svc", grant("16MiB"));
    dev.start();
    let seen = |fleet: &Fleet| {
        let (_, v) = fleet.api("GET", "/v1/devices", t, Body::None);
        v["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == "dev-api").cloned())
            .unwrap_or(Value::Null)
    };
    dev.wait(SYNC, "dev-api to check in", || {
        seen(&fleet)["last_seen_s_ago"].as_i64().map(|_| ())
    });

    // A policy through the API: validated, signed, applied once.
    let mut p = dev.policy.clone();
    p["version"] = json!(2);
    let (code, v) = fleet.api(
        "POST",
        "/v1/policies?group=lab",
        t,
        Body::Json(&p.to_string()),
    );
    assert_eq!((code, &v["version"]), (201, &json!(2)), "{v}");
    dev.wait(SYNC, "policy version 2 in force", || {
        (dev.json(&["status"])["policy_version"] == 2).then_some(())
    });
    let mut bad = p.clone();
    bad["agents"]["svc"]["memory"] = json!("lots");
    let (code, v) = fleet.api(
        "POST",
        "/v1/policies?group=lab",
        t,
        Body::Json(&bad.to_string()),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("memory"), "{v}");
    let (code, v) = fleet.api(
        "POST",
        "/v1/policies?group=lab&device=dev-api",
        t,
        Body::Json(&p.to_string()),
    );
    assert_eq!(code, 400, "{v}");

    // A bundle through the API (multipart, streamed to disk): installed and running.
    let bundle = signed_bundle(dev.path(), "svc", "1.0.0", &vendor, 0);
    let sig = PathBuf::from(format!("{}.sigstore.json", bundle.display()));
    let (code, v) = fleet.api(
        "POST",
        "/v1/bundles?device=dev-api",
        t,
        Body::Form(&[("bundle", &bundle)]),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    let (code, v) = fleet.api(
        "POST",
        "/v1/bundles?group=lab",
        t,
        Body::Form(&[("bundle", &bundle), ("signature", &sig)]),
    );
    assert_eq!(code, 201, "{v}");
    assert!(
        v["published"].as_str().unwrap().starts_with("svc 1.0.0"),
        "{v}"
    );
    dev.wait(SYNC, "svc 1.0.0 installed and running", || {
        dev.agents_json()
            .iter()
            .any(|a| a["name"] == "svc" && a["state"] == "running")
            .then_some(())
    });
    assert!(
        std::fs::read_dir(fleet.dir.join("uploads"))
            .unwrap()
            .next()
            .is_none(),
        "uploads are removed once stored"
    );

    // A grant: refused for an unknown device or capability, applied otherwise.
    let (code, _) = fleet.api(
        "POST",
        "/v1/grants",
        t,
        Body::Json(
            r#"{"agent":"svc","capability":"net:127.0.0.1:19/tcp","ttl_s":60,"device":"ghost"}"#,
        ),
    );
    assert_eq!(code, 404);
    let (code, v) = fleet.api(
        "POST",
        "/v1/grants",
        t,
        Body::Json(r#"{"agent":"svc","capability":"fly","ttl_s":60,"device":"dev-api"}"#),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = fleet.api(
        "POST",
        "/v1/grants",
        t,
        Body::Json(
            r#"{"agent":"svc","capability":"net:127.0.0.1:19/tcp","ttl_s":60,"device":"dev-api"}"#,
        ),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["grant"]["payload"]["device"], "dev-api", "{v}");

    // The device's audit trail through the API, and paging by sequence.
    let records = dev.wait(SYNC, "the install in the audit at the server", || {
        let (_, v) = fleet.api("GET", "/v1/devices/dev-api/audit", t, Body::None);
        let recs = v["records"].as_array()?.clone();
        recs.iter()
            .any(|r| r["kind"] == "install" && r["agent"] == "svc")
            .then_some(recs)
    });
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
    }
    let (code, v) = fleet.api(
        "GET",
        "/v1/devices/dev-api/audit?after=1&last=2",
        t,
        Body::None,
    );
    assert_eq!(code, 200);
    let page: Vec<u64> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, [2, 3], "{v}");
    let (code, v) = fleet.api("GET", "/v1/rollout", t, Body::None);
    assert_eq!(code, 200);
    assert_eq!(
        v["rollout"][0],
        json!({"group": "lab", "policy_version": 2, "devices": 1}),
        "{v}"
    );
    let (code, _) = fleet.api("GET", "/v1/nothing", t, Body::None);
    assert_eq!(code, 404);

    // The dashboard's views: the device's own status report (protocol 2), one page of the
    // registry, the overview's rollout, the fleet-wide audit search; bad input named.
    let v = dev.wait(SYNC, "dev-api's status report at the server", || {
        let (_, v) = fleet.api("GET", "/v1/devices/dev-api", t, Body::None);
        v["status"]["agents"]
            .as_array()?
            .iter()
            .any(|a| a["name"] == "svc" && a["state"] == "running")
            .then_some(v)
    });
    let svc = &v["status"]["agents"][0];
    assert_eq!(svc["memory_limit_bytes"], 16 << 20, "{v}");
    assert_eq!(v["device"]["online"], true, "{v}");
    assert_eq!(v["device"]["agents"]["running"], 1, "{v}");
    let posture = v["status"]["posture"].as_str().unwrap_or_default();
    assert!(posture.contains("seccomp="), "{v}");
    let (code, v) = fleet.api("GET", "/v1/devices?q=api&limit=5", t, Body::None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["devices"][0]["id"], "dev-api", "{v}");
    let (_, v) = fleet.api("GET", "/v1/devices?q=zzz", t, Body::None);
    assert_eq!((&v["total"], &v["devices"]), (&json!(0), &json!([])), "{v}");
    let (_, v) = fleet.api("GET", "/v1/devices?q=%25", t, Body::None);
    assert_eq!(v["total"], 0, "a % is searched for, not a wildcard: {v}");
    let (_, v) = fleet.api("GET", "/v1/devices?state=never", t, Body::None);
    assert_eq!(v["total"], 0, "{v}");
    let (code, v) = fleet.api("GET", "/v1/devices?state=asleep", t, Body::None);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("asleep"), "{v}");
    let (code, _) = fleet.api("GET", "/v1/devices?colour=red", t, Body::None);
    assert_eq!(code, 400);
    let (code, v) = fleet.api("GET", "/v1/overview", t, Body::None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["devices"]["total"], 1, "{v}");
    let lab = &v["groups"][0];
    assert_eq!(lab["group"], "lab", "{v}");
    assert_eq!(
        (&lab["policy"]["target"], &lab["policy"]["applied"]),
        (&json!(2), &json!(1)),
        "{v}"
    );
    assert_eq!(
        lab["bundles"]["assigned"],
        json!([{"name": "svc", "version": "1.0.0"}]),
        "{v}"
    );
    // The bundle set the device reports at its next Hello is the group's.
    dev.wait(SYNC, "the group's bundle rollout to count dev-api", || {
        let (_, v) = fleet.api("GET", "/v1/overview", t, Body::None);
        (v["groups"][0]["bundles"]["applied"] == 1).then_some(())
    });
    let (code, v) = fleet.api("GET", "/v1/audit?kind=install&agent=svc", t, Body::None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["records"][0]["device"], "dev-api", "{v}");
    let (code, v) = fleet.api("GET", "/v1/audit?kind=explosion", t, Body::None);
    assert_eq!(code, 400, "{v}");
    let (code, v) = fleet.api("GET", "/v1/devices/dev-api/telemetry", t, Body::None);
    assert_eq!(code, 200, "{v}");
    assert!(
        v["agents"]["svc"].as_array().is_some_and(|p| !p.is_empty()),
        "{v}"
    );
    let (code, _) = fleet.api("GET", "/v1/overview", None, Body::None);
    assert_eq!(code, 401, "the views need the token too");
    drop(dev);
    fleet.kill();
}

/// `stay_connected`: check-ins share one connection (no TCP or TLS handshake each), a policy
/// still arrives on it, and when the server restarts the device opens a new one by itself.
#[test]
fn a_device_that_stays_connected_checks_in_on_one_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve(2, 0);
    let proxy = Proxy::start(server);
    let (mut dev, _) = fleet_device(&fleet, "dev-k", proxy.addr, 0);
    dev.device["fleet"]["stay_connected"] = json!(true);
    dev.start();
    let fleet_status = |dev: &Device| dev.json(&["status"])["fleet"].clone();
    dev.wait(SYNC, "four check-ins", || {
        (fleet_status(&dev)["sessions_ok"].as_u64()? >= 4).then_some(())
    });
    let st = fleet_status(&dev);
    assert_eq!(proxy.connections.load(Ordering::Relaxed), 1, "{st:#}");
    assert_eq!(
        (&st["connections"], &st["connected"]),
        (&json!(1), &json!(true)),
        "{st:#}"
    );

    push_policy(&fleet, &dev, 2, &["--device", "dev-k"]);
    dev.wait(SYNC, "policy version 2 in force", || {
        (dev.json(&["status"])["policy_version"] == 2).then_some(())
    });
    assert_eq!(proxy.connections.load(Ordering::Relaxed), 1);
    assert_eq!(policy_reloads(&dev).len(), 1);

    // The server goes away and comes back: the kept connection is dead; the device notices
    // at its next check-in, opens a new one and keeps that.
    fleet.kill();
    fleet.serve(2, server.port());
    let ok = fleet_status(&dev)["sessions_ok"].as_u64().unwrap();
    dev.wait(SYNC, "three check-ins after the restart", || {
        (fleet_status(&dev)["sessions_ok"].as_u64()? >= ok + 3).then_some(())
    });
    let conns = proxy.connections.load(Ordering::Relaxed);
    assert!((2..=3).contains(&conns), "{conns} connections");
    let st = fleet_status(&dev);
    assert_eq!(st["connections"], json!(conns), "{st:#}");
    assert_eq!(dev.json(&["status"])["policy_version"], 2);
    drop(dev);
    fleet.kill();
}
