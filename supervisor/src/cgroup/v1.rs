//! cgroup v1, including the systemd hybrid layout: one directory per agent in each controller
//! hierarchy used — memory (required), pids, cpu, freezer — and, when a cgroup2 mount sits at
//! `<root>/unified`, one there too, so BPF cgroup hooks can attach to the agent.
//!
//! v1 quirks handled here: `memory.memsw.limit_in_bytes` (memory + swap) must never be below
//! `memory.limit_in_bytes`, so it is raised first and lowered last; swap is disabled by making
//! both equal. "No limit" reads back as a page-rounded `i64::MAX`. `freezer.state` may pass
//! through `FREEZING`. Frozen v1 tasks do not die of SIGKILL until thawed.

use std::iter;

use super::*;

/// The v1 hierarchies this module uses, as mounted under the root.
pub(super) const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// v1 shows "no limit" as `PAGE_COUNTER_MAX` pages, close to `i64::MAX`; anything this large
/// is no limit.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

pub(super) struct V1Cgroups {
    layout: Layout,
    subtree: PathBuf,
    memory: PathBuf,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    freezer: Option<PathBuf>,
    unified: Option<PathBuf>,
}

/// `<root>/<name>` if a v1 hierarchy is mounted there (co-mounts like `cpu,cpuacct` are
/// reached through their symlinks) and, at its root, `marker` exists.
fn hierarchy(root: &Path, name: &str, marker: Option<&str>) -> Option<PathBuf> {
    let dir = root.join(name);
    let mounted = fs_magic(&dir).ok() == Some(CGROUP_SUPER_MAGIC);
    (mounted && marker.is_none_or(|m| dir.join(m).exists())).then_some(dir)
}

/// A v1 limit value: `-1` is "no limit" for memory and CPU quota files.
fn v1_value(value: u64) -> String {
    if value == UNLIMITED {
        "-1".to_owned()
    } else {
        value.to_string()
    }
}

fn normalize(value: u64) -> u64 {
    if value >= V1_UNLIMITED_FROM {
        UNLIMITED
    } else {
        value
    }
}

impl V1Cgroups {
    pub(super) fn new(
        root: PathBuf,
        unified: Option<PathBuf>,
        subtree: PathBuf,
    ) -> Result<Self, CgroupError> {
        let memory = hierarchy(&root, "memory", Some("memory.limit_in_bytes")).ok_or_else(|| {
            CgroupError::MemoryControllerMissing {
                path: root.join("memory"),
                hint: "mount the v1 memory controller there (mount -t cgroup -o memory cgroup <path>), or boot with cgroup v2",
            }
        })?;
        Ok(V1Cgroups {
            pids: hierarchy(&root, "pids", None),
            // Without CFS bandwidth control (CONFIG_CFS_BANDWIDTH) there is no quota to set.
            cpu: hierarchy(&root, "cpu", Some("cpu.cfs_quota_us")),
            freezer: hierarchy(&root, "freezer", None),
            memory,
            layout: Layout::V1 {
                root,
                unified: unified.clone(),
            },
            unified,
            subtree,
        })
    }

    /// Every hierarchy used: memory first, the unified cgroup2 mount last.
    fn hierarchies(&self) -> impl Iterator<Item = &PathBuf> {
        iter::once(&self.memory)
            .chain(&self.pids)
            .chain(&self.cpu)
            .chain(&self.freezer)
            .chain(&self.unified)
    }

    fn agent(&self, hierarchy: &Path, name: &str) -> PathBuf {
        agent_path(hierarchy, &self.subtree, name)
    }

