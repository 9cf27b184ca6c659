//! Offline Sigstore: verifying bundle signatures with `sigstore-verify` and a pure-Rust crypto
//! provider, and signing with a managed key.
//!
//! Verification is never networked: the trust anchors come from a `trusted_root.json` the
//! device already holds. A certificate (keyless) bundle is checked in full by sigstore-verify:
//! chain to the pinned Fulcio roots, SCTs, Rekor v1 SET and inclusion proof against a signed
//! checkpoint, Rekor v2 entries, RFC 3161 timestamps, DSSE/in-toto subjects, identity and
//! issuer, validity windows. A managed-key bundle with transparency-log or timestamp evidence
//! is checked in full the same way; one without any (what `nanoclaw bundle sign` writes for
//! offline fleets) is checked as a plain signature by that key over the artifact's SHA-256,
//! and the result says so.

pub mod provider;

use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use sha2::Digest as _;
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Bundle, DerPublicKey, Sha256Hash, SignatureContent};
use sigstore_verify::{Policy, PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

/// Largest Sigstore bundle JSON accepted (real ones are a few KiB).
pub const MAX_BUNDLE_JSON: u64 = 256 * 1024;
/// Largest trusted_root.json accepted.
pub const MAX_TRUSTED_ROOT: u64 = 1024 * 1024;
/// Largest key file accepted.
pub const MAX_KEY: u64 = 16 * 1024;
/// Largest artifact read into memory for an Ed25519 message signature (which signs the bytes,
/// not a digest).
pub const MAX_ED25519_ARTIFACT: u64 = 256 * 1024 * 1024;

/// Who must have signed.
#[derive(Debug, Clone)]
pub enum Signer {
    /// A managed public key (PEM).
    Key(DerPublicKey),
    /// A Fulcio certificate for this SAN, issued for this OIDC issuer.
    Identity { identity: String, issuer: String },
}

/// What was signed: a file, or its SHA-256.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    File(&'a Path),
    Digest([u8; 32]),
}

/// How a bundle was verified (for the CLI and the audit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Certificate {
        identity: String,
        issuer: String,
    },
    /// Managed key, with transparency-log or timestamp evidence checked.
    KeyWithLog,
    /// Managed key, no log or timestamp in the bundle: the signature alone.
    KeyOnly,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Certificate { identity, issuer } => {
                write!(f, "certificate for {identity} (issuer {issuer})")
            }
            Self::KeyWithLog => f.write_str("managed key, transparency log checked"),
            Self::KeyOnly => f.write_str("managed key, no transparency log entry"),
        }
    }
}

/// Reads a file of at most `max` bytes as UTF-8, naming `what` in errors.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut s = String::new();
    f.take(max + 1)
        .read_to_string(&mut s)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if s.len() as u64 > max {
        return Err(format!(
            "{what} {} is larger than {max} bytes",
            path.display()
        ));
    }
    Ok(s)
}

/// Whether signatures by `key` cover the artifact's bytes rather than its SHA-256 (Ed25519).
pub fn key_needs_bytes(key: &DerPublicKey) -> bool {
    sigstore_verify::crypto::KeyAlgorithm::from_spki(key).is_ok_and(|a| {
        a.default_signing_scheme() == sigstore_verify::crypto::SigningScheme::Ed25519
    })
}

pub fn parse_key(pem: &str) -> Result<DerPublicKey, String> {
    DerPublicKey::from_pem(pem).map_err(|e| format!("not a PEM public key: {e}"))
}

/// SHA-256 of a file, streamed.
fn file_digest(path: &Path) -> Result<[u8; 32], String> {
    crate::bundle::sha256_file(path)
        .map(|(d, _)| d)
        .map_err(|e| e.to_string())
}

