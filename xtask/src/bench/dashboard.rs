//! The fleet dashboard in a real headless Chromium with 10,000 devices registered and
//! reporting: the page's weight and the time from navigation to a complete first render of
//! its main views. The measuring is an ignored test in tests/e2e/dashboard.rs (it shares the
//! DevTools client and the fleet harness with the dashboard's own test); this section builds
//! the server as deployed (`--profile server`), runs it, and reports its one line.

use std::fmt::Write as _;

use super::{Ctx, Section, target};
use crate::util::{self, Result};

type Json = serde_json::Value;

/// Budgets for a dashboard an operator opens on a phone over a slow link.
const WEIGHT_BUDGET: f64 = 100.0 * 1024.0;
const RENDER_BUDGET_MS: f64 = 1000.0;

pub fn bench_dashboard(ctx: &Ctx) -> Result<Section> {
    util::run(util::cargo().args(["build", "--profile", "server", "-p", "nanoclaw-fleet"]))?;
    let bin = ctx.root.join("target/server/nanoclaw-fleet");
    let out = util::output(
        util::cargo()
            .env("NANOCLAW_FLEET_BIN", &bin)
            .args([
                "test",
                "-q",
                "-p",
                "nanoclaw-tests",
                "--test",
                "dashboard",
                "--",
            ])
            .args([
                "--ignored",
                "--exact",
                "bench_first_render_with_10000_devices",
                "--nocapture",
            ]),
    )?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("dashboard_bench "))
        .ok_or("the dashboard benchmark printed no result")?;
    let v: Json = serde_json::from_str(line).map_err(|e| format!("dashboard_bench: {e}"))?;
    let devices = v["devices"].as_u64().unwrap_or(0);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "`nanoclaw-fleet serve --admin` (`--profile server`, SQLite) with {devices} devices \
         registered: 20 real loadgen sessions with status reports, the rest given a check-in \
         time, a status report and one of 20 groups in the database. Debian's Chromium, \
         headless, 1280×900, cache off, DevTools over a pipe; each view is loaded 5 times \
         from `about:blank`, and the time is from navigation start to the moment a \
         MutationObserver sees the view complete (the overview's tiles and group rollouts, \
         100 rows of the device list, the device's agent table).\n"
    );
    let _ = writeln!(
        body,
        "| view | first render p50 (ms) | min–max (ms) | bytes fetched | of which the view's data |\n|---|---|---|---|---|"
    );
    let mut worst_ms: f64 = 0.0;
    let mut worst_bytes: f64 = 0.0;
    for name in ["overview", "device_list", "device"] {
        let s = &v[name];
        let times: Vec<f64> = s["first_render_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_f64).collect())
            .unwrap_or_default();
        let median = s["median_ms"].as_f64().unwrap_or(f64::NAN);
        let w = &s["weight"];
        let total = w["document"].as_f64().unwrap_or(0.0)
            + w["resources"]
                .as_array()
                .map(|r| r.iter().filter_map(|e| e["bytes"].as_f64()).sum::<f64>())
                .unwrap_or(0.0);
        let data: f64 = w["resources"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("/v1/")))
                    .filter_map(|e| e["bytes"].as_f64())
                    .sum()
            })
            .unwrap_or(0.0);
        worst_ms = worst_ms.max(median);
        worst_bytes = worst_bytes.max(total);
        let _ = writeln!(
            body,
            "| {} | {median:.0} | {:.0}–{:.0} | {:.1} KiB | {:.1} KiB |",
            name.replace('_', " "),
            times.first().copied().unwrap_or(f64::NAN),
            times.last().copied().unwrap_or(f64::NAN),
            total / 1024.0,
            data / 1024.0
        );
    }
    let files: Vec<String> = v["overview"]["weight"]["resources"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("/ui/")))
                .map(|e| {
                    format!(
                        "{} {:.1} KiB",
                        e["name"].as_str().unwrap_or("?"),
                        e["bytes"].as_f64().unwrap_or(0.0) / 1024.0
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        body,
        "\nThe page itself: index.html {:.1} KiB, {} — uncompressed, no framework, no \
         build step, nothing from another origin. Reproduce: `cargo xtask bench --only \
         dashboard`.",
        v["overview"]["weight"]["document"].as_f64().unwrap_or(0.0) / 1024.0,
        files.join(", ")
    );
    Ok(Section {
        title: format!("Fleet dashboard, {devices} devices"),
        body,
        targets: vec![
            target(
                "Dashboard page weight, largest view (HTML, JS, CSS, icon and the view's data)",
                "≤ 100 KiB",
                format!("{:.1} KiB", worst_bytes / 1024.0),
                Some(worst_bytes <= WEIGHT_BUDGET),
            ),
            target(
                &format!("Dashboard first render with {devices} devices, slowest view p50"),
                "≤ 1 s",
                format!("{worst_ms:.0} ms"),
                Some(worst_ms <= RENDER_BUDGET_MS),
            ),
        ],
        busy: None,
    })
}
