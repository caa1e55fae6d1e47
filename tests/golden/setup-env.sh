#!/bin/bash
#SBATCH --job-name=hpcjob-setup-env
#SBATCH --partition=rome
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output=/home/u/hpcjob/runs/r000001/slurm-%j.out
#SBATCH --comment=hpcjob-00000000000000000000000000000000

# Rendered by hpcjob 0.1.0 for run r000001.
set -euo pipefail

export HPCJOB_RUN_ID=r000001
export HPCJOB_RUN_DIR=/home/u/hpcjob/runs/r000001
export PYTHONUNBUFFERED=1

# The exit status goes into the run directory, so hpcjob knows how the job ended even where
# Slurm's accounting is off.
hpcjob_exit_file="$HPCJOB_RUN_DIR/exit-status${SLURM_ARRAY_TASK_ID:+.$SLURM_ARRAY_TASK_ID}"
hpcjob_exit_note=""  # what follows the code in that file: the rank that failed first
trap 'rc=$?; printf "%s %s%s\n" "$rc" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${hpcjob_exit_note:+ $hpcjob_exit_note}" > "$hpcjob_exit_file"' EXIT
# Killed by TERM (the time limit, scancel), bash would run that trap with the last command's
# status, often 0; exiting as a shell ended by TERM reports itself (143) says what happened.
trap 'exit 143' TERM

echo "== hpcjob run $HPCJOB_RUN_ID =="
echo "host:       $(hostname)"
echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "job id:     ${SLURM_JOB_ID:-?}"
echo "partition:  ${SLURM_JOB_PARTITION:-?}"
echo "gpus:       CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || true
fi

# Environment modules (module scripts reference unset variables, so -u is off around them).
set +u
module purge
module load 2025
module load Python/3.13.1-GCCcore-14.2.0
set -u

cd -- "$HPCJOB_RUN_DIR"
echo "== workload setup-env =="
if [ -f "$HPCJOB_RUN_DIR/setup-env.sh" ]; then
    # Staged by `hpcjob setup-env --as-job`: the very script the login node runs (create or
    # repair the venv, install, verify, then write the fingerprint marker).
    bash "$HPCJOB_RUN_DIR/setup-env.sh"
    exit 0
fi
venv_dir="$HOME"/hpcjob/venv
if [ ! -x "$venv_dir/bin/python" ]; then
    python3 -m venv -- "$venv_dir"
fi
"$venv_dir/bin/python" -m pip install --upgrade pip
"$venv_dir/bin/python" -m pip install -r "$HPCJOB_RUN_DIR/workload/requirements.txt"
"$venv_dir/bin/python" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda build', torch.version.cuda)"
