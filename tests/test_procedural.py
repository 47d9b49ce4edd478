"""Tests for rpe_jax.data.procedural: resolution consistency, determinism, splits, errors."""

import multiprocessing
import pickle

import grain
import numpy as np
import pytest

from rpe_jax.data import procedural, textures
from rpe_jax.data.procedural import ProceduralScenes, ProceduralSource


def _box_down(images: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """[..., H, W, 3] -> [..., H / fh, W / fw, 3] by averaging fh x fw blocks."""
    *lead, h, w, c = images.shape
    return images.reshape(*lead, h // fh, fh, w // fw, fw, c).mean((-4, -2))


def _mean_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference over the last three axes ([..., H, W, 3])."""
    return np.abs(a - b).mean((-3, -2, -1))


def _pairwise_mean_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: [N, H, W, 3], b: [M, H, W, 3] -> [N, M] mean absolute differences."""
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.stack([np.abs(row - flat_b).mean(-1) for row in flat_a])


@pytest.fixture(scope="module")
def scenes() -> ProceduralScenes:
    return ProceduralScenes(num_classes=procedural.MAX_CLASSES)


def test_same_scene_across_resolutions(scenes):
    indices = range(2 * procedural.MAX_CLASSES)
    r32 = scenes.render_batch(indices, 32, 32)
    r48 = scenes.render_batch(indices, 48, 48)
    r64 = scenes.render_batch(indices, 64, 64)
    err_64_32 = _mean_abs(_box_down(r64, 2, 2), r32)
    err_48_32 = _mean_abs(_box_down(r48, 3, 3), _box_down(r32, 2, 2))
    between = _mean_abs(r32, np.roll(r32, 1, axis=0))
    assert err_64_32.max() < 0.01, err_64_32
    assert err_48_32.max() < 0.01, err_48_32
    assert between.min() > 10 * max(err_64_32.max(), err_48_32.max()), between


def _overlap(n: int, low: float, high: float) -> np.ndarray:
    """Fraction of each of n pixels of the unit interval that lies inside [low, high]."""
    edges = np.arange(n + 1) / n
    return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None) * n


@pytest.mark.parametrize("height, width", [(16, 16), (40, 40), (128, 128), (24, 40)])
def test_edges_are_exact_pixel_coverage(height, width):
    """A white axis-aligned square on black: its middle row/column is the exact pixel overlap.

    Along the coarser axis (all axes of a square image) the anti-aliasing ramp is one pixel
    wide and equals the area coverage, at every resolution.
    """
    cx, cy, half = 0.513, 0.47, 0.3
    black = procedural.Background((0.0, 0.0, 0.0), (0.0, 0.0), ((1.0, 0.0),), (0.0,), ((0,) * 3,))
    square = procedural.Shape("square", (cx, cy), half * np.sqrt(2.0), 0.0, (), (1.0, 1.0, 1.0), (0.0, 0.0))
    image = procedural.render_scene(procedural.SceneParams(0, "square", black, (square,)), height, width)
    np.testing.assert_allclose(image[:, width // 2, 0], _overlap(height, cy - half, cy + half), atol=1e-5)
    if height == width:
        row = _overlap(width, cx - half, cx + half)
        np.testing.assert_allclose(image[height // 2, :, 0], row, atol=1e-5)


def test_non_square_is_the_stretched_square_scene(scenes):
    indices = range(procedural.MAX_CLASSES)
    square = scenes.render_batch(indices, 64, 64)
    wide = scenes.render_batch(indices, 32, 64)
    tall = scenes.render_batch(indices, 64, 32)
    assert wide.shape == (len(indices), 32, 64, 3) and tall.shape == (len(indices), 64, 32, 3)
    err_wide = _mean_abs(_box_down(square, 2, 1), wide)
    err_tall = _mean_abs(_box_down(square, 1, 2), tall)
    # A crop (not a stretch) of the square scene would be far off.
    err_crop = _mean_abs(square[:, 16:48], wide)
    assert err_wide.max() < 0.02 and err_tall.max() < 0.02, (err_wide, err_tall)
    assert err_crop.min() > 5 * max(err_wide.max(), err_tall.max()), err_crop


def test_output_range_and_dtype(scenes):
    for index in range(procedural.MAX_CLASSES):
        for height, width in [(1, 1), (16, 16), (32, 48), (64, 64)]:
            image = scenes.render(index, height, width)
            assert image.dtype == np.float32 and image.shape == (height, width, 3)
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    record = ProceduralSource(size=5, resolution=(24, 40))[3]
    assert set(record) == {"image", "label"}
    assert record["image"].dtype == np.float32 and record["image"].shape == (24, 40, 3)
    assert record["label"].dtype == np.int32 and record["label"] == 3


def test_scene_is_deterministic_and_seeded(scenes):
    same = ProceduralScenes(num_classes=procedural.MAX_CLASSES)
    assert scenes.scene(123) == same.scene(123)
    assert np.array_equal(scenes.render(123, 32, 32), same.render(123, 32, 32))
    other_seed = ProceduralScenes(num_classes=procedural.MAX_CLASSES, seed=1)
    assert other_seed.scene(123) != scenes.scene(123)
    assert other_seed.label(123) == scenes.label(123)


def test_determinism_across_processes():
    source = ProceduralSource(size=40, resolution=32, seed=7)
    indices = [0, 5, 11, 39]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.map(source.__getitem__, indices)
    for index, record in zip(indices, child, strict=True):
        expected = source[index]
        assert record["label"] == expected["label"]
        assert np.array_equal(record["image"], expected["image"])


@pytest.mark.parametrize("num_classes", [1, 7, 10, procedural.MAX_CLASSES])
def test_labels_balanced(num_classes):
    for split in procedural.SPLITS:
        scenes = ProceduralScenes(num_classes=num_classes, split=split)
        labels = [scenes.label(i) for i in range(50 * num_classes)]
        assert np.array_equal(np.bincount(labels, minlength=num_classes), [50] * num_classes)
    kinds = {scenes.scene(i).kind for i in range(num_classes)}
    assert kinds == set(procedural.CLASS_KINDS[:num_classes])


def test_distinct_indices_differ(scenes):
    images = scenes.render_batch(range(240), 16, 16)
    dist = _pairwise_mean_abs(images, images)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 0.02, dist.min()


def test_train_and_validation_are_disjoint():
    train = ProceduralScenes(split="train")
    validation = ProceduralScenes(split="validation")
    assert all(train.label(i) == validation.label(i) for i in range(100))
    assert not {train.scene(i) for i in range(200)} & {validation.scene(i) for i in range(200)}
    dist = _pairwise_mean_abs(
        train.render_batch(range(200), 16, 16), validation.render_batch(range(200), 16, 16)
    )
    assert dist.min() > 0.02, dist.min()


def test_classes_are_learnable_from_raw_pixels():
    """Ridge regression on raw 16x16 pixels, fit on train, scored on validation."""
    num_classes = 10
    train = ProceduralScenes(num_classes=num_classes, split="train")
    validation = ProceduralScenes(num_classes=num_classes, split="validation")
    x_train = train.render_batch(range(500), 16, 16).reshape(500, -1)  # [500, 768]
    x_val = validation.render_batch(range(200), 16, 16).reshape(200, -1)  # [200, 768]
    y_train, y_val = np.arange(500) % num_classes, np.arange(200) % num_classes
    mean = x_train.mean(0)
    centered = (x_train - mean).astype(np.float64)
    gram = centered.T @ centered + 10.0 * np.eye(centered.shape[1])
    weights = np.linalg.solve(gram, centered.T @ np.eye(num_classes)[y_train])  # [768, 10]
    accuracy = ((x_val - mean) @ weights).argmax(1) == y_val
    assert accuracy.mean() > 3.0 / num_classes, accuracy.mean()


def test_source_with_grain():
    source = ProceduralSource(size=30, resolution=16, split="validation", seed=3)
    assert len(source) == 30 and source.image_shape == (16, 16, 3)
    restored = pickle.loads(pickle.dumps(source))
    assert restored == source
    assert np.array_equal(restored[4]["image"], source[4]["image"])
    dataset = grain.MapDataset.source(source).shuffle(seed=0)
    labels = sorted(int(dataset[i]["label"]) for i in range(len(dataset)))
    assert labels == sorted(int(source[i]["label"]) for i in range(30))
    with pytest.raises(IndexError, match="30"):
        source[30]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, r"num_classes.*\[1, 12\].*0"),
        ({"num_classes": 13}, r"num_classes.*\[1, 12\].*13"),
        ({"num_classes": 2.0}, r"num_classes.*2\.0"),
        ({"seed": -1}, r"seed.*>= 0.*-1"),
        ({"split": "test"}, r"split.*'train', 'validation'.*'test'"),
    ],
)
def test_scenes_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProceduralScenes(**kwargs)


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, 32, 32), r"index.*>= 0.*-1"),
        ((0, 0, 32), r"height.*>= 1.*0"),
        ((0, 32, -4), r"width.*>= 1.*-4"),
        ((0, 32.0, 32), r"height.*32\.0"),
    ],
)
def test_render_errors(scenes, args, match):
    with pytest.raises(ValueError, match=match):
        scenes.render(*args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0, "resolution": 32}, r"size.*>= 1.*0"),
        ({"size": 8, "resolution": 0}, r"resolution.*>= 1.*0"),
        ({"size": 8, "resolution": (32, 0)}, r"width.*>= 1.*0"),
        ({"size": 8, "resolution": (32, 32, 3)}, r"\(h, w\).*\(32, 32, 3\)"),
        ({"size": 8, "resolution": 32, "split": "val"}, r"split.*'val'"),
        ({"size": 8, "resolution": 32, "num_classes": 20}, r"num_classes.*20"),
    ],
)
def test_source_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProceduralSource(**kwargs)


