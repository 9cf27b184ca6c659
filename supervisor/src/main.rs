//! `nanoclaw`: the device supervisor, its CLI, and (as a hidden mode of the same binary) the
//! sandbox init that runs as PID 1 of every agent.
//!
//! One static binary keeps the device footprint to a single file; `argv[1]` selects the role.

#![deny(clippy::print_stderr)]

use std::process::ExitCode;

use nanoclaw::{cli, control, daemon, sandbox};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(sandbox::init::ARG) {
        sandbox::init::main();
    }
    if args.first().map(String::as_str) == Some(nanoclaw::bpf::selftest::ARG) {
        nanoclaw::bpf::selftest::main(&args);
    }
    match cli::parse(&args) {
        Ok(cli::Command::Version) => {
            println!(
                "nanoclaw {} ({})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            );
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(cli::Command::Daemon { config }) => match daemon::run(&config) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                nanoclaw::log!("nanoclaw daemon: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Ok(cli::Command::Query { socket, req, json }) => {
            // Like any Unix filter: `nanoclaw logs x | head` ends quietly when the reader goes.
            nanoclaw::sys::default_signal(libc::SIGPIPE);
            ExitCode::from(cli::query(&socket, &req, json))
        }
        Ok(cli::Command::Bundle(args)) => {
            nanoclaw::sys::default_signal(libc::SIGPIPE);
            ExitCode::from(nanoclaw::bundle::cli::main(&args))
        }
        Ok(cli::Command::Policy(args)) => {
            nanoclaw::sys::default_signal(libc::SIGPIPE);
            ExitCode::from(nanoclaw::policy::cli::policy_main(&args))
        }
        Ok(cli::Command::Grant(args)) => {
            nanoclaw::sys::default_signal(libc::SIGPIPE);
            ExitCode::from(nanoclaw::policy::cli::grant_main(&args))
        }
        Ok(cli::Command::Sim(args)) => ExitCode::from(nanoclaw::simulator::main(&args)),
        Ok(cli::Command::Console(args)) => ExitCode::from(nanoclaw::console::main(&args)),
        Ok(cli::Command::Engineer(args)) => {
            ExitCode::from(nanoclaw::policy::cli::engineer_main(&args))
        }
        Ok(cli::Command::SupportBundle(args)) => ExitCode::from(nanoclaw::support::main(&args)),
        Ok(cli::Command::Run(opts)) => match nanoclaw::oneshot::run(&opts) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                nanoclaw::log!("nanoclaw run: {e}");
                ExitCode::from(control::exit::FAILED)
            }
        },
        Ok(cli::Command::Favordynmods { set, root }) => match favordynmods(set, &root) {
            Ok(state) => {
                println!("{state}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                nanoclaw::log!("nanoclaw favordynmods: {e}");
                ExitCode::from(control::exit::FAILED)
            }
        },
        Err(e) => {
            nanoclaw::log!("nanoclaw: {e}\n\n{}", cli::USAGE);
            ExitCode::from(control::exit::USAGE)
        }
    }
}

/// Shows (and with `set`, changes) the cgroup2 `favordynmods` option; prints the new state.
fn favordynmods(set: Option<bool>, root: &std::path::Path) -> Result<&'static str, String> {
    use nanoclaw::cgroup::{detect, dynmods};
    let layout = detect(root).map_err(|e| e.to_string())?;
    if let Some(on) = set {
        dynmods::set_favordynmods(&layout, on).map_err(|e| e.to_string())?;
    }
    Ok(
        match dynmods::favordynmods(&layout).map_err(|e| e.to_string())? {
            Some(true) => "on",
            Some(false) => "off",
            None => "no cgroup2 mount",
        },
    )
}
