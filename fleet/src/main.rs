//! `nanoclaw-fleet`, the central server: devices sync with it over TLS (docs/PROTOCOL.md),
//! operators drive it with this CLI or the admin API (docs/FLEET.md).

mod admin;
mod dashboard;
mod db;
mod directives;
mod loadgen;
mod ops;
mod pki;
mod serve;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ops::Target;

const USAGE: &str = "usage: nanoclaw-fleet COMMAND [--dir DIR] [--db URL]
  init [--name SERVER_NAME]...             CA, server certificate, fleet signing key, admin token
  serve [--listen ADDR] [--admin ADDR] [--poll S] [--keep S] [--workers N]
                                           --admin: the HTTPS admin API (off unless given)
                                           --keep: idle seconds a kept connection may wait (900)
  enrol DEVICE_ID [--group G] (--out DIR | --cert DEVICE.pem)
  policy push FILE (--group G | --device D)   FILE is JSON or YAML; validated, versioned, signed
  bundle publish FILE (--group G | --device D)   FILE.sigstore.json must sit next to FILE
  grant --agent A --capability C --ttl SECONDS (--group G | --device D)
  devices [--json]
  audit --device D [--after SEQ] [--last N]
  outbox --device D [--after SEQ] [--last N]
  rollout
  loadgen --server ADDR [--server-name N] [--register N] [--identities K] [--concurrency C] [--seconds S]
          [--persistent [--connections N]]  simulated devices checking in (capacity planning);
                                           --persistent: devices that stay connected
--dir defaults to $NANOCLAW_FLEET_DIR or /var/lib/nanoclaw-fleet; --db to sqlite:DIR/fleet.db
(or postgres://USER@HOST/DB).";

/// Parsed flags: positional words and `--flag value` pairs (repeatable).
struct Args {
    words: Vec<String>,
    flags: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut a = Args {
            words: Vec::new(),
            flags: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(w) = it.next() {
            if let Some(name) = w.strip_prefix("--") {
                if name == "json" || name == "persistent" {
                    a.switches.push(name.into());
                    continue;
                }
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                a.flags.push((name.into(), v.clone()));
            } else {
                a.words.push(w.clone());
            }
        }
        Ok(a)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn has(&self, s: &str) -> bool {
        self.switches.iter().any(|x| x == s)
    }
    /// Refuses flags the command does not take.
    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        for (n, _) in &self.flags {
            if !["dir", "db"].contains(&n.as_str()) && !allowed.contains(&n.as_str()) {
                return Err(format!("unknown flag --{n} for this command"));
            }
        }
        Ok(())
    }
    fn dir(&self) -> PathBuf {
        self.get("dir").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("NANOCLAW_FLEET_DIR")
                .map_or_else(|| PathBuf::from("/var/lib/nanoclaw-fleet"), PathBuf::from)
        })
    }
    fn db_url(&self) -> String {
        self.get("db").map_or_else(
            || format!("sqlite:{}", self.dir().join("fleet.db").display()),
            str::to_owned,
        )
    }
    fn target(&self) -> Result<Target, String> {
        Target::of(
            self.get("group").map(str::to_owned),
            self.get("device").map(str::to_owned),
        )
        .ok_or_else(|| "give exactly one of --group G or --device D".into())
    }
    fn num(&self, name: &str, default: u64) -> Result<u64, String> {
        self.get(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("--{name} {v}: expected a number"))
        })
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--version") {
        println!("nanoclaw-fleet {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nanoclaw-fleet: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let workers = args.num("workers", 0).unwrap_or(0) as usize;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nanoclaw-fleet: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("nanoclaw-fleet: {e}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("nanoclaw-fleet: {e}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Failed(e)
    }
}

fn usage(e: impl Into<String>) -> Failure {
    Failure::Usage(e.into())
}

