#!/usr/bin/env bash
# slurm-up.sh: start a single-node Slurm cluster on localhost for the job-script tests:
# munged + slurmctld + slurmd, run as root, everything under one directory.
#
#   tools/slurm-local/slurm-up.sh [--skip-missing]
#   export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf      # printed at the end
#
# Partitions: batch  (default, PriorityTier=1,  PreemptMode=REQUEUE, GraceTime)
#             urgent (PriorityTier=10: its jobs requeue running 'batch' jobs)
#
# Idempotent: when the daemons recorded in $SLURM_LOCAL_DIR/run/*.pid are alive it starts
# nothing and prints the status. tools/slurm-local/slurm-down.sh stops exactly those pids.
# It installs nothing: it needs the Debian packages slurm-wlm and munge (apt-get install).
#
# Environment (all optional):
#   SLURM_LOCAL_DIR            state, spool, logs, pid files, config    [/tmp/actlora-slurm]
#   SLURM_LOCAL_CPUS           CPUs the node advertises; more than the hardware has
#                              is allowed (config_overrides)             [real count]
#   SLURM_LOCAL_CTLD_PORT      slurmctld port                            [6817]
#   SLURM_LOCAL_SLURMD_PORT    slurmd port                               [6818]
#   SLURM_LOCAL_CRED_EXPIRE    AuthInfo cred_expire = delay before a requeued job
#                              may start again (Slurm's default is 120)  [10]
#   SLURM_LOCAL_GRACE          GraceTime of 'batch': seconds a preempted job has
#                              between the first SIGTERM and the kill   [20]
#   SLURM_LOCAL_PREEMPT_SIGNAL term: preemption sends SIGTERM to the job's tasks (Slurm's
#                              default); user: it sends the job's own --signal
#                              (SlurmctldParameters=preempt_send_user_signal)  [term]
#   SLURM_LOCAL_TIMEOUT        seconds to wait for the node to become idle [60]
#
# Exit status: 0 cluster up; 1 error; 77 (only with --skip-missing) when a binary is missing
# or we are not root, so that tests can report SKIP.
set -euo pipefail

skip_missing=0
for a in "$@"; do
  case $a in
    --skip-missing) skip_missing=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "slurm-up: unknown argument '$a'" >&2; exit 2 ;;
  esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${SLURM_LOCAL_DIR:-/tmp/actlora-slurm}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-10}
GRACE=${SLURM_LOCAL_GRACE:-20}
PREEMPT_SIGNAL=${SLURM_LOCAL_PREEMPT_SIGNAL:-term}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
CONF=$DIR/etc/slurm.conf
SOCK=$DIR/munge/munge.socket.2
t0=$SECONDS

