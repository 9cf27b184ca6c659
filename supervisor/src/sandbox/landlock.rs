//! Best-effort Landlock filesystem rules for the agent.
//!
//! Landlock is the fallback for file/exec policy where BPF LSM is missing (DESIGN §2): inside
//! the sandbox, after `pivot_root`, the agent's thread handles every filesystem access right of
//! the best ABI the kernel offers, then gets back read+execute beneath some paths and full
//! access beneath others. Everything else on the filesystem is denied (`EACCES`), even to
//! root. An older kernel enforces a subset and a kernel without Landlock enforces nothing; the
//! returned [`LandlockStatus`] says which, so the supervisor can report the posture and refuse
//! agents whose policy requires more.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, PathFdError,
    RestrictSelf, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

/// Paths an agent may use; everything else is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsRules {
    /// Read files, list directories and execute files beneath each of these.
    pub read_exec: Vec<PathBuf>,
    /// Every filesystem access beneath each of these (a file, such as `/dev/null`, gets the
    /// rights that apply to files).
    pub read_write: Vec<PathBuf>,
}

/// What Landlock enforces (or, from [`probe`], can enforce) on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Every filesystem access right of Landlock ABI `abi` is handled.
    Full { abi: u8 },
    /// Only part of the requested rights are enforced.
    Partial { abi: u8 },
    /// The kernel lacks Landlock or has it disabled: nothing is enforced.
    Unsupported,
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LandlockStatus::Full { abi } => write!(f, "full (landlock ABI {abi})"),
            LandlockStatus::Partial { abi } => write!(f, "partial (landlock ABI {abi})"),
            LandlockStatus::Unsupported => f.write_str("unsupported"),
        }
    }
}

