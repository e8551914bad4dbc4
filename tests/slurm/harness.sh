# shellcheck shell=bash
# harness.sh: bash functions for tests that run jobs on the local Slurm cluster
# (tools/slurm-local). Source it; it defines functions and variables and runs nothing.
#
#   . tests/slurm/harness.sh
#   sl_up || exit $?                  # 77 = no slurm/munge here: the test is skipped
#   trap sl_down EXIT                 # stops the cluster only if sl_up started it
#   export ACTLORA_BIN=... ACTLORA_ARGS="--set run.dir=$SL_OUT/runs/x"
#   j=$(sl_submit_tiny x --time=1 --signal=B:USR1@50)
#   sl_wait_state "$j" RUNNING 60 && sl_signal "$j" USR1 batch
#   sl_wait_done "$j" 120 && grep -q "done" "$(sl_output "$j")"
#
# Variables: SL_ROOT (repository root), SL_OUT (job outputs and run dirs: a fresh directory
# made by sl_up unless set; removed by sl_down unless SL_KEEP=1), SLURM_LOCAL_DIR (cluster
# directory, default /tmp/actlora-slurm), SLURM_CONF (exported by sl_up).
#
# Ways to signal a running job (what reaches the ranks of the srun step, measured here with
# jobs/tiny_cpu.slurm; see jobs/README.md):
#   batch   scancel --signal=SIG --batch  -> the batch shell only; its trap sends USR1 to srun,
#           which passes it to every task. Same path as --signal=B:USR1@T near the time limit.
#   steps   scancel --signal=SIG          -> every task of every step directly, not the shell.
#   full    scancel --signal=SIG --full   -> the batch shell, srun and every task: a rank may get
#           it more than once (directly and forwarded); the program must take a repeat calmly.

SL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SL_OUT=${SL_OUT:-}
SL_STARTED=0
export SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/actlora-slurm}

sl_log() { echo "[$(date +%T)] $*" >&2; }

# sl_up: bring the cluster up (a no-op when it runs already). Returns slurm-up's status:
# 0 ok, 77 binaries missing / not root (skip), 1 failure.
sl_up() {
  local out rc=0
  out=$("$SL_ROOT/tools/slurm-local/slurm-up.sh" --skip-missing 2>&1) || rc=$?
  sed 's/^/  /' <<<"$out" >&2
  ((rc == 0)) || return $rc
  grep -q "already running" <<<"$out" || SL_STARTED=1
  export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf
  [[ -n $SL_OUT ]] || SL_OUT=$(mktemp -d /tmp/actlora-slurm-test.XXXXXX)
  mkdir -p "$SL_OUT"
}

# sl_down: stop the cluster, but only if sl_up started it (a cluster someone else brought up
# keeps running). SL_KEEP=1 keeps the cluster directory (logs) and SL_OUT.
sl_down() {
  if ((SL_STARTED)); then
    if [[ ${SL_KEEP:-0} == 1 ]]; then
      "$SL_ROOT/tools/slurm-local/slurm-down.sh" --keep >&2
    else
      "$SL_ROOT/tools/slurm-local/slurm-down.sh" >&2
    fi
    SL_STARTED=0
  fi
  [[ -n $SL_OUT ]] || return 0
  if [[ ${SL_KEEP:-0} == 1 ]]; then sl_log "kept job outputs in $SL_OUT"; else rm -rf "$SL_OUT"; fi
}

# sl_submit_tiny NAME [SBATCH_OPTION...]: submit jobs/tiny_cpu.slurm from the repository root
# with the caller's environment (ACTLORA_BIN, ACTLORA_CONFIG, ACTLORA_ARGS); output goes to
# $SL_OUT/NAME.out. Prints the job id.
sl_submit_tiny() {
  local name=$1; shift
  sbatch --parsable --chdir="$SL_ROOT" --job-name="$name" --output="$SL_OUT/$name.out" \
         "$@" "$SL_ROOT/jobs/tiny_cpu.slurm"
}

