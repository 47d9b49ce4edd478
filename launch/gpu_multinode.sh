#!/usr/bin/env bash
# Runs rpe_jax on several GPU hosts, one process per host (each sees all its local GPUs),
# joined by rpe_jax.distributed.initialize through --config.distributed.mode=explicit.
#
#   sbatch [SBATCH OPTIONS] launch/gpu_multinode.sh --workdir=DIR [OPTIONS] [-- OVERRIDES...]
#   launch/gpu_multinode.sh --workdir=DIR [OPTIONS] [-- OVERRIDES...]      (inside salloc)
#   launch/gpu_multinode.sh --hosts=h1,h2,h3,h4 --workdir=DIR [OPTIONS] [-- OVERRIDES...]
#
# Under SLURM, `srun` starts one task per node; the coordinator is the allocation's first
# node. With --hosts, each host is started over ssh with its index as process id; host 0
# is the coordinator. `--help` lists the options; --dry-run prints the commands.
#
#SBATCH --job-name=rpe_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=rpe_jax-%j.out
set -euo pipefail

MODES=(train sample evaluate extract_latents)

usage() {
  cat <<'EOF'
Usage: sbatch [SBATCH OPTIONS] launch/gpu_multinode.sh --workdir=DIR [OPTIONS] [-- OVERRIDES...]
       launch/gpu_multinode.sh --hosts=h1,h2,... --workdir=DIR [OPTIONS] [-- OVERRIDES...]

Starts `python -m rpe_jax.main` once per host with --config.distributed.mode=explicit,
the coordinator address (first host and --port), the process count and each process's
id. OVERRIDES (e.g. --config.train.batch_size=256) are passed to every process.

Without --hosts the script must run inside a SLURM allocation (sbatch or salloc): srun
starts one task per node of $SLURM_JOB_NODELIST (the coordinator is its first host, from
`scontrol show hostnames`), num_processes is $SLURM_NNODES and each task's process id is
its own $SLURM_PROCID. The #SBATCH lines at the top of this file (2 nodes x 8 GPUs, 24 h)
are defaults: override them on the sbatch command line, e.g. `sbatch --nodes=4 ...`.

With --hosts, host i is started as `ssh HOST 'cd DIR && exec PYTHON -m rpe_jax.main ...'`
with process id i; output lines are prefixed with "[i HOST]"; Ctrl-C stops every host.

Options (each also read from the environment variable shown; flag wins):
  --workdir DIR      RPE_WORKDIR      run directory; every host must see the same one (a
                                      shared file system or gs://)              [required]
  --config FILE      RPE_CONFIG       config file, relative to --dir
                                                                [configs/imagenet256.py]
  --mode MODE        RPE_MODE         train | sample | evaluate | extract_latents  [train]
  --port PORT        RPE_PORT         coordinator port on the first host           [12345]
  --hosts H1,H2,...  RPE_HOSTS        ssh hosts ([user@]host); empty: use SLURM       []
  --coordinator HOST RPE_COORDINATOR  coordinator host name or IP as the other hosts
                                      reach it           [first host, without "user@"]
  --dir DIR          RPE_DIR          the rpe_jax checkout, same path on every host
                                                                [current directory]
  --python PYTHON    RPE_PYTHON       interpreter on every host
                                      [$VIRTUAL_ENV/bin/python if a virtualenv is active,
                                       else python]
  --dry-run                           print the commands (srun, or one ssh per host)
  -h, --help                          this text

Exit status: 2 for a bad option value, 127 when srun, scontrol or ssh is missing, else
non-zero if any process fails.
EOF
}

die() { echo "gpu_multinode.sh: $*" >&2; exit 2; }
need_tool() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "gpu_multinode.sh: '$1' is not on PATH; $2" >&2
    exit 127
  }
}
print_cmd() { printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'; }

workdir=${RPE_WORKDIR:-}
config=${RPE_CONFIG:-configs/imagenet256.py}
mode=${RPE_MODE:-train}
port=${RPE_PORT:-12345}
hosts=${RPE_HOSTS:-}
coordinator=${RPE_COORDINATOR:-}
dir=${RPE_DIR:-$PWD}
python=${RPE_PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python}
dry_run=0
overrides=()

while [[ $# -gt 0 ]]; do
  if [[ $1 == --*=* ]]; then  # --flag=value -> --flag value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    --workdir | --config | --mode | --port | --hosts | --coordinator | --dir | --python)
      [[ $# -ge 2 ]] || die "option $1 needs a value"
      printf -v "${1#--}" '%s' "$2"
      shift 2
      ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument '$1' (see --help; config overrides go after --)" ;;
  esac
done

[[ -n $workdir ]] || die "no workdir: give --workdir=DIR (or RPE_WORKDIR), a directory every host sees"
[[ -n $config ]] || die "no config: give --config=configs/FILE.py (or RPE_CONFIG)"
[[ " ${MODES[*]} " == *" $mode "* ]] || die "unknown --mode '$mode'; choose one of: ${MODES[*]}"
if ! [[ $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
  die "--port '$port' must be an integer in [1, 65535]"
fi
[[ -n $python ]] || die "--python is empty"

# Everything but the process id, which differs per process.
args=(-m rpe_jax.main "--config=$config" "--workdir=$workdir" "--mode=$mode" "${overrides[@]}"
      --config.distributed.mode=explicit)

launch_slurm() {
  [[ -n ${SLURM_JOB_NODELIST:-} ]] \
    || die "no --hosts and not inside a SLURM allocation (SLURM_JOB_NODELIST is unset): use sbatch/salloc or --hosts"
  need_tool scontrol "it lists the nodes of \$SLURM_JOB_NODELIST (run inside a SLURM allocation)"
  local listed nodes num
  listed=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  mapfile -t nodes <<<"$listed"
  [[ -n ${nodes[0]} ]] || die "scontrol listed no hosts for SLURM_JOB_NODELIST '$SLURM_JOB_NODELIST'"
  num=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-${#nodes[@]}}}
  ((num == ${#nodes[@]})) \
    || die "SLURM_NNODES=$num but SLURM_JOB_NODELIST '$SLURM_JOB_NODELIST' has ${#nodes[@]} hosts"
  args+=("--config.distributed.coordinator_address=${coordinator:-${nodes[0]}}:$port"
         "--config.distributed.num_processes=$num")
  # One task per node; each task's bash appends its own $SLURM_PROCID (set by srun).
  # shellcheck disable=SC2016
  local cmd=(srun "--nodes=$num" "--ntasks=$num" --ntasks-per-node=1 --kill-on-bad-exit=1 --label
             "--chdir=$dir" bash -c 'exec "$@" "--config.distributed.process_id=$SLURM_PROCID"' rpe_jax
             "$python" "${args[@]}")
  if ((dry_run)); then
    print_cmd "${cmd[@]}"
    return
  fi
  need_tool srun "run this script with sbatch or inside salloc"
  exec "${cmd[@]}"
}

launch_ssh() {
  local list
  IFS=, read -r -a list <<<"$hosts"
  local num=${#list[@]} i
  if [[ $hosts == ,* || $hosts == *, || $hosts == *,,* || $hosts == *[[:space:]]* ]]; then
    die "--hosts '$hosts' has an empty or blank host name; give h1,h2,..."
  fi
  local first=${list[0]#*@}
  args+=("--config.distributed.coordinator_address=${coordinator:-$first}:$port"
         "--config.distributed.num_processes=$num")
  ((dry_run)) || need_tool ssh "install an OpenSSH client"
  local pids=() remote cmd
  # shellcheck disable=SC2317  # called by the trap
  cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
  trap cleanup TERM INT
  for ((i = 0; i < num; i++)); do
    remote="cd $(printf %q "$dir") && exec $(printf '%q ' "$python" "${args[@]}")"
    remote+="--config.distributed.process_id=$i"
    # -tt: the remote process gets SIGHUP (and stops) when this ssh is killed.
    cmd=(ssh -tt -o BatchMode=yes "${list[i]}" "$remote")
    if ((dry_run)); then
      print_cmd "${cmd[@]}"
      continue
    fi
    "${cmd[@]}" </dev/null > >(sed -u "s/\r\$//; s/^/[$i ${list[i]}] /") 2>&1 &
    pids+=($!)
  done
  ((dry_run)) && return
  local status=0 pid
  for pid in "${pids[@]}"; do
    wait "$pid" || status=1
  done
  exit $status
}

if [[ -n $hosts ]]; then
  launch_ssh
else
  launch_slurm
fi
