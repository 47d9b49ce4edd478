"""Tests for models/classifier.py, train_classifier.py and feature_extractor.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rpe_jax import feature_extractor, metrics, train_classifier
from rpe_jax.data import procedural
from rpe_jax.models import classifier, inception

NUM_SCENES = 200  # validation scenes per set in the feature tests


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier trained for a few seconds: (model, validation accuracies, workdir)."""
    workdir = tmp_path_factory.mktemp("classifier")
    model, accuracies = train_classifier.train_classifier(
        str(workdir),
        steps=80,
        batch_size=32,
        variant="Ti",
        learning_rate=5e-3,
        train_resolutions=(16, 32, 64),
        eval_size=200,
        log_every=40,
    )
    return model, accuracies, workdir


@pytest.fixture(scope="module")
def validation():
    return procedural.ProceduralScenes(10, 0, "validation")


@pytest.mark.parametrize("variant", sorted(classifier.VARIANTS))
@pytest.mark.parametrize("size", [(16, 16), (24, 40), (64, 64)])
def test_features_contract(variant, size):
    config = classifier.ClassifierConfig(num_classes=7, widths=classifier.VARIANTS[variant])
    model = nnx.eval_shape(lambda: classifier.Classifier(config, rngs=nnx.Rngs(0)))
    images = jax.ShapeDtypeStruct((3, *size, 3), jnp.float32)
    features = nnx.eval_shape(lambda model, images: model(images), model, images)
    assert isinstance(features, inception.InceptionFeatures)
    assert features.pool.shape == (3, config.pool_features) == (3, config.widths[-1])
    assert features.logits.shape == (3, 7)
    assert (
        features.spatial.shape == (3, config.spatial_features) == (3, 16 * 16 * classifier.SPATIAL_CHANNELS)
    )


@pytest.mark.parametrize("size", [(16, 16), (24, 40), (48, 48)])
def test_extracted_features_are_finite_numpy_at_any_size(trained, validation, size):
    model = trained[0]
    features = feature_extractor.batched_features(model, batch_size=4)(
        validation.render_batch(range(6), *size)
    )
    assert isinstance(features, inception.InceptionFeatures)
    widths = (model.config.pool_features, model.config.num_classes, model.config.spatial_features)
    for field, width in zip(features, widths, strict=True):
        assert isinstance(field, np.ndarray) and field.dtype == np.float32 and field.shape == (6, width)
        assert np.isfinite(field).all()


