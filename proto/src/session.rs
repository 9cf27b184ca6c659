//! The device side of a sync session as a sans-IO state machine: the caller connects, feeds
//! it the server's messages as they arrive and sends what it returns; it never touches a
//! socket or a clock, so every cut, stall and reconnect can be replayed deterministically.
//!
//! One request is outstanding at a time (a chunk pull, an audit batch, an outbox batch): on a
//! link that drops, the simplest protocol is the one whose every step can be repeated. What
//! survives a cut lives on the device (`Host`): the partial archive and its length, the audit
//! and outbox stores and their acknowledged marks — the session itself is thrown away.

use crate::sync::{
    CHUNK_MAX, DeviceMsg, Digest, Hello, Offer, PROTOCOL_STATUS, ServerMsg, Status, Welcome,
};

/// What the session needs from the device.
pub trait Host {
    fn hello(&self) -> Hello<'_>;
    /// Encodes consecutive audit records from sequence `first` into `buf` (each with a `u16`
    /// length prefix); returns the sequence of the first one encoded (later than `first` when
    /// the records before it are gone from the device), how many, and the bytes used (0
    /// records when there is nothing to send).
    fn audit(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize);
    /// The same for the outbox.
    fn outbox(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize);
    /// A policy newer than the one in force: apply it (`Err`: the reason it was refused).
    fn policy(&mut self, version: u64, envelope: &[u8]) -> Result<(), &str>;
    fn grant(&mut self, token: &[u8]) -> Result<(), &str>;
    /// An offered bundle: `Some(bytes already held)` to download it (resuming), `None` to skip.
    fn want(&mut self, offer: &Offer<'_>) -> Option<u64>;
    /// Stores `data` at `offset` of the partial archive (`false`: it does not fit there).
    fn chunk(&mut self, digest: &Digest, offset: u64, data: &[u8]) -> bool;
    /// The whole archive is here: verify and install it.
    fn downloaded(&mut self, digest: &Digest);
    /// The server stored everything up to these sequences.
    fn acked_audit(&mut self, upto: u64);
    fn acked_outbox(&mut self, upto: u64);
    /// The device's snapshot for a server that speaks protocol 2 (`None`: send none).
    fn status(&self) -> Option<Status<'_>> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hello sent, waiting for Welcome.
    Hello,
    /// Taking the `pending` messages that follow Welcome.
    Receiving(u16),
    /// A request is outstanding.
    Waiting,
    /// Bye sent.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Download {
    digest: Digest,
    size: u64,
    offset: u64,
}

/// Most bundle offers handled in one session (more wait for the next).
const OFFERS: usize = 4;

/// Why a session ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered something this state does not expect.
    Protocol,
    /// The server refused the session.
    Refused,
}

pub struct Session {
    phase: Phase,
    downloads: [Option<Download>; OFFERS],
    audit_next: u64,
    outbox_next: u64,
    /// The server's suggested next check-in.
    pub poll_s: u32,
}

