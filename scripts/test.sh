#!/usr/bin/env bash
# Every check CI makes: formatting, lints, docs and every test suite,
# including the privileged sandbox suites (they need root, as CI has).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kiln_install_deps
kiln_install_lint_tools
kiln_install_console_test_tools
kiln_install_moto
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace "$@"