def test_features_reject_bad_images(trained):
    model = trained[0]
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model(jnp.zeros((2, 32, 32, 1)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_size=20), "multiple of 8"),
        (dict(num_classes=1), "num_classes >= 2"),
        (dict(widths=(4, 4, 8)), r"widths\[1\] must be >= 8"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classifier.ClassifierConfig(**kwargs)


def test_resize_area_matches_box_downsampling_and_bilinear_upsampling():
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    boxed = images.reshape(2, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(classifier.resize_area(images, 32), boxed, atol=1e-6)
    # 1.5x shrink: output pixel 0 averages input 0 and half of input 1, and so on.
    ramp = jnp.broadcast_to(jnp.arange(6.0)[None, :, None, None], (1, 6, 6, 3))
    np.testing.assert_allclose(
        classifier.resize_area(ramp, 4)[0, :, 0, 0], [1 / 3, 5 / 3, 10 / 3, 14 / 3], atol=1e-6
    )
    # Growing is bilinear with half-pixel centres: [0, 1] -> [0, 0.25, 0.75, 1].
    pair = jnp.broadcast_to(jnp.arange(2.0)[None, :, None, None], (1, 2, 4, 3))
    np.testing.assert_allclose(classifier.resize_area(pair, 4)[0, :, 0, 0], [0, 0.25, 0.75, 1], atol=1e-6)


def test_short_training_beats_chance(trained):
    _, accuracies, workdir = trained
    assert set(accuracies) == {16, 32, 64}
    assert accuracies[32] > 0.6, accuracies
    assert min(accuracies.values()) > 0.4, accuracies
    assert (workdir / classifier.WEIGHTS_NAME).is_file() and (workdir / classifier.CONFIG_NAME).is_file()


def test_saved_weights_reload_to_identical_features(trained, validation):
    model, _, workdir = trained
    images = validation.render_batch(range(5), 40, 40)
    expected = model(jnp.asarray(images))
    reloaded = classifier.load_classifier(workdir)
    assert reloaded.config == model.config
    for got, want in zip(reloaded(jnp.asarray(images)), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    batched = feature_extractor.load("classifier", workdir, batch_size=3)(images)  # 3 + 2 padded
    for got, want in zip(batched, expected, strict=True):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_features_are_resolution_robust(trained, validation):
    features = feature_extractor.batched_features(trained[0], batch_size=NUM_SCENES)
    at_32 = features(validation.render_batch(range(NUM_SCENES), 32, 32)).pool
    at_64 = features(validation.render_batch(range(NUM_SCENES), 64, 64)).pool
    same_scene = np.linalg.norm(at_32 - at_64, axis=1).mean()
    other_scene = np.linalg.norm(at_32 - np.roll(at_32, 1, axis=0), axis=1).mean()
    assert same_scene < 0.1 * other_scene, (same_scene, other_scene)


def _stats(pool: np.ndarray) -> metrics.FeatureStats:
    accumulator = metrics.StatsAccumulator()
    for batch in np.split(pool, 4):
        accumulator.update(batch)
    return accumulator.result()


def test_fid_separates_real_from_corrupted_images(trained, validation):
    features = feature_extractor.batched_features(trained[0], batch_size=NUM_SCENES)
    real_a = validation.render_batch(range(NUM_SCENES), 32, 32)
    real_b = validation.render_batch(range(NUM_SCENES, 2 * NUM_SCENES), 32, 32)
    noisy = np.clip(real_b + np.random.default_rng(0).normal(0.0, 0.2, real_b.shape), 0.0, 1.0)
    blurred = real_b.reshape(-1, 8, 4, 8, 4, 3).mean(axis=(2, 4)).repeat(4, axis=1).repeat(4, axis=2)
    reference = _stats(features(real_a).pool)
    fid_real = metrics.frechet_distance(reference, _stats(features(real_b).pool))
    fid_noisy = metrics.frechet_distance(reference, _stats(features(noisy).pool))
    fid_blurred = metrics.frechet_distance(reference, _stats(features(blurred).pool))
    assert 3 * fid_real < min(fid_noisy, fid_blurred), (fid_real, fid_noisy, fid_blurred)


def test_missing_classifier_weights_name_the_path_and_the_command(tmp_path):
    missing = tmp_path / "no_classifier"
    with pytest.raises(FileNotFoundError, match="python -m rpe_jax.train_classifier") as err:
        feature_extractor.load("classifier", missing)
    assert str(missing) in str(err.value)


def test_missing_inception_weights_name_the_path_and_the_url(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(FileNotFoundError, match="pytorch-fid") as err:
        feature_extractor.load("inception", missing)
    assert str(missing) in str(err.value) and inception.FID_WEIGHTS_URL in str(err.value)


def test_extractor_errors():
    with pytest.raises(ValueError, match=r"Unknown feature extractor 'vgg'.*classifier.*inception"):
        feature_extractor.load("vgg", "x")
    with pytest.raises(ValueError, match="needs a weights path.*train_classifier"):
        feature_extractor.load("classifier", "")


def test_extractor_rejects_bad_images(trained):
    features = feature_extractor.batched_features(trained[0])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        features(np.zeros((4, 8, 8)))


def test_training_rejects_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="Unknown classifier variant 'XL'.*Ti"):
        train_classifier.train_classifier(str(tmp_path), variant="XL")