impl Session {
    /// Starts a session: the returned Hello goes out first.
    pub fn start<H: Host>(host: &H) -> (Session, Hello<'_>) {
        let hello = host.hello();
        let s = Session {
            phase: Phase::Hello,
            downloads: [None; OFFERS],
            audit_next: hello.audit_acked + 1,
            outbox_next: hello.outbox_acked + 1,
            poll_s: 0,
        };
        (s, hello)
    }

    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Handles one server message; `send` gets at most one request in return. `buf` is
    /// scratch space for audit and outbox batches.
    pub fn on_message<H: Host>(
        &mut self,
        host: &mut H,
        msg: ServerMsg<'_>,
        buf: &mut [u8],
        send: &mut dyn FnMut(DeviceMsg<'_>),
    ) -> Result<(), Failure> {
        match (self.phase, msg) {
            (
                Phase::Hello,
                ServerMsg::Welcome(Welcome {
                    protocol,
                    poll_s,
                    audit_acked,
                    outbox_acked,
                    pending,
                }),
            ) => {
                self.poll_s = poll_s;
                // Unanswered, so it goes out ahead of whatever request follows.
                if protocol >= PROTOCOL_STATUS
                    && let Some(st) = host.status()
                {
                    send(DeviceMsg::Status(st));
                }
                // The server is the truth about what it stored.
                host.acked_audit(audit_acked);
                host.acked_outbox(outbox_acked);
                self.audit_next = audit_acked + 1;
                self.outbox_next = outbox_acked + 1;
                self.phase = Phase::Receiving(pending);
                if pending == 0 {
                    self.next(host, buf, send);
                }
                Ok(())
            }
            (Phase::Receiving(n), m) => {
                match m {
                    ServerMsg::Policy { version, envelope } => {
                        let r = host.policy(version, envelope);
                        send(DeviceMsg::Applied {
                            what: crate::sync::Applied::Policy,
                            version,
                            ok: r.is_ok(),
                            reason: r.err().unwrap_or(""),
                        });
                    }
                    ServerMsg::Grant { id, token } => {
                        let r = host.grant(token);
                        send(DeviceMsg::Applied {
                            what: crate::sync::Applied::Grant,
                            version: id,
                            ok: r.is_ok(),
                            reason: r.err().unwrap_or(""),
                        });
                    }
                    ServerMsg::Offer(o) => {
                        if let Some(have) = host.want(&o)
                            && let Some(slot) = self.downloads.iter_mut().find(|d| d.is_none())
                        {
                            *slot = Some(Download {
                                digest: o.digest,
                                size: o.size,
                                offset: have.min(o.size),
                            });
                        }
                    }
                    _ => return Err(Failure::Protocol),
                }
                self.phase = Phase::Receiving(n.saturating_sub(1));
                if n <= 1 {
                    self.next(host, buf, send);
                }
                Ok(())
            }
            (
                Phase::Waiting,
                ServerMsg::Chunk {
                    digest,
                    offset,
                    data,
                },
            ) => {
                let Some(d) = self
                    .downloads
                    .iter_mut()
                    .flatten()
                    .find(|d| d.digest == digest)
                else {
                    return Err(Failure::Protocol);
                };
                if offset != d.offset || data.is_empty() || !host.chunk(&digest, offset, data) {
                    return Err(Failure::Protocol);
                }
                d.offset += data.len() as u64;
                self.next(host, buf, send);
                Ok(())
            }
            (Phase::Waiting, ServerMsg::AuditAck { upto }) => {
                host.acked_audit(upto);
                self.audit_next = upto + 1;
                self.next(host, buf, send);
                Ok(())
            }
            (Phase::Waiting, ServerMsg::OutboxAck { upto }) => {
                host.acked_outbox(upto);
                self.outbox_next = upto + 1;
                self.next(host, buf, send);
                Ok(())
            }
            (_, ServerMsg::Error { .. }) => Err(Failure::Refused),
            (_, ServerMsg::Bye { poll_s }) => {
                self.poll_s = poll_s;
                self.phase = Phase::Done;
                Ok(())
            }
            _ => Err(Failure::Protocol),
        }
    }

    /// The next request: finish downloads, then push audit, then outbox, then Bye.
    fn next<H: Host>(&mut self, host: &mut H, buf: &mut [u8], send: &mut dyn FnMut(DeviceMsg<'_>)) {
        self.phase = Phase::Waiting;
        for slot in self.downloads.iter_mut() {
            let Some(d) = slot else { continue };
            if d.offset >= d.size {
                host.downloaded(&d.digest);
                *slot = None;
                continue;
            }
            let len = (d.size - d.offset).min(u64::from(CHUNK_MAX)) as u32;
            send(DeviceMsg::Pull {
                digest: d.digest,
                offset: d.offset,
                len,
            });
            return;
        }
        let (first, n, used) = host.audit(self.audit_next, buf);
        if n > 0 {
            send(DeviceMsg::Audit {
                first: first.max(self.audit_next),
                n,
                records: &buf[..used],
            });
            return;
        }
        let (first, n, used) = host.outbox(self.outbox_next, buf);
        if n > 0 {
            send(DeviceMsg::Outbox {
                first: first.max(self.outbox_next),
                n,
                records: &buf[..used],
            });
            return;
        }
        send(DeviceMsg::Bye);
        self.phase = Phase::Done;
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use crate::sync::{Applied, Welcome};
    use alloc::vec::Vec;

    /// A device: a bundle download in progress, an audit store, a policy version.
    struct Dev {
        policy: u64,
        applied: Vec<u64>,
        archive: Vec<u8>,
        installed: Vec<Digest>,
        audit: Vec<u64>,
        acked: u64,
        /// Agent records to report in a status (`None`: no status).
        status: Option<Vec<u8>>,
    }

    impl Dev {
        fn new(policy: u64, audit: Vec<u64>, status: Option<Vec<u8>>) -> Dev {
            Dev {
                policy,
                applied: Vec::new(),
                archive: Vec::new(),
                installed: Vec::new(),
                audit,
                acked: 0,
                status,
            }
        }
    }

    impl Host for Dev {
        fn hello(&self) -> Hello<'_> {
            Hello {
                protocol_min: 1,
                protocol_max: 1,
                firmware: "t",
                policy_version: self.policy,
                bundles: [0; 32],
                audit_high: self.audit.last().copied().unwrap_or(0),
                audit_acked: self.acked,
                outbox_high: 0,
                outbox_acked: 0,
                dropped: 0,
            }
        }
        fn audit(&self, first: u64, buf: &mut [u8]) -> (u64, u16, usize) {
            // Records are their 8-byte sequence numbers; at most 50 per batch.
            let mut n = 0;
            let mut used = 0;
            for s in self.audit.iter().filter(|s| **s >= first).take(50) {
                assert!(crate::sync::records::push(buf, &mut used, &s.to_le_bytes()));
                n += 1;
            }
            (first, n, used)
        }
        fn outbox(&self, first: u64, _: &mut [u8]) -> (u64, u16, usize) {
            (first, 0, 0)
        }
        fn policy(&mut self, version: u64, _: &[u8]) -> Result<(), &'static str> {
            if version <= self.policy {
                return Err("older");
            }
            self.policy = version;
            self.applied.push(version);
            Ok(())
        }
        fn grant(&mut self, _: &[u8]) -> Result<(), &'static str> {
            Ok(())
        }
        fn want(&mut self, o: &Offer<'_>) -> Option<u64> {
            (!self.installed.contains(&o.digest)).then_some(self.archive.len() as u64)
        }
        fn chunk(&mut self, _: &Digest, offset: u64, data: &[u8]) -> bool {
            if offset != self.archive.len() as u64 {
                return false;
            }
            self.archive.extend_from_slice(data);
            true
        }
        fn downloaded(&mut self, digest: &Digest) {
            self.installed.push(*digest);
        }
        fn acked_audit(&mut self, upto: u64) {
            self.acked = self.acked.max(upto);
        }
        fn acked_outbox(&mut self, _: u64) {}
        fn status(&self) -> Option<Status<'_>> {
            Some(Status {
                battery_pct: 80,
                external_power: false,
                posture: "seccomp=full",
                degraded: false,
                n: 1,
                agents: self.status.as_deref()?,
            })
        }
    }

    /// The server: a policy, one bundle, the audit records it stored.
    struct Srv {
        policy: u64,
        bundle: Vec<u8>,
        stored: Vec<u64>,
        served_bytes: usize,
        applied_reports: Vec<(u64, bool)>,
    }

    const DIGEST: Digest = [7; 32];

    impl Srv {
        /// Answers one device message with zero or more messages.
        fn answer(&mut self, m: &DeviceMsg<'_>, out: &mut Vec<Vec<u8>>) {
            let mut push = |msg: ServerMsg<'_>| out.push(postcard::to_allocvec(&msg).unwrap());
            match m {
                DeviceMsg::Hello(h) => {
                    let mut pending = 1; // the offer (the device skips it once installed)
                    let newer = self.policy > h.policy_version;
                    pending += u16::from(newer);
                    push(ServerMsg::Welcome(Welcome {
                        protocol: 1,
                        poll_s: 60,
                        audit_acked: self.stored.last().copied().unwrap_or(0),
                        outbox_acked: 0,
                        pending,
                    }));
                    if newer {
                        push(ServerMsg::Policy {
                            version: self.policy,
                            envelope: b"{}",
                        });
                    }
                    push(ServerMsg::Offer(Offer {
                        name: "a",
                        version: "1.0.0",
                        size: self.bundle.len() as u64,
                        digest: DIGEST,
                        signature: b"",
                    }));
                }
                DeviceMsg::Pull { offset, len, .. } => {
                    let o = *offset as usize;
                    let end = (o + *len as usize).min(self.bundle.len());
                    self.served_bytes += end - o;
                    push(ServerMsg::Chunk {
                        digest: DIGEST,
                        offset: *offset,
                        data: &self.bundle[o..end],
                    });
                }
                DeviceMsg::Audit { first, n, records } => {
                    // Exactly once: keep only what extends the stored sequence.
                    for (i, rec) in records.chunks(10).enumerate().take(*n as usize) {
                        let seq = u64::from_le_bytes(rec[2..10].try_into().unwrap());
                        assert_eq!(seq, first + i as u64, "batch out of order");
                        if seq == self.stored.last().copied().unwrap_or(0) + 1 {
                            self.stored.push(seq);
                        }
                    }
                    push(ServerMsg::AuditAck {
                        upto: self.stored.last().copied().unwrap_or(0),
                    });
                }
                DeviceMsg::Applied {
                    what: Applied::Policy,
                    version,
                    ok,
                    ..
                } => {
                    self.applied_reports.push((*version, *ok));
                }
                DeviceMsg::Bye => push(ServerMsg::Bye { poll_s: 60 }),
                _ => {}
            }
        }
    }

    /// xorshift for the cut points.
    fn rng(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Runs sessions over a link that cuts each one after a random number of messages, until
    /// one completes; returns the number of sessions.
    fn converge(dev: &mut Dev, srv: &mut Srv, seed: u64, max_msgs: u64) -> usize {
        let mut x = seed;
        for session in 1..=10_000 {
            let budget = 1 + rng(&mut x) % max_msgs;
            let mut delivered = 0u64;
            let (mut s, hello) = Session::start(dev);
            let mut to_server: Vec<Vec<u8>> = Vec::new();
            to_server.push(postcard::to_allocvec(&DeviceMsg::Hello(hello)).unwrap());
            let mut buf = [0u8; 1024];
            'link: while let Some(up) = (!to_server.is_empty()).then(|| to_server.remove(0)) {
                let m: DeviceMsg = postcard::from_bytes(&up).unwrap();
                let mut down = Vec::new();
                srv.answer(&m, &mut down);
                for d in down {
                    delivered += 1;
                    if delivered > budget {
                        break 'link; // the link drops mid-session
                    }
                    let msg: ServerMsg = postcard::from_bytes(&d).unwrap();
                    let mut sent = Vec::new();
                    s.on_message(dev, msg, &mut buf, &mut |m| {
                        sent.push(postcard::to_allocvec(&m).unwrap())
                    })
                    .unwrap();
                    to_server.extend(sent);
                }
            }
            if s.done() {
                return session;
            }
        }
        panic!("no session completed");
    }

    #[test]
    fn a_link_that_keeps_dropping_delivers_everything_exactly_once() {
        for seed in [1u64, 7, 99, 12345] {
            let size = 20 * CHUNK_MAX as usize + 123;
            let mut dev = Dev::new(3, (1..=1000).collect(), None);
            let mut srv = Srv {
                policy: 4,
                bundle: (0..size).map(|i| (i % 251) as u8).collect(),
                stored: Vec::new(),
                served_bytes: 0,
                applied_reports: Vec::new(),
            };
            let sessions = converge(&mut dev, &mut srv, seed, 6);
            assert!(
                sessions > 5,
                "the link must really have dropped: {sessions}"
            );
            assert_eq!(dev.applied, [4], "policy applied exactly once");
            assert_eq!(dev.archive, srv.bundle, "the archive arrived whole");
            assert_eq!(dev.installed, [DIGEST]);
            // Resumed, never restarted: at most one chunk per cut is fetched twice.
            assert!(
                srv.served_bytes <= size + sessions * CHUNK_MAX as usize,
                "{} bytes served for {size}",
                srv.served_bytes
            );
            assert_eq!(
                srv.stored,
                (1..=1000).collect::<Vec<u64>>(),
                "audit exactly once, in order"
            );
            assert_eq!(dev.acked, 1000);
            // A clean session now is idle: Hello, Welcome, the skipped offer, Bye.
            assert_eq!(converge(&mut dev, &mut srv, seed, 1000), 1);
        }
    }

    #[test]
    fn unexpected_messages_fail_the_session() {
        let mut dev = Dev::new(0, Vec::new(), None);
        let (mut s, _) = Session::start(&dev);
        let mut buf = [0u8; 64];
        let r = s.on_message(
            &mut dev,
            ServerMsg::Chunk {
                digest: DIGEST,
                offset: 0,
                data: b"x",
            },
            &mut buf,
            &mut |_| {},
        );
        assert_eq!(r, Err(Failure::Protocol));
        let r = s.on_message(
            &mut dev,
            ServerMsg::Error {
                code: crate::sync::ErrorCode::Unknown,
                message: "who?",
            },
            &mut buf,
            &mut |_| {},
        );
        assert_eq!(r, Err(Failure::Refused));
    }
    /// Protocol 2 servers get the status first, unanswered, then the session goes on as
    /// before; protocol 1 servers never see it (they could not decode it).
    #[test]
    fn status_goes_only_to_servers_that_speak_it() {
        for protocol in [1u16, 2] {
            let mut host = Dev::new(0, Vec::new(), Some(alloc::vec![1, 2, 3]));
            let (mut s, _) = Session::start(&host);
            let mut buf = [0u8; 64];
            let mut sent: Vec<Vec<u8>> = Vec::new();
            let welcome = ServerMsg::Welcome(Welcome {
                protocol,
                poll_s: 60,
                audit_acked: 0,
                outbox_acked: 0,
                pending: 0,
            });
            s.on_message(&mut host, welcome, &mut buf, &mut |m| {
                sent.push(postcard::to_allocvec(&m).unwrap())
            })
            .unwrap();
            let msgs: Vec<DeviceMsg<'_>> = sent
                .iter()
                .map(|b| postcard::from_bytes(b).unwrap())
                .collect();
            match protocol {
                1 => assert_eq!(msgs, [DeviceMsg::Bye]),
                _ => {
                    assert_eq!(msgs.len(), 2);
                    assert!(matches!(&msgs[0], DeviceMsg::Status(st)
                        if st.battery_pct == 80 && st.agents == [1, 2, 3]));
                    assert_eq!(msgs[1], DeviceMsg::Bye);
                }
            }
            assert!(s.done());
        }
    }
}
