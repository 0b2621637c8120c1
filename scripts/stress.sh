#!/usr/bin/env bash
# Parallel shell workloads on a mounted file system, optionally with kill -9 / remount cycles,
# verified at the end against a shadow copy on the host and a manifest of completed steps.
#
#   scripts/stress.sh MOUNTPOINT [--seconds S] [--workers N] [--kill-every S VOLDIR]
#
# Each worker owns MOUNTPOINT/stress-PID/wK and a shadow directory on the host. A step (cp -r,
# tar, dd, mv, rm, ln, ln -s, chmod, truncate, setfattr) runs on the mount; once it succeeded
# it is repeated on the shadow and logged to the manifest. With --kill-every, the daemon
# (VOLDIR/daemon.pid) is killed with SIGKILL every S seconds and remounted with
# `smlogfs mount VOLDIR MOUNTPOINT`. A step interrupted by a kill is resolved:
#   atomic steps (one syscall: mv, rm of a file, ln, chmod, truncate, setfattr, a <=64 KiB dd)
#     must show either the old or the new state;
#   steps that create a fresh name (cp -r, tar, multi-block dd) are removed on both sides;
#   rm -rf and chmod -R are completed on both sides.
# At the end (after a last kill/remount when killing) every worker directory must equal its
# shadow: names, types, modes, link counts, sizes, contents (sha256), symlink targets, user.*
# xattrs. Prints a summary; exits 1 on any mismatch or unexplained error.
#
# Environment: SMLOGFS (binary, default: smlogfs in PATH or target/release/smlogfs),
# STRESS_KEEP=1 keeps the work and shadow directories.
# Needs: coreutils, findutils, tar, attr (setfattr/getfattr).
set -uo pipefail

usage() {
    echo "usage: $0 MOUNTPOINT [--seconds S] [--workers N] [--kill-every S VOLDIR]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
mnt="$(realpath "$1")"
shift
seconds=30
workers=4
kill_every=""
voldir=""
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) seconds="${2:?}"; shift 2 ;;
    --workers) workers="${2:?}"; shift 2 ;;
    --kill-every) kill_every="${2:?}"; voldir="$(realpath "${3:?}")"; shift 3 ;;
    *) usage ;;
    esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$workers" =~ ^[0-9]+$ ]] || usage