    /// Creates `<hierarchy>/<subtree>/<leaf>`, recording what it created. In the memory
    /// hierarchy our own directories get hierarchical accounting before they get children.
    fn make_path(
        &self,
        hierarchy: &Path,
        leaf: &Path,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        if let Some(parent) = self.subtree.parent() {
            mkdir_all(hierarchy, parent, created)?;
        }
        let memory = hierarchy == self.memory;
        let mut dir = hierarchy.join(&self.subtree);
        let mut step = |dir: &Path| -> Result<(), CgroupError> {
            if mkdir(dir)? {
                created.push(dir.to_path_buf());
            }
            if memory {
                // Always 1 since Linux 5.x; older kernels default to 0 (flat accounting).
                let path = dir.join("memory.use_hierarchy");
                if fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
                    set(&path, "1")?;
                }
            }
            Ok(())
        };
        step(&dir)?;
        for component in leaf.components() {
            dir.push(component);
            step(&dir)?;
        }
        Ok(())
    }

    /// Requests a freeze or thaw without waiting for it.
    fn request_freeze(&self, name: &str, frozen: bool) -> Result<(), CgroupError> {
        if let Some(freezer) = &self.freezer {
            let path = self.agent(freezer, name).join("freezer.state");
            let (value, action) = if frozen {
                ("FROZEN", "freeze")
            } else {
                ("THAWED", "thaw")
            };
            write_value(&path, value).map_err(|source| CgroupError::Freeze {
                path,
                action,
                source,
            })
        } else if let Some(unified) = &self.unified {
            v2::request_freeze(&self.agent(unified, name), frozen)
        } else {
            Err(CgroupError::ControllerMissing {
                controller: "freezer",
                operation: "freeze",
            })
        }
    }
}

impl Cgroups for V1Cgroups {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn missing_controllers(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.pids.is_none() {
            missing.push("pids");
        }
        if self.cpu.is_none() {
            missing.push("cpu");
        }
        // The hybrid cgroup2 directory has cgroup.freeze (Linux 5.2+) without any controller.
        if self.freezer.is_none() && self.unified.is_none() {
            missing.push("freezer");
        }
        missing
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let leaf = Path::new(AGENTS_DIR).join(name);
        let mut created = Vec::new();
        let result = self
            .hierarchies()
            .try_for_each(|h| self.make_path(h, &leaf, &mut created))
            .and_then(|()| self.set_limits(name, limits));
        if result.is_err() {
            rollback(&created);
        }
        result
    }

    fn set_limits(&self, name: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let memory = self.agent(&self.memory, name);
        let limit_file = memory.join("memory.limit_in_bytes");
        // Absent when swap accounting is off (swapaccount=0) or there is no swap support.
        let memsw_file = memory.join("memory.memsw.limit_in_bytes");
        let memsw = memsw_file.exists();
        let value = v1_value(limits.memory_max);
        let raising = limits.memory_max > normalize(read_u64(&limit_file)?);
        if memsw && raising {
            set(&memsw_file, &value)?;
        }
        set(&limit_file, &value)?;
        if memsw && !raising {
            set(&memsw_file, &value)?;
        }
        set(&memory.join("memory.swappiness"), "0")?;
        set(
            &memory.join("memory.soft_limit_in_bytes"),
            &v1_value(limits.memory_high.unwrap_or(UNLIMITED)),
        )?;
        if let Some(pids) = &self.pids {
            let value = if limits.pids_max == UNLIMITED {
                "max".to_owned()
            } else {
                limits.pids_max.to_string()
            };
            set(&self.agent(pids, name).join("pids.max"), &value)?;
        }
        if let Some(cpu) = &self.cpu {
            let dir = self.agent(cpu, name);
            let period = (
                dir.join("cpu.cfs_period_us"),
                limits.cpu_period_us.to_string(),
            );
            let quota = (
                dir.join("cpu.cfs_quota_us"),
                limits
                    .cpu_quota_us
                    .map_or_else(|| "-1".to_owned(), |q| q.to_string()),
            );
            // The quota is checked against the period: lift it before, set it after.
            let order = if limits.cpu_quota_us.is_some() {
                [period, quota]
            } else {
                [quota, period]
            };
            for (path, value) in order {
                set(&path, &value)?;
            }
        }
        Ok(())
    }

