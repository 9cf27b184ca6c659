//! Host names in egress grants (`api.example.com:443/tcp`) are resolved by the supervisor, never
//! by the agent: what the agent's own resolver answers must not decide its allowlist. A minimal
//! stub client asks the device's resolvers for A and AAAA records over UDP (`/etc/hosts` is
//! consulted first), keeps the addresses for the answer's TTL clamped to
//! [`MIN_TTL_S`]..=[`MAX_TTL_S`], and asks again when it runs out.
//!
//! Limits (docs/SECURITY.md): no TCP fallback (a truncated answer is used as far as it goes),
//! no DNSSEC, and an agent whose resolver gets other addresses than the supervisor's (round-robin
//! CDNs) can only reach the ones the supervisor saw; grant an address range for those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Shortest time an answer is kept (very short TTLs would make the supervisor a DNS load).
pub const MIN_TTL_S: u32 = 5;
/// Longest time an answer is kept, whatever its TTL.
pub const MAX_TTL_S: u32 = 3600;
/// How long an `/etc/hosts` entry is kept before the file is read again.
pub const HOSTS_TTL_S: u32 = 60;
/// How long one resolver may take to answer one question.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// Largest response read (classic DNS over UDP is 512 bytes; EDNS answers up to this).
const MAX_RESPONSE: usize = 1500;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

/// The addresses of one name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub ttl_s: u32,
}

/// A standard query (RD set) for `name`, `qtype` (A or AAAA), class IN.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// Skips a (possibly compressed) name at `i`; returns the offset after it.
fn skip_name(b: &[u8], mut i: usize) -> Result<usize, String> {
    for _ in 0..128 {
        let len = *b.get(i).ok_or("truncated name")?;
        match len {
            0 => return Ok(i + 1),
            l if l & 0xc0 == 0xc0 => return Ok(i + 2),
            l if l & 0xc0 != 0 => return Err(format!("bad label type {l:#x}")),
            l => i += 1 + usize::from(l),
        }
    }
    Err("name has too many labels".into())
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, String> {
    b.get(i..i + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "truncated record".into())
}

/// The `qtype` addresses of a response to query `id`, with the smallest TTL among them.
/// NXDOMAIN and NODATA are an empty answer; SERVFAIL, REFUSED and malformed responses are
/// errors.
pub fn parse_response(id: u16, qtype: u16, b: &[u8]) -> Result<Answer, String> {
    if b.len() < 12 {
        return Err("response shorter than a DNS header".into());
    }
    if u16_at(b, 0)? != id {
        return Err("response to another query".into());
    }
    if b[2] & 0x80 == 0 {
        return Err("not a response".into());
    }
    let rcode = b[3] & 0x0f;
    let qd = u16_at(b, 4)?;
    let an = u16_at(b, 6)?;
    match rcode {
        0 => {}
        3 => {
            return Ok(Answer {
                addrs: vec![],
                ttl_s: MIN_TTL_S,
            });
        }
        2 => return Err("the resolver failed (SERVFAIL)".into()),
        5 => return Err("the resolver refused the query (REFUSED)".into()),
        r => return Err(format!("the resolver answered rcode {r}")),
    }
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..an {
        i = skip_name(b, i)?;
        let rtype = u16_at(b, i)?;
        let class = u16_at(b, i + 2)?;
        let rttl = b
            .get(i + 4..i + 8)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or("truncated record")?;
        let len = usize::from(u16_at(b, i + 8)?);
        let data = b.get(i + 10..i + 10 + len).ok_or("truncated record data")?;
        i += 10 + len;
        if class != 1 || rtype != qtype {
            continue; // CNAMEs on the way are followed by the resolver; their targets follow
        }
        let ip = match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err("address record of the wrong size".into()),
        };
        addrs.push(ip);
        ttl = ttl.min(rttl);
    }
    Ok(Answer {
        addrs,
        ttl_s: if ttl == u32::MAX { MIN_TTL_S } else { ttl },
    })
}

/// The `nameserver` addresses of a resolv.conf (port 53).
pub fn resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            // A zone index (fe80::1%eth0) is not supported by SocketAddr: skip such entries.
            rest.trim().parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The addresses `/etc/hosts`-format `text` gives `name` (case-insensitive).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip: IpAddr = f.next()?.parse().ok()?;
            f.any(|h| h.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// The resolvers to ask: `configured`, else the nameservers of /etc/resolv.conf.
pub fn servers(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| resolv_conf(&t))
        .unwrap_or_default()
}

/// One question to one resolver.
async fn ask(server: SocketAddr, name: &str, qtype: u16, id: u16) -> Result<Answer, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = smol::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("socket: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    sock.send(&query(id, name, qtype))
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; MAX_RESPONSE];
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let recv = async { sock.recv(&mut buf).await.map_err(|e| e.to_string()) };
        let timeout = async {
            smol::Timer::after(left).await;
            Err("no answer".to_owned())
        };
        let n = smol::future::or(recv, timeout)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        match parse_response(id, qtype, &buf[..n]) {
            // A stray datagram (other id) is ignored; the real answer may still come.
            Err(e) if e == "response to another query" => continue,
            r => return r.map_err(|e| format!("{server}: {e}")),
        }
    }
}

