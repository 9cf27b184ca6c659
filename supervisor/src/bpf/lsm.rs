//! BPF LSM enforcement (`bpf/lsm.c`): exec only from the agent's bundle, no mounts, no ptrace
//! of other processes, no raw or packet sockets, no opens outside the agent's own mounts.
//!
//! The hooks are global: they are attached once per supervisor and their links pinned under
//! `/sys/fs/bpf/<subtree>/lsm/`, so they hold while the supervisor is down. Which tasks they
//! judge is decided by `nc_lsm_agents` (cgroup id → rules), filled before an agent starts.
//! Loading needs a kernel booted with `bpf` in `lsm=`; elsewhere `load` fails (EPERM,
//! ENOTSUPP, EINVAL) and the daemon reports the Landlock + seccomp fallback.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::links::FdLink;
use aya::{Btf, Ebpf};

use super::{BpfError, map_err, prog_err};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lsm.o"));
const NAME: &str = "lsm";

/// (program, LSM hook, rule bit) of bpf/lsm.c.
const HOOKS: [(&str, &str, Op); 5] = [
    ("nc_exec", "bprm_check_security", Op::Exec),
    ("nc_mount", "sb_mount", Op::Mount),
    ("nc_ptrace", "ptrace_access_check", Op::Ptrace),
    ("nc_socket", "socket_create", Op::Socket),
    ("nc_file_open", "file_open", Op::FileOpen),
];

/// The operations the LSM programs judge (`NC_LSM_*` in bpf/nanoclaw.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exec = 1,
    Mount = 2,
    Ptrace = 3,
    Socket = 4,
    FileOpen = 5,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        HOOKS.iter().map(|h| h.2).find(|o| *o as u8 == v)
    }

    /// The rule's name in audit records and `nanoclaw why`.
    pub fn rule(self) -> &'static str {
        match self {
            Op::Exec => "bpf-lsm exec: only files of the agent's bundle",
            Op::Mount => "bpf-lsm mount: agents never mount",
            Op::Ptrace => "bpf-lsm ptrace: no access to other processes",
            Op::Socket => "bpf-lsm socket: no raw or packet sockets",
            Op::FileOpen => "bpf-lsm file_open: only the agent's rootfs, scratch, /dev and /proc",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::Mount => "mount",
            Op::Ptrace => "ptrace",
            Op::Socket => "socket",
            Op::FileOpen => "file_open",
        }
    }
}

/// Every rule on (`struct nc_lsm_agent.rules`).
pub const ALL_RULES: u32 = (1 << Op::Exec as u32)
    | (1 << Op::Mount as u32)
    | (1 << Op::Ptrace as u32)
    | (1 << Op::Socket as u32)
    | (1 << Op::FileOpen as u32);

/// One denial (bpf/nanoclaw.h `struct nc_lsm_event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmEvent {
    pub cgid: u64,
    pub op: Op,
    pub pid: u32,
    pub arg: u64,
    pub name: String,
}

/// `sizeof(struct nc_lsm_event)`.
const EVENT_LEN: usize = 88;

impl LsmEvent {
    pub fn parse(b: &[u8]) -> Option<LsmEvent> {
        if b.len() < EVENT_LEN {
            return None;
        }
        let name = &b[24..EVENT_LEN];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(LsmEvent {
            cgid: u64::from_ne_bytes(b[0..8].try_into().ok()?),
            arg: u64::from_ne_bytes(b[8..16].try_into().ok()?),
            pid: u32::from_ne_bytes(b[16..20].try_into().ok()?),
            op: Op::from_u8(b[20])?,
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
        })
    }

