//! The egress allowlist: loading `bpf/egress.c`, attaching it to agent cgroups, and keeping
//! its maps in step with each agent's granted endpoints.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, RawTracePoint,
};

use super::BpfError;
use crate::config::manifest::{Endpoint, Proto};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/egress.o"));
const NAME: &str = "egress";
const PROGRAMS: [&str; 4] = ["nc_connect4", "nc_connect6", "nc_sendmsg4", "nc_sendmsg6"];
/// Accounting programs (cgroup_skb) and where they attach.
const SKB_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("nc_rx", CgroupSkbAttachType::Ingress),
    ("nc_tx", CgroupSkbAttachType::Egress),
];

/// Bytes and packets an agent received and sent (bpf/nanoclaw.h `struct nc_traffic`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}
/// `NC_KEY_FIXED_BITS` in bpf/nanoclaw.h: cgroup id, port, proto, pad.
const FIXED_BITS: u32 = 96;
/// Key data after `prefixlen` (bpf/nanoclaw.h `struct nc_key4` / `nc_key6`).
type Key4 = [u8; 16];
type Key6 = [u8; 28];

/// One denied connect/sendmsg (bpf/nanoclaw.h `struct nc_denial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub cgid: u64,
    pub dest: SocketAddr,
    pub proto: &'static str,
    pub op: &'static str,
}

impl Denial {
    /// Decodes a ring-buffer record (32 bytes, native endian except port and address).
    pub fn parse(b: &[u8]) -> Option<Denial> {
        if b.len() < 32 {
            return None;
        }
        let cgid = u64::from_ne_bytes(b[0..8].try_into().ok()?);
        let family = u32::from_ne_bytes(b[8..12].try_into().ok()?);
        let port = u16::from_be_bytes([b[12], b[13]]);
        let proto = match b[14] {
            6 => "tcp",
            17 => "udp",
            _ => "other",
        };
        let op = if b[15] == 2 { "sendmsg" } else { "connect" };
        let ip: IpAddr = match family {
            2 => IpAddr::from(<[u8; 4]>::try_from(&b[16..20]).ok()?),
            10 => IpAddr::from(<[u8; 16]>::try_from(&b[16..32]).ok()?),
            _ => return None,
        };
        Some(Denial {
            cgid,
            dest: SocketAddr::new(ip, port),
            proto,
            op,
        })
    }
}

/// Loaded egress programs plus their (pinned) maps.
pub struct Egress {
    bpf: Ebpf,
    /// `/sys/fs/bpf/<cgroup_subtree>`: maps, and `links/<agent>/` per agent.
    pin_dir: PathBuf,
    /// Whether the syscall-counting tracepoint works here (or why not).
    monitor: Result<(), String>,
    /// Its link while attached (sampled monitoring detaches it between windows).
    monitor_link: Option<aya::programs::raw_trace_point::RawTracePointLinkId>,
}

/// `struct nc_sys_key` of bpf/nanoclaw.h: cgroup id, syscall number, padding.
type SysKey = [u8; 16];

#[cfg(test)]
fn sys_key(cgid: u64, nr: u32) -> SysKey {
    let mut k = [0u8; 16];
    k[0..8].copy_from_slice(&cgid.to_ne_bytes());
    k[8..12].copy_from_slice(&nr.to_ne_bytes());
    k
}

use super::{map_err, prog_err};

/// Map `name` of the egress object as the typed view `T`.
fn map_of<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    super::map_of(NAME, bpf, name)
}

/// Program `name` of the egress object as the typed program `T`.
fn program_of<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    super::program_of(NAME, bpf, name)
}

/// Pins an attached program's link at `path`, so the attachment outlives this process.
fn pin_link<L>(link: L, path: PathBuf) -> Result<(), BpfError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let fd_link: FdLink = link.try_into().map_err(|e| BpfError::Pin {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    super::pin_fd_link(fd_link, path)
}

/// The cgroup id the kernel reports for tasks in `dir` (its cgroup2 inode number).
pub fn cgroup_id(dir: &Path) -> Result<u64, BpfError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| BpfError::Cgroup {
            path: dir.to_path_buf(),
            source: e,
        })
}

