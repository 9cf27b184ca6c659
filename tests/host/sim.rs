//! `nanoclaw sim`: a whole supervisor with production enforcement on this machine, its live
//! decisions and its per-agent report (denials with the grant that would allow them, unused
//! grants, peak memory against the budget, energy).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use nanoclaw_tests::{bins, manifest, require_root};
use serde_json::{Value, json};

fn agent_dir(root: &Path, name: &str, manifest: &Value) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    std::fs::copy(&bins().demo_agent, dir.join("rootfs/bin/demo-agent")).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir
}

#[test]
fn sim_reports_denials_unused_grants_memory_and_energy() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let mut m = manifest(
        "netter",
        "task",
        &[
            "connect",
            &format!("127.0.0.1:{pa}"),
            &format!("127.0.0.1:{pd}"),
            &format!("127.0.0.1:{pd}"),
        ],
        "32MiB",
    );
    // Two destinations requested; the agent only ever uses the first.
    m["requests"]["network"] = json!([format!("127.0.0.1:{pa}/tcp"), "127.0.0.1:9/tcp"]);
    let netter = agent_dir(tmp.path(), "netter", &m);
    let quiet = agent_dir(
        tmp.path(),
        "quiet",
        &manifest("quiet", "task", &["exit", "0"], "8MiB"),
    );

    let out = Command::new(&bins().nanoclaw)
        .args(["sim", "--json", "--seconds", "60", "--agent"])
        .arg(&netter)
        .arg("--agent")
        .arg(&quiet)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Live decisions first, then the report.
    assert!(
        stdout.contains("production enforcement") && stdout.contains("every agent has finished"),
        "{stdout}"
    );
    let live = stdout
        .lines()
        .find(|l| l.contains("DENY") && l.contains("denied_connect"))
        .unwrap_or_else(|| panic!("no live denial line:\n{stdout}"));
    assert!(live.contains(&format!("127.0.0.1:{pd}/tcp")), "{live}");
    let json_start = stdout.find("\n{\n").expect("a JSON report");
    let report: Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    let agents = report["agents"].as_array().unwrap();
    let of = |n: &str| agents.iter().find(|a| a["agent"] == n).unwrap().clone();

    let n = of("netter");
    let d = n["denied"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{n:#}");
    assert_eq!(d[0]["what"], format!("connect to 127.0.0.1:{pd}/tcp"));
    assert_eq!(d[0]["count"], 2);
    assert!(
        d[0]["allow"]
            .as_str()
            .unwrap()
            .contains(&format!("\"127.0.0.1:{pd}/tcp\" to requests.network")),
        "{n:#}"
    );
    let unused: Vec<&str> = n["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["what"].as_str().unwrap())
        .collect();
    assert!(unused.contains(&"network 127.0.0.1:9/tcp"), "{unused:?}");
    assert!(
        !unused.iter().any(|u| u.contains(&pa.to_string())),
        "the used destination is not unused: {unused:?}"
    );
    assert!(
        unused
            .iter()
            .any(|u| u.starts_with("memory 32.0MiB granted")),
        "{unused:?}"
    );
    let peak = n["memory"]["peak_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak < 32 << 20, "{n:#}");
    assert_eq!(n["memory"]["limit_bytes"], 32u64 << 20);
    assert!(n["energy"]["total_mwh"].as_f64().is_some(), "{n:#}");

    let q = of("quiet");
    assert!(q["denied"].as_array().unwrap().is_empty(), "{q:#}");
    assert_eq!(q["state"], "exited");

    // Nothing is left behind: no state directory, no cgroups.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("nanoclaw-sim-"))
        .filter(|e| std::fs::read_link(e.path().join("agents/netter")).ok() == Some(netter.clone()))
        .collect();
    assert!(leftovers.is_empty(), "the simulator left its state behind");
    let cg: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/memory")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("nanoclaw-sim-"))
        .collect();
    assert!(cg.is_empty(), "cgroups left behind: {cg:?}");

    // The same run for people: the denial with its grant, and what to tighten.
    let out = Command::new(&bins().nanoclaw)
        .args(["sim", "--seconds", "60", "--agent"])
        .arg(&netter)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("== nanoclaw sim report"), "{text}");
    assert!(
        text.contains(&format!("2× connect to 127.0.0.1:{pd}/tcp")),
        "{text}"
    );
    assert!(
        text.contains("to allow:") && text.contains("tighten"),
        "{text}"
    );
}

#[test]
fn sim_refuses_bad_input() {
    require_root();
    let out = Command::new(&bins().nanoclaw)
        .args(["sim"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent"));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("manifest.json"), "{\"name\": 1}").unwrap();
    let out = Command::new(&bins().nanoclaw)
        .args(["sim", "--agent"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("manifest"), "{err}");
}
