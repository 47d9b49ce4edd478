#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host or a pod slice), installs rpe_jax on every worker and
# runs it on all workers at once; each worker joins the jax.distributed group through
# --config.distributed.mode=auto (rpe_jax.distributed.initialize).
#
#   launch/tpu_vm.sh COMMAND [OPTIONS] [-- CONFIG_OVERRIDES...]
#
#   launch/tpu_vm.sh create --name=my-tpu --type=v4-32
#   launch/tpu_vm.sh setup --name=my-tpu
#   launch/tpu_vm.sh train --name=my-tpu --workdir=gs://bucket/run -- --config.train.batch_size=256
#   launch/tpu_vm.sh delete --name=my-tpu
#
# `launch/tpu_vm.sh --help` lists the commands, options and environment variables;
# --dry-run prints each command (gcloud, git) instead of running it.
set -euo pipefail

COMMANDS=(create setup train sample evaluate extract_latents logs stop delete)
RUN_MODES=(train sample evaluate extract_latents)

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND [OPTIONS] [-- CONFIG_OVERRIDES...]

Commands:
  create            create the TPU VM (or a queued resource with --queued); an existing
                    one of that name is reused
  setup             copy the code to every worker (a `git archive` tarball of --ref of this
                    checkout, or `git clone` of --repo) and `pip install -e ".[tpu]"` into a
                    virtualenv beside it
  train | sample | evaluate | extract_latents
                    run `python -m rpe_jax.main --mode=COMMAND --config.distributed.mode=auto`
                    on all workers at once (`tpu-vm ssh --worker=all`), streaming the logs
                    with a [hostname] prefix; CONFIG_OVERRIDES are appended
  logs              follow the log of the last --detach run on --worker
  stop              stop the run started by train/sample/... on every worker
  delete            delete the TPU VM (or the queued resource)

Options (each also read from the environment variable shown; flag wins):
  --name NAME         RPE_TPU_NAME      TPU VM name                      [rpe-jax]
  --project ID        RPE_TPU_PROJECT   Cloud project        [gcloud's configured project]
  --zone ZONE         RPE_TPU_ZONE      zone                              [us-central2-b]
  --type TYPE         RPE_TPU_TYPE      accelerator type, e.g. v4-8, v4-32, v5litepod-16
                                                                          [v4-32]
  --version VERSION   RPE_TPU_VERSION   TPU VM runtime version      [tpu-ubuntu2204-base]
  --spot              RPE_TPU_SPOT=1    create a Spot TPU                             [off]
  --queued            RPE_TPU_QUEUED=1  create/delete through a queued resource of the
                                        same name and wait until it is ACTIVE      [off]
  --repo URL          RPE_TPU_REPO      setup: `git clone` URL on every worker
                                        [empty: copy a tarball of this checkout]
  --ref REF           RPE_TPU_REF       setup: commit/branch/tag to copy or check out
                                        [HEAD of this checkout; the default branch of --repo]
  --remote-dir DIR    RPE_TPU_DIR       checkout on the workers, relative to the home
                                        directory; the virtualenv is DIR-venv and the
                                        logs and pid file are in DIR-run          [rpe_jax]
  --python PYTHON     RPE_TPU_PYTHON    interpreter for the workers' virtualenv (setup
                                        apt-installs it if missing)              [python3.11]
  --config FILE       RPE_CONFIG        config file, relative to the checkout
                                                                [configs/imagenet256.py]
  --workdir DIR       RPE_WORKDIR       run directory (checkpoints, metrics, samples)
                                        [gs://BUCKET/NAME when a bucket is given; required]
  --bucket BUCKET     RPE_BUCKET        Cloud Storage bucket for the default workdir   []
  --shared-fs         RPE_TPU_SHARED_FS=1  accept a workdir that is not gs:// on a
                                        multi-host slice (it must be a file system that
                                        every worker mounts)                        [off]
  --detach            RPE_TPU_DETACH=1  run in the background under nohup; follow it with
                                        `logs`                                      [off]
  --worker W          RPE_TPU_WORKER    logs: worker index, or "all"                  [0]
  --dry-run                             print the commands instead of running them
  -h, --help                            this text

A workdir that is not gs:// is an error on a multi-host slice (e.g. v4-32: 4 workers),
unless --shared-fs: every worker writes its shards of each checkpoint to the workdir and
restores from it, so a path on each worker's own disk would give every worker a
different, incomplete checkpoint.

Before the first run on several workers, `ssh-add ~/.ssh/google_compute_engine` (gcloud
needs the key in an agent to reach all workers at once). Stopping the local command does
not stop the remote processes: use `stop`.

Exit status: 2 for a bad command or option value, 127 when gcloud or git is missing,
else that of the last command.
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
note() { echo "tpu_vm.sh: $*" >&2; }
need_tool() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "tpu_vm.sh: '$1' is not on PATH; install it ($2) or use --dry-run" >&2
    exit 127
  }
}

