#!/bin/bash
#SBATCH --job-name=hpcjob-gpu-check
#SBATCH --time=00:10:00
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

cd -- "$HPCJOB_RUN_DIR"
echo "== workload gpu-check =="
/usr/bin/python3 /home/u/hpcjob/runs/r000001/workload/check_gpu.py --expect-gpus 0 --output-dir "$HPCJOB_RUN_DIR"
