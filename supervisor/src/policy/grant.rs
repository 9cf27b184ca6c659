//! Grant tokens: a fleet-signed "agent X may hold capability Y until T".
//!
//! The payload is `{agent, capability, not_after, nonce, device?}` (`not_after` in Unix
//! seconds), signed as a [`Kind::Grant`] envelope. [`check`] is the whole decision, pure:
//! signature, agent, device, expiry, lifetime, replay and the policy's `grantable` list. The
//! daemon applies what it returns and remembers the nonce until `not_after`.

use serde::{Deserialize, Serialize};

use super::signed::{self, Envelope, Kind, PublicKey, SignedError};
use crate::config::policy::Capability;

/// Longest token accepted, in bytes of JSON.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest lifetime a token may claim (bounds the replay store).
pub const MAX_LIFETIME_S: u64 = 30 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub agent: String,
    pub capability: String,
    pub not_after: u64,
    pub nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Signature(#[from] SignedError),
    #[error("token is for agent `{0}`, not for this agent")]
    OtherAgent(String),
    #[error("token is for device `{0}`, not for this device")]
    OtherDevice(String),
    #[error("token expired at {not_after} (now {now})")]
    Expired { not_after: u64, now: u64 },
    #[error("token lifetime ends {0} s from now, more than the {MAX_LIFETIME_S} s allowed")]
    TooLong(u64),
    #[error("token nonce was already used (replay)")]
    Replayed,
    #[error("`{0}` is not in this agent's grantable list in the policy")]
    NotGrantable(String),
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub token: Token,
    pub capability: Capability,
}

/// Checks a token presented by `agent` on `device`. `used` says whether a nonce was seen.
pub fn check(
    env: &Envelope,
    key: &PublicKey,
    agent: &str,
    device: &str,
    grantable: &[Capability],
    now_s: u64,
    used: impl Fn(&str) -> bool,
) -> Result<Granted, GrantError> {
    let payload = signed::verify(Kind::Grant, env, key)?;
    let token: Token =
        serde_json::from_value(payload).map_err(|e| GrantError::Malformed(e.to_string()))?;
    if token.nonce.is_empty() || token.nonce.len() > 128 {
        return Err(GrantError::Malformed("nonce must be 1 to 128 bytes".into()));
    }
    if token.agent != agent {
        return Err(GrantError::OtherAgent(
            token.agent.chars().take(64).collect(),
        ));
    }
    if let Some(d) = &token.device
        && d != device
    {
        return Err(GrantError::OtherDevice(d.chars().take(64).collect()));
    }
    if token.not_after <= now_s {
        return Err(GrantError::Expired {
            not_after: token.not_after,
            now: now_s,
        });
    }
    if token.not_after - now_s > MAX_LIFETIME_S {
        return Err(GrantError::TooLong(token.not_after - now_s));
    }
    let capability: Capability = token
        .capability
        .parse()
        .map_err(|e: String| GrantError::Malformed(e))?;
    if !grantable.contains(&capability) {
        return Err(GrantError::NotGrantable(capability.to_string()));
    }
    if used(&token.nonce) {
        return Err(GrantError::Replayed);
    }
    Ok(Granted { token, capability })
}

/// Signs a token (`nanoclaw grant sign`, tests).
pub fn sign(token: &Token, key: &crate::sigstore::SigningKey) -> Result<Envelope, String> {
    let payload = serde_json::to_value(token).map_err(|e| e.to_string())?;
    signed::sign(Kind::Grant, payload, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::signed::tests::ed_key;

    fn token() -> Token {
        Token {
            agent: "cam".into(),
            capability: "net:10.0.0.9:6379/tcp".into(),
            not_after: 1_000,
            nonce: "n-1".into(),
            device: Some("dev-1".into()),
        }
    }

    fn caps() -> Vec<Capability> {
        vec!["net:10.0.0.9:6379/tcp".parse().unwrap()]
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let (sk, pk) = ed_key(1);
        let (other_sk, _) = ed_key(2);
        let env = sign(&token(), &sk).unwrap();
        let ok = |e: &Envelope, agent: &str, dev: &str, caps: &[Capability], now: u64| {
            check(e, &pk, agent, dev, caps, now, |n| n == "used")
        };
        let g = ok(&env, "cam", "dev-1", &caps(), 500).unwrap();
        assert_eq!(g.capability, caps()[0]);
        assert_eq!(
            ok(&env, "other", "dev-1", &caps(), 500),
            Err(GrantError::OtherAgent("cam".into()))
        );
        assert_eq!(
            ok(&env, "cam", "dev-2", &caps(), 500),
            Err(GrantError::OtherDevice("dev-1".into()))
        );
        assert!(matches!(
            ok(&env, "cam", "dev-1", &caps(), 1_000),
            Err(GrantError::Expired { .. })
        ));
        assert_eq!(
            ok(&env, "cam", "dev-1", &[], 500),
            Err(GrantError::NotGrantable("net:10.0.0.9:6379/tcp".into()))
        );
        let replay = sign(
            &Token {
                nonce: "used".into(),
                ..token()
            },
            &sk,
        )
        .unwrap();
        assert_eq!(
            ok(&replay, "cam", "dev-1", &caps(), 500),
            Err(GrantError::Replayed)
        );
        let forged = sign(&token(), &other_sk).unwrap();
        assert!(matches!(
            ok(&forged, "cam", "dev-1", &caps(), 500),
            Err(GrantError::Signature(_))
        ));
        let long = sign(
            &Token {
                not_after: 10_000_000_000,
                ..token()
            },
            &sk,
        )
        .unwrap();
        assert!(matches!(
            ok(&long, "cam", "dev-1", &caps(), 500),
            Err(GrantError::TooLong(_))
        ));
        let anydev = sign(
            &Token {
                device: None,
                ..token()
            },
            &sk,
        )
        .unwrap();
        assert!(ok(&anydev, "cam", "dev-9", &caps(), 500).is_ok());
        // A policy envelope is not a grant, even with the same key and fields.
        let as_policy =
            signed::sign(Kind::Policy, serde_json::to_value(token()).unwrap(), &sk).unwrap();
        assert!(matches!(
            ok(&as_policy, "cam", "dev-1", &caps(), 500),
            Err(GrantError::Signature(_))
        ));
    }
}
