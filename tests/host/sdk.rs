//! Host tier: the four agent SDKs (sdk/) as real agents in real sandboxes. Python and
//! JavaScript run on runtime layers built from this machine's interpreters, signed and
//! installed with `nanoclaw install`; Go and Rust run as static binaries. Each language runs
//! its conformance agent (sdk/CONFORMANCE.md): heartbeats keep it healthy and their absence
//! restarts it, its outbox record is on disk, a grant token opens exactly its endpoint for
//! its lifetime, a message arrives only along a declared channel, and every refusal carries
//! the supervisor's code and reason. Its README's example agent runs beside it.
// Test support code: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nanoclaw_tests::{Device, LONG, bins, keypair, manifest, pack_and_sign, run, workspace_root};
use serde_json::{Value, json};

const HEARTBEAT_S: u64 = 2;

struct Lang {
    /// `LANG_NAME` and the SDK directory.
    name: &'static str,
    sdk: &'static str,
    /// The runtime layer (interpreted languages).
    runtime: Option<&'static str>,
    memory: &'static str,
}

const PYTHON: Lang = Lang {
    name: "python",
    sdk: "python",
    runtime: Some("python3.11"),
    memory: "64MiB",
};
const NODE: Lang = Lang {
    name: "javascript",
    sdk: "javascript",
    runtime: Some("node"),
    memory: "192MiB",
};
const GO: Lang = Lang {
    name: "go",
    sdk: "go",
    runtime: None,
    memory: "32MiB",
};
const RUST: Lang = Lang {
    name: "rust",
    sdk: "rust",
    runtime: None,
    memory: "32MiB",
};

fn sdk(lang: &Lang) -> PathBuf {
    workspace_root().join("sdk").join(lang.sdk)
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
}

