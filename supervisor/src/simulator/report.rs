//! The simulator's per-agent report, built from what the daemon answers (`agents`, `status`,
//! `battery`, `audit`). Pure: JSON in, JSON and text out.
//!
//! Denials are grouped by what was attempted, each with the grant that would allow it;
//! grants the agent never used are listed so the author can tighten the manifest before the
//! fleet operator has to.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::cli::size;

/// Memory use below this share of the budget suggests a smaller request.
const LOW_MEMORY_SHARE: f64 = 0.5;

/// One agent's report.
pub fn agent(
    name: &str,
    info: &Value,
    enforcement: &Value,
    energy: &Value,
    records: &[Value],
) -> Value {
    let mut denied: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut note = |kind: &str, what: String, allow: String| {
        denied
            .entry((kind.to_owned(), what))
            .or_insert((0, allow))
            .0 += 1;
    };
    for r in records {
        let reason = r["reason"].as_str().unwrap_or("");
        if reason.contains("(rate-limited)") {
            continue; // counted in events_total below
        }
        match r["kind"].as_str().unwrap_or("") {
            "denied_connect" => {
                let what = reason.split(" denied by").next().unwrap_or(reason);
                let dest = what.split_once(" to ").map_or(what, |(_, d)| d);
                note(
                    "connect",
                    what.to_owned(),
                    format!(
                        "add \"{dest}\" to requests.network in manifest.json, and the operator to agents.{name}.network in the policy"
                    ),
                );
            }
            "denied_exec" => note(
                "exec",
                reason.to_owned(),
                "ship the program in the bundle's rootfs/: agents may only run files of their own bundle".into(),
            ),
            "denied_operation" => note(
                "operation",
                reason.to_owned(),
                "no grant allows this (mount, ptrace, raw sockets, files outside the sandbox): change the agent".into(),
            ),
            "admission_denied" => note(
                "admission",
                reason.to_owned(),
                format!("lower the request in manifest.json, or the operator raises the grant under agents.{name} in the policy"),
            ),
            "oom_kill" => note(
                "memory",
                reason.split(';').next().unwrap_or(reason).to_owned(),
                "raise requests.memory (and the policy grant): the peak is in the record".into(),
            ),
            "exit" if reason.contains("signal 31") => note(
                "syscall",
                "killed by SIGSYS: a system call outside its seccomp profile".into(),
                format!(
                    "request \"syscalls\": \"default\" if it asks for \"strict\"; with \"default\" the call is refused for every agent (see `nanoclaw audit --agent {name}`)"
                ),
            ),
            "sandbox_error" => note("sandbox", reason.to_owned(), "see the reason".into()),
            "channel_refused" => note(
                "message",
                reason.to_owned(),
                "declare the channel under channels in the policy".into(),
            ),
            "bad_message" => note(
                "socket",
                reason.to_owned(),
                "fix the agent's client of /run/nanoclaw.sock (docs/AGENT_API.md)".into(),
            ),
            "grant_refused" => note("grant", reason.to_owned(), "see the reason".into()),
            _ => {}
        }
    }
    let denied: Vec<Value> = denied
        .into_iter()
        .map(|((kind, what), (count, allow))| {
            json!({"kind": kind, "what": what, "count": count, "allow": allow})
        })
        .collect();

    let mut unused = Vec::new();
    let uses = enforcement["network_use"].as_object();
    for (rule, n) in uses.into_iter().flatten() {
        if n.as_u64() == Some(0) {
            unused.push(json!({
                "what": format!("network {rule}"),
                "suggest": format!("never used: drop \"{rule}\" from requests.network"),
            }));
        }
    }
    let peak = info["memory_peak_bytes"].as_u64().unwrap_or(0);
    let limit = info["memory_limit_bytes"].as_u64().unwrap_or(0);
    if limit > 0 && peak > 0 && (peak as f64) < LOW_MEMORY_SHARE * limit as f64 {
        // Half again the peak, rounded up to a MiB.
        let want = (peak + peak / 2).div_ceil(1 << 20).max(1);
        unused.push(json!({
            "what": format!("memory {} granted, peak {}", size(limit), size(peak)),
            "suggest": format!("requests.memory \"{want}MiB\" would do"),
        }));
    }
    let total = |k: &str| enforcement["events_total"][k].as_u64().unwrap_or(0);
    json!({
        "agent": name,
        "version": info["version"],
        "mode": info["mode"],
        "state": info["state"],
        "last_exit": info["last_exit"],
        "restarts": info["restarts"],
        "denied": denied,
        "denied_total": {
            "connects": total("denied_connects"),
            "execs": total("denied_execs"),
            "operations": total("denied_operations"),
            "anomalies": total("anomalies"),
            "oom_kills": total("oom_kills"),
        },
        "unused": unused,
        "memory": { "peak_bytes": peak, "limit_bytes": limit },
        "energy": {
            "total_mwh": energy["total_mwh"],
            "budget_mwh": energy["budget_mwh"],
            "window_s": energy["window_s"],
        },
    })
}

