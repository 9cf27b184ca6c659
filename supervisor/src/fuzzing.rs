//! Entry points of the fuzz targets (`fuzz/`, `cargo +nightly fuzz run NAME`): every decoder
//! of untrusted input (policies, manifests, envelopes, agent socket lines, sync frames), driven with arbitrary bytes. Each must answer with a value or an error
//! and never panic; where a decoder accepts, the checks below hold. The unit tests run the
//! same entry points on stable over thousands of mutated documents, so CI exercises them too.

use std::path::Path;

use crate::config::master::MasterPolicy;
use crate::config::policy::{Capability, Policy};
use crate::policy::signed::{self, Envelope, Kind, PublicKey};

/// Policy documents: the field checker, the master policy parser and the whole judge.
pub fn policy(data: &[u8]) {
    let checked = Policy::check(data, Path::new("/"));
    if let Ok(p) = &checked {
        // Whatever the checker accepts, validation accepts too.
        assert!(p.validate().is_ok(), "check accepted what validate refuses");
    }
    let _ = MasterPolicy::check_doc(data, Path::new("/"));
    let judge = crate::policy::Judge {
        key: None,
        allow_local: true,
        master: None,
        device_memory: 1 << 30,
        base: Path::new("/"),
    };
    if let Ok(a) = judge.accept(data) {
        assert!(
            checked.is_ok(),
            "the judge accepted what the checker refuses"
        );
        assert!(crate::admission::validate_policy(&a.policy, 1 << 30).is_ok());
    }
}

/// Agent socket lines: parsed or refused, and every answer is exactly one line.
pub fn agent_api(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        match crate::agentapi::parse(line) {
            Ok((id, _)) => {
                let a = crate::agentapi::ok(&id, serde_json::Map::new());
                assert_eq!(a.matches('\n').count(), 1);
            }
            Err(b) => {
                let a = crate::agentapi::err(&b.id, crate::agentapi::Code::BadRequest, &b.error);
                assert_eq!(a.matches('\n').count(), 1);
            }
        }
    }
}

fn fixed_key() -> PublicKey {
    PublicKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key())
}

/// Signed envelopes and grant tokens: nothing verifies without the key's signature.
pub fn signed(data: &[u8]) {
    let Ok(env) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    let key = fixed_key();
    // A forged signature over fuzzer bytes verifying would be a broken verifier.
    assert!(signed::verify(Kind::Policy, &env, &key).is_err());
    let caps: Vec<Capability> = vec![Capability::Device("/dev/null".into())];
    assert!(crate::policy::grant::check(&env, &key, "a", "d", &caps, 0, |_| false).is_err());
}

/// Manifests.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = crate::config::Manifest::parse(data, Path::new("/b/manifest.json")) {
        assert!(m.validate().is_ok());
    }
}

/// Sync frames and messages from either side: decoded or refused, batches split or refused,
/// and a device session fed arbitrary server messages never panics.
pub fn sync(data: &[u8]) {
    use nanoclaw_proto::session::{Host, Session};
    use nanoclaw_proto::sync::{DeviceMsg, Digest, Hello, Offer, ServerMsg, frame, records};

    struct Null;
    impl Host for Null {
        fn hello(&self) -> Hello<'_> {
            Hello {
                protocol_min: 1,
                protocol_max: 1,
                firmware: "f",
                policy_version: 1,
                bundles: [0; 32],
                audit_high: 3,
                audit_acked: 0,
                outbox_high: 0,
                outbox_acked: 0,
                dropped: 0,
            }
        }
        fn audit(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize) {
            let mut used = 0;
            let n = u16::from(first <= 3 && records::push(buf, &mut used, b"rec"));
            (first, n, used)
        }
        fn outbox(&self, first: u64, _: &mut [u8]) -> (u64, u16, usize) {
            (first, 0, 0)
        }
        fn policy(&mut self, _: u64, _: &[u8]) -> Result<(), &str> {
            Err("no")
        }
        fn grant(&mut self, _: &[u8]) -> Result<(), &str> {
            Ok(())
        }
        fn want(&mut self, o: &Offer<'_>) -> Option<u64> {
            (o.size < 1 << 20).then_some(0)
        }
        fn chunk(&mut self, _: &Digest, _: u64, _: &[u8]) -> bool {
            true
        }
        fn downloaded(&mut self, _: &Digest) {}
        fn acked_audit(&mut self, _: u64) {}
        fn acked_outbox(&mut self, _: u64) {}
    }

    if let Ok(DeviceMsg::Audit { n, records, .. } | DeviceMsg::Outbox { n, records, .. }) =
        postcard::from_bytes::<DeviceMsg<'_>>(data)
    {
        let mut count = 0u16;
        if records::split(records, n, |_| count += 1).is_some() {
            assert_eq!(count, n);
        }
    }
    // The bytes as a stream of frames, each a server message for one session.
    let mut host = Null;
    let (mut s, _) = Session::start(&host);
    let mut buf = [0u8; 512];
    let mut rest = data;
    let mut sent = 0usize;
    while let frame::Next::Frame { len } = frame::next(rest) {
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        if let Ok(m) = postcard::from_bytes::<ServerMsg<'_>>(body)
            && s.on_message(&mut host, m, &mut buf, &mut |_| sent += 1)
                .is_err()
        {
            break;
        }
        rest = &rest[4 + len..];
    }
}

