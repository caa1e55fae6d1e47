#!/usr/bin/env bash
# Run a command as the test cluster's non-root user (Slurm users are not root), e.g.
#   tests/cluster/run-as-test-user.sh sbatch --parsable --wrap true
# It runs in the current directory when the test user may write there, else in the shared scratch
# dir (sbatch makes the current directory the job's working directory). Environment: a clean
# login-like one (HOME, USER, PATH, LANG), plus variables named in HPCJOB_TEST_PASS_ENV.
set -euo pipefail

STATE=${HPCJOB_TEST_CLUSTER_DIR:-/var/tmp/hpcjob-test-cluster}
USER_NAME=hpctest
if [[ -r $STATE/cluster.env ]]; then
    USER_NAME=$(sed -n 's/^HPCJOB_TEST_USER=//p' "$STATE/cluster.env")
fi
(($# > 0)) || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
[[ -n $home ]] || { echo "no user $USER_NAME: run tests/cluster/start.sh first" >&2; exit 1; }

if ! runuser -u "$USER_NAME" -- test -x "$PWD" -a -w "$PWD" 2>/dev/null; then
    cd "$STATE/scratch" 2>/dev/null || cd "$home"
fi
envs=(HOME="$home" USER="$USER_NAME" LOGNAME="$USER_NAME" SHELL=/bin/bash
    PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)
for name in ${HPCJOB_TEST_PASS_ENV:-}; do
    [[ -v $name ]] && envs+=("$name=${!name}")
done
if [[ $(id -un) == "$USER_NAME" ]]; then
    exec env -i "${envs[@]}" "$@"
fi
exec runuser -u "$USER_NAME" -- env -i "${envs[@]}" "$@"
