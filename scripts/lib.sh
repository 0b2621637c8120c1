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
