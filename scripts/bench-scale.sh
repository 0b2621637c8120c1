#!/usr/bin/env bash
# Scale benchmarks of smlogfs: many files, and a large directory.
#
#   scripts/bench-scale.sh [--files N] [--dirs N] [--ls-files N] [--keep] [--no-build]
#
# (a) N files (default 1,000,000) in M directories (default 1,000) created on a smlogfs mount
#     (`mkfs --size 8G --disks 1 --ring 256M`), clean unmount, then timed: `smlogfs mount`
#     (it returns once the mount is ready; target < 3 s) and the daemon's VmRSS after it.
#     Then a few thousand ops are left in the ring (checkpoints off), kill -9, and the mount
#     that recovers is timed too (and VmRSS after it).
# (b) A directory of --ls-files entries (default 100,000) on smlogfs and on the native file
#     system of /var/tmp (its type is printed): `ls -f` and `ls -l` (to /dev/null), each cold
#     (drop_caches, and for smlogfs a remount before the run) and warm (run again at once);
#     median of 3 runs; target smlogfs/native <= 3x.
#
# Files are created with `touch` over `xargs`, two directories at a time (2 cores here).
# On exit (also Ctrl-C / SIGTERM) mounts and daemons are removed, and the work directory
# unless --keep. The load average is printed at the start of each part.
# Needs root (mounts, drop_caches) and fuse3, jq.
set -uo pipefail

files=1000000
dirs=1000
ls_files=100000
keep=""
build=1
usage() { echo "usage: $0 [--files N] [--dirs N] [--ls-files N] [--keep] [--no-build]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --files) files="${2:?}"; shift 2 ;;
    --dirs) dirs="${2:?}"; shift 2 ;;
    --ls-files) ls_files="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-build) build=""; shift ;;
    *) usage ;;
    esac
