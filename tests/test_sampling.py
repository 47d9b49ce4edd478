"""Tests of the samplers: an analytic flow, the time shift, determinism across meshes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo
from rpe_jax import config_utils, methods, sample, sharding
from rpe_jax.diffusion import flow, sampling

MU, SIGMA = 1.5, 0.5  # data ~ N(MU, SIGMA^2), noise ~ N(0, 1)


def gaussian_velocity(x, t):
    """Exact flow-matching velocity E[x1 - x0 | x_t = x] for Gaussian data on the linear
    path x_t = t x1 + (1 - t) x0."""
    var = t**2 * SIGMA**2 + (1 - t) ** 2
    return MU + (t * SIGMA**2 - (1 - t)) / var * (x - t * MU)


def _final_moments(steps, solver, alpha=1.0):
    x0 = jax.random.normal(jax.random.key(0), (200_000,))
    x1 = sampling.integrate(gaussian_velocity, x0, sampling.time_grid(steps, alpha), solver)
    return float(x1.mean()), float(x1.std())


@pytest.mark.parametrize("solver", sorted(sampling.SOLVERS))
def test_solvers_reach_the_target_gaussian(solver):
    mean, std = _final_moments(256, solver)
    assert mean == pytest.approx(MU, abs=0.01)
    assert std == pytest.approx(SIGMA, abs=0.01)
    coarse = abs(_final_moments(4, solver)[1] - SIGMA)
    fine = abs(_final_moments(16, solver)[1] - SIGMA)
    assert fine < coarse, "more steps must reduce the error"


def test_heun_beats_euler_and_shift_keeps_the_target():
    assert abs(_final_moments(8, "heun")[1] - SIGMA) < abs(_final_moments(8, "euler")[1] - SIGMA)
    mean, std = _final_moments(64, "heun", alpha=2.0)  # a shifted grid still integrates exactly
    assert mean == pytest.approx(MU, abs=0.01) and std == pytest.approx(SIGMA, abs=0.01)


def test_time_shift():
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(flow.shift_time(t, 1.0), t, atol=1e-7)
    for alpha in (0.5, 2.0, 4.0):
        shifted = flow.shift_time(t, alpha)
        assert float(shifted[0]) == 0.0 and float(shifted[-1]) == pytest.approx(1.0)
        assert bool(jnp.all(jnp.diff(shifted) > 0))
    # alpha > 1 spends more of the trajectory near noise (small t): the SD3 map on the
    # noise level s = 1 - t, s' = a s / (1 + (a - 1) s), worked by hand at t = 0.5, a = 3.
    assert float(flow.shift_time(jnp.float32(0.5), 3.0)) == pytest.approx(1 - 1.5 / 2)
    assert flow.resolution_shift(256, 1024) == 2.0


TINY_SAMPLER = sampling.SamplerConfig(steps=3, cfg_scale=2.0)


def _tiny_config():
    config = demo.get_config()
    config.model.depth, config.model.width, config.model.heads = 2, 64, 2
    return config


def _tiny_sampler(method="rpe2d", grid=(12, 12), solver="heun"):
    config = _tiny_config()
    model = config_utils.build_model(config, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    fn = sampling.make_sampler(
        graphdef,
        grid,
        config_utils.train_grid(config),
        config_utils.max_positions(config),
        methods.get_method(method),
        dataclasses.replace(TINY_SAMPLER, solver=solver),
    )
    return fn, params


def test_sampling_is_deterministic_and_the_same_on_1_and_8_devices():
    fn, params = _tiny_sampler()
    labels = jnp.arange(8) % 10
    a = fn(params, jax.random.key(3), labels)
    assert a.shape == (8, 24, 24, 3)
    np.testing.assert_array_equal(a, fn(params, jax.random.key(3), labels))
    assert float(jnp.abs(a - fn(params, jax.random.key(4), labels)).max()) > 0.1
    mesh = sharding.make_mesh((4, 2))
    sharded = jax.device_put(params, sharding.state_shardings(params, mesh))
    b = fn(sharded, jax.random.key(3), jax.device_put(labels, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)


@pytest.mark.parametrize("solver", ["heun", "euler_maruyama"])
def test_a_sample_does_not_depend_on_the_batch_around_it(solver):
    fn, params = _tiny_sampler(solver=solver)
    labels = jnp.array([3, 1, 4, 1, 5, 9])
    whole = fn(params, jax.random.key(3), labels)
    np.testing.assert_allclose(fn(params, jax.random.key(3), labels[:4]), whole[:4], atol=1e-5)
    assert float(jnp.abs(whole[1] - whole[3]).max()) > 0.1, "same label, different noise"


def test_grid_sampler_pads_to_the_mesh_and_returns_every_image():
    config = _tiny_config()
    config.sample.steps = 2
    model = config_utils.build_model(config, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    mesh = sharding.make_mesh((4, 2))
    sampler = sample.GridSampler(config, graphdef, mesh)
    params = jax.device_put(params, sharding.state_shardings(params, mesh))
    labels = np.arange(5, dtype=np.int32)  # 5 rows on 8 devices: padded to 8
    out = sampler.images(params, (24, 24), "rpe2d", labels, jax.random.key(0))
    assert isinstance(out, np.ndarray) and out.shape == (5, 24, 24, 3)
    np.testing.assert_allclose(sampler.images(params, (24, 24), "rpe2d", labels[:3], jax.random.key(0)),
                               out[:3], atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "a, b, grid, same",
    [
        ("extrapolation", "pi", (8, 8), True),  # interpolation is the identity on the training grid
        ("extrapolation", "pi", (16, 16), False),
        ("yarn", "vision_yarn", (16, 16), True),  # per-axis = isotropic on a square grid
        ("yarn", "vision_yarn", (8, 16), False),
        ("rpe2d", "rpe2d_no_shift", (12, 12), False),  # only the solver times differ
        ("rpe2d", "rpe2d_contiguous", (12, 12), False),  # only the positions differ
        ("lumina_next", "extrapolation", (16, 16), False),  # time-aware frequencies
    ],
)
def test_methods_with_equal_sampler_inputs_draw_equal_samples(a, b, grid, same):
    config = _tiny_config()
    inputs = [
        sampling.sampler_inputs(
            config_utils.model_config(config).head_dim,
            grid,
            config_utils.train_grid(config),
            config_utils.max_positions(config),
            methods.get_method(m),
            TINY_SAMPLER,
        )
        for m in (a, b)
    ]
    assert sampling.same_sampler(*inputs) == same
    samplers = [_tiny_sampler(m, grid) for m in (a, b)]
    images = [np.asarray(fn(params, jax.random.key(0), jnp.arange(2))) for fn, params in samplers]
    assert np.allclose(images[0], images[1], atol=1e-5) == same


@pytest.mark.parametrize("method", ["lumina_next", "yarn", "rpe2d_contiguous"])
def test_every_kind_of_method_samples_a_larger_grid(method):
    fn, params = _tiny_sampler(method, grid=(16, 12))
    out = fn(params, jax.random.key(0), jnp.arange(2))
    assert out.shape == (2, 32, 24, 3) and bool(jnp.isfinite(out).all())


def test_sde_sampler_reaches_the_target_gaussian():
    x0 = jax.random.normal(jax.random.key(0), (200_000,))
    times = sampling.time_grid(400)
    x1 = sampling.integrate(gaussian_velocity, x0, times, "euler_maruyama", jax.random.key(1), sde_scale=1.0)
    assert float(x1.mean()) == pytest.approx(MU, abs=0.01)
    assert float(x1.std()) == pytest.approx(SIGMA, abs=0.015)
    # It is stochastic: another key gives other samples with the same moments.
    x2 = sampling.integrate(gaussian_velocity, x0, times, "euler_maruyama", jax.random.key(2), sde_scale=1.0)
    assert float(jnp.abs(x1 - x2).mean()) > 0.05


def test_time_shift_switch():
    rpe, plain = methods.get_method("rpe2d"), methods.get_method("extrapolation")
    cfg = sampling.SamplerConfig()
    assert sampling.shift_alpha(cfg, rpe, 256, 1024) == 2.0
    assert sampling.shift_alpha(cfg, plain, 256, 1024) == 1.0
    assert sampling.shift_alpha(sampling.SamplerConfig(time_shift="off"), rpe, 256, 1024) == 1.0
    assert sampling.shift_alpha(sampling.SamplerConfig(time_shift="3"), plain, 256, 1024) == 3.0
    with pytest.raises(ValueError, match="positive alpha.*'fast'"):
        sampling.fixed_shift("fast")


def test_guidance_interval_limits_guidance():
    # With the interval outside [0, 1] guidance never applies: same as cfg_scale = 1.
    _, params = _tiny_sampler()
    config = _tiny_config()
    graphdef = nnx.graphdef(config_utils.build_model(config, nnx.Rngs(0)))
    grid, train, limit = (12, 12), config_utils.train_grid(config), config_utils.max_positions(config)
    rpe = methods.get_method("rpe2d")

    def run(**kw):
        cfg = sampling.SamplerConfig(steps=2, solver="euler", **kw)
        return sampling.make_sampler(graphdef, grid, train, limit, rpe, cfg)(
            params, jax.random.key(0), jnp.arange(2)
        )

    unguided = run(cfg_scale=1.0)
    np.testing.assert_allclose(run(cfg_scale=3.0, guidance_interval=(2.0, 3.0)), unguided, atol=1e-5)
    assert float(jnp.abs(run(cfg_scale=3.0) - unguided).max()) > 1e-3
