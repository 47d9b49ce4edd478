"""Inference-time positional-encoding methods: one registry of named presets.

A method says how a model trained on one token grid is run on another: which positions
its tokens get, which RoPE frequency rule and attention-scale rule apply, and whether
the timestep shift `alpha = sqrt(N_test / N_train)` is used. RPE-2D methods need an
RPE-2D checkpoint; every baseline runs on one plain-RoPE checkpoint.
"""

import dataclasses

import jax

from rpe_jax import positions as positions_lib
from rpe_jax import rope as rope_lib


@dataclasses.dataclass(frozen=True)
class Method:
    """How to sample on a grid other than the training one.

    Attributes:
      positions: "grid" (plain `0..n-1`) or a rule of positions.INFERENCE_RULES.
      frequency_rule: name in rope.FREQUENCY_RULES.
      attention_scale: name in rope.ATTENTION_SCALE_RULES.
      time_shift: shift the sampling times by `alpha = sqrt(N_test / N_train)`.
    """

    positions: str = "grid"
    frequency_rule: str = "extrapolation"
    attention_scale: str = "none"
    time_shift: bool = False


def _baselines() -> dict[str, Method]:
    """Every frequency rule on the plain grid, as its authors run it."""
    table = {name: Method("grid", name) for name in rope_lib.FREQUENCY_RULES}
    # Lumina-Next comes with proportional attention and its sampling time shift; its
    # frequency scale is clamped at 1 (as the peer samples) or not (`_unclamped`).
    for name in ("lumina_next", "lumina_next_unclamped"):
        table[name] = Method("grid", name, "proportional", True)
    return table


METHODS: dict[str, Method] = {
    # RPE-2D: positions inside the trained range, attention-scale and timestep shift.
    "rpe2d": Method("spread", "extrapolation", "proportional", True),
    "rpe2d_contiguous": Method("contiguous", "extrapolation", "proportional", True),
    # Ablations: RPE-2D positions without one or both inference adjustments.
    "rpe2d_no_scale": Method("spread", "extrapolation", "none", True),
    "rpe2d_no_shift": Method("spread", "extrapolation", "proportional", False),
    "rpe2d_plain": Method("spread", "extrapolation", "none", False),
    **_baselines(),
}


# Families of methods, for plots that show the best member of each: every preset belongs
# to exactly one (tests/test_report.py checks it).
FAMILIES: dict[str, tuple[str, ...]] = {
    "rpe2d": ("rpe2d", "rpe2d_contiguous", "rpe2d_no_scale", "rpe2d_no_shift", "rpe2d_plain"),
    "extrapolation": ("extrapolation",),
    "pi": ("pi", "vision_pi"),
    "ntk": (
        "ntk",
        "vision_ntk",
        "ntk_by_parts",
        "vision_ntk_by_parts",
        "ntk_pro1",
        "vision_ntk_pro1",
        "ntk_pro2",
        "vision_ntk_pro2",
    ),
    "yarn": ("yarn", "vision_yarn"),
    "lumina": ("lumina_next", "lumina_next_unclamped"),
}


def family(name: str) -> str:
    """The family (a key of FAMILIES) of a method; a name outside METHODS (such as the
    evaluation's `train_resized` row) is its own family."""
    return next((f for f, members in FAMILIES.items() if name in members), name)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]


def method_positions(method: Method, grid: tuple[int, int], max_positions: tuple[int, int]) -> jax.Array:
    """Token positions of a method on a grid: [N, 2] (row, column)."""
    if method.positions == "grid":
        return positions_lib.grid_positions(grid)
    return positions_lib.inference_positions(grid, max_positions, method.positions)
