#!/usr/bin/env bash
# The test command: everything CI runs. Needs fuse3 and attr installed (see .ci/run).
# Every stage runs even when an earlier one failed; at the end, a digest of the failures
# (the FAIL lines and panic messages, which the full output buries in the middle) is
# printed last, so that the tail of a CI log always says what went wrong.
set -uo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
log=$(mktemp /tmp/smlogfs-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
failed=()
stage() {
    local name="$1"
    shift
    echo "== $name"
    if ! "$@" 2>&1 | tee -a "$log"; then
        failed+=("$name")
    fi
}
stage "build" cargo build --release --workspace
if [ ${#failed[@]} -gt 0 ]; then
    echo "== the build failed" >&2
    exit 1
fi
# This stage includes the power-cut sample (tests/powercut.rs: POWER_ITERATIONS cuts, 12 by
# default, over every layout x mirror x commit_ms variant, and the emergency flush); the long
# run is scripts/crash-test.sh --power 1000.
stage "unit, property, real-mount, crash and power-cut tests" \
    cargo test --release --workspace --no-fail-fast -- --test-threads=2
stage "fsx on a mounted file" bash scripts/fsx.sh 100000
stage "the demo (README's first command)" bash scripts/demo.sh
stage "the failover demo (two hosts in network namespaces)" bash scripts/failover-demo.sh
if [ ${#failed[@]} -gt 0 ]; then
    echo "== failure digest"
    grep -E -A4 ' FAIL |panicked at|^test .* FAILED$|^error|failed after' "$log" | cut -c1-400 | tail -200
    printf '== FAILED stage: %s\n' "${failed[@]}"
    exit 1
fi
echo "== all tests passed"
