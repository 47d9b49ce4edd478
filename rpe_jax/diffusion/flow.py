"""Linear-path flow matching with velocity prediction (SiT, FiTv2).

Time convention: t = 0 is pure noise, t = 1 is data. The path is
`x_t = t x_1 + (1 - t) x_0` with data `x_1` and noise `x_0 ~ N(0, I)`; the model predicts
the velocity `dx_t/dt = x_1 - x_0`.

Legend: B batch, H x W image, C channels.
"""

from collections.abc import Callable

import jax


def _uniform(key: jax.Array, batch: int, mean: float, std: float) -> jax.Array:
    del mean, std
    return jax.random.uniform(key, (batch,))


def _logit_normal(key: jax.Array, batch: int, mean: float, std: float) -> jax.Array:
    """sigmoid(N(mean, std)) (SD3's logit-normal sampling; mean < 0 favours noise)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,)))


TIME_SAMPLERS: dict[str, Callable[[jax.Array, int, float, float], jax.Array]] = {
    "uniform": _uniform,
    "logit_normal": _logit_normal,
}


def sample_time(
    key: jax.Array, batch: int, rule: str = "uniform", mean: float = 0.0, std: float = 1.0
) -> jax.Array:
    """Training times t: [B] in [0, 1] by the named rule in TIME_SAMPLERS."""
    if rule not in TIME_SAMPLERS:
        raise ValueError(f"Unknown time sampler {rule!r}; choose one of {sorted(TIME_SAMPLERS)}.")
    return TIME_SAMPLERS[rule](key, batch, mean, std)


def interpolate(data: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = t data + (1 - t) noise. data, noise: [B, H, W, C]; t: [B]."""
    t = t.reshape(-1, *([1] * (data.ndim - 1)))
    return t * data + (1 - t) * noise


def velocity_loss(prediction: jax.Array, data: jax.Array, noise: jax.Array) -> jax.Array:
    """Per-sample mean squared error to the target velocity `data - noise`: [B]."""
    err = (prediction - (data - noise)) ** 2
    return err.reshape(err.shape[0], -1).mean(axis=1)


def shift_time(t: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """Timestep shift towards noise for alpha > 1: `t' = t / (t + alpha - alpha t)`.

    The SD3 map `s' = alpha s / (1 + (alpha - 1) s)` on the noise level `s = 1 - t`,
    written in this module's time; Lumina-Next's sampling shift is the same map.
    """
    return t / (t + alpha - alpha * t)


def resolution_shift(train_tokens: int, test_tokens: int) -> float:
    """The inference shift `alpha = sqrt(N_test / N_train)` (DESIGN.md 1.6)."""
    return (test_tokens / train_tokens) ** 0.5
