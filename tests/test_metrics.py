"""Tests for rpe_jax.metrics against pytorch-fid, closed forms and published properties."""

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.spatial.distance import cdist

from rpe_jax import metrics


def _gaussian_features(seed: int, n: int, width: int, shift: float = 0.0) -> np.ndarray:
    """[n, width] correlated Gaussian features."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(width, width)) / np.sqrt(width)
    return rng.normal(size=(n, width)) @ mixing + shift


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple:
    """O(N^2) reference: full distance matrices, k-th neighbour after self at index 0."""
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    fake_to_real = cdist(fake, real)
    precision = np.mean(np.any(fake_to_real <= real_radii[None, :], axis=1))
    recall = np.mean(np.any(fake_to_real.T <= fake_radii[None, :], axis=1))
    return precision, recall


# --- Frechet distance -------------------------------------------------------------------


def test_frechet_distance_matches_pytorch_fid():
    real = metrics.feature_stats(_gaussian_features(0, 300, 16))
    fake = metrics.feature_stats(_gaussian_features(1, 200, 16, shift=0.5))
    with pytest.warns(DeprecationWarning):  # pytorch-fid passes sqrtm(disp=False)
        expected = calculate_frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-10)
    assert expected > 1.0


def test_frechet_distance_of_a_set_with_itself_is_zero():
    stats = metrics.feature_stats(_gaussian_features(3, 500, 64))
    assert metrics.frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(2)
    mean_a, mean_b = rng.normal(size=32), rng.normal(size=32)
    var_a, var_b = rng.uniform(0.1, 3.0, size=32), rng.uniform(0.1, 3.0, size=32)
    stats_a = metrics.FeatureStats(mean_a, np.diag(var_a), count=0)
    stats_b = metrics.FeatureStats(mean_b, np.diag(var_b), count=0)
    closed_form = np.sum((mean_a - mean_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert metrics.frechet_distance(stats_a, stats_b) == pytest.approx(closed_form, rel=1e-10)
    assert metrics.frechet_distance(stats_a, stats_a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_rejects_a_matrix_that_is_not_a_covariance():
    bad = metrics.FeatureStats(np.zeros(2), np.diag([1.0, -1.0]), count=0)
    good = metrics.FeatureStats(np.zeros(2), np.eye(2), count=0)
    with pytest.raises(ValueError, match="first covariance is not positive semi-definite"):
        metrics.frechet_distance(bad, good)
    with pytest.raises(ValueError, match="second covariance"):
        metrics.frechet_distance(good, bad)


def test_frechet_distance_of_rank_deficient_covariances_matches_pytorch_fid():
    # Fewer samples than features (as 500 samples of 2048 sFID features): singular products.
    real = metrics.feature_stats(np.maximum(_gaussian_features(4, 40, 96), 0))
    fake = metrics.feature_stats(np.maximum(_gaussian_features(5, 30, 96, shift=0.3), 0))
    with pytest.warns(DeprecationWarning):
        expected = calculate_frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_mismatched_widths():
    stats_a = metrics.feature_stats(_gaussian_features(0, 10, 4))
    stats_b = metrics.feature_stats(_gaussian_features(0, 10, 5))
    with pytest.raises(ValueError, match="4 vs 5"):
        metrics.frechet_distance(stats_a, stats_b)


# --- Feature statistics -----------------------------------------------------------------


def test_feature_stats_matches_numpy():
    features = _gaussian_features(3, 50, 6).astype(np.float32)
    stats = metrics.feature_stats(features)  # float32 in, float64 arithmetic
    np.testing.assert_allclose(stats.mean, np.mean(features.astype(np.float64), axis=0))
    np.testing.assert_allclose(stats.cov, np.cov(features.astype(np.float64), rowvar=False))
    assert stats.count == 50 and stats.mean.dtype == np.float64


def test_streaming_stats_match_one_shot_numpy():
    # A large offset would break naive sum / sum-of-squares accumulation in low precision.
    features = _gaussian_features(4, 1001, 12, shift=1e4)
    accumulator = metrics.StatsAccumulator()
    edges = [0, 1, 2, 65, 300, 301, 777, 1001]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        accumulator.update(features[start:stop])
    stats = accumulator.result()
    assert stats.count == accumulator.count == 1001
    np.testing.assert_allclose(stats.mean, np.mean(features, axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)


def test_moments_of_shards_merge_to_the_whole():
    # As evaluation does over processes: each shard accumulates, the moments are merged.
    features = _gaussian_features(6, 300, 5, shift=50.0)
    shards = [features[:7], features[7:7], features[7:200], features[200:]]
    whole = metrics.StatsAccumulator()
    for shard in shards:
        part = metrics.StatsAccumulator()
        if len(shard):
            part.update(shard)
            whole.merge(*part.moments())
        else:
            whole.merge(0, np.zeros(5), np.zeros((5, 5)))  # an idle process adds nothing
    np.testing.assert_allclose(whole.result().cov, np.cov(features, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(whole.result().mean, features.mean(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="no samples seen yet"):
        metrics.StatsAccumulator().moments()


def test_stats_save_load_round_trip(tmp_path):
    stats = metrics.feature_stats(_gaussian_features(5, 20, 4))
    path = tmp_path / "ref_stats.npz"
    stats.save(path)
    loaded = metrics.FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == 20


def test_stats_load_reads_adm_reference_keys(tmp_path):
    path = tmp_path / "VIRTUAL_ref.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.ones(2), sigma_s=2 * np.eye(2))
    spatial = metrics.FeatureStats.load(path, key_suffix="_s")
    np.testing.assert_array_equal(spatial.mean, np.ones(2))
    assert spatial.count == 0
    with pytest.raises(ValueError, match=r"lacks keys 'mu_x'/'sigma_x'.*'mu_s'"):
        metrics.FeatureStats.load(path, key_suffix="_x")


def test_stats_errors():
    with pytest.raises(ValueError, match="1 samples .* at least 2"):
        metrics.feature_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="must be 2-D"):
        metrics.feature_stats(np.zeros((4, 2, 2)))
    features = np.zeros((10, 4))
    features[[1, 1, 7], [0, 2, 3]] = np.nan
    features[5, 0] = np.inf
    with pytest.raises(ValueError, match="3 NaN and 1 infinite values out of 40.*3 bad samples"):
        metrics.feature_stats(features)
    accumulator = metrics.StatsAccumulator()
    accumulator.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2 samples .* got 1"):
        accumulator.result()
    with pytest.raises(ValueError, match="F=3 but earlier batches had F=4"):
        accumulator.update(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="mean \\[F\\] and cov \\[F, F\\]"):
        metrics.FeatureStats(np.zeros(3), np.eye(2), count=0)


# --- Inception score --------------------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one():
    score = metrics.inception_score(np.full((100, 10), 0.1))
    assert score.mean == pytest.approx(1.0, abs=1e-12) and score.std == pytest.approx(0.0)
    from_zero_logits = metrics.inception_score(np.zeros((100, 10)))
    assert from_zero_logits.mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_collapsed_predictions_is_one():
    collapsed = np.zeros((100, 10))
    collapsed[:, 3] = 1.0  # confident but no diversity: p(y|x) = p(y)
    assert metrics.inception_score(collapsed).mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_even_predictions_is_num_classes():
    one_hot = np.tile(np.eye(7), (20, 1))  # each split of 14 rows covers all 7 classes twice
    score = metrics.inception_score(one_hot, splits=10)
    assert score.mean == pytest.approx(7.0, rel=1e-12) and score.std == pytest.approx(0.0)
    from_logits = metrics.inception_score(60.0 * one_hot, splits=10)
    assert from_logits.mean == pytest.approx(7.0, rel=1e-9)


def test_inception_score_forced_modes_and_errors():
    one_hot = np.tile(np.eye(4), (5, 1))
    # The same array read as logits is softmax(one-hot), far less confident than one-hot.
    assert metrics.inception_score(one_hot, splits=1, from_logits=True).mean < 2.0
    with pytest.raises(ValueError, match="not probabilities"):
        metrics.inception_score(2.0 * one_hot, from_logits=False)
    with pytest.raises(ValueError, match="20 samples .* at least 25"):
        metrics.inception_score(one_hot, splits=25)
    with pytest.raises(ValueError, match="splits must be >= 1, got 0"):
        metrics.inception_score(one_hot, splits=0)


# --- Precision and recall ---------------------------------------------------------------


# The tests share (150, 16) inputs and batch_size=7 where they can: one compile, fast tests.


def test_precision_recall_of_identical_sets_is_one():
    features = _gaussian_features(6, 150, 16)
    assert metrics.precision_recall(features, features, batch_size=7) == (1.0, 1.0)


def test_precision_recall_of_far_apart_clusters_is_zero():
    real = _gaussian_features(7, 150, 16)
    fake = _gaussian_features(8, 150, 16, shift=100.0)
    assert metrics.precision_recall(real, fake, batch_size=7) == (0.0, 0.0)


def test_precision_recall_with_half_the_modes_covered():
    rng = np.random.default_rng(9)
    centres = 100.0 * rng.normal(size=(4, 2))
    real = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres])  # 4 modes
    fake = np.concatenate([c + rng.normal(size=(400, 2)) for c in centres[:2]])  # 2 of them
    precision, recall = metrics.precision_recall(real, fake, batch_size=128)
    assert precision >= 0.93
    assert 0.45 <= recall <= 0.5  # real samples of the 2 missing modes are never recalled


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_precision_recall_matches_brute_force(batch_size):
    real = _gaussian_features(10, 150, 16)
    fake = _gaussian_features(11, 150, 16, shift=0.3)
    expected = _brute_force_precision_recall(real, fake, k=3)
    assert 0.1 < expected[0] < 0.9 and 0.1 < expected[1] < 0.9  # non-trivial,
    assert expected[0] != expected[1]  # and a precision/recall swap would show
    assert metrics.precision_recall(real, fake, k=3, batch_size=batch_size) == expected


def test_precision_recall_matches_brute_force_for_other_k():
    real = _gaussian_features(12, 150, 16)
    fake = _gaussian_features(13, 150, 16, shift=0.3)
    expected = _brute_force_precision_recall(real, fake, k=1)
    assert metrics.precision_recall(real, fake, k=1, batch_size=7) == expected


def test_precision_recall_errors():
    features = np.zeros((10, 4))
    with pytest.raises(ValueError, match="real F=4, fake F=5"):
        metrics.precision_recall(features, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="fake_features has 3 samples .* at least 4"):
        metrics.precision_recall(features, np.zeros((3, 4)), k=3)
    with pytest.raises(ValueError, match="k=0"):
        metrics.precision_recall(features, features, k=0)
    bad = features.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="real_features has 1 NaN"):
        metrics.precision_recall(bad, features)