/// The report for people.
pub fn render(report: &Value) -> String {
    let mut out = format!(
        "\n== nanoclaw sim report: {} agent(s), {:.1} s on board {} ==\n",
        report["agents"].as_array().map_or(0, Vec::len),
        report["seconds"].as_f64().unwrap_or(0.0),
        report["board"].as_str().unwrap_or("sim"),
    );
    for a in report["agents"].as_array().into_iter().flatten() {
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            v => v.to_string(),
        };
        out += &format!(
            "\n{} {} ({}): {}{}, {} restart(s)\n",
            s(&a["agent"]),
            s(&a["version"]),
            s(&a["mode"]),
            s(&a["state"]),
            a["last_exit"]
                .as_str()
                .map_or(String::new(), |e| format!(" ({e})")),
            s(&a["restarts"]),
        );
        let denied = a["denied"].as_array().filter(|d| !d.is_empty());
        match denied {
            None => out += "  denied    nothing\n",
            Some(d) => {
                for x in d {
                    out += &format!(
                        "  denied    {}× {}\n            to allow: {}\n",
                        s(&x["count"]),
                        s(&x["what"]),
                        s(&x["allow"])
                    );
                }
            }
        }
        let t = &a["denied_total"];
        let audited_connects: u64 = denied
            .into_iter()
            .flatten()
            .filter(|x| x["kind"] == "connect")
            .filter_map(|x| x["count"].as_u64())
            .sum();
        if t["connects"].as_u64().unwrap_or(0) > audited_connects {
            out += &format!(
                "            ({} denied connects in all; the audit log keeps 10 a second)\n",
                t["connects"]
            );
        }
        if t["anomalies"].as_u64().unwrap_or(0) > 0 {
            out += &format!(
                "  watched   {} syscall anomalies (outside the learned baseline; see `nanoclaw audit`)\n",
                t["anomalies"]
            );
        }
        for u in a["unused"].as_array().into_iter().flatten() {
            out += &format!("  tighten   {}: {}\n", s(&u["what"]), s(&u["suggest"]));
        }
        let m = &a["memory"];
        let (peak, limit) = (
            m["peak_bytes"].as_u64().unwrap_or(0),
            m["limit_bytes"].as_u64().unwrap_or(0),
        );
        out += &format!(
            "  memory    peak {} of {}{}\n",
            size(peak),
            size(limit),
            if limit > 0 {
                format!(" ({:.0} %)", peak as f64 * 100.0 / limit as f64)
            } else {
                String::new()
            }
        );
        let e = &a["energy"];
        let mwh = e["total_mwh"].as_f64().unwrap_or(0.0);
        out += &format!(
            "  energy    {} ({:.3} J){}\n",
            if mwh < 0.1 {
                format!("{:.1} µWh", mwh * 1000.0)
            } else {
                format!("{mwh:.2} mWh")
            },
            mwh * 3.6,
            match (e["budget_mwh"].as_u64(), e["window_s"].as_u64()) {
                (Some(b), Some(w)) => format!("; budget {b} mWh per {w} s"),
                _ => "; no energy budget".into(),
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_get_their_grant_and_unused_grants_a_suggestion() {
        let info = json!({"version": "1.0.0", "mode": "task", "state": "exited",
            "last_exit": "exit code 0", "restarts": 0,
            "memory_peak_bytes": 2 << 20, "memory_limit_bytes": 32 << 20});
        let enf = json!({
            "network_use": {"127.0.0.1:80/tcp": 3, "10.0.0.9:6379/tcp": 0},
            "events_total": {"denied_connects": 14, "anomalies": 0},
        });
        let energy = json!({"total_mwh": 0.5, "budget_mwh": 2, "window_s": 60});
        let rec = |kind: &str, reason: &str| json!({"kind": kind, "reason": reason});
        let records = [
            rec("start", "started"),
            rec(
                "denied_connect",
                "connect to 1.2.3.4:443/tcp denied by the egress allowlist: not in requests.network",
            ),
            rec(
                "denied_connect",
                "connect to 1.2.3.4:443/tcp denied by the egress allowlist: not in requests.network",
            ),
            rec(
                "denied_connect",
                "12 more denied connections in the last second (rate-limited)",
            ),
            rec("exit", "killed by signal 31"),
        ];
        let r = agent("cam", &info, &enf, &energy, &records);
        let d = r["denied"].as_array().unwrap();
        assert_eq!(d.len(), 2, "{r:#}");
        assert_eq!(d[0]["what"], "connect to 1.2.3.4:443/tcp");
        assert_eq!(d[0]["count"], 2);
        assert!(
            d[0]["allow"]
                .as_str()
                .unwrap()
                .contains("\"1.2.3.4:443/tcp\" to requests.network")
        );
        assert_eq!(d[1]["kind"], "syscall");
        let u = r["unused"].as_array().unwrap();
        assert_eq!(u.len(), 2, "{r:#}");
        assert!(u[0]["what"].as_str().unwrap().contains("10.0.0.9:6379/tcp"));
        assert!(u[1]["suggest"].as_str().unwrap().contains("\"3MiB\""));
        let text = render(&json!({"seconds": 5.0, "board": "sim", "agents": [r]}));
        assert!(text.contains("2× connect to 1.2.3.4:443/tcp"), "{text}");
        assert!(text.contains("14 denied connects in all"), "{text}");
        assert!(text.contains("peak 2.0MiB of 32.0MiB (6 %)"), "{text}");
        assert!(text.contains("budget 2 mWh per 60 s"), "{text}");
    }

    #[test]
    fn a_quiet_agent_reports_nothing_denied() {
        let info = json!({"memory_peak_bytes": 30 << 20, "memory_limit_bytes": 32 << 20});
        let r = agent("ok", &info, &json!({}), &json!({}), &[]);
        assert!(r["denied"].as_array().unwrap().is_empty());
        assert!(r["unused"].as_array().unwrap().is_empty());
        assert!(render(&json!({"agents": [r]})).contains("denied    nothing"));
    }
}
