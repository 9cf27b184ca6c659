//! cgroup v2: one directory per agent, `<root>/<subtree>/agents/<name>`.
//!
//! v2 rules handled here: a controller reaches a cgroup only if every ancestor enables it in
//! `cgroup.subtree_control`, and a (non-root) cgroup that enables controllers for its children
//! must hold no processes itself — hence the supervisor's own leaf, `<subtree>/supervisor`.
//! `memory.oom.group` makes an OOM kill take the whole agent, not one random process;
//! `cgroup.kill` (5.14+) and `cgroup.freeze` (5.2+) are core files, present without controllers.

use std::iter;

use super::*;

/// Controllers applied to agents, in the order their limits are written.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

pub(super) struct V2Cgroups {
    layout: Layout,
    root: PathBuf,
    subtree: PathBuf,
    /// The controllers of [`WANTED`] that the root offers.
    available: Vec<&'static str>,
}

fn v2_value(value: u64) -> String {
    if value == UNLIMITED {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

/// Requests (without waiting) that cgroup `dir` be frozen or thawed.
pub(super) fn request_freeze(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.freeze");
    let (value, action) = if frozen {
        ("1", "freeze")
    } else {
        ("0", "thaw")
    };
    write_value(&path, value).map_err(|source| CgroupError::Freeze {
        path,
        action,
        source,
    })
}

/// Waits (bounded) until `cgroup.events` of `dir` reports the frozen state wanted.
pub(super) fn wait_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.events");
    let wanted = u64::from(frozen);
    let mut state = 0;
    if wait_for(|| {
        state = read_keyed(&path, "frozen")?;
        Ok(state == wanted)
    })? {
        Ok(())
    } else {
        Err(CgroupError::FreezeTimeout {
            path,
            wanted: if frozen { "frozen 1" } else { "frozen 0" },
            state: format!("frozen {state}"),
        })
    }
}

impl V2Cgroups {
    /// Reads which controllers `root` offers; the caller decides which are required.
    pub(super) fn new(root: PathBuf, subtree: PathBuf) -> Result<Self, CgroupError> {
        let controllers = read(&root.join("cgroup.controllers"))?;
        let available = WANTED
            .into_iter()
            .filter(|c| controllers.split_whitespace().any(|o| o == *c))
            .collect();
        Ok(V2Cgroups {
            layout: Layout::V2 { root: root.clone() },
            root,
            subtree,
            available,
        })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn missing(&self, controller: &str) -> bool {
        !self.available.contains(&controller)
    }

    fn agent(&self, name: &str) -> PathBuf {
        agent_path(&self.root, &self.subtree, name)
    }

    /// Enables the available controllers on every level from the root down to
    /// `<subtree>/agents`, writing only what is not enabled yet (so a delegated, already
    /// configured ancestor is not touched).
    fn enable_controllers(&self) -> Result<(), CgroupError> {
        if self.available.is_empty() {
            return Ok(());
        }
        let mut dir = self.root.clone();
        let below = self.subtree.join(AGENTS_DIR);
        for component in iter::once(None).chain(below.components().map(Some)) {
            if let Some(component) = component {
                dir.push(component);
            }
            let path = dir.join("cgroup.subtree_control");
            let enabled = read(&path)?;
            for &controller in &self.available {
                if !enabled.split_whitespace().any(|e| e == controller) {
                    write_value(&path, &format!("+{controller}")).map_err(|source| {
                        CgroupError::EnableController {
                            path: path.clone(),
                            controller,
                            source,
                        }
                    })?;
                }
            }
        }
        Ok(())
    }

    fn create_dirs(&self, name: &str, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        mkdir_all(&self.root, &self.subtree.join(AGENTS_DIR), created)?;
        self.enable_controllers()?;
        let dir = self.agent(name);
        if mkdir(&dir)? {
            created.push(dir);
        }
        Ok(())
    }
}

impl Cgroups for V2Cgroups {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn missing_controllers(&self) -> Vec<&'static str> {
        WANTED.into_iter().filter(|c| self.missing(c)).collect()
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let mut created = Vec::new();
        let result = self
            .create_dirs(name, &mut created)
            .and_then(|()| self.set_limits(name, limits));
        if result.is_err() {
            rollback(&created);
        }
        result
    }

    fn set_limits(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let dir = self.agent(name);
        if !self.missing("memory") {
            set(&dir.join("memory.max"), &v2_value(limits.memory_max))?;
            set(
                &dir.join("memory.high"),
                &v2_value(limits.memory_high.unwrap_or(UNLIMITED)),
            )?;
            // Absent without swap support (CONFIG_SWAP / CONFIG_MEMCG_SWAP).
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                set(&swap, "0")?;
            }
            // Absent before 4.19.
            let group = dir.join("memory.oom.group");
            if group.exists() {
                set(&group, "1")?;
            }
        }
        if !self.missing("pids") {
            set(&dir.join("pids.max"), &v2_value(limits.pids_max))?;
        }
        if !self.missing("cpu") {
            let quota = limits
                .cpu_quota_us
                .map_or_else(|| "max".to_owned(), |q| q.to_string());
            set(
                &dir.join("cpu.max"),
                &format!("{quota} {}", limits.cpu_period_us),
            )?;
        }
        Ok(())
    }

    fn add_process(&self, name: &str, pid: i32) -> Result<(), CgroupError> {
        validate_name(name)?;
        add_pid(&self.agent(name), pid)
    }

    fn procs(&self, name: &str) -> Result<Vec<i32>, CgroupError> {
        validate_name(name)?;
        procs_of(&self.agent(name))
    }

    fn cpu_usage_ns(&self, name: &str) -> Result<u64, CgroupError> {
        validate_name(name)?;
        // cpu.stat's usage is kept by the core, with or without the cpu controller.
        Ok(read_keyed(&self.agent(name).join("cpu.stat"), "usage_usec")?.saturating_mul(1000))
    }

    fn memory(&self, name: &str) -> Result<MemoryStats, CgroupError> {
        validate_name(name)?;
        if self.missing("memory") {
            return Err(CgroupError::ControllerMissing {
                controller: "memory",
                operation: "read memory statistics",
            });
        }
        let dir = self.agent(name);
        let current = read_u64(&dir.join("memory.current"))?;
        // memory.peak appeared in 5.19.
        let peak_path = dir.join("memory.peak");
        let peak = match fs::read_to_string(&peak_path) {
            Ok(text) => parse_u64(&peak_path, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => current,
            Err(source) => {
                return Err(CgroupError::Read {
                    path: peak_path,
                    source,
                });
            }
        };
        Ok(MemoryStats {
            current,
            peak,
            limit: read_u64(&dir.join("memory.max"))?,
            // Counts every process killed, group kills included (memory.oom.group).
            oom_kills: read_keyed(&dir.join("memory.events"), "oom_kill")?,
        })
    }

    fn oom_notifier(&self, name: &str) -> Result<OwnedFd, CgroupError> {
        validate_name(name)?;
        if self.missing("memory") {
            return Err(CgroupError::ControllerMissing {
                controller: "memory",
                operation: "watch for OOM kills",
            });
        }
        watch_modify(&self.agent(name).join("memory.events"))
    }

    fn kill_all(&self, name: &str) -> Result<(), CgroupError> {
        validate_name(name)?;
        let dir = self.agent(name);
        let path = dir.join("cgroup.kill");
        let atomic = match write_value(&path, "1") {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !dir.exists() {
                    return Ok(());
                }
                false // before 5.14
            }
            Err(source) => return Err(CgroupError::Kill { path, source }),
        };
        drain(&dir, atomic, &|frozen| request_freeze(&dir, frozen))
    }

    fn freeze(&self, name: &str, frozen: bool) -> Result<(), CgroupError> {
        validate_name(name)?;
        let dir = self.agent(name);
        request_freeze(&dir, frozen)?;
        wait_frozen(&dir, frozen)
    }

    fn remove(&self, name: &str) -> Result<(), CgroupError> {
        validate_name(name)?;
        rmdir_retry(&self.agent(name))
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        list_agents(iter::once(agents_path(&self.root, &self.subtree)))
    }

    fn unified_dir(&self, name: &str) -> Option<PathBuf> {
        validate_name(name).ok()?;
        Some(self.agent(name))
    }

    fn enter_supervisor(&self) -> Result<(), CgroupError> {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        mkdir_all(
            &self.root,
            &self.subtree.join(SUPERVISOR_DIR),
            &mut Vec::new(),
        )?;
        let path = supervisor_path(&self.root, &self.subtree).join("cgroup.procs");
        write_value(&path, &pid.to_string()).map_err(|source| CgroupError::EnterSupervisor {
            path,
            pid,
            source,
        })
    }
}

