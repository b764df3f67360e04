#!/usr/bin/env bash
# Bring up a throwaway single-node Slurm cluster (munged + slurmctld + slurmd)
# on loopback, for nbpipe's tests and CI.  Needs root.  Safe to run again:
# if the cluster is already up it exits 0 at once.
#
#   NBPIPE_SLURM_DIR   state/spool/log/pid directory (default /tmp/nbpipe-slurm)
#   NBPIPE_SLURM_WAIT  seconds to wait for the node to become idle (default 60)
#
# Daemons are started by hand rather than through init scripts because the
# machines this runs on (containers, CI) have no systemd.
set -euo pipefail

STATE_DIR=${NBPIPE_SLURM_DIR:-/tmp/nbpipe-slurm}
WAIT_SECS=${NBPIPE_SLURM_WAIT:-60}
CONF=/etc/slurm/slurm.conf
# Marks the config as ours, so a re-run overwrites it without taking another
# "backup" of our own file over the user's original.
MARKER="# written by nbpipe scripts/slurm-up.sh"
PKGS=(slurmctld slurmd slurm-client munge)
# The daemons live in /usr/sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { echo "slurm-up: $*" >&2; }

die() {
    log "ERROR: $*"
    for f in "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" \
             /var/log/munge/munged.log; do
        if [[ -f $f ]]; then
            echo "---- last lines of $f ----" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
    exit 1
}

# True if the pid file names a live process with the expected command name
# (a bare kill -0 would be fooled by a recycled pid after a reboot/crash).
alive() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# Node state as sinfo reports it, or empty if slurmctld does not answer.
node_state() {
    timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1 || true
}

healthy_state() {
    # mixed/allocated are fine too: a re-run while tests have jobs in flight.
    [[ $1 == idle || $1 == mixed || $1 == allocated || $1 == completing ]]
}

pkgs_missing() {
    local p status
    for p in "${PKGS[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || echo "$p"
    done
}

