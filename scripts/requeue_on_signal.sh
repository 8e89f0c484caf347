#!/bin/bash
# Run a train.py command inside a SLURM job so that a time limit or preemption loses nothing:
#   bash scripts/requeue_on_signal.sh python train.py ARGS...
# With "#SBATCH --signal=B:USR1@300" SLURM sends SIGUSR1 to this script 5 minutes before the time limit; it is
# passed to train.py, which writes a checkpoint at the next step boundary and exits 75. On exit 75 the job is
# requeued (needs "#SBATCH --requeue") and the same command continues from the checkpoint (--resume auto).
# On preemption SLURM sends SIGTERM to every process of the job: train.py checkpoints the same way.
"$@" &
pid=$!
trap 'kill -USR1 "$pid" 2>/dev/null' USR1 TERM
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives: wait for the checkpoint
    rc=0
    wait "$pid" || rc=$?
done
if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "requeueing job $SLURM_JOB_ID to continue from its checkpoint"
    scontrol requeue "$SLURM_JOB_ID"  # an array task has a job id of its own: only this task is requeued
fi
exit "$rc"
