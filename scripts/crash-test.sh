#!/usr/bin/env bash
# Runs N kill -9 points of the real-mount crash test (tests/crash.rs) and ends with the line
# "P passed, F failed". Exits non-zero when any kill point failed.
#
#   scripts/crash-test.sh N            # N kill points (default 50)
#   CRASH_SEED=... scripts/crash-test.sh N   # replay a run (each iteration prints its seed)
#   scripts/crash-test.sh --power N    # N simulated power cuts (tests/powercut.rs; the
#                                      # issue's long run is 1000), then a summary: cuts,
#                                      # failures, ops lost since the last fsync
#   POWER_SEED=... POWER_VARIANTS="layout raid5" scripts/crash-test.sh --power N
#
# Needs root (or fuse access), fuse3 (fusermount3) and attr support on the host; --power
# also `ip netns` (the mirror variants) and builds examples/passthrough.
set -uo pipefail

usage() {
    echo "usage: $0 [--power] N   (N = number of kill points or, with --power, of power cuts; a positive integer)" >&2
    exit 2
}
power=0
if [ "${1:-}" = "--power" ]; then
    power=1
    shift
    [ $# -ge 1 ] || usage
fi
n="${1:-50}"
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -eq 0 ]; then
    usage
fi
cd "$(dirname "$0")/.."

if [ "$power" -eq 1 ]; then
    log="$(mktemp -t power-test.XXXXXX)"
    trap 'rm -f "$log"' EXIT
    echo "building (release)..."
    if ! { cargo build --release --workspace && cargo build --release --example passthrough &&
        cargo test --release --test powercut --no-run; } >"$log" 2>&1; then
        cat "$log"
        echo "build failed"
        exit 1
    fi
    POWER_ITERATIONS="$n" cargo test --release --test powercut -- --exact \
        power_cuts_keep_every_op_before_the_last_fsync --nocapture 2>&1 |
        tee "$log" | grep --line-buffered -E '^(power-iteration|test result|thread|  )' | cut -c1-600
    passed="$(grep -c '^power-iteration [0-9]* seed .*: PASS' "$log")"
    failed=$((n - passed))
    # "ops lost since fsync K" of every passing cut: total, mean, max.
    read -r total max < <(grep -o '^power-iteration [0-9]* seed .*: PASS, ops lost since fsync [0-9]*' "$log" |
        awk '{k = $NF; t += k; if (k > m) m = k} END {print t + 0, m + 0}')
    mean="$(awk -v t="$total" -v p="$passed" 'BEGIN {printf "%.1f", p ? t / p : 0}')"
    echo "$n cuts: $passed passed, $failed failed; ops lost since fsync: total $total, mean $mean, max $max"
    [ "$failed" -eq 0 ]
    exit
fi

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
