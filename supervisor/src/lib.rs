//! nanoclaw, the supervisor library behind the `nanoclaw` binary. Split from `main.rs` so
//! integration tests and benchmarks can use the same parsers, admission and audit code.
//!
//! Only [`sys`] may contain `unsafe`; every other module is checked by the workspace's
//! `unsafe_code = "deny"` lint.
//!
//! Messages to stderr go through [`log!`], never `eprintln!`: stderr is often a file on the
//! device's disk, and `eprintln!` panics when a write fails (a full disk), which with
//! `panic = "abort"` would end the daemon.

#![deny(clippy::print_stderr)]

/// `eprintln!` that drops a failed write instead of panicking (see the crate docs).
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {
        $crate::log_line(format_args!($($t)*))
    };
}

/// What [`log!`] calls: one copy of the write, not one per call site (binary size).
#[inline(never)]
pub fn log_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{args}");
}

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
