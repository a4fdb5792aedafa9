//! Running the `kiln` binary as a user does, for every suite of this crate.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn kiln(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

/// The command's stdout; fails the test with both outputs if it failed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}