log() { echo "slurm-up [$((SECONDS - t0))s] $*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
skip() { # cannot run here: 77 for test harnesses, 1 otherwise
  echo "slurm-up: $*" >&2
  if [[ $skip_missing == 1 ]]; then exit 77; fi
  exit 1
}

# alive NAME: the pid file run/NAME.pid names a live process called NAME. Checking the
# command name guards against a recycled pid; a zombie (a daemon we killed that nobody
# reaped yet) does not count as alive.
alive() {
  local pf=$DIR/run/$1.pid pid state
  [[ -s $pf ]] || return 1
  pid=$(<"$pf")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$1" ]] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n $state && $state != Z && $state != X ]]
}

# port_busy PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

status() {
  local d
  for d in munged slurmctld slurmd; do
    if alive $d; then log "$d running (pid $(<"$DIR/run/$d.pid"))"; else log "$d NOT running"; fi
  done
  SLURM_CONF=$CONF sinfo -o '%10P %.6a %.5D %.4c %10T %N' || true
  echo "export SLURM_CONF=$CONF"
}

# ------------------------------------------------------------------ prerequisites
missing=()
for b in munged munge unmunge slurmctld slurmd sinfo sbatch srun scontrol scancel squeue; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if ((${#missing[@]})); then
  skip "missing ${missing[*]}: install the Debian packages 'slurm-wlm munge'" \
       "(apt-get install -y --no-install-recommends slurm-wlm munge)"
fi
[[ $(id -u) -eq 0 ]] || skip "must run as root (the local cluster runs SlurmUser=root and munged as root)"
case $PREEMPT_SIGNAL in term|user) ;; *) die "SLURM_LOCAL_PREEMPT_SIGNAL must be term or user" ;; esac

# ------------------------------------------------------------------ slurm.conf (rendered)
# The node's hardware as slurmd detects it. Memory is advertised 512 MB low, so that the
# node never drains for "Low RealMemory".
hwline=$(slurmd -C | head -1)
hw() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hwline"; }
hw_cpus=$(hw CPUs)
mem=$(hw RealMemory); ((mem > 1024)) && mem=$((mem - 512))
cpus=${SLURM_LOCAL_CPUS:-$hw_cpus}
if [[ $cpus == "$hw_cpus" ]]; then
  node_hw="Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
  slurmd_params=""
else   # advertising a different CPU count than detected needs config_overrides
  node_hw="Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1"
  slurmd_params="SlurmdParameters=config_overrides"
fi
# srun --mpi=pmix dlopens libpmix.so (Debian: libpmix-dev, pulled in by libopenmpi-dev).
mpi_default=none
compgen -G "/usr/lib/*/pmix*/lib/libpmix.so" >/dev/null && mpi_default=pmix
ctld_params=""
[[ $PREEMPT_SIGNAL == user ]] && ctld_params="SlurmctldParameters=preempt_send_user_signal"
conf_text=$(sed -e "s|@DIR@|$DIR|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" -e "s|@GRACE@|$GRACE|g" -e "s|@MPI_DEFAULT@|$mpi_default|g" \
    -e "s|@CPUS@|$cpus|g" -e "s|@NODE_HW@|$node_hw|g" -e "s|@MEM@|$mem|g" \
    -e "s|@SLURMD_PARAMETERS@|$slurmd_params|g" -e "s|@SLURMCTLD_PARAMETERS@|$ctld_params|g" \
    "$HERE/slurm.conf.in")
conf_differs() { [[ -f $CONF && $(<"$CONF") != "$conf_text" ]]; }

# ------------------------------------------------------------------ already up?
if alive munged && alive slurmctld && alive slurmd; then
  log "cluster already running in $DIR: nothing to do"
  conf_differs && log "NOTE: the settings asked for differ from the running $CONF; slurm-down.sh first to apply them"
  status
  exit 0
fi

fresh=1
for d in munged slurmctld slurmd; do alive $d && fresh=0; done
if [[ $fresh == 1 ]]; then
  # Nothing of ours runs: start from clean state, so jobs of an earlier (crashed) cluster
  # are not recovered into this one (the munge key is kept, the config rewritten).
  rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/tmp"
  for p in "$CTLD_PORT" "$SLURMD_PORT"; do
    port_busy "$p" && die "port $p is in use by another process (another Slurm?);" \
                          "set SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_SLURMD_PORT"
  done
else
  log "some daemons of $DIR are running: starting only the missing ones"
fi
mkdir -p "$DIR"/{etc,munge,state,spool,log,run,tmp}
chmod 755 "$DIR" "$DIR/etc" "$DIR/log" "$DIR/run"
chmod 711 "$DIR/munge"   # munged wants a socket dir that only root can write to
if conf_differs && { alive slurmctld || alive slurmd; }; then
  # a running daemon keeps the config it read; restarting it is not slurm-up's business
  log "NOTE: the settings asked for differ from the running $CONF; slurm-down.sh first to apply them"
else
  echo "$conf_text" > "$CONF"
  chmod 644 "$CONF"
fi
export SLURM_CONF=$CONF

# ------------------------------------------------------------------ munge
if alive munged; then
  log "munged already running"
else
  [[ -s $DIR/munge/munge.key ]] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  rm -f "$SOCK" "$SOCK.lock"
  munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
         --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged failed: $(tail -3 "$DIR/log/munged.log" 2>/dev/null)"
  log "munged started (pid $(<"$DIR/run/munged.pid"))"
fi
munge -n -S "$SOCK" | unmunge -S "$SOCK" >/dev/null || die "munge credential round trip failed"

# ------------------------------------------------------------------ daemons
if alive slurmctld; then
  log "slurmctld already running"
else
  slurmctld -f "$CONF" || die "slurmctld failed: $(tail -5 "$DIR/log/slurmctld.log" 2>/dev/null)"
  log "slurmctld started"
fi
if alive slurmd; then
  log "slurmd already running"
else
  slurmd -f "$CONF" -N localhost || die "slurmd failed: $(tail -5 "$DIR/log/slurmd.log" 2>/dev/null)"
  log "slurmd started"
fi

# ------------------------------------------------------------------ wait for the node
deadline=$((SECONDS + TIMEOUT))
while :; do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null | head -1 || true)
  case $state in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  ((SECONDS < deadline)) || die "node not ready after ${TIMEOUT}s (state '${state:-?}'); logs in $DIR/log"
  sleep 0.5
done
for d in munged slurmctld slurmd; do
  # the daemons write their pid files after forking; slurm-down relies on them
  for _ in $(seq 50); do alive $d && break; sleep 0.1; done
  alive $d || die "$d has no live pid in $DIR/run/$d.pid"
done
log "cluster ready (node $state)"
status
