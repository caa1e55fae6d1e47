#!/bin/bash
#SBATCH --job-name=hpcjob-train
#SBATCH --partition=gpu_h100
#SBATCH --time=02:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --gpus-per-node=4
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

set +u
source -- "$HOME"/hpcjob/venv/bin/activate
set -u
HPCJOB_DATA_DIR=/d

# torchrun on every node (srun starts one per node) with the job's Python; the first node is the
# rendezvous host, on a port chosen from the job id (20000-29999: below Linux's ephemeral ports).
hpcjob_job_number="${SLURM_JOB_ID//[^0-9]/}"
hpcjob_port=$(( 20000 + ${hpcjob_job_number:-0} % 10000 ))
if [ -z "${HPCJOB_EMBEDDED:-}" ]; then
    hpcjob_master="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
    hpcjob_launch=(srun --ntasks-per-node=1 --kill-on-bad-exit=1)
else  # the embedded scheduler: this machine is the one node
    hpcjob_master=127.0.0.1
    hpcjob_launch=()
fi
hpcjob_launch+=(python3 -m torch.distributed.run --nnodes "${SLURM_NNODES:-1}"
    --nproc-per-node 4 --rdzv-backend c10d
    --rdzv-endpoint "$hpcjob_master:$hpcjob_port" --rdzv-id "${SLURM_JOB_ID:-0}" --no-python)
# torchrun passes these signals on to every rank (Slurm's warning is USR1) and waits up to 100 s
# (within the warning's 120) for them to save a checkpoint; older torch reads the second name.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2
export TORCHELASTIC_SIGNALS_TO_HANDLE="$PET_SIGNALS_TO_HANDLE"
export PET_SHUTDOWN_TIMEOUT=100 TORCH_ELASTIC_SHUTDOWN_TIMEOUT=100
echo "launcher:   torchrun, ${SLURM_NNODES:-1} node(s) x "4" processes, rendezvous $hpcjob_master:$hpcjob_port"

# Every rank runs under workload/rank.py: its output and exit go to ranks/<job id>/ (the job's
# output shows rank 0's, and the last lines of any rank that fails); once the launcher has
# ended, hpcjob_ranks_end names the rank that failed first, or gives 75 when every rank stopped
# with a checkpoint (torchrun itself exits 1 after passing a signal on).
hpcjob_job_ref="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}"
hpcjob_ranks_dir="$HPCJOB_RUN_DIR/ranks/${hpcjob_job_ref:-${SLURM_JOB_ID:-0}}"
hpcjob_world=$(( ${SLURM_NNODES:-1} * 4 ))
hpcjob_launch+=(python3 /home/u/hpcjob/runs/r000001/workload/rank.py run --dir "$hpcjob_ranks_dir" --)
hpcjob_ranks_end() {
    local line
    line="$(python3 /home/u/hpcjob/runs/r000001/workload/rank.py summary --dir "$hpcjob_ranks_dir" --ranks "$hpcjob_world" --launcher-rc "$1" --metrics "${HPCJOB_METRICS:-$HPCJOB_RUN_DIR/metrics.jsonl}")" || line="$1"
    read -r hpcjob_rc hpcjob_exit_note <<< "$line" || true
}

cd -- "$HPCJOB_RUN_DIR"
echo "== workload train =="
# Data loader workers: one less than the allocated cores, at most 8.
# The task's cores are shared by the node's ranks: each rank's share, less one.
hpcjob_workers=$(( ${SLURM_CPUS_PER_TASK:-1} / 4 - 1 ))
if [ "$hpcjob_workers" -lt 0 ]; then hpcjob_workers=0; fi
if [ "$hpcjob_workers" -gt 8 ]; then hpcjob_workers=8; fi
# train.py stops (exit 1) rather than train on the CPU when torch cannot use the GPUs this job
# holds, unless --allow-cpu was given. An environment variable, not an option: a rerun of an
# older snapshot of train.py must not fail on an option it does not know.
export HPCJOB_EXPECT_GPUS=4
# Python runs in the background so the batch shell can pass Slurm's USR1/TERM on to it;
# --resume auto continues from the last checkpoint after a requeue (a fresh run starts anew).
# A warning that comes before train.py has its handler is ignored (by default USR1 would kill
# it); the TERM at the time limit still stops it with a checkpoint.
trap '' USR1
"${hpcjob_launch[@]}" python3 /home/u/hpcjob/runs/r000001/workload/train.py --data-dir "$HPCJOB_DATA_DIR" --output-dir "$HPCJOB_RUN_DIR" --resume auto --epochs 3 --batch-size 256 --lr 0.001 --hidden-units 512,256 --dropout 0.2 --seed 0 --num-workers "$hpcjob_workers" &
hpcjob_pid=$!
trap 'kill -USR1 "$hpcjob_pid" 2>/dev/null || true' USR1 TERM
hpcjob_rc=0
while true; do
    wait "$hpcjob_pid" && hpcjob_rc=0 || hpcjob_rc=$?
    # A trapped signal interrupts `wait`; keep waiting while train.py saves its checkpoint.
    kill -0 "$hpcjob_pid" 2>/dev/null || break
done
hpcjob_ranks_end "$hpcjob_rc"
if [ "$hpcjob_rc" -eq 75 ]; then
    echo "hpcjob: training stopped before the time limit with a checkpoint; resubmit to resume." >&2
fi
exit "$hpcjob_rc"
