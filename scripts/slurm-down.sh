#!/usr/bin/env bash
# Stop the daemons that scripts/slurm-up.sh started (the pids it recorded), and nothing else.
set -uo pipefail

STATE=${FLOWPREP_SLURM_STATE:-/tmp/flowprep-slurm}
[ -f "$STATE/pids" ] || { echo "slurm-down: nothing recorded in $STATE/pids"; exit 0; }
# Reverse order: slurmd, slurmctld, then munged (the others authenticate through it).
pids=$(tac "$STATE/pids")
for pid in $pids; do
    kill -TERM "$pid" 2>/dev/null || true
done
for pid in $pids; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
done
rm -f "$STATE/pids"
echo "slurm-down: stopped $(echo $pids | wc -w) daemon(s)"