fn read_artifact(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_ED25519_ARTIFACT {
        return Err(format!(
            "{}: {len} bytes; an Ed25519 message signature needs the whole artifact in memory (at most {MAX_ED25519_ARTIFACT}); sign with ECDSA P-256",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether the bundle carries any transparency-log or timestamp evidence.
fn has_evidence(bundle: &Bundle) -> bool {
    let vm = &bundle.verification_material;
    !vm.tlog_entries.is_empty() || !vm.timestamp_verification_data.rfc3161_timestamps.is_empty()
}

/// Verifies `bundle_json` over `target` for `signer`, against `root` (an empty root when
/// `None`: enough for key-only bundles, and nothing certificate-based will verify).
pub fn verify(
    bundle_json: &str,
    root: Option<&str>,
    signer: &Signer,
    target: Target<'_>,
) -> Result<Verified, String> {
    provider::install();
    let bundle = Bundle::from_json(bundle_json)
        .map_err(|e| format!("malformed bundle JSON (not a Sigstore bundle v0.1-v0.3): {e}"))?;
    if let (Signer::Key(key), false) = (signer, has_evidence(&bundle)) {
        return verify_key_only(&bundle, key, target).map(|()| Verified::KeyOnly);
    }
    let root = TrustedRoot::from_json(root.unwrap_or(EMPTY_ROOT))
        .map_err(|e| format!("bad trusted root: {e}"))?;
    let verifier = Verifier::new(&root).map_err(|e| format!("trusted root rejected: {e}"))?;
    let policy: Box<dyn Policy> = match signer {
        Signer::Key(k) => Box::new(PublicKeyVerificationPolicy::new(k.clone())),
        Signer::Identity { identity, issuer } => {
            Box::new(VerificationPolicy::new(identity.clone(), issuer.clone()))
        }
    };
    let result = match target {
        Target::Digest(d) => verifier.verify(Sha256Hash::new(d), &bundle, policy.as_ref()),
        Target::File(p) => {
            let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            // Streamed in constant memory; only an Ed25519 message signature needs the bytes.
            match verifier.verify_reader(std::io::BufReader::new(f), &bundle, policy.as_ref()) {
                Err(e) if e.to_string().contains("prehash") => {
                    let bytes = read_artifact(p)?;
                    verifier.verify(&bytes, &bundle, policy.as_ref())
                }
                r => r,
            }
        }
    };
    result
        .map(|_| match signer {
            Signer::Key(_) => Verified::KeyWithLog,
            Signer::Identity { identity, issuer } => Verified::Certificate {
                identity: identity.clone(),
                issuer: issuer.clone(),
            },
        })
        .map_err(|e| format!("verification failed: {e}"))
}

fn verify_key_only(bundle: &Bundle, key: &DerPublicKey, target: Target<'_>) -> Result<(), String> {
    use sigstore_verify::crypto::{
        KeyAlgorithm, SigningScheme, verify_signature, verify_signature_prehashed,
    };
    let SignatureContent::MessageSignature(ms) = &bundle.content else {
        return Err(
            "a managed-key bundle without a transparency log entry must hold a message signature"
                .into(),
        );
    };
    let scheme = KeyAlgorithm::from_spki(key)
        .map_err(|e| format!("unsupported key: {e}"))?
        .default_signing_scheme();
    let digest = match target {
        Target::Digest(d) => d,
        Target::File(p) => file_digest(p)?,
    };
    if let Some(md) = &ms.message_digest
        && md.digest.as_bytes() != digest
    {
        return Err(
            "verification failed: the artifact's SHA-256 differs from the signed digest".into(),
        );
    }
    let r = if scheme == SigningScheme::Ed25519 {
        let Target::File(p) = target else {
            return Err(
                "an Ed25519 signature covers the artifact's bytes: give the file, not its digest"
                    .into(),
            );
        };
        verify_signature(key, &read_artifact(p)?, &ms.signature, scheme)
    } else {
        verify_signature_prehashed(key, &digest, &ms.signature, scheme)
    };
    r.map_err(|e| format!("verification failed: signature does not verify with the key: {e}"))
}

const EMPTY_ROOT: &str = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[],"certificateAuthorities":[],"ctlogs":[],"timestampAuthorities":[]}"#;

/// A managed signing key: ECDSA P-256 or Ed25519, PKCS#8 PEM.
pub enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl SigningKey {
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::P256(k));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(|k| SigningKey::Ed25519(Box::new(k)))
            .map_err(|_| {
                "not a PKCS#8 PEM private key for ECDSA P-256 or Ed25519 (e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)".to_owned()
            })
    }

    /// The public key, SubjectPublicKeyInfo DER.
    pub fn public_der(&self) -> Result<Vec<u8>, String> {
        use p256::pkcs8::EncodePublicKey as _;
        let doc = match self {
            SigningKey::P256(k) => k.verifying_key().to_public_key_der(),
            SigningKey::Ed25519(k) => {
                ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_der(&k.verifying_key())
            }
        };
        doc.map(|d| d.as_bytes().to_vec())
            .map_err(|e| format!("encoding the public key: {e}"))
    }
}

/// A Sigstore bundle v0.3 (JSON) with a message signature by `key` over `artifact`: ECDSA
/// P-256 signs the SHA-256 (so digests verify), Ed25519 the bytes (Sigstore has no Ed25519ph).
/// No transparency-log entry: offline fleets pin the key instead.
pub fn sign(key: &SigningKey, artifact: &Path) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let digest = file_digest(artifact)?;
    let sig = match key {
        SigningKey::P256(k) => {
            use p256::ecdsa::signature::hazmat::PrehashSigner as _;
            let s: p256::ecdsa::Signature = k
                .sign_prehash(&digest)
                .map_err(|e| format!("signing: {e}"))?;
            s.to_der().as_bytes().to_vec()
        }
        SigningKey::Ed25519(k) => {
            use ed25519_dalek::Signer as _;
            k.sign(&read_artifact(artifact)?).to_bytes().to_vec()
        }
    };
    let hint = b64.encode(sha2::Sha256::digest(key.public_der()?));
    let doc = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": hint }, "tlogEntries": [] },
        "messageSignature": {
            "messageDigest": { "algorithm": "SHA2_256", "digest": b64.encode(digest) },
            "signature": b64.encode(sig)
        }
    });
    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<SigningKey> {
        vec![
            SigningKey::P256(p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap()),
            SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]))),
        ]
    }

    #[test]
    fn signed_bundles_verify_and_tampering_is_caught() {
        let dir = std::env::temp_dir().join(format!("nc-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let art = dir.join("a.nclaw");
        std::fs::write(&art, b"bundle bytes").unwrap();
        for (i, key) in keys().iter().enumerate() {
            let json = sign(key, &art).unwrap();
            let signer = Signer::Key(DerPublicKey::new(key.public_der().unwrap()));
            assert_eq!(
                verify(&json, None, &signer, Target::File(&art)).unwrap(),
                Verified::KeyOnly
            );
            let digest = file_digest(&art).unwrap();
            let by_digest = verify(&json, None, &signer, Target::Digest(digest));
            match key {
                SigningKey::P256(_) => assert!(by_digest.is_ok(), "{by_digest:?}"),
                SigningKey::Ed25519(_) => assert!(by_digest.unwrap_err().contains("Ed25519")),
            }
            // Another key, another artifact, a forged signature: refused.
            let other = &keys()[1 - i];
            let wrong = Signer::Key(DerPublicKey::new(other.public_der().unwrap()));
            assert!(verify(&json, None, &wrong, Target::File(&art)).is_err());
            let tampered = dir.join("b.nclaw");
            std::fs::write(&tampered, b"bundle bytez").unwrap();
            let e = verify(&json, None, &signer, Target::File(&tampered)).unwrap_err();
            assert!(e.contains("verification failed"), "{e}");
            let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
            doc["messageSignature"]["signature"] = "AAAA".into();
            assert!(verify(&doc.to_string(), None, &signer, Target::File(&art)).is_err());
            // A key-only bundle never satisfies a certificate identity.
            let id = Signer::Identity {
                identity: "a@b".into(),
                issuer: "https://x".into(),
            };
            assert!(verify(&json, None, &id, Target::File(&art)).is_err());
        }
        assert!(
            verify(
                "{",
                None,
                &Signer::Identity {
                    identity: String::new(),
                    issuer: String::new()
                },
                Target::Digest([0; 32])
            )
            .unwrap_err()
            .contains("malformed")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