/// The fenced block after `<!-- example: agent -->` in the SDK's README.
fn readme_example(lang: &Lang) -> String {
    let text = std::fs::read_to_string(sdk(lang).join("README.md")).unwrap();
    let at = text
        .find("<!-- example: agent -->")
        .expect("README example");
    let block = &text[at..];
    let body = &block[block.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// Builds the language's programs; returns (conformance, example) as (rootfs files, exec).
/// An interpreted language's two programs: the SDK module beside the conformance agent
/// (in `examples/`, as in the SDK tree) or beside the README's example (`main.EXT`).
fn interpreted(
    lang: &Lang,
    out: &Path,
    interpreter: &str,
    module: &str,
    ext: &str,
) -> [Program; 2] {
    let s = sdk(lang);
    let ex = out.join(format!("main.{ext}"));
    std::fs::write(&ex, readme_example(lang)).unwrap();
    let sdk_file = (s.join(module), format!("app/{module}"));
    let conformance = format!("examples/conformance.{ext}");
    [
        (
            vec![
                sdk_file.clone(),
                (s.join(&conformance), format!("app/{conformance}")),
            ],
            vec![interpreter.into(), format!("/app/{conformance}")],
        ),
        (
            vec![sdk_file, (ex, format!("app/main.{ext}"))],
            vec![interpreter.into(), format!("/app/main.{ext}")],
        ),
    ]
}

/// A program: (host file, path in the rootfs) pairs, and its exec line.
type Program = (Vec<(PathBuf, String)>, Vec<String>);

fn programs(lang: &Lang, out: &Path) -> [Program; 2] {
    let s = sdk(lang);
    let arch = std::env::consts::ARCH;
    match lang.sdk {
        "python" => interpreted(lang, out, "/usr/bin/python3", "nanoclaw_agent.py", "py"),
        "javascript" => interpreted(lang, out, "/usr/bin/node", "nanoclaw.js", "js"),
        "go" => {
            let go = |dir: &Path, pkg: &str, bin: &Path| {
                let o = run(Command::new("go")
                    .current_dir(dir)
                    .env("CGO_ENABLED", "0")
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOPROXY", "off")
                    .args(["build", "-o"])
                    .arg(bin)
                    .arg(pkg));
                assert_eq!(o.code, 0, "go build {pkg}: {o:?}");
            };
            let conf = out.join("conformance-go");
            go(&s, "./examples/conformance", &conf);
            let m = out.join("readme-go");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("main.go"), readme_example(lang)).unwrap();
            std::fs::write(
                m.join("go.mod"),
                format!(
                    "module readme\n\ngo 1.19\n\nrequire nanoclaw.dev/agent v0.0.0\n\nreplace nanoclaw.dev/agent => {}\n",
                    s.display()
                ),
            )
            .unwrap();
            let ex = out.join("example-go");
            go(&m, ".", &ex);
            [
                (vec![(conf, "app/agent".into())], vec!["/app/agent".into()]),
                (vec![(ex, "app/agent".into())], vec!["/app/agent".into()]),
            ]
        }
        _ => {
            // examples/agent.rs is the README block byte for byte (the crate's own test).
            assert_eq!(
                std::fs::read_to_string(s.join("examples/agent.rs")).unwrap(),
                readme_example(lang)
            );
            let target = format!("{arch}-unknown-linux-musl");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let o = run(Command::new(cargo)
                .current_dir(workspace_root())
                .args([
                    "build",
                    "--release",
                    "-p",
                    "nanoclaw-agent",
                    "--target",
                    &target,
                ])
                .args(["--example", "conformance", "--example", "agent"]));
            assert_eq!(o.code, 0, "cargo build: {o:?}");
            let dir = workspace_root()
                .join("target")
                .join(&target)
                .join("release/examples");
            [
                (
                    vec![(dir.join("conformance"), "app/agent".into())],
                    vec!["/app/agent".into()],
                ),
                (
                    vec![(dir.join("agent"), "app/agent".into())],
                    vec!["/app/agent".into()],
                ),
            ]
        }
    }
}

/// A runtime layer bundle built from this machine's files: each path (a file or a directory)
/// under `rootfs/usr`, plus every shared library `ldd` names for the ELF files among them.
fn layer_from_host(dir: &Path, name: &str, paths: &[&str], links: &[(&str, &str)]) {
    let rootfs = dir.join("rootfs");
    let mut elf = Vec::new();
    let put = |host: &Path, rel: &str| {
        let to = rootfs
            .join("usr")
            .join(rel.trim_start_matches("/usr/").trim_start_matches('/'));
        copy(&std::fs::canonicalize(host).unwrap(), &to);
    };
    for p in paths {
        let mut stack = vec![PathBuf::from(p)];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                if [
                    "test",
                    "idlelib",
                    "tkinter",
                    "ensurepip",
                    "lib2to3",
                    "__pycache__",
                ]
                .contains(&n.as_str())
                {
                    continue;
                }
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if m.is_file() {
                put(&p, p.to_str().unwrap());
                let head = std::fs::read(&p)
                    .map(|b| b.starts_with(b"\x7fELF"))
                    .unwrap_or(false);
                if head {
                    elf.push(p);
                }
            }
        }
    }
    for e in elf {
        let o = run(Command::new("ldd").arg(&e));
        for lib in o.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
            put(Path::new(lib), lib);
        }
    }
    for (link, to) in links {
        let l = rootfs.join("usr").join(link);
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(to, l).unwrap();
    }
    std::fs::write(
        dir.join("manifest.json"),
        json!({"kind": "runtime", "name": name, "version": "1.0.0",
               "description": format!("built by the host tests from {paths:?}")})
        .to_string(),
    )
    .unwrap();
}

fn layer_for(lang: &Lang, dir: &Path) {
    match lang.sdk {
        "python" => layer_from_host(
            dir,
            "python3.11",
            &["/usr/bin/python3.11", "/usr/lib/python3.11"],
            &[("bin/python3", "python3.11")],
        ),
        _ => {
            let node = std::fs::canonicalize(which("node")).unwrap();
            layer_from_host(dir, "node", &[node.to_str().unwrap()], &[]);
            if !dir.join("rootfs/usr/bin/node").exists() {
                let real = dir.join("rootfs/usr").join(node.strip_prefix("/").unwrap());
                copy(&real, &dir.join("rootfs/usr/bin/node"));
            }
        }
    }
}

fn which(prog: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(prog))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{prog} is not installed (cargo xtask setup installs it)"))
}

