#!/usr/bin/env bash
# Starts N rpe_jax processes on this machine as one jax.distributed group.
#
#   launch/local_multiprocess.sh [-n N] [--devices-per-process D] [--grace S] [--dry-run] -- ARGS...
#
# ARGS go to `python -m rpe_jax.main` (e.g. --config=configs/demo.py --workdir=/tmp/run).
# Each process gets --config.distributed.mode=explicit with a free coordinator port on
# 127.0.0.1, its process id, and gloo CPU collectives; its log lines are prefixed with
# "[i]". SIGTERM/SIGINT are forwarded to every process. When a process fails, the script
# names it, sends SIGTERM to the others, SIGKILL after --grace seconds (default 30), and
# exits with the failed process's status.
set -euo pipefail

num=2
devices=4
grace=30
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) num="$2"; shift 2 ;;
    --devices-per-process) devices="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (use -- before rpe_jax arguments)" >&2; exit 2 ;;
  esac
done
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then echo "-n must be a positive integer, got '$num'" >&2; exit 2; fi
if ! [[ "$grace" =~ ^[0-9]+$ ]]; then echo "--grace must be whole seconds, got '$grace'" >&2; exit 2; fi

python=${PYTHON:-python}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap cleanup TERM INT

for ((i = 0; i < num; i++)); do
  cmd=("$python" -m rpe_jax.main "$@"
       --config.distributed.mode=explicit
       "--config.distributed.coordinator_address=127.0.0.1:$port"
       "--config.distributed.num_processes=$num"
       "--config.distributed.process_id=$i"
       --config.distributed.cpu_collectives=gloo)
  if ((dry_run)); then
    printf 'XLA_FLAGS=--xla_force_host_platform_device_count=%s' "$devices"
    printf ' %q' "${cmd[@]}"
    printf '\n'
    continue
  fi
  # Process substitution keeps $! the python process, so `wait` sees its exit status.
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" "${cmd[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
((dry_run)) && exit 0

echo "launch: started ${num} processes (pids ${pids[*]}), coordinator 127.0.0.1:$port" >&2

# Wait for each process as it ends; the first failure stops the rest.
declare -A alive  # pid -> process index
for i in "${!pids[@]}"; do alive[${pids[$i]}]=$i; done
status=0
killer=""
while ((${#alive[@]})); do
  code=0
  ended=""
  wait -n -p ended "${!alive[@]}" || code=$?
  [[ -z "$ended" ]] && continue  # interrupted by a signal (already forwarded)
  index=${alive[$ended]}
  unset "alive[$ended]"
  if ((code != 0 && status == 0)); then
    status=$code
    echo "launch: process $index (pid $ended) failed with status $code; stopping the others" >&2
    cleanup
    (sleep "$grace"; for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done) \
      >/dev/null 2>&1 &
    killer=$!
  fi
done
if [[ -n "$killer" ]]; then kill "$killer" 2>/dev/null || true; fi
exit $status
