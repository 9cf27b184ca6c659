#![no_main]
//! `cargo +nightly fuzz run sync`: see nanoclaw::fuzzing::sync.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nanoclaw::fuzzing::sync(data);
});
