//! The fleet's keys and certificates, made by `nanoclaw-fleet init` and `enrol`.
//!
//! One fleet CA signs the server certificate (serverAuth, the name devices dial) and every
//! device certificate (clientAuth, CN = device id). Devices pin the CA; the server verifies
//! device chains against it and then looks the certificate's SHA-256 up in the registry, so
//! a certificate the CA signed but nobody enrolled is still refused. The Ed25519 fleet signing
//! key signs policies and grants; devices pin its public half as `policy_key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

pub const CA_KEY: &str = "ca.key";
pub const CA_CERT: &str = "ca.pem";
pub const SERVER_KEY: &str = "server.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SIGNING_KEY: &str = "fleet-signing.key";
pub const SIGNING_PUB: &str = "fleet-signing.pub";
pub const ADMIN_TOKEN: &str = "admin.token";

fn err(what: impl std::fmt::Display) -> impl FnOnce(rcgen::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The CA's parameters. The same recipe re-creates an equivalent issuer from the stored key
/// (subject and key identifier are what a signature refers to). The name carries the key's
/// fingerprint, so two fleets' CAs never share a subject and a foreign chain is an unknown
/// issuer rather than a bad signature.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let id = nanoclaw::bundle::hex(&Sha256::digest(key.public_key_der()));
    p.distinguished_name.push(
        DnType::CommonName,
        format!("nanoclaw fleet CA {}", &id[..16]),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2074, 1, 1);
    p
}

fn leaf_params(
    cn: &str,
    sans: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(sans).map_err(err("certificate names"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(86_400)).into();
    p.not_after = (now + std::time::Duration::from_secs(20 * 365 * 86_400)).into();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes::<16>()));
    Ok(p)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    // The system RNG failing leaves zeros; every caller is a key or serial, where rcgen and
    // ring draw their own randomness for the key itself.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    nanoclaw::sigstore::read_capped(path, 64 * 1024, "key or certificate")
}

/// `init`: a new CA, a server certificate for `names`, the fleet signing key and an admin
/// token in `dir`. Refuses to overwrite anything.
pub fn init(dir: &Path, names: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for f in [CA_KEY, SERVER_KEY, SIGNING_KEY, ADMIN_TOKEN] {
        if dir.join(f).exists() {
            return Err(format!(
                "{} exists; this directory is already initialised",
                dir.join(f).display()
            ));
        }
    }
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let ca = ca_params(&ca_key)
        .self_signed(&ca_key)
        .map_err(err("CA certificate"))?;
    let srv_key = KeyPair::generate().map_err(err("server key"))?;
    let cn = names.first().map_or("nanoclaw-fleet", String::as_str);
    let srv = leaf_params(cn, names.to_vec(), ExtendedKeyUsagePurpose::ServerAuth)?
        .signed_by(&srv_key, &ca, &ca_key)
        .map_err(err("server certificate"))?;
    let signing = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err("signing key"))?;
    write_secret(&dir.join(CA_KEY), &ca_key.serialize_pem())?;
    write_public(&dir.join(CA_CERT), &ca.pem())?;
    write_secret(&dir.join(SERVER_KEY), &srv_key.serialize_pem())?;
    write_public(&dir.join(SERVER_CERT), &srv.pem())?;
    write_secret(&dir.join(SIGNING_KEY), &signing.serialize_pem())?;
    write_public(&dir.join(SIGNING_PUB), &signing.public_key_pem())?;
    write_secret(
        &dir.join(ADMIN_TOKEN),
        &format!("{}\n", nanoclaw::bundle::hex(&random_bytes::<24>())),
    )?;
    Ok(())
}

/// Device ids: what the registry, file names and certificate names can all carry.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "device id `{id}`: use 1-64 characters of letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// A device identity issued by the fleet CA.
pub struct Issued {
    pub key_pem: String,
    pub cert_pem: String,
    pub fingerprint: String,
}

