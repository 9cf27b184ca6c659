//! Health checks: an agent whose manifest sets `health.heartbeat_s` must send a `heartbeat`
//! on its socket at least every `2 × heartbeat_s` seconds, the first within that time of its
//! start. A miss is audited and the agent is killed, so its restart policy applies; a version
//! still in its install probation is rolled back to the previous one instead.

use std::time::Duration;

use nanoclaw_proto::audit::AuditKind;

use super::{CtxRef, now_ms};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(500);

pub fn spawn(ctx: &CtxRef) {
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                smol::Timer::after(TICK).await;
                check(&c);
                super::violations::drain(&c);
                super::violations::tick(&c);
            }
        })
        .detach();
}

fn check(ctx: &CtxRef) {
    let now = now_ms();
    let missed: Vec<(String, u64, u32)> = {
        let d = ctx.d.borrow();
        d.agents
            .iter()
            .filter_map(|(n, a)| {
                let h = a.manifest.health?;
                let inst = a.instance.as_ref()?;
                if a.stop_requested || a.state == crate::agents::State::Frozen {
                    return None;
                }
                let since = a
                    .last_heartbeat_ms
                    .unwrap_or(inst.started_ms)
                    .max(inst.started_ms);
                let limit = 2_000 * u64::from(h.heartbeat_s);
                (now.saturating_sub(since) > limit).then(|| (n.clone(), now - since, h.heartbeat_s))
            })
            .collect()
    };
    for (name, silent_ms, hb) in missed {
        let why = format!(
            "no heartbeat for {:.1} s (health.heartbeat_s = {hb}, deadline {} s)",
            silent_ms as f64 / 1000.0,
            2 * hb
        );
        {
            let mut d = ctx.d.borrow_mut();
            d.audit(
                &name,
                AuditKind::HealthCheck,
                &format!("{why}; killing it"),
                true,
            );
            if let Some(a) = d.agents.get_mut(&name) {
                a.reason = format!("health check failed: {why}");
                // Fires once per instance: the kill ends it.
                a.last_heartbeat_ms = Some(now_ms() + 3_600_000);
            }
        }
        if !super::installer::rollback_if_in_probation(ctx, &name, "failed its health check") {
            let _ = ctx.d.borrow().cgroups.kill_all(&name);
        }
    }
}
