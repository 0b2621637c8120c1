#!/usr/bin/env bash
# The same fio / fs_mark / dbench workloads on the native backing directory and on smlogfs, in
# one run; prints each figure and the ratio smlogfs/native, then a final table.
#
#   scripts/bench.sh [--file-size MiB] [--seconds S] [--keep]
#
# Workloads (per target):
#   seq-write    fio 1 MiB sequential write of one file, ending with fsync        (MiB/s)
#   cold-read    the same file read sequentially after drop_caches (+ remount)    (MiB/s)
#   rand-fsync   fio 4 KiB random writes, each followed by fsync                  (IOPS, p99 ms)
#   rand-read    fio 4 KiB random reads of the sequential file, cold              (IOPS)
#   fs_mark      4 KiB files created, fsync before close, 2 threads               (files/s)
#   dbench       4 clients                                                        (MB/s)
# and for smlogfs: recovery time after kill -9 with a (nearly) full 64 MiB ring, and the
# daemon's resident memory (VmRSS now, VmHWM peak).
#
# Targets: "native" (a directory next to the volume, same disk) and "smlogfs" (one backing
# file, --disks 1). RAID hook: BENCH_RAID_DISKS=N (N >= 3) adds a target "raid" made with
# `smlogfs mkfs --disks N`; add further targets in setup_target/teardown_target.
#
# Needs root, fuse3, fio, fs_mark (Debian package fsmark), dbench, jq.
set -uo pipefail

file_mib=512
seconds=15
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
    --file-size) file_mib="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--file-size MiB] [--seconds S] [--keep]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root (drop_caches, mounts)" >&2; exit 2; }
for tool in fio fs_mark dbench jq fusermount3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install fuse3 fio fsmark dbench jq)" >&2; exit 2; }
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
echo "== building release"
cargo build --release --bin smlogfs 2>&1 | tail -1
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "build failed" >&2; exit 1; }
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
smlogfs="$target_dir/release/smlogfs"
[ -x "$smlogfs" ] || { echo "no binary at $smlogfs" >&2; exit 1; }

# /var/tmp: a disk-backed file system (not tmpfs), shared by both targets.
work="$(mktemp -d /var/tmp/smlogfs-bench.XXXXXX)"
declare -A R        # R[target,metric] = value
# BENCH_TARGETS overrides the list (e.g. "native" alone to check the script itself).
read -r -a targets <<<"${BENCH_TARGETS:-native smlogfs}"
if [ -n "${BENCH_RAID_DISKS:-}" ]; then
    targets+=(raid)
fi
vol_bytes=$(( (file_mib * 2 + 1024) * 1024 * 1024 ))

