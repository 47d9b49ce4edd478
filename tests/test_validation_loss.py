"""Tests of the flow-matching validation loss: against the model called by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo
from rpe_jax import config_utils, methods, positions, rope, validation_loss

TRAIN_GRID = (8, 8)  # demo: 16 px, patch 2


def _tiny():
    config = demo.get_config()
    config.model.depth, config.model.width, config.model.heads = 2, 64, 2
    model = config_utils.build_model(config, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    # Random, non-zero weights everywhere (the zero-initialised output layer included).
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    return config, graphdef, params


def _losses(config, graphdef, params, name, grid, data, labels, noise, times):
    method = methods.get_method(name)
    head_dim = config_utils.model_config(config).head_dim
    pos = np.asarray(methods.method_positions(method, grid, config_utils.max_positions(config)))
    ropes = validation_loss.method_ropes(head_dim, grid, TRAIN_GRID, method, times, rope.RopeOptions())
    fn = validation_loss.make_loss_fn(graphdef)
    return validation_loss.validation_losses(fn, params, data, labels, noise, times, pos, ropes, batch_size=2)


def _inputs(grid, num_images=3, num_times=4):
    shape = (num_images, grid[0] * 2, grid[1] * 2, 3)
    data = np.asarray(jax.random.uniform(jax.random.key(5), shape, minval=-1, maxval=1))
    labels = np.arange(num_images, dtype=np.int32)
    times = validation_loss.loss_times(num_times)
    noise = validation_loss.fixed_noise(0, num_times, shape)
    return data, labels, noise, times


def test_loss_times_are_midpoints():
    np.testing.assert_allclose(validation_loss.loss_times(4), [0.125, 0.375, 0.625, 0.875])
    with pytest.raises(ValueError, match="got 0"):
        validation_loss.loss_times(0)


def test_fixed_noise_depends_only_on_seed_and_shape():
    a = validation_loss.fixed_noise(3, 2, (1, 4, 4, 3))
    np.testing.assert_array_equal(a, validation_loss.fixed_noise(3, 2, (1, 4, 4, 3)))
    assert not np.allclose(a, validation_loss.fixed_noise(4, 2, (1, 4, 4, 3)))
    assert not np.allclose(a[0], a[1])  # a fresh draw per time


@pytest.mark.parametrize("name", ["lumina_next_unclamped", "yarn", "rpe2d"])
def test_loss_equals_the_model_called_by_hand(name):
    config, graphdef, params = _tiny()
    grid = (12, 10)
    data, labels, noise, times = _inputs(grid)
    got = _losses(config, graphdef, params, name, grid, data, labels, noise, times)
    model = nnx.merge(graphdef, params)
    method = methods.get_method(name)
    if method.positions == "grid":
        pos = positions.grid_positions(grid)
    else:
        pos = positions.inference_positions(grid, config_utils.max_positions(config), method.positions)
    for j, t in enumerate(times):
        r = rope.make_rope(
            32, TRAIN_GRID, grid, method.frequency_rule, method.attention_scale, jnp.float32(t)
        )
        x_t = t * data + (1 - t) * noise[j]  # linear path: t = 1 is data
        v = model(jnp.asarray(x_t), jnp.full((3,), t), jnp.asarray(labels), pos[None], None, r)
        expected = ((np.asarray(v) - (data - noise[j])) ** 2).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(got[:, j], expected, rtol=2e-5)


def test_equal_inputs_give_equal_losses_and_different_ones_differ():
    config, graphdef, params = _tiny()
    grid = (12, 12)
    args = _inputs(grid)
    loss = {
        m: _losses(config, graphdef, params, m, grid, *args)
        for m in ("rpe2d", "rpe2d_no_shift", "rpe2d_contiguous")
    }
    # The time shift only moves the sampler's times: the loss at a given time is the same.
    np.testing.assert_array_equal(loss["rpe2d"], loss["rpe2d_no_shift"])
    assert not np.allclose(loss["rpe2d"], loss["rpe2d_contiguous"])  # other positions


def test_summarize_mean_error_and_bands():
    losses = np.arange(24, dtype=float).reshape(3, 8)
    out = validation_loss.summarize(losses)
    per_image = np.array([3.5, 11.5, 19.5])
    assert out["fm_loss"] == pytest.approx(11.5)
    assert out["fm_loss_se"] == pytest.approx(np.std(per_image, ddof=1) / np.sqrt(3))
    # 4 bands of 2 consecutive times.
    assert [out[f"fm_loss_t{k}"] for k in range(4)] == pytest.approx([8.5, 10.5, 12.5, 14.5])
    assert sorted(validation_loss.summarize(losses[:, :2])) == [
        "fm_loss",
        "fm_loss_se",
        "fm_loss_t0",
        "fm_loss_t1",
    ]
