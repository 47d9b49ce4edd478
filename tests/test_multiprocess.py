"""Two processes x 4 simulated CPU devices through jax.distributed, against one process
with 8: training, exact restart, a process dying, sampling, and the data each reads.

Every run goes through launch/local_multiprocess.sh, as a user would start it.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo
from rpe_jax import checkpoint, sharding, train, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "local_multiprocess.sh")

# A tiny DiT at a constant learning rate (so a run's first k steps do not depend on its
# num_steps), a loss logged every step, and no sample grids during training.
TINY = (
    "--config.model.depth=2", "--config.model.width=64", "--config.model.heads=2",
    "--config.train.batch_size=8", "--config.train.log_every=1", "--config.train.warmup_steps=0",
    "--config.train.cosine_decay=False", "--config.train.checkpoint_every=2",
    "--config.sample.num_images=0", "--config.sample.steps=2", "--config.sample.resolutions=(16, 24)",
    "--config.sample.methods=('rpe2d',)", "--config.distributed.heartbeat_timeout=10",
    "--config.distributed.shutdown_timeout=30",
)  # fmt: skip


def _env(devices: int) -> dict:
    flags = f"--xla_force_host_platform_device_count={devices}"
    return {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": flags}


def _args(workdir, *overrides) -> list[str]:
    return [f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}", *TINY, *overrides]


def _launch(workdir, *overrides, processes=2, timeout=300) -> str:
    """Runs rpe_jax.main on `processes` processes x (8 / processes) devices; its output."""
    if processes == 1:
        cmd = [sys.executable, "-m", "rpe_jax.main", *_args(workdir, *overrides)]
    else:
        cmd = [LAUNCH, "-n", str(processes), "--devices-per-process", str(8 // processes), "--"]
        cmd += _args(workdir, *overrides)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _losses(out: str) -> dict[int, float]:
    """Step -> train loss, from process 0's log lines (or a single process's)."""
    found = re.findall(r"^(?!\[1\] ).*\] \[(\d+)\] .*train_loss=([0-9.e+-]+)", out, re.MULTILINE)
    return {int(step): float(loss) for step, loss in found}


def _state(workdir, step):
    config = demo.get_config()
    config.model.depth, config.model.width, config.model.heads = 2, 64, 2
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    tx = train_state.make_optimizer(config)
    _, state, shardings = train_state.create_train_state(config, mesh, tx)
    manager = checkpoint.make_manager(workdir, config)
    return checkpoint.restore(manager, step, checkpoint.abstract_state(state, shardings))


def _assert_states(a, b, rtol):
    leaves_a = jax.tree.leaves((a.params, a.ema_params, a.opt_state))
    leaves_b = jax.tree.leaves((b.params, b.ema_params, b.opt_state))
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * 1e-2)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process with 8 devices, 4 steps."""
    workdir = tmp_path_factory.mktemp("single")
    return workdir, _launch(workdir, "--config.train.num_steps=4", processes=1)


@pytest.mark.slow  # an end-to-end run
def test_two_processes_train_like_one(single, tmp_path):
    ref_dir, ref_out = single
    out = _launch(tmp_path, "--config.train.num_steps=4")
    assert "Process 1/2; 4 local and 8 global devices" in out
    reference = _losses(ref_out)
    assert sorted(reference) == [1, 2, 3, 4]
    np.testing.assert_allclose([_losses(out)[s] for s in reference], list(reference.values()), rtol=1e-5)
    _assert_states(_state(tmp_path, 4), _state(ref_dir, 4), rtol=1e-5)
    # Only process 0 writes metrics; each process saves its own data-iterator state.
    assert sum(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path)) == 1
    data = os.listdir(tmp_path / "checkpoints" / "4" / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data), data


@pytest.mark.slow  # an end-to-end run
def test_a_stopped_two_process_run_resumes_exactly(single, tmp_path):
    _launch(tmp_path, "--config.train.num_steps=2")
    out = _launch(tmp_path, "--config.train.num_steps=4")
    assert "Resuming from step 2" in out
    uninterrupted = tmp_path.parent / (tmp_path.name + "_whole")
    _launch(uninterrupted, "--config.train.num_steps=4")
    _assert_states(_state(tmp_path, 4), _state(uninterrupted, 4), rtol=0)
    _assert_states(_state(tmp_path, 4), _state(single[0], 4), rtol=1e-5)


