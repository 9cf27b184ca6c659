//! `nanoclaw policy check|sign` and `nanoclaw grant sign`: offline tools for operators (no
//! daemon). `policy reload|apply` talk to the daemon and live in `crate::cli`.
//!
//! Exit codes: 0 valid / written, 1 invalid (every problem printed, one per line as
//! `PATH: problem`), 2 usage or an unreadable file.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::grant::{self, Token};
use super::signed::{self, Kind, PublicKey};
use super::{Judge, Refused};
use crate::config::master::MasterPolicy;
use crate::config::units::ByteSize;

pub const USAGE: &str = "usage: nanoclaw policy check FILE [--master FILE] [--key PUB.pem] [--device-memory SIZE] [--allow-unsigned=false] [--json] [--timing]
       nanoclaw policy sign FILE --key KEY.pem [-o OUT]
       nanoclaw policy reload | apply FILE      (to the running daemon)
       nanoclaw grant sign --key KEY.pem --agent A --capability CAP (--ttl SECONDS | --not-after UNIX)
                           [--device ID] [--nonce N]";

const OK: u8 = 0;
const INVALID: u8 = 1;
const USAGE_ERR: u8 = 2;

fn read(path: &str, max: u64) -> Result<Vec<u8>, String> {
    crate::config::read_capped(Path::new(path), max).map_err(|e| e.to_string())
}

/// `nanoclaw policy check|sign ...`.
pub fn policy_main(args: &[String]) -> u8 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.split_first() {
        Some((&"check", rest)) => check(rest),
        Some((&"sign", rest)) => sign_policy(rest),
        _ => {
            crate::log!("{USAGE}");
            USAGE_ERR
        }
    }
}

fn check(args: &[&str]) -> u8 {
    let (mut file, mut master, mut key, mut mem, mut json_out, mut allow_local) =
        (None, None, None, None, false, true);
    let mut timing = false;
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        let mut val = || it.next().copied();
        match a {
            "--master" => master = val(),
            "--key" => key = val(),
            "--device-memory" => mem = val(),
            "--json" => json_out = true,
            "--allow-unsigned=false" => allow_local = false,
            "--timing" => timing = true,
            s if !s.starts_with('-') && file.is_none() => file = Some(s),
            _ => {
                crate::log!("{USAGE}");
                return USAGE_ERR;
            }
        }
    }
    let Some(file) = file else {
        crate::log!("{USAGE}");
        return USAGE_ERR;
    };
    // A policy too large to parse is an invalid policy, not a usage error.
    if let Ok(m) = std::fs::metadata(file)
        && m.len() > crate::config::policy::MAX_POLICY_BYTES
    {
        let e = Refused::TooLarge {
            len: usize::try_from(m.len()).unwrap_or(usize::MAX),
        };
        report(file, &[("(document)".into(), e.to_string())], json_out);
        return INVALID;
    }
    let loaded = Inputs::load(file, master, key, mem);
    let Inputs {
        bytes,
        master,
        key,
        mem,
        mem_src,
    } = match loaded {
        Ok(x) => x,
        Err(e) => {
            crate::log!("nanoclaw policy check: {e}");
            return USAGE_ERR;
        }
    };
    let judge = Judge {
        key: key.as_ref(),
        allow_local,
        master: master.as_ref(),
        device_memory: mem,
        base: crate::config::base_dir(Path::new(file)),
    };
    let t0 = std::time::Instant::now();
    let judged = judge.accept(&bytes);
    if timing {
        crate::log!("check took {} µs", t0.elapsed().as_micros());
    }
    match judged {
        Ok(a) => {
            let p = &a.policy;
            if json_out {
                println!(
                    "{}",
                    json!({"valid": true, "version": p.version, "agents": p.agents.len(),
                           "origin": a.origin.to_string(), "problems": []})
                );
            } else {
                println!(
                    "{file}: valid: version {}, {} agent(s), {} signer(s), {} channel(s); {}; memory checked against {mem_src}",
                    p.version,
                    p.agents.len(),
                    p.signers.len(),
                    p.channels.len(),
                    a.origin
                );
            }
            OK
        }
        Err(e) => {
            report(file, &problems(&e), json_out);
            INVALID
        }
    }
}

