//! Client for the nanoclaw agent socket (docs/AGENT_API.md): an agent inside its sandbox
//! says `hello`, sends heartbeats, writes to the outbox, talks to other agents along the
//! channels its policy declares and presents grant tokens, without speaking the
//! newline-delimited JSON itself. Blocking and thread-safe, std only (plus `serde_json`), so
//! it builds into a small static musl binary. sdk/CONFORMANCE.md is the contract shared with
//! the Python, JavaScript and Go SDKs; README.md has an example agent.

mod client;
mod error;
mod types;

pub use client::{ANSWER_TIMEOUT, Client, DEFAULT_SOCKET, Heartbeat, SOCKET_ENV};
pub use error::{Code, Error, Result};
pub use types::{
    Channels, Config, Energy, Grant, Hello, Message, ReceiveChannel, SendChannel, Sent, Whoami,
};
