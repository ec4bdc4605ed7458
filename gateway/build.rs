//! Build script: links the hot code of the running gateway together.
//!
//! `link/symbol-order.txt` lists the functions a bridge runs in its steady loop (made by
//! `tests/bench/symbol_order.py`). Given to LLD as `--symbol-ordering-file`, they are
//! placed side by side at the start of `.text`, so the few hundred KiB of code the loop
//! runs occupy few pages instead of being spread over the whole 7 MiB: the kernel maps
//! code in 64 KiB windows, and a service user cannot evict the binary's cached pages, so
//! spread-out code is resident memory (see `gateway/src/footprint.rs`).
//!
//! Only where the linker is known to be LLD: a release build for x86_64 Linux (GNU) with
//! rustc 1.90 or later (whose default linker there is LLD) and no other linker chosen.
//! Other builds (arm64 and armhf cross builds with GNU ld, Yocto) link as before. Names
//! missing from the build (another compiler or dependency version) are ignored; the
//! layout then simply falls back toward the default.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=KP_SYMBOL_ORDER");
    if linker_is_lld() && list.is_file() && env::var("KP_SYMBOL_ORDER").as_deref() != Ok("0") {
        println!(
            "cargo:rustc-link-arg-bin=kp-gateway=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=kp-gateway=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this build links with rustc's own LLD (see the module's header).
fn linker_is_lld() -> bool {
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("PROFILE") != "release" || var("TARGET") != "x86_64-unknown-linux-gnu" {
        return false;
    }
    // A linker chosen in the cargo configuration, or linker flags in RUSTFLAGS.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("link-self-contained")
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (…)": LLD is the default from 1.90 on.
    let mut parts = version.split_whitespace().nth(1).unwrap_or("").split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (1, 90)
}
