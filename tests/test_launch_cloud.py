"""Cloud launchers for 4 hosts: TPU VM slices (launch/tpu_vm.sh) and multi-host GPU
(launch/gpu_multinode.sh, SLURM or ssh).

Only dry runs and local bash: no gcloud, SLURM or ssh is needed. The remote command strings
that the dry runs print are also executed by a local bash against a fake python that prints
its arguments, so the nested quoting is checked end to end.
"""

import os
import shlex
import shutil
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_vm.sh")
GPU = os.path.join(ROOT, "launch", "gpu_multinode.sh")
BASH = shutil.which("bash")

CONFIG = "configs/demo.py"
GS_WORKDIR = "gs://bucket/a run"
SHARED_WORKDIR = "/shared/runs/a run"
OVERRIDE = "--config.eval.extractor_path=/data/o'brien net.pth"
FAKE_PYTHON = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n'


def _launch(script, *args, env=None, check=True):
    """Runs a launcher in ROOT with no RPE_*/SLURM_* variables inherited from the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RPE_", "SLURM_"))}
    proc = subprocess.run(
        [BASH, script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=30,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _main_args(words):
    """The arguments after `-m rpe_jax.main` in a list of shell words."""
    i = words.index("rpe_jax.main")
    assert words[i - 1] == "-m"
    return words[i + 1 :]


def _tpu_ssh(line):
    """Splits a printed `gcloud ... tpu-vm ssh` line into its words and the remote command."""
    words = shlex.split(line)
    assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], line
    (command,) = [w for w in words if w.startswith("--command=")]
    return words, command.removeprefix("--command=")


# ----------------------------------------------------------------------------------------- TPU


def _tpu_train_line(*extra):
    proc = _launch(TPU, "train", "--dry-run", "--type=v4-32", f"--config={CONFIG}", "--workdir", GS_WORKDIR,
                   *extra, "--", OVERRIDE)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return lines[0]


def test_tpu_train_is_one_ssh_to_all_workers_with_arguments_intact():
    words, remote = _tpu_ssh(_tpu_train_line())
    assert "--worker=all" in words and "rpe-jax" in words
    assert _main_args(shlex.split(remote)) == [
        f"--config={CONFIG}",
        f"--workdir={GS_WORKDIR}",
        "--mode=train",
        "--config.distributed.mode=auto",
        OVERRIDE,
    ]


def test_tpu_remote_command_runs_under_bash(tmp_path):
    """The worker's login shell gets the remote string: run it locally with a fake venv."""
    _, remote = _tpu_ssh(_tpu_train_line())
    (tmp_path / "rpe_jax").mkdir()
    _executable(tmp_path / "rpe_jax-venv" / "bin" / "python", FAKE_PYTHON)
    out = subprocess.run(
        [BASH, "-c", remote],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    prefix = f"[{socket.gethostname()}] "
    lines = out.stdout.splitlines()
    assert all(line.startswith(prefix) for line in lines), out.stdout
    args = [line.removeprefix(prefix) for line in lines]
    assert args[:2] == ["-m", "rpe_jax.main"] and args[2:] == _main_args(shlex.split(remote))
    assert args[3] == f"--workdir={GS_WORKDIR}" and args[-1] == OVERRIDE
    assert (tmp_path / "rpe_jax-run" / "pid").read_text().strip().isdigit()


def test_tpu_detached_run_writes_its_log_in_the_background():
    _, remote = _tpu_ssh(_tpu_train_line("--detach"))
    words = shlex.split(remote)
    assert "setsid" in words and "nohup" in words and "&" in words
    assert _main_args(words)[:5] == [
        f"--config={CONFIG}",
        f"--workdir={GS_WORKDIR}",
        "--mode=train",
        "--config.distributed.mode=auto",
        OVERRIDE,
    ]


@pytest.mark.parametrize(
    "tpu_type, extra, ok",
    [("v4-32", [], False), ("v5litepod-16", [], False), ("v4-8", [], True), ("v4-32", ["--shared-fs"], True)],
)
def test_tpu_local_workdir_needs_one_host_or_a_shared_fs(tpu_type, extra, ok):
    proc = _launch(
        TPU, "sample", "--dry-run", f"--type={tpu_type}", "--workdir=/tmp/run", *extra, check=False
    )
    if ok:
        assert proc.returncode == 0 and "--workdir=/tmp/run" in _tpu_ssh(proc.stdout)[1], proc.stderr
    else:
        assert proc.returncode == 2 and proc.stdout == ""
        assert "'/tmp/run' is not gs://" in proc.stderr and "4 workers" in proc.stderr, proc.stderr


def test_tpu_bucket_gives_the_default_workdir():
    proc = _launch(TPU, "evaluate", "--dry-run", env={"RPE_BUCKET": "my-bucket", "RPE_TPU_NAME": "tpu-a"})
    words, remote = _tpu_ssh(proc.stdout)
    assert "tpu-a" in words
    assert "--workdir=gs://my-bucket/tpu-a" in _main_args(shlex.split(remote))


def test_tpu_setup_copies_this_checkout_to_every_worker():
    archive, scp, ssh = _launch(TPU, "setup", "--dry-run").stdout.splitlines()
    archive, scp = shlex.split(archive), shlex.split(scp)
    assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == "HEAD"
    tarball = next(w.removeprefix("--output=") for w in archive if w.startswith("--output="))
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == tarball
    assert "--worker=all" in scp
    words, remote = _tpu_ssh(ssh)
    assert "--worker=all" in words
    remote_words = shlex.split(remote)
    assert remote_words[remote_words.index("-e") + 1] == "$HOME/rpe_jax[tpu]"


def test_tpu_create_and_delete_name_the_slice():
    lines = _launch(TPU, "create", "--dry-run", "--name=tpu-b", "--type=v4-32", "--zone=z-1", "--spot").stdout
    describe, create = [shlex.split(line) for line in lines.splitlines()]
    assert describe[4:6] == ["describe", "tpu-b"]
    assert create[4:6] == ["create", "tpu-b"]
    assert {"--accelerator-type=v4-32", "--zone=z-1", "--spot"} <= set(create)
    (delete,) = _launch(TPU, "delete", "--dry-run", "--name=tpu-b", "--queued").stdout.splitlines()
    assert shlex.split(delete)[3:6] == ["queued-resources", "delete", "tpu-b"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["trian", "--dry-run"], "unknown command 'trian'; choose one of: create setup train"),
        (["train", "--dry-run"], "'train' needs a workdir: give --workdir=gs://"),
        (["train", "--dry-run", "--workdir=gs://b/r", "--tpyo=1"], "unknown option '--tpyo'"),
        (["logs", "--dry-run", "--worker=first"], "--worker 'first' must be"),
        (["setup", "--dry-run", "--remote-dir=../x"], "--remote-dir '../x' must be"),
    ],
)
def test_tpu_bad_arguments_exit_2_naming_the_value(args, message):
    proc = _launch(TPU, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_tpu_without_gcloud_fails_before_running_anything(tmp_path):
    proc = _launch(TPU, "train", "--workdir=gs://b/r", env={"PATH": str(tmp_path)}, check=False)
    assert proc.returncode == 127 and "'gcloud' is not on PATH" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------- GPU

HOSTS = ["alice@h0", "h1", "h2", "h3"]


def _gpu_ssh_lines(*extra):
    proc = _launch(GPU, "--dry-run", "--hosts", ",".join(HOSTS), "--port=23456", "--dir=/src/rpe jax",
                   f"--config={CONFIG}", f"--workdir={SHARED_WORKDIR}", *extra, "--", OVERRIDE)  # fmt: skip
    return proc.stdout.splitlines()


def test_gpu_hosts_get_the_same_command_but_their_id():
    lines = _gpu_ssh_lines("--python=/venv/bin/python")
    assert len(lines) == 4
    remotes = []
    for i, line in enumerate(lines):
        words = shlex.split(line)
        assert words[0] == "ssh" and words[-2] == HOSTS[i]
        remote = shlex.split(words[-1])
        assert remote[:5] == ["cd", "/src/rpe jax", "&&", "exec", "/venv/bin/python"]
        assert remote[-1] == f"--config.distributed.process_id={i}"
        remotes.append(remote[:-1])
        assert words[:-2] == shlex.split(lines[0])[:-2]
    assert all(r == remotes[0] for r in remotes)
    args = _main_args(remotes[0])
    assert args == [
        f"--config={CONFIG}",
        f"--workdir={SHARED_WORKDIR}",
        "--mode=train",
        OVERRIDE,
        "--config.distributed.mode=explicit",
        "--config.distributed.coordinator_address=h0:23456",  # host 0 without its user
        "--config.distributed.num_processes=4",
    ]


def test_gpu_ssh_remote_command_runs_under_bash(tmp_path):
    python = _executable(tmp_path / "python", FAKE_PYTHON)
    line = _launch(GPU, "--dry-run", "--hosts=a,b,c,d", f"--dir={tmp_path}", f"--python={python}",
                   f"--workdir={SHARED_WORKDIR}", "--", OVERRIDE).stdout.splitlines()[2]  # fmt: skip
    out = subprocess.run([BASH, "-c", shlex.split(line)[-1]], capture_output=True, text=True, timeout=10)
    args = out.stdout.splitlines()
    assert args[:2] == ["-m", "rpe_jax.main"] and f"--workdir={SHARED_WORKDIR}" in args and OVERRIDE in args
    assert args[-1] == "--config.distributed.process_id=2"


def _slurm_env(tmp_path, **extra):
    scontrol = '#!/bin/sh\n[ "$*" = "show hostnames gpu[01-04]" ] || exit 3\nprintf "gpu0%s\\n" 1 2 3 4\n'
    _executable(tmp_path / "bin" / "scontrol", scontrol)
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[01-04]"}
    return {**env, "SLURM_NNODES": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77", **extra}


def test_gpu_slurm_starts_one_task_per_node_with_the_task_id(tmp_path):
    python = _executable(tmp_path / "python", FAKE_PYTHON)
    args = [f"--python={python}", f"--config={CONFIG}", f"--workdir={SHARED_WORKDIR}", "--", OVERRIDE]
    proc = _launch(GPU, "--dry-run", *args, env=_slurm_env(tmp_path))
    (line,) = proc.stdout.splitlines()
    words = shlex.split(line)
    assert words[0] == "srun"
    assert {"--nodes=4", "--ntasks=4", "--ntasks-per-node=1", f"--chdir={ROOT}"} <= set(words)
    assert "process_id=0" not in line, "the process id must come from each task, not from the launching shell"
    task = words[words.index("bash") :]
    assert "$SLURM_PROCID" in task[2]
    assert _main_args(task) == [
        f"--config={CONFIG}",
        f"--workdir={SHARED_WORKDIR}",
        "--mode=train",
        OVERRIDE,
        "--config.distributed.mode=explicit",
        "--config.distributed.coordinator_address=gpu01:12345",
        "--config.distributed.num_processes=4",
    ]
    # What srun would run on the third node.
    out = subprocess.run(
        task, capture_output=True, text=True, env={**os.environ, "SLURM_PROCID": "2"}, timeout=10
    )
    args = out.stdout.splitlines()
    assert args[-1] == "--config.distributed.process_id=2" and f"--workdir={SHARED_WORKDIR}" in args


def test_gpu_slurm_node_count_must_match_the_node_list(tmp_path):
    proc = _launch(GPU, "--dry-run", "--workdir=/w", env=_slurm_env(tmp_path, SLURM_NNODES="3"), check=False)
    assert proc.returncode == 2
    assert "SLURM_NNODES=3 but SLURM_JOB_NODELIST 'gpu[01-04]' has 4 hosts" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run", "--hosts=a,b"], "no workdir: give --workdir=DIR"),
        (["--dry-run", "--workdir=/w"], "no --hosts and not inside a SLURM allocation"),
        (["--dry-run", "--workdir=/w", "--hosts=a,,b"], "--hosts 'a,,b' has an empty"),
        (["--dry-run", "--workdir=/w", "--hosts=a", "--mode=trian"], "unknown --mode 'trian'; choose one of"),
        (["--dry-run", "--workdir=/w", "--hosts=a", "--port=99999"], "--port '99999' must be"),
    ],
)
def test_gpu_bad_arguments_exit_2_naming_the_value(args, message):
    proc = _launch(GPU, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_gpu_slurm_without_scontrol_fails_clearly(tmp_path):
    env = {"PATH": str(tmp_path), "SLURM_JOB_NODELIST": "gpu[01-04]", "SLURM_NNODES": "4"}
    proc = _launch(GPU, "--workdir=/w", env=env, check=False)
    assert proc.returncode == 127 and "'scontrol' is not on PATH" in proc.stderr, proc.stderr
