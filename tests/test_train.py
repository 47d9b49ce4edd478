"""Tests of the sharded train step, exact resume, preemption, NaN stop, and the CLI."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import demo
from rpe_jax import checkpoint, sharding, train, train_state
from rpe_jax.data import pipeline
from rpe_jax.diffusion import flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    config = demo.get_config()
    config.model.depth, config.model.width, config.model.heads = 2, 64, 2
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.ema_decay = 0.9
    config.sample.resolutions = (16,)
    config.sample.methods = ("rpe2d",)
    config.sample.num_images = 2
    config.sample.steps = 1
    config.sample.cfg_scale = 1.0
    return config


def _one_step(config, mesh):
    tx = train_state.make_optimizer(config)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    data = pipeline.create_dataset(config.data, split="train", resolution=(16, 16), patch=2, batch_size=8)
    batch = sharding.global_batch(next(iter(data)), mesh)
    state, metrics = train.jit_train_step(config, graphdef, tx, shardings, mesh)(state, batch)
    return state, float(metrics.loss.compute())


@pytest.mark.slow  # an end-to-end run
def test_one_step_is_the_same_on_every_mesh():
    config = tiny_config()
    config.train.grad_accum_steps = 2
    ref_state, ref_loss = _one_step(config, sharding.make_mesh((1, 1), jax.devices()[:1]))
    ref = jax.tree.leaves(ref_state.params)
    for shape in [(8, 1), (4, 2), (1, 8)]:
        mesh = sharding.make_mesh(shape)
        state, loss = _one_step(config, mesh)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for a, b in zip(jax.tree.leaves(state.params), ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
        qkv = state.params["blocks"][0]["attn"]["qkv"]["kernel"][...]
        fsdp = mesh.shape["fsdp"]
        assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
        assert qkv.addressable_shards[0].data.shape == (64 // fsdp, 192)
        mu = state.opt_state[1][0].mu["blocks"][0]["attn"]["qkv"]["kernel"][...]
        assert mu.sharding.spec == qkv.sharding.spec, "optimizer moments follow the parameters"


def test_partition_rules_fall_back_to_a_divisible_dimension():
    mesh = sharding.make_mesh((1, 8))
    spec = sharding._resolve(("embed", "mlp"), (12, 64), mesh)  # 12 is not divisible by 8
    assert spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert sharding._resolve(("embed", "embed"), (64, 64), mesh) == jax.sharding.PartitionSpec("fsdp", None)
    assert sharding._resolve((None,), (64,), mesh) == jax.sharding.PartitionSpec(None)
    with pytest.raises(ValueError, match=r"\(3, -1\) cannot fill 8 devices"):
        sharding.make_mesh((3, -1))
    with pytest.raises(ValueError, match="needs 4 devices; 8 are available"):
        sharding.make_mesh((2, 2))


def _restore_final(workdir, config, step, data=None):
    config = config.copy_and_resolve_references()
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    tx = train_state.make_optimizer(config)
    _, state, shardings = train_state.create_train_state(config, mesh, tx)
    manager = checkpoint.make_manager(workdir, config)
    return checkpoint.restore(manager, step, checkpoint.abstract_state(state, shardings), data)


@pytest.mark.slow  # an end-to-end run
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = tiny_config()
    config.mesh.shape = (2, 4)
    full = train.train_and_evaluate(config, str(tmp_path / "full"))
    half = config.copy_and_resolve_references()
    half.train.num_steps = 2
    train.train_and_evaluate(half, str(tmp_path / "resumed"))
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert int(resumed.step) == int(full.step) == 4
    for a, b in zip(
        jax.tree.leaves((full.params, full.ema_params)),
        jax.tree.leaves((resumed.params, resumed.ema_params)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The saved iterators of both runs point at the same next batch, the one after step 4's.
    following = []
    for run in ("full", "resumed"):
        data = train._data_iterator(config, patch=2)
        _restore_final(str(tmp_path / run), config, 4, data)
        following.append(next(data))
    fresh = train._data_iterator(config, patch=2)
    fifth = [next(fresh) for _ in range(5)][-1]
    for key in fifth:
        np.testing.assert_array_equal(following[0][key], fifth[key])
        np.testing.assert_array_equal(following[1][key], fifth[key])
    assert sorted(os.listdir(tmp_path / "full" / "samples")) == ["step_0000004_16x16.png"]


@pytest.mark.slow  # an end-to-end run
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config()
    config.mesh.shape = (2, 4)
    config.train.num_steps = 2
    train.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(flow, "velocity_loss", lambda p, d, n: (p.sum() * np.nan).reshape(1))
    config.train.num_steps = 4
    with pytest.raises(RuntimeError, match=r"loss is nan at step 3 \(last checked finite checkpoint: 2\)"):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    state = _restore_final(str(tmp_path), config, 2)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def _cli(workdir, *overrides, methods="('rpe2d',)"):
    args = [
        sys.executable, "-m", "rpe_jax.main", f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
        "--config.model.depth=2", "--config.model.width=64", "--config.model.heads=2",
        "--config.train.batch_size=8", "--config.train.log_every=2", "--config.sample.num_images=2",
        "--config.sample.steps=1", "--config.sample.resolutions=(16, 32)",
        f"--config.sample.methods={methods}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow  # an end-to-end run
def test_cli_trains_and_writes_checkpoint_metrics_and_samples(tmp_path):
    methods = "('rpe2d', 'extrapolation')"
    proc = _cli(tmp_path, "--config.train.num_steps=4", "--config.train.checkpoint_every=2", methods=methods)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_0000004_16x16.png", "step_0000004_32x32.png"]
    for side in (16, 32):  # two methods side by side: 2 images of `side` px each, 4 px apart
        png = np.asarray(Image.open(tmp_path / "samples" / f"step_0000004_{side}x{side}.png"))
        assert png.shape == (12 + side, 2 * (2 * side) + 4, 3)
    assert "train_loss" in out


@pytest.mark.slow  # an end-to-end run
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    proc = _cli(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000")
    deadline = time.time() + 300
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Compiled the train step" in line:
            time.sleep(2.0)
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines[-50:])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints")]
    assert len(steps) == 1 and 0 < steps[0] < 100000
    proc = _cli(tmp_path, f"--config.train.num_steps={steps[0] + 2}")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"Resuming from step {steps[0]}" in out
    assert str(steps[0] + 2) in os.listdir(tmp_path / "checkpoints")


@pytest.mark.slow  # an end-to-end run
def test_sample_mode_writes_batches_and_resumes(tmp_path):
    proc = _cli(tmp_path, "--config.train.num_steps=2")
    assert proc.communicate(timeout=600)[0] is not None and proc.returncode == 0
    sample_args = ("--mode=sample", "--config.sample.num_samples=6", "--config.sample.batch_size=2")
    proc = _cli(tmp_path, *sample_args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    for res in ("16x16", "32x32"):
        folder = tmp_path / "generated" / "rpe2d" / res
        assert sorted(os.listdir(folder)) == [
            "batch_00000.npz",
            "batch_00001.npz",
            "batch_00002.npz",
            "grid.png",
        ]
        batch = np.load(folder / "batch_00001.npz")
        side = int(res.split("x")[0])
        assert batch["images"].shape == (2, side, side, 3) and batch["images"].dtype == np.uint8
        np.testing.assert_array_equal(batch["labels"], [2, 3])
    kept = tmp_path / "generated" / "rpe2d" / "16x16" / "batch_00000.npz"
    before = os.path.getmtime(kept)
    os.remove(tmp_path / "generated" / "rpe2d" / "16x16" / "batch_00002.npz")
    proc = _cli(tmp_path, *sample_args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "1 of 3 batches to do" in out and "0 of 3 batches to do" in out
    assert os.path.getmtime(kept) == before
    assert os.path.exists(tmp_path / "generated" / "rpe2d" / "16x16" / "batch_00002.npz")


@pytest.mark.slow  # an end-to-end run
def test_init_from_another_run_takes_its_parameters_with_a_fresh_optimizer(tmp_path):
    config = tiny_config()
    config.mesh.shape = (2, 4)
    config.train.num_steps = 2
    source = train.train_and_evaluate(config, str(tmp_path / "low_res"))
    config.train.init_from = str(tmp_path / "low_res")
    config.data.resolution = 24  # a different training grid: 12x12 tokens
    config.positions.max_positions = 24
    config.sample.resolutions = (24,)
    config.train.num_steps = 0
    start = train.train_and_evaluate(config, str(tmp_path / "high_res"))
    assert int(start.step) == 0
    for a, b in zip(
        jax.tree.leaves((source.params, source.ema_params)),
        jax.tree.leaves((start.params, start.ema_params)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(float(abs(np.asarray(m)).max()) == 0 for m in jax.tree.leaves(start.opt_state[1][0].mu))
    config.train.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing.*no checkpoint"):
        train.train_and_evaluate(config, str(tmp_path / "other"))


def test_ema_decay_warms_up_to_the_configured_value():
    # (1 + step) / (10 + step), worked by hand, capped at the configured decay.
    np.testing.assert_allclose(
        [float(train.ema_decay(jnp.int32(s), 0.999)) for s in (0, 90, 10**6)], [0.1, 0.91, 0.999], rtol=1e-6
    )