fn key4(cgid: u64, port: u16, proto: u8, addr: [u8; 4], prefix: u8) -> Key<Key4> {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&cgid.to_ne_bytes());
    d[8..10].copy_from_slice(&port.to_be_bytes());
    d[10] = proto;
    d[12..16].copy_from_slice(&addr);
    Key::new(FIXED_BITS + u32::from(prefix.min(32)), d)
}

fn key6(cgid: u64, port: u16, proto: u8, addr: [u8; 16], prefix: u8) -> Key<Key6> {
    let mut d = [0u8; 28];
    d[0..8].copy_from_slice(&cgid.to_ne_bytes());
    d[8..10].copy_from_slice(&port.to_be_bytes());
    d[10] = proto;
    d[12..28].copy_from_slice(&addr);
    Key::new(FIXED_BITS + u32::from(prefix.min(128)), d)
}

/// The rule an allow-map key (`Key4` or `Key6` data, cgroup id first) stands for.
fn endpoint_of(k: &[u8], prefix_len: u32) -> Endpoint {
    let ip = match k.len() {
        16 => IpAddr::V4(std::net::Ipv4Addr::new(k[12], k[13], k[14], k[15])),
        _ => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&k[12..28]);
            IpAddr::V6(a.into())
        }
    };
    Endpoint {
        addr: SocketAddr::new(ip, u16::from_be_bytes([k[8], k[9]])),
        proto: if k[10] == 17 { Proto::Udp } else { Proto::Tcp },
        prefix: prefix_len.saturating_sub(FIXED_BITS) as u8,
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

impl Egress {
    /// Loads and verifies the programs, with maps pinned under `/sys/fs/bpf/<subtree>`.
    pub fn load(subtree: &str, syscall_monitor: bool) -> Result<Egress, BpfError> {
        let pin_dir = super::pin_dir(subtree, "links")?;
        let mut bpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(OBJECT)
            .map_err(|e| BpfError::Load {
                object: NAME,
                source: Box::new(e),
            })?;
        for p in PROGRAMS {
            program_of::<CgroupSockAddr>(&mut bpf, p)?
                .load()
                .map_err(prog_err(p))?;
        }
        for (p, _) in SKB_PROGRAMS {
            program_of::<CgroupSkb>(&mut bpf, p)?
                .load()
                .map_err(prog_err(p))?;
        }
        let (monitor, monitor_link) = if syscall_monitor {
            match attach_monitor(&mut bpf) {
                Ok(id) => (Ok(()), Some(id)),
                Err(e) => (Err(e.to_string()), None),
            }
        } else {
            (Err("off (device.json syscall_monitor: false)".into()), None)
        };
        Ok(Egress {
            bpf,
            pin_dir,
            monitor,
            monitor_link,
        })
    }

    fn links_dir(&self, agent: &str) -> PathBuf {
        self.pin_dir.join("links").join(agent)
    }

    /// Whether `agent`'s programs are attached (pinned links exist), e.g. after re-adoption.
    pub fn is_attached(&self, agent: &str) -> bool {
        PROGRAMS
            .iter()
            .chain(SKB_PROGRAMS.iter().map(|(p, _)| p))
            .all(|p| self.links_dir(agent).join(p).exists())
    }

    /// Attaches all four programs to the cgroup v2 directory `dir` and pins the links, so they
    /// outlive this process. Returns the cgroup id the programs see.
    pub fn attach(&mut self, agent: &str, dir: &Path) -> Result<u64, BpfError> {
        let cgid = cgroup_id(dir)?;
        let links = self.links_dir(agent);
        // Stale links of an earlier instance (a removed and recreated cgroup) go first.
        let _ = std::fs::remove_dir_all(&links);
        std::fs::create_dir_all(&links).map_err(|e| BpfError::PinDir {
            path: links.clone(),
            source: e,
        })?;
        let cg = std::fs::File::open(dir).map_err(|e| BpfError::Cgroup {
            path: dir.to_path_buf(),
            source: e,
        })?;
        for p in PROGRAMS {
            let prog = program_of::<CgroupSockAddr>(&mut self.bpf, p)?;
            let id = prog
                .attach(cg.as_fd(), CgroupAttachMode::Single)
                .map_err(prog_err(p))?;
            pin_link(prog.take_link(id).map_err(prog_err(p))?, links.join(p))?;
        }
        for (p, at) in SKB_PROGRAMS {
            let prog = program_of::<CgroupSkb>(&mut self.bpf, p)?;
            let id = prog
                .attach(cg.as_fd(), at, CgroupAttachMode::Single)
                .map_err(prog_err(p))?;
            pin_link(prog.take_link(id).map_err(prog_err(p))?, links.join(p))?;
        }
        // A fresh counter for this cgroup (a new instance has a new cgroup id).
        let mut traffic: HashMap<&mut MapData, u64, [u64; 4]> =
            map_of(&mut self.bpf, "nc_traffic")?;
        traffic
            .insert(&cgid, &[0u64; 4], 0)
            .map_err(map_err("nc_traffic"))?;
        Ok(cgid)
    }

    /// Replaces the allow rules of cgroup `cgid` with `endpoints` and marks it managed. A
    /// rule takes effect on the agent's next connect/sendmsg; a rule that stays keeps its
    /// use count (bpf/egress.c counts the connects and datagrams each rule allows).
    pub fn set_rules(&mut self, cgid: u64, endpoints: &[Endpoint]) -> Result<(), BpfError> {
        let uses: std::collections::HashMap<Endpoint, u32> = self
            .clear_rules(cgid)?
            .into_iter()
            .map(|(e, n)| (e, n.min(u64::from(u32::MAX)) as u32))
            .collect();
        let used = |e: &Endpoint| uses.get(e).copied().unwrap_or(0);
        let mut t4: LpmTrie<&mut MapData, Key4, u32> = map_of(&mut self.bpf, "nc_allow4")?;
        for e in endpoints {
            if let IpAddr::V4(a) = e.addr.ip() {
                let k = key4(
                    cgid,
                    e.addr.port(),
                    proto_number(e.proto),
                    a.octets(),
                    e.prefix,
                );
                t4.insert(&k, &used(e), 0).map_err(map_err("nc_allow4"))?;
            }
        }
        let mut t6: LpmTrie<&mut MapData, Key6, u32> = map_of(&mut self.bpf, "nc_allow6")?;
        for e in endpoints {
            if let IpAddr::V6(a) = e.addr.ip() {
                let k = key6(
                    cgid,
                    e.addr.port(),
                    proto_number(e.proto),
                    a.octets(),
                    e.prefix,
                );
                t6.insert(&k, &used(e), 0).map_err(map_err("nc_allow6"))?;
            }
        }
        let mut agents: HashMap<&mut MapData, u64, u32> = map_of(&mut self.bpf, "nc_agents")?;
        agents.insert(&cgid, &0, 0).map_err(map_err("nc_agents"))
    }

    /// Every allow rule with the connects and datagrams it allowed, by cgroup id: one pass
    /// over both maps.
    pub fn rule_uses(&self) -> std::collections::HashMap<u64, Vec<(Endpoint, u64)>> {
        let mut out: std::collections::HashMap<u64, Vec<(Endpoint, u64)>> = Default::default();
        let mut add = |k: &[u8], prefix_len: u32, n: u32| {
            let mut cg = [0u8; 8];
            cg.copy_from_slice(&k[0..8]);
            out.entry(u64::from_ne_bytes(cg))
                .or_default()
                .push((endpoint_of(k, prefix_len), u64::from(n)));
        };
        if let Some(Ok(t)) = self
            .bpf
            .map("nc_allow4")
            .map(LpmTrie::<_, Key4, u32>::try_from)
        {
            for (k, n) in t.iter().filter_map(Result::ok) {
                add(k.data().as_slice(), k.prefix_len(), n);
            }
        }
        if let Some(Ok(t)) = self
            .bpf
            .map("nc_allow6")
            .map(LpmTrie::<_, Key6, u32>::try_from)
        {
            for (k, n) in t.iter().filter_map(Result::ok) {
                add(k.data().as_slice(), k.prefix_len(), n);
            }
        }
        out
    }

    /// Removes every allow rule of `cgid` (the cgroup stays managed: deny all) and returns
    /// them with their use counts.
    pub fn clear_rules(&mut self, cgid: u64) -> Result<Vec<(Endpoint, u64)>, BpfError> {
        let mine = cgid.to_ne_bytes();
        let mut taken = Vec::new();
        let mut t4: LpmTrie<&mut MapData, Key4, u32> = map_of(&mut self.bpf, "nc_allow4")?;
        let stale: Vec<(Key<Key4>, u32)> = t4
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.data()[0..8] == mine)
            .collect();
        for (k, n) in stale {
            let _ = t4.remove(&k);
            taken.push((
                endpoint_of(k.data().as_slice(), k.prefix_len()),
                u64::from(n),
            ));
        }
        let mut t6: LpmTrie<&mut MapData, Key6, u32> = map_of(&mut self.bpf, "nc_allow6")?;
        let stale: Vec<(Key<Key6>, u32)> = t6
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.data()[0..8] == mine)
            .collect();
        for (k, n) in stale {
            let _ = t6.remove(&k);
            taken.push((
                endpoint_of(k.data().as_slice(), k.prefix_len()),
                u64::from(n),
            ));
        }
        Ok(taken)
    }

    /// Detaches `agent` (unpins its links) and forgets `cgid`'s rules; returns them with
    /// their use counts.
    pub fn detach(&mut self, agent: &str, cgid: Option<u64>) -> Vec<(Endpoint, u64)> {
        let _ = std::fs::remove_dir_all(self.links_dir(agent));
        let mut taken = Vec::new();
        if let Some(cgid) = cgid {
            taken = self.clear_rules(cgid).unwrap_or_default();
            if let Ok(mut m) = map_of::<HashMap<&mut MapData, u64, u32>>(&mut self.bpf, "nc_agents")
            {
                let _ = m.remove(&cgid);
            }
            if let Ok(mut m) =
                map_of::<HashMap<&mut MapData, u64, [u64; 4]>>(&mut self.bpf, "nc_traffic")
            {
                let _ = m.remove(&cgid);
            }
        }
        taken
    }

    /// Whether syscall counting works here, or why not.
    pub fn monitor(&self) -> &Result<(), String> {
        &self.monitor
    }

    /// Attaches or detaches the counting tracepoint (sampled monitoring). While detached no
    /// task on the device pays for it, and nothing is counted.
    pub fn set_monitor_active(&mut self, active: bool) -> Result<(), BpfError> {
        if self.monitor.is_err() || active == self.monitor_link.is_some() {
            return Ok(());
        }
        let p = "nc_sys_enter";
        let prog = program_of::<RawTracePoint>(&mut self.bpf, p)?;
        match self.monitor_link.take() {
            Some(id) => prog.detach(id).map_err(prog_err(p)),
            None => {
                self.monitor_link = Some(prog.attach("sys_enter").map_err(prog_err(p))?);
                Ok(())
            }
        }
    }

    /// Whether the counting tracepoint is attached right now.
    pub fn monitor_active(&self) -> bool {
        self.monitor_link.is_some()
    }

    /// Starts counting the syscalls of cgroup `cgid`.
    pub fn watch_syscalls(&mut self, cgid: u64) -> Result<(), BpfError> {
        let mut m: HashMap<&mut MapData, u64, u32> = map_of(&mut self.bpf, "nc_monitored")?;
        m.insert(&cgid, &0, 0).map_err(map_err("nc_monitored"))
    }

    /// Stops counting `cgid` and drops its counts.
    pub fn unwatch_syscalls(&mut self, cgid: u64) {
        if let Ok(mut m) = map_of::<HashMap<&mut MapData, u64, u32>>(&mut self.bpf, "nc_monitored")
        {
            let _ = m.remove(&cgid);
        }
        if let Ok(mut m) =
            map_of::<HashMap<&mut MapData, SysKey, u64>>(&mut self.bpf, "nc_syscalls")
        {
            let stale: Vec<SysKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k[0..8] == cgid.to_ne_bytes())
                .collect();
            for k in stale {
                let _ = m.remove(&k);
            }
        }
    }

    /// (syscall number, count) so far of every monitored cgroup, keyed by cgroup id: one pass
    /// over the map however many agents run.
    pub fn all_syscall_counts(&self) -> std::collections::HashMap<u64, Vec<(u32, u64)>> {
        let mut out: std::collections::HashMap<u64, Vec<(u32, u64)>> = Default::default();
        let Some(m) = self.bpf.map("nc_syscalls") else {
            return out;
        };
        let Ok(m) = HashMap::<&MapData, SysKey, u64>::try_from(m) else {
            return out;
        };
        for (k, v) in m.iter().filter_map(Result::ok) {
            let (Ok(cg), Ok(nr)) = (k[0..8].try_into(), k[8..12].try_into()) else {
                continue;
            };
            out.entry(u64::from_ne_bytes(cg))
                .or_default()
                .push((u32::from_ne_bytes(nr), v));
        }
        out
    }

    /// (syscall number, count) of cgroup `cgid` so far.
    pub fn syscall_counts(&self, cgid: u64) -> Vec<(u32, u64)> {
        self.all_syscall_counts().remove(&cgid).unwrap_or_default()
    }

    /// Bytes and packets of cgroup `cgid` so far.
    pub fn traffic(&self, cgid: u64) -> Option<Traffic> {
        let m = self.bpf.map("nc_traffic")?;
        let t = HashMap::<&MapData, u64, [u64; 4]>::try_from(m).ok()?;
        let [rx_bytes, rx_packets, tx_bytes, tx_packets] = t.get(&cgid, 0).ok()?;
        Some(Traffic {
            rx_bytes,
            rx_packets,
            tx_bytes,
            tx_packets,
        })
    }

    /// Removes every pinned object of this supervisor (clean shutdown: no agent runs any more).
    pub fn unpin_all(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }

    /// The denial ring buffer and a duplicate of its fd to wait on (taken once).
    pub fn take_denials(&mut self) -> Result<(RingBuf<MapData>, OwnedFd), BpfError> {
        super::take_ring(NAME, &mut self.bpf, "nc_denials")
    }

    /// Probes the kernel: attaches the programs to the scratch cgroup `dir` and detaches them.
    pub fn probe(&mut self, dir: &Path) -> Result<(), BpfError> {
        let r = self.attach("probe", dir);
        self.detach("probe", r.as_ref().ok().copied());
        r.map(drop)
    }
}