fn report(file: &str, problems: &[(String, String)], json_out: bool) {
    if json_out {
        let list: Vec<Value> = problems
            .iter()
            .map(|(p, r)| json!({"path": p, "problem": r}))
            .collect();
        println!("{}", json!({"valid": false, "problems": list}));
    } else {
        println!("{file}: {} problem(s)", problems.len());
        for (p, r) in problems {
            println!("  {p}: {r}");
        }
    }
}

/// What `policy check` reads before judging.
struct Inputs {
    bytes: Vec<u8>,
    master: Option<MasterPolicy>,
    key: Option<PublicKey>,
    mem: u64,
    mem_src: String,
}

impl Inputs {
    fn load(
        file: &str,
        master: Option<&str>,
        key: Option<&str>,
        mem: Option<&str>,
    ) -> Result<Inputs, String> {
        let bytes = read(file, crate::config::policy::MAX_POLICY_BYTES)?;
        let master = master
            .map(|m| MasterPolicy::load(Path::new(m)).map_err(|e| e.to_string()))
            .transpose()?;
        let key = key
            .map(|k| PublicKey::load(Path::new(k)).map_err(|e| e.to_string()))
            .transpose()?;
        let (mem, mem_src) = match mem {
            Some(m) => (
                m.parse::<ByteSize>()
                    .map_err(|e| format!("--device-memory: {e}"))?
                    .bytes(),
                format!("--device-memory {m}"),
            ),
            None => (
                crate::daemon::mem_total().map_err(|e| e.to_string())?,
                "this machine's MemTotal".into(),
            ),
        };
        Ok(Inputs {
            bytes,
            master,
            key,
            mem,
            mem_src,
        })
    }
}

/// (JSON path, problem) pairs of a refusal.
fn problems(e: &Refused) -> Vec<(String, String)> {
    match e {
        Refused::Invalid(errs) => errs
            .iter()
            .map(|f| (f.field.clone(), f.reason.clone()))
            .collect(),
        Refused::Master(errs) => errs
            .iter()
            .map(|f| (f.field.clone(), f.reason.clone()))
            .collect(),
        Refused::Signature(_) | Refused::NoKey | Refused::Unsigned => {
            vec![("signature".into(), e.to_string())]
        }
        other => vec![("agents".into(), other.to_string())],
    }
}

fn load_signing_key(path: &str) -> Result<crate::sigstore::SigningKey, String> {
    let pem = crate::sigstore::read_capped(Path::new(path), crate::sigstore::MAX_KEY, "key")?;
    crate::sigstore::SigningKey::from_pkcs8_pem(&pem).map_err(|e| format!("{path}: {e}"))
}

fn sign_policy(args: &[&str]) -> u8 {
    let (file, key, out) = match args {
        [f, "--key", k] => (*f, *k, None),
        [f, "--key", k, "-o", o] => (*f, *k, Some(*o)),
        _ => {
            crate::log!("{USAGE}");
            return USAGE_ERR;
        }
    };
    let r = (|| -> Result<String, String> {
        let bytes = read(file, crate::config::policy::MAX_POLICY_BYTES)?;
        // Sign only what this device would accept field by field.
        let doc = crate::config::diagnose_parse(&bytes).map_err(|e| e.to_string())?;
        crate::config::policy::Policy::from_value(&doc, Path::new("/"))
            .map_err(|errs| format!("{file}: {}", super::join(&errs)))?;
        let env = signed::sign(Kind::Policy, doc, &load_signing_key(key)?)?;
        let text = serde_json::to_string_pretty(&env).map_err(|e| e.to_string())?;
        let out = out.map_or_else(|| format!("{file}.signed"), str::to_owned);
        crate::agents::persist::write_file_atomic(Path::new(&out), text.as_bytes(), true)
            .map_err(|e| format!("{out}: {e}"))?;
        Ok(out)
    })();
    match r {
        Ok(out) => {
            println!("{out}");
            OK
        }
        Err(e) => {
            crate::log!("nanoclaw policy sign: {e}");
            INVALID
        }
    }
}

