"""Tests of RPE-2D training draws, inference rules and crop coupling."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rpe_jax import positions


def _axes(pos: np.ndarray, grid):
    """[B, N, 2] -> rows [B, n_h], cols [B, n_w], checking the row-major grid structure."""
    n_h, n_w = grid
    g = np.asarray(pos).reshape(pos.shape[0], n_h, n_w, 2)
    assert (g[..., 0] == g[:, :, :1, 0]).all(), "row position must be constant along a row"
    assert (g[..., 1] == g[:, :1, :, 1]).all(), "column position must be constant down a column"
    return g[:, :, 0, 0], g[:, 0, :, 1]


def test_train_positions_sorted_in_range_and_per_sample():
    grid, max_pos = (6, 9), (16, 20)
    pos = positions.train_positions(jax.random.key(0), 64, grid, max_pos)
    assert pos.shape == (64, 54, 2) and pos.dtype == jnp.int32
    rows, cols = _axes(np.asarray(pos), grid)
    for axis, length in ((rows, 16), (cols, 20)):
        assert (np.diff(axis, axis=1) > 0).all()
        assert axis.min() >= 0 and axis.max() < length
    assert len({tuple(r) for r in rows}) > 50, "samples must draw independently"


def test_train_positions_shared_draw():
    pos = np.asarray(positions.train_positions(jax.random.key(1), 8, (4, 4), (8, 8), per_sample=False))
    assert (pos == pos[:1]).all()


def test_subsets_are_uniform_over_all_subsets():
    # n=2 of L=5: each of the C(5,2)=10 subsets must be equally likely.
    b = 20000
    pos = positions.train_positions(jax.random.key(2), b, (2, 2), (5, 5))
    rows, cols = _axes(np.asarray(pos), (2, 2))
    subsets = list(itertools.combinations(range(5), 2))
    for axis in (rows, cols):
        counts = [np.sum((axis[:, 0] == a) & (axis[:, 1] == c)) for a, c in subsets]
        assert sum(counts) == b
        assert stats.chisquare(counts).pvalue > 1e-3


def test_marginals_uniform_and_axes_independent():
    b, n, length = 8000, 8, 24
    pos = positions.train_positions(jax.random.key(3), b, (n, n), (length, length))
    rows, cols = _axes(np.asarray(pos), (n, n))
    p = n / length
    for axis in (rows, cols):
        counts = np.bincount(axis.ravel(), minlength=length)
        z = (counts - b * p) / math.sqrt(b * p * (1 - p))
        assert np.abs(z).max() < 5
    corr = np.corrcoef(rows[:, 0], cols[:, 0])[0, 1]
    assert abs(corr) < 0.05
    assert np.mean((rows == cols).all(axis=1)) < 0.01


def test_train_positions_jit_stays_on_device():
    fn = jax.jit(positions.train_positions, static_argnums=(1, 2, 3, 4))
    key = jax.random.key(4)
    fn(key, 4, (8, 8), (16, 16))  # compile
    with jax.transfer_guard("disallow"):
        out = fn(key, 4, (8, 8), (16, 16))
    assert out.shape == (4, 64, 2)


def test_train_positions_rejects_grid_beyond_range():
    with pytest.raises(ValueError, match=r"\(20, 8\).*\(16, 16\)"):
        positions.train_positions(jax.random.key(0), 2, (20, 8), (16, 16))


def test_spread_known_values():
    spread = positions.spread_axis
    np.testing.assert_array_equal(spread(32, 32), np.arange(32))
    # (k+1)(L+1)/(n+1) - 1 worked by hand, rounded half up.
    np.testing.assert_array_equal(spread(8, 32), [3, 6, 10, 14, 17, 21, 25, 28])
    np.testing.assert_array_equal(spread(16, 32), [1, 3, 5, 7, 9, 11, 13, 15, 16, 18, 20, 22, 24, 26, 28, 30])


def test_spread_is_the_mean_of_the_training_draw():
    # The rule must be the (rounded) expected order statistics of what training draws.
    pos = positions.train_positions(jax.random.key(5), 20000, (8, 1), (32, 1))
    rows, _ = _axes(np.asarray(pos), (8, 1))
    np.testing.assert_array_equal(np.round(rows.mean(axis=0)), positions.spread_axis(8, 32))


def test_inference_rules_and_errors():
    pos = np.asarray(positions.inference_positions((2, 3), (4, 8), "contiguous"))
    np.testing.assert_array_equal(pos[:, 0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(pos[:, 1], [0, 1, 2, 0, 1, 2])
    pos = np.asarray(positions.inference_positions((2, 3), (4, 8), "centered"))
    np.testing.assert_array_equal(pos[:3, 1], [2, 3, 4])
    np.testing.assert_array_equal(pos[::3, 0], [1, 2])
    with pytest.raises(ValueError, match=r"\(40, 8\).*\(32, 32\)"):
        positions.inference_positions((40, 8), (32, 32))
    with pytest.raises(ValueError, match="Unknown position rule 'bogus'.*spread"):
        positions.inference_positions((4, 4), (8, 8), "bogus")


def test_fractional_spread_when_allowed():
    pos = np.asarray(positions.inference_positions((48, 16), (32, 32), allow_fractional=True))
    assert pos.dtype == np.float32
    rows, cols = _axes(pos[None], (48, 16))
    assert (np.diff(rows[0]) > 0).all() and rows.min() >= 0 and rows.max() <= 31
    np.testing.assert_array_equal(cols[0], positions.spread_axis(16, 32))


def test_grid_positions():
    pos = np.asarray(positions.grid_positions((3, 2)))
    np.testing.assert_array_equal(pos, [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]])


def test_crop_of_the_full_range_is_the_offset_window():
    # Drawing all L positions leaves no randomness: the crop must be offset + 0..n-1.
    grid, length = (4, 6), 16
    offset = jnp.array([[3, 0], [12, 10]])
    pos = positions.crop_positions(
        jax.random.key(6), grid, jnp.full((2, 2), length), offset, (length, length)
    )
    rows, cols = _axes(np.asarray(pos), grid)
    np.testing.assert_array_equal(rows, np.asarray(offset[:, :1]) + np.arange(4))
    np.testing.assert_array_equal(cols, np.asarray(offset[:, 1:]) + np.arange(6))


def test_crop_is_a_window_of_the_resized_draw():
    # The crop's first row is order statistic (top+1) of a `count`-subset of [0, L):
    # its mean is (top+1)(L+1)/(count+1) - 1, and the window is strictly increasing.
    b, length, count, top = 20000, 32, 24, 5
    resized = jnp.broadcast_to(jnp.array([count, 8]), (b, 2))
    offset = jnp.broadcast_to(jnp.array([top, 0]), (b, 2))
    pos = positions.crop_positions(jax.random.key(7), (8, 8), resized, offset, (length, 32))
    rows, _ = _axes(np.asarray(pos), (8, 8))
    assert (np.diff(rows, axis=1) > 0).all() and rows.max() < length
    expected = (np.arange(top + 1, top + 9) * (length + 1) / (count + 1)) - 1
    np.testing.assert_allclose(rows.mean(axis=0), expected, atol=0.1)


def test_train_positions_is_the_uncropped_crop():
    key = jax.random.key(8)
    a = positions.train_positions(key, 3, (4, 5), (9, 7))
    b = positions.crop_positions(key, (4, 5), jnp.tile(jnp.array([4, 5]), (3, 1)), jnp.zeros((3, 2)), (9, 7))
    np.testing.assert_array_equal(a, b)
