//! The round trip program (sdk/CONFORMANCE.md): the latency of one call as the caller sees
//! it, for `cargo xtask bench --only sdk`.

use std::time::{Duration, Instant};

use nanoclaw_agent::Client;

/// Calls, one after another: inside the socket's burst of 100 messages.
const N: usize = 90;

fn main() {
    let lang = std::env::var("LANG_NAME").unwrap_or_else(|_| "rust".into());
    let client = match Client::connect(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            std::process::exit(1);
        }
    };
    let mut took: Vec<Duration> = Vec::with_capacity(N);
    for _ in 0..N {
        let start = Instant::now();
        if let Err(e) = client.heartbeat(None) {
            eprintln!("roundtrip: heartbeat: {e}");
            std::process::exit(1);
        }
        took.push(start.elapsed());
    }
    took.sort();
    // Nearest rank: the smallest value with at least p % of the calls at or below it.
    let rank = |p: usize| took[(N * p).div_ceil(100).saturating_sub(1)].as_micros();
    let mean = took.iter().sum::<Duration>().as_micros() / N as u128;
    println!(
        "roundtrip lang={lang} n={N} p50_us={} p99_us={} mean_us={mean}",
        rank(50),
        rank(99)
    );
}
