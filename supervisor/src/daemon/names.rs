//! Host names in egress grants: a cache of what each name resolves to (see [`crate::dns`]), a
//! task that refreshes the names running agents use when their TTL runs out, and the step that
//! turns an agent's destinations into the addresses its BPF allowlist holds. A change of
//! addresses reaches the running agents' maps at once (no restart).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;

use super::{CtxRef, Daemon, now_ms, random_u64};
use crate::admission::Effective;
use crate::config::manifest::{Destination, Endpoint};

/// Retry delay after a failed lookup.
const RETRY_MS: u64 = 5_000;
/// How long the last good addresses stay in force while the resolvers cannot be reached.
const STALE_MAX_MS: u64 = 3_600_000;

#[derive(Debug, Default, Clone)]
pub struct Entry {
    pub addrs: Vec<IpAddr>,
    /// When the addresses run out (ms since the epoch); 0: never resolved.
    pub expires_ms: u64,
    /// When to ask next.
    pub due_ms: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Names {
    pub entries: HashMap<String, Entry>,
    wake: Option<smol::channel::Sender<()>>,
}

impl Names {
    /// Asks the refresh task to look at the names again now (a new agent, a reload).
    pub fn wake(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }
}

/// The addresses `eff.network` allows right now: its address entries plus what each of its
/// names currently resolves to.
pub fn endpoints(d: &Daemon, eff: &Effective) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for dest in &eff.network {
        match dest {
            Destination::Addr(e) => out.push(*e),
            Destination::Host(h) => {
                let Some(entry) = d.names.entries.get(&h.name) else {
                    continue;
                };
                for ip in &entry.addrs {
                    out.push(Endpoint {
                        addr: SocketAddr::new(*ip, h.port),
                        proto: h.proto,
                        prefix: if ip.is_ipv4() { 32 } else { 128 },
                    });
                }
            }
        }
    }
    out
}

/// The names that running agents with egress control use.
fn names_in_use(d: &Daemon) -> BTreeSet<String> {
    d.agents
        .values()
        .filter(|a| a.instance.as_ref().is_some_and(|i| i.egress_cgid.is_some()))
        .filter_map(|a| a.admission.as_ref().ok())
        .flat_map(|e| e.network.iter().filter_map(Destination::as_host))
        .map(|h| h.name.clone())
        .collect()
}

/// Re-applies the allowlists of the running agents that use `name`.
fn reapply(d: &mut Daemon, name: &str) {
    let targets: Vec<(String, u64, Effective)> = d
        .agents
        .iter()
        .filter_map(|(n, a)| {
            let cgid = a.instance.as_ref()?.egress_cgid?;
            let eff = a.admission.as_ref().ok()?;
            eff.network
                .iter()
                .any(|x| x.as_host().is_some_and(|h| h.name == name))
                .then(|| (n.clone(), cgid, eff.clone()))
        })
        .collect();
    for (agent, cgid, eff) in targets {
        if let Err(e) = super::egress::update(d, cgid, &eff) {
            crate::log!("nanoclaw: {agent}: updating egress rules for {name}: {e}");
        }
    }
}

/// Starts the refresh task.
pub fn spawn(ctx: &CtxRef) {
    let (tx, rx) = smol::channel::bounded::<()>(1);
    ctx.d.borrow_mut().names.wake = Some(tx);
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                let next = refresh(&c).await;
                let sleep = Duration::from_millis(next.saturating_sub(now_ms()).clamp(100, 60_000));
                let timer = async {
                    smol::Timer::after(sleep).await;
                };
                let woken = async {
                    let _ = rx.recv().await;
                };
                smol::future::or(timer, woken).await;
            }
        })
        .detach();
}

/// Resolves every name in use that is due; returns when the next one falls due.
async fn refresh(ctx: &CtxRef) -> u64 {
    let (due, servers) = {
        let d = ctx.d.borrow();
        let now = now_ms();
        let due: Vec<String> = names_in_use(&d)
            .into_iter()
            .filter(|n| d.names.entries.get(n).is_none_or(|e| e.due_ms <= now))
            .collect();
        let servers = if due.is_empty() {
            Vec::new()
        } else {
            crate::dns::servers(&d.cfg.dns_servers)
        };
        (due, servers)
    };
    for name in due {
        // The daemon is not borrowed while the question is out.
        let result = crate::dns::resolve(&servers, &name, random_u64()).await;
        let mut d = ctx.d.borrow_mut();
        let now = now_ms();
        let entry = d.names.entries.entry(name.clone()).or_default();
        let before = entry.addrs.clone();
        let mut note = None;
        match result {
            Ok(ans) => {
                let mut addrs = ans.addrs;
                addrs.sort();
                addrs.dedup();
                entry.addrs = addrs;
                entry.expires_ms = now + u64::from(ans.ttl_s) * 1000;
                entry.due_ms = entry.expires_ms;
                entry.last_error = None;
            }
            Err(e) => {
                entry.due_ms = now + RETRY_MS;
                if entry.expires_ms != 0 && now > entry.expires_ms + STALE_MAX_MS {
                    entry.addrs.clear();
                }
                if entry.last_error.as_deref() != Some(e.as_str()) {
                    note = Some(format!(
                        "resolving {name} for egress grants failed: {e}; {}",
                        if entry.addrs.is_empty() {
                            "no address of it is allowed".to_owned()
                        } else {
                            format!(
                                "the last addresses stay allowed for up to {} s",
                                STALE_MAX_MS / 1000
                            )
                        }
                    ));
                }
                entry.last_error = Some(e);
            }
        }
        let changed = entry.addrs != before;
        let now_addrs = entry.addrs.clone();
        if let Some(n) = note {
            d.audit("", AuditKind::Posture, &n, false);
        }
        if changed {
            crate::log!(
                "nanoclaw: {name} now resolves to {now_addrs:?} (egress allowlists updated)"
            );
            reapply(&mut d, &name);
        }
    }
    let d = ctx.d.borrow();
    d.names
        .entries
        .values()
        .map(|e| e.due_ms)
        .min()
        .unwrap_or(now_ms() + 60_000)
}
