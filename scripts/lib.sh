# Shell helpers shared by the scripts (sourced, not run).

# True once no thread of PID runs any more: a killed daemon's main thread can be a zombie while
# its other threads still exit (and hold the volume lock); nobody here reaps it.
pid_gone() {
    local s st
    for s in /proc/"$1"/task/*/stat; do
        [ -e "$s" ] || continue
        st="$(sed 's/.*) //' "$s" 2>/dev/null | cut -d' ' -f1)"
        case "$st" in Z | X | "") ;; *) return 1 ;; esac
    done
    return 0
}

# Waits until PID is gone (see pid_gone), at most SECONDS (default 60); fails after that.
wait_pid_gone() {
    local i limit=$(( ${2:-60} * 100 ))
    for ((i = 0; i < limit; i++)); do
        if pid_gone "$1"; then return 0; fi
        sleep 0.01
    done
    echo "process $1 did not exit within ${2:-60} s" >&2
    return 1
}

# The pids a crash of VOLDIR's host kills: its supervisor (VOLDIR/supervisor.pid) first, so
# that it restarts nothing, then its serving daemon (first line of VOLDIR/daemon.pid). Killing
# only the daemon is a pause, not a crash: the supervisor starts a new one on the same mount.
crash_pids() {
    local f
    for f in "$1/supervisor.pid" "$1/daemon.pid"; do
        [ -f "$f" ] && head -1 "$f"
    done
    return 0
}

# kill -9 of VOLDIR's supervisor and daemon (a host crash, as far as the mount can tell);
# returns once every thread of both is gone (at most SECONDS each, default 30).
crash_volume() {
    local pid pids
    pids="$(crash_pids "$1")"
    [ -n "$pids" ] || { echo "no supervisor.pid or daemon.pid in $1" >&2; return 1; }
    for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in $pids; do wait_pid_gone "$pid" "${2:-30}" || return 1; done
}

# Releases what a benchmark left under WORK: lazily unmounts every FUSE mount below it, then
# kill -9s each process named in WORK/*.vol/supervisor.pid or daemon.pid that still runs one of
# WORK/bin/PROGRAMS (an extended regex such as "smlogfs|passthrough"): a pid file can outlive
# its process, and the pid may then belong to another.
release_work() {
    local work="$1" programs="$2" m pidf pid
    while read -r _ m _; do
        case "$m" in "$work"/*) fusermount3 -u -z "$m" 2>/dev/null || true ;; esac
    done </proc/mounts
    for pidf in "$work"/*.vol/supervisor.pid "$work"/*.vol/daemon.pid; do
        [ -f "$pidf" ] || continue
        pid="$(head -1 "$pidf")"
        [ -n "$pid" ] || continue
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -Eq "^$work/bin/($programs) "; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

# Waits up to 10 s for a line matching the extended regex PATTERN in FILE, written by PID as
# it starts; fails as soon as PID exits, or when the time is up.
wait_for_line() {
    local pid="$1" file="$2" pattern="$3" i
    for ((i = 0; i < 500; i++)); do
        if grep -Eq "$pattern" "$file" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# Exits 2, naming the first TOOL not on PATH and the PACKAGES that install it (apt-get).
require_tools() {
    local packages="$1" tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $packages)" >&2; exit 2; }
    done
}

# cargo build --release ARGS..., showing its last line; exits 1 saying FAILED when it fails.
build_release() {
    local failed="$1"
    shift
    cargo build --release "$@" 2>&1 | tail -1
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "$failed" >&2; exit 1; }
}
