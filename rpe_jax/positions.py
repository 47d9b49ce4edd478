"""Token positions for 2D positional encodings: RPE-2D draws and inference grids.

A position grid assigns every token of an `(n_h, n_w)` token grid a (row, column)
coordinate. Tokens are in row-major order, so token `i * n_w + j` sits at
`(rows[i], cols[j])`.

RPE-2D (DESIGN.md 1.2-1.4) trains with positions drawn at random: per sample and per
axis, a sorted random subset of `{0, ..., L-1}` where `L = max_positions >= n`. At
inference a deterministic rule (`spread` by default) places a grid of up to `L` tokens
per axis inside that range, so every position the model sees has been trained.

Legend: B batch, N = n_h * n_w tokens, L positions per axis.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Grid = tuple[int, int]


def _check_grid(name: str, grid: Grid) -> Grid:
    if len(grid) != 2 or any(int(n) != n or n < 1 for n in grid):
        raise ValueError(f"{name} must be two positive integers (rows, columns), got {grid!r}.")
    return int(grid[0]), int(grid[1])


def _check_fits(grid: Grid, max_positions: Grid) -> None:
    if grid[0] > max_positions[0] or grid[1] > max_positions[1]:
        raise ValueError(
            f"Token grid {grid} does not fit in max_positions {max_positions}: RPE-2D draws "
            "each axis's positions from [0, L), so every side must be <= L. Raise "
            "config.positions.max_positions or use a smaller grid."
        )


def _combine_axes(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Row-major grid of (row, column) pairs.

    Args:
      rows: [..., n_h] positions of the token rows.
      cols: [..., n_w] positions of the token columns.

    Returns:
      [..., n_h * n_w, 2]: (row, column) per token, row-major.
    """
    n_h, n_w = rows.shape[-1], cols.shape[-1]
    batch = jnp.broadcast_shapes(rows.shape[:-1], cols.shape[:-1])
    r = jnp.broadcast_to(rows[..., :, None], (*batch, n_h, n_w))
    c = jnp.broadcast_to(cols[..., None, :], (*batch, n_h, n_w))
    return jnp.stack([r, c], axis=-1).reshape(*batch, n_h * n_w, 2)


def _window_of_sorted_subset(
    key: jax.Array, size: int, count: jax.Array, start: jax.Array, length: int
) -> jax.Array:
    """Entries `start .. start+size-1` of a sorted uniform random `count`-subset of [0, L).

    A uniform random subset is the set of indices whose i.i.d. uniform keys are among the
    `count` smallest; its sorted members are found with a cumulative sum, so `count` and
    `start` may be traced values (crop coupling draws a different count per sample).
    Work is O(L log L) for the one sort of L keys.

    Args:
      key: PRNG key.
      size: number of positions returned (static).
      count: [] int, size of the subset, `size <= count - start`, `count <= length`.
      start: [] int, index of the first returned member in the sorted subset.
      length: L, the range the subset is drawn from (static).

    Returns:
      [size] int32, strictly increasing, inside [0, L).
    """
    u = jax.random.uniform(key, (length,))
    threshold = jnp.sort(u)[count - 1]
    chosen = u <= threshold
    rank = jnp.cumsum(chosen) - 1  # index of each chosen position in the sorted subset
    slot = rank - start
    keep = chosen & (slot >= 0) & (slot < size)
    slot = jnp.where(keep, slot, size)  # out-of-window entries go to a dropped slot
    out = jnp.zeros((size,), jnp.int32)
    return out.at[slot].set(jnp.arange(length, dtype=jnp.int32), mode="drop")


def _draw_axis(key: jax.Array, size: int, counts: jax.Array, starts: jax.Array, length: int) -> jax.Array:
    """Per-sample windows of sorted random subsets: counts, starts [B] -> [B, size]."""
    keys = jax.random.split(key, counts.shape[0])
    draw = jax.vmap(_window_of_sorted_subset, in_axes=(0, None, 0, 0, None))
    return draw(keys, size, counts, starts, length)


def crop_positions(
    key: jax.Array,
    grid: Grid,
    resized_grid: jax.Array,
    offset: jax.Array,
    max_positions: Grid,
) -> jax.Array:
    """RPE-2D positions of a token-aligned crop, coupled to its resized image.

    Draws positions for the whole resized token grid (a sorted random subset of [0, L)
    per axis and sample) and returns the slice the crop covers: the crop's tokens keep
    the order and spacing they had inside the resized image (DESIGN.md 1.4).

    Args:
      key: PRNG key.
      grid: (n_h, n_w) token grid of the crop (static).
      resized_grid: [B, 2] int, token grid (rows, cols) of each resized image;
        `grid <= resized_grid <= max_positions` per axis.
      offset: [B, 2] int, the crop's top-left corner in tokens;
        `offset + grid <= resized_grid` per axis.
      max_positions: (L_h, L_w) static position ranges.

    Returns:
      [B, n_h * n_w, 2] int32 (row, column) positions, row-major.
    """
    grid = _check_grid("grid", grid)
    max_positions = _check_grid("max_positions", max_positions)
    _check_fits(grid, max_positions)
    resized_grid = jnp.asarray(resized_grid, jnp.int32)
    offset = jnp.asarray(offset, jnp.int32)
    key_rows, key_cols = jax.random.split(key)
    rows = _draw_axis(key_rows, grid[0], resized_grid[:, 0], offset[:, 0], max_positions[0])
    cols = _draw_axis(key_cols, grid[1], resized_grid[:, 1], offset[:, 1], max_positions[1])
    return _combine_axes(rows, cols)


