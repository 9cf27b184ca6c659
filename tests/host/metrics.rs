//! Prometheus metrics from a real daemon: the exposition passes `promtool check metrics`, a
//! real Prometheus scrapes it, the values match what `nanoclaw status` says, and every metric
//! the shipped Grafana dashboards query exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use nanoclaw_tests::fleet::Fleet;
use nanoclaw_tests::{Device, grant, manifest, workspace_root};
use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One raw HTTP/1.1 exchange: (status code, body).
fn http(port: u16, request: &str) -> (u16, String) {
    try_http(port, request).expect("connecting")
}

fn try_http(port: u16, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((code, body))
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

/// The value of the sample `series` (name with its labels exactly as exposed).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::init(&tmp.path().join("fleet"), None);
    let server = fleet.serve(2, 0);
    let creds = fleet.enrol("dev-metrics", "lab");

    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let endpoint = format!("127.0.0.1:{pa}/tcp");
    let mut dev = Device::new();
    let port = free_port();
    dev.device["device_id"] = json!("dev-metrics");
    dev.device["fleet"] = Fleet::device_section(&creds, server, 5);
    dev.device["metrics"] = json!({ "listen": format!("127.0.0.1:{port}") });
    dev.add_demo_agent("sensor");
    let mut m = manifest(
        "netter",
        "service",
        &[
            "connect",
            "--stay",
            &format!("127.0.0.1:{pd}"),
            &format!("127.0.0.1:{pd}"),
        ],
        "16MiB",
    );
    m["requests"]["network"] = json!([endpoint]);
    let mut g = grant("16MiB");
    g["network"] = json!([endpoint]);
    dev.add_agent("netter", m, Some(g));
    dev.start();
    dev.wait_state("sensor", "running");
    dev.wait(Duration::from_secs(60), "a fleet check-in", || {
        (dev.json(&["status"])["fleet"]["sessions_ok"].as_u64()? >= 1).then_some(())
    });

    let body = dev.wait(
        Duration::from_secs(20),
        "two denied connects counted",
        || {
            let (code, body) = get(port, "/metrics");
            assert_eq!(code, 200, "{body}");
            // The first energy sample brings the battery.
            value(&body, "nanoclaw_battery_charge_ratio")?;
            (value(
                &body,
                "nanoclaw_agent_denials_total{agent=\"netter\",kind=\"connect\"}",
            )? >= 2.0)
                .then_some(body)
        },
    );
    // The values are the daemon's own.
    let sensor = dev.agent("sensor");
    assert_eq!(
        value(
            &body,
            "nanoclaw_agent_state{agent=\"sensor\",state=\"running\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            "nanoclaw_agent_state{agent=\"sensor\",state=\"failed\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&body, "nanoclaw_agent_memory_limit_bytes{agent=\"sensor\"}"),
        sensor["memory_limit_bytes"].as_f64()
    );
    assert!(value(&body, "nanoclaw_agent_memory_bytes{agent=\"sensor\"}").unwrap() > 0.0);
    assert!(value(&body, "nanoclaw_agent_cpu_seconds_total{agent=\"sensor\"}").is_some());
    assert!(
        value(&body, "nanoclaw_battery_charge_ratio").is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{body}\n{:#}",
        dev.json(&["battery"])
    );
    assert!(value(&body, "nanoclaw_fleet_sessions_total{result=\"ok\"}").unwrap() >= 1.0);
    assert!(value(&body, "nanoclaw_audit_backlog_records").is_some());
    assert_eq!(value(&body, "nanoclaw_policy_version"), Some(1.0));
    assert!(
        value(&body, "nanoclaw_agent_trust_score{agent=\"netter\"}").unwrap() < 100.0,
        "denials lower the trust score"
    );

    // promtool: the format and the naming conventions.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus) is installed by `cargo xtask test`");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics: {text}\n{body}"
    );

    // Every metric the Grafana dashboards query is exposed.
    let exposed = families(&body);
    for file in ["nanoclaw-fleet.json", "nanoclaw-device.json"] {
        let path = workspace_root().join("configs/grafana").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: Value = serde_json::from_str(&text).unwrap();
        assert!(
            dash["panels"].as_array().is_some_and(|p| p.len() >= 6),
            "{file}"
        );
        let used: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("nanoclaw_"))
            .map(str::to_owned)
            .collect();
        assert!(!used.is_empty(), "{file} queries no nanoclaw metric");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} queries unknown metrics {missing:?}"
        );
    }

    // Bad requests.
    assert_eq!(get(port, "/nope").0, 404);
    assert_eq!(
        http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(http(port, &huge).0, 431);

    // A real Prometheus scrapes it.
    let prom_port = free_port();
    let dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nanoclaw\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    let query = |q: &str| -> Option<Vec<Value>> {
        let (code, body) = try_http(
            prom_port,
            &format!(
                "GET /api/v1/query?query={q} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            ),
        )?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let scraped = nanoclaw_tests::wait_until(Duration::from_secs(60), || {
        let up = query("up%7Bjob%3D%22nanoclaw%22%7D")?;
        let ok = up.first()?["value"][1] == "1";
        let mem = query("nanoclaw_agent_memory_limit_bytes%7Bagent%3D%22sensor%22%7D")?;
        (ok && !mem.is_empty()).then_some(mem)
    });
    let targets = try_http(
        prom_port,
        "GET /api/v1/targets HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .map(|r| r.1)
    .unwrap_or_default();
    let _ = prom.kill();
    let _ = prom.wait();
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let mem = scraped.unwrap_or_else(|| panic!("Prometheus did not scrape it:\n{targets}\n{log}"));
    assert_eq!(
        mem[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok()),
        sensor["memory_limit_bytes"].as_f64(),
        "{mem:?}"
    );
}

#[test]
fn metrics_listen_only_on_loopback() {
    let mut dev = Device::new();
    dev.device["metrics"] = json!({ "listen": "0.0.0.0:9469" });
    dev.write_configs();
    let (code, err) = dev.run_expecting_exit(Duration::from_secs(20));
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("metrics.listen") && err.contains("loopback"),
        "{err}"
    );
    let mut dev = Device::new();
    dev.device["metrics"] = json!({ "listen": "127.0.0.1:9469", "port": 1 });
    dev.write_configs();
    let (code, err) = dev.run_expecting_exit(Duration::from_secs(20));
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("unknown field `port`"), "{err}");
}
