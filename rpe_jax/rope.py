"""2D axial rotary position encoding (RoPE), its resolution-extrapolation rules, and the
2D sin-cos absolute embedding.

Layout (FiT's): a head of dimension K is split in halves; the first half rotates by the
token's row position, the second by its column position. Each half of `d = K/2`
channels holds `d/2` rotation pairs with frequencies `f_k = theta^(-2k/d)`; inside an
axis half, channel `j` pairs with channel `j + d/2`. (FiT pairs adjacent channels
instead: a fixed channel permutation that the q/k projections absorb, so the two give
the same attention logits.)

A frequency rule turns (head dim, training grid, test grid, diffusion time) into per-axis
frequencies and a factor on the attention logits; an attention-scale rule gives a further
logit factor from token counts. Each registry is a dict name -> pure function. The
semantics of every baseline follow its authors' code (BASELINES.md), quirks included.

Diffusion time follows the project convention: t = 0 is pure noise, t = 1 is data (as in
SiT and Lumina-Next).

Legend: B batch, N tokens, H heads, K head dim, F = K/4 frequencies per axis, D width.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Grid = tuple[int, int]


class Rope(NamedTuple):
    """A 2D rotary encoding ready to apply.

    Attributes:
      freqs: [2, F] float32 angular frequencies for rows and columns.
      logit_scale: [] factor on the attention logits (1 for plain RoPE).
    """

    freqs: jax.Array
    logit_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class RopeOptions:
    """Constants of the frequency rules.

    Attributes:
      theta: RoPE base.
      watershed: Lumina-Next switches from PI to NTK frequencies once `t >= watershed`.
    """

    theta: float = 10000.0
    watershed: float = 0.3


def _axis_dim(head_dim: int) -> int:
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4 (two axes x pairs), got {head_dim}.")
    return head_dim // 2


def base_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """Per-axis RoPE frequencies `theta^(-2k/d)`, `d = head_dim/2`, `k < d/2`: [F]."""
    d = _axis_dim(head_dim)
    return (1.0 / theta ** (np.arange(0, d, 2) / d)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Application.


def rotary_tables(positions: jax.Array, freqs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cos and sin of the rotation angles.

    Args:
      positions: [B, N, 2] (row, column), int or float.
      freqs: [2, F] rows and columns frequencies.

    Returns:
      (cos, sin), each [B, N, 2, F] float32.
    """
    angles = positions.astype(jnp.float32)[..., None] * freqs.astype(jnp.float32)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates queries or keys by their tokens' 2D positions.

    Args:
      x: [B, N, H, K] queries or keys.
      cos, sin: [B, N, 2, F] from `rotary_tables`, F = K/4.

    Returns:
      [B, N, H, K], same dtype as x.
    """
    *lead, k = x.shape
    if cos.shape[-1] * 4 != k:
        raise ValueError(
            f"RoPE tables have {cos.shape[-1]} frequencies per axis; head dim {k} needs {k // 4}."
        )
    pairs = x.astype(jnp.float32).reshape(*lead, 2, 2, k // 4)  # [B, N, H, axis, half, F]
    a, b = pairs[..., 0, :], pairs[..., 1, :]  # [B, N, H, 2, F]
    cos, sin = cos[:, :, None], sin[:, :, None]  # [B, N, 1, 2, F]
    rotated = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-2)
    return rotated.reshape(x.shape).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Frequency rules, per axis: (d, s, n0, theta) -> [d/2] frequencies.


def _exponents(d: int) -> np.ndarray:
    return np.arange(0, d, 2) / d


def _extrapolation(d: int, s: float, n0: int, theta: float) -> np.ndarray:
    del s, n0
    return theta ** -_exponents(d)


def _interpolation(d: int, s: float, n0: int, theta: float) -> np.ndarray:
    del n0
    return theta ** -_exponents(d) / s


def ntk_base(d: int, s: float, theta: float = 10000.0) -> float:
    """NTK-aware RoPE base `theta * s^(d/(d-2))` (bloc97; FiT's `dynntk`)."""
    return theta * s ** (d / (d - 2))


def _ntk(d: int, s: float, n0: int, theta: float) -> np.ndarray:
    del n0
    return ntk_base(d, s, theta) ** -_exponents(d)


def _correction_dim(rotations: float, d: int, n0: int, theta: float) -> float:
    """Channel index whose wavelength fits `rotations` turns into the context `n0`."""
    return d * math.log(n0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def extrapolation_weights(d: int, n0: int, high_rot: float, low_rot: float, theta: float) -> np.ndarray:
    """YaRN / NTK-by-parts blend weights over the d/2 frequencies: 1 keeps a frequency
    as trained (extrapolates), 0 takes the interpolated one; a linear ramp between
    `floor(corr(high_rot))` (clamped at 0) and `ceil(corr(low_rot))` (clamped at d-1)."""
    low = max(math.floor(_correction_dim(high_rot, d, n0, theta)), 0)
    high: float = min(math.ceil(_correction_dim(low_rot, d, n0, theta)), d - 1)
    if low == high:
        high += 0.001  # as the peers do, to avoid a zero-width ramp
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0.0, 1.0)
    return 1.0 - ramp


def _yarn(d: int, s: float, n0: int, theta: float) -> np.ndarray:
    keep = extrapolation_weights(d, n0, high_rot=32, low_rot=1, theta=theta)
    return _interpolation(d, s, n0, theta) * (1 - keep) + _extrapolation(d, s, n0, theta) * keep


def _ntk_by_parts(d: int, s: float, n0: int, theta: float) -> np.ndarray:
    ntk_weight = extrapolation_weights(d, n0, high_rot=1.25, low_rot=0.75, theta=theta)
    freqs = _interpolation(d, s, n0, theta) * (1 - ntk_weight) + _ntk(d, s, n0, theta) * ntk_weight
    keep = extrapolation_weights(d, n0, high_rot=16, low_rot=2, theta=theta)
    return freqs * (1 - keep) + _extrapolation(d, s, n0, theta) * keep


# Logit multipliers of the FiT rules (their m on cos and sin, squared on the logits).


def _no_multiplier(train_grid: Grid, test_grid: Grid) -> float:
    del train_grid, test_grid
    return 1.0


def _yarn_multiplier(train_grid: Grid, test_grid: Grid) -> float:
    """`(0.1 ln s + 1)^2`, `s = max(1, max(n_h, n_w) / n0)` even for decoupled scales."""
    s = max(1.0, max(test_grid) / max(train_grid))
    return (0.1 * math.log(s) + 1.0) ** 2


def _proportion(length: float, train_length: float) -> float:
    """FiTv2's `sqrt(ln(2L) / ln(L0))` when `2L > L0`, else 1 (the factor 2 is theirs)."""
    return math.log(2 * length) / math.log(train_length) if 2 * length > train_length else 1.0


def _pro1_multiplier(train_grid: Grid, test_grid: Grid) -> float:
    return _proportion(max(test_grid), max(train_grid))


def _pro2_multiplier(train_grid: Grid, test_grid: Grid) -> float:
    return _proportion(test_grid[0] * test_grid[1], train_grid[0] * train_grid[1])


def _axis_scales(train_grid: Grid, test_grid: Grid, decouple: bool) -> tuple[float, float]:
    """FiT's scales: one shared `max(1, max side ratio)`, or one per axis (`--decouple`)."""
    ratios = [n / n0 for n, n0 in zip(test_grid, train_grid, strict=True)]
    if decouple:
        return max(1.0, ratios[0]), max(1.0, ratios[1])
    s = max(1.0, *ratios)
    return s, s


def _fit_rule(
    axis_rule: Callable[[int, float, int, float], np.ndarray],
    multiplier: Callable[[Grid, Grid], float],
    decouple: bool,
    head_dim: int,
    train_grid: Grid,
    test_grid: Grid,
    t: jax.Array | None,
    options: RopeOptions,
) -> Rope:
    """A FiT/FiTv2 rule: per-axis frequencies at the axis scale, times a logit factor."""
    del t
    d = _axis_dim(head_dim)
    scales = _axis_scales(train_grid, test_grid, decouple)
    freqs = [axis_rule(d, s, n0, options.theta) for s, n0 in zip(scales, train_grid, strict=True)]
    return Rope(
        jnp.asarray(np.stack(freqs), jnp.float32),
        jnp.asarray(multiplier(train_grid, test_grid), jnp.float32),
    )


def lumina_next_rule(
    clamp: bool, head_dim: int, train_grid: Grid, test_grid: Grid, t: jax.Array | None, options: RopeOptions
) -> Rope:
    """Lumina-Next time-aware scaled RoPE.

    One isotropic scale `s = sqrt(n_h n_w / (n0_h n0_w))`. While `t < watershed` (strict;
    t = 0 is noise) PI frequencies `f / s`, from then on NTK with base `theta * s` (not
    `s^(d/(d-2))`). Its proportional attention is the separate `proportional`
    attention-scale rule, which the peer never clamps.

    Args:
      clamp: the peer's sampler (Lumina-Next `lumina_next_t2i/sample.py`) passes
        `scale_factor = 1` unless the test resolution exceeds the training one, so grids of
        at most the training token count keep the trained frequencies (`lumina_next`);
        False scales smaller grids too, `s < 1` (`lumina_next_unclamped`).
    """
    if t is None:
        raise ValueError("The lumina_next frequency rules depend on the diffusion time: pass t.")
    d = _axis_dim(head_dim)
    s = math.sqrt(test_grid[0] * test_grid[1] / (train_grid[0] * train_grid[1]))
    s = max(1.0, s) if clamp else s
    pi = _interpolation(d, s, 0, options.theta)
    ntk = (options.theta * s) ** -_exponents(d)
    freqs = jnp.where(jnp.asarray(t) < options.watershed, pi.astype(np.float32), ntk.astype(np.float32))
    return Rope(jnp.stack([freqs, freqs]), jnp.asarray(1.0, jnp.float32))


FrequencyRule = Callable[[int, Grid, Grid, "jax.Array | None", RopeOptions], Rope]


def _fit_rules() -> dict[str, FrequencyRule]:
    """FiT's rules, each in its shared-scale form and its decoupled `vision_` form."""
    table = {
        "extrapolation": (_extrapolation, _no_multiplier),  # FiT `no`
        "pi": (_interpolation, _no_multiplier),  # FiT `linear`
        "ntk": (_ntk, _no_multiplier),  # FiT `dynntk`
        "ntk_by_parts": (_ntk_by_parts, _no_multiplier),  # FiT `partntk`
        "yarn": (_yarn, _yarn_multiplier),  # FiT `yarn`
        "ntk_pro1": (_ntk, _pro1_multiplier),  # FiTv2 `ntkpro1`
        "ntk_pro2": (_ntk, _pro2_multiplier),  # FiTv2 `ntkpro2`
    }
    rules: dict[str, FrequencyRule] = {}
    for name, (axis_rule, multiplier) in table.items():
        rules[name] = functools.partial(_fit_rule, axis_rule, multiplier, False)
        if name != "extrapolation":
            rules[f"vision_{name}"] = functools.partial(_fit_rule, axis_rule, multiplier, True)
    return rules


FREQUENCY_RULES: dict[str, FrequencyRule] = {
    **_fit_rules(),
    "lumina_next": functools.partial(lumina_next_rule, True),
    "lumina_next_unclamped": functools.partial(lumina_next_rule, False),
}


# ---------------------------------------------------------------------------------------
# Attention-scale rules: (N_train, N_test) token counts -> factor on the logits.


def _log_ratio(n_train: int, n_test: int) -> float:
    return math.log(n_test) / math.log(n_train)


ATTENTION_SCALE_RULES: dict[str, Callable[[int, int], float]] = {
    "none": lambda n_train, n_test: 1.0,
    # Lumina-Next proportional attention: sqrt(log_{N_train} N_test), not clamped.
    "proportional": lambda n_train, n_test: math.sqrt(_log_ratio(n_train, n_test)),
    # Entropy-invariant scaling: log_{N_train} N_test.
    "entropy": _log_ratio,
    # YaRN's mscale^2 with the per-side scale s = max(1, sqrt(N_test / N_train)).
    "yarn": lambda n_train, n_test: (0.1 * math.log(max(1.0, math.sqrt(n_test / n_train))) + 1) ** 2,
}


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"Unknown {kind} {name!r}; choose one of {sorted(registry)}.")
    return registry[name]