    /// What was attempted, for the audit record: "exec /tmp/sh (dev 0:45)".
    pub fn target(&self) -> String {
        match self.op {
            Op::Exec => format!("exec {} (dev {})", self.name, dev_str(self.arg)),
            Op::Mount => format!("mount type {}", or_dash(&self.name)),
            Op::Ptrace => format!("ptrace/proc access to pid {}", self.arg),
            Op::Socket => format!(
                "socket(family {}, type {})",
                self.arg >> 16,
                self.arg & 0xffff
            ),
            Op::FileOpen => format!(
                "open {} (dev {}, a mount outside the agent's namespace)",
                or_dash(&self.name),
                dev_str(self.arg)
            ),
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A kernel-internal dev_t as "major:minor".
fn dev_str(dev: u64) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// The kernel-internal dev_t (`MAJOR << 20 | MINOR`, what `super_block.s_dev` holds) of a
/// user-space `st_dev` (glibc/musl encoding).
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    (major << 20) | (minor & 0xf_ffff)
}

/// The attached LSM programs and their (pinned) maps.
pub struct Lsm {
    bpf: Ebpf,
    pin_dir: PathBuf,
    events: Option<(RingBuf<MapData>, OwnedFd)>,
}

impl Lsm {
    /// Loads, attaches and pins all hooks. Links of an earlier supervisor are replaced only
    /// after the new ones are attached, so there is no moment without enforcement.
    pub fn load(subtree: &str) -> Result<Lsm, BpfError> {
        let pin_dir = super::pin_dir(subtree, "lsm")?;
        let links = pin_dir.join("lsm");
        let btf = Btf::from_sys_fs().map_err(|e| BpfError::Load {
            object: NAME,
            source: Box::new(aya::EbpfError::BtfError(e)),
        })?;
        let mut bpf = aya::EbpfLoader::new()
            .btf(&btf)
            .default_map_pin_directory(&pin_dir)
            .load(OBJECT)
            .map_err(|e| BpfError::Load {
                object: NAME,
                source: Box::new(e),
            })?;
        let mut attached = Vec::new();
        for (p, hook, _) in HOOKS {
            let prog: &mut aya::programs::Lsm = super::program_of(NAME, &mut bpf, p)?;
            prog.load(hook, &btf).map_err(prog_err(p))?;
            let id = prog.attach().map_err(prog_err(p))?;
            attached.push((p, FdLink::from(prog.take_link(id).map_err(prog_err(p))?)));
        }
        for (p, link) in attached {
            let path = links.join(p);
            let _ = std::fs::remove_file(&path);
            super::pin_fd_link(link, path)?;
        }
        let events = super::take_ring(NAME, &mut bpf, "nc_lsm_events")?;
        Ok(Lsm {
            bpf,
            pin_dir,
            events: Some(events),
        })
    }

    fn agents(&mut self) -> Result<HashMap<&mut MapData, u64, [u8; 16]>, BpfError> {
        super::map_of(NAME, &mut self.bpf, "nc_lsm_agents")
    }

    /// Holds cgroup `cgid` to `rules` (bits of [`Op`]); exec is allowed only from files on
    /// the filesystem `bundle_rootfs` lives on (reached through the agent's own mounts).
    pub fn hold(&mut self, cgid: u64, bundle_rootfs: &Path, rules: u32) -> Result<(), BpfError> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(bundle_rootfs)
            .map(|m| kernel_dev(m.dev()))
            .map_err(|e| BpfError::Rootfs {
                path: bundle_rootfs.to_path_buf(),
                source: e,
            })?;
        self.hold_dev(cgid, dev, rules)
    }

    /// [`Lsm::hold`] with the exec device given directly (0: no exec at all).
    pub fn hold_dev(&mut self, cgid: u64, exec_dev: u64, rules: u32) -> Result<(), BpfError> {
        // struct nc_lsm_agent: u64 exec_dev, u32 rules, u32 pad.
        let mut v = [0u8; 16];
        v[0..8].copy_from_slice(&exec_dev.to_ne_bytes());
        v[8..12].copy_from_slice(&rules.to_ne_bytes());
        self.agents()?
            .insert(&cgid, &v, 0)
            .map_err(map_err("nc_lsm_agents"))
    }

    /// Forgets cgroup `cgid` (its cgroup is gone or about to be).
    pub fn release(&mut self, cgid: u64) {
        if let Ok(mut m) = self.agents() {
            let _ = m.remove(&cgid);
        }
    }

    /// Whether `cgid` is held.
    pub fn holds(&mut self, cgid: u64) -> bool {
        self.agents().is_ok_and(|m| m.get(&cgid, 0).is_ok())
    }

    /// The denial ring buffer and a duplicate of its fd to wait on (taken once).
    pub fn take_events(&mut self) -> Option<(RingBuf<MapData>, OwnedFd)> {
        self.events.take()
    }

    /// Denials waiting in the ring buffer (before [`Lsm::take_events`]).
    pub fn drain(&mut self) -> Vec<LsmEvent> {
        let mut out = Vec::new();
        if let Some((rb, _)) = self.events.as_mut() {
            while let Some(item) = rb.next() {
                out.extend(LsmEvent::parse(&item));
            }
        }
        out
    }

    /// Detaches the hooks (unpins their links); the maps go with [`super::Egress::unpin_all`].
    pub fn unpin(&self) {
        let _ = std::fs::remove_dir_all(self.pin_dir.join("lsm"));
        let _ = std::fs::remove_file(self.pin_dir.join("nc_lsm_agents"));
        let _ = std::fs::remove_file(self.pin_dir.join("nc_lsm_events"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_matches_the_kernel_encoding() {
        // 8:1 (sda1) and 259:65537 (a large minor).
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        let big = (259u64 << 8) | (0x01 & 0xff) | ((65537u64 & !0xff) << 12);
        assert_eq!(kernel_dev(big), (259 << 20) | 65537);
        assert_eq!(dev_str(kernel_dev(0x801)), "8:1");
    }

    #[test]
    fn events_decode() {
        let mut b = [0u8; EVENT_LEN];
        b[0..8].copy_from_slice(&7u64.to_ne_bytes());
        b[8..16].copy_from_slice(&((8u64 << 20) | 3).to_ne_bytes());
        b[16..20].copy_from_slice(&42u32.to_ne_bytes());
        b[20] = Op::Exec as u8;
        b[24..31].copy_from_slice(b"/tmp/sh");
        let e = LsmEvent::parse(&b).unwrap();
        assert_eq!((e.cgid, e.pid, e.op), (7, 42, Op::Exec));
        assert_eq!(e.target(), "exec /tmp/sh (dev 8:3)");
        assert!(LsmEvent::parse(&b[..EVENT_LEN - 1]).is_none());
        b[20] = 9;
        assert!(LsmEvent::parse(&b).is_none());
        b[20] = Op::Socket as u8;
        b[8..16].copy_from_slice(&((17u64 << 16) | 3).to_ne_bytes());
        let e = LsmEvent::parse(&b).unwrap();
        assert_eq!(e.target(), "socket(family 17, type 3)");
    }

    #[test]
    fn every_rule_bit_is_set() {
        for (_, _, op) in HOOKS {
            assert_ne!(ALL_RULES & (1 << op as u32), 0, "{op:?}");
        }
    }
}