install_pkgs() {
    local missing
    missing=$(pkgs_missing)
    if [[ -z $missing ]]; then return 0; fi
    log "installing: $(echo $missing)"
    mkdir -p "$STATE_DIR"
    local aptlog=$STATE_DIR/apt.log
    : >"$aptlog"

    # Package postinst scripts would try to start munge/slurm through
    # invoke-rc.d; we want to start them ourselves with our own config, so
    # deny service starts for the duration of the install (standard Debian
    # mechanism), unless the machine already has a policy of its own.
    local made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    local p need_update=
    # Lists may be absent (fresh image) or lack a package: only then update.
    for p in $missing; do
        if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            need_update=1
        fi
    done
    export DEBIAN_FRONTEND=noninteractive
    if [[ -n $need_update ]]; then
        apt-get -qq update >>"$aptlog" 2>&1 || { cat "$aptlog" >&2; die "apt-get update failed"; }
    fi
    # shellcheck disable=SC2086
    if ! apt-get install -y -qq --no-install-recommends $missing >>"$aptlog" 2>&1; then
        # Stale lists point at versions the mirror no longer has: refresh once.
        if [[ -z $need_update ]]; then
            log "install failed, retrying after apt-get update"
            apt-get -qq update >>"$aptlog" 2>&1 || true
            # shellcheck disable=SC2086
            apt-get install -y -qq --no-install-recommends $missing >>"$aptlog" 2>&1 \
                || { tail -n 30 "$aptlog" >&2; die "apt-get install failed"; }
        else
            tail -n 30 "$aptlog" >&2
            die "apt-get install failed"
        fi
    fi
    if [[ -n $made_policy ]]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

start_munge() {
    local pidfile=$STATE_DIR/munge/munged.pid
    if alive "$pidfile" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    # munged refuses to run unless these are owned by it and not writable by
    # others (and the key not readable by others).
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge "$STATE_DIR/munge"
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key

    # Some other munged (e.g. the distro's) may already serve the socket;
    # reuse it rather than fight over it.  down.sh then leaves it alone.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "reusing an already running munged"
        : >"$STATE_DIR/munge/external"
        return 0
    fi
    rm -f "$STATE_DIR/munge/external"
    # --force: take over a stale socket left by a munged that was killed hard.
    runuser -u munge -- munged --force --pid-file="$pidfile" \
        || die "munged failed to start"
    local i
    for i in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge -n | unmunge does not work"
}

write_conf() {
    local cpus mem_total mem
    # Not nproc: it honours OMP_NUM_THREADS, which a parent process (a Dask
    # cluster, a numerical library) may have set to 1 for itself.
    cpus=$(getconf _NPROCESSORS_ONLN)
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    # Below the real total: slurmd drains a node whose configured RealMemory
    # exceeds what it measures, and the kernel reports slightly less than
    # free's total on some machines.
    mem=$(( mem_total * 9 / 10 ))
    if (( mem < 1 )); then mem=1; fi

    mkdir -p /etc/slurm
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        local aside=$CONF.before-nbpipe
        [[ -e $aside ]] && aside=$CONF.before-nbpipe.$(date +%s)
        cp -p "$CONF" "$aside"
        log "kept the previous $CONF as $aside"
    fi
    cat >"$CONF.tmp" <<EOF
$MARKER
# Single-node test cluster on loopback; state lives in $STATE_DIR.
ClusterName=nbpipe
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# No mail on this machine; the default /bin/mail is missing and logs an error.
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ReturnToService=2
SlurmdTimeout=30
MessageTimeout=10
SlurmctldTimeout=30
InactiveLimit=0
KillWait=5
# Trust the node line below instead of draining the node when the hardware
# topology slurmd detects is laid out differently.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    chmod 644 "$CONF"
}

start_slurm() {
    mkdir -p "$STATE_DIR"/{state,spool,log}
    if ! alive "$STATE_DIR/slurmctld.pid" slurmctld; then
        # -c: start from clean state (no jobs from an earlier run survive);
        # -i: do not abort on unreadable state files.
        slurmctld -c -i || die "slurmctld failed to start"
    fi
    if ! alive "$STATE_DIR/slurmd.pid" slurmd; then
        # -N: our node is named localhost, not after the machine's hostname.
        slurmd -N localhost || die "slurmd failed to start"
    fi
}

wait_idle() {
    local deadline=$(( SECONDS + WAIT_SECS )) state last_resume=-100
    while (( SECONDS < deadline )); do
        state=$(node_state)
        if healthy_state "$state"; then
            echo "slurm up: sinfo says $state"
            return 0
        fi
        alive "$STATE_DIR/slurmctld.pid" slurmctld || die "slurmctld died"
        alive "$STATE_DIR/slurmd.pid" slurmd || die "slurmd died"
        case $state in
            down*|drain*|unknown*|fail*)
                # State=UNKNOWN or a leftover DOWN/DRAIN: ask for the node back,
                # but not on every poll so registration has time to land.
                if (( SECONDS - last_resume >= 5 )); then
                    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
                    last_resume=$SECONDS
                fi
                ;;
        esac
        sleep 0.5
    done
    die "node not idle after ${WAIT_SECS}s (sinfo says '${state:-nothing}')"
}

[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }

# Fast path: everything already up and the node usable.
if [[ -z $(pkgs_missing) ]] \
   && alive "$STATE_DIR/slurmctld.pid" slurmctld \
   && alive "$STATE_DIR/slurmd.pid" slurmd \
   && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    state=$(node_state)
    if healthy_state "$state"; then
        echo "slurm up: sinfo says $state (already running)"
        exit 0
    fi
fi

install_pkgs
mkdir -p "$STATE_DIR"
start_munge
# Rewriting the config under a running slurmctld would leave it reading the
# old one; only write it when slurmctld is not up.
if ! alive "$STATE_DIR/slurmctld.pid" slurmctld; then
    write_conf
fi
start_slurm
wait_idle