    fn add_process(&self, name: &str, pid: i32) -> Result<(), CgroupError> {
        validate_name(name)?;
        self.hierarchies()
            .try_for_each(|h| add_pid(&self.agent(h, name), pid))
    }

    fn procs(&self, name: &str) -> Result<Vec<i32>, CgroupError> {
        validate_name(name)?;
        procs_of(&self.agent(&self.memory, name))
    }

    fn cpu_usage_ns(&self, name: &str) -> Result<u64, CgroupError> {
        validate_name(name)?;
        // cpuacct is co-mounted with cpu on every distribution we know; the hybrid cgroup2
        // directory keeps the same count otherwise.
        if let Some(cpu) = &self.cpu {
            let p = self.agent(cpu, name).join("cpuacct.usage");
            if p.exists() {
                return read_u64(&p);
            }
        }
        match &self.unified {
            Some(u) => Ok(
                read_keyed(&self.agent(u, name).join("cpu.stat"), "usage_usec")?
                    .saturating_mul(1000),
            ),
            None => Err(CgroupError::ControllerMissing {
                controller: "cpuacct",
                operation: "read CPU time",
            }),
        }
    }

    fn memory(&self, name: &str) -> Result<MemoryStats, CgroupError> {
        validate_name(name)?;
        let dir = self.agent(&self.memory, name);
        Ok(MemoryStats {
            current: read_u64(&dir.join("memory.usage_in_bytes"))?,
            peak: read_u64(&dir.join("memory.max_usage_in_bytes"))?,
            limit: normalize(read_u64(&dir.join("memory.limit_in_bytes"))?),
            oom_kills: read_keyed(&dir.join("memory.oom_control"), "oom_kill")?,
        })
    }

