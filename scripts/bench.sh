#!/usr/bin/env bash
# The same fio / fs_mark / dbench workloads on the native backing directory, on a FUSE
# passthrough of our own (FUSE alone, no logging) and on smlogfs volumes, in one run; prints
# each figure and its ratio to native and to the passthrough (and, for the mirror, to smlogfs
# without a mirror), then a final table and a list of the project's performance targets, each
# marked ok or LOW (SLOW for times).
#
#   scripts/bench.sh [--file-size MiB] [--seconds S] [--keep] [--no-build]
#
# Workloads (per target):
#   seq-write    fio 1 MiB sequential write of one file, ending with fsync        (MiB/s)
#                (and the same with 512 KiB writes, for information)
#   cold-read    the same file read sequentially after drop_caches (+ remount)    (MiB/s)
#   rand-read    fio 4 KiB random reads of the sequential file, cold              (IOPS)
#   rand-fsync   fio 4 KiB random writes, each followed by fsync                  (IOPS; p99 of
#                the write call and of the fsync call, from fio's completion latencies, in us)
#   fs_mark      4 KiB files created, fsync before close, 2 threads               (files/s)
#   dbench       4 clients                                                        (MB/s)
#
# Targets (BENCH_TARGETS="native passthrough smlogfs raid mirror" is the default; any subset,
# in order):
#   native   a directory next to the volumes (same disk)
#   passthrough  examples/passthrough (plain mode) over a directory next to the volumes:
#            every request passed to the backing directory, multi-threaded like smlogfs (2
#            threads, same TTLs, request size and readahead), no kernel passthrough. The
#            "/pass" columns divide by it: what smlogfs costs on top of the FUSE round trip
#   smlogfs  one backing file (`mkfs --disks 1`), no mirror
#   raid     RAID-5 (`mkfs --disks 4`, the product default; BENCH_RAID_DISKS=N changes N)
#   mirror   one backing file, mounted with `--mirror 127.0.0.1:PORT --mirror-mode sync`
#            against a `mirror-agent` this script starts (PORT: the first free one from
#            BENCH_MIRROR_PORT, default 7791) and kills at the end
#
# Further measurements:
#   smlogfs  recovery after kill -9 with a (nearly) full 64 MiB ring; daemon VmRSS/VmHWM
#   mirror   recovery from the agent's copy of a (nearly) full 64 MiB ring after kill -9 and
#            deletion of the local ring; takeover time (kill -9 of node A, `smlogfs takeover`
#            on node B until it returns), then giveback
#   raid     unthrottled offline rebuild of one member of a 4-member ~1 GiB array
#            (`raid-sim fail` + `raid-sim replace --rate 0`), in MiB/s of rebuilt member
#            bytes vs native sequential write; `raid-sim bench` XOR parity GB/s per core
#
# The machine's load average is printed before each target: other work on the machine skews
# the figures. On exit (also Ctrl-C / SIGTERM, once the command running then returns) every
# mount, daemon and the agent are removed, and the work directory unless --keep.
#
# Needs root, fuse3, fio, fs_mark (Debian package fsmark), dbench, jq.
set -uo pipefail

file_mib=512
seconds=15
# Longest a sequential write may run (BENCH_SEQ_CAP_S): a stalled target still finishes; a
# figure written with a trailing "*" is from a write the limit cut short.
seq_cap="${BENCH_SEQ_CAP_S:-60}"
keep=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --file-size) file_mib="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=""; shift ;;
    *) echo "usage: $0 [--file-size MiB] [--seconds S] [--keep] [--no-build]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root (drop_caches, mounts)" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/scripts/lib.sh"   # require_tools, build_release, release_work, wait_for_line, crash_volume
require_tools "fuse3 fio fsmark dbench jq" fio fs_mark dbench jq fusermount3

cd "$repo"
if [ -n "$build" ]; then
    echo "== building release (workspace)"
    build_release "build failed (--no-build uses the binaries already built)" --workspace
    build_release "building examples/passthrough failed" --example passthrough
fi
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
for b in smlogfs mirror-agent raid-sim examples/passthrough; do
    [ -x "$target_dir/release/$b" ] || { echo "no binary at $target_dir/release/$b" >&2; exit 1; }
done

# /var/tmp: a disk-backed file system (not tmpfs), shared by all targets.
work="$(mktemp -d /var/tmp/smlogfs-bench.XXXXXX)"
# A copy of the binaries: a build started elsewhere during the run cannot swap them.
mkdir -p "$work/bin"
cp "$target_dir/release/smlogfs" "$target_dir/release/mirror-agent" "$target_dir/release/raid-sim" \
    "$target_dir/release/examples/passthrough" "$work/bin/"
