//! Deriving a manifest's `requests` from what the agent declares next to its code, so the
//! author writes each need once, where it is used:
//!
//! ```text
//! # nanoclaw:request memory=32MiB cpus=0.25
//! # nanoclaw:request network=api.example.com:443/tcp
//! ```
//!
//! `nanoclaw bundle pack` does this when `manifest.json` has no `requests`: it scans the
//! given files and directories (default: the bundle's `rootfs/`) for `nanoclaw:request`
//! followed by `key=value` words, in any comment syntax. Lists (`network`, `devices`)
//! accumulate; a single value given twice differently is an error naming both places.
//! Files over 1 MiB and binary files are skipped; every value is checked as the manifest
//! would check it, and errors name the file and line.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::manifest::{Destination, SyscallProfile};
use crate::config::units::ByteSize;

const MARKER: &str = "nanoclaw:request";
const MAX_FILE: u64 = 1 << 20;
const MAX_FILES: usize = 10_000;

/// The derived `requests` object and, per value, where it came from (`memory=32MiB
/// (app/main.py:3)`), for the author to see.
pub fn requests(roots: &[PathBuf]) -> Result<(Map<String, Value>, Vec<String>), String> {
    let mut files = Vec::new();
    for r in roots {
        list(r, &mut files)?;
    }
    files.sort();
    let mut out = Map::new();
    let mut notes = Vec::new();
    let mut seen: Vec<(String, String, String)> = Vec::new(); // key, value, place
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        if bytes.iter().take(8192).any(|&b| b == 0) {
            continue; // binary
        }
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            let Some(at) = line.find(MARKER) else {
                continue;
            };
            let place = format!("{}:{}", f.display(), n + 1);
            for word in line[at + MARKER.len()..].split_whitespace() {
                let Some((key, value)) = word.split_once('=') else {
                    break; // the end of the declaration (`*/`, `-->`, prose)
                };
                let v = check(key, value).map_err(|e| format!("{place}: {key}={value}: {e}"))?;
                notes.push(format!("{key}={value} ({place})"));
                if matches!(key, "network" | "devices") {
                    let list = out.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(a) = list
                        && !a.contains(&v)
                    {
                        a.push(v);
                    }
                    continue;
                }
                if let Some((_, old, at)) = seen.iter().find(|(k, _, _)| k == key) {
                    if old != value {
                        return Err(format!(
                            "{place}: {key}={value} contradicts {key}={old} at {at}"
                        ));
                    }
                    continue;
                }
                seen.push((key.into(), value.into(), place.clone()));
                out.insert(key.into(), v);
            }
        }
    }
    if !out.contains_key("memory") {
        return Err(format!(
            "manifest.json has no `requests` and no `{MARKER} memory=...` declaration was \
             found in {}; declare at least the memory the agent needs",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((out, notes))
}

/// One value, checked the way the manifest parser will check it.
fn check(key: &str, value: &str) -> Result<Value, String> {
    let s = || Value::String(value.into());
    match key {
        "memory" | "scratch" => value
            .parse::<ByteSize>()
            .map(|_| s())
            .map_err(|e| e.to_string()),
        "cpus" => value
            .parse::<f64>()
            .ok()
            .and_then(|c| serde_json::Number::from_f64(c).map(Value::Number))
            .ok_or_else(|| "not a number".into()),
        "pids" => value
            .parse::<u32>()
            .map(Value::from)
            .map_err(|_| "not a whole number".into()),
        "network" => value
            .parse::<Destination>()
            .map(|_| s())
            .map_err(|e| e.to_string()),
        "devices" => Ok(s()),
        "syscalls" => serde_json::from_value::<SyscallProfile>(s())
            .map(|_| s())
            .map_err(|_| "must be strict or default".into()),
        _ => Err(
            "unknown key; expected memory, cpus, pids, scratch, network, devices or syscalls"
                .into(),
        ),
    }
}

fn list(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let m = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if m.is_file() {
        if m.len() <= MAX_FILE {
            if out.len() >= MAX_FILES {
                return Err(format!(
                    "more than {MAX_FILES} files to scan for declarations"
                ));
            }
            out.push(p.to_path_buf());
        }
    } else if m.is_dir() {
        for e in std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", p.display()))?;
            list(&e.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_become_requests_and_bad_ones_are_named() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(
            app.join("main.py"),
            "# nanoclaw:request memory=32MiB cpus=0.25\nimport x\n\
             # nanoclaw:request network=10.0.0.5:6379/tcp\n",
        )
        .unwrap();
        std::fs::write(
            app.join("net.js"),
            "/* nanoclaw:request network=api.example.com:443/tcp memory=32MiB */\n",
        )
        .unwrap();
        std::fs::write(app.join("blob"), b"\0nanoclaw:request memory=1GiB").unwrap();
        let (r, notes) = requests(&[t.path().to_path_buf()]).unwrap();
        assert_eq!(r["memory"], "32MiB");
        assert_eq!(r["cpus"], 0.25);
        assert_eq!(
            r["network"],
            serde_json::json!(["10.0.0.5:6379/tcp", "api.example.com:443/tcp"])
        );
        assert!(notes.iter().any(|n| n.contains("main.py:1")), "{notes:?}");

        std::fs::write(app.join("b.py"), "# nanoclaw:request memory=64MiB\n").unwrap();
        let e = requests(&[t.path().to_path_buf()]).unwrap_err();
        // Files are read in path order: b.py comes first.
        assert!(
            e.contains("main.py:1: memory=32MiB contradicts memory=64MiB at "),
            "{e}"
        );
        std::fs::write(app.join("b.py"), "# nanoclaw:request colour=red\n").unwrap();
        let e = requests(&[t.path().to_path_buf()]).unwrap_err();
        assert!(e.contains("b.py:1: colour=red: unknown key"), "{e}");
        std::fs::write(
            app.join("b.py"),
            "# nanoclaw:request network=10.0.0.5/tcp\n",
        )
        .unwrap();
        let e = requests(&[t.path().to_path_buf()]).unwrap_err();
        assert!(e.contains("missing :port"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = requests(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(e.contains("no `requests`"), "{e}");
    }
}