/// On this host these run on the controller-less hybrid cgroup2 mount (what works there:
/// directories, membership, `cgroup.kill`, `cgroup.freeze`, event notification); on a pure v2
/// machine they also check limits and the OOM path.
#[cfg(test)]
mod tests {
    use super::super::testutil::{Env, is_root, read_trimmed, readable, unique_subtree};
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    const MIB: u64 = 1 << 20;

    fn v2_env() -> Option<Env> {
        if !is_root() {
            crate::log!("skipped: needs root");
            return None;
        }
        let root = match detect(Path::new(DEFAULT_ROOT)) {
            Ok(Layout::V2 { root })
            | Ok(Layout::V1 {
                unified: Some(root),
                ..
            }) => root,
            other => {
                crate::log!("skipped: no cgroup2 mount here ({other:?})");
                return None;
            }
        };
        let subtree = unique_subtree();
        let cg = V2Cgroups::new(root, PathBuf::from(&subtree)).unwrap();
        Some(Env::with_subtree(Box::new(cg), subtree))
    }

    fn root(env: &Env) -> PathBuf {
        match &env.layout {
            Layout::V2 { root } => root.clone(),
            Layout::V1 { .. } => unreachable!(),
        }
    }

    fn dir(env: &Env, name: &str) -> PathBuf {
        agent_path(&root(env), Path::new(&env.subtree), name)
    }

