//! Field-engineer tokens: a fleet-signed "engineer E may change devices D until T".
//!
//! The console (`nanoclaw console`) is readable by anyone at the serial port; changing
//! anything needs one of these, pasted with `unlock`. The daemon verifies it offline with the
//! fleet key pinned in device.json on every state-changing command, so an expired token stops
//! working mid-session. Devices are named by `device_id` or a `*` pattern.

use serde::{Deserialize, Serialize};

use super::signed::{self, Envelope, Kind, PublicKey, SignedError};

/// Longest token accepted, in bytes of JSON (it is pasted on a serial line).
pub const MAX_TOKEN_BYTES: usize = 2048;
/// Longest lifetime a token may claim: a visit, not a standing credential.
pub const MAX_LIFETIME_S: u64 = 7 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub engineer: String,
    /// `device_id`s or patterns (`gw-*`) this token opens.
    pub devices: Vec<String>,
    /// Unix seconds.
    pub not_after: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Signature(#[from] SignedError),
    #[error("token is for devices {0:?}, not for this device ({1})")]
    OtherDevice(Vec<String>, String),
    #[error("token expired at {not_after} (now {now}): ask for a new one")]
    Expired { not_after: u64, now: u64 },
    #[error("token lifetime ends {0} s from now, more than the {MAX_LIFETIME_S} s allowed")]
    TooLong(u64),
    #[error("device.json pins no fleet key (policy_key): engineer tokens cannot be verified")]
    NoKey,
}

/// Parses and checks a pasted token for `device` at `now_s`.
pub fn check(
    text: &str,
    key: Option<&PublicKey>,
    device: &str,
    now_s: u64,
) -> Result<Token, TokenError> {
    if text.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "{} bytes, more than the {MAX_TOKEN_BYTES} allowed",
            text.len()
        )));
    }
    let env: Envelope =
        serde_json::from_str(text).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let key = key.ok_or(TokenError::NoKey)?;
    let payload = signed::verify(Kind::Engineer, &env, key)?;
    let t: Token =
        serde_json::from_value(payload).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let name_ok = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    };
    if !name_ok(&t.engineer) || t.devices.is_empty() || t.devices.len() > 64 {
        return Err(TokenError::Malformed(
            "engineer must be 1 to 64 printable characters and devices 1 to 64 entries".into(),
        ));
    }
    if !t
        .devices
        .iter()
        .any(|p| crate::config::policy::glob_match(p.as_bytes(), device.as_bytes()))
    {
        return Err(TokenError::OtherDevice(t.devices, device.to_owned()));
    }
    if t.not_after <= now_s {
        return Err(TokenError::Expired {
            not_after: t.not_after,
            now: now_s,
        });
    }
    if t.not_after - now_s > MAX_LIFETIME_S {
        return Err(TokenError::TooLong(t.not_after - now_s));
    }
    Ok(t)
}

/// Signs a token (`nanoclaw engineer sign`, tests).
pub fn sign(token: &Token, key: &crate::sigstore::SigningKey) -> Result<Envelope, String> {
    let payload = serde_json::to_value(token).map_err(|e| e.to_string())?;
    signed::sign(Kind::Engineer, payload, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::signed::tests::ed_key;

    fn token(devices: &[&str], not_after: u64) -> Token {
        Token {
            engineer: "alice".into(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            not_after,
        }
    }

    fn text(t: &Token, seed: u8) -> String {
        serde_json::to_string(&sign(t, &ed_key(seed).0).unwrap()).unwrap()
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let (_, pk) = ed_key(1);
        let good = text(&token(&["gw-*"], 2000), 1);
        assert_eq!(
            check(&good, Some(&pk), "gw-17", 1000).unwrap().engineer,
            "alice"
        );
        let e = |t: &str, dev: &str, now: u64| check(t, Some(&pk), dev, now).unwrap_err();
        assert!(matches!(
            e(&good, "cam-1", 1000),
            TokenError::OtherDevice(..)
        ));
        assert!(matches!(
            e(&good, "gw-17", 2000),
            TokenError::Expired { .. }
        ));
        let long = text(&token(&["gw-17"], 1000 + MAX_LIFETIME_S + 1), 1);
        assert!(matches!(e(&long, "gw-17", 1000), TokenError::TooLong(_)));
        let rogue = text(&token(&["*"], 2000), 2);
        assert!(matches!(
            e(&rogue, "gw-17", 1000),
            TokenError::Signature(SignedError::WrongKey { .. })
        ));
        let tampered = good.replace("alice", "mallory");
        assert!(matches!(
            e(&tampered, "gw-17", 1000),
            TokenError::Signature(SignedError::BadSignature(_))
        ));
        assert!(matches!(
            e("not json", "gw-17", 1000),
            TokenError::Malformed(_)
        ));
        assert!(matches!(
            e(&"x".repeat(MAX_TOKEN_BYTES + 1), "gw-17", 1000),
            TokenError::Malformed(_)
        ));
        assert_eq!(check(&good, None, "gw-17", 1000), Err(TokenError::NoKey));
        // A grant token is not an engineer token: the signed prefix differs.
        let grant = serde_json::to_string(
            &signed::sign(
                Kind::Grant,
                serde_json::to_value(token(&["*"], 2000)).unwrap(),
                &ed_key(1).0,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            e(&grant, "gw-17", 1000),
            TokenError::Signature(SignedError::BadSignature(_))
        ));
    }
}