[ -z "$kill_every" ] || [[ "$kill_every" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
[ -d "$mnt" ] || { echo "$mnt is not a directory" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/scripts/lib.sh"   # require_tools, pid_gone, crash_volume
require_tools "attr coreutils tar" setfattr getfattr tar sha256sum shuf timeout

smlogfs="${SMLOGFS:-$(command -v smlogfs || echo "$repo/target/release/smlogfs")}"
if [ -n "$kill_every" ]; then
    [ -x "$smlogfs" ] || { echo "smlogfs binary not found at $smlogfs (set SMLOGFS)" >&2; exit 2; }
    [ -f "$voldir/daemon.pid" ] || { echo "$voldir/daemon.pid not found" >&2; exit 2; }
fi

state="$(mktemp -d -t smlogfs-stress.XXXXXX)"
work="$mnt/stress-$$"
manifest="$state/manifest"
epoch_file="$state/epoch" # even: mounted; odd: a kill/remount is under way
echo 0 >"$epoch_file"
: >"$manifest"
mkdir -p "$state/shadow" "$state/template" "$state/blobs"
if ! mkdir "$work"; then
    echo "cannot create $work" >&2
    exit 1
fi

log() { echo "$(date +%T) $*"; }

# A small tree for cp -r and tar: files of several sizes, a subdirectory, a symlink.
make_template() {
    local t="$state/template"
    mkdir -p "$t/sub/deeper"
    head -c 1000 /dev/urandom >"$t/small"
    head -c 70000 /dev/urandom >"$t/medium"
    head -c 300000 /dev/urandom >"$t/sub/large"
    head -c 4096 /dev/urandom >"$t/sub/deeper/page"
    : >"$t/empty"
    ln -s small "$t/link-to-small"
    chmod 640 "$t/medium"
    chmod 700 "$t/sub/deeper"
}
make_template

# The state of ROOT/REL in words: every entry below it with type, mode, link count, size (not
# for directories) and symlink target, file hashes, and user.* xattrs; "absent" if missing.
sig() {
    local root="$1" rel="$2"
    (
        cd "$root" || exit 1
        if [ ! -e "$rel" ] && [ ! -L "$rel" ]; then
            echo absent
            exit 0
        fi
        find "$rel" \( -type d -printf '%y %m %n - %p\n' \) -o -printf '%y %m %n %s %p -> %l\n' |
            LC_ALL=C sort
        find "$rel" -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
        getfattr -h -R -d -m '^user\.' -e hex "$rel" 2>/dev/null |
            awk '/^# file: /{f=substr($0,9); next} NF{print f" "$0}' | LC_ALL=C sort
    )
}

same() { # same REL...: the mount and the shadow agree on every REL
    local rel
    for rel in "$@"; do
        [ "$(sig "$W" "$rel")" == "$(sig "$S" "$rel")" ] || return 1
    done
}

epoch() { cat "$epoch_file"; }
set_epoch() { echo "$1" >"$epoch_file.new" && mv "$epoch_file.new" "$epoch_file"; } # atomic

wait_mounted() { # until the epoch is even and the worker dir answers; 120 s at most
    local i
    for i in $(seq 1 2400); do
        if [ $(($(epoch) % 2)) -eq 0 ] && stat "$W" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# Picks a random existing entry (relative to the worker dir) of a find type, or fails.
pick() { (cd "$S" && find . -mindepth 1 -maxdepth 3 "$@" -printf '%P\n' | shuf -n 1); }

# One worker. Globals per worker: W (mount dir), S (shadow dir), K (worker number).
worker() {
    K="$1"
    W="$work/w$K"
    S="$state/shadow/w$K"
    RANDOM=$((K * 7919 + $$))
    mkdir -p "$W" "$S" || { echo "w$K ERROR cannot mkdir $W" >>"$manifest"; return; }
    local deadline=$((SECONDS + seconds)) n=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        n=$((n + 1))
        local kind policy desc targets=() mount_cmd shadow_cmd step=""
        local r=$((RANDOM % 100)) e f d
        # Keep each worker's tree under about 48 MiB: prune with rm -r when it is larger.
        if [ $((n % 16)) -eq 0 ] && [ "$(du -sm "$S" | cut -f1)" -gt 48 ]; then r=55; fi
        case $r in
        [0-9])
            kind=cp policy=undo targets=("c$n")
            step="cp -r '$state/template' '{root}/c$n'" ;;
        1[0-7])
            kind=tar policy=undo targets=("t$n")
            step="mkdir '{root}/t$n' && tar -C '$state/template' -cf - . | tar -C '{root}/t$n' -xf -" ;;
        1[89] | 2[0-7])
            kind=dd-new policy=undo targets=("b$n")
            head -c $(((RANDOM % 40 + 1) * 16384)) /dev/urandom >"$state/blobs/w$K"
            mount_cmd="dd if='$state/blobs/w$K' of='$W/b$n' bs=64k conv=fsync status=none"
            shadow_cmd="cp '$state/blobs/w$K' '$S/b$n'" ;;
        2[89] | 3[0-9])
            f="$(pick -type f)"
            [ -n "$f" ] || continue
            local size off len
            size=$(stat -c %s "$S/$f")
            len=$((RANDOM % 65536 + 1))
            off=$(((RANDOM * 32768 + RANDOM) % (size + 4096)))
            head -c "$len" /dev/urandom >"$state/blobs/w$K"
            kind=dd-overwrite policy=atomic targets=("$f")
            step="dd if='$state/blobs/w$K' of='{root}/$f' bs=$len count=1 seek=$off oflag=seek_bytes conv=notrunc status=none" ;;
        4[0-9])
            e="$(pick)"
            [ -n "$e" ] || continue
            d="$(dirname "$e")"
            kind=mv policy=atomic targets=("$e" "$d/m$n")
            step="mv '{root}/$e' '{root}/$d/m$n'" ;;
        5[0-4])
            e="$(pick ! -type d)"
            [ -n "$e" ] || continue
            kind=rm policy=atomic targets=("$e")
            step="rm -f '{root}/$e'" ;;
        5[5-8])
            e="$(pick -type d)"
            [ -n "$e" ] || continue
            kind=rm-r policy=redo targets=("$e")
            step="rm -rf '{root}/$e'" ;;
        59 | 6[0-5])
            f="$(pick -type f)"
            [ -n "$f" ] || continue
            kind=ln policy=atomic targets=("$f" "h$n")
            step="ln '{root}/$f' '{root}/h$n'" ;;
        6[6-9])
            kind=ln-s policy=atomic targets=("s$n")
            step="ln -s 'target-$n' '{root}/s$n'" ;;
        7[0-6])
            e="$(pick ! -type l)"
            [ -n "$e" ] || continue
            local mode
            if [ -d "$S/$e" ]; then mode=$((RANDOM % 2 ? 755 : 750)); else mode=$((RANDOM % 2 ? 644 : 600)); fi
            kind=chmod policy=atomic targets=("$e")
            step="chmod $mode '{root}/$e'" ;;
        7[7-9])
            e="$(pick -type d)"
            [ -n "$e" ] || continue
            kind=chmod-R policy=redo targets=("$e")
            step="chmod -R u+rwX,g+r,o-w '{root}/$e'" ;;
        8[0-9])
            f="$(pick -type f)"
            [ -n "$f" ] || continue
            local sz=$(((RANDOM * 32768 + RANDOM) % 400000))
            kind=truncate policy=atomic targets=("$f")
            step="truncate -s $sz '{root}/$f'" ;;
        *)
            e="$(pick ! -type l)"
            [ -n "$e" ] || continue
            local val="v$n-$RANDOM" an="user.k$((RANDOM % 4))"
            kind=setfattr policy=atomic targets=("$e")
            step="setfattr -n $an -v '$val' '{root}/$e'" ;;
        esac
        # Most steps are written once, with {root} for the tree: on the mount, on the shadow.
        if [ -n "$step" ]; then
            mount_cmd="${step//"{root}"/"$W"}"
            shadow_cmd="${step//"{root}"/"$S"}"
        fi
        desc="w$K step $n $kind ${targets[*]}"
        # Do not start a step while a kill/remount is under way; the epoch read here is the
        # one the step started in.
        local before after
        while :; do
            before="$(epoch)"
            [ $((before % 2)) -ne 0 ] || break
            sleep 0.02
        done
        if timeout 300 bash -c "$mount_cmd" >>"$state/w$K.log" 2>&1; then
            if ! bash -c "$shadow_cmd" >>"$state/w$K.log" 2>&1; then
                echo "$desc ERROR shadow step failed: $shadow_cmd" >>"$manifest"
                continue
            fi
            echo "$desc OK" >>"$manifest"
            continue
        fi
        after="$(epoch)"
        if [ "$before" == "$after" ]; then
            echo "$desc ERROR failed with no kill: $mount_cmd (see $state/w$K.log)" >>"$manifest"
            # Resynchronise the shadow with what the mount shows, so later steps stay meaningful.
            wait_mounted
            continue
        fi
        if ! wait_mounted; then
            echo "$desc ERROR the mount did not come back" >>"$manifest"
            return
        fi
        case $policy in
        atomic)
            if same "${targets[@]}"; then
                echo "$desc INTERRUPTED not-applied" >>"$manifest"
            else
                bash -c "$shadow_cmd" >>"$state/w$K.log" 2>&1
                if same "${targets[@]}"; then
                    echo "$desc INTERRUPTED applied" >>"$manifest"
                else
                    echo "$desc MISMATCH interrupted atomic step is neither before nor after: $mount_cmd" >>"$manifest"
                    for e in "${targets[@]}"; do
                        diff <(sig "$W" "$e") <(sig "$S" "$e") | head -20 >>"$manifest"
                    done
                    # Adopt the mount's state so the run goes on.
                    for e in "${targets[@]}"; do rm -rf "${S:?}/$e"; [ -e "$W/$e" ] && cp -a "$W/$e" "$S/$e"; done
                fi
            fi ;;
        undo)
            rm -rf "${W:?}/${targets[0]}" "${S:?}/${targets[0]}"
            echo "$desc INTERRUPTED undone" >>"$manifest" ;;
        redo)
            bash -c "$mount_cmd" >>"$state/w$K.log" 2>&1
            bash -c "$shadow_cmd" >>"$state/w$K.log" 2>&1
            echo "$desc INTERRUPTED redone" >>"$manifest" ;;
        esac
    done
}

