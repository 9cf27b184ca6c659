//! The answers, typed, with the wire's field names. Unknown fields are ignored and fields a
//! supervisor may leave out or send as `null` are `Option`s (or empty lists), so an agent
//! built with this SDK keeps working against newer and older supervisors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The answer to `hello`, given once per connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Hello {
    pub agent: String,
    pub version: String,
    pub device_id: String,
    pub protocol: u32,
    /// The manifest's `health.heartbeat_s`: a heartbeat is due at least every twice this.
    pub heartbeat_s: Option<u64>,
}

/// The answer to `whoami`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Whoami {
    pub agent: String,
    pub version: String,
    pub uid: Option<u32>,
    pub device_id: String,
    /// The agent's state as the supervisor sees it (`running`, ...).
    pub state: Option<String>,
    /// Trust score, 0 to 100.
    pub trust: Option<u32>,
    pub policy_version: Option<u64>,
}

/// The answer to `config`: the effective grant and budgets. A limit the supervisor has not
/// admitted (yet) is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Config {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub scratch_bytes: Option<u64>,
    /// Egress allowlist entries, as text.
    pub network: Option<Vec<String>>,
    /// Capabilities a grant token may add.
    #[serde(default)]
    pub grantable: Vec<String>,
    /// Grants in force now.
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub channels: Channels,
    pub heartbeat_s: Option<u64>,
    pub policy_version: Option<u64>,
    /// The energy budget, when the policy sets one.
    #[serde(default)]
    pub energy: Option<Energy>,
    /// The manifest's runtime, when it names one.
    #[serde(default)]
    pub runtime: Option<String>,
}

/// The channels the policy declares for this agent, in the policy's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Channels {
    #[serde(default)]
    pub send: Vec<SendChannel>,
    #[serde(default)]
    pub receive: Vec<ReceiveChannel>,
}

/// A channel this agent may send along (`topic` `*` is any topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SendChannel {
    pub to: String,
    pub topic: String,
}

/// A channel this agent may receive from (`topic` `*` is any topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReceiveChannel {
    pub from: String,
    pub topic: String,
}

/// An energy budget and what the current window used of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Energy {
    pub budget_mwh: u64,
    pub window_s: u64,
    #[serde(default)]
    pub used_mwh: f64,
}

/// A capability held until `not_after` (seconds since the epoch): the answer to
/// `request_capability`, and an entry of [`Config::grants`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Grant {
    pub capability: String,
    pub not_after: u64,
}

/// The answer to `send`: how many of the receiver's connections it reached, or (when none)
/// its place in the receiver's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sent {
    pub delivered: u64,
    pub queued: Option<u64>,
}

/// A message from another agent (an `event: message` line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    pub from: String,
    pub topic: String,
    #[serde(default)]
    pub data: Value,
}