    fn oom_notifier(&self, name: &str) -> Result<OwnedFd, CgroupError> {
        use rustix::event::{EventfdFlags, eventfd};
        use std::os::fd::AsRawFd as _;
        validate_name(name)?;
        let dir = self.agent(&self.memory, name);
        let control = dir.join("memory.oom_control");
        let err = |source| CgroupError::OomNotifier {
            path: control.clone(),
            source,
        };
        let event = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| err(e.into()))?;
        // The kernel resolves both descriptors while handling the write and keeps only the
        // eventfd: the registration ends when the eventfd is closed or the cgroup removed.
        let file = fs::File::open(&control).map_err(err)?;
        let registration = format!("{} {}", event.as_raw_fd(), file.as_raw_fd());
        write_value(&dir.join("cgroup.event_control"), &registration).map_err(err)?;
        Ok(event)
    }

    fn kill_all(&self, name: &str) -> Result<(), CgroupError> {
        validate_name(name)?;
        let memory = self.agent(&self.memory, name);
        if !memory.exists() {
            return Ok(());
        }
        let mut atomic = false;
        if let Some(unified) = &self.unified {
            // Every agent process is in the hybrid cgroup2 directory too (add_process), where
            // cgroup.kill (Linux 5.14+) kills the whole tree at once, forks included.
            let path = self.agent(unified, name).join("cgroup.kill");
            match write_value(&path, "1") {
                Ok(()) => atomic = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Kill { path, source }),
            }
        }
        if atomic && self.freezer.is_some() {
            // Frozen v1 tasks die only once thawed.
            self.request_freeze(name, false)?;
        }
        drain(&memory, atomic, &|frozen| self.request_freeze(name, frozen))
    }

    fn freeze(&self, name: &str, frozen: bool) -> Result<(), CgroupError> {
        validate_name(name)?;
        self.request_freeze(name, frozen)?;
        match (&self.freezer, &self.unified) {
            (Some(freezer), _) => {
                let path = self.agent(freezer, name).join("freezer.state");
                let wanted = if frozen { "FROZEN" } else { "THAWED" };
                let mut state = String::new();
                // Reading freezer.state also advances FREEZING to FROZEN.
                let done = wait_for(|| {
                    state = read(&path)?.trim().to_owned();
                    Ok(state == wanted)
                })?;
                if done {
                    Ok(())
                } else {
                    Err(CgroupError::FreezeTimeout {
                        path,
                        wanted,
                        state,
                    })
                }
            }
            (None, Some(unified)) => v2::wait_frozen(&self.agent(unified, name), frozen),
            (None, None) => Err(CgroupError::ControllerMissing {
                controller: "freezer",
                operation: "freeze",
            }),
        }
    }

    fn remove(&self, name: &str) -> Result<(), CgroupError> {
        validate_name(name)?;
        self.hierarchies()
            .try_for_each(|h| rmdir_retry(&self.agent(h, name)))
    }

    fn list(&self) -> Result<Vec<String>, CgroupError> {
        list_agents(self.hierarchies().map(|h| agents_path(h, &self.subtree)))
    }

    fn unified_dir(&self, name: &str) -> Option<PathBuf> {
        validate_name(name).ok()?;
        self.unified.as_ref().map(|u| self.agent(u, name))
    }

    fn enter_supervisor(&self) -> Result<(), CgroupError> {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        let mut created = Vec::new();
        for hierarchy in self.hierarchies() {
            self.make_path(hierarchy, Path::new(SUPERVISOR_DIR), &mut created)?;
            let path = supervisor_path(hierarchy, &self.subtree).join("cgroup.procs");
            write_value(&path, &pid.to_string())
                .map_err(|source| CgroupError::EnterSupervisor { path, pid, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Env, is_root, read_trimmed, readable, unique_subtree};
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// A v1 environment under a fresh subtree, or `None` (skip) off v1 or without root.
    fn v1_env() -> Option<Env> {
        if !is_root() {
            crate::log!("skipped: needs root");
            return None;
        }
        match detect(Path::new(DEFAULT_ROOT)) {
            Ok(layout @ Layout::V1 { .. }) => {
                let subtree = unique_subtree();
                let cg = open(layout, &subtree).unwrap();
                Some(Env::with_subtree(cg, subtree))
            }
            other => {
                crate::log!("skipped: not cgroup v1 here ({other:?})");
                None
            }
        }
    }

    fn root(env: &Env) -> PathBuf {
        match &env.layout {
            Layout::V1 { root, .. } => root.clone(),
            Layout::V2 { .. } => unreachable!(),
        }
    }

    /// The agent's directory in hierarchy `controller` (`unified` for the cgroup2 mount).
    fn dir(env: &Env, controller: &str, name: &str) -> PathBuf {
        agent_path(&root(env).join(controller), Path::new(&env.subtree), name)
    }

    fn limits(memory_max: u64, pids_max: u64) -> Limits {
        Limits {
            memory_max,
            memory_high: None,
            pids_max,
            cpu_quota_us: None,
            cpu_period_us: DEFAULT_CPU_PERIOD_US,
        }
    }

    /// The kernel's view: `/proc/<pid>/cgroup` path per hierarchy ("" for cgroup2).
    fn proc_cgroups(pid: i32) -> Vec<(String, String)> {
        read_trimmed(Path::new(&format!("/proc/{pid}/cgroup")))
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }

    fn assert_in(pid: i32, cgroup: &str, unified: bool) {
        let cgroups = proc_cgroups(pid);
        let mut wanted = CONTROLLERS.to_vec();
        if unified {
            wanted.push("");
        }
        for controller in wanted {
            let found = cgroups
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == controller))
                .map(|(_, path)| path.as_str());
            assert_eq!(found, Some(cgroup), "{controller:?} in {cgroups:?}");
        }
    }

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    #[test]
    fn limits_are_written_and_read_back() {
        let Some(env) = v1_env() else { return };
        crate::log!("missing controllers: {:?}", env.cg.missing_controllers());
        assert!(
            env.cg.missing_controllers().is_empty(),
            "this host has them all"
        );
        let first = Limits {
            memory_max: 64 * MIB,
            memory_high: Some(48 * MIB),
            pids_max: 10,
            cpu_quota_us: Some(50_000),
            cpu_period_us: 100_000,
        };
        env.cg.create("limits", &first).unwrap();
        let memory = dir(&env, "memory", "limits");
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        let check_memory = |bytes: u64| {
            let bytes = bytes.to_string();
            assert_eq!(read_trimmed(&memory.join("memory.limit_in_bytes")), bytes);
            if memsw.exists() {
                assert_eq!(read_trimmed(&memsw), bytes);
            }
            assert_eq!(read_trimmed(&memory.join("memory.swappiness")), "0");
        };
        check_memory(64 * MIB);
        let soft = memory.join("memory.soft_limit_in_bytes");
        assert_eq!(read_trimmed(&soft), (48 * MIB).to_string());
        let pids_max = dir(&env, "pids", "limits").join("pids.max");
        assert_eq!(read_trimmed(&pids_max), "10");
        let cpu = dir(&env, "cpu", "limits");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_period_us")), "100000");
        assert!(dir(&env, "freezer", "limits").is_dir());
        let unified = env.cg.unified_dir("limits").unwrap();
        assert_eq!(unified, dir(&env, "unified", "limits"));
        assert!(unified.is_dir());

        // Raising needs memsw first, lowering needs it last; unlimited reads back as huge.
        let raised = Limits {
            memory_max: 256 * MIB,
            memory_high: None,
            pids_max: UNLIMITED,
            cpu_quota_us: None,
            cpu_period_us: 50_000,
        };
        env.cg.set_limits("limits", &raised).unwrap();
        check_memory(256 * MIB);
        assert!(read_trimmed(&soft).parse::<u64>().unwrap() >= V1_UNLIMITED_FROM);
        assert_eq!(read_trimmed(&pids_max), "max");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_period_us")), "50000");
        env.cg.set_limits("limits", &limits(UNLIMITED, 10)).unwrap();
        assert_eq!(env.cg.memory("limits").unwrap().limit, UNLIMITED);
        env.cg.set_limits("limits", &first).unwrap();
        check_memory(64 * MIB);

        let stats = env.cg.memory("limits").unwrap();
        assert_eq!(stats.limit, 64 * MIB);
        assert_eq!(stats.oom_kills, 0);
        assert_eq!(env.cg.list().unwrap(), vec!["limits".to_owned()]);
        assert!(matches!(
            env.cg.create("../escape", &first),
            Err(CgroupError::InvalidName { .. })
        ));
        assert!(matches!(
            env.cg.create("bad", &limits(0, 1)),
            Err(CgroupError::InvalidLimits { .. })
        ));
        assert!(env.cg.unified_dir("../escape").is_none());
        // pid 0 would mean the caller: never move the supervisor into an agent.
        assert!(matches!(
            env.cg.add_process("limits", 0),
            Err(CgroupError::AddProcess { pid: 0, .. })
        ));
        assert!(env.cg.procs("limits").unwrap().is_empty());
    }

    #[test]
    fn processes_are_added_killed_and_removed() {
        let Some(mut env) = v1_env() else { return };
        env.cg.create("sleeper", &limits(64 * MIB, 16)).unwrap();
        let child = env.spawn_gated("sleep 1000");
        let pid = env.pid(child);
        env.cg.add_process("sleeper", pid).unwrap();
        env.release(child);
        assert_eq!(env.cg.procs("sleeper").unwrap(), vec![pid]);
        let cgroup = format!("/{}/agents/sleeper", env.subtree);
        assert_in(pid, &cgroup, true);

        // Killed but not reaped yet: the zombie must keep neither kill_all nor remove waiting.
        env.cg.kill_all("sleeper").unwrap();
        assert!(env.cg.procs("sleeper").unwrap().is_empty());
        env.cg.remove("sleeper").unwrap();
        let status = env.wait(child, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));

        for controller in CONTROLLERS.into_iter().chain(["unified"]) {
            let path = dir(&env, controller, "sleeper");
            assert!(!path.exists(), "{} still exists", path.display());
        }
        assert!(env.cg.list().unwrap().is_empty());
        // Absent is fine for both.
        env.cg.remove("sleeper").unwrap();
        env.cg.kill_all("sleeper").unwrap();
        assert!(env.cg.procs("sleeper").is_err());
    }

    #[test]
    fn remove_and_remove_subtree_refuse_live_processes() {
        let Some(mut env) = v1_env() else { return };
        env.cg.create("busy", &limits(64 * MIB, 16)).unwrap();
        let child = env.spawn_gated("sleep 1000");
        let pid = env.pid(child);
        env.cg.add_process("busy", pid).unwrap();
        env.release(child);
        assert!(matches!(
            remove_subtree(&env.layout, &env.subtree),
            Err(CgroupError::Busy { ref pids, .. }) if pids == &vec![pid]
        ));
        assert!(dir(&env, "memory", "busy").is_dir(), "nothing was removed");
        // Not killed: remove gives up after its bounded retry.
        assert!(matches!(
            env.cg.remove("busy"),
            Err(CgroupError::Remove { .. })
        ));
        env.cg.kill_all("busy").unwrap();
        env.cg.remove("busy").unwrap();
        remove_subtree(&env.layout, &env.subtree).unwrap();
        for controller in CONTROLLERS.into_iter().chain(["unified"]) {
            let path = root(&env).join(controller).join(&env.subtree);
            assert!(!path.exists(), "{} still exists", path.display());
        }
    }

    #[test]
    fn memory_hog_is_oom_killed_and_notified() {
        let Some(mut env) = v1_env() else { return };
        let limit = 32 * MIB;
        env.cg.create("hog", &limits(limit, 64)).unwrap();
        let notifier = env.cg.oom_notifier("hog").unwrap();
        assert!(!readable(&notifier, Duration::ZERO));
        let hog = env.spawn_gated(&format!("{} -c 'x = b\"x\" * (200 << 20)'", python()));
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
        assert!(stats.peak > limit / 2, "the hog never got near the limit");
    }

    #[test]
    fn pids_max_stops_a_fork_loop() {
        let Some(mut env) = v1_env() else { return };
        env.cg.create("forker", &limits(64 * MIB, 5)).unwrap();
        let shell =
            env.spawn_gated("sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1000 & done; wait'");
        env.cg.add_process("forker", env.pid(shell)).unwrap();
        env.release(shell);
        let events = dir(&env, "pids", "forker").join("pids.events");
        let refused = wait_for(|| Ok(read_keyed(&events, "max")? >= 1)).unwrap();
        assert!(refused, "no fork was refused: {}", read_trimmed(&events));
        let procs = env.cg.procs("forker").unwrap();
        assert!(procs.len() <= 5, "{procs:?}");
        assert!(procs.len() >= 2, "the loop did not fork: {procs:?}");
        let current = read_trimmed(&dir(&env, "pids", "forker").join("pids.current"));
        assert!(current.parse::<u64>().unwrap() <= 5);
        env.cg.kill_all("forker").unwrap();
        assert!(env.wait(shell, Duration::from_secs(5)).is_some());
        assert!(env.cg.procs("forker").unwrap().is_empty());
    }

    #[test]
    fn freeze_thaw_and_kill_while_frozen() {
        let Some(mut env) = v1_env() else { return };
        env.cg.create("ice", &limits(64 * MIB, 16)).unwrap();
        let child = env.spawn_gated("sleep 1000");
        env.cg.add_process("ice", env.pid(child)).unwrap();
        env.release(child);
        let state = dir(&env, "freezer", "ice").join("freezer.state");
        env.cg.freeze("ice", true).unwrap();
        assert_eq!(read_trimmed(&state), "FROZEN");
        env.cg.freeze("ice", false).unwrap();
        assert_eq!(read_trimmed(&state), "THAWED");
        env.cg.freeze("ice", true).unwrap();
        env.cg.kill_all("ice").unwrap();
        let status = env.wait(child, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(read_trimmed(&state), "THAWED");
    }

    #[test]
    fn a_new_supervisor_readopts_running_agents() {
        let Some(mut env) = v1_env() else { return };
        let agent_limits = limits(64 * MIB, 16);
        env.cg.create("keep", &agent_limits).unwrap();
        let child = env.spawn_gated("sleep 1000");
        let pid = env.pid(child);
        env.cg.add_process("keep", pid).unwrap();
        env.release(child);
        let again = open(env.layout.clone(), &env.subtree).unwrap();
        assert_eq!(again.list().unwrap(), vec!["keep".to_owned()]);
        again.create("keep", &agent_limits).unwrap();
        assert_eq!(again.procs("keep").unwrap(), vec![pid]);
        again.kill_all("keep").unwrap();
        assert!(env.wait(child, Duration::from_secs(5)).is_some());
    }

    /// A v1 machine without the hybrid cgroup2 mount (older systems): no `cgroup.kill`, so
    /// kill_all freezes, signals every listed pid, and thaws.
    #[test]
    fn pure_v1_kill_signals_every_pid_of_a_tree() {
        let Some(mut env) = v1_env() else { return };
        let pure = V1Cgroups::new(root(&env), None, PathBuf::from(&env.subtree)).unwrap();
        assert!(pure.missing_controllers().is_empty());
        assert!(pure.unified_dir("tree").is_none());
        pure.create("tree", &limits(64 * MIB, 16)).unwrap();
        assert!(dir(&env, "memory", "tree").is_dir());
        assert!(!dir(&env, "unified", "tree").exists());
        let shell = env.spawn_gated("sh -c 'sleep 1000 & sleep 1000 & wait'");
        pure.add_process("tree", env.pid(shell)).unwrap();
        env.release(shell);
        assert!(wait_for(|| Ok(pure.procs("tree")?.len() == 3)).unwrap());
        pure.freeze("tree", true).unwrap();
        pure.kill_all("tree").unwrap();
        assert!(pure.procs("tree").unwrap().is_empty());
        let status = env.wait(shell, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let state = dir(&env, "freezer", "tree").join("freezer.state");
        assert_eq!(read_trimmed(&state), "THAWED");
        pure.remove("tree").unwrap();
        assert!(!dir(&env, "memory", "tree").exists());
    }

    const CHILD_SUBTREE: &str = "NANOCLAW_CGROUP_TEST_SUBTREE";

    /// Moving the test process itself would move it out of the cgroups it was started in,
    /// so a child copy of this test binary runs `enter_supervisor_child`.
    #[test]
    fn enter_supervisor_moves_the_calling_process() {
        let Some(env) = v1_env() else { return };
        let test = concat!(module_path!(), "::enter_supervisor_child");
        let test = test.split_once("::").unwrap().1; // test names omit the crate
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_SUBTREE, &env.subtree)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("entered the supervisor cgroup"),
            "{stdout}\n{stderr}"
        );
        for controller in CONTROLLERS.into_iter().chain(["unified"]) {
            let path = supervisor_path(&root(&env).join(controller), Path::new(&env.subtree));
            assert!(path.is_dir(), "{}", path.display());
        }
    }

    #[test]
    fn enter_supervisor_child() {
        let Ok(subtree) = std::env::var(CHILD_SUBTREE) else {
            return; // only meaningful as the child of the test above
        };
        let cg = open(detect(Path::new(DEFAULT_ROOT)).unwrap(), &subtree).unwrap();
        cg.enter_supervisor().unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_in(
            pid,
            &format!("/{subtree}/supervisor"),
            cg.unified_dir("x").is_some(),
        );
        println!("entered the supervisor cgroup");
    }
}
