"""Tests of the Grain pipeline: resize-and-crop, flips, determinism, resume, sharding."""

import hashlib

import grain
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


class _Ramp:
    """A source whose example at any size is a vertical ramp 0 -> 1 with its width marked."""

    def example(self, index, height, width):
        rows = (np.arange(height, dtype=np.float32) + 0.5) / height
        image = np.broadcast_to(rows[:, None, None], (height, width, 3)).copy()
        image[:, 0, 1] = 1.0  # the left column, to see flips
        return {"image": image, "label": np.int32(index % 3)}


def _old_crop_draw(rng, grid, prob, max_factor):
    """The draw of the previous (upsampling) ResizeAndCrop, written out independently."""
    h, w = grid
    if rng.random() < prob:
        r = rng.uniform(1.0, max_factor)
        rh, rw = max(h, round(r * h)), max(w, round(r * w))
        return rh, rw, int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
    return h, w, 0, 0


def _element(index, flip=False):
    return {"index": index, "flip": flip}


def test_crop_draws_and_micro_conditions_match_the_previous_formula():
    for seed in range(200):
        want = _old_crop_draw(np.random.default_rng(seed), (8, 6), 0.6, 2.0)
        assert pipeline.draw_crop(np.random.default_rng(seed), (8, 6), 0.6, 2.0) == want
    render = pipeline.RenderResizeAndCrop(_Ramp(), (32, 24), patch=4, prob=0.6)
    for seed in range(50):
        out = render.random_map(_element(seed), np.random.default_rng(seed))
        rows, cols, top, left = _old_crop_draw(np.random.default_rng(seed), (8, 6), 0.6, 2.0)
        np.testing.assert_array_equal(out["crop"], [rows, cols, top, left])
        np.testing.assert_allclose(out["micro"], [rows / 8, top / rows, left / cols], rtol=1e-6)


def test_crops_are_windows_of_the_example_rendered_at_the_resized_size():
    render = pipeline.RenderResizeAndCrop(_Ramp(), (32, 32), patch=4, prob=1.0)
    for seed in range(30):
        out = render.random_map(_element(7), np.random.default_rng(seed))
        rows, cols, top, left = out["crop"]
        assert out["x"].shape == (32, 32, 3) and out["label"] == 1
        assert 8 <= rows <= 16 and rows == cols and 0 <= top <= rows - 8 and 0 <= left <= cols - 8
        big = _Ramp().example(7, 4 * rows, 4 * cols)["image"]
        window = big[4 * top : 4 * top + 32, 4 * left : 4 * left + 32]
        np.testing.assert_allclose(out["x"], window * 2 - 1, atol=1e-6)


