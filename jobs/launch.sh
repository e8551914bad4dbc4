# launch.sh: the body every job script shares: srun the program once, forward a stop signal to
# it, and requeue the job when the program checkpointed on that signal (exit 85) or its watchdog
# ended a rank that made no progress (exit 86, a bounded number of times). Sourced by the
# jobs/*.slurm scripts, which set `bin` and `config` first; jobs/README.md explains the contract.
# Jobs are submitted from the repository root (the job runs there), so `source jobs/launch.sh`
# finds this file.
# shellcheck shell=bash disable=SC2154  # bin, config: set by the sourcing script

# SLURM_RESTART_COUNT is unset on the first run and 1, 2, ... after each requeue.
echo "=== job ${SLURM_JOB_ID:-?} run start $(date '+%F %T') on $(hostname)" \
     "SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0} config=$config args=${ACTLORA_ARGS:-}"

# srun in the background: bash runs a trap only between commands, so with a foreground srun
# the signal would wait until srun ended. 'wait' below is interrupted by the trap instead.
# ACTLORA_ARGS is unquoted on purpose: it holds several words.
# No --kill-on-bad-exit: a rank leaving with 85 must not get its peers killed mid-checkpoint.
# shellcheck disable=SC2086
srun --mpi=pmix "$bin" --config "$config" ${ACTLORA_ARGS:-} &
srun_pid=$!

interrupted=0
# shellcheck disable=SC2317  # called from the traps below
forward() {
  interrupted=1
  echo "=== batch shell got SIG$1 at $(date '+%T'): sending SIGUSR1 to srun (pid $srun_pid)"
  # Always USR1, never TERM: srun passes USR1 on to every task of the step, but answers a
  # SIGTERM by killing the tasks (SIGKILL, "srun: forcing job termination") - no checkpoint.
  # The program treats USR1 and TERM alike (checkpoint, exit 85), and when Slurm ends the job
  # (scancel, scontrol requeue, time limit, end of a preemption grace time) it sends TERM to
  # the tasks itself anyway.
  kill -s USR1 "$srun_pid" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# A trapped signal makes 'wait' return 128+n while srun still runs: wait again. bash keeps
# the status of an exited background job, so a repeated wait still yields srun's real status.
while :; do
  interrupted=0
  rc=0
  wait "$srun_pid" || rc=$?
  ((interrupted)) || break
done
echo "=== srun exited with $rc at $(date '+%T')"

case $rc in
  0)  echo "=== done"; exit 0 ;;
  85) # Checkpointed because of a signal. Put the job back in the queue - it keeps its id,
      # SLURM_RESTART_COUNT increases and the program resumes from its newest checkpoint -
      # but only while Slurm still has the job RUNNING: that is the case for the --signal
      # warning, 'scancel --signal=USR1' and a preemption's grace time. After 'scancel' (or
      # the hard time limit) the job is already COMPLETING: requeueing then would make scancel
      # unable to stop the job. After 'scontrol requeue' it is already PENDING.
      state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2)
      if [[ -z $state || $state == RUNNING ]]; then
        echo "=== checkpointed: scontrol requeue $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" || echo "=== scontrol requeue failed (rc $?)"
        # The requeue ends this script here ("CANCELLED ... DUE TO JOB REQUEUE").
        exit 0
      fi
      echo "=== checkpointed, job is $state (scancel, time limit or a requeue by Slurm): not requeueing"
      exit 85 ;;
  86) # The watchdog ended a rank that made no progress for run.watchdog_minutes: a hung
      # collective, NCCL or network failure, GPU or filesystem stall (the ranks' messages above
      # say what each was doing). Requeue: the run resumes from its newest checkpoint, maybe on
      # other nodes. At most ACTLORA_HUNG_REQUEUES (3) times in all - SLURM_RESTART_COUNT counts
      # every requeue of the job, preemptions too - so that a node that hangs every time does not
      # keep the job cycling.
      limit=${ACTLORA_HUNG_REQUEUES:-3}
      if (( ${SLURM_RESTART_COUNT:-0} < limit )); then
        echo "=== no progress (watchdog): scontrol requeue $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0} of at most $limit)"
        scontrol requeue "$SLURM_JOB_ID" || echo "=== scontrol requeue failed (rc $?)"
        exit 0
      fi
      echo "=== no progress (watchdog), and the job was requeued ${SLURM_RESTART_COUNT:-0} times already" \
           "(ACTLORA_HUNG_REQUEUES=$limit): not requeueing; check the nodes, then resubmit (it resumes)"
      exit 86 ;;
  *)  echo "=== failed: not requeued"; exit "$rc" ;;
esac
