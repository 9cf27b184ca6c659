//! Capabilities granted at run time by grant tokens: applied live, removed at `not_after`,
//! kept across supervisor restarts, audited at every step.
//!
//! State lives in `<state_dir>/grants.json` (active grants and the nonces seen, each until its
//! token's `not_after`), replaced atomically before a grant is applied, so a token can never be
//! replayed after a crash and a grant never outlives its token.

use std::collections::BTreeMap;
use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CtxRef, Daemon, now_ms};
use crate::config::manifest::Endpoint;
use crate::config::policy::Capability;
use crate::policy::grant::{self, GrantError};
use crate::policy::signed::Envelope;

/// Most grants active at once on a device (bounds state and egress map churn).
pub const MAX_ACTIVE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Active {
    pub agent: String,
    pub capability: String,
    pub not_after: u64,
    pub nonce: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    pub active: Vec<Active>,
    /// Nonce → the `not_after` of its token (forgotten after that: the token is expired).
    pub nonces: BTreeMap<String, u64>,
}

fn path(d: &Daemon) -> std::path::PathBuf {
    d.cfg.state_dir.join("grants.json")
}

impl Grants {
    /// Loads the saved grants (an unreadable file means none; a token then simply fails).
    pub fn load(d: &Daemon) -> Grants {
        let p = path(d);
        std::fs::read(&p)
            .ok()
            .filter(|b| b.len() < 1 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The network endpoints `agent` holds by grant now.
    pub fn endpoints(&self, agent: &str, now_s: u64) -> Vec<Endpoint> {
        self.active
            .iter()
            .filter(|g| g.agent == agent && g.not_after > now_s)
            .filter_map(|g| match g.capability.parse::<Capability>() {
                Ok(Capability::Net(e)) => Some(e),
                _ => None,
            })
            .collect()
    }

    pub fn for_agent(&self, agent: &str) -> Vec<&Active> {
        self.active.iter().filter(|g| g.agent == agent).collect()
    }
}

fn save(d: &Daemon) -> std::io::Result<()> {
    crate::agents::persist::write_json_atomic(&path(d), &d.grants, true)
}

/// Re-applies an agent's egress rules (policy network + grants) to its running instance.
fn refresh_egress(d: &mut Daemon, agent: &str) -> Result<(), String> {
    let Some(a) = d.agents.get(agent) else {
        return Ok(());
    };
    let (Some(cgid), Ok(eff)) = (
        a.instance.as_ref().and_then(|i| i.egress_cgid),
        a.admission.clone(),
    ) else {
        return Ok(());
    };
    super::egress::update(d, cgid, &eff)
}

/// `request_capability` from `agent`'s socket: checks the token and applies the grant.
pub fn request(ctx: &CtxRef, agent: &str, token: &Value) -> Result<Value, String> {
    let mut guard = ctx.d.borrow_mut();
    let d = &mut *guard;
    let refuse = |d: &mut Daemon, why: String| {
        d.audit(
            agent,
            AuditKind::GrantRefused,
            &format!("request_capability refused: {why}"),
            true,
        );
        why
    };
    let text = token.to_string();
    if text.len() > grant::MAX_TOKEN_BYTES {
        return Err(refuse(
            d,
            format!("token is larger than {} bytes", grant::MAX_TOKEN_BYTES),
        ));
    }
    let env: Envelope = match serde_json::from_value(token.clone()) {
        Ok(e) => e,
        Err(e) => return Err(refuse(d, GrantError::Malformed(e.to_string()).to_string())),
    };
    let Some(key) = d.anchors.key.clone() else {
        return Err(refuse(
            d,
            "device.json pins no policy_key, so no grant token can be verified".into(),
        ));
    };
    let grantable = d
        .policy
        .agents
        .get(agent)
        .map(|g| g.capabilities())
        .unwrap_or_default();
    let now_s = now_ms() / 1000;
    let checked = grant::check(&env, &key, agent, &d.device_id, &grantable, now_s, |n| {
        d.grants.nonces.contains_key(n)
    });
    let g = match checked {
        Ok(g) => g,
        Err(e) => return Err(refuse(d, e.to_string())),
    };
    if d.grants.active.len() >= MAX_ACTIVE {
        return Err(refuse(
            d,
            format!("{MAX_ACTIVE} grants are already active on this device"),
        ));
    }
    if let Capability::Net(_) = g.capability {
        let held = d
            .agents
            .get(agent)
            .is_some_and(|a| a.instance.as_ref().is_some_and(|i| i.egress_cgid.is_some()));
        if !held {
            return Err(refuse(
                d,
                "the agent runs without egress control (empty network namespace), so a network grant cannot be applied live".into(),
            ));
        }
    } else {
        return Err(refuse(
            d,
            format!(
                "{} cannot be applied to a running agent; device grants take effect only through the policy",
                g.capability
            ),
        ));
    }
    d.grants
        .nonces
        .insert(g.token.nonce.clone(), g.token.not_after);
    d.grants.active.push(Active {
        agent: agent.to_owned(),
        capability: g.capability.to_string(),
        not_after: g.token.not_after,
        nonce: g.token.nonce.clone(),
    });
    // Durable before it takes effect: a crash cannot make the token usable twice.
    if let Err(e) = save(d) {
        d.grants.active.pop();
        d.grants.nonces.remove(&g.token.nonce);
        return Err(refuse(d, format!("cannot record the grant: {e}")));
    }
    if let Err(e) = refresh_egress(d, agent) {
        d.grants.active.pop();
        let _ = save(d);
        return Err(refuse(d, format!("applying the grant failed: {e}")));
    }
    let left = g.token.not_after.saturating_sub(now_s);
    d.audit(
        agent,
        AuditKind::GrantApplied,
        &format!(
            "{} granted by token {} until {} ({left} s)",
            g.capability, g.token.nonce, g.token.not_after
        ),
        true,
    );
    if let Some(w) = &d.grants_wake {
        let _ = w.try_send(());
    }
    Ok(json!({
        "capability": g.capability.to_string(),
        "not_after": g.token.not_after,
    }))
}

/// Removes grants that expired (or whose capability the policy no longer lists), updates
/// the agents' egress rules and audits each removal.
fn expire(d: &mut Daemon, now_s: u64) {
    let grantable = |d: &Daemon, g: &Active| {
        d.policy
            .agents
            .get(&g.agent)
            .is_some_and(|p| p.grantable.contains(&g.capability))
    };
    let (gone, kept): (Vec<Active>, Vec<Active>) = std::mem::take(&mut d.grants.active)
        .into_iter()
        .partition(|g| g.not_after <= now_s || !grantable(d, g));
    d.grants.active = kept;
    d.grants.nonces.retain(|_, not_after| *not_after > now_s);
    if gone.is_empty() {
        return;
    }
    if let Err(e) = save(d) {
        crate::log!("nanoclaw: saving grants: {e}");
    }
    for g in gone {
        if let Err(e) = refresh_egress(d, &g.agent) {
            crate::log!("nanoclaw: {}: removing an expired grant: {e}", g.agent);
        }
        let why = if g.not_after <= now_s {
            format!(
                "{} expired at {} (token {})",
                g.capability, g.not_after, g.nonce
            )
        } else {
            format!(
                "{} withdrawn: no longer grantable under the policy (token {})",
                g.capability, g.nonce
            )
        };
        d.audit(&g.agent, AuditKind::GrantExpired, &why, true);
    }
}

/// A new policy is in force: withdraw grants it no longer allows.
pub fn policy_changed(d: &mut Daemon) {
    expire(d, now_ms() / 1000);
}

/// Expires grants on time: sleeps until the next `not_after` (at most 1 s at a time, and
/// woken when a grant is added).
pub fn spawn(ctx: &CtxRef) {
    let (tx, rx) = smol::channel::bounded::<()>(1);
    ctx.d.borrow_mut().grants_wake = Some(tx);
    {
        let mut d = ctx.d.borrow_mut();
        expire(&mut d, now_ms() / 1000);
    }
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                let now = now_ms();
                let next =
                    c.d.borrow()
                        .grants
                        .active
                        .iter()
                        .map(|g| g.not_after * 1000)
                        .min();
                let wait = next.map_or(1000, |t| t.saturating_sub(now).min(1000));
                let timer = smol::Timer::after(Duration::from_millis(wait));
                smol::future::or(
                    async {
                        timer.await;
                    },
                    async {
                        let _ = rx.recv().await;
                    },
                )
                .await;
                let mut d = c.d.borrow_mut();
                expire(&mut d, now_ms() / 1000);
            }
        })
        .detach();
}