smlogfs="$work/bin/smlogfs"
agent_bin="$work/bin/mirror-agent"
raidsim="$work/bin/raid-sim"
passthrough_bin="$work/bin/passthrough"

declare -A R        # R[target,metric] = value
read -r -a targets <<<"${BENCH_TARGETS:-native passthrough smlogfs raid mirror}"
raid_disks="${BENCH_RAID_DISKS:-4}"
vol_bytes=$(( (file_mib * 2 + 1024) * 1024 * 1024 ))
has_target() { case " ${targets[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

agent_pid=""
mirror_port=""
mirror_flags=()

cleanup() {
    # Every FUSE mount under the work directory (targets, recovery, takeover), and the
    # daemons of our volumes and the passthrough still running.
    release_work "$work" "smlogfs|passthrough"
    if [ -n "$agent_pid" ]; then
        kill -9 "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    if [ -z "$keep" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- targets -----------------------------------------------------------------------------

daemon_pid() { head -1 "$1/daemon.pid" 2>/dev/null; }

kill9_daemon() { # VOLDIR: kill -9 of its supervisor and daemon (a crash), once all are gone
    crash_volume "$1" 30
}

port_free() {
    if command -v ss >/dev/null; then
        ! ss -Htln "sport = :$1" | grep -q .
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

start_agent() {
    local p="${BENCH_MIRROR_PORT:-7791}"
    while ! port_free "$p"; do p=$((p + 1)); done
    mirror_port="$p"
    mirror_flags=(--mirror "127.0.0.1:$mirror_port" --mirror-mode sync)
    mkdir -p "$work/agent"
    "$agent_bin" --listen "127.0.0.1:$mirror_port" --dir "$work/agent" >"$work/agent.log" 2>&1 &
    agent_pid=$!
    if wait_for_line "$agent_pid" "$work/agent.log" "listening"; then
        echo "== mirror-agent pid $agent_pid on 127.0.0.1:$mirror_port, dir $work/agent"
        return 0
    fi
    echo "mirror-agent did not start:" >&2
    cat "$work/agent.log" >&2
    return 1
}

dir_of() { # the directory a workload runs in
    if [ "$1" == native ]; then echo "$work/native"; else echo "$work/$1.mnt"; fi
}

# The passthrough's pid and log live in $work/passthrough.vol like a volume's daemon.pid and
# daemon.log (so daemon_pid, sample_rss and cleanup treat it alike); it serves .vol/backing.
mount_passthrough() {
    local vol="$work/passthrough.vol" pid
    "$passthrough_bin" "$vol/backing" "$work/passthrough.mnt" >"$vol/daemon.out" 2>>"$vol/daemon.log" &
    pid=$!
    echo "$pid" >"$vol/daemon.pid"
    wait_for_line "$pid" "$vol/daemon.out" "^passthrough: mounted" && return 0
    echo "the passthrough did not mount:" >&2
    cat "$vol/daemon.log" >&2
    return 1
}

umount_passthrough() {
    local pid
    pid="$(daemon_pid "$work/passthrough.vol")"
    fusermount3 -u "$work/passthrough.mnt" || return 1
    [ -z "$pid" ] || wait_pid_gone "$pid" 30 || return 1
    rm -f "$work/passthrough.vol/daemon.pid"
}

mount_target() { # TARGET [extra mount arguments]
    local t="$1"
    shift
    if [ "$t" == passthrough ]; then mount_passthrough; return; fi
    local -a extra=()
    if [ "$t" == mirror ]; then extra=("${mirror_flags[@]}"); fi
    "$smlogfs" mount "$work/$t.vol" "$work/$t.mnt" "${extra[@]}" "$@"
}

setup_target() {
    case "$1" in
    native) mkdir -p "$work/native" ;;
    passthrough)
        mkdir -p "$work/passthrough.vol/backing" "$work/passthrough.mnt"
        mount_passthrough ;;
    smlogfs | mirror)
        "$smlogfs" mkfs "$work/$1.vol" --size "$vol_bytes" --ring 64M --disks 1 >/dev/null || return 1
        mkdir -p "$work/$1.mnt"
        mount_target "$1" ;;
    raid) # RAID-5 over $raid_disks backing files
        "$smlogfs" mkfs "$work/raid.vol" --size "$vol_bytes" --ring 64M --disks "$raid_disks" >/dev/null || return 1
        mkdir -p "$work/raid.mnt"
        mount_target raid ;;
    *) echo "unknown target $1 (native passthrough smlogfs raid mirror)" >&2; return 1 ;;
    esac
}

