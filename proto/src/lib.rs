//! Wire types shared by the device (`nanoclaw`) and the fleet server (`nanoclaw-fleet`).
//!
//! `no_std` and allocation-free (the `alloc` feature adds frame encoding into a `Vec`) so the same definitions serve the supervisor's hot path, the
//! fleet server and fuzzers. Everything here is encoded with `postcard`; field order is the
//! wire contract, so new fields go at the end of a struct and new variants at the end of an enum.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod audit;
pub mod session;
pub mod sync;
