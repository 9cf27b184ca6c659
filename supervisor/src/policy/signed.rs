//! Fleet-signed documents: policies and grant tokens.
//!
//! An envelope is `{"payload": {...}, "signature": {"key_id": "sha256:…", "sig": "…"}}`. The
//! signature (Ed25519, or ECDSA P-256 with SHA-256, DER) covers
//! `"nanoclaw-<kind>-v1\n" ‖ JCS(payload)`: the RFC 8785 canonical bytes of the payload, so
//! whitespace and key order do not matter, and the kind prefix keeps a signed grant from ever
//! being accepted as a policy or the other way round. `key_id` is the SHA-256 of the signer's
//! SubjectPublicKeyInfo, so a device can say *which* key signed a refused document.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

use crate::sigstore::SigningKey;

/// What a signature is for (the domain-separation prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Grant,
    /// A field engineer's console token (`policy::engineer`).
    Engineer,
}

impl Kind {
    fn prefix(self) -> &'static [u8] {
        match self {
            Kind::Policy => b"nanoclaw-policy-v1\n",
            Kind::Grant => b"nanoclaw-grant-v1\n",
            Kind::Engineer => b"nanoclaw-engineer-v1\n",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub payload: Value,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key_id: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("not a signed envelope: {0}")]
    Shape(String),
    #[error(
        "signed by key {found}, not by the fleet key pinned in device.json ({pinned}); re-sign it with the fleet key"
    )]
    WrongKey { found: String, pinned: String },
    #[error(
        "signature does not verify with the fleet key {0}: the document was altered or the signature is damaged"
    )]
    BadSignature(String),
    #[error("fleet key: {0}")]
    Key(String),
}

/// A pinned verification key.
#[derive(Clone)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key_id())
    }
}

impl PublicKey {
    /// A SubjectPublicKeyInfo PEM (`openssl pkey -pubout`).
    pub fn from_pem(pem: &str) -> Result<Self, SignedError> {
        use p256::pkcs8::DecodePublicKey as _;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::Ed25519)
            .map_err(|_| {
                SignedError::Key(
                    "not a PEM public key for Ed25519 or ECDSA P-256 (`openssl pkey -pubout`)"
                        .into(),
                )
            })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, SignedError> {
        let pem =
            crate::sigstore::read_capped(path, 16 * 1024, "fleet key").map_err(SignedError::Key)?;
        Self::from_pem(&pem).map_err(|e| SignedError::Key(format!("{}: {e}", path.display())))
    }

    fn der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey as _;
        let doc = match self {
            PublicKey::P256(k) => k.to_public_key_der(),
            PublicKey::Ed25519(k) => ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_der(k),
        };
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    pub fn key_id(&self) -> String {
        key_id(&self.der())
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
        }
    }
}

fn key_id(spki_der: &[u8]) -> String {
    let d = sha2::Sha256::digest(spki_der);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The signed bytes for `payload`.
fn message(kind: Kind, payload: &Value) -> Result<Vec<u8>, SignedError> {
    let mut msg = kind.prefix().to_vec();
    let canon = serde_json_canonicalizer::to_vec(payload)
        .map_err(|e| SignedError::Shape(format!("payload cannot be canonicalized: {e}")))?;
    msg.extend_from_slice(&canon);
    Ok(msg)
}

/// Whether a parsed document looks like an envelope (rather than a bare policy).
pub fn is_envelope(doc: &Value) -> bool {
    doc.get("payload").is_some() && doc.get("signature").is_some()
}

/// Checks `env` against the pinned `key` and returns its payload.
pub fn verify(kind: Kind, env: &Envelope, key: &PublicKey) -> Result<Value, SignedError> {
    let pinned = key.key_id();
    if env.signature.key_id != pinned {
        return Err(SignedError::WrongKey {
            found: env.signature.key_id.chars().take(80).collect(),
            pinned,
        });
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(env.signature.sig.as_bytes())
        .map_err(|_| SignedError::BadSignature(pinned.clone()))?;
    if !key.verify(&message(kind, &env.payload)?, &sig) {
        return Err(SignedError::BadSignature(pinned));
    }
    Ok(env.payload.clone())
}

/// Signs `payload` (for `nanoclaw policy sign`, `grant sign` and tests).
pub fn sign(kind: Kind, payload: Value, key: &SigningKey) -> Result<Envelope, String> {
    let msg = message(kind, &payload).map_err(|e| e.to_string())?;
    let sig = match key {
        SigningKey::P256(k) => {
            use p256::ecdsa::signature::Signer as _;
            let s: p256::ecdsa::Signature = k.sign(&msg);
            s.to_der().as_bytes().to_vec()
        }
        SigningKey::Ed25519(k) => {
            use ed25519_dalek::Signer as _;
            k.sign(&msg).to_bytes().to_vec()
        }
    };
    Ok(Envelope {
        payload,
        signature: Signature {
            key_id: key_id(&key.public_der()?),
            sig: base64::engine::general_purpose::STANDARD.encode(sig),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn ed_key(seed: u8) -> (SigningKey, PublicKey) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let pk = PublicKey::Ed25519(sk.verifying_key());
        (SigningKey::Ed25519(Box::new(sk)), pk)
    }

    fn p256_key(seed: u8) -> (SigningKey, PublicKey) {
        let sk = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let pk = PublicKey::P256(*sk.verifying_key());
        (SigningKey::P256(sk), pk)
    }

    #[test]
    fn round_trip_both_algorithms_and_key_order_does_not_matter() {
        for (sk, pk) in [ed_key(1), p256_key(2)] {
            let env = sign(Kind::Policy, json!({"version": 2, "agents": {}}), &sk).unwrap();
            assert_eq!(verify(Kind::Policy, &env, &pk).unwrap()["version"], 2);
            // Same payload, other key order and spacing: same canonical bytes.
            let text = serde_json::to_string(&env).unwrap().replace(
                r#"{"agents":{},"version":2}"#,
                r#"{ "version": 2, "agents": { } }"#,
            );
            let again: Envelope = serde_json::from_str(&text).unwrap();
            assert!(verify(Kind::Policy, &again, &pk).is_ok());
        }
    }

    #[test]
    fn tampering_wrong_key_wrong_kind_and_damage_are_refused() {
        let (sk, pk) = ed_key(1);
        let (_, other) = ed_key(3);
        let env = sign(Kind::Policy, json!({"version": 2}), &sk).unwrap();
        let mut tampered = env.clone();
        tampered.payload["version"] = json!(3);
        assert!(matches!(
            verify(Kind::Policy, &tampered, &pk),
            Err(SignedError::BadSignature(_))
        ));
        assert!(matches!(
            verify(Kind::Policy, &env, &other),
            Err(SignedError::WrongKey { .. })
        ));
        assert!(matches!(
            verify(Kind::Grant, &env, &pk),
            Err(SignedError::BadSignature(_))
        ));
        let mut cut = env.clone();
        cut.signature.sig.truncate(20);
        assert!(matches!(
            verify(Kind::Policy, &cut, &pk),
            Err(SignedError::BadSignature(_))
        ));
    }

    #[test]
    fn pem_keys() {
        use p256::pkcs8::EncodePublicKey as _;
        let (_, pk) = p256_key(5);
        let PublicKey::P256(k) = &pk else {
            unreachable!()
        };
        let pem = k.to_public_key_pem(Default::default()).unwrap();
        assert_eq!(PublicKey::from_pem(&pem).unwrap().key_id(), pk.key_id());
        assert!(PublicKey::from_pem("garbage").is_err());
    }
}
