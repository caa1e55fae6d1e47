# Shared by start.sh and stop.sh (sourced, not run).
# shellcheck shell=bash

STATE=${HPCJOB_TEST_CLUSTER_DIR:-/var/tmp/hpcjob-test-cluster}
PIDS=$STATE/pids
# shellcheck disable=SC2034  # used by start.sh
LOGS=$STATE/log
# Slurm nodes, all on this host, one slurmd each. A daemon is named by what the kernel calls it
# (/proc/PID/stat), with @NODE for a slurmd: munged … slurmd@tcn1 … sshd.
# shellcheck disable=SC2034  # used by start.sh
NODES=(tcn1 gcn1 hcn1 tcn2 gcn2)

log() { printf 'hpcjob-test-cluster: %s\n' "$*" >&2; }

# alive PID NAME: PID is running (not a zombie: dead daemons linger as zombies for seconds here,
# so `kill -0` would say yes) and is the program NAME (not a recycled pid).
alive() {
    local pid=$1 name=$2 stat comm state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    comm=${stat#*(}
    comm=${comm%)*}
    state=${stat##*) }
    state=${state%% *}
    [[ $comm == "$name" && $state != Z && $state != X ]]
}

# our_pid NAME: the pid start.sh recorded for NAME (empty if none).
our_pid() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

# ours_alive NAME: the NAME that start.sh started is running.
ours_alive() { alive "$(our_pid "$1")" "${1%@*}"; }

# stop_ours NAME: stop the NAME that start.sh started (TERM, then KILL), never any other.
stop_ours() {
    local name=$1 comm=${1%@*} pid i
    pid=$(our_pid "$name")
    if alive "$pid" "$comm"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            alive "$pid" "$comm" || break
            sleep 0.1
        done
        if alive "$pid" "$comm"; then
            log "$name (pid $pid) ignored TERM for 15 s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                alive "$pid" "$comm" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$PIDS/$name.pid"
}
