//! nanoclaw, the supervisor library behind the `nanoclaw` binary. Split from `main.rs` so
//! integration tests and benchmarks can use the same parsers, admission and audit code.
//!
//! Only [`sys`] may contain `unsafe`; every other module is checked by the workspace's
//! `unsafe_code = "deny"` lint.

pub mod admission;
pub mod agentapi;
pub mod agents;
pub mod audit;
pub mod board;
pub mod bpf;
pub mod bundle;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod fuzzing;
pub mod logring;
pub mod oneshot;
pub mod outbox;
pub mod policy;
pub mod power;
pub mod sandbox;
pub mod sigstore;
pub mod simulator;
pub mod support;
pub mod sys;