def test_detailed_style_keeps_the_layout_and_adds_texture():
    smooth = ProceduralScenes(10, seed=0, split="validation")
    detailed = ProceduralScenes(10, seed=0, split="validation", style="detailed")
    for index in range(10):
        a, b = smooth.scene(index), detailed.scene(index)
        assert [s.center for s in a.shapes] == [s.center for s in b.shapes]
        assert a.background.texture == () and len(b.background.texture) > 0
        assert all(len(s.texture) > 0 for s in b.shapes)
    with pytest.raises(ValueError, match="Unknown procedural style 'noisy'.*'detailed', 'smooth'"):
        ProceduralScenes(style="noisy")


def _grating_pixel_means(grating: textures.Grating, side: int, sub: int) -> np.ndarray:
    """Reference: the Grating docstring's formula averaged over each pixel by a sub x sub
    midpoint rule -> [side, side]."""
    points = (np.arange(side * sub) + 0.5) / (side * sub)
    x, y = points[None, :], points[:, None]
    value = sum(
        np.sin(n * (2 * np.pi * (grating.frequency[0] * x + grating.frequency[1] * y) + grating.phase)) / n
        for n in range(1, 2 * grating.harmonics, 2)
    )
    return grating.amplitude * value.reshape(side, sub, side, sub).mean((1, 3))