/// Why the calling thread could not be restricted.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock rule path {}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening landlock rule path {}: {source}", path.display())]
    OpenPath {
        path: PathBuf,
        #[source]
        source: PathFdError,
    },
    #[error("creating the landlock ruleset: {0}")]
    CreateRuleset(#[source] RulesetError),
    #[error("adding the landlock rule for {}: {source}", path.display())]
    AddRule {
        path: PathBuf,
        #[source]
        source: RulesetError,
    },
    #[error("restricting the thread with landlock: {0}")]
    RestrictSelf(#[source] RulesetError),
}

/// The Landlock ABI this kernel offers (as far as the `landlock` crate knows), without
/// restricting anything: `Full { abi }` when available, else `Unsupported`.
pub fn probe() -> LandlockStatus {
    match kernel_abi() {
        Some(abi) => LandlockStatus::Full {
            abi: abi_number(abi),
        },
        None => LandlockStatus::Unsupported,
    }
}

fn kernel_abi() -> Option<ABI> {
    // With no flags and no no_new_privs, `apply` only reports the probed kernel support.
    let status = RestrictSelf::default().no_new_privs(false).apply().ok()?;
    match status.landlock {
        landlock::LandlockStatus::Available { effective_abi, .. } => Some(effective_abi),
        landlock::LandlockStatus::NotEnabled | landlock::LandlockStatus::NotImplemented => None,
    }
}

fn abi_number(abi: ABI) -> u8 {
    // Each variant's discriminant is its ABI number.
    abi as u8
}

/// Restricts the calling thread (and the processes it later starts) to `rules`, best effort.
///
/// Handles all filesystem access rights of the kernel's Landlock ABI. Every path must exist
/// (checked before anything is restricted); a missing one is an error naming it. Also sets
/// `no_new_privs`, which Landlock requires and the sandbox sets anyway. Returns
/// `Unsupported` (after checking the paths) when the kernel has no Landlock.
pub fn restrict_self(rules: &FsRules) -> Result<LandlockStatus, LandlockError> {
    let paths = rules
        .read_exec
        .iter()
        .map(|p| (p, false))
        .chain(rules.read_write.iter().map(|p| (p, true)))
        .map(|(path, write)| {
            let is_dir = std::fs::metadata(path)
                .map_err(|source| LandlockError::Path {
                    path: path.clone(),
                    source,
                })?
                .is_dir();
            Ok((path.as_path(), write, is_dir))
        })
        .collect::<Result<Vec<(&Path, bool, bool)>, LandlockError>>()?;

    let Some(abi) = kernel_abi() else {
        return Ok(LandlockStatus::Unsupported);
    };

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(LandlockError::CreateRuleset)?
        // ABI 6+: no connecting to abstract UNIX sockets or signalling processes outside the
        // sandbox (agents with network grants share the host's network namespace, whose
        // abstract socket namespace would otherwise be reachable).
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(LandlockError::CreateRuleset)?
        .create()
        .map_err(LandlockError::CreateRuleset)?;
    for (path, write, is_dir) in paths {
        let mut access: BitFlags<AccessFs> = if write {
            // Writable places are never executable (the scratch is also mounted noexec).
            AccessFs::from_all(abi) & !AccessFs::Execute
        } else {
            AccessFs::from_read(abi)
        };
        if !is_dir {
            // Directory rights on a file rule would make the ruleset "partial".
            access &= AccessFs::from_file(abi);
        }
        let fd = PathFd::new(path).map_err(|source| LandlockError::OpenPath {
            path: path.to_path_buf(),
            source,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|source| LandlockError::AddRule {
                path: path.to_path_buf(),
                source,
            })?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(LandlockError::RestrictSelf)?;
    let abi = abi_number(abi);
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::Full { abi },
        RulesetStatus::PartiallyEnforced => LandlockStatus::Partial { abi },
        RulesetStatus::NotEnforced => LandlockStatus::Unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::process::{Command, Output};

    #[test]
    fn status_display() {
        assert_eq!(
            LandlockStatus::Full { abi: 7 }.to_string(),
            "full (landlock ABI 7)"
        );
        assert_eq!(
            LandlockStatus::Partial { abi: 1 }.to_string(),
            "partial (landlock ABI 1)"
        );
        assert_eq!(LandlockStatus::Unsupported.to_string(), "unsupported");
    }

    #[test]
    fn probe_agrees_with_the_kernel() {
        let raw = crate::sys::testing::landlock_abi();
        let status = probe();
        println!("landlock: kernel ABI query {raw}, probe {status}");
        match status {
            LandlockStatus::Full { abi } => {
                assert!(abi >= 1 && i64::from(abi) <= raw, "{status} vs {raw}")
            }
            LandlockStatus::Unsupported => {
                println!("this kernel lacks Landlock: restrict_self enforces nothing here");
                assert!(raw < 0);
            }
            LandlockStatus::Partial { .. } => panic!("probe never reports partial"),
        }
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        // Fails before anything is restricted, so it is safe in the test process.
        let rules = FsRules {
            read_exec: vec!["/usr".into()],
            read_write: vec!["/nonexistent/nanoclaw-landlock-test".into()],
        };
        let err = restrict_self(&rules).unwrap_err();
        assert!(matches!(err, LandlockError::Path { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("/nonexistent/nanoclaw-landlock-test"),
            "{err}"
        );
    }

    // ---- real-kernel test: a child process restricts itself (Landlock cannot be undone).

    const CHILD_ENV: &str = "NANOCLAW_LANDLOCK_TEST_CHILD";
    const DIR_ENV: &str = "NANOCLAW_LANDLOCK_TEST_DIR";

    /// Runs this test binary again with only `test` selected, as a child. `None` when the
    /// binary cannot be re-executed (ENOEXEC: an emulated target under qemu-user, which cannot
    /// test the kernel's sandboxing anyway; the VM tier covers that architecture).
    fn run_child(test: &str, dir: &Path) -> Option<Output> {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let result = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::{test}")])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, test)
            .env(DIR_ENV, dir)
            .output();
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                crate::log!("SKIPPED {test}: cannot re-execute the test binary ({e}): emulated?");
                None
            }
            other => Some(other.unwrap()),
        }
    }

    fn expect_eacces<T: fmt::Debug>(what: &str, r: io::Result<T>) -> Result<(), String> {
        match r {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
            other => Err(format!("{what}: want EACCES, got {other:?}")),
        }
    }

    fn landlock_child(dir: &Path) -> Result<(), String> {
        let inside = dir.join("inside");
        let outside = dir.join("outside");
        let read_exec = ["/usr", "/lib", "/lib64", "/bin"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        let rules = FsRules {
            read_exec,
            read_write: vec![inside.clone(), "/dev/null".into()],
        };
        let status = restrict_self(&rules).map_err(|e| e.to_string())?;
        println!("restrict_self: {status}");
        match (probe(), status) {
            (LandlockStatus::Unsupported, LandlockStatus::Unsupported) => {
                println!("this kernel lacks Landlock: nothing to enforce, nothing checked");
                return Ok(());
            }
            (LandlockStatus::Full { abi: want }, LandlockStatus::Full { abi }) if abi == want => {}
            (probed, got) => return Err(format!("probe says {probed}, restrict_self {got}")),
        }
        let e = |e: io::Error| e.to_string();

        // read_write: full access beneath `inside`, write access to the /dev/null file rule.
        std::fs::write(inside.join("f"), b"ok").map_err(e)?;
        if std::fs::read(inside.join("f")).map_err(e)? != b"ok" {
            return Err("read back".into());
        }
        std::fs::create_dir(inside.join("d")).map_err(e)?;
        std::fs::rename(inside.join("f"), inside.join("d/g")).map_err(e)?;
        std::fs::remove_dir_all(inside.join("d")).map_err(e)?;
        std::fs::write("/dev/null", b"x").map_err(e)?;

        // read_exec: read and execute, no writes.
        std::fs::read_dir("/usr").map_err(e)?;
        let status = Command::new("/bin/true").status().map_err(e)?;
        if !status.success() {
            return Err(format!("/bin/true: {status}"));
        }
        expect_eacces(
            "create in /usr",
            std::fs::write("/usr/nanoclaw-ll-test", b"x"),
        )?;

        // Everything else: denied.
        expect_eacces("write outside", std::fs::write(outside.join("new"), b"x"))?;
        expect_eacces("read outside", std::fs::read(outside.join("existing")))?;
        expect_eacces("list outside", std::fs::read_dir(&outside))?;
        expect_eacces("read /etc/passwd", std::fs::read("/etc/passwd"))?;
        expect_eacces(
            "write /dev/zero",
            std::fs::OpenOptions::new().write(true).open("/dev/zero"),
        )?;
        Ok(())
    }

    #[test]
    fn restrict_self_confines_the_filesystem() {
        const NAME: &str = "restrict_self_confines_the_filesystem";
        if std::env::var(CHILD_ENV).as_deref() == Ok(NAME) {
            let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
            match landlock_child(&dir) {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    crate::log!("CHILD FAILED: {e}");
                    std::process::exit(1)
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inside")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/existing"), b"secret").unwrap();
        let Some(out) = run_child(NAME, dir.path()) else {
            return;
        };
        assert_eq!(
            out.status.code(),
            Some(0),
            "child {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.path().join("outside/new").exists());
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