/// Deterministic mutation of example documents, for the stable runs of the entry points.
#[cfg(test)]
pub(crate) mod mutate {
    /// xorshift64*: deterministic, so a failure names a reproducible case.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"-1",
        b"1e999",
        b"\"\\u0000\"",
        b"\"../x\"",
        b"\"18446744073709551616MiB\"",
        b"\"unknown_key\": 1,",
        b"\xff",
        b"\n",
    ];

    /// One to three random edits of `doc`: a byte flipped, a cut, a JSON token inserted, a run
    /// deleted.
    pub fn mutate(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
        let mut v = doc.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(v.len() + 1);
            match rng.below(4) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                1 => v.truncate(at),
                2 => {
                    let t = TOKENS[rng.below(TOKENS.len())];
                    v.splice(at..at, t.iter().copied());
                }
                _ => {
                    let end = (at + rng.below(16)).min(v.len());
                    v.drain(at..end);
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::mutate::{Rng, mutate};

    fn drive(name: &str, seeds: &[&[u8]], f: fn(&[u8])) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        // Fewer under qemu-user emulation (the aarch64 stage), same coverage of shapes.
        let n = if cfg!(target_arch = "x86_64") {
            2000
        } else {
            300
        };
        for seed in seeds {
            f(seed);
            for _ in 0..n {
                f(&mutate(&mut rng, seed));
            }
        }
    }

    #[test]
    fn fuzz_entry_points_survive_mutated_examples() {
        let policy = crate::config::policy::tests::EXAMPLE.as_bytes();
        drive(
            "policy",
            &[policy, br#"{"version":1,"agents":{"a":{"memory":"1MiB"}}}"#],
            super::policy,
        );
        drive(
            "agent_api",
            &[
                br#"{"op":"hello","id":1,"protocol":1}"#,
                br#"{"op":"send","to":"b","topic":"t","data":{"x":[1,2]}}"#,
                br#"{"op":"request_capability","token":{"payload":{},"signature":{"key_id":"k","sig":"AA=="}}}"#,
            ],
            super::agent_api,
        );
        let key = crate::sigstore::SigningKey::Ed25519(Box::new(
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        ));
        let env = crate::policy::signed::sign(
            crate::policy::signed::Kind::Grant,
            serde_json::json!({"agent":"a","capability":"dev:/dev/null","not_after":9,"nonce":"n"}),
            &key,
        )
        .unwrap();
        let env = serde_json::to_vec(&env).unwrap();
        drive("signed", &[&env], super::signed);
        drive(
            "manifest",
            &[crate::config::manifest::tests::EXAMPLE.as_bytes()],
            super::manifest,
        );
        use nanoclaw_proto::sync::{DeviceMsg, Offer, ServerMsg, Welcome};
        let mut session = Vec::new();
        for m in [
            ServerMsg::Welcome(Welcome {
                protocol: 1,
                poll_s: 60,
                audit_acked: 0,
                outbox_acked: 0,
                pending: 2,
            }),
            ServerMsg::Offer(Offer {
                name: "a",
                version: "1.0.0",
                size: 10,
                digest: [1; 32],
                signature: b"{}",
            }),
            ServerMsg::Grant {
                id: 1,
                token: b"{}",
            },
            ServerMsg::Chunk {
                digest: [1; 32],
                offset: 0,
                data: b"0123456789",
            },
            ServerMsg::AuditAck { upto: 3 },
            ServerMsg::Bye { poll_s: 60 },
        ] {
            let body = postcard::to_allocvec(&m).unwrap();
            session.extend_from_slice(&(body.len() as u32).to_le_bytes());
            session.extend(body);
        }
        let batch = postcard::to_allocvec(&DeviceMsg::Audit {
            first: 1,
            n: 2,
            records: &[3, 0, b'a', b'b', b'c', 0, 0],
        })
        .unwrap();
        drive("sync", &[&session, &batch], super::sync);
    }
}