def test_detailed_gratings_are_box_filtered_exactly():
    # A texture alone: each pixel is the grating's exact pixel-area average, so its 2x render
    # box-downsampled by 2 is its 1x render.
    texture = (
        textures.Grating((23.0, -11.0), 0.4, 0.3, harmonics=3),
        textures.Grating((-5.0, 61.0), 2.0, 0.2),
    )
    x64 = ((np.arange(64) + 0.5) / 64)[None, :].astype(np.float32)
    x32 = ((np.arange(32) + 0.5) / 32)[None, :].astype(np.float32)
    fine = textures.render_texture(texture, x64, x64.T)
    coarse = textures.render_texture(texture, x32, x32.T)
    np.testing.assert_allclose(fine.reshape(32, 2, 32, 2).mean((1, 3)), coarse, atol=2e-6)
    reference = sum(_grating_pixel_means(g, 32, sub=32) for g in texture)
    np.testing.assert_allclose(coarse, reference, atol=1e-3)
    # Whole scenes: only edges, clipping and the smooth background waves are not box-filtered.
    renders = ProceduralScenes(10, style="detailed")
    r64, r32 = renders.render_batch(range(10), 64, 64), renders.render_batch(range(10), 32, 32)
    error = _mean_abs(_box_down(r64, 2, 2), r32)
    between = _mean_abs(r32, np.roll(r32, 1, axis=0))
    assert error.max() < 0.012 and between.min() > 10 * error.max(), (error, between)


def test_detailed_style_adds_detail_without_replacing_the_shapes():
    # At 16 px each detailed render is nearest to the smooth render of its own scene.
    smooth = ProceduralScenes(10, split="validation").render_batch(range(60), 16, 16)
    detailed = ProceduralScenes(10, split="validation", style="detailed").render_batch(range(60), 16, 16)
    dist = _pairwise_mean_abs(detailed, smooth)
    assert np.array_equal(dist.argmin(1), np.arange(60)), dist.argmin(1)


def test_detailed_classes_are_learnable_from_raw_pixels_at_16px():
    """Ridge regression on raw 16x16 pixels of detailed scenes, fit on train, scored on validation."""
    train = ProceduralScenes(10, split="train", style="detailed")
    validation = ProceduralScenes(10, split="validation", style="detailed")
    x_train = train.render_batch(range(500), 16, 16).reshape(500, -1).astype(np.float64)  # [500, 768]
    x_val = validation.render_batch(range(200), 16, 16).reshape(200, -1)  # [200, 768]
    mean = x_train.mean(0)
    centered = x_train - mean
    gram = centered.T @ centered + 10.0 * np.eye(centered.shape[1])
    weights = np.linalg.solve(gram, centered.T @ np.eye(10)[np.arange(500) % 10])  # [768, 10]
    accuracy = ((x_val - mean) @ weights).argmax(1) == np.arange(200) % 10
    assert accuracy.mean() > 0.3, accuracy.mean()


def test_detailed_determinism_across_processes():
    scenes = ProceduralScenes(10, seed=7, style="detailed")
    indices = [0, 5, 11, 39]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.starmap(scenes.render, [(i, 32, 48) for i in indices])
    for index, image in zip(indices, child, strict=True):
        assert np.array_equal(image, scenes.render(index, 32, 48))


def test_detailed_renders_hold_more_fine_detail_than_upsampled_half_size_renders():
    from benchmarks import testbed_detail

    native, resized = testbed_detail.detail_shares("detailed", scenes=32, side=32)
    smooth_native, _ = testbed_detail.detail_shares("smooth", scenes=32, side=32)
    assert native > 3 * resized
    assert native > 1.2 * smooth_native
