#![no_main]
//! `cargo +nightly fuzz run signed`: see nanoclaw::fuzzing::signed.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nanoclaw::fuzzing::signed(data);
});