done
for n in "$files" "$dirs" "$ls_files"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || usage
done
[ "$dirs" -le "$files" ] || { echo "--dirs must not exceed --files" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench-scale.sh needs root (drop_caches, mounts)" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/scripts/lib.sh"   # require_tools, build_release, release_work
require_tools "fuse3 jq" jq fusermount3 xargs

cd "$repo"
if [ -n "$build" ]; then
    echo "== building release"
    build_release "build failed (--no-build uses the binary already built)" --bin smlogfs
fi
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
[ -x "$target_dir/release/smlogfs" ] || { echo "no binary at $target_dir/release/smlogfs" >&2; exit 1; }

work="$(mktemp -d /var/tmp/smlogfs-scale.XXXXXX)"
# A copy of the binary: a build started elsewhere during the run cannot swap it.
mkdir -p "$work/bin"
cp "$target_dir/release/smlogfs" "$work/bin/"
smlogfs="$work/bin/smlogfs"
declare -A R

cleanup() {
    release_work "$work" smlogfs
    if [ -z "$keep" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -------------------------------------------------------------------------------


daemon_pid() { head -1 "$1/daemon.pid" 2>/dev/null; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
rss_mib() { # VOLDIR: VmRSS of its daemon in MiB
    awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$(daemon_pid "$1")/status" 2>/dev/null
}
status_json() { "$smlogfs" status "$1" --json 2>/dev/null; }

timed_mount() { # KEY VOLDIR MNT [mount args]: R[KEY] = ms until `smlogfs mount` returned
    local key="$1" vol="$2" mnt="$3" t0
    shift 3
    t0=$EPOCHREALTIME
    if ! "$smlogfs" mount "$vol" "$mnt" "$@"; then
        echo "mount of $vol failed (above)" >&2
        return 1
    fi
    R[$key]=$(ms_since "$t0")
}

umount_wait() { # VOLDIR MNT: clean unmount, then until the daemon is gone
    local pid
    pid="$(daemon_pid "$1")"
    "$smlogfs" umount "$2" || return 1
    [ -z "$pid" ] || wait_pid_gone "$pid"
}

# Creates COUNT empty files f1..fCOUNT in DIR (one touch per xargs batch).
make_files() { # DIR COUNT [FIRST]
    local first="${3:-1}"
    (cd "$1" && seq -f 'f%.0f' "$first" "$((first + $2 - 1))" | xargs touch)
}

# --- (a) 1M files: mount time, RSS ----------------------------------------------------------

scale_mount() {
    local vol="$work/scale.vol" mnt="$work/scale.mnt"
    local base=$((files / dirs)) rem=$((files % dirs)) i n made=0 t0 next_report
    echo "== (a) $files files in $dirs directories on smlogfs (mkfs --size 8G --disks 1 --ring 256M); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$smlogfs" mkfs "$vol" --size 8G --disks 1 --ring 256M >/dev/null || return 1
    mkdir -p "$mnt"
    "$smlogfs" mount "$vol" "$mnt" || return 1
    (cd "$mnt" && seq -f 'd%04.0f' 1 "$dirs" | xargs mkdir) || return 1
    t0=$EPOCHREALTIME
    next_report=$((files / 20))
    [ "$next_report" -ge 1 ] || next_report=1
    local step=$next_report
    for ((i = 1; i <= dirs; i += 2)); do
        local pids=()
        n=$((base + (i <= rem ? 1 : 0)))
        make_files "$mnt/$(printf 'd%04d' "$i")" "$n" &
        pids+=($!)
        made=$((made + n))
        if [ $((i + 1)) -le "$dirs" ]; then
            n=$((base + (i + 1 <= rem ? 1 : 0)))
            make_files "$mnt/$(printf 'd%04d' $((i + 1)))" "$n" &
            pids+=($!)
            made=$((made + n))
        fi
        local p bad=""
        for p in "${pids[@]}"; do wait "$p" || bad=1; done
        if [ -n "$bad" ]; then
            echo "creating files failed in directory $i or $((i + 1))" >&2
            return 1
        fi
        if [ "$made" -ge "$next_report" ] || [ $((i + 1)) -ge "$dirs" ]; then
            awk -v m="$made" -v f="$files" -v a="$t0" -v b="$EPOCHREALTIME" \
                'BEGIN { printf "   %d/%d files (%d%%), %.0f s, %.0f files/s\n", m, f, m * 100 / f, b - a, m / (b - a) }'
            next_report=$((next_report + step))
        fi
    done
    R[create_s]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
    R[create_rate]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v m="$made" 'BEGIN { printf "%.0f", m / (b - a) }')
    local inodes expect=$((files + dirs + 1))
    inodes=$(status_json "$mnt" | jq .inodes)
    echo "   created in ${R[create_s]} s (${R[create_rate]} files/s); inodes $inodes (expected $expect); daemon VmRSS $(rss_mib "$vol") MiB"
    [ "$inodes" == "$expect" ] || echo "   WARNING: inode count $inodes, expected $expect" >&2

    local t
    t=$EPOCHREALTIME
    umount_wait "$vol" "$mnt" || return 1
    R[umount_ms]=$(ms_since "$t")
    echo "   clean umount (final checkpoint) took ${R[umount_ms]} ms"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    # Checkpoints off from here on, so the ops of the crash step below stay in the ring.
    timed_mount mount_ms "$vol" "$mnt" -o checkpoint_ms=3600000,checkpoint_fill=95 || return 1
    R[mount_rss]=$(rss_mib "$vol")
    inodes=$(status_json "$mnt" | jq .inodes)
    echo "   mount after clean umount (page cache dropped): ready in ${R[mount_ms]} ms; VmRSS ${R[mount_rss]} MiB; inodes $inodes"
    [ "$inodes" == "$expect" ] || echo "   WARNING: inode count after remount $inodes, expected $expect" >&2
    local last
    last="$(printf 'd%04d' "$dirs")"
    echo "   $last holds $(ls -f "$mnt/$last" | grep -c '^f') files"

    # A few thousand ops in the ring, then kill -9 and the recovering mount.
    mkdir "$mnt/crash" && make_files "$mnt/crash" 3000
    local st
    st=$(status_json "$mnt")
    echo "   3000 files created in /crash: $(jq -r '"ring \(.ring_used_bytes / 1024 | floor) KiB used, next seq \(.next_seq), \(.checkpoints_since_mount) checkpoint(s) since mount"' <<<"$st")"
    echo "   $("$smlogfs" inspect "$vol" 2>/dev/null | grep -E '^recovery would:')"
    crash_volume "$vol" || return 1
    sync
    echo 3 >/proc/sys/vm/drop_caches
    timed_mount crash_mount_ms "$vol" "$mnt" || return 1
    R[crash_rss]=$(rss_mib "$vol")
    inodes=$(status_json "$mnt" | jq .inodes)
    echo "   mount after kill -9 (page cache dropped): ready in ${R[crash_mount_ms]} ms; VmRSS ${R[crash_rss]} MiB; inodes $inodes (expected $((expect + 3001)))"
    [ "$inodes" == "$((expect + 3001))" ] || echo "   WARNING: inode count after recovery $inodes, expected $((expect + 3001))" >&2
    grep -E 'recovered ' "$vol/daemon.log" | tail -1 | sed 's/^/   log: /'
    umount_wait "$vol" "$mnt" || return 1
    t=$EPOCHREALTIME
    local out rc
    out="$("$smlogfs" fsck "$vol" 2>&1)"
    rc=$?
    R[fsck]="exit $rc in $(ms_since "$t") ms"
    echo "   fsck: ${R[fsck]}: $(tail -1 <<<"$out")"
}

# --- (b) ls of a large directory, smlogfs vs native ----------------------------------------

median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

ls_run() { # DIR MODE(-f|-l): ms of `ls MODE DIR >/dev/null`
    local t0
    t0=$EPOCHREALTIME
    if [ "$2" == -f ]; then ls -f "$1" >/dev/null; else ls -l "$1" >/dev/null; fi
    ms_since "$t0"
}

make_cold() { # WHERE (native|smlogfs)
    sync
    if [ "$1" == smlogfs ]; then
        umount_wait "$work/ls.vol" "$work/ls.mnt" || return 1
        "$smlogfs" mount "$work/ls.vol" "$work/ls.mnt" || return 1
    fi
    echo 3 >/proc/sys/vm/drop_caches
}

big_dir() {
    local where="$1"
    if [ "$where" == native ]; then echo "$work/native/big"; else echo "$work/ls.mnt/big"; fi
}

fill_big_dir() { # DIR: ls_files files, in batches of 10000 two at a time
    local d="$1" i n
    mkdir -p "$d"
    for ((i = 1; i <= ls_files; i += 20000)); do
        n=$((ls_files - i + 1)); [ "$n" -le 10000 ] || n=10000
        local pids=() p bad=""
        make_files "$d" "$n" "$i" &
        pids+=($!)
        if [ $((i + 10000)) -le "$ls_files" ]; then
            n=$((ls_files - i - 10000 + 1)); [ "$n" -le 10000 ] || n=10000
            make_files "$d" "$n" $((i + 10000)) &
            pids+=($!)
        fi
        for p in "${pids[@]}"; do wait "$p" || bad=1; done
        [ -z "$bad" ] || { echo "creating files in $d failed" >&2; return 1; }
    done
    [ "$(ls -f "$d" | grep -c '^f')" -eq "$ls_files" ] || { echo "$d: expected $ls_files files" >&2; return 1; }
}

ls_bench() {
    R[native_fs]="$(df --output=fstype "$work" | tail -1 | tr -d ' ')"
    echo "== (b) ls of a $ls_files-entry directory: smlogfs vs native (${R[native_fs]} at $work, $(df --output=source "$work" | tail -1 | tr -d ' ')); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$smlogfs" mkfs "$work/ls.vol" --size 2G --disks 1 --ring 64M >/dev/null || return 1
    mkdir -p "$work/ls.mnt" "$work/native"
    "$smlogfs" mount "$work/ls.vol" "$work/ls.mnt" || return 1
    local where mode temp a b c t0
    for where in native smlogfs; do
        t0=$EPOCHREALTIME
        fill_big_dir "$(big_dir "$where")" || return 1
        echo "   $where: $ls_files files created in $(ms_since "$t0") ms"
    done
    for mode in -f -l; do
        for where in native smlogfs; do
            a=(); for _ in 1 2 3; do make_cold "$where" || return 1; a+=("$(ls_run "$(big_dir "$where")" "$mode")"); done
            R[$where,ls$mode,cold]=$(median3 "${a[@]}")
            b=(); for _ in 1 2 3; do b+=("$(ls_run "$(big_dir "$where")" "$mode")"); done
            R[$where,ls$mode,warm]=$(median3 "${b[@]}")
            echo "   $where ls $mode: cold ${a[*]} ms (median ${R[$where,ls$mode,cold]}), warm ${b[*]} ms (median ${R[$where,ls$mode,warm]})"
        done
    done
    R[ls_rss]=$(rss_mib "$work/ls.vol")
    umount_wait "$work/ls.vol" "$work/ls.mnt"
}

# --- run -------------------------------------------------------------------------------------

echo "== work directory $work ($(df -h --output=source,fstype "$work" | tail -1))"
scale_mount || echo "(a) failed" >&2
ls_bench || echo "(b) failed" >&2

mark_le() { # VALUE LIMIT: ok when VALUE <= LIMIT, else SLOW; "-" without a value
    awk -v v="${1:-}" -v g="$2" 'BEGIN { if (v == "" || v == "-") print "-"; else print (v + 0 <= g + 0) ? "ok" : "SLOW" }'
}
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

echo
echo "== (a) $files files in $dirs directories"
printf '%-52s %12s %-10s %s\n' "measurement" "value" "target" ""
printf '%-52s %12s\n' "create through FUSE (files/s, s)" "${R[create_rate]:--} / ${R[create_s]:--}s"
printf '%-52s %12s\n' "clean umount, final checkpoint (ms)" "${R[umount_ms]:--}"
printf '%-52s %12s %-10s %s\n' "mount after clean umount (ms)" "${R[mount_ms]:--}" "< 3000" "$(mark_le "${R[mount_ms]:-}" 2999)"
printf '%-52s %12s\n' "  daemon VmRSS after it (MiB)" "${R[mount_rss]:--}"
printf '%-52s %12s %-10s %s\n' "mount after kill -9, 3000 creates in the ring (ms)" "${R[crash_mount_ms]:--}" "(< 3000)" "$(mark_le "${R[crash_mount_ms]:-}" 2999)"
printf '%-52s %12s\n' "  daemon VmRSS after it (MiB)" "${R[crash_rss]:--}"
printf '%-52s %12s\n' "fsck after the recovery" "${R[fsck]:--}"
echo
echo "== (b) ls of a $ls_files-entry directory, median of 3 (ms); native is ${R[native_fs]:-?} on the same disk"
printf '%-22s %10s %10s %8s %-8s %s\n' "run" "native" "smlogfs" "ratio" "target" ""
for mode in -f -l; do
    for temp in cold warm; do
        r=$(ratio "${R[smlogfs,ls$mode,$temp]:-}" "${R[native,ls$mode,$temp]:-}")
        printf '%-22s %10s %10s %8s %-8s %s\n' "ls $mode $temp" "${R[native,ls$mode,$temp]:--}" \
            "${R[smlogfs,ls$mode,$temp]:--}" "$r" "<= 3" "$(mark_le "$r" 3)"
    done
done
printf '%-22s %10s %10s\n' "daemon VmRSS (MiB)" - "${R[ls_rss]:--}"
