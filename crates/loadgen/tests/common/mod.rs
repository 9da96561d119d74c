//! Shared by the load tests: the `trunkline` binary the load tester starts as its gateway.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `trunkline` in this test's `target/<profile>`, built first with
/// `$CARGO build -p trunkline-gateway --bin trunkline` in the same profile (a no-op when it is
/// up to date): `trunkline-loadgen` does not depend on the gateway crate, so
/// `cargo test -p trunkline-loadgen` alone would not build it, nor rebuild a stale one. Once per
/// test binary.
pub fn trunkline_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_trunkline).clone()
}

fn build_trunkline() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's executable");
    // target/<profile>/deps/<test>-<hash>
    let mut dir: &Path = exe.parent().expect("its directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let bin = dir.join(format!("trunkline{}", std::env::consts::EXE_SUFFIX));
    // target/debug is the dev profile's (and the test profile's); others are named as theirs.
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(&cargo)
        .args(["build", "-p", "trunkline-gateway", "--bin", "trunkline"])
        .args(["--profile", profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(&cargo).display()));
    assert!(
        status.success(),
        "cargo build -p trunkline-gateway --bin trunkline --profile {profile}: {status}"
    );
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}
