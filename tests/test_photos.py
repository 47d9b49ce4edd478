"""Tests of rpe_jax.data.photos on small wallpapers written by the test (and Debian's, when installed)."""

import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from rpe_jax.data import photos, pipeline


@pytest.fixture(scope="module")
def wallpapers(tmp_path_factory) -> pathlib.Path:
    """<root>/<name>/contents/images/{400x300,200x150}.jpg for every name in PHOTOS: smooth noise."""
    root = tmp_path_factory.mktemp("wallpapers")
    rng = np.random.default_rng(0)
    for name in photos.PHOTOS:
        folder = root / name / "contents" / "images"
        folder.mkdir(parents=True)
        coarse = rng.integers(0, 256, (30, 40, 3), np.uint8)
        image = Image.fromarray(coarse).resize((400, 300), Image.Resampling.BICUBIC)
        image = Image.fromarray(
            np.clip(np.asarray(image, np.int16) + rng.integers(-40, 40, (300, 400, 3)), 0, 255).astype(
                np.uint8
            )
        )
        image.save(folder / "400x300.jpg", quality=95)
        image.resize((200, 150)).save(folder / "200x150.jpg")
    return root


def _source(root, split="train", resolution=(16, 16), size=200):
    return photos.PhotoSource(str(root), split, resolution, size, seed=3, box=(48, 160))


def test_reads_the_largest_jpeg_and_is_deterministic(wallpapers):
    source = _source(wallpapers)
    assert all(path.endswith("400x300.jpg") for path in source.paths)
    again = pickle.loads(pickle.dumps(_source(wallpapers)))
    for i in range(20):
        a, b = source[i], again[i]
        assert a["image"].shape == (16, 16, 3) and a["image"].dtype == np.float32
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["label"] == b["label"] and 0 <= a["label"] < len(photos.PHOTOS)
    other = _source(wallpapers, split="validation")
    assert [source.draw(i) for i in range(10)] != [other.draw(i) for i in range(10)]


@pytest.mark.parametrize("height, width", [(16, 16), (16, 32), (48, 24)])
def test_crop_boxes_stay_inside_the_photo(wallpapers, height, width):
    source = _source(wallpapers)
    sides = []
    for i in range(200):
        photo, side, (cx, cy), _ = source.draw(i)
        left, top, right, bottom = photos.crop_box(source.sizes[photo], side, (cx, cy), height, width)
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert max(right - left, bottom - top) == pytest.approx(side)
        assert (right - left) / (bottom - top) == pytest.approx(width / height)
        sides.append(side)
    assert 48 <= min(sides) and max(sides) <= 160


@pytest.mark.parametrize("height, width", [(16, 16), (16, 32), (48, 24)])
def test_train_and_validation_boxes_never_overlap(wallpapers, height, width):
    # 400 px wide test photos: train uses columns [0, 240), validation [240, 400).
    for split, (start, stop) in [("train", (0, 240)), ("validation", (240, 400))]:
        source = _source(wallpapers, split=split)
        for i in range(200):
            photo, side, center, _ = source.draw(i)
            left, _, right, _ = photos.crop_box(source.sizes[photo], side, center, height, width)
            assert start <= left and right <= stop


def test_a_resized_crop_is_the_original_resized_not_an_upsample(wallpapers):
    source = _source(wallpapers)
    render = pipeline.RenderResizeAndCrop(source, (16, 16), patch=2, prob=1.0)
    element = {"index": 5, "flip": False}
    out = next(
        o for s in range(200) if (o := render.random_map(element, np.random.default_rng(s)))["crop"][0] == 16
    )
    _, _, top, left = out["crop"]
    photo, side, (cx, cy), flip = source.draw(5)
    with Image.open(source.paths[photo]) as image:
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        big = (
            np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC, box=box), np.float32)
            / 255
        )
    big = big[:, ::-1] if flip else big
    window = big[2 * top : 2 * top + 16, 2 * left : 2 * left + 16]
    np.testing.assert_allclose(out["x"], window * 2 - 1, atol=1e-6)
    small = (source.example(5, 16, 16)["image"] * 255).astype(np.uint8)
    upsampled = (
        np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255
    )
    assert np.abs(window - upsampled[2 * top : 2 * top + 16, 2 * left : 2 * left + 16]).mean() > 0.02


def test_the_pipeline_reads_the_photos_source_from_the_config(wallpapers):
    from configs import demo

    config = demo.get_config().data
    config.update(source="photos", photos_dir=str(wallpapers), photo_box=(48, 160), num_classes=11)
    config.train_size = 40
    data = pipeline.create_dataset(config, split="train", resolution=(16, 16), patch=2, batch_size=8)
    batch = next(iter(data))
    assert batch["x"].shape == (8, 16, 16, 3) and -1 <= batch["x"].min() <= batch["x"].max() <= 1
    assert 0 <= batch["label"].min() and batch["label"].max() < len(photos.PHOTOS)


def test_downsampling_is_antialiased(tmp_path):
    # A 1-px checkerboard shrunk 3x or more is flat grey; point sampling would keep 0s and 1s.
    board = Image.fromarray((np.indices((300, 400)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    for name in photos.PHOTOS:
        folder = tmp_path / name / "contents" / "images"
        folder.mkdir(parents=True)
        board.save(folder / "400x300.jpg", quality=100)
    source = photos.PhotoSource(str(tmp_path), "train", (16, 16), 20, box=(48, 160))
    assert 0.3 < np.asarray(board, np.float32).std() / 255
    for i in range(20):
        image = source[i]["image"]
        assert abs(image.mean() - 0.5) < 0.05 and image.std() < 0.05


def test_errors_name_the_package_and_the_values(wallpapers, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install plasma-workspace-wallpapers"):
        photos.PhotoSource(str(tmp_path), "train", (16, 16), 10)
    with pytest.raises(ValueError, match=r"photo_box=\(64, 200\).*<= 160"):
        photos.PhotoSource(str(wallpapers), "train", (16, 16), 10, box=(64, 200))
    with pytest.raises(ValueError, match="num_classes=10; set it to at least 11"):
        photos.PhotoSource(str(wallpapers), "train", (16, 16), 10, num_classes=10)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        photos.PhotoSource(str(wallpapers), "test", (16, 16), 10)


@pytest.mark.skipif(
    not pathlib.Path(photos.DEFAULT_DIR, "Path").is_dir(), reason="plasma-workspace-wallpapers absent"
)
def test_debian_photos_are_large_jpegs():
    source = photos.PhotoSource(photos.DEFAULT_DIR, "train", (32, 32), 10)
    assert all(min(size) >= 1600 for size in source.sizes)
    for i in range(3):
        image = source[i]["image"]
        assert image.shape == (32, 32, 3) and 0 <= image.min() <= image.max() <= 1
        # The two-step (box-reduce, then bicubic) resize stays close to the one-step resample.
        photo, side, center, flip = source.draw(i)
        with Image.open(source.paths[photo]) as original:
            box = photos.crop_box(source.sizes[photo], side, center, 32, 32)
            exact = np.asarray(original.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC, box=box))
        exact = exact[:, ::-1] if flip else exact
        assert np.abs(image - exact / 255).max() < 4 / 255