fn lines(dev: &Device, agent: &str, prefix: &str) -> Vec<String> {
    dev.logs(agent)
        .iter()
        .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

/// Sends one request on the hub's socket (root may use any agent's socket); the answer.
fn hub_send(dev: &Device, request: Value) -> Value {
    let path = dev.state_dir().join("run/sock/hub/nanoclaw.sock");
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn sdk_agent_in_a_sandbox(lang: &Lang) {
    let mut dev = Device::new();
    let keys = dev.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (vendor, _) = keypair(&keys, "demo-vendor", true);
    let (fleet, fleet_pub) = keypair(&keys, "fleet", false);
    dev.device["policy_key"] = json!(fleet_pub);
    let work = dev.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = granted.local_addr().unwrap().port();
    let other_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cap = format!("net:127.0.0.1:{port}/tcp");

    let [conf, example] = programs(lang, &work);
    let (agent, ex_agent) = (
        format!("{}-conf", lang.name),
        format!("{}-example", lang.name),
    );
    for (name, (files, exec)) in [(&agent, conf), (&ex_agent, example)] {
        for (from, to) in &files {
            copy(from, &dev.bundle(name).join("rootfs").join(to));
        }
        let mut m = json!({
            "name": name, "version": "1.0.0", "mode": "service", "exec": exec,
            "env": {"LANG_NAME": lang.name, "PEER": "hub"},
            "requests": {"memory": lang.memory, "pids": 64, "scratch": "1MiB", "network": []},
            "health": {"heartbeat_s": HEARTBEAT_S},
            "restart": {"policy": "on-failure", "max_per_hour": 20},
        });
        let mut g = json!({"memory": lang.memory, "cpus": 1, "pids": 64, "scratch": "1MiB",
                           "syscalls": "default", "grantable": [cap]});
        if let Some(rt) = lang.runtime {
            m["runtime"] = json!(rt);
            g["runtimes"] = json!([rt]);
        }
        dev.write_manifest(name, &m);
        dev.grant(name, g);
    }
    let mut hub = manifest(
        "hub",
        "service",
        &["sock", r#"{"op":"hello","id":1}"#, "stay"],
        "16MiB",
    );
    hub["restart"] = json!({"policy": "never"});
    dev.add_agent("hub", hub, Some(nanoclaw_tests::grant("16MiB")));
    dev.policy["channels"] = json!([
        {"from": agent, "to": "hub", "topic": "readings"},
        {"from": "hub", "to": agent, "topic": "cmd"},
    ]);
    dev.start();

    if let Some(rt) = lang.runtime {
        // Not installed yet: the agents wait for their layer, saying so.
        let a = dev.wait(LONG, "the agent to miss its layer", || {
            let a = dev.agent(&agent);
            a["reason"]
                .as_str()?
                .contains("is not installed")
                .then_some(a)
        });
        assert!(a["reason"].as_str().unwrap().contains(rt), "{a}");
        let src = work.join("layer");
        layer_for(lang, &src);
        let file = work.join(format!("{rt}-1.0.0.nclaw"));
        pack_and_sign(&src, &file, &vendor);
        let out = dev.cli(&["install", file.to_str().unwrap()]);
        assert_eq!(out.code, 0, "install {rt}: {out:?}");
        assert!(out.stdout.contains("runtime layer"), "{out:?}");
        let s = dev.json(&["status"]);
        assert_eq!(s["runtimes"][rt]["current"], "1.0.0", "{s}");
    }

    // 1–8: up to `ready`, with every answer as documented.
    dev.wait_log(&agent, "conformance: ready");
    let c = lines(&dev, &agent, "conformance: ");
    let at = |i: usize| c.get(i).cloned().unwrap_or_default();
    assert_eq!(
        at(0),
        format!("hello agent={agent} heartbeat_s={HEARTBEAT_S}"),
        "{c:#?}"
    );
    assert!(at(1).starts_with("config memory_bytes="), "{c:#?}");
    assert!(
        at(1).contains(" send=hub/readings receive=hub/cmd energy_budget_mwh=none"),
        "{c:#?}"
    );
    assert!(
        at(1).ends_with(&format!("runtime={}", lang.runtime.unwrap_or("none"))),
        "{c:#?}"
    );
    // The example agent's record may come first.
    assert!(
        ["outbox seq=1", "outbox seq=2"].contains(&at(2).as_str()),
        "{c:#?}"
    );
    assert_eq!(
        at(3),
        "error bad_request: topic `Bad Topic` must be 1 to 64 of a-z 0-9 . _ -",
        "{c:#?}"
    );
    assert_eq!(
        at(4),
        format!("error denied: no channel from {agent} to hub for topic secrets in the policy"),
        "{c:#?}"
    );
    assert_eq!(at(5), "send delivered=1 queued=none", "{c:#?}");
    let outbox =
        String::from_utf8_lossy(&std::fs::read(dev.state_dir().join("outbox/outbox.log")).unwrap())
            .into_owned();
    assert!(
        outbox.contains(&format!("\"lang\":\"{}\"", lang.name)),
        "{outbox}"
    );

    // 8–12: a message only along a declared channel; it carries a grant token.
    let refused = hub_send(
        &dev,
        json!({"op": "send", "id": 1, "to": agent, "topic": "other", "data": 1}),
    );
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!("denied")),
        "{refused}"
    );
    let token = run(Command::new(&bins().nanoclaw).args([
        "grant",
        "sign",
        "--key",
        fleet.to_str().unwrap(),
        "--agent",
        &agent,
        "--capability",
        &cap,
        "--ttl",
        "6",
    ]));
    assert_eq!(token.code, 0, "{token:?}");
    let token: Value = serde_json::from_str(token.stdout.trim()).unwrap();
    let sent = hub_send(
        &dev,
        json!({"op": "send", "id": 2, "to": agent, "topic": "cmd",
               "data": {"token": token, "port": port, "other_port": other_port}}),
    );
    assert_eq!(sent["ok"], true, "{sent}");
    dev.wait_log(&agent, "conformance: heartbeat stopped");
    let c = lines(&dev, &agent, "conformance: ");
    let from = c.iter().position(|l| l == "ready").unwrap();
    let rest: Vec<&str> = c[from + 1..].iter().map(String::as_str).collect();
    assert_eq!(
        rest[0], "message from=hub topic=cmd",
        "the refused one never arrived: {c:#?}"
    );
    assert!(
        rest[1].starts_with(&format!("grant capability={cap} not_after=")),
        "{c:#?}"
    );
    assert_eq!(rest[2], "connect granted ok", "{c:#?}");
    assert_eq!(rest[3], "connect other denied", "{c:#?}");
    assert!(
        rest[4].starts_with("error denied: ") && rest[4].contains("already used (replay)"),
        "{c:#?}"
    );
    assert_eq!(rest[5], "connect expired denied", "{c:#?}");
    assert_eq!(rest[6], "heartbeat stopped", "{c:#?}");

    // 13: without heartbeats the supervisor kills it, and it is restarted.
    dev.wait(LONG, "the missed heartbeat to restart the agent", || {
        let hc = dev.audit_of("health_check");
        let missed = hc.iter().any(|r| r["agent"] == agent.as_str());
        let again = lines(&dev, &agent, "conformance: ")
            .iter()
            .filter(|l| l.starts_with("hello "))
            .count()
            >= 2;
        (missed && again).then_some(())
    });
    assert_eq!(dev.audit_of("grant_applied").len(), 1);
    assert_eq!(dev.audit_of("grant_expired").len(), 1);

    // The README's example agent ran beside it, stays healthy on its heartbeats, and its
    // record is in the outbox.
    let ex = lines(&dev, &ex_agent, "example: sent seq=");
    assert_eq!(ex.len(), 1, "{:#?}", dev.logs(&ex_agent));
    let outbox =
        String::from_utf8_lossy(&std::fs::read(dev.state_dir().join("outbox/outbox.log")).unwrap())
            .into_owned();
    assert!(
        outbox.contains(&format!("\"hello\":\"{}\"", lang.name)),
        "{outbox}"
    );
    let a = dev.agent(&ex_agent);
    assert_eq!(
        (a["state"].as_str(), a["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{a}"
    );
    assert!(
        !dev.audit_of("health_check")
            .iter()
            .any(|r| r["agent"] == ex_agent.as_str()),
        "the example agent kept its heartbeat"
    );
    if lang.sdk == "python" {
        layer_versions(&dev, &work, &vendor, &ex_agent);
        simulate_on_the_layer(&work, &work.join("python3.11-1.0.0.nclaw"));
    }
    drop(granted);
}

/// A developer tries a scaffolded Python agent in the simulator, as `bundle init` says: the
/// built archive (its requests derived from the code) on the signed layer archive.
fn simulate_on_the_layer(work: &Path, layer: &Path) {
    let out = run(Command::new(&bins().nanoclaw)
        .current_dir(work)
        .args(["bundle", "init", "--lang", "python", "sim-py", "--sdk"])
        .arg(workspace_root().join("sdk")));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("sim --agent sim-py/sim-py-0.1.0.nclaw --runtime"),
        "{out:?}"
    );
    let out = run(Command::new(work.join("sim-py/build.sh")).env("NANOCLAW", &bins().nanoclaw));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(Command::new(&bins().nanoclaw)
        .args(["sim", "--json", "--seconds", "4", "--agent"])
        .arg(work.join("sim-py/sim-py-0.1.0.nclaw"))
        .arg("--runtime")
        .arg(layer));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("installed runtime layer python3.11 1.0.0"),
        "{out:?}"
    );
    let json_start = out.stdout.find("\n{\n").expect("a JSON report");
    let report: Value = serde_json::from_str(&out.stdout[json_start..]).unwrap();
    let a = &report["agents"][0];
    assert_eq!(
        (a["agent"].as_str(), a["state"].as_str()),
        (Some("sim-py"), Some("running")),
        "{report:#}"
    );
    assert_eq!(a["restarts"], 0, "{report:#}");
}

/// A layer moves forward with its agents, rolls back, and is never installed backwards.
fn layer_versions(dev: &Device, work: &Path, vendor: &Path, agent: &str) {
    let src = work.join("layer");
    let starts = || {
        dev.audit_of("start")
            .iter()
            .filter(|r| r["agent"] == agent)
            .count()
    };
    let before = starts();
    let install = |version: &str| {
        let m: Value =
            serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
        let mut m = m;
        m["version"] = json!(version);
        std::fs::write(src.join("manifest.json"), m.to_string()).unwrap();
        let file = work.join(format!("python3.11-{version}.nclaw"));
        pack_and_sign(&src, &file, vendor);
        dev.cli(&["install", file.to_str().unwrap()])
    };
    let current = || dev.json(&["status"])["runtimes"]["python3.11"]["current"].clone();
    let out = install("1.0.1");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(current(), "1.0.1");
    dev.wait(LONG, "the agent on the layer to restart onto 1.0.1", || {
        (starts() > before && dev.agent(agent)["state"] == "running").then_some(())
    });
    let out = dev.cli(&["rollback", "python3.11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("from 1.0.1 to 1.0.0"), "{out:?}");
    assert_eq!(current(), "1.0.0");
    let out = install("0.9.0");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("older than the current 1.0.0"),
        "{out:?}"
    );
    assert_eq!(current(), "1.0.0");
    let kinds: Vec<Value> = dev
        .audit_json()
        .into_iter()
        .filter(|r| r["agent"] == "runtime:python3.11")
        .map(|r| r["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            json!("install"),
            json!("install"),
            json!("rollback"),
            json!("install_refused")
        ],
        "every layer step is audited"
    );
    dev.wait_state(agent, "running");
}

#[test]
fn python_sdk_agent_on_a_runtime_layer() {
    sdk_agent_in_a_sandbox(&PYTHON);
}

#[test]
fn javascript_sdk_agent_on_a_runtime_layer() {
    sdk_agent_in_a_sandbox(&NODE);
}

#[test]
fn go_sdk_agent_as_a_static_binary() {
    sdk_agent_in_a_sandbox(&GO);
}

#[test]
fn rust_sdk_agent_as_a_static_binary() {
    sdk_agent_in_a_sandbox(&RUST);
}

/// `bundle init` scaffolds an agent per language whose one-command build packs a bundle with
/// the requests derived from the declaration in its code (and signs it when asked).
#[test]
fn bundle_init_scaffolds_and_builds_each_language() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keypair(tmp.path(), "vendor", true);
    for (lang, name) in [
        ("python", "py-hello"),
        ("node", "js-hello"),
        ("go", "go-hello"),
        ("rust", "rs-hello"),
    ] {
        let out = run(Command::new(&bins().nanoclaw)
            .current_dir(tmp.path())
            .args(["bundle", "init", "--lang", lang, name, "--sdk"])
            .arg(workspace_root().join("sdk")));
        assert_eq!(out.code, 0, "{lang}: {out:?}");
        let out = run(Command::new(tmp.path().join(name).join("build.sh"))
            .env("NANOCLAW", &bins().nanoclaw)
            .env("NANOCLAW_KEY", &key)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off"));
        assert_eq!(out.code, 0, "{lang} build.sh: {out:?}");
        assert!(out.stdout.contains("memory=32MiB ("), "{lang}: {out:?}");
        let file = tmp.path().join(name).join(format!("{name}-0.1.0.nclaw"));
        let out = run(Command::new(&bins().nanoclaw)
            .args(["bundle", "inspect", "--json"])
            .arg(&file));
        assert_eq!(out.code, 0, "{lang}: {out:?}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["manifest"]["memory"], "32MiB", "{v}");
        assert!(v["signature"].is_string(), "signed with NANOCLAW_KEY: {v}");
        let runtime = match lang {
            "python" => json!("python3.11"),
            "node" => json!("node20"),
            _ => Value::Null,
        };
        assert_eq!(v["manifest"]["runtime"], runtime, "{v}");
    }
    let out = run(Command::new(&bins().nanoclaw)
        .current_dir(tmp.path())
        .args(["bundle", "init", "--lang", "cobol", "x"]));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("expected python, node, go or rust"),
        "{out:?}"
    );
}
