#![no_main]
//! `cargo +nightly fuzz run agent_api`: see nanoclaw::fuzzing::agent_api.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nanoclaw::fuzzing::agent_api(data);
});
