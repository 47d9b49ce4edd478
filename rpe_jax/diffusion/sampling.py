"""ODE and SDE samplers with classifier-free guidance on any token grid.

Integrates the learned velocity from t = 0 (noise) to t = 1 (data) over a time grid that
the method may shift towards noise; the method also fixes the positions and the RoPE
rule, which may depend on t (Lumina-Next). One jitted function per grid and method.

The SDE `dx = [v + g^2/2 score] dt + g dW` has the ODE's marginals for any g; with the
linear path the score is `-(x - t v) / (1 - t)`, and `g^2 = 2 s (1 - t)` (s =
`sde_scale`) keeps the drift bounded and the noise vanishing at the data end.

Legend: B batch, H x W image, C channels, N tokens.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rpe_jax import methods as methods_lib
from rpe_jax import rope as rope_lib
from rpe_jax.diffusion import flow


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Attributes:
    steps: number of solver steps.
    solver: a name in SOLVERS.
    cfg_scale: guidance scale w (1 disables guidance: no unconditional pass).
    guidance_interval: (t_lo, t_hi): guidance only for t in this interval.
    time_shift: "method" (the method's own switch), "off", or a fixed alpha ("2.0").
    sde_scale: s of the SDE's diffusion g^2 = 2 s (1 - t).
    rope_options: RoPE base and rule constants.
    """

    steps: int = 50
    solver: str = "heun"
    cfg_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    time_shift: str = "method"
    sde_scale: float = 1.0
    rope_options: rope_lib.RopeOptions = rope_lib.RopeOptions()


def _euler(velocity, x, t0, t1, key, sde_scale):
    del key, sde_scale
    return x + (t1 - t0) * velocity(x, t0)


def _heun(velocity, x, t0, t1, key, sde_scale):
    del key, sde_scale
    v0 = velocity(x, t0)
    x1 = x + (t1 - t0) * v0
    return x + (t1 - t0) * 0.5 * (v0 + velocity(x1, t1))


def normal_like(key: jax.Array, x: jax.Array | jax.ShapeDtypeStruct) -> jax.Array:
    """Standard normal noise shaped like x [B, ...] from one key, or from one key per
    sample (`key` [B]: sample i's noise then depends on its own key only)."""
    if key.ndim == 0:
        return jax.random.normal(key, x.shape, x.dtype)
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)


def _fold_in(key: jax.Array, i) -> jax.Array:
    """fold_in of one key or of each of a batch of keys."""
    return jax.random.fold_in(key, i) if key.ndim == 0 else jax.vmap(jax.random.fold_in, (0, None))(key, i)


def _euler_maruyama(velocity, x, t0, t1, key, sde_scale):
    """One Euler-Maruyama step of the marginal-preserving SDE (module docstring)."""
    v = velocity(x, t0)
    dt = t1 - t0
    drift = v - sde_scale * (x - t0 * v)  # v + g^2/2 * score, g^2 = 2 s (1 - t)
    noise = jnp.sqrt(2 * sde_scale * (1 - t0) * dt) * normal_like(key, x)
    return x + dt * drift + noise


SOLVERS: dict[str, Callable] = {"euler": _euler, "heun": _heun, "euler_maruyama": _euler_maruyama}


def integrate(
    velocity: Callable,
    x: jax.Array,
    times: jax.Array,
    solver: str = "heun",
    key: jax.Array | None = None,
    sde_scale: float = 1.0,
) -> jax.Array:
    """Integrates dx/dt = velocity(x, t) (or its SDE) over the time grid `times` [S + 1].

    Args:
      velocity: (x [B, ...], t []) -> [B, ...].
      x: [B, ...] start (noise at t = times[0]).
      times: [S + 1] increasing times.
      solver: name in SOLVERS.
      key: PRNG key of the SDE's noise, one or one per sample [B] (unused by the ODEs).
      sde_scale: s of the SDE's diffusion.

    Returns:
      x at times[-1].
    """
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {sorted(SOLVERS)}.")
    step_fn = SOLVERS[solver]
    key = jax.random.key(0) if key is None else key

    def body(i, x):
        return step_fn(velocity, x, times[i], times[i + 1], _fold_in(key, i), sde_scale)

    return jax.lax.fori_loop(0, times.shape[0] - 1, body, x)


def fixed_shift(time_shift: str) -> float | None:
    """Parses SamplerConfig.time_shift: None for "method"/"off", else the fixed alpha.

    Raises:
      ValueError: anything but "method", "off" or a positive number.
    """
    if time_shift in ("method", "off"):
        return None
    try:
        alpha = float(time_shift)
    except ValueError:
        alpha = 0.0
    if alpha <= 0:
        raise ValueError(
            f"time_shift must be 'method', 'off' or a positive alpha like '2.0', got {time_shift!r}."
        )
    return alpha


