//! The device's TLS crypto provider, built on the RustCrypto crates the binary already links
//! for Sigstore and policy signatures (sha2, p256, p384, ed25519/curve25519-dalek) instead of
//! ring: one crypto stack, and some 350 KiB less binary (docs/BENCHMARKS.md, size).
//!
//! Deliberately narrow, since the device only ever talks to its own fleet server: TLS 1.3,
//! TLS_CHACHA20_POLY1305_SHA256 (constant-time in software on cores without AES
//! instructions), X25519, ECDSA P-256/P-384 and Ed25519 certificates and keys.

use std::sync::Arc;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use curve25519_dalek::montgomery::MontgomeryPoint;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError, make_tls13_aad,
};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{
    ActiveKeyExchange, CipherSuiteCommon, CryptoProvider, GetRandomFailed, KeyProvider,
    SecureRandom, SharedSecret, SupportedKxGroup, WebPkiSupportedAlgorithms, hash, hmac,
};
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, alg_id};
use rustls::pki_types::{SignatureVerificationAlgorithm as Verify, SubjectPublicKeyInfoDer};
use rustls::sign::{Signer, SigningKey};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, NamedGroup, ProtocolVersion,
    SignatureAlgorithm, SignatureScheme, SupportedCipherSuite, Tls13CipherSuite,
};
use sha2::Digest;

/// The provider for `rustls::ClientConfig::builder_with_provider`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![SupportedCipherSuite::Tls13(&CHACHA20_POLY1305_SHA256)],
        kx_groups: vec![&X25519],
        signature_verification_algorithms: ALGORITHMS,
        secure_random: &Random,
        key_provider: &Keys,
    })
}

static CHACHA20_POLY1305_SHA256: Tls13CipherSuite = Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        hash_provider: &Sha256,
        // RFC 8446 §5.5: ChaCha20-Poly1305 has no practical limit below the sequence space.
        confidentiality_limit: u64::MAX,
    },
    hkdf_provider: &HkdfUsingHmac(&HmacSha256),
    aead_alg: &ChaCha,
    quic: None,
};

// --- hashing -------------------------------------------------------------------------------

struct Sha256;

impl hash::Hash for Sha256 {
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Sha256Context(sha2::Sha256::new()))
    }
    fn hash(&self, data: &[u8]) -> hash::Output {
        hash::Output::new(&sha2::Sha256::digest(data))
    }
    fn algorithm(&self) -> hash::HashAlgorithm {
        hash::HashAlgorithm::SHA256
    }
    fn output_len(&self) -> usize {
        32
    }
}

struct Sha256Context(sha2::Sha256);

impl hash::Context for Sha256Context {
    fn fork_finish(&self) -> hash::Output {
        hash::Output::new(&self.0.clone().finalize())
    }
    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Sha256Context(self.0.clone()))
    }
    fn finish(self: Box<Self>) -> hash::Output {
        hash::Output::new(&self.0.finalize())
    }
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

struct HmacSha256;

impl hmac::Hmac for HmacSha256 {
    fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
        // RFC 2104: a key longer than the block is hashed first; either way it is zero-padded
        // to the 64-byte block, which is exactly the key `new` takes (so nothing can fail).
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&sha2::Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mac = <::hmac::Hmac<sha2::Sha256> as KeyInit>::new(&block.into());
        zeroize::Zeroize::zeroize(&mut block);
        Box::new(HmacKey(mac))
    }
    fn hash_output_len(&self) -> usize {
        32
    }
}

struct HmacKey(::hmac::Hmac<sha2::Sha256>);

impl hmac::Key for HmacKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> hmac::Tag {
        use ::hmac::Mac;
        let mut m = self.0.clone();
        m.update(first);
        for x in middle {
            m.update(x);
        }
        m.update(last);
        hmac::Tag::new(&m.finalize().into_bytes())
    }
    fn tag_len(&self) -> usize {
        32
    }
}

// --- record protection ---------------------------------------------------------------------

const TAG_LEN: usize = 16;

struct ChaCha;

