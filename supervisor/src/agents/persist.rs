//! What must survive a supervisor restart about an agent: its recent starts (so a restarted
//! supervisor does not hand a crash-looping agent a fresh `max_per_hour` budget) and whether it
//! is *held* down (crash loop, finished task, operator stop) until an operator starts it.
//!
//! One small JSON file per agent in `<state_dir>/agents/`, replaced atomically (write, fsync,
//! rename). A record for another bundle version is ignored: a new version starts fresh.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::State;

/// Largest record accepted (the file is ours, but a full disk can leave anything).
const RECORD_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: String,
    /// Start times (ms since the epoch) within the crash-loop window.
    pub starts: Vec<u64>,
    pub restarts: u32,
    /// Set when the agent stays down until an operator starts it.
    pub held: Option<Held>,
    /// The decaying penalty behind its trust score.
    #[serde(default)]
    pub trust: Option<crate::policy::rules::Trust>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub state: HeldState,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldState {
    Stopped,
    Exited,
    Failed,
    /// A `quarantine` rule fired; only `nanoclaw clear` lets it run again.
    Quarantined,
}

impl HeldState {
    pub fn state(self) -> State {
        match self {
            HeldState::Stopped => State::Stopped,
            HeldState::Exited => State::Exited,
            HeldState::Failed => State::Failed,
            HeldState::Quarantined => State::Quarantined,
        }
    }
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The record of `name`, if there is a readable one.
pub fn load(dir: &Path, name: &str) -> Option<Record> {
    let p = path(dir, name);
    let meta = std::fs::metadata(&p).ok()?;
    if meta.len() > RECORD_MAX {
        return None;
    }
    serde_json::from_slice(&std::fs::read(&p).ok()?).ok()
}

/// Replaces the record of `name` atomically and durably.
pub fn save(dir: &Path, name: &str, rec: &Record) -> std::io::Result<()> {
    write_json_atomic(&path(dir, name), rec, true)
}

/// Replaces `path` with `value` as JSON atomically (write a sibling, rename), creating the
/// directory; `durable` also syncs the data before the rename. Every state file of the daemon
/// is written this way, so a power cut leaves the old or the new file, never half of one.
pub fn write_json_atomic(
    path: &Path,
    value: &impl serde::Serialize,
    durable: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_file_atomic(path, &bytes, durable)
}

/// Writes `bytes` to `path` through a temporary file and a rename (durable: fsynced first).
pub fn write_file_atomic(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        // The rename itself must reach the disk too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage_is_ignored() {
        let t = tempfile::tempdir().unwrap();
        let rec = Record {
            version: "1.0".into(),
            starts: vec![1, 2, 3],
            restarts: 2,
            held: Some(Held {
                state: HeldState::Failed,
                reason: "crash loop".into(),
            }),
            trust: Some(crate::policy::rules::Trust {
                penalty: 12.5,
                at_ms: 7,
            }),
        };
        save(t.path(), "a", &rec).unwrap();
        assert_eq!(load(t.path(), "a"), Some(rec));
        std::fs::write(t.path().join("b.json"), b"{not json").unwrap();
        assert_eq!(load(t.path(), "b"), None);
        assert_eq!(load(t.path(), "missing"), None);
    }
}
