#!/usr/bin/env bash
# The test command: everything CI runs. Needs fuse3 and attr installed (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
echo "== build"
cargo build --release --workspace
echo "== unit, property, real-mount and crash tests"
cargo test --release --workspace --no-fail-fast -- --test-threads=2
echo "== fsx on a mounted file"
bash scripts/fsx.sh 100000
echo "== the demo (README's first command)"
bash scripts/demo.sh
echo "== the failover demo (two hosts in network namespaces)"
bash scripts/failover-demo.sh
echo "== all tests passed"
