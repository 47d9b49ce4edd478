"""Tests of the Grain pipeline: resize-and-crop, flips, determinism, resume, sharding."""

import hashlib

import numpy as np
import pytest

from configs import demo
from rpe_jax.data import pipeline


def _config(**overrides):
    config = demo.get_config().data
    config.train_size = 40
    for k, v in overrides.items():
        config[k] = v
    return config


def _dataset(config, batch_size=4, **kwargs):
    kwargs = {"split": "train", "resolution": (32, 32), "patch": 4, **kwargs}
    return pipeline.create_dataset(config, batch_size=batch_size, **kwargs)


def _digest(x):
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_crops_are_inside_token_aligned_and_match_micro():
    ramp = np.broadcast_to(np.linspace(0, 1, 32, dtype=np.float32)[:, None, None], (32, 32, 3))
    crop = pipeline.ResizeAndCrop(prob=1.0, max_factor=2.0, patch=4)
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = crop.random_map({"x": ramp.copy(), "label": np.int32(1)}, rng)
        rows, cols, top, left = out["crop"]
        assert out["x"].shape == (32, 32, 3)
        assert 8 <= rows <= 16 and 8 <= cols <= 16 and rows == cols
        assert 0 <= top <= rows - 8 and 0 <= left <= cols - 8
        np.testing.assert_allclose(out["micro"], [rows / 8, top / rows, left / cols], rtol=1e-6)
        # A vertical ramp upscaled by s = rows / 8 and cropped at `top` tokens shows the
        # original rows (4 top + i + 0.5) / s - 0.5 (pixel centres), i.e. a ramp again.
        s = rows / 8
        source_rows = (4 * top + np.arange(32) + 0.5) / s - 0.5
        expected = np.interp(source_rows, np.arange(32), np.linspace(0, 1, 32))
        inner = slice(2, 30)  # away from the resize's edge handling
        np.testing.assert_allclose(out["x"][inner, 5, 0], expected[inner], atol=0.02)


def test_uncropped_examples_carry_the_identity_micro_condition():
    crop = pipeline.ResizeAndCrop(prob=0.0, max_factor=2.0, patch=4)
    x = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    out = crop.random_map({"x": x, "label": np.int32(0)}, np.random.default_rng(1))
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["micro"], [1, 0, 0])
    np.testing.assert_array_equal(out["crop"], [8, 8, 0, 0])


@pytest.mark.parametrize("prob", [0.25, 0.5])
def test_flip_and_crop_rates_follow_the_config(prob):
    rng = np.random.default_rng(2)
    n = 2000
    crop = pipeline.ResizeAndCrop(prob=prob, max_factor=2.0, patch=4)
    flip = pipeline.RandomFlip(prob)
    x = np.zeros((32, 32, 3), np.float32)  # an 8x8 token grid
    x[:, 0] = 1.0  # a marked left column
    cropped = sum(crop.random_map({"x": x, "label": 0}, rng)["micro"][0] > 1 for _ in range(n))
    flipped = sum(flip.random_map({"x": x, "label": 0}, rng)["x"][0, -1, 0] == 1 for _ in range(n))
    sigma = np.sqrt(n * prob * (1 - prob))
    # r = 1 can be drawn only with probability ~0 (rounding of r*8 to 8 needs r < 1.0625).
    assert abs(cropped - n * prob * (1 - 1 / 16)) < 5 * sigma
    assert abs(flipped - n * prob) < 5 * sigma


def test_batches_have_the_documented_layout():
    batch = next(iter(_dataset(_config())))
    assert batch["x"].shape == (4, 32, 32, 3) and batch["x"].dtype == np.float32
    assert -1 <= batch["x"].min() and batch["x"].max() <= 1
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    assert batch["micro"].shape == (4, 3) and batch["crop"].shape == (4, 4)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = [_digest(b["x"]) for _, b in zip(range(3), iter(_dataset(_config())), strict=False)]
    b = [_digest(b["x"]) for _, b in zip(range(3), iter(_dataset(_config())), strict=False)]
    c = [_digest(b["x"]) for _, b in zip(range(3), iter(_dataset(_config(seed=1))), strict=False)]
    assert a == b and a != c


def test_restores_mid_epoch_to_the_exact_next_batch():
    it = iter(_dataset(_config()))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses into the second epoch
    restored = iter(_dataset(_config()))
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_process_shards_are_disjoint_and_cover_the_epoch():
    config = _config(resize_crop_prob=0.0, flip_prob=0.0)
    seen = []
    for index in range(2):
        it = iter(_dataset(config, process_index=index, process_count=2))
        seen.append({_digest(x) for _ in range(5) for x in next(it)["x"]})
    assert len(seen[0]) == len(seen[1]) == 20
    assert not seen[0] & seen[1]
    whole = iter(_dataset(config, batch_size=8))
    assert seen[0] | seen[1] == {_digest(x) for _ in range(5) for x in next(whole)["x"]}


def test_process_batches_concatenate_to_the_single_process_batch():
    # Augmented, so equal batches also need equal flips and crops per example.
    config = _config(resize_crop_prob=0.7, flip_prob=0.5)
    whole = iter(_dataset(config, batch_size=8))
    parts = [iter(_dataset(config, batch_size=2, process_index=p, process_count=4)) for p in range(4)]
    for _ in range(3):
        want = next(whole)
        got = [next(it) for it in parts]
        for key in want:
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])
    assert float(want["micro"][:, 0].max()) > 1.0, "some examples are resized"


def test_epochs_are_reshuffled():
    config = _config(resize_crop_prob=0.0, flip_prob=0.0)
    it = iter(_dataset(config, batch_size=40))
    first, second = next(it), next(it)
    assert sorted(map(_digest, first["x"])) == sorted(map(_digest, second["x"]))
    assert list(map(_digest, first["x"])) != list(map(_digest, second["x"]))


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="Unknown data source 'imagenet_zip'.*'procedural'"):
        _dataset(_config(source="imagenet_zip"))


def test_latent_flip_mirrors_every_stored_factor_together():
    from rpe_jax.data import latents

    stored = {
        "1": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4),
        "2": np.arange(4 * 8 * 4).reshape(4, 8, 4),
    }
    flip = latents.LatentFlip(prob=1.0)
    out = flip.random_map({"latents": stored, "label": 3}, np.random.default_rng(0))
    for name, latent in stored.items():
        np.testing.assert_array_equal(out["latents"][name], latent[:, ::-1])
    kept = latents.LatentFlip(prob=0.0).random_map({"latents": stored, "label": 3}, np.random.default_rng(0))
    assert kept["latents"] is stored
