//! Host tier on the `sim` board: energy attributed by real CPU time, an energy budget
//! throttling an agent and releasing it at window rollover, and battery tiers freezing
//! background agents until the charger is plugged in.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nanoclaw_tests::{Device, LONG, cgroup_v1, grant, manifest};
use serde_json::{Value, json};

fn battery(dev: &Device) -> Value {
    dev.json(&["battery"])
}

fn agent_energy(b: &Value, name: &str) -> Value {
    b["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == name)
        .unwrap_or_else(|| panic!("battery lists no {name}: {b}"))
        .clone()
}

/// CPU time of the agent's cgroup, ns (`cpu.stat` of its cgroup2 directory: the hybrid
/// `unified` hierarchy on v1 hosts).
fn cpu_ns(dev: &Device, agent: &str) -> u64 {
    let controller = if cgroup_v1() { "unified" } else { "" };
    let s = std::fs::read_to_string(dev.cgroup_file(controller, agent, "cpu.stat")).unwrap();
    let us: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .parse()
        .unwrap();
    us * 1000
}

fn burner(dev: &mut Device, name: &str, cpus: f64, class: &str, extra: Value) {
    let mut m = manifest(name, "service", &["burn"], "16MiB");
    m["class"] = json!(class);
    m["requests"]["cpus"] = json!(cpus);
    let mut g = grant("16MiB");
    g["cpus"] = json!(cpus);
    if let Value::Object(x) = extra {
        for (k, v) in x {
            g[k] = v;
        }
    }
    dev.add_agent(name, m, Some(g));
}

/// Two CPU-burning agents held to 0.75 and 0.25 CPU get energy within 5 % of 3:1.
#[test]
fn energy_follows_cpu_time() {
    let mut dev = Device::new();
    dev.device["energy_period_ms"] = json!(500);
    burner(&mut dev, "big", 0.75, "normal", json!({}));
    burner(&mut dev, "small", 0.25, "normal", json!({}));
    dev.start();
    dev.wait_state("big", "running");
    dev.wait_state("small", "running");
    let b = dev.wait(Duration::from_secs(40), "a few mWh attributed", || {
        let b = battery(&dev);
        (agent_energy(&b, "small")["total_mwh"].as_f64()? > 1.0).then_some(b)
    });
    assert_eq!(b["board"], "sim");
    assert!(
        b["source"]
            .as_str()
            .unwrap()
            .starts_with("power_supply:sim-battery"),
        "{b}"
    );
    let big = agent_energy(&b, "big")["total_mwh"].as_f64().unwrap();
    let small = agent_energy(&b, "small")["total_mwh"].as_f64().unwrap();
    let ratio = big / small;
    assert!(
        (ratio - 3.0).abs() <= 0.15,
        "energy {big:.3} : {small:.3} mWh = {ratio:.3}, not 3:1 ±5 %"
    );
}

/// An agent over its energy budget is throttled (its work rate drops to about a quarter) and
/// released when its window rolls over; both transitions are audited.
#[test]
fn energy_budget_throttles_until_the_window_rolls_over() {
    let mut dev = Device::new();
    dev.device["energy_period_ms"] = json!(250);
    // 2 W per busy core: a full core costs 0.56 mWh per second, so 1 mWh lasts about 2 s of an
    // 8 s window.
    burner(
        &mut dev,
        "cruncher",
        1.0,
        "normal",
        json!({ "energy": { "budget_mwh": 1, "window_s": 8, "action": "throttle" } }),
    );
    // The same budget with `stop`: stopped, then started again when its window rolls over.
    burner(
        &mut dev,
        "halter",
        1.0,
        "normal",
        json!({ "energy": { "budget_mwh": 1, "window_s": 8, "action": "stop" } }),
    );
    dev.start();
    dev.wait_state("cruncher", "running");
    let before = {
        let a = cpu_ns(&dev, "cruncher");
        std::thread::sleep(Duration::from_millis(500));
        cpu_ns(&dev, "cruncher") - a
    };
    dev.wait(Duration::from_secs(20), "throttled by its budget", || {
        (dev.agent("cruncher")["state"] == "throttled").then_some(())
    });
    let during = {
        let a = cpu_ns(&dev, "cruncher");
        std::thread::sleep(Duration::from_millis(500));
        cpu_ns(&dev, "cruncher") - a
    };
    assert!(
        (during as f64) < before as f64 * 0.5,
        "CPU over 0.5 s: {before} ns before, {during} ns throttled"
    );
    let b = battery(&dev);
    let a = agent_energy(&b, "cruncher");
    assert_eq!(a["energy_hold"], "throttle", "{a}");
    assert_eq!(a["budget_mwh"], 1);
    dev.wait(Duration::from_secs(20), "released at rollover", || {
        (dev.agent("cruncher")["state"] == "running").then_some(())
    });
    let texts: Vec<String> = dev
        .audit_of("energy")
        .iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("energy budget used up")
            && t.contains("throttled until the window ends")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("rolled over: released")),
        "{texts:?}"
    );
    let halted = dev.wait(Duration::from_secs(30), "halter started again", || {
        let t: Vec<Value> = dev
            .audit_of("energy")
            .into_iter()
            .filter(|r| r["agent"] == "halter")
            .collect();
        t.iter()
            .any(|r| {
                r["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("started again")
            })
            .then_some(t)
    });
    assert!(
        halted.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled over: released")),
        "{halted:?}"
    );
    let stops = dev.audit_of("stop");
    assert!(
        stops.iter().any(|r| r["agent"] == "halter"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("energy budget used up")),
        "{stops:?}"
    );
}

