//! `nanoclaw bundle init --lang python|node|go|rust NAME`: a new agent project with the SDK
//! wired in, a manifest, and `build.sh`, one command from source to a (signed) bundle.
//!
//! The agent's code is the SDK README's example agent (the one the host tests run), with a
//! `nanoclaw:request` declaration on top from which `bundle pack` derives the manifest's
//! `requests` (`bundle::derive`). The SDKs are found with `--sdk DIR`, `$NANOCLAW_SDK`,
//! `/usr/share/nanoclaw/sdk`, or the `sdk/` of the source tree the binary was built in;
//! Python and JavaScript SDKs are copied in, Go and Rust ones referenced by path.

use std::path::{Path, PathBuf};

use serde_json::json;

const USAGE_ERR: u8 = 2;

struct Lang {
    flag: &'static str,
    /// SDK subdirectory.
    sdk: &'static str,
    comment: &'static str,
    /// The agent's source file, relative to the project.
    main: &'static str,
    /// Where the bundle (manifest.json + rootfs/) is, relative to the project.
    bundle: &'static str,
    /// Interpreted languages: the interpreter in the runtime layer, the default layer, and
    /// the SDK file copied beside the code. Compiled ones build `/app/agent`.
    interpreter: Option<(&'static str, &'static str, &'static str)>,
    /// `bundle pack` arguments naming where the declarations are (none: the rootfs).
    requests_from: &'static str,
}

const LANGS: [Lang; 4] = [
    Lang {
        flag: "python",
        sdk: "python",
        comment: "#",
        main: "rootfs/app/main.py",
        bundle: ".",
        interpreter: Some(("/usr/bin/python3", "python3.11", "nanoclaw_agent.py")),
        requests_from: "",
    },
    Lang {
        flag: "node",
        sdk: "javascript",
        comment: "//",
        main: "rootfs/app/main.js",
        bundle: ".",
        interpreter: Some(("/usr/bin/node", "node20", "nanoclaw.js")),
        requests_from: "",
    },
    Lang {
        flag: "go",
        sdk: "go",
        comment: "//",
        main: "main.go",
        bundle: "bundle",
        interpreter: None,
        requests_from: " --requests-from main.go",
    },
    Lang {
        flag: "rust",
        sdk: "rust",
        comment: "//",
        main: "src/main.rs",
        bundle: "bundle",
        interpreter: None,
        requests_from: " --requests-from src",
    },
];

pub fn main(args: &[&str]) -> u8 {
    let (mut lang, mut name, mut sdk, mut runtime) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--lang" | "--sdk" | "--runtime" => {
                let Some(&v) = it.next() else {
                    crate::log!("nanoclaw bundle init: {a} needs a value");
                    return USAGE_ERR;
                };
                match a {
                    "--lang" => lang = Some(v),
                    "--sdk" => sdk = Some(PathBuf::from(v)),
                    _ => runtime = Some(v),
                }
            }
            n if !n.starts_with('-') && name.is_none() => name = Some(n),
            _ => {
                crate::log!(
                    "nanoclaw bundle init: unexpected argument {a}\n{}",
                    super::cli::USAGE
                );
                return USAGE_ERR;
            }
        }
    }
    let (Some(lang), Some(name)) = (lang, name) else {
        crate::log!(
            "nanoclaw bundle init: --lang and NAME are required\n{}",
            super::cli::USAGE
        );
        return USAGE_ERR;
    };
    let Some(l) = LANGS.iter().find(|l| l.flag == lang) else {
        crate::log!("nanoclaw bundle init: --lang {lang}: expected python, node, go or rust");
        return USAGE_ERR;
    };
    match init(l, name, sdk, runtime) {
        Ok(dir) => {
            let layer = match l.interpreter {
                Some(_) => " --runtime LAYER.nclaw",
                None => "",
            };
            println!(
                "{d}: a {lang} agent. Build its bundle with {d}/build.sh (NANOCLAW_KEY=KEY.pem \
                 to sign it too), then try it: sudo nanoclaw sim --agent {d}/{name}-0.1.0.nclaw{layer}",
                d = dir.display(),
            );
            0
        }
        Err(e) => {
            crate::log!("nanoclaw bundle init: {e}");
            1
        }
    }
}