teardown_target() {
    case "$1" in
    native) rm -rf "$work/native" ;;
    passthrough)
        umount_passthrough
        rm -rf "$work/passthrough.vol/backing" ;;
    *)
        "$smlogfs" umount "$work/$1.mnt"
        local n
        n=$(grep -c ' ERROR ' "$work/$1.vol/daemon.log" 2>/dev/null)
        if [ "${n:-0}" -gt 0 ]; then
            echo "   $1: $n ERROR line(s) in daemon.log, the first ones:"
            grep ' ERROR ' "$work/$1.vol/daemon.log" | head -3 | sed 's/^/     /'
        fi ;;
    esac
}

# Makes the next read cold: page cache dropped and, for smlogfs and the passthrough, the
# daemon restarted.
cold() {
    sync
    if [ "$1" == passthrough ]; then
        umount_passthrough
        mount_passthrough
    elif [ "$1" != native ]; then
        "$smlogfs" umount "$work/$1.mnt"
        wait_daemon_gone "$1"
        mount_target "$1"
    fi
    echo 3 >/proc/sys/vm/drop_caches
}

# Before a write workload: the write-back of what earlier workloads (or targets) wrote must
# not be charged to this one. The same for every target.
settle() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sleep 1
}

wait_daemon_gone() {
    local pid
    pid="$(daemon_pid "$work/$1.vol")"
    [ -n "$pid" ] || return 0
    wait_pid_gone "$pid" 30
}

sample_rss() { # keeps the largest VmRSS seen and the last VmHWM of the target's daemon
    [ "$1" != native ] || return 0
    local pid rss hwm
    pid="$(daemon_pid "$work/$1.vol")"
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null)
    hwm=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null)
    [ -n "$rss" ] || return 0
    if [ "${R[$1,rss_mib]:-0}" -lt $((rss / 1024)) ]; then R[$1,rss_mib]=$((rss / 1024)); fi
    if [ "${R[$1,hwm_mib]:-0}" -lt $((hwm / 1024)) ]; then R[$1,hwm_mib]=$((hwm / 1024)); fi
}

# --- workloads ---------------------------------------------------------------------------

fio_json() { fio --output-format=json "$@" 2>/dev/null; }

