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
