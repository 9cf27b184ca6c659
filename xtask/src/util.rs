//! Small helpers shared by the xtask commands: running commands loudly, locating the workspace,
//! and building the static binaries everything else consumes.

use std::path::{Path, PathBuf};
use std::process::Command;

pub type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or(here.clone(), Path::to_path_buf)
}

/// Runs `cmd`, echoing it, and fails with its exit status.
pub fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {}", show(cmd));
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", show(cmd)))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {st}", show(cmd)))
    }
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", show(cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The musl target triple for the machine we run on.
pub fn host_target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

/// Static binaries of one build.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub nanoclaw: PathBuf,
    pub demo_agent: PathBuf,
}

/// Builds `nanoclaw` and the demo agent as static musl binaries for `target` (release profile:
/// LTO, panic=abort, stripped) and returns their paths.
pub fn build_static(target: &str) -> Result<Binaries> {
    run(cargo().args([
        "build",
        "--release",
        "--target",
        target,
        "-p",
        "nanoclaw",
        "-p",
        "nanoclaw-demo-agent",
    ]))?;
    let dir = root().join("target").join(target).join("release");
    let b = Binaries {
        nanoclaw: dir.join("nanoclaw"),
        demo_agent: dir.join("demo-agent"),
    };
    for p in [&b.nanoclaw, &b.demo_agent] {
        if !p.is_file() {
            return Err(format!("build did not produce {}", p.display()));
        }
    }
    Ok(b)
}

/// True when running as root.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}
