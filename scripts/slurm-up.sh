#!/usr/bin/env bash
# Start a one-node SLURM cluster (munge + slurmctld + slurmd) inside this container, for
# tests/test_slurm.py.  Needs root; no systemd.  Idempotent: when `sinfo` already answers it
# does nothing, and it installs the Debian packages only when they are missing.
#
# The pids of the daemons it starts go to $FLOWPREP_SLURM_STATE/pids (default
# /tmp/flowprep-slurm); scripts/slurm-down.sh stops those and nothing else.
set -euo pipefail

STATE=${FLOWPREP_SLURM_STATE:-/tmp/flowprep-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by flowprep scripts/slurm-up.sh"

if command -v sinfo >/dev/null && timeout 5 sinfo -h >/dev/null 2>&1; then
    echo "slurm-up: SLURM already answers; nothing to do"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: needs root (installs packages, starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd munge slurm-client >/dev/null
fi

mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/slurm
chown slurm:slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown munge:munge /run/munge
chmod 0755 /run/munge

if [ ! -f "$CONF" ] || head -1 "$CONF" | grep -qF "$MARK"; then
    # Only our own config is (re)written: a real cluster's slurm.conf is never touched.
    cpus=$(nproc)
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    cat > "$CONF" <<CONF_EOF
$MARK
ClusterName=flowprep
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
NodeName=localhost CPUs=$cpus RealMemory=${mem:-1000} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF_EOF
fi

: > "$STATE/pids"
if ! pgrep -u munge -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create >/dev/null 2>&1 || true; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cat /run/munge/munged.pid >> "$STATE/pids"
fi
if ! pgrep -x slurmctld >/dev/null; then
    /usr/sbin/slurmctld
    for _ in $(seq 50); do [ -s /run/slurm/slurmctld.pid ] && break; sleep 0.1; done
    cat /run/slurm/slurmctld.pid >> "$STATE/pids"
fi
if ! pgrep -x slurmd >/dev/null; then
    /usr/sbin/slurmd -N localhost
    for _ in $(seq 50); do [ -s /run/slurm/slurmd.pid ] && break; sleep 0.1; done
    cat /run/slurm/slurmd.pid >> "$STATE/pids"
fi

for _ in $(seq 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "slurm-up: SLURM is up: $(sinfo -h -o '%P %D %t %c CPUs')"
        exit 0
    fi
    sleep 0.2
done
echo "slurm-up: the node did not become idle; sinfo says: $(sinfo 2>&1 | tail -n +2)" >&2
echo "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log" >&2
exit 1