def train_positions(
    key: jax.Array,
    batch_size: int,
    grid: Grid,
    max_positions: Grid,
    per_sample: bool = True,
) -> jax.Array:
    """RPE-2D training positions: sorted random subsets of [0, L) per axis.

    Each sample's row positions are a uniformly random sorted `n_h`-subset of
    `{0..L_h-1}`, drawn without replacement; column positions likewise and independently.

    Args:
      key: PRNG key; fold in the step so every step draws afresh.
      batch_size: B.
      grid: (n_h, n_w) token grid.
      max_positions: (L_h, L_w), each at least the grid side.
      per_sample: if False, one draw is shared by the whole batch.

    Returns:
      [B, n_h * n_w, 2] int32 (row, column) positions, row-major.

    Raises:
      ValueError: if the grid does not fit in `max_positions`.
    """
    grid = _check_grid("grid", grid)
    draws = batch_size if per_sample else 1
    whole = jnp.broadcast_to(jnp.asarray(grid, jnp.int32), (draws, 2))
    positions = crop_positions(key, grid, whole, jnp.zeros((draws, 2), jnp.int32), max_positions)
    return jnp.broadcast_to(positions, (batch_size, *positions.shape[1:]))


# Inference rules: (n, L) -> [n] positions on one axis, n <= L.
def spread_axis(n: int, length: int) -> np.ndarray:
    """Expected order statistics of the training draw: `round((k+1)(L+1)/(n+1) - 1)`.

    The k-th smallest of n values drawn without replacement from {1..L} has mean
    `(k+1)(L+1)/(n+1)` (k from 0); shifting to {0..L-1} gives the formula. Halves round
    up. `n == L` gives `0..L-1`.
    """
    return np.floor(np.arange(1, n + 1) * (length + 1) / (n + 1) - 0.5).astype(np.int32)


def fractional_axis(n: int, length: int) -> np.ndarray:
    """n > L positions evenly spaced over the trained span: `k (L-1)/(n-1)`, float32.

    (The order-statistics formula would step outside [0, L-1] when n > L.)
    """
    return np.linspace(0.0, length - 1.0, n, dtype=np.float32)


def contiguous_axis(n: int, length: int) -> np.ndarray:
    """`0..n-1`: the first n trained positions (the plain grid)."""
    del length
    return np.arange(n, dtype=np.int32)


def centered_axis(n: int, length: int) -> np.ndarray:
    """n consecutive positions centred in [0, L): `(L-n)//2 + 0..n-1`."""
    return np.arange(n, dtype=np.int32) + (length - n) // 2


INFERENCE_RULES: dict[str, Callable[[int, int], np.ndarray]] = {
    "spread": spread_axis,
    "contiguous": contiguous_axis,
    "centered": centered_axis,
}


def inference_positions(
    grid: Grid,
    max_positions: Grid,
    rule: str = "spread",
    allow_fractional: bool = False,
) -> jax.Array:
    """Deterministic positions for sampling on a grid inside the trained range.

    Args:
      grid: (n_h, n_w) token grid to sample.
      max_positions: (L_h, L_w) range the model was trained on.
      rule: one of INFERENCE_RULES.
      allow_fractional: for `spread` only, an axis longer than L gets evenly spaced
        float positions over [0, L-1] (`fractional_axis`) instead of an error.

    Returns:
      [n_h * n_w, 2] (row, column) positions, int32, or float32 when an axis needed
      fractional positions.

    Raises:
      ValueError: unknown rule, or a grid side above L without `allow_fractional`.
    """
    if rule not in INFERENCE_RULES:
        raise ValueError(f"Unknown position rule {rule!r}; choose one of {sorted(INFERENCE_RULES)}.")
    grid = _check_grid("grid", grid)
    max_positions = _check_grid("max_positions", max_positions)
    overflow = grid[0] > max_positions[0] or grid[1] > max_positions[1]
    if overflow and not (allow_fractional and rule == "spread"):
        _check_fits(grid, max_positions)
    axes = [
        fractional_axis(n, length) if n > length else INFERENCE_RULES[rule](n, length)
        for n, length in zip(grid, max_positions, strict=True)
    ]
    dtype = np.float32 if overflow else np.int32
    return _combine_axes(jnp.asarray(axes[0], dtype), jnp.asarray(axes[1], dtype))


def grid_positions(grid: Grid) -> jax.Array:
    """The plain grid `0..n-1` per axis used by fixed-grid RoPE and every baseline.

    Returns:
      [n_h * n_w, 2] int32 (row, column) positions, row-major.
    """
    n_h, n_w = _check_grid("grid", grid)
    return _combine_axes(jnp.arange(n_h, dtype=jnp.int32), jnp.arange(n_w, dtype=jnp.int32))


def _rpe2d_rule(key, batch_size, grid, max_positions, per_sample, crop):
    if crop is None:
        return train_positions(key, batch_size, grid, max_positions, per_sample)
    return crop_positions(key, grid, crop[:, :2], crop[:, 2:], max_positions)


def _grid_rule(key, batch_size, grid, max_positions, per_sample, crop):
    del key, batch_size, max_positions, per_sample, crop
    return grid_positions(grid)[None]


# Training rules: (key, B, grid, max_positions, per_sample, crop [B, 4] | None) -> [B or 1, N, 2].
TRAIN_RULES: dict[str, Callable] = {"rpe2d": _rpe2d_rule, "grid": _grid_rule}
