#![no_main]
//! `cargo +nightly fuzz run manifest`: see nanoclaw::fuzzing::manifest.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nanoclaw::fuzzing::manifest(data);
});