async fn open(args: &Args, connections: u32) -> Result<db::Db, Failure> {
    db::Db::open(&args.db_url(), connections)
        .await
        .map_err(|e| Failure::Failed(e.to_string()))
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn run(args: Args) -> Result<(), Failure> {
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let dir = args.dir();
    match words.as_slice() {
        ["init"] => {
            args.only(&["name"]).map_err(usage)?;
            let mut names = args.all("name");
            if names.is_empty() {
                names = vec!["localhost".into(), "127.0.0.1".into()];
            }
            pki::init(&dir, &names)?;
            open(&args, 1).await?;
            println!(
                "initialised {}: devices pin {}, policy_key is {}",
                dir.display(),
                dir.join(pki::CA_CERT).display(),
                dir.join(pki::SIGNING_PUB).display()
            );
            Ok(())
        }
        ["serve"] => {
            args.only(&["listen", "admin", "poll", "keep", "workers", "connections"])
                .map_err(usage)?;
            let listen = args
                .get("listen")
                .unwrap_or("127.0.0.1:7443")
                .parse()
                .map_err(|e| usage(format!("--listen: {e}")))?;
            let admin: Option<std::net::SocketAddr> = match args.get("admin") {
                Some(a) => Some(a.parse().map_err(|e| usage(format!("--admin: {e}")))?),
                None => None,
            };
            let poll_s = args.num("poll", 300).map_err(usage)? as u32;
            let keep_s = args.num("keep", 900).map_err(usage)? as u32;
            let conns = args.num("connections", 16).map_err(usage)? as u32;
            let tls = pki::server_config(&dir)?;
            let db = open(&args, conns).await?;
            if let Some(addr) = admin {
                let cfg = pki::admin_config(&dir)?;
                let token = pki::admin_token(&dir)?;
                let listener = admin::bind(addr).await?;
                tokio::spawn(admin::serve(
                    listener,
                    cfg,
                    db.clone(),
                    dir.clone(),
                    token,
                    poll_s,
                ));
            }
            serve::run(
                db,
                tls,
                serve::Config {
                    listen,
                    poll_s,
                    keep_s,
                },
            )
            .await?;
            Ok(())
        }
        ["enrol", id] => {
            args.only(&["group", "out", "cert"]).map_err(usage)?;
            let group = args.get("group").unwrap_or("default");
            let db = open(&args, 1).await?;
            if db.device(id).await.map_err(|e| e.to_string())?.is_some() {
                return Err(Failure::Failed(format!(
                    "device `{id}` is already enrolled"
                )));
            }
            let fp = match (args.get("out"), args.get("cert")) {
                (Some(out), None) => pki::issue_device(&dir, id, Path::new(out))?,
                (None, Some(cert)) => pki::fingerprint_of_file(Path::new(cert))?,
                _ => return Err(usage("give exactly one of --out DIR or --cert DEVICE.pem")),
            };
            db.enrol(id, &fp, group, serve::now_ms())
                .await
                .map_err(|e| e.to_string())?;
            println!("enrolled {id} in group {group} (certificate sha256:{fp})");
            Ok(())
        }
        ["policy", "push", file] => {
            args.only(&["group", "device"]).map_err(usage)?;
            let target = args.target().map_err(usage)?;
            let path = Path::new(file);
            let text = nanoclaw::sigstore::read_capped(
                path,
                nanoclaw::config::policy::MAX_POLICY_BYTES,
                "policy",
            )?;
            let doc = ops::parse_policy(&text, file)?;
            let db = open(&args, 1).await?;
            let base = path.parent().unwrap_or(Path::new("."));
            let v = ops::push_policy(&db, &dir, doc, base, &target).await?;
            println!("policy version {v} signed and queued for {}", target.key());
            Ok(())
        }
        ["bundle", "publish", file] => {
            args.only(&["group", "device"]).map_err(usage)?;
            let target = args.target().map_err(usage)?;
            let db = open(&args, 1).await?;
            let what = ops::publish_bundle(&db, Path::new(file), &target).await?;
            println!("published {what} for {}", target.key());
            Ok(())
        }
        ["grant"] => {
            args.only(&["agent", "capability", "ttl", "group", "device"])
                .map_err(usage)?;
            let target = args.target().map_err(usage)?;
            let (Some(agent), Some(cap)) = (args.get("agent"), args.get("capability")) else {
                return Err(usage("grant needs --agent and --capability"));
            };
            let ttl = args.num("ttl", 3600).map_err(usage)?;
            let db = open(&args, 1).await?;
            let env = ops::grant(&db, &dir, agent, cap, ttl, &target).await?;
            print_json(&env);
            Ok(())
        }
        ["devices"] => {
            args.only(&[]).map_err(usage)?;
            let db = open(&args, 1).await?;
            let list = ops::devices(&db).await?;
            if args.has("json") {
                print_json(&serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<24} {:<12} {:>8} {:>7} {:>9} {:>8}",
                    "DEVICE", "GROUP", "SEEN", "POLICY", "BACKLOG", "DROPPED"
                );
                for d in list {
                    let seen = d["last_seen_s_ago"]
                        .as_i64()
                        .map_or_else(|| "never".into(), |s| format!("{s}s ago"));
                    println!(
                        "{:<24} {:<12} {:>8} {:>7} {:>9} {:>8}",
                        d["id"].as_str().unwrap_or(""),
                        d["group"].as_str().unwrap_or(""),
                        seen,
                        d["policy_version"],
                        d["audit"]["backlog"],
                        d["dropped_on_device"],
                    );
                }
            }
            Ok(())
        }
        ["audit"] | ["outbox"] => {
            args.only(&["device", "after", "last"]).map_err(usage)?;
            let Some(device) = args.get("device") else {
                return Err(usage("--device D is required"));
            };
            let after = args.num("after", 0).map_err(usage)? as i64;
            let last = args.num("last", 1000).map_err(usage)? as i64;
            let db = open(&args, 1).await?;
            let recs = if words[0] == "audit" {
                ops::audit(&db, device, after, last).await?
            } else {
                ops::outbox(&db, device, after, last).await?
            };
            for r in recs {
                println!("{r}");
            }
            Ok(())
        }
        ["loadgen"] => {
            args.only(&[
                "server",
                "server-name",
                "register",
                "identities",
                "concurrency",
                "connections",
                "seconds",
            ])
            .map_err(usage)?;
            let server = args
                .get("server")
                .ok_or_else(|| usage("loadgen needs --server ADDR"))?
                .parse()
                .map_err(|e| usage(format!("--server: {e}")))?;
            let o = loadgen::Options {
                server,
                server_name: args.get("server-name").unwrap_or("localhost").into(),
                register: args.num("register", 1000).map_err(usage)?,
                identities: args.num("identities", 10).map_err(usage)? as usize,
                concurrency: args.num("concurrency", 32).map_err(usage)? as usize,
                seconds: args.num("seconds", 10).map_err(usage)?,
                persistent: args.has("persistent"),
                connections: args.num("connections", 0).map_err(usage)? as usize,
            };
            let db = open(&args, 4).await?;
            loadgen::run(&db, &dir, &o).await?;
            Ok(())
        }
        ["rollout"] => {
            args.only(&[]).map_err(usage)?;
            let db = open(&args, 1).await?;
            for (g, v, n) in db.rollout().await.map_err(|e| e.to_string())? {
                println!("group {g}: policy version {v} on {n} device(s)");
            }
            Ok(())
        }
        _ => Err(usage("unknown command")),
    }
}