# Prints a command shell-quoted (--dry-run) or runs it.
run() {
  if ((dry_run)); then
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Worker (host) count of a slice from its accelerator type, or nothing if unknown. v2-v4
# and v5p count TensorCores (8 per host); v5e and v6e count chips (8 on a one-host
# slice, 4 per host on bigger ones).
tpu_hosts() {
  [[ $1 =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]] || return 0
  local n=${BASH_REMATCH[2]}
  case ${BASH_REMATCH[1]} in
    v5litepod | v6e) echo $((n <= 8 ? 1 : n / 4)) ;;
    *) echo $((n <= 8 ? 1 : n / 8)) ;;
  esac
}

name=${RPE_TPU_NAME:-rpe-jax}
project=${RPE_TPU_PROJECT:-}
zone=${RPE_TPU_ZONE:-us-central2-b}
type=${RPE_TPU_TYPE:-v4-32}
version=${RPE_TPU_VERSION:-tpu-ubuntu2204-base}
spot=${RPE_TPU_SPOT:-0}
queued=${RPE_TPU_QUEUED:-0}
repo=${RPE_TPU_REPO:-}
ref=${RPE_TPU_REF:-}
remote_dir=${RPE_TPU_DIR:-rpe_jax}
python=${RPE_TPU_PYTHON:-python3.11}
config=${RPE_CONFIG:-configs/imagenet256.py}
workdir=${RPE_WORKDIR:-}
bucket=${RPE_BUCKET:-}
shared_fs=${RPE_TPU_SHARED_FS:-0}
detach=${RPE_TPU_DETACH:-0}
worker=${RPE_TPU_WORKER:-0}
dry_run=0
command=""
overrides=()

while [[ $# -gt 0 ]]; do
  if [[ $1 == --*=* ]]; then  # --flag=value -> --flag value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    --name | --project | --zone | --type | --version | --repo | --ref | --remote-dir | \
      --python | --config | --workdir | --bucket | --worker)
      [[ $# -ge 2 ]] || die "option $1 needs a value"
      opt=${1#--}
      printf -v "${opt//-/_}" '%s' "$2"
      shift 2
      ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --shared-fs) shared_fs=1; shift ;;
    --detach) detach=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    -*) die "unknown option '$1' (see --help; config overrides go after --)" ;;
    *)
      [[ -z $command ]] || die "unexpected argument '$1' after command '$command' (config overrides go after --)"
      command=$1
      shift
      ;;
  esac
done

[[ -n $command ]] || { usage >&2; die "no command given; choose one of: ${COMMANDS[*]}"; }
[[ " ${COMMANDS[*]} " == *" $command "* ]] || die "unknown command '$command'; choose one of: ${COMMANDS[*]}"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name '$name' is not a TPU name: lowercase letters, digits and '-', starting with a letter"
[[ -n $zone ]] || die "--zone is empty; give a zone such as us-central2-b (RPE_TPU_ZONE)"
# The remote dir is removed and re-created by setup: keep it a plain path under $HOME.
[[ $remote_dir =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$ && $remote_dir != *..* ]] \
  || die "--remote-dir '$remote_dir' must be a relative path under the home directory (letters, digits, . _ - /)"
[[ $worker =~ ^(all|[0-9]+)$ ]] || die "--worker '$worker' must be a worker index (0, 1, ...) or 'all'"
if ((${#overrides[@]})) && [[ " ${RUN_MODES[*]} " != *" $command "* ]]; then
  die "config overrides after -- only apply to ${RUN_MODES[*]}, not '$command'"
fi

((dry_run)) || need_tool gcloud "https://cloud.google.com/sdk/docs/install"

gcloud_tpus=(gcloud compute tpus)
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

# Remote paths, as shell words for the workers' login shell (bash).
rdir="\"\$HOME\"/$(printf %q "$remote_dir")"
rvenv="\"\$HOME\"/$(printf %q "$remote_dir-venv")"
rstate="\"\$HOME\"/$(printf %q "$remote_dir-run")"

ssh_all() {  # ssh_all WORKER REMOTE_COMMAND
  run "${gcloud_tpus[@]}" tpu-vm ssh "$name" "${where[@]}" "--worker=$1" "--command=$2"
}

cmd_create() {
  local create
  if ((queued)); then
    create=("${gcloud_tpus[@]}" queued-resources create "$name" "--node-id=$name" "${where[@]}"
            "--accelerator-type=$type" "--runtime-version=$version")
  else
    create=("${gcloud_tpus[@]}" tpu-vm create "$name" "${where[@]}" "--accelerator-type=$type"
            "--version=$version")
  fi
  ((spot)) && create+=(--spot)
  local kind=tpu-vm
  ((queued)) && kind="queued-resources"
  local describe=("${gcloud_tpus[@]}" "$kind" describe "$name" "${where[@]}")
  if ((dry_run)); then
    note "dry run: the create command runs only if the describe command finds no '$name'"
    run "${describe[@]}"
    run "${create[@]}"
    return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then
    note "reusing the existing $kind '$name' in $zone (delete it first to change its type)"
  else
    "${create[@]}"
  fi
  ((queued)) || return 0
  local state
  while true; do
    state=$("${describe[@]}" "--format=value(state.state)")
    case $state in
      ACTIVE) note "queued resource '$name' is ACTIVE"; return 0 ;;
      FAILED | SUSPENDED) echo "tpu_vm.sh: queued resource '$name' is $state" >&2; exit 1 ;;
      *) note "queued resource '$name' is ${state:-unknown}; checking again in 60 s"; sleep 60 ;;
    esac
  done
}

