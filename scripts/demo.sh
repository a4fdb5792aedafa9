#!/usr/bin/env bash
# kiln's main job: `kiln demo`. It writes a sample repository (a small site,
# a buildspec, an AWSTOE component and kiln.yaml), starts the daemon, runs
# the first commit to a two-instance group behind the load balancer, then
# commits a change and rolls it out under load. In a terminal it keeps
# serving until Ctrl-C; otherwise it cleans up and ends.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
kiln_install_deps
cargo build --release --quiet --bin kiln
state="${KILN_STATE:-$PWD/target/demo-state}"
exec ./target/release/kiln --state-dir "$state" demo --dir target/kiln-demo "$@"
