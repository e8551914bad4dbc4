#!/usr/bin/env bash
# stand_in.sh: a fake actlora-mpi for testing the job scripts and the Slurm harness. It keeps
# the program's preemption contract without MPI or a model:
#   - SIGUSR1 or SIGTERM: rank 0 writes the checkpoint "<run.dir>/state", every rank exits 85
#     ("checkpointed, requeue me");
#   - on start it resumes from <run.dir>/state when there is one (printing the program's
#     "resume  from <path> (step N, micro 0)" / "resume  none: starting fresh" line);
#   - stand_in.hang_at=K: on the job's first run (SLURM_RESTART_COUNT unset or 0) it exits 86 at
#     step K without a checkpoint, as the program's watchdog ends a rank that made no progress;
#   - it counts one step per tick and exits 0 at stand_in.steps, printing
#     "done counter=N sum=S" (S = 1+2+...+N, accumulated across restarts via the checkpoint,
#     so a lost or repeated step would change it).
# Usage, as the job script runs the real program (one process per srun task):
#   stand_in.sh --config FILE [--set run.dir=DIR] [--set stand_in.steps=N] [--set stand_in.tick=SEC]
#               [--set stand_in.save_s=SEC]   (how long writing the checkpoint takes)
#               [--set stand_in.every=K]      (also checkpoint every K steps, like the program's
#                                              checkpoint.every_minutes; 0 = only on a signal)
#               [--set stand_in.hang_at=K]    (exit 86 at step K on the first run; 0 = never)
# The rank is SLURM_PROCID (0 without Slurm). Ranks other than 0 only count and exit.
set -euo pipefail

got=""
trap 'got=USR1' USR1     # first thing: an early signal must not kill us with the default action
trap 'got=TERM' TERM

dir=runs/stand_in steps=40 tick=0.5 save_s=0 every=0 hang_at=0 config=""
while (($#)); do
  case $1 in
    --config) config=$2; shift 2 ;;
    --set)
      case $2 in
        run.dir=*) dir=${2#*=} ;;
        stand_in.steps=*) steps=${2#*=} ;;
        stand_in.tick=*) tick=${2#*=} ;;
        stand_in.save_s=*) save_s=${2#*=} ;;
        stand_in.every=*) every=${2#*=} ;;
        stand_in.hang_at=*) hang_at=${2#*=} ;;
        *) ;;                          # other program settings are accepted and ignored
      esac
      shift 2 ;;
    *) echo "stand_in: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
rank=${SLURM_PROCID:-0}
say() { [[ $rank == 0 ]] && echo "stand_in: $*"; return 0; }
save() { # rank 0 writes "counter sum" atomically: a reader sees the old or the new state, never half
  [[ $rank == 0 ]] || return 0
  mkdir -p "$dir"
  echo "$counter $sum" > "$dir/state.tmp"
  mv -f "$dir/state.tmp" "$dir/state"
}

counter=0 sum=0
if [[ -s $dir/state ]]; then
  read -r counter sum < "$dir/state"
  say "resume  from $dir/state (step $counter, micro 0)"
else
  say "resume  none: starting fresh"
fi
say "rank 0/${SLURM_NTASKS:-1} job=${SLURM_JOB_ID:--} restart_count=${SLURM_RESTART_COUNT:-0} config=${config:--} steps=$steps tick=$tick"

while ((counter < steps)); do
  # sleep in the background and 'wait' for it: a trapped signal interrupts 'wait' at once,
  # whereas a foreground sleep would delay the handler until the sleep ends.
  sleep "$tick" & sl=$!
  wait "$sl" || true
  if [[ -n $got ]]; then
    # from here on, further signals (scancel --full reaches the whole process group) are ignored,
    # by the shell and by the children it starts (mv, sleep): the save must finish
    trap '' USR1 TERM
    kill "$sl" 2>/dev/null || true
    echo "stand_in: rank $rank caught SIG$got at step $counter: writing checkpoint"
    sleep "$save_s" || true                   # a repeated signal may hit the sleep (process group)
    save
    echo "stand_in: rank $rank checkpoint written at step $counter, exit 85"
    exit 85
  fi
  if ((hang_at > 0 && counter == hang_at && ${SLURM_RESTART_COUNT:-0} == 0)); then
    echo "stand_in: rank $rank: no progress at step $counter (the watchdog), exit 86"
    exit 86
  fi
  counter=$((counter + 1)) sum=$((sum + counter))
  if ((every > 0 && counter % every == 0)); then save; fi
done
save
say "done counter=$counter sum=$sum"
exit 0