impl Tls13AeadAlgorithm for ChaCha {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Record(ChaCha20Poly1305::new(key.as_ref().into()), iv))
    }
    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Record(ChaCha20Poly1305::new(key.as_ref().into()), iv))
    }
    fn key_len(&self) -> usize {
        32
    }
    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    }
}

struct Record(ChaCha20Poly1305, Iv);

impl MessageEncrypter for Record {
    fn encrypt(
        &mut self,
        m: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&m.payload);
        payload.extend_from_slice(&m.typ.to_array());
        let nonce = Nonce::new(&self.1, seq).0;
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce.into(), &make_tls13_aad(total), payload.as_mut())
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }
    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for Record {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut m.payload;
        let len = payload.len();
        let Some(body) = len.checked_sub(TAG_LEN) else {
            return Err(Error::DecryptError);
        };
        let aad = make_tls13_aad(len);
        let nonce = Nonce::new(&self.1, seq).0;
        let (text, tag) = payload.split_at_mut(body);
        let tag = chacha20poly1305::Tag::clone_from_slice(tag);
        self.0
            .decrypt_in_place_detached(&nonce.into(), &aad, text, &tag)
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(body);
        m.into_tls13_unpadded_message()
    }
}

// --- key exchange --------------------------------------------------------------------------

#[derive(Debug)]
struct X25519Group;
static X25519: X25519Group = X25519Group;

impl SupportedKxGroup for X25519Group {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut secret = [0u8; 32];
        Random.fill(&mut secret)?;
        let public = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
        Ok(Box::new(X25519Exchange { secret, public }))
    }
    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: [u8; 32],
    public: [u8; 32],
}

impl Drop for X25519Exchange {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        let shared = MontgomeryPoint(peer).mul_clamped(self.secret).to_bytes();
        // A low-order peer point gives the all-zero secret (RFC 7748 §6.1): refuse it.
        if shared.iter().all(|&b| b == 0) {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared[..]))
    }
    fn pub_key(&self) -> &[u8] {
        &self.public
    }
    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

// --- randomness ----------------------------------------------------------------------------

#[derive(Debug)]
struct Random;

impl SecureRandom for Random {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        getrandom::getrandom(buf).map_err(|_| GetRandomFailed)
    }
}

// --- certificate and handshake signatures --------------------------------------------------

#[derive(Debug)]
struct EcdsaP256;
#[derive(Debug)]
struct EcdsaP384;
#[derive(Debug)]
struct Ed25519;

impl Verify for EcdsaP256 {
    fn verify_signature(&self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(|_| InvalidSignature)?;
        let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| InvalidSignature)?;
        key.verify(msg, &sig).map_err(|_| InvalidSignature)
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA256
    }
}

impl Verify for EcdsaP384 {
    fn verify_signature(&self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
        use p384::ecdsa::signature::Verifier;
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(|_| InvalidSignature)?;
        let sig = p384::ecdsa::Signature::from_der(sig).map_err(|_| InvalidSignature)?;
        key.verify(msg, &sig).map_err(|_| InvalidSignature)
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P384
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA384
    }
}

impl Verify for Ed25519 {
    fn verify_signature(&self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
        let key: [u8; 32] = key.try_into().map_err(|_| InvalidSignature)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| InvalidSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| InvalidSignature)?;
        key.verify_strict(msg, &sig).map_err(|_| InvalidSignature)
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
}

static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[&EcdsaP256, &EcdsaP384, &Ed25519],
    mapping: &[
        (SignatureScheme::ECDSA_NISTP256_SHA256, &[&EcdsaP256]),
        (SignatureScheme::ED25519, &[&Ed25519]),
        (SignatureScheme::ECDSA_NISTP384_SHA384, &[&EcdsaP384]),
    ],
};

/// The device key (PKCS#8 or SEC1): ECDSA P-256 or Ed25519.
#[derive(Debug)]
struct Keys;