cleanup() {
    local t
    for t in "${targets[@]}" recovery; do
        if mountpoint -q "$work/$t.mnt" 2>/dev/null; then fusermount3 -u -z "$work/$t.mnt" || true; fi
        if [ -f "$work/$t.vol/daemon.pid" ]; then kill -9 "$(cat "$work/$t.vol/daemon.pid")" 2>/dev/null || true; fi
    done
    if [ -z "$keep" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

# --- targets -----------------------------------------------------------------------------

# True once no thread of PID runs any more: a killed daemon's main thread can be a zombie while
# other threads still exit (and hold the volume lock); nobody here reaps it.
pid_gone() {
    local s st
    for s in /proc/"$1"/task/*/stat; do
        [ -e "$s" ] || continue
        st="$(sed 's/.*) //' "$s" 2>/dev/null | cut -d' ' -f1)"
        case "$st" in Z | X | "") ;; *) return 1 ;; esac
    done
    return 0
}

dir_of() { # the directory a workload runs in
    if [ "$1" == native ]; then echo "$work/native"; else echo "$work/$1.mnt"; fi
}

setup_target() {
    case "$1" in
    native) mkdir -p "$work/native" ;;
    smlogfs)
        "$smlogfs" mkfs "$work/smlogfs.vol" --size "$vol_bytes" --ring 64M --disks 1 >/dev/null
        mkdir -p "$work/smlogfs.mnt"
        "$smlogfs" mount "$work/smlogfs.vol" "$work/smlogfs.mnt" ;;
    raid) # hook: a RAID-5 volume over BENCH_RAID_DISKS backing files
        "$smlogfs" mkfs "$work/raid.vol" --size "$vol_bytes" --ring 64M --disks "$BENCH_RAID_DISKS" >/dev/null
        mkdir -p "$work/raid.mnt"
        "$smlogfs" mount "$work/raid.vol" "$work/raid.mnt" ;;
    esac
}

teardown_target() {
    case "$1" in
    native) rm -rf "$work/native" ;;
    *) "$smlogfs" umount "$work/$1.mnt" ;;
    esac
}

# Makes the next read cold: page cache dropped and, for smlogfs, the daemon restarted.
cold() {
    sync
    if [ "$1" != native ]; then
        "$smlogfs" umount "$work/$1.mnt"
        wait_daemon_gone "$1"
        "$smlogfs" mount "$work/$1.vol" "$work/$1.mnt"
    fi
    echo 3 >/proc/sys/vm/drop_caches
}

wait_daemon_gone() {
    local pid
    pid="$(cat "$work/$1.vol/daemon.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    for _ in $(seq 1 3000); do
        if pid_gone "$pid"; then return 0; fi
        sleep 0.01
    done
    echo "daemon $pid did not exit" >&2
    return 1
}

sample_rss() { # keeps the largest VmRSS seen and the last VmHWM of the target's daemon
    [ "$1" != native ] || return 0
    local pid rss hwm
    pid="$(cat "$work/$1.vol/daemon.pid")"
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
    if [ "${R[$1,rss_mib]:-0}" -lt $((rss / 1024)) ]; then R[$1,rss_mib]=$((rss / 1024)); fi
    if [ "${R[$1,hwm_mib]:-0}" -lt $((hwm / 1024)) ]; then R[$1,hwm_mib]=$((hwm / 1024)); fi
}

# --- workloads ---------------------------------------------------------------------------

fio_json() { fio --output-format=json "$@" 2>/dev/null; }

run_workloads() {
    local t="$1" d
    d="$(dir_of "$t")"
    echo "== $t: seq-write ${file_mib} MiB (1 MiB blocks, end_fsync)"
    local j
    j=$(fio_json --name=seq --filename="$d/seq.dat" --rw=write --bs=1M --size="${file_mib}M" \
        --ioengine=psync --end_fsync=1)
    R[$t,seq_write]=$(jq '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$j")
    echo "   ${R[$t,seq_write]} MiB/s"
    sample_rss "$t"

    cold "$t"
    echo "== $t: cold sequential read"
    j=$(fio_json --name=seq --filename="$d/seq.dat" --rw=read --bs=1M --size="${file_mib}M" \
        --ioengine=psync)
    R[$t,cold_read]=$(jq '.jobs[0].read.bw_bytes / 1048576 | floor' <<<"$j")
    echo "   ${R[$t,cold_read]} MiB/s"
    sample_rss "$t"

    cold "$t"
    echo "== $t: 4 KiB random reads (${seconds}s, cold start)"
    j=$(fio_json --name=rr --filename="$d/seq.dat" --rw=randread --bs=4k --size="${file_mib}M" \
        --ioengine=psync --time_based --runtime="$seconds")
    R[$t,rand_read]=$(jq '.jobs[0].read.iops | floor' <<<"$j")
    echo "   ${R[$t,rand_read]} IOPS"
    sample_rss "$t"

    echo "== $t: 4 KiB random writes, fsync after each (${seconds}s)"
    j=$(fio_json --name=rw --filename="$d/rand.dat" --rw=randwrite --bs=4k --size=64M \
        --ioengine=psync --fsync=1 --time_based --runtime="$seconds")
    R[$t,rand_fsync]=$(jq '.jobs[0].write.iops | floor' <<<"$j")
    # Latency of one write+fsync pair: p99 of the write plus p99 of the fsync.
    R[$t,rand_fsync_p99]=$(jq '((.jobs[0].write.clat_ns.percentile["99.000000"] // 0)
        + (.jobs[0].sync.lat_ns.percentile["99.000000"] // 0)) / 1000000 * 1000 | floor / 1000' <<<"$j")
    echo "   ${R[$t,rand_fsync]} IOPS, p99 ${R[$t,rand_fsync_p99]} ms"
    rm -f "$d/rand.dat"
    sample_rss "$t"

    echo "== $t: fs_mark (4 KiB files, fsync before close, 2 threads)"
    local out
    # fs_mark wants a directory name shorter than 40 bytes: run it from inside.
    out=$(cd "$d" && fs_mark -d fsm -s 4096 -n 2000 -t 2 -L 1 -S 1 2>&1)
    R[$t,fs_mark]=$(awk '$1 ~ /^[0-9]+$/ && NF == 5 {v=$4} END {printf "%d", v}' <<<"$out")
    echo "   ${R[$t,fs_mark]} files/s"
    rm -rf "$d/fsm"
    sample_rss "$t"

    echo "== $t: dbench 4 clients (${seconds}s)"
    mkdir -p "$d/dbench"
    out=$(cd "$d/dbench" && dbench -D "$d/dbench" -t "$seconds" 4 2>&1)
    R[$t,dbench]=$(awk '/^Throughput/ {printf "%d", $2}' <<<"$out")
    echo "   ${R[$t,dbench]} MB/s"
    rm -rf "$d/dbench"
    sample_rss "$t"
}

# Recovery after kill -9 with the ring (nearly) full: a fresh volume with a 64 MiB ring, small
# writes without fsync until about 60 MiB of entries are logged, kill -9, then time the mount
# (which returns only once the mount is ready).
recovery_time() {
    echo "== smlogfs: recovery after kill -9 with a full 64 MiB ring"
    local vol="$work/recovery.vol" mnt="$work/recovery.mnt"
    "$smlogfs" mkfs "$vol" --size 2G --ring 64M --disks 1 >/dev/null
    mkdir -p "$mnt"
    "$smlogfs" mount "$vol" "$mnt"
    fio --name=fill --filename="$mnt/fill.dat" --rw=randwrite --bs=4k --size=256M \
        --io_size=60M --ioengine=psync >/dev/null 2>&1
    local pid
    pid="$(cat "$vol/daemon.pid")"
    local before
    before="$("$smlogfs" inspect "$vol" 2>/dev/null | grep -E '^(end:|recovery would:)' | tr '\n' ';' || true)"
    kill -9 "$pid"
    for _ in $(seq 1 1000); do
        if pid_gone "$pid"; then break; fi
        sleep 0.01
    done
    local t0 t1
    t0=$EPOCHREALTIME
    "$smlogfs" mount "$vol" "$mnt"
    t1=$EPOCHREALTIME
    R[smlogfs,recovery_ms]=$(awk "BEGIN{printf \"%d\", ($t1 - $t0) * 1000}")
    echo "   ring before the kill: ${before:-?}"
    echo "   mount ready after ${R[smlogfs,recovery_ms]} ms"
    "$smlogfs" umount "$mnt"
}

# --- run ---------------------------------------------------------------------------------

echo "== work directory $work ($(df -h --output=source,fstype "$work" | tail -1))"
for t in "${targets[@]}"; do
    setup_target "$t" || { echo "setting up $t failed" >&2; exit 1; }
    run_workloads "$t"
    teardown_target "$t" || echo "tearing down $t failed" >&2
done
case " ${targets[*]} " in *" smlogfs "*) recovery_time ;; esac

ratio() { # smlogfs/native with two decimals, "-" when either is missing or native is 0
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

echo
printf '%-30s %12s' "workload" native
for t in "${targets[@]:1}"; do printf ' %12s %-9s' "$t" "ratio"; done
printf ' %s\n' "target ratio"
rows=(
    "seq_write|seq write 1M+fsync (MiB/s)|0.7"
    "cold_read|cold seq read (MiB/s)|0.8"
    "rand_fsync|4K write+fsync (IOPS)|0.8"
    "rand_fsync_p99|4K write+fsync p99 (ms)|"
    "rand_read|4K random read (IOPS)|"
    "fs_mark|fs_mark creates (files/s)|0.5"
    "dbench|dbench 4 clients (MB/s)|0.5"
)
for row in "${rows[@]}"; do
    IFS='|' read -r key label goal <<<"$row"
    printf '%-30s %12s' "$label" "${R[native,$key]:--}"
    for t in "${targets[@]:1}"; do
        r=$(ratio "${R[$t,$key]:-}" "${R[native,$key]:-}")
        if [ -n "$goal" ] && [ "$r" != "-" ]; then
            r="$r $(awk -v r="$r" -v g="$goal" 'BEGIN { print (r >= g) ? "ok" : "LOW" }')"
        fi
        printf ' %12s %-9s' "${R[$t,$key]:--}" "$r"
    done
    printf ' %s\n' "${goal:+>= $goal}"
done
for t in "${targets[@]:1}"; do
    printf '%-30s %12s %12s %-9s %s\n' "RSS max/peak $t (MiB)" - "${R[$t,rss_mib]:--}/${R[$t,hwm_mib]:--}" "" "< 256 + cache"
done
case " ${targets[*]} " in
*" smlogfs "*)
    printf '%-30s %12s %12s %-9s %s\n' "recovery after kill -9 (ms)" - "${R[smlogfs,recovery_ms]:--}" \
        "$(awk -v v="${R[smlogfs,recovery_ms]:-99999}" 'BEGIN { print (v < 1000) ? "ok" : "SLOW" }')" "< 1000" ;;
esac