/// Attaches the syscall-counting raw tracepoint `sys_enter` (tracefs is mounted if missing).
fn attach_monitor(
    bpf: &mut Ebpf,
) -> Result<aya::programs::raw_trace_point::RawTracePointLinkId, BpfError> {
    super::ensure_tracefs()?;
    let p = "nc_sys_enter";
    let prog = program_of::<RawTracePoint>(bpf, p)?;
    prog.load().map_err(prog_err(p))?;
    prog.attach("sys_enter").map_err(prog_err(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_key_matches_the_c_layout() {
        let k = sys_key(9, 41);
        assert_eq!(&k[0..8], &9u64.to_ne_bytes());
        assert_eq!(&k[8..12], &41u32.to_ne_bytes());
    }

    #[test]
    fn keys_match_the_c_layout() {
        // struct nc_key4: u32 prefixlen + u64 cgid + u16 port + u8 proto + u8 pad + 4 addr.
        assert_eq!(std::mem::size_of::<Key<Key4>>(), 4 + 16);
        assert_eq!(std::mem::size_of::<Key<Key6>>(), 4 + 28);
        let k = key4(7, 443, 6, [10, 0, 0, 5], 32);
        assert_eq!(k.prefix_len(), 128);
        let d = k.data();
        assert_eq!(&d[8..10], &[1, 187]);
        assert_eq!(d[10], 6);
        assert_eq!(&d[12..16], &[10, 0, 0, 5]);
    }

    #[test]
    fn denials_decode() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..12].copy_from_slice(&2u32.to_ne_bytes());
        b[12..14].copy_from_slice(&80u16.to_be_bytes());
        b[14] = 6;
        b[15] = 1;
        b[16..20].copy_from_slice(&[1, 2, 3, 4]);
        let d = Denial::parse(&b).unwrap();
        assert_eq!(d.cgid, 42);
        assert_eq!(d.dest, "1.2.3.4:80".parse().unwrap());
        assert_eq!((d.proto, d.op), ("tcp", "connect"));
        assert!(Denial::parse(&b[..31]).is_none());
        b[8..12].copy_from_slice(&99u32.to_ne_bytes());
        assert!(Denial::parse(&b).is_none());
    }
}
