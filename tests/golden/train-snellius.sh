#!/bin/bash
#SBATCH --job-name=hpcjob-train
#SBATCH --partition=gpu_a100
#SBATCH --time=1-00:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=18
#SBATCH --mem=120G
#SBATCH --gpus=1
#SBATCH --account=ecf1234
#SBATCH --constraint=scratch-node
#SBATCH --output=/home/u/hpcjob/runs/r000001/slurm-%j.out
#SBATCH --comment=hpcjob-00000000000000000000000000000000
#SBATCH --signal=B:USR1@120

# Rendered by hpcjob 0.1.0 for run r000001.
set -euo pipefail

export HPCJOB_RUN_ID=r000001
export HPCJOB_RUN_DIR=/home/u/hpcjob/runs/r000001
export PYTHONUNBUFFERED=1

# The exit status goes into the run directory, so hpcjob knows how the job ended even where
# Slurm's accounting is off.
hpcjob_exit_file="$HPCJOB_RUN_DIR/exit-status${SLURM_ARRAY_TASK_ID:+.$SLURM_ARRAY_TASK_ID}"
hpcjob_exit_note=""  # what follows the code in that file: the rank that failed first
# The staged copy goes first: once the exit status is written, the job counts as ended.
hpcjob_stage_dir=""
trap 'rc=$?; [ -z "$hpcjob_stage_dir" ] || rm -rf -- "$hpcjob_stage_dir" || true; printf "%s %s%s\n" "$rc" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${hpcjob_exit_note:+ $hpcjob_exit_note}" > "$hpcjob_exit_file"' EXIT
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

set +u
source -- "$HOME"/hpcjob/venv/bin/activate
set -u

# Copy the data to the node-local disk: reading from the shared filesystem is slow for every job.
# A folder of its own (mktemp: a fresh name, mode 0700), removed when the job ends (the trap).
mkdir -p -- "${TMPDIR:-/tmp}"
hpcjob_stage_dir="$(mktemp -d -- "${TMPDIR:-/tmp}/hpcjob-data.XXXXXXXXXX")"
HPCJOB_DATA_DIR="$hpcjob_stage_dir"
cp -r -- /projects/0/pcam/. "$HPCJOB_DATA_DIR/"
echo "data:       staged to $HPCJOB_DATA_DIR"

cd -- "$HPCJOB_RUN_DIR"
echo "== workload train =="
# Data loader workers: one less than the allocated cores, at most 8.
hpcjob_workers=$(( ${SLURM_CPUS_PER_TASK:-1} - 1 ))
if [ "$hpcjob_workers" -gt 8 ]; then hpcjob_workers=8; fi
# train.py stops (exit 1) rather than train on the CPU when torch cannot use the GPUs this job
# holds, unless --allow-cpu was given. An environment variable, not an option: a rerun of an
# older snapshot of train.py must not fail on an option it does not know.
export HPCJOB_EXPECT_GPUS=1
# Python runs in the background so the batch shell can pass Slurm's USR1/TERM on to it;
# --resume auto continues from the last checkpoint after a requeue (a fresh run starts anew).
# A warning that comes before train.py has its handler is ignored (by default USR1 would kill
# it); the TERM at the time limit still stops it with a checkpoint.
trap '' USR1
python3 /home/u/hpcjob/runs/r000001/workload/train.py --data-dir "$HPCJOB_DATA_DIR" --output-dir "$HPCJOB_RUN_DIR" --resume auto --epochs 3 --batch-size 256 --lr 0.0001 --hidden-units 512,256 --dropout 0.2 --seed 0 --no-weighted-sampling --num-workers "$hpcjob_workers" &
hpcjob_pid=$!
trap 'kill -USR1 "$hpcjob_pid" 2>/dev/null || true' USR1 TERM
hpcjob_rc=0
while true; do
    wait "$hpcjob_pid" && hpcjob_rc=0 || hpcjob_rc=$?
    # A trapped signal interrupts `wait`; keep waiting while train.py saves its checkpoint.
    kill -0 "$hpcjob_pid" 2>/dev/null || break
done
if [ "$hpcjob_rc" -eq 75 ]; then
    echo "hpcjob: training stopped before the time limit with a checkpoint; resubmit to resume." >&2
fi
exit "$hpcjob_rc"
