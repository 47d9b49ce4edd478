"""The evaluate mode end-to-end on a tiny trained demo checkpoint, and its bootstrap and
spectral pieces."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from configs import demo
from rpe_jax import evaluate, metrics, paths, spectrum
from rpe_jax.models import classifier, inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.depth=2", "--config.model.width=64", "--config.model.heads=2",
    "--config.train.batch_size=8", "--config.train.num_steps=2", "--config.sample.num_images=2",
    "--config.sample.steps=1", "--config.sample.resolutions=(8, 16, 24)",
    "--config.sample.methods=('rpe2d', 'rpe2d_plain')", "--config.sample.num_samples=8",
    "--config.sample.batch_size=4", "--config.eval.num_reference=8", "--config.eval.batch_size=4",
    "--config.eval.extractor=classifier", "--config.eval.bootstrap=20", "--config.eval.fm_loss_images=4",
    "--config.eval.fm_loss_times=4",
]  # fmt: skip


def _run(workdir, mode, *extra):
    args = [sys.executable, "-m", "rpe_jax.main", f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}"]
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [*args, f"--mode={mode}", *TINY, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow  # an end-to-end run
def test_evaluate_writes_the_table_csv_json_and_plot(tmp_path):
    extractor_dir = tmp_path / "classifier"
    # 16 px input: 512 spatial features keep the sFID matrix square roots cheap.
    config = classifier.ClassifierConfig(input_size=16, widths=classifier.VARIANTS["Ti"])
    model = classifier.Classifier(config, rngs=nnx.Rngs(0))
    classifier.save_classifier(model, extractor_dir, notes={})
    workdir = tmp_path / "run"
    _run(workdir, "train")
    sampled = _run(workdir, "sample")
    _run(workdir, "evaluate", f"--config.eval.extractor_path={extractor_dir}")
    out = workdir / "eval"
    rows = json.loads((out / "results.json").read_text())
    # Two methods at every resolution, plus the resized training-resolution samples at
    # the others (box-downsampled at 8 px, bicubic-enlarged at 24 px).
    keys = sorted((r["method"], r["resolution"]) for r in rows)
    sizes = ("8x8", "16x16", "24x24")
    assert keys == sorted(
        [(m, r) for m in ("rpe2d", "rpe2d_plain") for r in sizes]
        + [("train_resized", r) for r in ("8x8", "24x24")]
    )
    for row in rows:
        assert row["fid"] >= 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["inception_score"] >= 1 - 1e-6
        assert row["spectral_distance"] >= 0 and row["fid_se"] > 0 and row["precision_se"] >= 0
        # hf_ratio only above the training resolution (no band beyond its Nyquist below).
        assert ("hf_ratio" in row) == (row["resolution"] == "24x24")
        # The validation loss exists for every method, not for the resized samples.
        assert ("fm_loss" in row) == (row["method"] != "train_resized")
        if "fm_loss" in row:
            assert row["fm_loss"] > 0 and row["fm_loss_se"] > 0 and "fm_loss_t3" in row
    # At the training grid rpe2d_plain is rpe2d (no scale, no shift to drop): its batches are
    # copies and its scores reused; at 24 px the two samplers differ and both are drawn.
    assert "rpe2d_plain at (16, 16) draws the samples of rpe2d: copied" in sampled
    assert "rpe2d_plain at (24, 24) draws" not in sampled
    folder = workdir / "generated"
    copies = [(folder / m / "16x16" / "batch_00001.npz").read_bytes() for m in ("rpe2d", "rpe2d_plain")]
    assert copies[0] == copies[1]
    grids = [(folder / m / "16x16" / "grid.png").read_bytes() for m in ("rpe2d", "rpe2d_plain")]
    assert grids[0] == grids[1]
    scores = {(r["method"], r["resolution"]): r for r in rows}
    assert scores[("rpe2d", "16x16")] | {"method": "rpe2d_plain"} == scores[("rpe2d_plain", "16x16")]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    table = (out / "results.md").read_text()
    assert "### fid (lower is better)" in table and "| 8x8 | 16x16 (train) | 24x24 |" in table
    assert "### fm_loss (lower is better)" in table and " ± " in table
    assert (out / "resolution_plot.png").stat().st_size > 10_000
    cached = list((out / "reference").iterdir())
    assert len(cached) == 3, "reference features are cached per resolution"
    # rpe2d and rpe2d_plain differ only in the attention scale and the time shift; at the
    # training grid both are the identity, so the validation losses agree there.
    assert scores[("rpe2d", "16x16")]["fm_loss"] == scores[("rpe2d_plain", "16x16")]["fm_loss"]


def test_training_size_samples_are_box_downsampled_and_bicubic_enlarged(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    paths.write_npz(tmp_path / "batch.npz", images=images, labels=np.zeros(2, np.int32))
    small = evaluate.generated_batch(tmp_path / "batch.npz", (8, 8))
    # Box filter at 2x: the mean of each 2 x 2 block (PIL rounds in fixed point: within 1).
    blocks = images.astype(float).reshape(2, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(small * 255, blocks, atol=1.0)
    large = evaluate.generated_batch(tmp_path / "batch.npz", (24, 24))
    assert large.shape == (2, 24, 24, 3)
    # Bicubic overshoots: unlike any box or bilinear average it leaves the input's range.
    assert not np.allclose(large[:, ::3, ::3], blocks[:, :, :] / 255, atol=0.02)


def _gaussian(n, seed, width=6):
    return np.random.default_rng(seed).normal(size=(n, width))


def test_weighted_statistics_equal_those_of_repeated_rows():
    x = _gaussian(30, 0)
    counts = metrics.bootstrap_counts(30, 3, seed=1)
    assert counts.shape == (3, 30) and (counts.sum(axis=1) == 30).all()
    for c in counts:
        repeated = np.repeat(x, c, axis=0)
        stats = metrics.weighted_stats(x, c)
        np.testing.assert_allclose(stats.mean, repeated.mean(0), atol=1e-12)
        np.testing.assert_allclose(stats.cov, np.cov(repeated, rowvar=False), atol=1e-12)
    reference = metrics.feature_stats(_gaussian(50, 2))
    got = metrics.bootstrap_frechet(reference, x, counts)
    expected = [
        metrics.frechet_distance(reference, metrics.feature_stats(np.repeat(x, c, 0))) for c in counts
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_bootstrap_error_shrinks_with_more_samples():
    reference = metrics.feature_stats(_gaussian(2000, 3))
    errors = []
    for n in (50, 800):
        fids = metrics.bootstrap_frechet(reference, _gaussian(n, 4), metrics.bootstrap_counts(n, 100, seed=0))
        errors.append(metrics.standard_error(fids))
    assert errors[1] < errors[0] / 4  # ~ 1/n for a Frechet distance dominated by its bias


def test_precision_indicators_and_identical_sets():
    real, fake = _gaussian(40, 5), _gaussian(30, 6) + 0.5
    inside = metrics.precision_indicators(real, fake, k=3)
    assert inside.mean() == pytest.approx(metrics.precision_recall(real, fake, k=3).precision)
    # A generated set of one image repeated: every resample is that set, the error is 0.
    bands = spectrum.band_powers(np.random.default_rng(0).random((1, 16, 16, 3)))
    reference = spectrum.band_powers(np.random.default_rng(1).random((5, 16, 16, 3)))
    features = evaluate.FeatureSet(
        real, metrics.feature_stats(real), metrics.feature_stats(real), real, reference
    )
    generated = evaluate.FeatureSet(
        fake, metrics.feature_stats(fake), metrics.feature_stats(fake), fake, np.repeat(bands, 30, 0)
    )
    errors = evaluate.bootstrap_errors(features, generated, 3, cutoff=0.25, resamples=20, seed=0)
    assert errors["spectral_distance_se"] == pytest.approx(0, abs=1e-12)
    assert errors["hf_ratio_se"] == pytest.approx(0, abs=1e-12)
    assert errors["fid_se"] > 0


def test_hf_cutoff_is_the_training_nyquist_above_training_only():
    assert evaluate.hf_cutoff((16, 16), (24, 24), 12) == pytest.approx(1 / 3)
    # Non-square: the axis enlarged the most sets it.
    assert evaluate.hf_cutoff((16, 16), (8, 32), 4) == pytest.approx(0.25)
    assert evaluate.hf_cutoff((16, 16), (16, 16), 8) is None
    assert evaluate.hf_cutoff((16, 16), (8, 8), 4) is None
    # 16 -> 18 px: cutoff 4/9; with 4 bands (edges 0, 1/8, .., 1/2) none starts above it.
    assert evaluate.hf_cutoff((16, 16), (8, 18), 4) is None
    assert evaluate.hf_cutoff((16, 16), (8, 18), 16) == pytest.approx(4 / 9)


def _fake_features(offset):
    """A feature function: pool [N, 6] = a few pixels (+ offset), logits [N, 3], spatial [N, 4]."""

    def features(images):
        flat = np.asarray(images, np.float32).reshape(len(images), -1)
        return inception.InceptionFeatures(flat[:, ::97][:, :6] + offset, flat[:, :3], flat[:, 3:7])

    return features


def test_mobilenet_features_add_fd_mobilenet_cached_beside_the_others(tmp_path):
    config = demo.get_config()
    config.eval.num_reference, config.eval.batch_size, config.eval.bootstrap = 8, 4, 10
    extractor, mobilenet = _fake_features(0.0), _fake_features(1.0)
    reference = evaluate.reference_features(config, (16, 16), extractor, str(tmp_path), mobilenet)
    images = np.stack([evaluate.reference_source(config, (16, 16), 8)[i]["image"] for i in range(8)])
    np.testing.assert_allclose(reference.mobilenet, mobilenet(images).pool)
    np.testing.assert_allclose(reference.bands, spectrum.band_powers(images), rtol=1e-6)

    def broken(images):
        raise AssertionError("cached features must not be recomputed")

    cached = evaluate.reference_features(config, (16, 16), broken, str(tmp_path), broken)
    np.testing.assert_array_equal(cached.mobilenet, reference.mobilenet)
    fake = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
    generated = evaluate.extract(extractor, lambda i: fake[4 * i : 4 * i + 4], 2, "generated", mobilenet)
    scores = evaluate.score_with_errors(config, reference, generated, (16, 16))
    expected = metrics.frechet_distance(
        metrics.feature_stats(mobilenet(images).pool), metrics.feature_stats(mobilenet(fake).pool)
    )
    assert scores["fd_mobilenet"] == pytest.approx(expected, rel=1e-6)
    assert scores["fd_mobilenet_se"] > 0 and "hf_ratio" not in scores  # at the training size
    # Without the extractor: no column, and its own cache file (the one above has more arrays).
    plain = evaluate.reference_features(config, (16, 16), extractor, str(tmp_path))
    assert plain.mobilenet is None and "fd_mobilenet" not in evaluate.score(plain, generated, 3)
    assert len(list((tmp_path / "eval" / "reference").iterdir())) == 2


def test_a_reference_cache_without_band_powers_is_recomputed(tmp_path):
    config = demo.get_config()
    config.eval.num_reference, config.eval.batch_size = 4, 4
    extractor = _fake_features(0.0)
    first = evaluate.reference_features(config, (16, 16), extractor, str(tmp_path))
    (path,) = (tmp_path / "eval" / "reference").iterdir()
    old = {k: v for k, v in paths.read_npz(path).items() if k != "bands"}  # as written before
    paths.write_npz(path, **old)
    again = evaluate.reference_features(config, (16, 16), extractor, str(tmp_path))
    np.testing.assert_array_equal(again.bands, first.bands)
    assert "bands" in paths.read_npz(path)


@pytest.mark.parametrize("field, value", [("bootstrap", -1), ("fm_loss_images", -2), ("fm_loss_times", 0)])
def test_eval_counts_out_of_range_name_the_field(field, value):
    config = demo.get_config()
    config.eval[field] = value
    with pytest.raises(ValueError, match=f"config.eval.{field} must be >= .*got {value}"):
        evaluate.check_eval_config(config)
    config.eval.fm_loss_images = 0  # no loss: its times are not used
    config.eval.fm_loss_times = 0
    if field == "fm_loss_times":
        evaluate.check_eval_config(config)


def test_score_adds_the_mobilenet_frechet_distance_when_features_are_there():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(20, 5)), rng.normal(size=(20, 5)) + 1.0
    bands = spectrum.band_powers(rng.random((20, 8, 8, 3)))

    def features(pool, mobilenet):
        stats = metrics.feature_stats(pool)
        return evaluate.FeatureSet(pool, stats, stats, pool, bands, mobilenet)

    without = evaluate.score(features(real, None), features(fake, None), k=3)
    assert "fd_mobilenet" not in without
    mobilenet_real, mobilenet_fake = rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) * 2
    scored = evaluate.score(features(real, mobilenet_real), features(fake, mobilenet_fake), k=3)
    # The Frechet distance of the MobileNetV2 features, by its definition (scipy's sqrtm).
    mu_a, mu_b = mobilenet_real.mean(0), mobilenet_fake.mean(0)
    cov_a, cov_b = np.cov(mobilenet_real, rowvar=False), np.cov(mobilenet_fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert scored["fd_mobilenet"] == pytest.approx(expected, rel=1e-6)
    assert scored["fid"] == without["fid"] and scored["spectral_distance"] == pytest.approx(0, abs=1e-12)


def test_inception_score_error_is_zero_for_one_repeated_image_and_shrinks_with_more():
    real = _gaussian(40, 5)

    def error(logits):
        n = len(logits)
        fake = _gaussian(n, 6)
        sets = [
            evaluate.FeatureSet(x, metrics.feature_stats(x), metrics.feature_stats(x), lg, bands)
            for x, lg, bands in (
                (real, real, spectrum.band_powers(np.random.default_rng(1).random((4, 8, 8, 3)))),
                (fake, logits, spectrum.band_powers(np.random.default_rng(2).random((n, 8, 8, 3)))),
            )
        ]
        return evaluate.bootstrap_errors(*sets, 3, cutoff=None, resamples=50, seed=0)["inception_score_se"]

    assert error(np.tile([[3.0, 0.0, 1.0]], (30, 1))) == pytest.approx(0, abs=1e-9)
    rng = np.random.default_rng(0)
    small, large = (4 * rng.standard_normal((n, 10)) for n in (50, 800))
    assert 0 < error(large) < 0.8 * error(small)  # 16x the samples (IS is split-wise, so not 4x)