DATA_CHILD = """
import hashlib, json, sys
import jax
from jax.experimental import multihost_utils
from configs import demo
from rpe_jax import distributed, sharding, train
config = demo.get_config()
config.train.batch_size = 8
config.distributed.update(mode="explicit", coordinator_address=sys.argv[1], num_processes=2,
                          process_id=int(sys.argv[2]), cpu_collectives="gloo")
distributed.initialize(config)
mesh = sharding.make_mesh(config.mesh.shape)
data = train._data_iterator(config, patch=2)
steps = []
for _ in range(3):
    batch = sharding.global_batch(next(data), mesh)
    rows = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in batch.items()}
    steps.append([hashlib.sha1(b"".join(rows[k][i].tobytes() for k in sorted(rows))).hexdigest()
                  for i in range(8)])
print("EXAMPLES", json.dumps(steps))
"""


def _digests(batch: dict) -> list[str]:
    rows = {k: np.asarray(v) for k, v in batch.items()}
    return [hashlib.sha1(b"".join(rows[k][i].tobytes() for k in sorted(rows))).hexdigest() for i in range(8)]


def test_two_processes_read_exactly_the_single_process_examples():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DATA_CHILD, address, str(i)],
            cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    config = demo.get_config()
    config.train.batch_size = 8
    mesh = sharding.make_mesh(config.mesh.shape)
    data = train._data_iterator(config, patch=2)
    want = [_digests(sharding.global_batch(next(data), mesh)) for _ in range(3)]
    assert len({d for step in want for d in step}) == 24, "examples and augmentations differ"
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert json.loads(re.search(r"EXAMPLES (.*)", out).group(1)) == want


@pytest.mark.slow  # an end-to-end run
def test_sampling_on_two_processes_writes_the_single_process_files(single, tmp_path):
    args = ("--mode=sample", "--config.sample.num_samples=6", "--config.sample.batch_size=3")
    files = {}
    for processes in (1, 2):
        workdir = tmp_path / f"p{processes}"
        shutil.copytree(single[0] / "checkpoints", workdir / "checkpoints")
        _launch(workdir, *args, processes=processes)
        folder = workdir / "generated" / "rpe2d"
        files[processes] = {
            str(path.relative_to(folder)): np.load(path)["images"] for path in folder.rglob("*.npz")
        }
    assert (
        sorted(files[1])
        == sorted(files[2])
        == [f"{res}/batch_{i:05d}.npz" for res in ("16x16", "24x24") for i in range(2)]
    )
    for name, images in files[1].items():
        np.testing.assert_array_equal(files[2][name], images, err_msg=name)
    assert files[1]["16x16/batch_00000.npz"].std() > 10, "samples are images, not blanks"


def _committed_steps(workdir) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


@pytest.mark.slow  # an end-to-end run
def test_a_dying_process_stops_the_launch_and_the_restart_resumes(tmp_path):
    cmd = [LAUNCH, "-n", "2", "--grace", "10", "--"]
    cmd += _args(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=3")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait for the pids, then for a complete checkpoint
        lines.append(line)
        if not _committed_steps(tmp_path):
            assert time.time() < deadline, "".join(lines[-40:])
            continue
        pids = re.search(r"pids (\d+) (\d+)", "".join(lines)).groups()
        os.kill(int(pids[1]), signal.SIGKILL)
        killed = time.time()
        break
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode != 0, out[-3000:]
    assert time.time() - killed < 60, "the surviving process must not hang"
    assert re.search(r"launch: process 1 \(pid \d+\) failed with status", out), out[-3000:]
    last = _committed_steps(tmp_path)[-1]
    out = _launch(tmp_path, f"--config.train.num_steps={last + 1}")
    assert f"Resuming from step {last}" in out
    assert last + 1 in _committed_steps(tmp_path)