def test_uncropped_examples_carry_the_identity_micro_condition():
    render = pipeline.RenderResizeAndCrop(_Ramp(), (32, 32), patch=4, prob=0.0)
    out = render.random_map(_element(4), np.random.default_rng(1))
    np.testing.assert_allclose(out["x"], _Ramp().example(4, 32, 32)["image"] * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(out["micro"], [1, 0, 0])
    np.testing.assert_array_equal(out["crop"], [8, 8, 0, 0])


def test_a_flip_mirrors_the_resized_image_before_the_crop():
    render = pipeline.RenderResizeAndCrop(_Ramp(), (32, 32), patch=4, prob=1.0)
    out = render.random_map(_element(0, flip=True), np.random.default_rng(3))
    rows, cols, top, left = out["crop"]
    big = _Ramp().example(0, 4 * rows, 4 * cols)["image"][:, ::-1]
    np.testing.assert_allclose(
        out["x"], big[4 * top : 4 * top + 32, 4 * left : 4 * left + 32] * 2 - 1, atol=1e-6
    )


@pytest.mark.parametrize("prob", [0.25, 0.5])
def test_flip_and_crop_rates_follow_the_config(prob):
    rng = np.random.default_rng(2)
    n = 2000
    flips = [pipeline.DrawFlip(prob).random_map(_element(0), rng)["flip"] for _ in range(n)]
    render = pipeline.RenderResizeAndCrop(_Ramp(), (32, 32), patch=4, prob=prob)
    outs = [render.random_map(_element(0, flip), rng) for flip in flips]
    cropped = sum(out["micro"][0] > 1 for out in outs)
    # The marked left column lands at the right edge only when flipped and cropped there,
    # so count flips on uncropped examples.
    uncropped = [out for out, flip in zip(outs, flips, strict=True) if out["micro"][0] == 1]
    flipped = sum(out["x"][0, -1, 1] == 1 for out in uncropped)
    sigma = np.sqrt(n * prob * (1 - prob))
    # r = 1 can be drawn only with probability ~0 (rounding of r*8 to 8 needs r < 1.0625).
    assert abs(cropped - n * prob * (1 - 1 / 16)) < 5 * sigma
    assert abs(sum(flips) - n * prob) < 5 * sigma
    m = len(uncropped)
    assert abs(flipped - m * prob) < 5 * np.sqrt(m * prob * (1 - prob))


def test_a_procedural_crop_is_the_scene_rendered_larger_not_an_upsample():
    from PIL import Image

    from rpe_jax.data import procedural

    source = procedural.ProceduralSource(8, 16)
    render = pipeline.RenderResizeAndCrop(source, (16, 16), patch=2, prob=1.0)
    # The first draw that resizes by r = 2 (rounded: 16 tokens of 8).
    out = next(
        o
        for s in range(200)
        if (o := render.random_map(_element(3), np.random.default_rng(s)))["crop"][0] == 16
    )
    rows, cols, top, left = out["crop"]
    assert rows == cols == 16  # r = 2
    big = source.scenes.render(3, 32, 32)
    np.testing.assert_allclose(
        out["x"], big[2 * top : 2 * top + 16, 2 * left : 2 * left + 16] * 2 - 1, atol=1e-6
    )
    small = source.scenes.render(3, 16, 16)
    upsampled = np.stack(
        [
            np.asarray(Image.fromarray(small[..., c]).resize((32, 32), Image.Resampling.BICUBIC))
            for c in range(3)
        ],
        -1,
    )
    blur = upsampled[2 * top : 2 * top + 16, 2 * left : 2 * left + 16] * 2 - 1
    assert np.abs(out["x"] - blur).mean() > 0.01


def test_batches_have_the_documented_layout():
    batch = next(iter(_dataset(_config())))
    assert batch["x"].shape == (4, 32, 32, 3) and batch["x"].dtype == np.float32
    assert -1 <= batch["x"].min() and batch["x"].max() <= 1
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    assert batch["micro"].shape == (4, 3) and batch["crop"].shape == (4, 4)


def _old_pipeline_draws(size, seed, flip_prob, crop_prob, max_factor, grid, count):
    """(index, flip, crop) of the first `count` examples of the previous pipeline, whose
    chain was source -> seed -> shuffle -> repeat -> map (to [-1, 1]) -> random_map (flip)
    -> random_map (upsampling resize-and-crop), with Grain's seeding of each random_map."""
    ds = grain.MapDataset.source(list(range(size))).seed(seed).shuffle().repeat(None)
    ds = ds.map(lambda index: {"index": index})
    ds = ds.random_map(lambda e, rng: {**e, "flip": rng.random() < flip_prob})
    ds = ds.random_map(lambda e, rng: {**e, "crop": _old_crop_draw(rng, grid, crop_prob, max_factor)})
    return [ds[k] for k in range(count)]


def test_flips_and_crops_are_those_of_the_previous_pipeline():
    config = _config(resize_crop_prob=0.6, flip_prob=0.5, max_resize_factor=2.0, seed=5)
    source = pipeline.make_source(config, "train", (32, 32))
    it = iter(_dataset(config, batch_size=8))
    batches = [next(it) for _ in range(2)]
    old = _old_pipeline_draws(40, 5, 0.5, 0.6, 2.0, (8, 8), 16)
    assert 0 < sum(d["flip"] for d in old) < 16 and 0 < sum(d["crop"][0] > 8 for d in old) < 16
    for k, draw in enumerate(old):
        batch, i = batches[k // 8], k % 8
        rows, cols, top, left = draw["crop"]
        np.testing.assert_array_equal(batch["crop"][i], draw["crop"])
        np.testing.assert_allclose(batch["micro"][i], [rows / 8, top / rows, left / cols], rtol=1e-6)
        image = source.example(draw["index"], 4 * rows, 4 * cols)["image"]
        image = image[:, ::-1] if draw["flip"] else image
        window = image[4 * top : 4 * top + 32, 4 * left : 4 * left + 32]
        np.testing.assert_allclose(batch["x"][i], window * 2 - 1, atol=1e-6)


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