/// Resolves `name` to its IPv4 and IPv6 addresses: `/etc/hosts` first, then each of
/// `servers` in turn until one answers. `id_seed` makes the query ids unpredictable.
pub async fn resolve(servers: &[SocketAddr], name: &str, id_seed: u64) -> Result<Answer, String> {
    if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
        let addrs = hosts_lookup(&text, name);
        if !addrs.is_empty() {
            return Ok(Answer {
                addrs,
                ttl_s: HOSTS_TTL_S,
            });
        }
    }
    if servers.is_empty() {
        return Err(
            "no DNS resolver configured (device.json dns_servers, /etc/resolv.conf)".into(),
        );
    }
    let mut errors = Vec::new();
    for (k, s) in servers.iter().enumerate() {
        let id = (id_seed >> (k % 4 * 16)) as u16;
        let a = ask(*s, name, TYPE_A, id).await;
        let aaaa = ask(*s, name, TYPE_AAAA, id.wrapping_add(1)).await;
        match (a, aaaa) {
            (Err(e), Err(_)) => errors.push(e),
            (a, aaaa) => {
                let mut addrs = Vec::new();
                let mut ttl = MAX_TTL_S;
                for ans in [a, aaaa].into_iter().flatten() {
                    if !ans.addrs.is_empty() {
                        ttl = ttl.min(ans.ttl_s);
                    }
                    addrs.extend(ans.addrs);
                }
                if addrs.is_empty() {
                    ttl = MIN_TTL_S;
                }
                return Ok(Answer {
                    addrs,
                    ttl_s: ttl.clamp(MIN_TTL_S, MAX_TTL_S),
                });
            }
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `q` with `answers` (type, ttl, rdata), the question echoed, and the
    /// answers' owner names compressed to the question.
    pub fn respond(q: &[u8], rcode: u8, answers: &[(u16, u32, &[u8])]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] = 0x81;
        r[3] = 0x80 | rcode;
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (t, ttl, data) in answers {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&[0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn queries_are_well_formed() {
        let q = query(0x1234, "api.example.com", TYPE_A);
        assert_eq!(&q[..4], &[0x12, 0x34, 1, 0]);
        assert_eq!(&q[12..16], b"\x03api");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
    }

    #[test]
    fn responses_give_addresses_and_the_smallest_ttl() {
        let q = query(7, "svc.test", TYPE_A);
        let cname: &[u8] = b"\x03foo\x00";
        let r = respond(
            &q,
            0,
            &[
                (5, 10, cname),
                (TYPE_A, 300, &[10, 0, 0, 1]),
                (TYPE_A, 60, &[10, 0, 0, 2]),
            ],
        );
        let a = parse_response(7, TYPE_A, &r).unwrap();
        assert_eq!(
            a.addrs,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(a.ttl_s, 60);
        let q6 = query(8, "svc.test", TYPE_AAAA);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let r6 = respond(&q6, 0, &[(TYPE_AAAA, 30, &v6)]);
        assert_eq!(
            parse_response(8, TYPE_AAAA, &r6).unwrap().addrs,
            ["::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn bad_responses_are_errors_not_addresses() {
        let q = query(7, "svc.test", TYPE_A);
        let ok = respond(&q, 0, &[(TYPE_A, 300, &[10, 0, 0, 1])]);
        assert!(parse_response(8, TYPE_A, &ok).is_err(), "wrong id");
        assert!(
            parse_response(7, TYPE_A, &q).is_err(),
            "a query is not a response"
        );
        assert!(
            parse_response(7, TYPE_A, &respond(&q, 2, &[]))
                .unwrap_err()
                .contains("SERVFAIL")
        );
        assert!(
            parse_response(7, TYPE_A, &respond(&q, 3, &[]))
                .unwrap()
                .addrs
                .is_empty()
        );
        for cut in 0..ok.len() {
            // Every truncation is refused or yields no more than the full answer.
            if let Ok(a) = parse_response(7, TYPE_A, &ok[..cut]) {
                assert!(a.addrs.is_empty(), "{cut}");
            }
        }
        let wrong_size = respond(&q, 0, &[(TYPE_A, 300, &[10, 0, 0])]);
        assert!(parse_response(7, TYPE_A, &wrong_size).is_err());
        // A compression loop cannot hang the parser.
        let mut lp = q.clone();
        lp[12] = 0x80;
        assert!(parse_response(7, TYPE_A, &respond(&lp, 0, &[])).is_err());
    }

    #[test]
    fn resolv_conf_and_hosts() {
        let rc =
            "# comment\nnameserver 10.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\nsearch x\n";
        assert_eq!(
            resolv_conf(rc),
            [
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let hosts =
            "127.0.0.1 localhost\n10.1.2.3 Broker.Local broker # the broker\n#10.9.9.9 broker\n";
        assert_eq!(
            hosts_lookup(hosts, "broker.local"),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(hosts, "nothere").is_empty());
    }
}
