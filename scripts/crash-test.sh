#!/usr/bin/env bash
# Runs N kill -9 points of the real-mount crash test (tests/crash.rs) and ends with the line
# "P passed, F failed". Exits non-zero when any kill point failed.
#
#   scripts/crash-test.sh N            # N kill points (default 50)
#   CRASH_SEED=... scripts/crash-test.sh N   # replay a run (each iteration prints its seed)
#
# Needs root (or fuse access), fuse3 (fusermount3) and attr support on the host.
set -uo pipefail

n="${1:-50}"
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -eq 0 ]; then
    echo "usage: $0 N   (N = number of kill points, a positive integer)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."

log="$(mktemp -t crash-test.XXXXXX)"
trap 'rm -f "$log"' EXIT

echo "building (release)..."
if ! cargo test --release --test crash --no-run >"$log" 2>&1; then
    cat "$log"
    echo "build failed"
    echo "0 passed, $n failed"
    exit 1
fi

CRASH_ITERATIONS="$n" cargo test --release --test crash -- --exact kill9_at_random_points_keeps_every_acknowledged_op --nocapture 2>&1 |
    tee "$log" | grep --line-buffered -E '^(crash|test result|thread|  )'

passed="$(grep -c '^crash-iteration [0-9]* seed [0-9]* PASS' "$log")"
reported_failed="$(grep -c '^crash-iteration [0-9]* seed [0-9]* FAIL' "$log")"
# Iterations that never reported (the test aborted) count as failed.
failed=$((n - passed))
if [ "$reported_failed" -ne "$failed" ]; then
    echo "note: $((failed - reported_failed)) iteration(s) did not run to a verdict (the test aborted)"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
