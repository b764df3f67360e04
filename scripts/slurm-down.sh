#!/usr/bin/env bash
# Tear down the test cluster started by scripts/slurm-up.sh: slurmd, slurmctld
# and munged, by the pids they recorded.  Leaves config, key and the state dir
# in place (so the next slurm-up.sh is quick) and exits 0 when nothing runs.
#
#   NBPIPE_SLURM_DIR   same directory slurm-up.sh used (default /tmp/nbpipe-slurm)
set -euo pipefail

STATE_DIR=${NBPIPE_SLURM_DIR:-/tmp/nbpipe-slurm}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { echo "slurm-down: $*" >&2; }

# Pid from a pid file if it names a live process with that command name;
# a stale file (daemon crashed, pid reused) yields nothing.
pid_of() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        echo "$pid"
    fi
}

# TERM, wait, then KILL the given pids; returns once all are gone.
stop_pids() {
    local name=$1; shift
    local pids=("$@") p i left
    (( ${#pids[@]} )) || return 0
    log "stopping $name (pid ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait_gone 100 "${pids[@]}" && return 0   # up to 10 s for a clean exit
    log "$name still running after 10 s, killing"
    kill -KILL "${left[@]}" 2>/dev/null || true
    wait_gone 50 "${pids[@]}" && return 0
    log "WARNING: $name pid ${left[*]} would not die"
}

# Wait up to $1 tenths of a second for the given pids to be gone; the ones still
# there are left in $left. Succeeds when none is.
wait_gone() {
    local tries=$1; shift
    local i p
    for i in $(seq 1 "$tries"); do
        left=()
        for p in "$@"; do
            [[ -d /proc/$p ]] && left+=("$p")
        done
        (( ${#left[@]} )) || return 0
        sleep 0.1
    done
    return 1
}

# Stop one daemon: by its pid file, or, only when there is no pid file at all
# (state dir wiped, or started some other way), by exact process name.
stop_daemon() {
    local name=$1 pidfile=$2 pid
    local -a pids=()
    if [[ -e $pidfile ]]; then
        pid=$(pid_of "$pidfile" "$name")
        [[ -n $pid ]] && pids=("$pid")
    else
        mapfile -t pids < <(pgrep -x "$name" || true)
    fi
    stop_pids "$name" "${pids[@]}"
    rm -f "$pidfile"
}

ctld_pid=$(pid_of "$STATE_DIR/slurmctld.pid" slurmctld)
slurmd_pid=$(pid_of "$STATE_DIR/slurmd.pid" slurmd)

# Cancel jobs while both daemons can still act on it, so their step daemons
# (slurmstepd) and the job processes end instead of being orphaned.
if [[ -n $ctld_pid && -n $slurmd_pid ]]; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for i in $(seq 1 50); do
            [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null || true) ]] && break
            sleep 0.2
        done
    fi
fi

stop_daemon slurmd "$STATE_DIR/slurmd.pid"
stop_daemon slurmctld "$STATE_DIR/slurmctld.pid"

# Step daemons outlive slurmd if a job could not be cancelled; with slurmd
# gone nothing would ever reap them.
mapfile -t steps < <(pgrep -x slurmstepd || true)
stop_pids slurmstepd "${steps[@]}"

# A munged that slurm-up.sh found already running is not ours to stop.
if [[ -e $STATE_DIR/munge/external ]]; then
    log "leaving the pre-existing munged running"
else
    stop_daemon munged "$STATE_DIR/munge/munged.pid"
fi

echo "slurm down"