kill_and_remount() {
    local pid e
    pid="$(head -1 "$voldir/daemon.pid")"
    e="$(epoch)"
    set_epoch $((e + 1))
    # The supervisor and the daemon: killing the daemon alone is a pause (the supervisor
    # restarts it on the same mount), not the crash-and-remount this cycle is about.
    crash_volume "$voldir" 20 || true
    local t0=$EPOCHREALTIME
    if ! "$smlogfs" mount "$voldir" "$mnt" >>"$state/mount.log" 2>&1; then
        echo "KILL remount FAILED (see $state/mount.log)" >>"$manifest"
        tail -20 "$state/mount.log"
        return 1
    fi
    echo "KILL pid $pid remounted in $(awk "BEGIN{printf \"%.0f\", ($EPOCHREALTIME - $t0) * 1000}") ms" >>"$manifest"
    set_epoch $((e + 2))
}

killer() {
    local deadline=$((SECONDS + seconds))
    while :; do
        sleep "$kill_every"
        [ "$SECONDS" -lt "$deadline" ] || break
        kill_and_remount || { echo 1 >"$state/killer-failed"; break; }
    done
}

log "stress: $workers workers for ${seconds}s in $work${kill_every:+, kill -9 every ${kill_every}s}"
log "state, shadow and manifest in $state"
pids=()
for k in $(seq 1 "$workers"); do
    worker "$k" &
    pids+=($!)
