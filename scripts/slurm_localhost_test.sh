#!/bin/bash
# End-to-end test of scripts/sweep.py on a real SLURM: a one-node cluster on this machine, a two-run array job of a
# tiny T5, a requeue through the time-limit warning signal, and a control run of the existing sbatch scripts' pattern.
#   bash scripts/slurm_localhost_test.sh 2>&1 | tee docs/slurm_localhost_test.log     (as root: apt-get, daemons)
# Needs root (or passwordless sudo), Debian/Ubuntu apt, ../shared/data. Prints PASS or FAIL last; exit 0 = PASS.
# It installs slurm-wlm and munge (Debian packages) when missing, runs munged, slurmctld and slurmd from a scratch
# folder (WORK, default a new /tmp/slurm-localhost.*; config, state, logs, runs: nothing is written in the project
# or under /etc), and stops the daemons it started on exit. Jobs run with the nice value of slurmd (10).
#   A  sweep.py sbatch -> sbatch: both array tasks finish, both results.json say complete; a resubmission skips them.
#   B  SIGUSR1 to the batch shell (what --signal=B:USR1@300 sends before the time limit) in the middle of a run:
#      train.py checkpoints and exits 75, the task requeues itself, resumes and completes.
#   C  (informational, not part of PASS) SIGTERM to every process of a task, as SLURM does on preemption.
#   D  (informational, not part of PASS) the B signal to a job written like scripts/prompt_tune.sbatch, whose batch
#      shell starts requeue_on_signal.sh as a child instead of exec'ing it.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DATA=${DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}
WORK=${WORK:-$(mktemp -d /tmp/slurm-localhost.XXXXXX)}
TIMEOUT=${TIMEOUT:-900}  # seconds per phase
STARTED=()               # "name:pidfile" of the daemons this script started
FAILS=()
say() { echo "[$(date +%T)] $*"; }
fail() { FAILS+=("$1"); say "FAIL: $1"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        say "this test needs root or passwordless sudo (apt-get install, munged/slurmctld/slurmd as SlurmUser=root)"
        echo "FAIL"; exit 1
    fi
fi
[ -d "$DATA/super_glue" ] || { say "no benchmark data at $DATA (set DATA_DIR)"; echo "FAIL"; exit 1; }
[ -x "$PY" ] || { say "no python at $PY (set PYTHON)"; echo "FAIL"; exit 1; }

cleanup() {
    if [ -n "${SLURM_CONF:-}" ] && [ -f "$SLURM_CONF" ] && command -v scontrol >/dev/null; then
        scontrol shutdown >/dev/null 2>&1  # slurmctld and slurmd
        sleep 3
    fi
    for entry in "${STARTED[@]}"; do
        name=${entry%%:*}; pidfile=${entry#*:}
        if [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill -0 "$pid" 2>/dev/null; then
            say "stopping $name (pid $pid)"; $SUDO kill "$pid"
        fi
    done
    say "daemons stopped; scratch folder kept: $WORK"
}
trap cleanup EXIT

# ---- 1. packages -------------------------------------------------------------------------------------------------
say "machine: $(uname -sr), $(. /etc/os-release && echo "$PRETTY_NAME"), $(nproc) CPUs," \
    "$(free -m | awk '/^Mem:/{print $2}') MB, user $(id -un)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge with apt-get"
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e $POLICY ]; then  # keep the packages' init scripts from starting daemons with the default config
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee $POLICY >/dev/null && $SUDO chmod 755 $POLICY && ADDED_POLICY=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
        > "$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; echo "FAIL"; exit 1; }
    [ -n "${ADDED_POLICY:-}" ] && $SUDO rm -f $POLICY
fi
say "slurm: $(slurmctld -V), munge: $(munged --version 2>&1 | head -1)"

# ---- 2. munge ----------------------------------------------------------------------------------------------------
mkdir -p "$WORK"/{munge,state,spool,logs,runs} && chmod 700 "$WORK" "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none && chmod 400 "$WORK/munge/munge.key"
SOCKET=$WORK/munge/munge.socket
$SUDO munged --key-file="$WORK/munge/munge.key" --socket="$SOCKET" --pid-file="$WORK/munge/munged.pid" \
    --log-file="$WORK/munge/munged.log" --seed-file="$WORK/munge/munged.seed" --force \
    || { cat "$WORK/munge/munged.log"; echo "FAIL"; exit 1; }
STARTED+=("munged:$WORK/munge/munged.pid")
munge -n -S "$SOCKET" | unmunge -S "$SOCKET" | grep -q "STATUS: *Success" \
    && say "munged up (socket $SOCKET)" || { fail "munge credential round trip"; echo "FAIL"; exit 1; }

# ---- 3. slurm.conf for one node --------------------------------------------------------------------------------
CPUS=$(nproc)
MEM=$(free -m | awk '/^Mem:/{print int($2 * 0.9)}')
HOST=$(hostname -s)
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=localtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
say "slurm.conf: node localhost, $CPUS CPUs, $MEM MB, select/cons_tres CR_CPU, proctrack/linuxproc, no cgroups"

# ---- 4. daemons --------------------------------------------------------------------------------------------------
$SUDO env SLURM_CONF="$SLURM_CONF" slurmctld -c || { tail -20 "$WORK/slurmctld.log"; echo "FAIL"; exit 1; }
STARTED+=("slurmctld:$WORK/slurmctld.pid")
$SUDO env SLURM_CONF="$SLURM_CONF" nice -n 10 slurmd -N localhost \
    || { tail -20 "$WORK/slurmd.log"; echo "FAIL"; exit 1; }
STARTED+=("slurmd:$WORK/slurmd.pid")
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1)
    [ "$state" = idle ] && break
    sleep 1
done
sinfo
if [ "$state" != idle ]; then
    fail "node not idle after 60 s (state '$state')"; tail -20 "$WORK/slurmctld.log" "$WORK/slurmd.log"
    echo "FAIL"; exit 1
fi

# ---- 5. a tiny T5, the sweep, the array job ---------------------------------------------------------------------
cd "$ROOT"
nice -n 10 "$PY" scripts/make_tiny_t5.py "$WORK/tiny_t5" --vocab_dir "$DATA/t5_vocab" || { echo "FAIL"; exit 1; }
export PYTHON=$PY  # the generated script runs "${PYTHON:-python}"; sbatch passes this environment to the job
SETS=(--set "model_name=$WORK/tiny_t5" --set "data_dir=$DATA" --set "save_dir=$WORK/runs")

wait_job() {  # wait_job JOBID: until it leaves the queue (a requeued task stays in it); 1 on timeout
    local t=0
    while [ -n "$(squeue -h -j "$1" 2>/dev/null)" ]; do
        [ $t -ge "$TIMEOUT" ] && return 1
        sleep 2; t=$((t + 2))
    done
}
show_jobs() {  # one line per (array) job: id, task, state, exit code, restarts
    scontrol -o show job "$1" | while read -r line; do
        echo "  $(grep -oE '^JobId=[0-9]+|(ArrayTaskId|JobState|Restarts|ExitCode)=[^ ]*' <<< "$line" | paste -sd' ')"
    done
}
complete() {  # complete RESULTS_JSON: true when it says "complete": true
    "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("complete") is True else 1)' "$1" \
        2>/dev/null
}

say "A. array job of scripts/sweeps/smoke.yaml"
"$PY" scripts/sweep.py sbatch scripts/sweeps/smoke.yaml -o "$WORK/jobs/smoke.sbatch" "${SETS[@]}" \
    --set "sbatch.output=$WORK/logs/smoke_%a.log" || { fail "sweep.py sbatch"; echo "FAIL"; exit 1; }
cat "$WORK/jobs/smoke.sbatch"; echo "--- run list:"; cat "$WORK/jobs/smoke.runs"
JOB=$(sbatch --parsable "$WORK/jobs/smoke.sbatch") || { fail "sbatch refused the script"; echo "FAIL"; exit 1; }
say "submitted array job $JOB"; sleep 3; squeue
wait_job "$JOB" || fail "A: job $JOB still queued after $TIMEOUT s"
show_jobs "$JOB"
for i in 0 1; do echo "--- log of task $i:"; cat "$WORK/logs/smoke_$i.log"; done
while IFS=$'\t' read -r name _; do
    case $name in \#*) continue ;; esac
    if complete "$WORK/runs/$name/results.json"; then say "A: $name: results.json complete"
    else fail "A: $name: results.json missing or not complete"; fi
done < "$WORK/jobs/smoke.runs"
"$PY" scripts/sweep.py status "$WORK/jobs/smoke.runs"
JOB2=$(sbatch --parsable "$WORK/jobs/smoke.sbatch")
say "A. resubmitted the same script as $JOB2: both tasks must skip their complete runs"
wait_job "$JOB2" || fail "A: resubmission $JOB2 still queued"
for i in 0 1; do
    if tail -3 "$WORK/logs/smoke_$i.log" | grep -q "skip run $i"; then
        say "A: task $i skipped, its log ends: $(tail -1 "$WORK/logs/smoke_$i.log")"
    else fail "A: task $i of $JOB2 did not skip"; tail -5 "$WORK/logs/smoke_$i.log"; fi
done

# B, C, D: 3 epochs, a checkpoint every 4 steps; the warning signal once the first checkpoint is on disk.
signal_mid_run() {  # signal_mid_run JOBID RUN_DIR: send SIGUSR1 to the batch shell once train_state.pt exists
    local t=0
    until [ -f "$2/train_state.pt" ]; do
        [ $t -ge 1200 ] && { fail "$3: no checkpoint in $2 after 600 s"; return 1; }
        sleep 0.5; t=$((t + 1))
    done
    say "$3: $2/train_state.pt written: scancel --batch --signal=USR1 $1 (what --signal=B:USR1@300 does)"
    scancel --batch --signal=USR1 "$1"
}

say "B. requeue on the time-limit warning"
"$PY" scripts/sweep.py sbatch scripts/sweeps/smoke.yaml -o "$WORK/jobs/requeue.sbatch" "${SETS[@]}" \
    --set name=smoke_requeue --set seed=3 --set num_epochs=3 --set save_every_steps=4 \
    --set "sbatch.output=$WORK/logs/requeue_%a.log" || { fail "sweep.py sbatch (B)"; echo "FAIL"; exit 1; }
RUN_B=$WORK/runs/$(grep -v '^#' "$WORK/jobs/requeue.runs" | cut -f1)
JOB=$(sbatch --parsable "$WORK/jobs/requeue.sbatch")
say "submitted $JOB (1 task, $RUN_B)"
signal_mid_run "${JOB}_0" "$RUN_B" B
wait_job "$JOB" || fail "B: job $JOB still queued after $TIMEOUT s"
show_jobs "$JOB"
echo "--- log of task 0 (all its starts, appended):"; cat "$WORK/logs/requeue_0.log"
LOG=$WORK/logs/requeue_0.log
grep -q "SIGUSR1 received" "$LOG" && say "B: train.py received SIGUSR1" || fail "B: train.py never saw SIGUSR1"
grep -q "requeueing job" "$LOG" && say "B: the task requeued itself" || fail "B: no requeue"
grep -q "^resuming " "$LOG" && say "B: the requeued task resumed: $(grep '^resuming ' "$LOG")" || fail "B: no resume"
RESTARTS=$(scontrol -o show job "$JOB" | grep -o 'Restarts=[0-9]*' | head -1)
say "B: $RESTARTS"
complete "$RUN_B/results.json" && say "B: results.json complete" || fail "B: results.json not complete"

say "C. (informational) SIGTERM to every process of a task (scancel --full), as SLURM does on preemption"
"$PY" scripts/sweep.py sbatch scripts/sweeps/smoke.yaml -o "$WORK/jobs/preempt.sbatch" "${SETS[@]}" \
    --set name=smoke_preempt --set seed=4 --set num_epochs=3 --set save_every_steps=4 \
    --set "sbatch.output=$WORK/logs/preempt_%a.log" || fail "sweep.py sbatch (C)"
RUN_C=$WORK/runs/$(grep -v '^#' "$WORK/jobs/preempt.runs" | cut -f1)
JOB=$(sbatch --parsable "$WORK/jobs/preempt.sbatch")
t=0
until [ -f "$RUN_C/train_state.pt" ] || [ $t -ge 1200 ]; do sleep 0.5; t=$((t + 1)); done
sleep 3  # a few steps past the first checkpoint
say "C: scancel --full --signal=TERM ${JOB}_0"
scancel --full --signal=TERM "${JOB}_0"
wait_job "$JOB" || say "C: job $JOB still queued after $TIMEOUT s"
echo "--- log:"; cat "$WORK/logs/preempt_0.log"
say "C: $(scontrol -o show job "$JOB" | grep -oE '(JobState|Restarts|ExitCode)=[^ ]*' | tr '\n' ' ')"
complete "$RUN_C/results.json" && say "C: results.json complete" || say "C: results.json not complete"

say "D. (informational) the B signal to a job written like scripts/prompt_tune.sbatch (wrapper started as a child)"
RUN_D=$WORK/runs/control_child_wrapper
cat > "$WORK/jobs/control.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=control
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --output=$WORK/logs/control.log
#SBATCH --open-mode=append
#SBATCH --chdir=$ROOT
#SBATCH --cpus-per-task=1
set -uo pipefail
echo "== \$(date "+%F %T") job \${SLURM_JOB_ID} restart \${SLURM_RESTART_COUNT:-0}"
bash scripts/requeue_on_signal.sh "\$PYTHON" train.py --task cb --model_name $WORK/tiny_t5 --data_dir $DATA \\
    --prefix_MLP MLP1 --freeze_weights 1 --early_stopping 1 --get_test_subset 1 --num_epochs 3 --device cpu \\
    --progress 0 --seed 3 --save_every_steps 4 --save_dir $WORK/runs --save_name control_child_wrapper
EOF
JOB=$(sbatch --parsable "$WORK/jobs/control.sbatch")
signal_mid_run "$JOB" "$RUN_D" D
wait_job "$JOB" || say "D: job $JOB still queued after $TIMEOUT s"
sleep 2
echo "--- log:"; cat "$WORK/logs/control.log"
say "D: $(scontrol -o show job "$JOB" | grep -oE '(JobState|Restarts|ExitCode)=[^ ]*' | tr '\n' ' ')"
if complete "$RUN_D/results.json"; then say "D: the run completed"
else say "D: the run did NOT complete: its folder holds $(ls "$RUN_D" 2>/dev/null | tr '\n' ' ')"; fi
ORPHANS=$(pgrep -f -- "--save_dir $WORK/runs --save_name control_child_wrapper" | paste -sd' ')
if [ -n "$ORPHANS" ]; then
    say "D: processes of the job still running after it ended (outside SLURM's control): $ORPHANS"
    ps -o pid,ppid,stat,etime,args -p "${ORPHANS// /,}" | cut -c1-160
    kill -KILL $ORPHANS && say "D: killed them (pids $ORPHANS)"
fi
echo "--- job completion records ($WORK/jobcomp.log):"; cat "$WORK/jobcomp.log" 2>/dev/null

if [ ${#FAILS[@]} -eq 0 ]; then echo "PASS"; exit 0; fi
printf 'failed: %s\n' "${FAILS[@]}"; echo "FAIL"; exit 1
