//! The control socket: one newline-terminated JSON request, one JSON response, then close.
//!
//! Line-delimited JSON keeps the CLI thin and lets field engineers script against the socket
//! with `socat` when the CLI is not at hand. Access is root-only twice over: the socket file is
//! mode 0600 and every connection's `SO_PEERCRED` uid must be 0.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const REQUEST_MAX: usize = 8192;
/// Largest response the client accepts.
pub const RESPONSE_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Agents,
    Start {
        agent: String,
    },
    Stop {
        agent: String,
    },
    Restart {
        agent: String,
    },
    Logs {
        agent: String,
        n: usize,
    },
    Audit {
        agent: Option<String>,
        n: usize,
    },
    Why {
        agent: String,
    },
    Reload,
    /// Install a bundle archive (its signature next to it as `FILE.sigstore.json`).
    Install {
        path: std::path::PathBuf,
    },
    /// Switch an agent back to the version installed before the current one.
    Rollback {
        agent: String,
    },
    /// Judge and apply a policy document (bare or fleet-signed) from a file.
    PolicyApply {
        path: std::path::PathBuf,
    },
    /// Lift an agent's quarantine (and reset its trust score), then start it.
    Clear {
        agent: String,
    },
    /// Battery, power source, tier and per-agent energy.
    Battery,
    /// Change the simulated battery (the `sim` board).
    SimSet {
        percent: Option<f64>,
        charger: Option<bool>,
        speed: Option<f64>,
    },
    /// Check in with the fleet server now.
    Sync,
    /// Verify a field-engineer token for the console on `tty` (audited).
    Unlock {
        tty: String,
        token: String,
    },
    /// A console line: audited with who ran it; `request` runs if it reads only, or if
    /// `token` is a valid field-engineer token. Without `request`, only the line is audited
    /// (lock, hangup).
    Console {
        tty: String,
        token: Option<String>,
        line: String,
        request: Option<Box<Request>>,
    },
}

impl Request {
    /// Whether the request changes the device (the console needs an unlock for these).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::Agents
                | Request::Logs { .. }
                | Request::Audit { .. }
                | Request::Why { .. }
                | Request::Battery
        )
    }
}

/// Error classes, mapped one-to-one onto CLI exit codes (docs/CLI.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed.
    BadRequest,
    /// No such agent.
    NotFound,
    /// The peer is not root.
    Permission,
    /// The operation was attempted and failed (e.g. an invalid policy on reload).
    Failed,
}

impl ErrorCode {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Failed => exit::FAILED,
            ErrorCode::BadRequest => exit::USAGE,
            ErrorCode::NotFound => exit::NOT_FOUND,
            ErrorCode::Permission => exit::PERMISSION,
        }
    }
}

/// CLI exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const PERMISSION: u8 = 5;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Ok(serde_json::Value),
    Error { code: ErrorCode, message: String },
}