    fn limits(memory_max: u64, pids_max: u64) -> Limits {
        Limits {
            memory_max,
            memory_high: Some(memory_max / 2),
            pids_max,
            cpu_quota_us: Some(20_000),
            cpu_period_us: DEFAULT_CPU_PERIOD_US,
        }
    }

    #[test]
    fn lifecycle_with_cgroup_kill() {
        let Some(mut env) = v2_env() else { return };
        let missing = env.cg.missing_controllers();
        crate::log!("v2 root {}: missing {missing:?}", root(&env).display());
        env.cg.create("agent", &limits(64 * MIB, 16)).unwrap();
        let agent = dir(&env, "agent");
        assert!(agent.is_dir());
        assert_eq!(env.cg.unified_dir("agent"), Some(agent.clone()));
        assert_eq!(env.cg.list().unwrap(), vec!["agent".to_owned()]);
        if !missing.contains(&"memory") {
            assert_eq!(
                read_trimmed(&agent.join("memory.max")),
                (64 * MIB).to_string()
            );
            assert_eq!(
                read_trimmed(&agent.join("memory.high")),
                (32 * MIB).to_string()
            );
            assert_eq!(read_trimmed(&agent.join("memory.oom.group")), "1");
            if agent.join("memory.swap.max").exists() {
                assert_eq!(read_trimmed(&agent.join("memory.swap.max")), "0");
            }
        }
        if !missing.contains(&"pids") {
            assert_eq!(read_trimmed(&agent.join("pids.max")), "16");
        }
        if !missing.contains(&"cpu") {
            assert_eq!(read_trimmed(&agent.join("cpu.max")), "20000 100000");
        }

        let child = env.spawn_gated("sleep 1000");
        let pid = env.pid(child);
        env.cg.add_process("agent", pid).unwrap();
        env.release(child);
        assert_eq!(env.cg.procs("agent").unwrap(), vec![pid]);
        let cgroup = read_trimmed(Path::new(&format!("/proc/{pid}/cgroup")));
        let wanted = format!("0::/{}/agents/agent", env.subtree);
        assert!(cgroup.lines().any(|l| l == wanted), "{cgroup}");

        env.cg.kill_all("agent").unwrap();
        assert!(env.cg.procs("agent").unwrap().is_empty());
        let status = env.wait(child, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        env.cg.remove("agent").unwrap();
        assert!(!agent.exists());
        assert!(env.cg.list().unwrap().is_empty());
        env.cg.remove("agent").unwrap();
        env.cg.kill_all("agent").unwrap();
        remove_subtree(&env.layout, &env.subtree).unwrap();
        assert!(!root(&env).join(&env.subtree).exists());
    }

    #[test]
    fn freeze_thaw_and_kill_while_frozen() {
        let Some(mut env) = v2_env() else { return };
        env.cg.create("ice", &limits(64 * MIB, 16)).unwrap();
        let child = env.spawn_gated("sleep 1000");
        env.cg.add_process("ice", env.pid(child)).unwrap();
        env.release(child);
        let events = dir(&env, "ice").join("cgroup.events");
        env.cg.freeze("ice", true).unwrap();
        assert_eq!(read_keyed(&events, "frozen").unwrap(), 1);
        env.cg.freeze("ice", false).unwrap();
        assert_eq!(read_keyed(&events, "frozen").unwrap(), 0);
        env.cg.freeze("ice", true).unwrap();
        env.cg.kill_all("ice").unwrap();
        let status = env.wait(child, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// Kernels before 5.14 have no `cgroup.kill`: the fallback freezes, signals every listed
    /// pid, and thaws, until the cgroup is empty.
    #[test]
    fn fallback_kill_signals_every_pid_of_a_tree() {
        let Some(mut env) = v2_env() else { return };
        env.cg.create("tree", &limits(64 * MIB, 16)).unwrap();
        let shell = env.spawn_gated("sh -c 'sleep 1000 & sleep 1000 & wait'");
        env.cg.add_process("tree", env.pid(shell)).unwrap();
        env.release(shell);
        assert!(wait_for(|| Ok(env.cg.procs("tree")?.len() == 3)).unwrap());
        let agent = dir(&env, "tree");
        drain(&agent, false, &|frozen| request_freeze(&agent, frozen)).unwrap();
        assert!(env.cg.procs("tree").unwrap().is_empty());
        let status = env.wait(shell, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(
            read_keyed(&agent.join("cgroup.events"), "frozen").unwrap(),
            0
        );
    }

    /// The mechanism of the v2 OOM notifier: cgroup event files signal IN_MODIFY. Here on
    /// `cgroup.events`, which changes when the cgroup becomes (un)populated.
    #[test]
    fn event_files_notify_through_inotify() {
        let Some(mut env) = v2_env() else { return };
        env.cg.create("watched", &limits(64 * MIB, 16)).unwrap();
        let fd = watch_modify(&dir(&env, "watched").join("cgroup.events")).unwrap();
        assert!(!readable(&fd, Duration::ZERO));
        let child = env.spawn_gated("sleep 1000");
        env.cg.add_process("watched", env.pid(child)).unwrap();
        assert!(
            readable(&fd, Duration::from_secs(5)),
            "no event on populate"
        );
        env.release(child);
        env.cg.kill_all("watched").unwrap();
    }

    #[test]
    fn open_requires_the_memory_controller() {
        let Some(env) = v2_env() else { return };
        let result = open(env.layout.clone(), &env.subtree);
        if env.cg.missing_controllers().contains(&"memory") {
            assert!(matches!(
                result,
                Err(CgroupError::MemoryControllerMissing { .. })
            ));
            assert_eq!(env.cg.missing_controllers(), vec!["memory", "pids", "cpu"]);
            assert!(matches!(
                env.cg.oom_notifier("x"),
                Err(CgroupError::ControllerMissing { .. })
            ));
        } else {
            assert!(result.is_ok());
        }
    }

    /// Runs only where cgroup v2 has the memory controller (the VM tier).
    #[test]
    fn memory_hog_is_oom_killed_and_notified() {
        let Some(mut env) = v2_env() else { return };
        if env.cg.missing_controllers().contains(&"memory") {
            crate::log!("skipped: no memory controller on this cgroup2 mount");
            return;
        }
        let python = std::process::Command::new("python3")
            .args(["-c", ""])
            .status();
        if !python.is_ok_and(|s| s.success()) {
            crate::log!("skipped: no python3 to allocate with");
            return;
        }
        let limit = 32 * MIB;
        let hog_limits = Limits {
            memory_high: None,
            ..limits(limit, 64)
        };
        env.cg.create("hog", &hog_limits).unwrap();
        let notifier = env.cg.oom_notifier("hog").unwrap();
        assert!(!readable(&notifier, Duration::ZERO));
        let hog = env.spawn_gated("python3 -c 'x = b\"x\" * (200 << 20)'");
        env.cg.add_process("hog", env.pid(hog)).unwrap();
        env.release(hog);
        let status = env
            .wait(hog, Duration::from_secs(60))
            .expect("hog still running");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(readable(&notifier, Duration::from_secs(5)), "no OOM event");
        let stats = env.cg.memory("hog").unwrap();
        crate::log!("{stats:?}");
        assert!(stats.oom_kills >= 1);
        assert_eq!(stats.limit, limit);
        assert!(stats.peak <= limit);
    }
}