def make_rope(
    head_dim: int,
    train_grid: Grid,
    test_grid: Grid,
    frequency_rule: str = "extrapolation",
    attention_scale: str = "none",
    t: jax.Array | None = None,
    options: RopeOptions = RopeOptions(),
) -> Rope:
    """The rotary encoding for sampling on `test_grid` a model trained on `train_grid`.

    Args:
      head_dim: K.
      train_grid, test_grid: (n_h, n_w) token grids.
      frequency_rule: name in FREQUENCY_RULES.
      attention_scale: name in ATTENTION_SCALE_RULES; its factor multiplies the
        frequency rule's own (YaRN and NTK-pro carry one).
      t: [] diffusion time, needed by time-aware rules (lumina_next).
      options: RoPE base and rule constants.

    Returns:
      Rope with freqs [2, F] and the total logit factor.
    """
    freq_rule = _lookup(FREQUENCY_RULES, "frequency rule", frequency_rule)
    scale_rule = _lookup(ATTENTION_SCALE_RULES, "attention-scale rule", attention_scale)
    rope = freq_rule(head_dim, tuple(train_grid), tuple(test_grid), t, options)
    n_train, n_test = train_grid[0] * train_grid[1], test_grid[0] * test_grid[1]
    return Rope(rope.freqs, rope.logit_scale * scale_rule(n_train, n_test))


def sincos_embedding(positions: jax.Array, dim: int) -> jax.Array:
    """DiT's 2D sin-cos absolute embedding at arbitrary (row, column) positions.

    The first D/2 channels encode the column, the second D/2 the row, each as
    `[sin(p w), cos(p w)]` with `w_k = 10000^(-k/(D/4))`, `k < D/4` (DiT's meshgrid order).

    Args:
      positions: [B, N, 2] (row, column), int or float.
      dim: D, divisible by 4.

    Returns:
      [B, N, D] float32.
    """
    if dim % 4:
        raise ValueError(f"The 2D sin-cos embedding needs a width divisible by 4, got {dim}.")
    omega = 1.0 / 10000 ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4))
    p = positions.astype(jnp.float32)[..., ::-1, None] * omega  # [B, N, (col, row), D/4]
    emb = jnp.concatenate([jnp.sin(p), jnp.cos(p)], axis=-1)  # [B, N, 2, D/2]
    return emb.reshape(*positions.shape[:-1], dim)