impl KeyProvider for Keys {
    fn load_private_key(&self, der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        use p256::pkcs8::DecodePrivateKey;
        let unsupported =
            || Error::General("fleet.key: not an ECDSA P-256 or Ed25519 private key".into());
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(k.secret_pkcs8_der()) {
                    DeviceKey::P256(k)
                } else {
                    let k = ed25519_dalek::SigningKey::from_pkcs8_der(k.secret_pkcs8_der())
                        .map_err(|_| unsupported())?;
                    DeviceKey::Ed25519(k)
                }
            }
            PrivateKeyDer::Sec1(k) => p256::SecretKey::from_sec1_der(k.secret_sec1_der())
                .map(|k| DeviceKey::P256(k.into()))
                .map_err(|_| unsupported())?,
            _ => return Err(unsupported()),
        };
        Ok(Arc::new(key))
    }
}

#[derive(Clone)]
enum DeviceKey {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKey::P256(_) => "DeviceKey(P-256)",
            DeviceKey::Ed25519(_) => "DeviceKey(Ed25519)",
        })
    }
}

impl DeviceKey {
    fn scheme(&self) -> SignatureScheme {
        match self {
            DeviceKey::P256(_) => SignatureScheme::ECDSA_NISTP256_SHA256,
            DeviceKey::Ed25519(_) => SignatureScheme::ED25519,
        }
    }
}

impl SigningKey for DeviceKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&self.scheme())
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        None
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            DeviceKey::P256(_) => SignatureAlgorithm::ECDSA,
            DeviceKey::Ed25519(_) => SignatureAlgorithm::ED25519,
        }
    }
}

impl Signer for DeviceKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        use p256::ecdsa::signature::Signer as _;
        Ok(match self {
            DeviceKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            DeviceKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
        })
    }
    fn scheme(&self) -> SignatureScheme {
        DeviceKey::scheme(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_records_round_trip_and_reject_tampering() {
        let key = AeadKey::from([7u8; 32]);
        let iv = Iv::from([9u8; 12]);
        let mut enc = ChaCha.encrypter(AeadKey::from([7u8; 32]), iv);
        let mut dec = ChaCha.decrypter(key, Iv::from([9u8; 12]));
        let chunks = [&b"hello fleet"[..]];
        let plain = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: rustls::crypto::cipher::OutboundChunks::new(&chunks),
        };
        let sealed = enc.encrypt(plain, 3).expect("encrypt");
        let mut bytes = sealed.payload.as_ref().to_vec();
        assert_eq!(bytes.len(), 11 + 1 + TAG_LEN);
        let mut good = bytes.clone();
        let opened = dec
            .decrypt(
                InboundOpaqueMessage::new(
                    ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut good,
                ),
                3,
            )
            .expect("decrypt");
        assert_eq!(opened.payload, b"hello fleet");
        // Another sequence number or a flipped bit: refused.
        let mut again = bytes.clone();
        let m = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut again,
        );
        assert!(dec.decrypt(m, 4).is_err());
        bytes[2] ^= 1;
        let m = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut bytes,
        );
        assert!(dec.decrypt(m, 3).is_err());
    }

    #[test]
    fn x25519_agrees_and_refuses_low_order_points() {
        let a = X25519.start().expect("a");
        let b = X25519.start().expect("b");
        let (pa, pb) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let sa = a.complete(&pb).expect("a completes");
        let sb = b.complete(&pa).expect("b completes");
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        let c = X25519.start().expect("c");
        assert!(c.complete(&[0u8; 32]).is_err());
        let d = X25519.start().expect("d");
        assert!(d.complete(&[1u8; 31]).is_err());
    }

    #[test]
    fn rfc7748_x25519_vector() {
        // RFC 7748 §5.2, first test vector.
        let scalar = unhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let point = unhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = MontgomeryPoint(point).mul_clamped(scalar).to_bytes();
        assert_eq!(
            out,
            unhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );
    }

    #[test]
    fn hmac_sha256_rfc4231_vectors() {
        use rustls::crypto::hmac::Hmac as _;
        // Test case 1 (short key) and 6 (a key longer than the block, hashed first).
        let short = HmacSha256.with_key(&[0x0b; 20]).sign(&[b"Hi There"]);
        assert_eq!(
            short.as_ref(),
            unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        let long = HmacSha256
            .with_key(&[0xaa; 131])
            .sign(&[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(
            long.as_ref(),
            unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    fn unhex(s: &str) -> [u8; 32] {
        crate::bundle::unhex32(s).expect("hex")
    }
}
