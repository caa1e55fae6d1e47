#!/usr/bin/env bash
# Stop what tests/cluster/start.sh started (and nothing else: an sshd, munged or MariaDB that it
# found running is left alone). --purge also deletes the state dir and the /etc/slurm files
# start.sh wrote; the test user and the Debian packages stay.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

PURGE=0
case ${1:-} in
    "") ;;
    --purge) PURGE=1 ;;
    *)
        echo "usage: $0 [--purge]" >&2
        exit 2
        ;;
esac
[[ $(id -u) == 0 ]] || { log "ERROR: must run as root"; exit 1; }

exec 9>>"/run/hpcjob-test-cluster.lock"
flock -w 300 9 || { log "ERROR: another start.sh/stop.sh holds the lock"; exit 1; }

rm -f "$STATE/cluster.env"
# Reverse start order; also any slurmd of a node no longer configured.
stop_ours sshd@login2  # the second login node (start.sh's login2)
stop_ours sshd
for f in "$PIDS"/slurmd@*.pid; do
    if [[ -e $f ]]; then stop_ours "$(basename "$f" .pid)"; fi
done
for name in slurmctld slurmdbd mariadbd munged; do
    stop_ours "$name"
done

if ((PURGE)); then
    for f in slurm.conf gres.conf cgroup.conf slurmdbd.conf; do
        if grep -qsF "managed by hpcjob tests/cluster/start.sh" "/etc/slurm/$f"; then
            rm -f "/etc/slurm/$f"
        fi
    done
    [[ $STATE == /*/* ]] && rm -rf "$STATE"
    log "stopped and purged $STATE"
else
    log "stopped (state kept in $STATE)"
fi
