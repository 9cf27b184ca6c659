//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf -g -O2`) into OUT_DIR; the
//! supervisor embeds the objects with `include_bytes!` and loads them with aya.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["egress", "lsm"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let bpf = manifest.join("../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed={}", bpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // linux/types.h includes asm/types.h, which Debian keeps in the multiarch include dir.
    let host = std::env::var("HOST").unwrap_or_default();
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        host.split('-').next().unwrap_or("x86_64")
    );
    for p in PROGRAMS {
        let src = bpf.join(format!("{p}.c"));
        let obj = out.join(format!("{p}.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-g", "-O2", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&bpf)
            .arg("-I")
            .arg(&multiarch)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("clang failed ({s}) compiling {}", src.display()),
            Err(e) => panic!(
                "cannot run {clang} to compile {} ({e}): the eBPF programs need clang and \
                 libbpf-dev; run `cargo xtask setup` as root (or apt-get install clang libbpf-dev)",
                src.display()
            ),
        }
    }
}
