#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the sweep's Slurm test (`.ci/run` starts and
# stops it): Debian's slurm-wlm and munge (installed when missing), slurmctld and slurmd started
# directly (no systemd, no cgroups: process tracking by /proc), every file of theirs under
# $SLURM_TEST_DIR. Clients find the cluster through SLURM_CONF, which `start` prints.
#
#   eval "$(scripts/slurm-single-node.sh start)"   # exports SLURM_CONF
#   scripts/slurm-single-node.sh stop
set -euo pipefail
dir="${SLURM_TEST_DIR:-/tmp/gemma-scope-slurm}"
conf="$dir/slurm.conf"

stop() {
  for daemon in slurmd slurmctld; do
    if [ -s "$dir/$daemon.pid" ]; then
      kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 50); do
    pgrep -f "$conf" >/dev/null || return 0
    sleep 0.2
  done
  pkill -9 -f "$conf" || true
}

case "${1:-}" in
start)
  missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
  # munge: the shared key (made once by the package or here), then the daemon.
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  pgrep -x munged >/dev/null || munged --force >&2

  stop
  rm -rf "$dir"
  mkdir -p "$dir/state" "$dir/spool"
  node="$(hostname -s)"
  cat >"$conf" <<CONF
ClusterName=gemmascope
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MinJobAge=600
ReturnToService=2
NodeName=$node CPUs=$(nproc) State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$conf"
  slurmctld -f "$conf" >&2
  slurmd -f "$conf" >&2
  for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$conf"
      exit 0
    fi
    sleep 0.3
  done
  echo "slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
  ;;
stop)
  stop
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
