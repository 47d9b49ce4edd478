"""Tests for rpe_jax.data.sources: image folders, TFDS ImageNet, Fashion-MNIST, the registry."""

import gzip
import pathlib
import pickle

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from rpe_jax.data import sources

DEBIAN_FASHION_MNIST = pathlib.Path(sources.FASHION_MNIST_DIR)


def _data_config(**fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "root": "",
            "tfds_dir": "",
            "latents_dir": "",
            "num_classes": 10,
            "seed": 0,
            "train_size": 4,
            "procedural_style": "smooth",
        }
    )
    config.update(fields)
    return config


def _center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """guided-diffusion's `center_crop_arr` (image_datasets.py), verbatim but for names."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def _gradient(height: int, width: int, axis: int, step: int) -> Image.Image:
    """uint8 RGB image whose value is `step` x (row or column index), constant along the other axis."""
    ramp = step * np.arange((height, width)[axis], dtype=np.uint8)
    values = np.broadcast_to(ramp[:, None] if axis == 0 else ramp[None, :], (height, width))
    return Image.fromarray(np.repeat(values[..., None], 3, axis=-1).copy())


@pytest.mark.parametrize(
    "image, size, expected_axis, expected",
    [
        # 40x20 -> box 20x10 (columns 12 j + 3) -> no resize -> columns 5..14.
        (_gradient(20, 40, 1, 6), (10, 10), 1, 12 * np.arange(5, 15) + 3),
        # 40x20 -> box 20x10 -> box 10x5 (columns 24 k + 9) -> no resize, no crop (non-square target).
        (_gradient(20, 40, 1, 6), (5, 10), 1, 24 * np.arange(10) + 9),
        # 40x40 -> box 20x20 (rows 12 i + 3) -> covers 10x20 -> rows 5..14 (crop to the aspect).
        (_gradient(40, 40, 0, 6), (10, 20), 0, 12 * np.arange(5, 15) + 3),
    ],
)
def test_center_crop_hand_computed(image, size, expected_axis, expected):
    out = sources.center_crop(image, *size)
    assert out.shape == (*size, 3) and out.dtype == np.float32
    want = (expected[:, None] if expected_axis == 0 else expected[None, :]).astype(np.float32) / 255
    np.testing.assert_array_equal(out, np.broadcast_to(want[..., None], out.shape))


@pytest.mark.parametrize("width, height, side", [(500, 375, 64), (97, 131, 32), (64, 64, 64), (20, 30, 48)])
def test_center_crop_is_adm_for_square_targets(width, height, side):
    rng = np.random.default_rng(width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    np.testing.assert_array_equal(
        sources.center_crop(image, side, side), _center_crop_arr(image, side).astype(np.float32) / 255
    )


@pytest.fixture
def image_root(tmp_path) -> pathlib.Path:
    """<root>/{train,val}/<class>/ with JPEGs and PNGs of varied sizes (classes unsorted on disk)."""
    rng = np.random.default_rng(0)
    layout = {
        "train/b_cat": [("x.JPEG", (50, 70)), ("y.png", (33, 20))],
        "train/a_dog": [("grad.png", None), ("z.jpg", (64, 64))],
        "train/c_owl": [("w.jpeg", (17, 90))],
        "val/a_dog": [("v.JPEG", (40, 30))],
    }
    for folder, files in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for name, shape in files:
            image = _gradient(20, 40, 1, 6) if shape is None else rng.integers(0, 256, (*shape, 3), np.uint8)
            Image.fromarray(np.asarray(image)).save(tmp_path / folder / name)
    (tmp_path / "train/b_cat/notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder(image_root):
    source = sources.SOURCES["image_folder"](_data_config(root=str(image_root)), "train", (10, 10))
    source = pickle.loads(pickle.dumps(source))  # Grain workers receive it pickled
    assert len(source) == 5
    assert source.files == ("a_dog/grad.png", "a_dog/z.jpg", "b_cat/x.JPEG", "b_cat/y.png", "c_owl/w.jpeg")
    assert [int(source[i]["label"]) for i in range(5)] == [0, 0, 1, 1, 2]
    for i in range(5):
        image = source[i]["image"]
        assert image.shape == (10, 10, 3) and image.dtype == np.float32
        assert 0 <= image.min() <= image.max() <= 1
    columns = (12 * np.arange(5, 15) + 3).astype(np.float32) / 255  # see test_center_crop_hand_computed
    np.testing.assert_array_equal(source[0]["image"], np.broadcast_to(columns[None, :, None], (10, 10, 3)))


def test_image_folder_resize_and_crop_cuts_the_original_resized_larger(image_root):
    from rpe_jax.data import pipeline

    source = sources.SOURCES["image_folder"](_data_config(root=str(image_root)), "train", (16, 16))
    render = pipeline.RenderResizeAndCrop(source, (16, 16), patch=2, prob=1.0)
    # Index 1 is z.jpg, 64 x 64: the example resized by r = 2 is ADM's 32 px crop of it.
    element = {"index": 1, "flip": False}
    out = next(
        o for s in range(200) if (o := render.random_map(element, np.random.default_rng(s)))["crop"][0] == 16
    )
    _, _, top, left = out["crop"]
    with Image.open(image_root / "train/a_dog/z.jpg") as image:
        original = image.convert("RGB")
    big = _center_crop_arr(original, 32).astype(np.float32) / 255
    window = big[2 * top : 2 * top + 16, 2 * left : 2 * left + 16]
    np.testing.assert_allclose(out["x"], window * 2 - 1, atol=1e-6)
    small = _center_crop_arr(original, 16)
    upsampled = (
        np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255
    )
    assert np.abs(window - upsampled[2 * top : 2 * top + 16, 2 * left : 2 * left + 16]).mean() > 0.02


def test_image_folder_validation_reads_val(image_root):
    source = sources.SOURCES["image_folder"](_data_config(root=str(image_root)), "validation", (8, 12))
    assert len(source) == 1 and source[0]["image"].shape == (8, 12, 3)


def test_image_folder_errors(image_root, tmp_path_factory):
    build = sources.SOURCES["image_folder"]
    with pytest.raises(ValueError, match="config.data.root is empty"):
        build(_data_config(), "train", (8, 8))
    with pytest.raises(FileNotFoundError, match="no split folder.*'test'"):
        build(_data_config(root=str(image_root)), "test", (8, 8))
    with pytest.raises(ValueError, match="3 class folders, more than config.data.num_classes=2"):
        build(_data_config(root=str(image_root), num_classes=2), "train", (8, 8))
    empty = tmp_path_factory.mktemp("empty")
    (empty / "train/a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .* files"):
        build(_data_config(root=str(empty)), "train", (8, 8))


def test_image_folder_corrupt_file_names_file_and_source(image_root):
    path = image_root / "train/b_cat/x.JPEG"
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    (image_root / "train/b_cat/y.png").write_bytes(b"not a png at all")
    source = sources.SOURCES["image_folder"](_data_config(root=str(image_root)), "train", (8, 8))
    for index, name in ((2, "x.JPEG"), (3, "y.png")):
        with pytest.raises(
            ValueError, match=rf"image_folder source: cannot decode image file .*b_cat/{name}"
        ):
            source[index]


def test_imagenet_tfds_on_mock_data(tmp_path):
    config = _data_config(tfds_dir=str(tmp_path), num_classes=1000)
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        source = sources.SOURCES["imagenet_tfds"](config, "validation", (16, 24))
        assert len(source) == 5
        for i in range(5):
            example = source[i]
            assert example["image"].shape == (16, 24, 3) and example["image"].dtype == np.float32
            assert 0 <= example["image"].min() <= example["image"].max() <= 1
            assert 0 <= example["label"] < 1000


def test_imagenet_tfds_missing_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)imagenet_tfds source.*manual_dir.*array_record"):
        sources.SOURCES["imagenet_tfds"](_data_config(tfds_dir=str(tmp_path)), "train", (8, 8))


def test_tfds_adapter_crops_and_converts_grey():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (30, 50, 3), np.uint8)
    grey = rng.integers(0, 256, (40, 20, 1), np.uint8)
    source = sources.TfdsImageSource([{"image": colour, "label": 3}, {"image": grey, "label": 7}], (12, 12))
    np.testing.assert_array_equal(source[0]["image"], sources.center_crop(Image.fromarray(colour), 12, 12))
    assert source[0]["label"] == 3 and source[1]["label"] == 7
    expected = sources.center_crop(Image.fromarray(grey[..., 0]).convert("RGB"), 12, 12)
    np.testing.assert_array_equal(source[1]["image"], expected)


def test_tfds_example_at_a_larger_size_is_the_record_centre_cropped_there():
    colour = np.random.default_rng(1).integers(0, 256, (30, 50, 3), np.uint8)
    source = sources.TfdsImageSource([{"image": colour, "label": 3}], (12, 12))
    np.testing.assert_array_equal(source[0]["image"], source.example(0, 12, 12)["image"])
    big = source.example(0, 24, 24)
    assert big["label"] == 3
    np.testing.assert_allclose(big["image"], _center_crop_arr(Image.fromarray(colour), 24) / 255, atol=1e-6)


def _idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array, written by hand from the format's definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(s.to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx():
    array = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    np.testing.assert_array_equal(sources.parse_idx(_idx(array), "f", 3), array)
    labels = np.array([3, 1, 4], np.uint8)
    np.testing.assert_array_equal(sources.parse_idx(_idx(labels), "f", 1), labels)


@pytest.mark.parametrize(
    "data, message",
    [
        (_idx(np.zeros((2, 3, 2)))[:-1], r"f.idx: the header gives shape \(2, 3, 2\), 12 bytes .* has 11"),
        (_idx(np.zeros((2, 3, 2))) + b"\0", r"f.idx: .* has 13: it is truncated or corrupt"),
        (_idx(np.zeros(5)), r"f.idx: magic number 0x00000801, expected 0x00000803"),
        (_idx(np.zeros((2, 3, 2)))[:10], r"f.idx: 10 bytes, too short for an IDX header of 16 bytes"),
    ],
)
def test_parse_idx_errors(data, message):
    with pytest.raises(ValueError, match=message):
        sources.parse_idx(data, "f.idx", 3)


def _write_fashion(root: pathlib.Path, images: np.ndarray, labels: np.ndarray, packed: bool) -> None:
    for stem, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = _idx(array)
        if packed:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)


@pytest.mark.parametrize("packed", [False, True])
def test_fashion_mnist_on_tiny_files(tmp_path, packed):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
    _write_fashion(tmp_path, images, np.array([9, 0, 4], np.uint8), packed)
    config = _data_config(root=str(tmp_path))
    native = sources.SOURCES["fashion_mnist"](config, "train", (28, 28))
    assert len(native) == 3 and [int(native[i]["label"]) for i in range(3)] == [9, 0, 4]
    np.testing.assert_array_equal(
        native[1]["image"], np.repeat(images[1, :, :, None], 3, -1) / np.float32(255)
    )
    resized = pickle.loads(pickle.dumps(sources.SOURCES["fashion_mnist"](config, "train", (32, 48))))
    image = resized[2]["image"]
    assert image.shape == (32, 48, 3) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_fashion_mnist_example_at_any_size_is_the_28px_original_resized(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (2, 28, 28), np.uint8)
    _write_fashion(tmp_path, images, np.array([1, 5], np.uint8), packed=False)
    source = sources.SOURCES["fashion_mnist"](_data_config(root=str(tmp_path)), "train", (28, 28))
    np.testing.assert_array_equal(source[1]["image"], source.example(1, 28, 28)["image"])
    grey = Image.fromarray(images[1].astype(np.float32) / 255)  # mode "F"
    want = np.clip(np.asarray(grey.resize((56, 56), Image.Resampling.BICUBIC)), 0, 1)
    big = source.example(1, 56, 56)
    assert big["label"] == 5 and big["image"].shape == (56, 56, 3)
    for channel in range(3):
        np.testing.assert_allclose(big["image"][..., channel], want, atol=1e-6)


def test_fashion_mnist_file_errors(tmp_path):
    config = _data_config(root=str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=r"train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"
    ):
        sources.SOURCES["fashion_mnist"](config, "train", (28, 28))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        sources.SOURCES["fashion_mnist"](config, "dev", (28, 28))
    _write_fashion(tmp_path, np.zeros((3, 28, 28)), np.array([1, 2, 3]), packed=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        sources.SOURCES["fashion_mnist"](config, "train", (28, 28))
    _write_fashion(tmp_path, np.zeros((3, 28, 28)), np.array([1, 2, 12]), packed=True)
    with pytest.raises(ValueError, match=r"label range \[0, 12\]"):
        sources.SOURCES["fashion_mnist"](config, "train", (28, 28))


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist for the real files"
)
@pytest.mark.parametrize("split, count", [("train", 60_000), ("validation", 10_000)])
def test_fashion_mnist_debian_files(split, count):
    source = sources.SOURCES["fashion_mnist"](_data_config(), split, (32, 32))
    assert len(source) == count
    assert sorted(np.unique(source.labels).tolist()) == list(range(10))
    np.testing.assert_array_equal(np.bincount(source.labels), [count // 10] * 10)
    example = source[count - 1]
    assert example["image"].shape == (32, 32, 3) and 0 <= example["image"].min() < example["image"].max() <= 1


def test_registry():
    assert {"procedural", "image_folder", "imagenet_tfds", "fashion_mnist", "latents"} <= set(sources.SOURCES)
    example = sources.SOURCES["procedural"](_data_config(), "train", (16, 8))[1]
    assert example["image"].shape == (16, 8, 3) and example["label"] == 1