# sl_field JOB FIELD: one field of 'scontrol show job' (JobState, Restarts, ExitCode, StdOut...);
# empty once the job has left the controller (MinJobAge=600 s on the local cluster).
sl_field() {
  scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}
sl_state()    { sl_field "$1" JobState; }
sl_restarts() { sl_field "$1" Restarts; }
sl_output()   { sl_field "$1" StdOut; }

# sl_wait_state JOB REGEX TIMEOUT_S: wait until the job's state matches ^(REGEX)$.
sl_wait_state() {
  local job=$1 re=$2 deadline=$((SECONDS + $3)) st
  while :; do
    st=$(sl_state "$job")
    [[ $st =~ ^($re)$ ]] && return 0
    if ((SECONDS >= deadline)); then
      sl_log "job $job is '${st:-gone}' after $3 s, not $re"
      return 1
    fi
    sleep 0.5
  done
}

# sl_wait_done JOB TIMEOUT_S: wait for a final state; succeeds only for COMPLETED.
# PENDING in between is fine (a requeued job waits cred_expire seconds before it restarts).
# PREEMPTED is not taken as final (partition 'batch' requeues), and a final state must still
# hold a second later, so that a passing state on the way to a requeue does not count.
SL_FINAL='COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE'
sl_wait_done() {
  local deadline=$((SECONDS + $2)) st
  while :; do
    sl_wait_state "$1" "$SL_FINAL" $((deadline - SECONDS > 0 ? deadline - SECONDS : 0)) || return 1
    st=$(sl_state "$1"); sleep 1
    [[ $(sl_state "$1") == "$st" ]] && break
  done
  [[ $st == COMPLETED ]] || { sl_log "job $1 ended $st (ExitCode $(sl_field "$1" ExitCode))"; return 1; }
}

# sl_wait_output FILE REGEX TIMEOUT_S [COUNT]: wait until FILE has COUNT (default 1) lines
# matching the extended regex, e.g. until the program printed its resume line (its signal
# handlers are installed by then).
sl_wait_output() {
  local file=$1 re=$2 deadline=$((SECONDS + $3)) want=${4:-1} n
  while :; do
    n=$(grep -cE -- "$re" "$file" 2>/dev/null) || n=0
    ((n >= want)) && return 0
    if ((SECONDS >= deadline)); then
      sl_log "$file: $n of $want lines matching '$re' after $3 s"
      return 1
    fi
    sleep 0.5
  done
}

# sl_signal JOB SIG [batch|steps|full]: send a signal to a running job (default: batch).
sl_signal() {
  local how=${3:-batch}
  case $how in
    batch) scancel --signal="$2" --batch "$1" ;;
    steps) scancel --signal="$2" "$1" ;;
    full)  scancel --signal="$2" --full "$1" ;;
    *) sl_log "sl_signal: unknown mode '$how'"; return 2 ;;
  esac
}

# sl_requeue JOB: what an administrator does. Slurm sends SIGTERM to the tasks, the batch
# shell and srun at once (SIGKILL KillWait seconds later); srun answers its SIGTERM by
# SIGKILLing the tasks, so a checkpoint on this signal is a race. The job is PENDING again
# right away.
sl_requeue() { scontrol requeue "$1"; }

# sl_preempt [SECONDS]: submit a job to partition 'urgent' that needs the whole node and
# sleeps SECONDS (default 5); it preempts what runs in 'batch'. Prints its job id.
sl_preempt() {
  sbatch --parsable --partition=urgent --exclusive --time=1 --job-name=urgent \
         --output="$SL_OUT/urgent-%j.out" \
         --wrap "echo \"urgent start \$(date +%T)\"; sleep ${1:-5}; echo \"urgent end \$(date +%T)\""
}

# sl_collect JOB DEST: copy the job's output file to DEST (for keeping or attaching to a report).
sl_collect() {
  local f; f=$(sl_output "$1")
  [[ -n $f && -f $f ]] || { sl_log "job $1: no output file"; return 1; }
  cp "$f" "$2"
}
