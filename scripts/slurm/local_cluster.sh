#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (controller and one compute node), for testing
# `fairrep sweep --emit slurm` against a real scheduler. Needs Debian's `slurm-wlm` and
# `munge` packages and root (SlurmUser=root).
#
#   scripts/slurm/local_cluster.sh start DIR   # writes DIR/slurm.conf, starts munged (if not
#                                              # running), slurmctld and slurmd; waits until the
#                                              # node is idle; prints SLURM_CONF=DIR/slurm.conf
#   scripts/slurm/local_cluster.sh stop DIR    # stops the daemons it started
#
# State, spool, logs and pid files live under DIR. Clients find the cluster through
# SLURM_CONF. Ports: $FAIRREP_SLURM_PORT (controller, default 6817) and the next one (node).
set -euo pipefail

cmd=${1:?usage: local_cluster.sh start|stop DIR}
dir=${2:?usage: local_cluster.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$pidfile"
        fi
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd (start|stop)" >&2; exit 2; }

for tool in slurmctld slurmd sbatch sinfo munged munge; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "the local cluster runs its daemons as root" >&2; exit 1; }

# munge: the key from the package (created here if missing), the daemon unless one answers.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 755 /run/munge
    # Started here, so stopped by `stop`: its pid file in a folder the munge user may write.
    mkdir -p "$dir/munge"
    chown munge:munge "$dir/munge" 2>/dev/null || true
    runuser -u munge -- munged --pid-file="$dir/munge/munged.pid" \
        || munged --force --pid-file="$dir/munge/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { echo "munged does not answer" >&2; exit 1; }
fi

host=$(hostname -s)
port=${FAIRREP_SLURM_PORT:-6817}
cpus=$(nproc)
mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
mkdir -p "$dir/state" "$dir/spool"
cat > "$conf" <<CONF
ClusterName=fairrep-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$conf"
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
slurmctld -f "$conf"
slurmd -f "$conf" -N "$host"
for _ in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle*|mix*) break ;; esac
    sleep 0.2
done
state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
case "$state" in
    idle*|mix*) ;;
    *) echo "the node did not become idle (state '$state'); logs in $dir" >&2
       tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
       exit 1 ;;
esac
echo "SLURM_CONF=$conf"