/// Below a battery tier background agents freeze (kernel FROZEN, no CPU), critical agents
/// keep running; the charger resumes them.
#[test]
fn battery_tier_freezes_background_agents_until_the_charger_is_plugged() {
    let mut dev = Device::new();
    dev.device["energy_period_ms"] = json!(250);
    dev.policy["device"]["battery"] = json!([
        { "below_percent": 30, "background": "freeze", "normal": "throttle" }
    ]);
    burner(&mut dev, "bg", 0.25, "background", json!({}));
    burner(&mut dev, "crit", 0.25, "critical", json!({}));
    dev.start();
    dev.wait_state("bg", "running");
    dev.wait_state("crit", "running");
    let out = dev.cli(&["sim", "set", "charge=25"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(LONG, "bg frozen", || {
        (dev.agent("bg")["state"] == "frozen").then_some(())
    });
    let frozen = cpu_ns(&dev, "bg");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(cpu_ns(&dev, "bg"), frozen, "a frozen agent used CPU");
    assert_eq!(dev.agent("crit")["state"], "running");
    let b = battery(&dev);
    assert_eq!(b["tier"]["below_percent"], 30, "{b}");
    assert_eq!(agent_energy(&b, "bg")["tier_hold"], "freeze");
    assert!(agent_energy(&b, "crit")["tier_hold"].is_null());
    // Hovering just above the threshold does not thaw it (hysteresis: 35 %).
    dev.cli(&["sim", "set", "charge=32"]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(dev.agent("bg")["state"], "frozen");
    // The charger lifts the tier.
    let out = dev.cli(&["sim", "set", "charger=on"]);
    assert_eq!(out.code, 0, "{out:?}");
    dev.wait(LONG, "bg thawed", || {
        (dev.agent("bg")["state"] == "running").then_some(())
    });
    let thawed = cpu_ns(&dev, "bg");
    std::thread::sleep(Duration::from_millis(600));
    assert!(cpu_ns(&dev, "bg") > thawed, "a thawed agent runs again");
    let texts: Vec<String> = dev
        .audit_of("battery")
        .iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("tier 0 in force")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("tiers lifted")),
        "{texts:?}"
    );
    // Out of range.
    let out = dev.cli(&["sim", "set", "charge=101"]);
    assert_eq!(out.code, 1, "{out:?}");
}