/// A new device key and certificate signed by the CA in `dir`.
pub fn issue(dir: &Path, id: &str) -> Result<Issued, String> {
    check_id(id)?;
    let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(err("CA key"))?;
    let ca = ca_params(&ca_key)
        .self_signed(&ca_key)
        .map_err(err("CA certificate"))?;
    let key = KeyPair::generate().map_err(err("device key"))?;
    let cert = leaf_params(id, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?
        .signed_by(&key, &ca, &ca_key)
        .map_err(err("device certificate"))?;
    Ok(Issued {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
        fingerprint: fingerprint(cert.der()),
    })
}

/// `enrol --out`: a new identity written to `out` as `device.key`, `device.pem`,
/// `fleet-ca.pem` and `fleet-signing.pub`; returns the certificate fingerprint.
pub fn issue_device(dir: &Path, id: &str, out: &Path) -> Result<String, String> {
    let new = issue(dir, id)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_secret(&out.join("device.key"), &new.key_pem)?;
    write_public(&out.join("device.pem"), &new.cert_pem)?;
    std::fs::copy(dir.join(CA_CERT), out.join("fleet-ca.pem"))
        .map_err(|e| format!("{}: {e}", out.join("fleet-ca.pem").display()))?;
    std::fs::copy(dir.join(SIGNING_PUB), out.join("fleet-signing.pub"))
        .map_err(|e| format!("{}: {e}", out.join("fleet-signing.pub").display()))?;
    Ok(new.fingerprint)
}

pub fn fingerprint(der: &[u8]) -> String {
    nanoclaw::bundle::hex(&Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_file(path: &Path) -> Result<String, String> {
    fingerprint_of_pem(&read(path)?, &path.display().to_string())
}

/// The fingerprint of the (first) certificate in PEM text; `what` names it in errors.
pub fn fingerprint_of_pem(text: &str, what: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("{what}: not a PEM certificate: {e}"))?;
    Ok(fingerprint(&der))
}

/// The admin API's TLS configuration: the server's certificate, no client certificate (the
/// admin token authenticates), HTTP/1.1.
pub fn admin_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs(&dir.join(SERVER_CERT))?, key(&dir.join(SERVER_KEY))?)
        .map_err(|e| format!("{}: {e}", dir.join(SERVER_CERT).display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The admin token from `init`.
pub fn admin_token(dir: &Path) -> Result<String, String> {
    let path = dir.join(ADMIN_TOKEN);
    let t = nanoclaw::sigstore::read_capped(&path, 4096, "admin token")?;
    let t = t.trim();
    if t.len() < 16 {
        return Err(format!(
            "{}: an admin token needs at least 16 characters",
            path.display()
        ));
    }
    Ok(t.to_owned())
}

/// The server's TLS provider: ring, with the SHA-256 suites only (AES-128-GCM, and the
/// ChaCha20-Poly1305 that devices offer). The SHA-384 suite rustls prefers by default runs
/// its key schedule on SHA-512 code that CPUs rarely accelerate: measured as the largest
/// single cost of a resumed check-in (docs/BENCHMARKS.md).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

/// What the load generator's simulated devices offer: the same suite and group as the
/// daemon's own provider (nanoclaw::daemon::fleet::crypto), computed by ring so that the
/// generator costs the shared cores as little as possible.
pub fn device_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        kx_groups: vec![kx_group::X25519],
        ..default_provider()
    })
}

/// The TLS 1.3 server configuration: our certificate, device certificates required and
/// verified against the fleet CA, session tickets for cheap reconnects.
pub fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let ca = certs(&dir.join(CA_CERT))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", dir.join(CA_CERT).display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let chain = certs(&dir.join(SERVER_CERT))?;
    let key = key(&dir.join(SERVER_KEY))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", dir.join(SERVER_CERT).display()))?;
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}

pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(path)?;
    let v: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(v)
}

pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

pub fn signing_key(dir: &Path) -> Result<nanoclaw::sigstore::SigningKey, String> {
    let path: PathBuf = dir.join(SIGNING_KEY);
    nanoclaw::sigstore::SigningKey::from_pkcs8_pem(&read(&path)?)
        .map_err(|e| format!("{}: {e}", path.display()))
}
