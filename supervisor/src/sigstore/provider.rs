//! The crypto behind `sigstore-verify`: pure Rust (sha2, p256, p384, ed25519-dalek), no C code,
//! verification only. RSA is left out: no Sigstore conformance case needs it, and the `rsa`
//! crate carries an open advisory; an RSA-signed bundle fails with "unsupported algorithm".

use sigstore_verify::crypto::{CryptoProvider, Error, HashContext, Result, SigningScheme};
use sigstore_verify::types::HashAlgorithm;

#[derive(Debug)]
pub struct RustCrypto;

pub static PROVIDER: RustCrypto = RustCrypto;

/// Installs [`PROVIDER`] as the process-wide provider (idempotent; sigstore-verify panics
/// without one).
pub fn install() {
    let _ = sigstore_verify::crypto::install_default_provider(&PROVIDER);
}

struct Ctx<D: sha2::Digest + Send>(D);

impl<D: sha2::Digest + Send> HashContext for Ctx<D> {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.0, data);
    }
    fn finalize(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

fn invalid(scheme: SigningScheme) -> Error {
    Error::Verification(format!("{} signature invalid", scheme.name()))
}

fn digest_of(alg: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>> {
    use sha2::Digest;
    Ok(match alg {
        HashAlgorithm::Sha2256 => sha2::Sha256::digest(data).to_vec(),
        HashAlgorithm::Sha2384 => sha2::Sha384::digest(data).to_vec(),
        HashAlgorithm::Sha2512 => sha2::Sha512::digest(data).to_vec(),
        other => return Err(Error::UnsupportedAlgorithm(format!("hash {other}"))),
    })
}

impl CryptoProvider for RustCrypto {
    fn hash(&self, algorithm: HashAlgorithm) -> Result<Box<dyn HashContext>> {
        Ok(match algorithm {
            HashAlgorithm::Sha2256 => Box::new(Ctx(<sha2::Sha256 as sha2::Digest>::new())),
            HashAlgorithm::Sha2384 => Box::new(Ctx(<sha2::Sha384 as sha2::Digest>::new())),
            HashAlgorithm::Sha2512 => Box::new(Ctx(<sha2::Sha512 as sha2::Digest>::new())),
            other => return Err(Error::UnsupportedAlgorithm(format!("hash {other}"))),
        })
    }

    fn verify_raw(&self, scheme: SigningScheme, pk: &[u8], data: &[u8], sig: &[u8]) -> Result<()> {
        match scheme {
            SigningScheme::Ed25519 => {
                let pk: &[u8; 32] = pk.try_into().map_err(|_| invalid(scheme))?;
                let vk =
                    ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| invalid(scheme))?;
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| invalid(scheme))?;
                vk.verify_strict(data, &sig).map_err(|_| invalid(scheme))
            }
            s => match s.hash_algorithm() {
                Some(alg) => self.verify_prehashed(s, pk, &digest_of(alg, data)?, sig),
                None => Err(Error::UnsupportedAlgorithm(s.name().into())),
            },
        }
    }

    fn verify_prehashed(
        &self,
        scheme: SigningScheme,
        pk: &[u8],
        digest: &[u8],
        sig: &[u8],
    ) -> Result<()> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        // Sigstore's ECDSA signatures are ASN.1 DER; a digest longer than the curve (P-256
        // with SHA-384, as some test CAs use) is truncated as SEC1 says.
        let ok = match scheme {
            SigningScheme::EcdsaP256Sha256 | SigningScheme::EcdsaP256Sha384 => {
                let vk =
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(pk).map_err(|_| invalid(scheme))?;
                let sig =
                    p256::ecdsa::DerSignature::from_bytes(sig).map_err(|_| invalid(scheme))?;
                vk.verify_prehash(digest, &sig).is_ok()
            }
            SigningScheme::EcdsaP384Sha256 | SigningScheme::EcdsaP384Sha384 => {
                let vk =
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(pk).map_err(|_| invalid(scheme))?;
                let sig =
                    p384::ecdsa::DerSignature::from_bytes(sig).map_err(|_| invalid(scheme))?;
                vk.verify_prehash(digest, &sig).is_ok()
            }
            other => return Err(Error::UnsupportedAlgorithm(other.name().into())),
        };
        if ok { Ok(()) } else { Err(invalid(scheme)) }
    }
}
