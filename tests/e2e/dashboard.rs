//! The fleet dashboard in a real headless Chromium against a real fleet server and a real
//! device daemon (sandboxed agents, eBPF egress denials, sync over TLS): log in, watch the
//! device appear, push a policy from the page and watch its rollout reach 100 %, open the
//! device and find a denial's reason, search the audit trail. Screenshots of the main views
//! go to docs/screenshots/ (linked from docs/FLEET.md). Needs root.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use nanoclaw_tests::cdp::{Browser, spki_hash};
use nanoclaw_tests::fleet::{Body, Fleet};
use nanoclaw_tests::{Device, grant, manifest, workspace_root};
use serde_json::json;

fn shots() -> PathBuf {
    workspace_root().join("docs/screenshots")
}

#[test]
fn the_dashboard_shows_the_fleet_and_drives_a_rollout() {
    nanoclaw_tests::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    fleet.serve_admin(2);
    let server = fleet.addr.unwrap();
    let admin = fleet.admin.unwrap();
    let token = fleet.token();
    let base = format!("https://localhost:{}", admin.port());
    // A device that never checks in, in another group.
    fleet.enrol("spare-1", "spares");
    let creds = fleet.enrol("dev-ui", "lab");

    let mut b = Browser::launch(
        &spki_hash(&fleet.dir.join("server.pem")),
        1280,
        900,
        &tmp.path().join("chromium.log"),
    );

    // The page is served by the binary with a strict CSP; without a token only the login.
    b.goto(&format!("{base}/"));
    b.wait_for("!!document.querySelector('#login-form')", "the login form");
    b.fill("#token", "not-the-token");
    b.click("#login");
    b.wait_for(
        "(document.querySelector('#login-error')||{}).textContent",
        "the refusal of a wrong token",
    );
    assert!(
        b.text("#login-error").to_lowercase().contains("token"),
        "{}",
        b.text("#login-error")
    );
    b.fill("#token", &token);
    b.click("#login");
    b.wait_for(
        "(document.querySelector('#stat-total')||{}).textContent === '2'",
        "two enrolled devices on the overview",
    );
    assert_eq!(b.text("#stat-never"), "2");

    // The device comes up: a service agent, and a task whose connection egress denies.
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let pa = allowed.local_addr().unwrap().port();
    let denied_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{pa}/tcp");
    let mut dev = Device::new();
    dev.device["device_id"] = json!("dev-ui");
    dev.device["policy_key"] = json!(creds.join("fleet-signing.pub"));
    dev.device["fleet"] = Fleet::device_section(&creds, server, 5);
    dev.device["fleet"]["status_s"] = json!(5);
    dev.add_agent(
        "sensor",
        manifest("sensor", "service", &["sensor", "1"], "16MiB"),
        Some(grant("16MiB")),
    );
    let target = format!("127.0.0.1:{denied_port}");
    let mut m = manifest("netter", "task", &["connect", &target], "16MiB");
    m["requests"]["network"] = json!([endpoint]);
    let mut g = grant("16MiB");
    g["network"] = json!([endpoint]);
    dev.add_agent("netter", m, Some(g));
    dev.start();

    b.eval("location.hash = '#/devices'");
    b.wait_for(
        "(() => { const r = document.querySelector('tr[data-device=\"dev-ui\"]'); \
         return !!r && /online/i.test(r.textContent); })()",
        "dev-ui to appear online in the device list",
    );
    b.screenshot(&shots().join("devices.png"), false);

    // A policy pushed from the page: signed by the server, applied by the device.
    let mut p = dev.policy.clone();
    p["version"] = json!(5);
    b.eval("location.hash = '#/actions'");
    b.wait_for(
        "!!document.querySelector('#push-policy')",
        "the actions view",
    );
    let kind = b.eval(
        "(() => { const s = document.querySelector('#policy-target-kind'); \
         s.value = 'group'; s.dispatchEvent(new Event('change', {bubbles: true})); \
         return s.value; })()",
    );
    assert_eq!(kind, json!("group"));
    b.fill("#policy-target", "lab");
    b.fill("#policy-text", &serde_json::to_string_pretty(&p).unwrap());
    b.eval("document.querySelector('#push-policy').requestSubmit()");
    b.wait_for(
        "/v5/.test((document.querySelector('#push-policy-result')||{}).textContent)",
        "the push answer naming version 5",
    );
    // A bad policy is refused with the server's reason, on the page.
    let mut bad = p.clone();
    bad["agents"]["sensor"]["memory"] = json!("lots");
    b.fill("#policy-text", &bad.to_string());
    b.eval("document.querySelector('#push-policy').requestSubmit()");
    b.wait_for(
        "/memory/.test((document.querySelector('#push-policy-result')||{}).textContent)",
        "the refusal naming the bad field",
    );
    b.screenshot(&shots().join("actions.png"), true);

    b.eval("location.hash = '#/'");
    b.wait_for(
        "(document.querySelector('[data-group=\"lab\"] .policy-pct')||{}).textContent === '100 %'",
        "the rollout of v5 to reach 100 % of group lab",
    );
    assert_eq!(b.text("[data-group=\"lab\"] .policy-target"), "v5");
    assert_eq!(dev.json(&["status"])["policy_version"], 5);
    b.wait_for(
        "(document.querySelector('#stat-online')||{}).textContent === '1'",
        "one device online",
    );
    b.screenshot(&shots().join("overview.png"), true);

    // The device's page: agents with their budgets, and the denial with its reason.
    let want = format!("connect to 127.0.0.1:{denied_port}/tcp");
    b.eval("location.hash = '#/devices/dev-ui'");
    b.wait_for(
        &format!(
            "[...document.querySelectorAll('#denials li')].some(li => li.textContent.includes({}))",
            json!(want)
        ),
        "the denied connection's reason on the device page",
    );
    b.wait_for(
        "/running/.test((document.querySelector('tr[data-agent=\"sensor\"]')||{}).textContent)",
        "the sensor agent running on the device page",
    );
    assert!(
        b.text("tr[data-agent=\"sensor\"]").contains("16"),
        "the memory budget (16 MiB) is shown: {}",
        b.text("tr[data-agent=\"sensor\"]")
    );
    // The API behind it agrees with the device itself.
    let (code, v) = fleet.api("GET", "/v1/devices/dev-ui", Some(&token), Body::None);
    assert_eq!(code, 200, "{v}");
    let agents = v["status"]["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sensor = agents
        .iter()
        .find(|a| a["name"] == "sensor")
        .expect("sensor");
    assert_eq!(sensor["memory_limit_bytes"], 16 << 20, "{v}");
    assert!(sensor["memory_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    // A plot needs two points of history (kept 15 s apart): a line per agent.
    dev.wait(
        Duration::from_secs(60),
        "two points of sensor's history",
        || {
            let (_, v) = fleet.api(
                "GET",
                "/v1/devices/dev-ui/telemetry",
                Some(&token),
                Body::None,
            );
            (v["agents"]["sensor"].as_array()?.len() >= 2).then_some(())
        },
    );
    b.wait_for(
        "[...document.querySelectorAll('#chart-memory polyline')].some(p => \
         p.getAttribute('points').trim().split(/\\s+/).length >= 2)",
        "a memory plot with a line",
    );
    b.screenshot(&shots().join("device.png"), true);

    // Audit search across the fleet.
    b.eval("location.hash = '#/audit'");
    b.wait_for("!!document.querySelector('#audit-form')", "the audit view");
    b.fill("#audit-kind", "denied_connect");
    b.fill("#audit-q", &denied_port.to_string());
    b.eval("document.querySelector('#audit-form').requestSubmit()");
    b.wait_for(
        &format!(
            "(document.querySelector('#audit-table')||{{}}).textContent && \
             document.querySelector('#audit-table').textContent.includes({})",
            json!(want)
        ),
        "the denial in the audit search",
    );
    b.screenshot(&shots().join("audit.png"), false);

    // On a phone.
    b.viewport(390, 844, true);
    b.eval("location.hash = '#/'");
    b.wait_for(
        "(document.querySelector('#stat-total')||{}).textContent === '2'",
        "the overview on a phone",
    );
    let overflow = b.eval("document.documentElement.scrollWidth - window.innerWidth");
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the overview scrolls sideways on a 390 px phone by {overflow} px"
    );
    b.screenshot(&shots().join("phone-overview.png"), false);
    b.eval("location.hash = '#/devices/dev-ui'");
    b.wait_for(
        "!!document.querySelector('tr[data-agent=\"sensor\"]')",
        "the device page on a phone",
    );
    b.screenshot(&shots().join("phone-device.png"), false);

    assert!(b.errors.is_empty(), "errors in the page: {:#?}", b.errors);
    drop(b);
    drop(allowed);
}

/// What `cargo xtask bench --only dashboard` reports: the page's weight and the time from
/// navigation to the first complete render of the overview, of a page of the device list
/// and of one device, with 10,000 devices registered and reporting (each 5 times, fresh
/// from the server: the cache is off). Prints one `dashboard_bench {json}` line.
#[test]
#[ignore = "a benchmark: run by cargo xtask bench"]
fn bench_first_render_with_10000_devices() {
    nanoclaw_tests::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    fleet.serve_admin(300);
    let server = fleet.addr.unwrap();
    let base = format!("https://localhost:{}", fleet.admin.unwrap().port());
    // 10,000 registered, 20 of them real sessions with status reports; the rest made to
    // look alive and reporting, spread over 20 groups.
    fleet.ok(&[
        "loadgen",
        "--server",
        &server.to_string(),
        "--register",
        "10000",
        "--identities",
        "20",
        "--concurrency",
        "4",
        "--seconds",
        "3",
    ]);
    let now = nanoclaw::daemon::now_ms();
    let agents = r#"[{"name":"sensor","state":"running","restarts":0,"memory_bytes":4194304,"memory_limit_bytes":67108864,"energy_mwh":10,"energy_budget_mwh":500,"trust":100,"denials":0}]"#;
    fleet.sql(&format!(
        "UPDATE devices SET last_seen_ms = {now} - (rowid % 600) * 1000, firmware = '0.1.0', \
         policy_version = 1 + rowid % 3, grp = 'site-' || (rowid % 20) \
         WHERE grp = 'loadgen-filler';
         INSERT INTO device_status SELECT id, {now}, 20 + rowid % 80, rowid % 2, \
         'cgroup=v2 seccomp=enforced landlock=full', 0, 1, 1, 0, 100, 0, '{agents}' \
         FROM devices WHERE grp LIKE 'site-%';"
    ));
    let token = fleet.token();
    let (_, v) = fleet.api("GET", "/v1/overview", Some(&token), Body::None);
    let total = v["devices"]["total"].as_u64().unwrap_or(0);
    assert!(total >= 10_000, "{total} devices");

    let mut b = Browser::launch(
        &spki_hash(&fleet.dir.join("server.pem")),
        1280,
        900,
        &tmp.path().join("chromium.log"),
    );
    b.call("Network.enable", json!({}));
    b.call("Network.setCacheDisabled", json!({"cacheDisabled": true}));
    b.goto(&format!("{base}/"));
    b.fill("#token", &token);
    b.click("#login");
    b.wait_for(
        &format!("(document.querySelector('#stat-total')||{{}}).textContent === '{total}'"),
        "the overview",
    );
    // Each view: navigate afresh and note when it is complete (a MutationObserver installed
    // before the page's own script runs).
    let views = [
        (
            "overview",
            "/#/".to_owned(),
            format!(
                "(document.querySelector('#stat-total')||{{}}).textContent === '{total}' && !!document.querySelector('[data-group] .policy-pct')"
            ),
        ),
        (
            "device_list",
            "/#/devices".to_owned(),
            "document.querySelectorAll('#device-table tr[data-device]').length >= 100".to_owned(),
        ),
        (
            "device",
            "/#/devices/sim-0".to_owned(),
            "!!document.querySelector('tr[data-agent]')".to_owned(),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, path, done) in &views {
        let probe = format!(
            "(() => {{ const check = () => {{ try {{ if (!window.__rendered && ({done})) \
             window.__rendered = performance.now(); }} catch (e) {{}} }}; \
             new MutationObserver(check).observe(document, {{subtree: true, childList: true, \
             characterData: true, attributes: true}}); }})()"
        );
        let id = b.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": probe }),
        )["identifier"]
            .clone();
        let mut times = Vec::new();
        for _ in 0..5 {
            b.goto("about:blank");
            b.goto(&format!("{base}{path}"));
            let t = b.wait_for("window.__rendered", &format!("{name} to render"));
            times.push(t.as_f64().unwrap_or(f64::NAN));
        }
        b.call(
            "Page.removeScriptToEvaluateOnNewDocument",
            json!({ "identifier": id }),
        );
        times.sort_by(f64::total_cmp);
        let weight = b.eval(
            "(() => { const n = performance.getEntriesByType('navigation')[0]; \
             const r = performance.getEntriesByType('resource'); \
             return { document: n.encodedBodySize, transfer: n.transferSize + \
             r.reduce((a, e) => a + e.transferSize, 0), resources: r.map(e => \
             ({ name: new URL(e.name).pathname, bytes: e.encodedBodySize, \
             transfer: e.transferSize })) }; })()",
        );
        out.insert(
            (*name).to_owned(),
            json!({ "first_render_ms": times, "median_ms": times[2], "weight": weight }),
        );
    }
    assert!(b.errors.is_empty(), "errors in the page: {:#?}", b.errors);
    out.insert("devices".into(), json!(total));
    println!("dashboard_bench {}", serde_json::Value::Object(out));
}