run_workloads() {
    local t="$1" d
    d="$(dir_of "$t")"
    # 512 KiB writes first: in the runs of 2026-12 a 1 MiB write stalled a mirrored mount
    # until it was remounted (daemon.log: "cannot queue seq N: entry of 1048648 bytes exceeds
    # the mirror limit of 1048576 bytes"), which must not spoil this figure.
    local j read_mib
    settle
    echo "== $t: seq-write ${file_mib} MiB (512 KiB blocks, end_fsync; at most ${seq_cap}s)"
    j=$(fio_json --name=seq512 --filename="$d/seq512.dat" --rw=write --bs=512k --size="${file_mib}M" \
        --ioengine=psync --end_fsync=1 --runtime="$seq_cap")
    R[$t,seq_write_512k]=$(jq '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$j")
    if [ "$(jq '.jobs[0].write.io_kbytes / 1024 | floor' <<<"$j")" -lt "$file_mib" ]; then
        R[$t,seq_write_512k]="${R[$t,seq_write_512k]}*"
    fi
    echo "   ${R[$t,seq_write_512k]} MiB/s"
    rm -f "$d/seq512.dat"
    sample_rss "$t"

    settle
    echo "== $t: seq-write ${file_mib} MiB (1 MiB blocks, end_fsync; at most ${seq_cap}s)"
    j=$(fio_json --name=seq --filename="$d/seq.dat" --rw=write --bs=1M --size="${file_mib}M" \
        --ioengine=psync --end_fsync=1 --runtime="$seq_cap")
    R[$t,seq_write]=$(jq '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$j")
    # The reads below read what was written (all of it unless the time limit cut the write).
    read_mib=$(jq '.jobs[0].write.io_kbytes / 1024 | floor' <<<"$j")
    [ "${read_mib:-0}" -ge 1 ] 2>/dev/null || read_mib=1
    if [ "$read_mib" -lt "$file_mib" ]; then
        echo "   cut short after ${seq_cap}s: only $read_mib of $file_mib MiB written; the reads use those $read_mib MiB"
        R[$t,seq_write]="${R[$t,seq_write]}*"
    fi
    echo "   ${R[$t,seq_write]} MiB/s"
    sample_rss "$t"

    cold "$t"
    echo "== $t: cold sequential read"
    j=$(fio_json --name=seq --filename="$d/seq.dat" --rw=read --bs=1M --size="${read_mib}M" \
        --ioengine=psync)
    R[$t,cold_read]=$(jq '.jobs[0].read.bw_bytes / 1048576 | floor' <<<"$j")
    echo "   ${R[$t,cold_read]} MiB/s"
    sample_rss "$t"

    cold "$t"
    echo "== $t: 4 KiB random reads (${seconds}s, cold start)"
    j=$(fio_json --name=rr --filename="$d/seq.dat" --rw=randread --bs=4k --size="${read_mib}M" \
        --ioengine=psync --time_based --runtime="$seconds")
    R[$t,rand_read]=$(jq '.jobs[0].read.iops | floor' <<<"$j")
    echo "   ${R[$t,rand_read]} IOPS"
    sample_rss "$t"

    settle
    echo "== $t: 4 KiB random writes, fsync after each (${seconds}s)"
    j=$(fio_json --name=rw --filename="$d/rand.dat" --rw=randwrite --bs=4k --size=64M \
        --ioengine=psync --fsync=1 --time_based --runtime="$seconds")
    R[$t,rand_fsync]=$(jq '.jobs[0].write.iops | floor' <<<"$j")
    # p99 completion latency of the write call (the acknowledged write) and of the fsync call.
    R[$t,write_p99_us]=$(jq '(.jobs[0].write.clat_ns.percentile["99.000000"] // 0) / 1000 | floor' <<<"$j")
    R[$t,fsync_p99_us]=$(jq '(.jobs[0].sync.lat_ns.percentile["99.000000"] // 0) / 1000 | floor' <<<"$j")
    echo "   ${R[$t,rand_fsync]} IOPS, p99 write ${R[$t,write_p99_us]} us, fsync ${R[$t,fsync_p99_us]} us"
    rm -f "$d/rand.dat"
    sample_rss "$t"

    settle
    echo "== $t: fs_mark (4 KiB files, fsync before close, 2 threads)"
    local out
    # fs_mark wants a directory name shorter than 40 bytes: run it from inside.
    out=$(cd "$d" && fs_mark -d fsm -s 4096 -n 2000 -t 2 -L 1 -S 1 2>&1)
    R[$t,fs_mark]=$(awk '$1 ~ /^[0-9]+$/ && NF == 5 {v=$4} END {printf "%d", v}' <<<"$out")
    echo "   ${R[$t,fs_mark]} files/s"
    rm -rf "$d/fsm"
    sample_rss "$t"

    settle
    echo "== $t: dbench 4 clients (${seconds}s)"
    mkdir -p "$d/dbench"
    out=$(cd "$d/dbench" && dbench -D "$d/dbench" -t "$seconds" 4 2>&1)
    R[$t,dbench]=$(awk '/^Throughput/ {printf "%d", $2}' <<<"$out")
    echo "   ${R[$t,dbench]} MB/s"
    rm -rf "$d/dbench"
    sample_rss "$t"
}

ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# About 59 MiB of ring entries: 4 KiB random writes without fsync (14336 ops of ~4.2 KiB of
# entries each). Mounted with checkpoint_fill=95 (60.8 MiB of the 64 MiB ring) and
# checkpoint_ms=3600000, so no checkpoint runs and every entry stays in the ring — and in the
# agent's copy, which drops only what a checkpoint covers.
NO_CHECKPOINT_OPTS="checkpoint_ms=3600000,checkpoint_fill=95"
fill_ring() {
    fio --name=fill --filename="$1/fill.dat" --rw=randwrite --bs=4k --size=256M \
        --io_size=56M --ioengine=psync >/dev/null 2>&1
}

ring_state() { # MNT: the live daemon's ring fill, as one line
    "$smlogfs" status "$1" --json 2>/dev/null | jq -r '"\(.ring_used_bytes / 1048576 | floor) MiB of the ring used (\(.ring_fill_percent)%), \(.checkpoints_since_mount) checkpoint(s) since mount, next seq \(.next_seq), agent acked to \(.mirror.acked_through // "-")"'
}

# Recovery after kill -9 with the ring (nearly) full: a fresh volume with a 64 MiB ring, small
# writes without fsync until about 59 MiB of entries are logged (no checkpoint: see fill_ring),
# kill -9, then time the mount (which returns only once the mount is ready).
recovery_time() {
    echo "== smlogfs: recovery after kill -9 with a full 64 MiB ring"
    local vol="$work/recovery.vol" mnt="$work/recovery.mnt"
    "$smlogfs" mkfs "$vol" --size 2G --ring 64M --disks 1 >/dev/null || return 1
    mkdir -p "$mnt"
    "$smlogfs" mount "$vol" "$mnt" -o "$NO_CHECKPOINT_OPTS" || return 1
    fill_ring "$mnt"
    echo "   before the kill: $(ring_state "$mnt")"
    kill9_daemon "$vol" || return 1
    local before
    before="$("$smlogfs" inspect "$vol" 2>/dev/null | grep -E '^(end:|recovery would:)' | tr '\n' ';' || true)"
    local t0
    t0=$EPOCHREALTIME
    "$smlogfs" mount "$vol" "$mnt" || return 1
    R[smlogfs,recovery_ms]=$(ms_since "$t0")
    echo "   ring after the kill: ${before:-?}"
    echo "   mount ready after ${R[smlogfs,recovery_ms]} ms"
    "$smlogfs" umount "$mnt"
}

# --- mirror: recovery from the agent, takeover -------------------------------------------

ring_file_of() { # VOLDIR: the ring file the volume names (first line of `smlogfs inspect`)
    "$smlogfs" inspect "$1" 2>/dev/null | sed -n '1s/^state log \(.*\) ([0-9]* bytes).*/\1/p'
}

# The volume is mounted with the mirror; its ring is filled without a checkpoint, the daemon
# is killed, the local ring file deleted, and `smlogfs mount` with the same flags is timed: it
# returns once the entries read back from the agent are replayed and the mount is ready.
mirror_recovery_time() {
    echo "== mirror: recovery from the agent's copy of a full 64 MiB ring (local ring deleted)"
    local vol="$work/mrecovery.vol" mnt="$work/mrecovery.mnt"
    "$smlogfs" mkfs "$vol" --size 2G --ring 64M --disks 1 >/dev/null || return 1
    mkdir -p "$mnt"
    "$smlogfs" mount "$vol" "$mnt" "${mirror_flags[@]}" -o "$NO_CHECKPOINT_OPTS" || return 1
    fill_ring "$mnt"
    echo "   before the kill: $(ring_state "$mnt")"
    local sum_before sum_after ring log_at
    sum_before="$(md5sum <"$mnt/fill.dat" | cut -d' ' -f1)"
    ring="$(ring_file_of "$vol")"
    kill9_daemon "$vol" || return 1
    if [ "$ring" != "$vol/statelog" ] || [ ! -f "$ring" ]; then
        echo "   expected the ring at $vol/statelog, inspect names '${ring:-nothing}': not deleting" >&2
        return 1
    fi
    rm -f "$ring"
    log_at=$(stat -c %s "$vol/daemon.log")
    local t0
    t0=$EPOCHREALTIME
    if ! "$smlogfs" mount "$vol" "$mnt" "${mirror_flags[@]}" -o "$NO_CHECKPOINT_OPTS"; then
        echo "   mount after deleting the ring failed (above)" >&2
        return 1
    fi
    R[mirror,recovery_ms]=$(ms_since "$t0")
    echo "   mount ready after ${R[mirror,recovery_ms]} ms"
    tail -c +"$((log_at + 1))" "$vol/daemon.log" | grep -E 'from the mirror agent|recovered ' | sed 's/^/   log: /'
    if ! tail -c +"$((log_at + 1))" "$vol/daemon.log" | grep -q 'from the mirror agent'; then
        echo "   WARNING: daemon.log does not say the entries came from the mirror agent" >&2
    fi
    sum_after="$(md5sum <"$mnt/fill.dat" | cut -d' ' -f1)"
    if [ "$sum_before" == "$sum_after" ]; then
        echo "   fill.dat after recovery: same md5 as before the kill"
    else
        echo "   ERROR: fill.dat differs after recovery from the mirror ($sum_before before, $sum_after after)" >&2
        R[mirror,recovery_ms]="${R[mirror,recovery_ms]}!"
    fi
    "$smlogfs" umount "$mnt"
}

# Takeover time. Node A mounts with the mirror and --node A, fills its ring (no checkpoint: the
# worst case, everything is replayed from the agent), and is killed with kill -9. Timed: from
# the start of `smlogfs takeover VOLDIR MNT2 --node B` until it returns (the mount is ready).
# Not measured: detecting A's death (--detect-ms, or whatever a cluster manager uses); the
# target (<= 3000 ms) is on top of the detection timeout.
takeover_time() {
    echo "== mirror: takeover by node B after kill -9 of node A (full ring, no checkpoint)"
    local vol="$work/takeover.vol" mnt="$work/takeover.mnt" mnt2="$work/takeover-b.mnt"
    "$smlogfs" mkfs "$vol" --size 2G --ring 64M --disks 1 >/dev/null || return 1
    mkdir -p "$mnt" "$mnt2"
    "$smlogfs" mount "$vol" "$mnt" "${mirror_flags[@]}" --node A -o "$NO_CHECKPOINT_OPTS" || return 1
    fill_ring "$mnt"
    echo "   node A before the kill: $(ring_state "$mnt")"
    local sum_before out rc t0
    sum_before="$(md5sum <"$mnt/fill.dat" | cut -d' ' -f1)"
    kill9_daemon "$vol" || return 1
    t0=$EPOCHREALTIME
    out="$("$smlogfs" takeover "$vol" "$mnt2" "${mirror_flags[@]}" --node B 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "   takeover FAILED (exit $rc): $out" >&2
        R[mirror,takeover_ms]="-"
        return 1
    fi
    R[mirror,takeover_ms]=$(ms_since "$t0")
    echo "   $out"
    echo "   node B's mount ready after ${R[mirror,takeover_ms]} ms"
    if [ "$(md5sum <"$mnt2/fill.dat" | cut -d' ' -f1)" == "$sum_before" ]; then
        echo "   fill.dat on B: same md5 as on A before the kill"
    else
        echo "   ERROR: fill.dat on B differs from A's before the kill" >&2
        R[mirror,takeover_ms]="${R[mirror,takeover_ms]}!"
    fi
    out="$("$smlogfs" giveback "$mnt2" 2>&1)" || echo "   giveback FAILED (exit $?): $out" >&2
    echo "   giveback: $out"
    # A's mount is dead since the kill; A mounts again under the new epoch.
    fusermount3 -u -z "$mnt" 2>/dev/null || true
    out="$("$smlogfs" mount "$vol" "$mnt" "${mirror_flags[@]}" --node A 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "   node A's mount after giveback FAILED (exit $rc): $out" >&2
        return 1
    fi
    echo "   node A mounted again after giveback"
    "$smlogfs" umount "$mnt"
}

# --- raid: rebuild rate, parity speed ----------------------------------------------------

# Offline rebuild (no daemon holds the array, so `raid-sim replace` rebuilds by itself) of
# one member of a 4-member ~1 GiB volume about 7/8 full, unthrottled (--rate 0), after
# drop_caches: member data bytes rebuilt (stripes x chunk) per second of `raid-sim replace`.
rebuild_rate() {
    echo "== raid: unthrottled rebuild of one member of a 4-member 1 GiB array"
    local vol="$work/rebuild.vol" mnt="$work/rebuild.mnt"
    "$smlogfs" mkfs "$vol" --size 1G --ring 64M --disks 4 >/dev/null || return 1
    mkdir -p "$mnt"
    "$smlogfs" mount "$vol" "$mnt" || return 1
    fio --name=fill --filename="$mnt/fill.dat" --rw=write --bs=1M --size=896M \
        --ioengine=psync --end_fsync=1 >/dev/null 2>&1
    "$smlogfs" umount "$mnt" || return 1
    local st bytes out rc t0 ms
    st="$("$raidsim" status "$vol" --json 2>/dev/null)"
    bytes=$(jq '.stripes * .chunk_bytes' <<<"$st")
    out="$("$raidsim" fail "$vol" --member 1 2>&1)" || { echo "   raid-sim fail: $out" >&2; return 1; }
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$EPOCHREALTIME
    out="$("$raidsim" replace "$vol" --member 1 --rate 0 2>&1)"
    rc=$?
    ms=$(ms_since "$t0")
    if [ "$rc" -ne 0 ]; then
        echo "   raid-sim replace FAILED (exit $rc):" >&2
        tail -5 <<<"$out" >&2
        return 1
    fi
    R[raid,rebuild_mib_s]=$(awk -v b="$bytes" -v ms="$ms" 'BEGIN { printf "%d", b / 1048576 / (ms / 1000) }')
    echo "   $(tail -1 <<<"$(grep -v '^\[' <<<"$out")")"
    echo "   rebuilt $((bytes / 1048576)) MiB of member 1 in $ms ms: ${R[raid,rebuild_mib_s]} MiB/s"
    "$raidsim" status "$vol" --json 2>/dev/null | jq -r '"   after: degraded \(.degraded), rebuild \(.rebuild)"'
    out="$("$raidsim" scrub "$vol" --no-repair 2>&1)"
    rc=$?
    echo "   scrub --no-repair after the rebuild: exit $rc, $(grep -v '^\[' <<<"$out" | tail -1)"
}

xor_speed() {
    echo "== raid: raid-sim bench (XOR parity, crc32c)"
    local out
    out="$("$raidsim" bench --disks "$raid_disks" 2>&1)"
    grep -v '^\[' <<<"$out" | sed 's/^/   /'
    R[raid,xor_gb_s]=$(sed -n 's/^xor parity: \([0-9.]*\) GB\/s.*per core.*/\1/p' <<<"$out" | head -1)
    # raid-sim's own volume-vs-plain-file comparison (256 MiB, mostly page cache): for information.
    mkdir -p "$work/raidsim-bench"
    out="$("$raidsim" bench --disks "$raid_disks" --dir "$work/raidsim-bench" 2>&1)"
    grep -v '^\[' <<<"$out" | grep -E 'native|raid5|rebuild|sequential' | sed 's/^/   raid-sim bench --dir: /'
    rm -rf "$work/raidsim-bench"
}

# --- run ---------------------------------------------------------------------------------

echo "== work directory $work ($(df -h --output=source,fstype "$work" | tail -1)); targets: ${targets[*]}"
if has_target mirror; then start_agent || exit 1; fi
for t in "${targets[@]}"; do
    echo "== $t: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if ! setup_target "$t"; then echo "setting up $t failed" >&2; exit 1; fi
    run_workloads "$t"
    teardown_target "$t" || echo "tearing down $t failed" >&2
done
if has_target smlogfs; then recovery_time || echo "recovery measurement failed" >&2; fi
if has_target mirror; then
    mirror_recovery_time || echo "mirror recovery measurement failed" >&2
    takeover_time || echo "takeover measurement failed" >&2
fi
if has_target raid; then
    rebuild_rate || echo "rebuild measurement failed" >&2
    xor_speed
fi

# --- report ------------------------------------------------------------------------------

ratio() { # A/B with two decimals, "-" when either is missing or B is 0
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
diff_us() { # A-B, "-" when either is missing
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-") print "-"; else printf "%+d", a - b }'
}
mark() { # VALUE OP GOAL: ok when VALUE OP GOAL holds (OP ge or le), LOW/SLOW otherwise
    awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN {
        if (v == "-" || v == "" || v ~ /!$/) { print "-"; exit }
        if (op == "ge") print (v + 0 >= g + 0) ? "ok" : "LOW"; else print (v + 0 <= g + 0) ? "ok" : "SLOW" }'
}

# Goals on a cell: G[target,key] = minimum ratio vs native; GM[key] = goal of the mirror vs
# smlogfs without mirror (a minimum ratio, or for the p99 rows a maximum added latency in us).
declare -A G GM
G[smlogfs,seq_write]=0.7; G[smlogfs,cold_read]=0.8; G[smlogfs,rand_fsync]=0.8
G[smlogfs,fs_mark]=0.5; G[smlogfs,dbench]=0.5
G[raid,seq_write]=0.6; G[raid,cold_read]=0.8
GM[seq_write]=0.8; GM[rand_fsync]=0.8; GM[write_p99_us]=100
rows=(
    "seq_write|seq write 1M+fsync (MiB/s)"
    "seq_write_512k|seq write 512K+fsync (MiB/s)"
    "cold_read|cold seq read (MiB/s)"
    "rand_fsync|4K write+fsync (IOPS)"
    "write_p99_us|  p99 of the write (us)"
    "fsync_p99_us|  p99 of the fsync (us)"
    "rand_read|4K random read (IOPS)"
    "fs_mark|fs_mark creates (files/s)"
    "dbench|dbench 4 clients (MB/s)"
)
others=()
for t in "${targets[@]}"; do [ "$t" == native ] || others+=("$t"); done

echo
# A "/pass" column after each target but the passthrough itself, when it ran.
vs_pass() { [ "$1" != passthrough ] && has_target passthrough; }

echo "== results (ratio: vs native; /pass: vs the FUSE passthrough; for mirror also vs smlogfs"
echo "   without mirror; p99 rows: added us vs the passthrough and vs smlogfs)"
printf '%-30s %11s' "workload" native
for t in "${others[@]}"; do
    printf ' %11s %-9s' "$t" "/native"
    if vs_pass "$t"; then printf ' %-9s' "/pass"; fi
    if [ "$t" == mirror ]; then printf ' %-10s' "/smlogfs"; fi
done
printf '\n'
for row in "${rows[@]}"; do
    IFS='|' read -r key label <<<"$row"
    printf '%-30s %11s' "$label" "${R[native,$key]:--}"
    for t in "${others[@]}"; do
        r="-"
        case "$key" in *_us) ;; *) r=$(ratio "${R[$t,$key]:-}" "${R[native,$key]:-}") ;; esac
        if [ -n "${G[$t,$key]:-}" ] && [ "$r" != "-" ]; then r="$r $(mark "$r" ge "${G[$t,$key]}")"; fi
        printf ' %11s %-9s' "${R[$t,$key]:--}" "$r"
        if vs_pass "$t"; then
            case "$key" in
            *_us) r=$(diff_us "${R[$t,$key]:-}" "${R[passthrough,$key]:-}") ;;
            *) r=$(ratio "${R[$t,$key]:-}" "${R[passthrough,$key]:-}") ;;
            esac
            printf ' %-9s' "$r"
        fi
        if [ "$t" == mirror ]; then
            case "$key" in
            *_us) r=$(diff_us "${R[mirror,$key]:-}" "${R[smlogfs,$key]:-}") ;;
            *) r=$(ratio "${R[mirror,$key]:-}" "${R[smlogfs,$key]:-}") ;;
            esac
            if [ -n "${GM[$key]:-}" ] && [ "$r" != "-" ]; then
                case "$key" in *_us) r="$r $(mark "$r" le "${GM[$key]}")" ;; *) r="$r $(mark "$r" ge "${GM[$key]}")" ;; esac
            fi
            printf ' %-10s' "$r"
        fi
    done
    printf '\n'
