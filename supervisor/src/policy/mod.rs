//! The policy engine around the policy document: how a policy is accepted (signature,
//! version, master policy, device fit), what a change means for running agents, grant tokens,
//! and the violation rules with the trust score.
//!
//! Everything here is pure (time and inputs are arguments); `daemon::policy` does the I/O
//! and applies the results to the kernel.

pub mod cli;
pub mod diff;
pub mod engineer;
pub mod grant;
pub mod rules;
pub mod signed;

use std::path::Path;

use crate::config::master::MasterPolicy;
use crate::config::policy::{MAX_POLICY_BYTES, Policy};
use crate::config::{FieldError, diagnose_parse};
use signed::{Envelope, Kind, PublicKey, SignedError};

/// How a policy reached the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Signed by the pinned fleet key (its id).
    Signed(String),
    /// An unsigned local file (`allow_local_policy`).
    Local,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Signed(k) => write!(f, "signed by {}", short_id(k)),
            Origin::Local => f.write_str("unsigned local file"),
        }
    }
}

/// `sha256:0123456789ab…`.
pub fn short_id(key_id: &str) -> String {
    key_id.chars().take(19).collect::<String>() + "…"
}

/// A policy that passed every check, with the bytes it came as (kept to persist it).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub policy: Policy,
    pub origin: Origin,
    pub bytes: Vec<u8>,
}

/// Why a policy document was refused. Each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{len} bytes is larger than the {MAX_POLICY_BYTES}-byte limit for a policy")]
    TooLarge { len: usize },
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("signature: {0}")]
    Signature(#[from] SignedError),
    #[error(
        "the policy is signed but device.json pins no policy_key to verify it with; add the fleet's public key as policy_key"
    )]
    NoKey,
    #[error(
        "the policy is not signed and device.json has allow_local_policy false; sign it with the fleet key (`nanoclaw policy sign`)"
    )]
    Unsigned,
    #[error("outside the master policy: {}", join(.0))]
    Master(Vec<FieldError>),
    #[error("{0}")]
    Device(#[from] crate::admission::PolicyError),
    #[error(
        "version {version} is older than version {in_force} in force; a policy version only goes up"
    )]
    Older { version: u64, in_force: u64 },
    #[error(
        "version {0} is already in force with different content; a changed policy needs a higher version"
    )]
    SameVersion(u64),
}

fn join(errs: &[FieldError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the device knows when it judges a policy.
pub struct Judge<'a> {
    pub key: Option<&'a PublicKey>,
    pub allow_local: bool,
    pub master: Option<&'a MasterPolicy>,
    pub device_memory: u64,
    /// Relative signer key paths in the policy resolve against this directory.
    pub base: &'a Path,
}

impl Judge<'_> {
    /// Checks a policy document (bare JSON or a signed envelope) completely.
    pub fn accept(&self, bytes: &[u8]) -> Result<Accepted, Refused> {
        if bytes.len() as u64 > MAX_POLICY_BYTES {
            return Err(Refused::TooLarge { len: bytes.len() });
        }
        let doc = diagnose_parse(bytes).map_err(|e| Refused::Invalid(vec![e]))?;
        let (payload, origin) = if signed::is_envelope(&doc) {
            let env: Envelope = serde_json::from_value(doc)
                .map_err(|e| Refused::Signature(SignedError::Shape(e.to_string())))?;
            let key = self.key.ok_or(Refused::NoKey)?;
            let payload = signed::verify(Kind::Policy, &env, key)?;
            (payload, Origin::Signed(key.key_id()))
        } else if self.allow_local {
            (doc, Origin::Local)
        } else {
            return Err(Refused::Unsigned);
        };
        let policy = Policy::from_value(&payload, self.base).map_err(Refused::Invalid)?;
        if let Some(m) = self.master {
            let errs = m.check(&policy);
            if !errs.is_empty() {
                return Err(Refused::Master(errs));
            }
        }
        crate::admission::validate_policy(&policy, self.device_memory)?;
        Ok(Accepted {
            policy,
            origin,
            bytes: bytes.to_vec(),
        })
    }
}

/// Whether `new` may replace `in_force` (versions only go up; an equal version only when
/// nothing changed, or from a local file that the operator edits in place).
pub fn may_replace(in_force: &Accepted, new: &Accepted) -> Result<(), Refused> {
    let (v, cur) = (new.policy.version, in_force.policy.version);
    if v < cur {
        return Err(Refused::Older {
            version: v,
            in_force: cur,
        });
    }
    if v == cur && new.origin != Origin::Local && new.policy != in_force.policy {
        return Err(Refused::SameVersion(v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use signed::tests::ed_key;

    fn judge<'a>(key: Option<&'a PublicKey>, allow_local: bool) -> Judge<'a> {
        Judge {
            key,
            allow_local,
            master: None,
            device_memory: 1 << 30,
            base: Path::new("/etc/nanoclaw"),
        }
    }

    #[test]
    fn signed_local_and_refusals() {
        let (sk, pk) = ed_key(1);
        let (other, _) = ed_key(2);
        let doc = json!({"version": 4, "agents": {"a": {"memory": "16MiB"}}});
        let env = signed::sign(Kind::Policy, doc.clone(), &sk).unwrap();
        let signed_bytes = serde_json::to_vec(&env).unwrap();
        let plain = serde_json::to_vec(&doc).unwrap();
        let a = judge(Some(&pk), false).accept(&signed_bytes).unwrap();
        assert_eq!(a.origin, Origin::Signed(pk.key_id()));
        assert!(matches!(
            judge(Some(&pk), false).accept(&plain),
            Err(Refused::Unsigned)
        ));
        assert_eq!(
            judge(None, true).accept(&plain).unwrap().origin,
            Origin::Local
        );
        assert!(matches!(
            judge(None, true).accept(&signed_bytes),
            Err(Refused::NoKey)
        ));
        let forged = serde_json::to_vec(&signed::sign(Kind::Policy, doc, &other).unwrap()).unwrap();
        let e = judge(Some(&pk), false).accept(&forged).unwrap_err();
        assert!(e.to_string().contains("not by the fleet key"), "{e}");
        let big = vec![b' '; MAX_POLICY_BYTES as usize + 1];
        assert!(matches!(
            judge(None, true).accept(&big),
            Err(Refused::TooLarge { .. })
        ));
        let over = serde_json::to_vec(&json!({"version": 1, "agents": {"a": {"memory": "2GiB"}}}))
            .unwrap();
        assert!(matches!(
            judge(None, true).accept(&over),
            Err(Refused::Device(_))
        ));
    }

    #[test]
    fn versions_only_go_up() {
        let (sk, pk) = ed_key(1);
        let mk = |v: u64, mem: &str| {
            let env = signed::sign(
                Kind::Policy,
                json!({"version": v, "agents": {"a": {"memory": mem}}}),
                &sk,
            )
            .unwrap();
            judge(Some(&pk), false)
                .accept(&serde_json::to_vec(&env).unwrap())
                .unwrap()
        };
        let cur = mk(5, "16MiB");
        assert!(matches!(
            may_replace(&cur, &mk(4, "16MiB")),
            Err(Refused::Older {
                version: 4,
                in_force: 5
            })
        ));
        assert!(may_replace(&cur, &mk(5, "16MiB")).is_ok());
        assert!(matches!(
            may_replace(&cur, &mk(5, "8MiB")),
            Err(Refused::SameVersion(5))
        ));
        assert!(may_replace(&cur, &mk(6, "8MiB")).is_ok());
    }
}