/// The `--flag value` pairs of a `sign` subcommand (`args[0]` must be `sign`), only `flags`;
/// `None` on anything else.
fn sign_flags<'a>(args: &'a [String], flags: &[&str]) -> Option<BTreeMap<&'a str, &'a str>> {
    let (first, rest) = args.split_first()?;
    if first != "sign" || rest.len() % 2 != 0 {
        return None;
    }
    rest.chunks(2)
        .map(|kv| {
            flags
                .contains(&kv[0].as_str())
                .then(|| (kv[0].as_str(), kv[1].as_str()))
        })
        .collect()
}

/// `--not-after UNIX_S`, else now + `--ttl S`.
fn not_after(f: &BTreeMap<&str, &str>) -> Option<u64> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    num("--not-after").or_else(|| num("--ttl").map(|t| crate::daemon::now_ms() / 1000 + t))
}

/// Signs with the key file and prints the envelope as one JSON line.
fn print_signed(
    cmd: &str,
    key: &str,
    sign: impl FnOnce(&crate::sigstore::SigningKey) -> Result<super::signed::Envelope, String>,
) -> u8 {
    match load_signing_key(key).and_then(|k| sign(&k)) {
        Ok(env) => {
            println!("{}", serde_json::to_string(&env).unwrap_or_default());
            OK
        }
        Err(e) => {
            crate::log!("nanoclaw {cmd}: {e}");
            INVALID
        }
    }
}

/// `nanoclaw grant sign ...`: prints the token (one line of JSON) on stdout.
pub fn grant_main(args: &[String]) -> u8 {
    let f = sign_flags(
        args,
        &[
            "--key",
            "--agent",
            "--capability",
            "--ttl",
            "--not-after",
            "--device",
            "--nonce",
        ],
    );
    let Some((f, key, agent, cap, not_after)) = f.and_then(|f| {
        let (key, agent, cap) = (
            *f.get("--key")?,
            *f.get("--agent")?,
            *f.get("--capability")?,
        );
        let t = not_after(&f)?;
        Some((f, key, agent, cap, t))
    }) else {
        crate::log!("{USAGE}");
        return USAGE_ERR;
    };
    if let Err(e) = cap.parse::<crate::config::policy::Capability>() {
        crate::log!("nanoclaw grant sign: --capability: {e}");
        return USAGE_ERR;
    }
    let token = Token {
        agent: agent.into(),
        capability: cap.into(),
        not_after,
        nonce: f.get("--nonce").map_or_else(
            || {
                format!(
                    "{:016x}{:016x}",
                    crate::daemon::random_u64(),
                    crate::daemon::now_ms() / 1000
                )
            },
            |n| (*n).to_owned(),
        ),
        device: f.get("--device").map(|d| (*d).to_owned()),
    };
    print_signed("grant sign", key, |k| grant::sign(&token, k))
}

const ENGINEER_USAGE: &str = "usage: nanoclaw engineer sign --key KEY.pem --engineer NAME --devices ID[,PATTERN...] (--ttl S | --not-after UNIX_S)";

/// `nanoclaw engineer sign ...`: prints a field-engineer token (one line of JSON) on stdout.
pub fn engineer_main(args: &[String]) -> u8 {
    let f = sign_flags(
        args,
        &["--key", "--engineer", "--devices", "--ttl", "--not-after"],
    );
    let Some((key, token)) = f.and_then(|f| {
        let token = crate::policy::engineer::Token {
            engineer: (*f.get("--engineer")?).to_owned(),
            devices: f.get("--devices")?.split(',').map(str::to_owned).collect(),
            not_after: not_after(&f)?,
        };
        Some((*f.get("--key")?, token))
    }) else {
        crate::log!("{ENGINEER_USAGE}");
        return USAGE_ERR;
    };
    print_signed("engineer sign", key, |k| {
        crate::policy::engineer::sign(&token, k)
    })
}