done
for t in "${others[@]}"; do
    printf '%-30s %11s %11s\n' "daemon RSS max/peak (MiB) $t" - "${R[$t,rss_mib]:--}/${R[$t,hwm_mib]:--}"
done

# The project's performance targets, one line each: measured figure, goal, ok/LOW/SLOW ("-":
# not measured in this run; a figure ending in "!" failed its correctness check).
echo
echo "== targets"
target_line() { # LABEL FIGURE UNIT OP GOAL
    local m
    m=$(mark "$2" "$4" "$5")
    printf '%-52s %10s %-5s %-9s %s\n' "$1" "$2" "$3" "$( [ "$4" == ge ] && echo ">= $5" || echo "<= $5")" "$m"
}
core_line() { # TARGET KEY LABEL [REF]
    local ref="${4:-native}" goal
    if [ "$ref" == native ]; then goal="${G[$1,$2]}"; else goal="${GM[$2]}"; fi
    target_line "$1 $3 vs $ref" "$(ratio "${R[$1,$2]:-}" "${R[$ref,$2]:-}")" x ge "$goal"
}
if has_target smlogfs; then
    core_line smlogfs seq_write "seq write"
    core_line smlogfs cold_read "cold seq read"
    core_line smlogfs rand_fsync "4K write+fsync IOPS"
    core_line smlogfs fs_mark "fs_mark files/s"
    core_line smlogfs dbench "dbench MB/s"
    target_line "smlogfs recovery after kill -9, full 64 MiB ring" "${R[smlogfs,recovery_ms]:--}" ms le 1000