cmd_setup() {
  local steps
  if [[ -n $repo ]]; then
    steps="rm -rf $rdir && git clone -q $(printf %q "$repo") $rdir"
    [[ -z $ref ]] || steps+=" && git -C $rdir checkout -q $(printf %q "$ref")"
  else
    ((dry_run)) || need_tool git "https://git-scm.com"
    local root tarball=${TMPDIR:-/tmp}/rpe_jax-$name.tar.gz src=${BASH_SOURCE[0]}
    [[ $src == */* ]] || src=./$src
    root=$(cd "${src%/*}/.." && pwd)
    if ! git -C "$root" diff --quiet "${ref:-HEAD}" -- 2>/dev/null; then
      note "the working tree differs from ${ref:-HEAD}; only ${ref:-HEAD} is copied (commit first)"
    fi
    run git -C "$root" archive --format=tar.gz "--output=$tarball" "${ref:-HEAD}"
    run "${gcloud_tpus[@]}" tpu-vm scp "$tarball" "$name:rpe_jax-src.tar.gz" "${where[@]}" --worker=all
    steps="rm -rf $rdir && mkdir -p $rdir && tar -xzf rpe_jax-src.tar.gz -C $rdir && rm rpe_jax-src.tar.gz"
  fi
  local py
  py=$(printf %q "$python")
  # Ubuntu 22.04 images ship Python 3.10; rpe_jax needs >= 3.11 (with venv/ensurepip).
  steps+=" && { $py -c 'import ensurepip' 2>/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q $py $py-venv; }; }"
  steps+=" && { [ -x $rvenv/bin/python ] || $py -m venv $rvenv; }"
  steps+=" && $rvenv/bin/python -m pip install -q --upgrade pip"
  steps+=" && $rvenv/bin/python -m pip install -q -e $rdir'[tpu]'"
  steps+=" && echo \"[\$(hostname)] installed in ~/$(printf %q "$remote_dir")\""
  ssh_all all "$steps"
}

cmd_run() {
  local mode=$1 hosts
  [[ -n $workdir || -z $bucket ]] || workdir="gs://$bucket/$name"
  [[ -n $workdir ]] || die "'$mode' needs a workdir: give --workdir=gs://BUCKET/DIR (or RPE_WORKDIR), or --bucket"
  [[ -n $config ]] || die "'$mode' needs a config: give --config=configs/FILE.py (or RPE_CONFIG)"
  if [[ $workdir != gs://* ]] && ! ((shared_fs)); then
    hosts=$(tpu_hosts "$type")
    if [[ -z $hosts ]]; then
      die "workdir '$workdir' is not gs:// and the host count of --type '$type' is unknown, so it is" \
        "treated as multi-host: use a gs:// workdir that every worker sees, or --shared-fs"
    elif ((hosts > 1)); then
      die "workdir '$workdir' is not gs:// but --type '$type' has $hosts workers that must all" \
        "read and write the same checkpoints: use gs://BUCKET/DIR, or --shared-fs for a shared mount"
    fi
  fi
  local args=(-m rpe_jax.main "--config=$config" "--workdir=$workdir" "--mode=$mode"
              --config.distributed.mode=auto "${overrides[@]}")
  # bash -c records the process id (for `stop`) and then becomes the python process.
  local launch
  launch="bash -c 'echo \$\$ > \"\$0\"; exec \"\$@\"' $rstate/pid $rvenv/bin/python$(printf ' %q' "${args[@]}")"
  if ((detach)); then
    ssh_all all "mkdir -p $rstate && cd $rdir && log=$rstate/$mode-\$(date +%Y%m%d-%H%M%S).log \
&& ln -sfn \"\$log\" $rstate/latest.log && { setsid nohup $launch > \"\$log\" 2>&1 < /dev/null & } \
&& echo \"[\$(hostname)] started in the background, log: \$log\""
  else
    ssh_all all "exec > >(sed -u \"s/^/[\$(hostname)] /\") 2>&1; mkdir -p $rstate && cd $rdir && exec $launch"
  fi
}

cmd_logs() {
  ssh_all "$worker" "tail -n 200 -F $rstate/latest.log"
}

cmd_stop() {
  ssh_all all "p=$rstate/pid; if [ -f \"\$p\" ] && kill -TERM \"\$(cat \"\$p\")\" 2>/dev/null; \
then echo \"[\$(hostname)] stopped process \$(cat \"\$p\")\"; else echo \"[\$(hostname)] nothing running\"; fi; \
rm -f \"\$p\""
}

cmd_delete() {
  if ((queued)); then
    run "${gcloud_tpus[@]}" queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run "${gcloud_tpus[@]}" tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

case $command in
  create) cmd_create ;;
  setup) cmd_setup ;;
  train | sample | evaluate | extract_latents) cmd_run "$command" ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
esac
