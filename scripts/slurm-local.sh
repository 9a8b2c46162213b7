#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (controller + one compute node with all its CPUs), for trying
# `sfmoe sweep launch --launcher slurm` without a cluster and for the tests.
#
#   scripts/slurm-local.sh start  [DIR]   start munged (unless one answers already), slurmctld and slurmd; idempotent
#   scripts/slurm-local.sh stop   [DIR]   cancel every job of this cluster, stop the daemons it started (by PID)
#   scripts/slurm-local.sh status [DIR]   which daemons run, sinfo and squeue
#   scripts/slurm-local.sh env    [DIR]   print "export SLURM_CONF=DIR/slurm.conf"
#
# DIR (default $SFMOE_SLURM_DIR, else /tmp/sfmoe-slurm) holds slurm.conf, state, spool, logs and PID files. Slurm's
# commands read the cluster from SLURM_CONF, so after `start` run: eval "$(scripts/slurm-local.sh env)".
# Needs root and Debian's packages: apt-get install -y --no-install-recommends slurm-wlm munge
# Ports: 6817 (slurmctld) and 6818 (slurmd), or the next free ones; SFMOE_SLURM_PORT=N picks N and N+1.
set -euo pipefail

cmd=${1:-}
dir=${2:-${SFMOE_SLURM_DIR:-/tmp/sfmoe-slurm}}
case "$cmd" in start|stop|status|env) ;; *)
  echo "usage: $0 start|stop|status|env [DIR]" >&2; exit 2 ;;
esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -f "$1" ] && tr -dc '0-9' < "$1" || true; }
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

# Stop one daemon by the PID in its file: SIGTERM, then SIGKILL after a grace period.
stop_pid() {
  local name=$1 file=$2 pid
  pid=$(pid_of "$file")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
    alive "$pid" && die "$name (pid $pid) did not stop"
    say "stopped $name (pid $pid)"
  fi
  rm -f "$file"
}

if [ "$cmd" = env ]; then
  echo "export SLURM_CONF=$conf"
  exit 0
fi

if [ "$cmd" = status ]; then
  for d in munged slurmctld slurmd; do
    pid=$(pid_of "$dir/$d.pid")
    if alive "$pid"; then say "$d running (pid $pid)"; else say "$d: none started by this script is running"; fi
  done
  if alive "$(pid_of "$dir/slurmctld.pid")"; then
    sinfo || true
    squeue || true
  fi
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (Slurm runs jobs as root here: SlurmUser=root)"
for t in munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
  command -v "$t" >/dev/null 2>&1 || die "$t not found: apt-get install -y --no-install-recommends slurm-wlm munge"
done

if [ "$cmd" = stop ]; then
  if alive "$(pid_of "$dir/slurmctld.pid")"; then
    # Jobs first: slurmstepd processes outlive slurmd, so cancel them while the controller still answers.
    jobs=$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      scancel --quiet $jobs 2>/dev/null || true
      for _ in $(seq 1 150); do [ -z "$(squeue -h -o %i -t R,CG 2>/dev/null)" ] && break; sleep 0.2; done
      say "cancelled jobs: $jobs"
    fi
  fi
  stop_pid slurmd "$dir/slurmd.pid"
  stop_pid slurmctld "$dir/slurmctld.pid"
  stop_pid munged "$dir/munged.pid"    # only a munged this script started has this file
  exit 0
fi

# ---- start
host=$(hostname -s)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 1. munge: reuse a munged that answers (the system's, or one started earlier), else start one as the munge user.
if munge_ok; then
  say "munged answers (reusing it)"
else
  [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (the munge package creates it; or run mungekey)"
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged did not start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$dir/munged.pid"
  say "started munged (pid $(pid_of "$dir/munged.pid"))"
fi

ctld_pid=$(pid_of "$dir/slurmctld.pid"); slurmd_pid=$(pid_of "$dir/slurmd.pid")
if alive "$ctld_pid" && alive "$slurmd_pid" && [ -f "$conf" ]; then
  say "slurmctld (pid $ctld_pid) and slurmd (pid $slurmd_pid) already running"
else
  # Half-started leftovers go first, so that the ports and state are ours.
  stop_pid slurmd "$dir/slurmd.pid"
  stop_pid slurmctld "$dir/slurmctld.pid"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"

  # 2. slurm.conf: this host is controller and compute node; the node line is what slurmd measures (slurmd -C).
  if [ -n "${SFMOE_SLURM_PORT:-}" ]; then
    port=$SFMOE_SLURM_PORT
  else
    port=6817
    while ! { port_free "$port" && port_free $((port + 1)); }; do port=$((port + 2)); [ "$port" -lt 6900 ] || die "no free port pair in 6817..6900"; done
  fi
  node=$(slurmd -C | grep '^NodeName=' | sed 's/ UpTime=.*//')
  [ -n "$node" ] || die "slurmd -C printed no NodeName line"
  cat > "$conf" <<EOF
# Written by scripts/slurm-local.sh: a single-node cluster on $host.
ClusterName=sfmoe-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue --states=all for 10 minutes (there is no accounting database for sacct).
MinJobAge=600
MaxArraySize=100001
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  # 3. The daemons (they fork and write their PID files); -c: start with no jobs from an earlier run.
  slurmctld -c -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 1 50); do
    alive "$(pid_of "$dir/slurmctld.pid")" && alive "$(pid_of "$dir/slurmd.pid")" && break; sleep 0.2
  done
  alive "$(pid_of "$dir/slurmctld.pid")" || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  alive "$(pid_of "$dir/slurmd.pid")" || die "slurmd did not start (see $dir/log/slurmd.log)"
  say "started slurmctld (pid $(pid_of "$dir/slurmctld.pid")) and slurmd (pid $(pid_of "$dir/slurmd.pid")) on port $port"
fi

# 4. Wait for the node to be idle (a few seconds); a node left down by an earlier run is resumed.
state=""
for i in $(seq 1 150); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*) break ;;
    down*|drain*) [ $((i % 10)) -eq 0 ] && scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in idle*|mixed*|allocated*) ;; *) die "node $host is '${state:-unknown}', not idle (see $dir/log/)";; esac
say "node $host $state; use it with: export SLURM_CONF=$conf"