fi
if has_target smlogfs && has_target passthrough; then
    # No goal yet: what smlogfs keeps of what FUSE alone allows, for information.
    for row in "seq_write|seq write" "cold_read|cold seq read" "rand_fsync|4K write+fsync IOPS" \
        "fs_mark|fs_mark files/s" "dbench|dbench MB/s"; do
        IFS='|' read -r key label <<<"$row"
        printf '%-52s %10s %-5s %-9s %s\n' "smlogfs $label vs passthrough" \
            "$(ratio "${R[smlogfs,$key]:-}" "${R[passthrough,$key]:-}")" x "" "info"
    done
fi
if has_target raid; then
    core_line raid seq_write "seq write"
    core_line raid cold_read "cold seq read"
    target_line "raid rebuild (${R[raid,rebuild_mib_s]:--} MiB/s) vs native seq write" \
        "$(ratio "${R[raid,rebuild_mib_s]:-}" "${R[native,seq_write]:-}")" x ge 0.5
    target_line "raid XOR parity per core" "${R[raid,xor_gb_s]:--}" GB/s ge 5
fi
if has_target mirror; then
    core_line mirror seq_write "seq write" smlogfs
    printf '%-52s %10s %-5s\n' "  (the same with 512 KiB writes, for information)" \
        "$(ratio "${R[mirror,seq_write_512k]:-}" "${R[smlogfs,seq_write_512k]:-}")" x
    core_line mirror rand_fsync "4K write+fsync IOPS" smlogfs
    target_line "mirror added p99 per acknowledged write" \
        "$(diff_us "${R[mirror,write_p99_us]:-}" "${R[smlogfs,write_p99_us]:-}")" us le 100
    printf '%-52s %10s %-5s %-9s %s\n' "  (added p99 of the fsync, for information)" \
        "$(diff_us "${R[mirror,fsync_p99_us]:-}" "${R[smlogfs,fsync_p99_us]:-}")" us "" ""
    target_line "mirror recovery from the agent, full 64 MiB ring" "${R[mirror,recovery_ms]:--}" ms le 2000
    target_line "mirror takeover (+ detection, not measured)" "${R[mirror,takeover_ms]:--}" ms le 3000
fi
