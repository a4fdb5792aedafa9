#!/usr/bin/env bash
# kiln's main job. Until the pipeline exists: a component document run end
# to end in a sandboxed root (build, validate and test phases of a small web
# service, in a busybox root assembled offline).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kiln_install_deps
cargo build --release --quiet --bin kiln
state="${KILN_STATE:-$PWD/target/demo-state}"
./target/release/kiln --state-dir "$state" toe validate examples/hello-service.yaml
exec ./target/release/kiln --state-dir "$state" toe run examples/hello-service.yaml \
    --root busybox --shell sh --trace "$@"
