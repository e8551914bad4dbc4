#!/usr/bin/env bash
# slurm-down.sh: stop the local cluster started by slurm-up.sh and delete its directory.
#
#   tools/slurm-local/slurm-down.sh [--keep]     (--keep: leave $SLURM_LOCAL_DIR, e.g. to read logs)
#
# What it stops, in order, and nothing else on the machine:
#   1. the cluster's jobs (scancel through this cluster's controller): job steps outlive
#      slurmd by design, so they must end while the daemons still run;
#   2. the daemons whose pids are in $SLURM_LOCAL_DIR/run/{slurmd,slurmctld,munged}.pid, each
#      only while /proc/PID/comm still names that daemon;
#   3. as a safety net, any slurmstepd still running in $SLURM_LOCAL_DIR (its working
#      directory), with the processes below it.
# Environment: SLURM_LOCAL_DIR [/tmp/actlora-slurm]
set -uo pipefail    # no -e: keep stopping the others when one stop fails

DIR=${SLURM_LOCAL_DIR:-/tmp/actlora-slurm}
keep=0
for a in "$@"; do
  case $a in
    --keep) keep=1 ;;
    *) echo "slurm-down: unknown argument '$a'" >&2; exit 2 ;;
  esac
done

live() { # live PID NAME: PID is a running (non-zombie) process called NAME
  local state
  [[ $1 =~ ^[0-9]+$ && -r /proc/$1/comm && $(<"/proc/$1/comm") == "$2" ]] || return 1
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n $state && $state != Z && $state != X ]]
}

stop() { # stop NAME: SIGTERM, up to 15 s to exit, then SIGKILL
  local name=$1 pf=$DIR/run/$1.pid pid
  [[ -s $pf ]] || { echo "slurm-down: $name: no pid file"; return 0; }
  pid=$(<"$pf")
  if ! live "$pid" "$name"; then
    echo "slurm-down: $name: pid $pid not running"; rm -f "$pf"; return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 150); do live "$pid" "$name" || break; sleep 0.1; done
  if live "$pid" "$name"; then
    echo "slurm-down: $name ($pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid"
  fi
  rm -f "$pf"
  echo "slurm-down: stopped $name ($pid)"
}

# cancel_jobs: scancel every job of this cluster and wait (up to 30 s) until none is left.
cancel_jobs() {
  local pf=$DIR/run/slurmctld.pid jobs
  [[ -s $pf ]] && live "$(<"$pf")" slurmctld || return 0
  export SLURM_CONF=$DIR/etc/slurm.conf
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [[ -n ${jobs// } ]] || return 0
  echo "slurm-down: cancelling jobs $jobs"
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null
  for _ in $(seq 60); do
    [[ -z $(squeue -h -t running,completing,suspended -o %A 2>/dev/null) ]] && return 0
    sleep 0.5
  done
  echo "slurm-down: jobs still ending after 30 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}

# leftover_steps: pids of slurmstepd processes working in $DIR, and everything below them.
leftover_steps() {
  local pid roots=() all
  for pid in $(pgrep -x slurmstepd); do
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$DIR"/* ]] && roots+=("$pid")
  done
  ((${#roots[@]})) || return 0
  all=$(ps -eo pid=,ppid=)
  local -a queue=("${roots[@]}")
  while ((${#queue[@]})); do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    echo "$pid"
    # shellcheck disable=SC2207
    queue+=($(awk -v p="$pid" '$2 == p {print $1}' <<<"$all"))
  done
}

[[ -d $DIR ]] || { echo "slurm-down: $DIR does not exist: nothing to stop"; exit 0; }
cancel_jobs
# slurmd, then the controller, then munge, which both need.
stop slurmd
stop slurmctld
stop munged
left=$(leftover_steps | tr '\n' ' ')
if [[ -n ${left// } ]]; then
  echo "slurm-down: killing leftover job processes $left"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null
fi
if [[ $keep == 1 ]]; then
  echo "slurm-down: kept $DIR"
else
  rm -rf "$DIR"
  echo "slurm-down: removed $DIR"
fi