def shift_alpha(config: SamplerConfig, method: methods_lib.Method, n_train: int, n_test: int) -> float:
    """The time-shift alpha: the method's `sqrt(N_test / N_train)` switch, off, or fixed."""
    fixed = fixed_shift(config.time_shift)
    if fixed is not None:
        return fixed
    if config.time_shift == "method" and method.time_shift:
        return flow.resolution_shift(n_train, n_test)
    return 1.0


def time_grid(steps: int, alpha: float = 1.0) -> jax.Array:
    """[steps + 1] times from 0 to 1, shifted towards noise for alpha > 1."""
    return flow.shift_time(jnp.linspace(0.0, 1.0, steps + 1), alpha)


def sampler_inputs(
    head_dim: int,
    grid: tuple[int, int],
    train_grid: tuple[int, int],
    max_positions: tuple[int, int],
    method: methods_lib.Method,
    config: SamplerConfig,
) -> dict[str, np.ndarray]:
    """Everything a method changes in `make_sampler`'s computation, as arrays: the token
    positions [N, 2], the solver times [S + 1], and the RoPE frequencies [S + 1, 2, F] and
    logit factor [S + 1] at each of those times (the only times a solver evaluates).

    Two methods with equal inputs at a grid draw the same samples, so a sweep samples one
    and copies it (`methods_lib` presets coincide often: every rule is the identity on the
    training grid, and the per-axis rules equal the isotropic ones on square grids).
    """
    n_train, n_test = train_grid[0] * train_grid[1], grid[0] * grid[1]
    times = time_grid(config.steps, shift_alpha(config, method, n_train, n_test))
    ropes = [
        rope_lib.make_rope(
            head_dim, train_grid, grid, method.frequency_rule, method.attention_scale, t, config.rope_options
        )
        for t in times
    ]
    return {
        "positions": np.asarray(methods_lib.method_positions(method, grid, max_positions)),
        "times": np.asarray(times),
        "freqs": np.stack([np.asarray(r.freqs) for r in ropes]),
        "logit_scale": np.stack([np.asarray(r.logit_scale) for r in ropes]),
    }


def same_sampler(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Whether two `sampler_inputs` agree (to float32 rounding: rules reach equal values
    through different arithmetic)."""
    return all(a[k].shape == b[k].shape and np.allclose(a[k], b[k], rtol=1e-6, atol=0) for k in a)


def make_sampler(
    graphdef: nnx.GraphDef,
    grid: tuple[int, int],
    train_grid: tuple[int, int],
    max_positions: tuple[int, int],
    method: methods_lib.Method,
    config: SamplerConfig,
):
    """Builds a jitted `sample(params, key, labels) -> images`.

    Args:
      graphdef: the DiT's graph definition (nnx.split).
      grid: (n_h, n_w) token grid to sample.
      train_grid: the model's training token grid.
      max_positions: (L_h, L_w) of the RPE-2D training range.
      method: positions, frequency rule, attention scale and time shift.
      config: solver settings.

    Returns:
      sample(params, key, labels [B]) -> [B, n_h P, n_w P, C] float32. Sample i uses
      the keys `fold_in(key, i)` only, so it does not depend on the batch around it
      (its size, padding, or how it is split over devices and processes).
    """
    pos = methods_lib.method_positions(method, grid, max_positions)[None]  # [1, N, 2]
    n_train, n_test = train_grid[0] * train_grid[1], grid[0] * grid[1]
    times = time_grid(config.steps, shift_alpha(config, method, n_train, n_test))
    lo, hi = config.guidance_interval

    def sample(params: nnx.State, key: jax.Array, labels: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        cfg = model.config
        guided = config.cfg_scale != 1.0
        b = labels.shape[0]
        y = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)]) if guided else labels

        def velocity(x, t):
            rope = rope_lib.make_rope(
                cfg.head_dim,
                train_grid,
                grid,
                method.frequency_rule,
                method.attention_scale,
                t,
                config.rope_options,
            )
            xx = jnp.concatenate([x, x]) if guided else x
            v = model(xx, jnp.full((xx.shape[0],), t), y, pos, None, rope)
            if not guided:
                return v
            cond, uncond = v[:b], v[b:]
            scale = jnp.where((t >= lo) & (t <= hi), config.cfg_scale, 1.0)
            return uncond + scale * (cond - uncond)

        shape = (b, grid[0] * cfg.patch, grid[1] * cfg.patch, cfg.in_channels)
        keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(jnp.arange(b))
        x = normal_like(keys[:, 0], jax.ShapeDtypeStruct(shape, jnp.float32))
        return integrate(velocity, x, times, config.solver, keys[:, 1], config.sde_scale)

    return jax.jit(sample)