/// The SDK root: the flag, the environment, the system location, or the source tree.
fn sdk_root(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    let marker = |p: &Path| p.join("CONFORMANCE.md").is_file();
    if let Some(p) = flag.or_else(|| std::env::var_os("NANOCLAW_SDK").map(PathBuf::from)) {
        return if marker(&p) {
            Ok(p)
        } else {
            Err(format!(
                "{} is not the nanoclaw sdk/ directory",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let tree = exe.ancestors().skip(1).take(5).map(|a| a.join("sdk"));
    std::iter::once(PathBuf::from("/usr/share/nanoclaw/sdk"))
        .chain(tree)
        .find(|p| marker(p))
        .ok_or_else(|| {
            "no SDK found: pass --sdk DIR (the sdk/ directory of the nanoclaw sources) or set \
             NANOCLAW_SDK"
                .into()
        })
}

/// The fenced block after `<!-- example: agent -->` in an SDK README.
fn example(readme: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let at = text
        .find("<!-- example: agent -->")
        .ok_or_else(|| format!("{} has no example agent", readme.display()))?;
    let block = &text[at..];
    let body = block
        .find("```")
        .and_then(|s| block[s..].find('\n').map(|n| &block[s + n + 1..]))
        .ok_or_else(|| format!("{}: the example is not a fenced block", readme.display()))?;
    let end = body
        .find("```")
        .ok_or_else(|| format!("{}: the example block is not closed", readme.display()))?;
    Ok(body[..end].to_owned())
}

fn write(path: &Path, text: &str, exec: bool) -> Result<(), String> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    if exec {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn init(
    l: &Lang,
    name: &str,
    sdk: Option<PathBuf>,
    runtime: Option<&str>,
) -> Result<PathBuf, String> {
    crate::config::check_name(name)?;
    let dir = PathBuf::from(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let sdk = sdk_root(sdk)?;
    let sdk = sdk.canonicalize().unwrap_or(sdk).join(l.sdk);
    let code = format!(
        "{c} {name}: a nanoclaw agent. What it needs is declared here; `bundle pack` turns it\n\
         {c} into the manifest's requests:\n\
         {c} nanoclaw:request memory=32MiB cpus=0.25 pids=16\n{}",
        example(&sdk.join("README.md"))?,
        c = l.comment,
    );
    let (exec, runtime) = match l.interpreter {
        Some((interpreter, layer, _)) => (
            json!([interpreter, l.main.trim_start_matches("rootfs")]),
            Some(runtime.unwrap_or(layer)),
        ),
        None => (json!(["/app/agent"]), runtime),
    };
    let mut manifest = json!({
        "name": name, "version": "0.1.0", "mode": "service", "exec": exec,
        "health": {"heartbeat_s": 10},
    });
    if let Some(r) = runtime {
        manifest["runtime"] = json!(r);
    }
    let bundle = dir.join(l.bundle);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())? + "\n";
    write(&bundle.join("manifest.json"), &text, false)?;
    write(&dir.join(l.main), &code, false)?;
    let build = match (l.interpreter, l.flag) {
        (Some((_, _, file)), _) => {
            let to = bundle.join("rootfs/app").join(file);
            std::fs::copy(sdk.join(file), &to)
                .map_err(|e| format!("copying the SDK {}: {e}", sdk.join(file).display()))?;
            String::new()
        }
        (None, "go") => {
            write(
                &dir.join("go.mod"),
                &format!(
                    "module {name}\n\ngo 1.19\n\nrequire nanoclaw.dev/agent v0.0.0\n\n\
                     replace nanoclaw.dev/agent => {}\n",
                    sdk.display()
                ),
                false,
            )?;
            "mkdir -p bundle/rootfs/app\n\
             CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags=-s -o bundle/rootfs/app/agent .\n"
                .into()
        }
        _ => {
            write(
                &dir.join("Cargo.toml"),
                &format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                     [dependencies]\nnanoclaw-agent = {{ path = \"{}\" }}\nserde_json = \"1\"\n\n\
                     [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n\n[workspace]\n",
                    sdk.display()
                ),
                false,
            )?;
            format!(
                "T=$(uname -m)-unknown-linux-musl\n\
                 cargo build --release --target \"$T\"\n\
                 mkdir -p bundle/rootfs/app\n\
                 cp \"target/$T/release/{name}\" bundle/rootfs/app/agent\n"
            )
        }
    };
    let from = l.requests_from;
    let script = format!(
        "#!/bin/sh\n\
         # Builds {name}-VERSION.nclaw (and signs it when NANOCLAW_KEY names a key).\n\
         set -eu\n\
         cd \"$(dirname \"$0\")\"\n\
         NC=${{NANOCLAW:-nanoclaw}}\n\
         {build}\
         V=$(sed -n 's/^ *\"version\": *\"\\([^\"]*\\)\".*/\\1/p' {b}/manifest.json)\n\
         \"$NC\" bundle pack {b} -o \"{name}-$V.nclaw\"{from}\n\
         if [ -n \"${{NANOCLAW_KEY:-}}\" ]; then\n\
         \x20 \"$NC\" bundle sign \"{name}-$V.nclaw\" --key \"$NANOCLAW_KEY\"\n\
         fi\n",
        b = l.bundle,
    );
    write(&dir.join("build.sh"), &script, true)?;
    Ok(dir)
}