done
killer_pid=""
if [ -n "$kill_every" ]; then
    killer &
    killer_pid=$!
fi
wait "${pids[@]}"
[ -z "$killer_pid" ] || wait "$killer_pid"

if [ -n "$kill_every" ] && [ ! -e "$state/killer-failed" ]; then
    log "final kill -9 and remount before verifying"
    kill_and_remount || echo 1 >"$state/killer-failed"
fi

log "verifying"
mismatched=0
for k in $(seq 1 "$workers"); do
    if ! diff <(sig "$work/w$k" .) <(sig "$state/shadow/w$k" .) >"$state/diff.w$k" 2>&1; then
        mismatched=$((mismatched + 1))
        echo "MISMATCH w$k: mount (<) vs shadow (>):"
        head -40 "$state/diff.w$k"
    fi
done

ok=$(grep -c ' OK$' "$manifest")
applied=$(grep -c 'INTERRUPTED applied' "$manifest")
not_applied=$(grep -c 'INTERRUPTED not-applied' "$manifest")
undone=$(grep -c 'INTERRUPTED undone' "$manifest")
redone=$(grep -c 'INTERRUPTED redone' "$manifest")
kills=$(grep -c '^KILL pid' "$manifest")
step_mismatch=$(grep -c ' MISMATCH ' "$manifest")
errors=$(grep -c ' ERROR \|KILL remount FAILED' "$manifest")
entries=$(find "$state/shadow" -mindepth 1 | wc -l)
bytes=$(du -sb "$state/shadow" | cut -f1)

echo
echo "=== stress summary ==="
echo "duration:              ${seconds}s, $workers workers"
echo "steps completed:       $ok"
echo "kill -9 + remount:     $kills"
grep '^KILL pid' "$manifest" | awk '{print $(NF-1)}' | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "remount time (ms):     min %d, median %d, max %d\n", a[1], a[int((NR+1)/2)], a[NR]}'
echo "interrupted steps:     applied $applied, not applied $not_applied, undone $undone, redone $redone"
echo "final tree:            $entries entries, $bytes bytes"
echo "step mismatches:       $step_mismatch"
echo "errors:                $errors"
echo "worker dirs mismatched: $mismatched"
echo "manifest:              $manifest"
if [ "$errors" -gt 0 ] || [ "$step_mismatch" -gt 0 ]; then
    grep ' ERROR \| MISMATCH \|FAILED' "$manifest" | head -20
fi

if [ "$mismatched" -eq 0 ] && [ "$step_mismatch" -eq 0 ] && [ "$errors" -eq 0 ]; then
    echo "RESULT: PASS"
    if [ -z "${STRESS_KEEP:-}" ]; then
        rm -rf "$work" "$state"
    fi
    exit 0
fi
echo "RESULT: FAIL (work dir $work and state $state kept)"
exit 1
