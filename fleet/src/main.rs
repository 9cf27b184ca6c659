//! `nanoclaw-fleet`, the central server. The sync protocol and server arrive with the fleet-sync
//! issue; until then this binary only reports its version so packaging and CI can build it.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("nanoclaw-fleet {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("nanoclaw-fleet: the fleet server is not built yet; only --version works");
            ExitCode::from(2)
        }
    }
}
