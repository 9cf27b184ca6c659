#![no_main]
//! `cargo +nightly fuzz run policy`: see nanoclaw::fuzzing::policy.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nanoclaw::fuzzing::policy(data);
});
