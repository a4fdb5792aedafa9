#!/usr/bin/env bash
# Every check CI makes: formatting, lints, docs and every test suite,
# including the privileged sandbox suites (they need root, as CI has).
# Arguments go to `cargo nextest run` (a test name, or `-E 'binary(fleet)'`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kiln_check_toolchain
kiln_install_nextest

# Only the tests need the Debian packages and Python tools: they download
# and install while the workspace compiles, and the tests wait for them.
mkdir -p target
installs=target/test-installs.log
(
    kiln_install_deps
    kiln_install_lint_tools
    kiln_install_console_test_tools
    kiln_install_moto
) >"$installs" 2>&1 &
install_pid=$!
# Never leave apt-get or pip half way, whatever stops this script.
trap 'wait "$install_pid" 2>/dev/null || true' EXIT

cargo fmt --all -- --check

# A test run compiles most of the workspace anew, where incremental
# compilation only adds work.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Clippy's lints run while the test build compiles the workspace, as
# `cargo clippy --all-targets -- -D warnings` would report them: a separate
# `cargo clippy` would type-check every dependency a second time, the AWS
# SDK's generated code above all.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
export RUSTC_WORKSPACE_WRAPPER RUSTFLAGS
cargo test --workspace --all-targets --no-run --quiet

# Rustdoc needs the dependencies type-checked once more (the AWS SDK's
# crates are left out: kiln-aws and the kiln binary). It runs beside the
# tests, at the lowest priority and in a target directory of its own, on
# the cores the tests leave idle while they wait.
docs=target/rustdoc.log
(
    export RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR=target/rustdoc
    nice -n 19 cargo doc --workspace --no-deps --quiet --exclude kiln-aws --exclude kiln
) >"$docs" 2>&1 &
docs_pid=$!
trap 'wait "$install_pid" "$docs_pid" 2>/dev/null || true' EXIT

if ! wait "$install_pid"; then
    cat "$installs" >&2
    echo "error: installing what the tests need failed (above)" >&2
    exit 1
fi
cat "$installs" >&2
status=0
cargo nextest run --workspace --cargo-quiet "$@" || status=$?
# Doctests only when a doc comment opens a Rust code block: with none
# (the blocks are text, yaml and json), `cargo test --doc` spent two
# minutes compiling every crate's documentation to run nothing.
rust_doctest="$(find crates -path '*/src/*' -name '*.rs' -print0 | xargs -0 awk '
    FNR == 1 { open = 0 }
    /^[[:space:]]*(\/\/!|\/\/\/)[[:space:]]*```/ {
        info = $0
        sub(/^[[:space:]]*(\/\/!|\/\/\/)[[:space:]]*```[[:space:]]*/, "", info)
        if (!open && (info == "" || info ~ /^(rust|no_run|should_panic|compile_fail|edition)/)) {
            print FILENAME ":" FNR
            exit
        }
        open = !open
    }' || true)"
if [ -n "$rust_doctest" ]; then
    cargo test --workspace --doc --quiet || status=$?
fi
if ! wait "$docs_pid"; then
    cat "$docs" >&2
    echo "error: cargo doc found problems in the documentation (above)" >&2
    status=1
fi
exit "$status"
