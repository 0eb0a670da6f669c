//! Builds the harness's pause program (pause.c) as a static executable for the runc pods'
//! pause image; its path reaches the harness as `WASMCELL_E2E_PAUSE`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("pause");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-Os", "-static", "-s", "-o"])
        .arg(&out)
        .arg("pause.c")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {cc} (scripts/setup.sh installs build-essential): {e}")
        });
    assert!(status.success(), "{cc} failed to build pause.c");
    println!("cargo:rustc-env=WASMCELL_E2E_PAUSE={}", out.display());
}
