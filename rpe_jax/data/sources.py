"""Random-access data sources, one registry: name -> builder.

A builder takes (data config, split, (H, W)) and returns a Grain-compatible random-access
source (`__len__`, `__getitem__`): a module-level, picklable class, since Grain workers
start with spawn. Image sources yield
  {"image": [H, W, 3] float32 in [0, 1], "label": int32},
and give the same example at any size with `example(index, height, width)`, made from the
best original they have (rendered, or resized from the decoded file), which the
resize-and-crop augmentation uses;
the `latents` source yields SD-VAE latents written by `rpe_jax.data.latents.extract_latents`
  {"latents": {factor: [h_r, w_r, L] float32}, "label": int32},
one entry per stored resize factor r, keyed by `factor_name(r)` ("1", "1.25", ..., "2"),
with h_r = r * h; (H, W) is then the factor-1 latent size (h, w).

Sources and the config.data fields they read:
  procedural     train_size, eval_size, seed, num_classes: embedded, nothing to read.
  image_folder   root: ImageNet layout <root>/<split>/<class_name>/*.{JPEG,jpg,png}.
  imagenet_tfds  tfds_dir: TFDS data_dir with imagenet2012 prepared as ArrayRecord.
  fashion_mnist  root (empty: FASHION_MNIST_DIR): IDX files, gzip or not.
  photos         photos_dir, photo_box, train_size, eval_size, seed: crops of Debian's
                 plasma-workspace-wallpapers photographs (rpe_jax/data/photos.py).
  latents        latents_dir: the `latents/` folder of an extract_latents workdir.

Legend: H, W image height and width (pixels); h, w latent height and width (cells);
L latent channels; N examples.
"""

import dataclasses
import gzip
import io
import json
import math
import os
import pathlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from rpe_jax.data import photos, procedural

Resolution = tuple[int, int]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# Split name -> folder names tried under an image_folder root, in order.
_SPLIT_FOLDERS = {"validation": ("validation", "val")}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
_FASHION_MNIST_PREFIXES = {"train": "train", "validation": "t10k", "test": "t10k"}
LATENT_MANIFEST = "manifest.json"


def center_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """ADM centre crop (guided-diffusion `center_crop_arr`), generalised to any aspect.

    While the image is at least twice the target on both sides, halve it with a box
    filter; then resize it (bicubic) so that it just covers the target, and cut out the
    centre. For a square target this is exactly `center_crop_arr`.

    Args:
      image: an RGB PIL image.
      height, width: the target size in pixels.

    Returns:
      [height, width, 3] float32 in [0, 1].
    """
    while image.width >= 2 * width and image.height >= 2 * height:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)
    scale = max(height / image.height, width / image.width)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.BICUBIC)
    top, left = (image.height - height) // 2, (image.width - width) // 2
    return np.asarray(image)[top : top + height, left : left + width].astype(np.float32) / 255


def _list_classes(folder: pathlib.Path) -> tuple[int, tuple[str, ...], np.ndarray]:
    """A split folder's class count, image paths relative to it, and [N] int32 labels (sorted names)."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        names = sorted(
            entry.name
            for entry in os.scandir(folder / name)
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        )
        files += [f"{name}/{file}" for file in names]
        labels += [label] * len(names)
    return len(classes), tuple(files), np.asarray(labels, np.int32)


@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
    """Images in the ImageNet folder layout, centre-cropped (ADM) to one resolution.

    Files are `<root>/<split folder>/<class_name>/<name>` with an extension in
    IMAGE_EXTENSIONS (any case); classes are the split folder's sub-folders sorted by name,
    label = rank. The split folder is `split`, or for "validation" the first of
    "validation", "val" that exists.

    Attributes:
      root: the dataset folder.
      split: split name.
      resolution: (H, W) of every image.
      num_classes: labels must lie in [0, num_classes).

    Raises:
      FileNotFoundError: no split folder, or no images in it.
      ValueError: an empty root, or more class folders than num_classes.
    """

    root: str
    split: str
    resolution: Resolution
    num_classes: int
    folder: pathlib.Path = dataclasses.field(init=False, repr=False)
    files: tuple[str, ...] = dataclasses.field(init=False, repr=False)
    labels: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.root:
            raise ValueError("image_folder source: config.data.root is empty; set it to the dataset folder.")
        root = pathlib.Path(self.root)
        candidates = [root / name for name in _SPLIT_FOLDERS.get(self.split, (self.split,))]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            present = sorted(p.name for p in root.iterdir()) if root.is_dir() else "root does not exist"
            raise FileNotFoundError(
                f"image_folder source: no split folder {[str(c) for c in candidates]} for split "
                f"{self.split!r} (in {root}: {present})."
            )
        num_classes, files, labels = _list_classes(folder)
        if not files:
            raise FileNotFoundError(
                f"image_folder source: no {'/'.join(IMAGE_EXTENSIONS)} files in class folders "
                f"<class_name>/ under {folder}."
            )
        if num_classes > self.num_classes:
            raise ValueError(
                f"image_folder source: {folder} has {num_classes} class folders, more than "
                f"config.data.num_classes={self.num_classes}."
            )
        object.__setattr__(self, "folder", folder)
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` at the source's resolution (see `example`)."""
        return self.example(index, *self.resolution)

    def example(self, index: int, height: int, width: int) -> dict[str, Any]:
        """Example `index` at any size: the decoded file ADM-centre-cropped to (height, width).

        Returns:
          {"image": [height, width, 3] float32 in [0, 1], "label": int32}.

        Raises:
          ValueError: the file cannot be decoded; the message names it.
        """
        path = self.folder / self.files[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")  # decodes the whole file
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"image_folder source: cannot decode image file {path}: {err}") from err
        return {"image": center_crop(rgb, height, width), "label": self.labels[index]}


@dataclasses.dataclass(frozen=True)
class TfdsImageSource:
    """Centre-cropped (ADM) images of a TFDS random-access source.

    Attributes:
      records: random-access records {"image": uint8 [h, w, 3] (or [h, w, 1]), "label": int},
        e.g. `tfds.data_source(...)`.
      resolution: (H, W) of every image.
    """

    records: Any
    resolution: Resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` at the source's resolution (see `example`)."""
        return self.example(index, *self.resolution)

    def example(self, index: int, height: int, width: int) -> dict[str, Any]:
        """Example `index` at any size: the decoded record ADM-centre-cropped to (height, width).

        Returns:
          {"image": [height, width, 3] float32 in [0, 1], "label": int32}.
        """
        record = self.records[index]
        pixels = np.asarray(record["image"], np.uint8)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
        return {"image": center_crop(image, height, width), "label": np.int32(record["label"])}


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Parses an IDX array of unsigned bytes (the MNIST format).

    Args:
      data: the file's (uncompressed) bytes.
      name: the file's name, for errors.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      uint8 array of the header's shape, e.g. [N, 28, 28].

    Raises:
      ValueError: a wrong magic number, or a length other than the header's; the message
        names the file and what was expected.
    """
    header = 4 + 4 * ndim
    expected_magic = 0x0800 | ndim
    magic = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and magic != expected_magic:
        raise ValueError(
            f"{name}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX, unsigned "
            f"bytes, {ndim} dimensions)."
        )
    if len(data) < header:
        raise ValueError(f"{name}: {len(data)} bytes, too short for an IDX header of {header} bytes.")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
    if len(data) - header != math.prod(shape):
        raise ValueError(
            f"{name}: the header gives shape {shape}, {math.prod(shape)} bytes of data, but the file "
            f"has {len(data) - header}: it is truncated or corrupt."
        )
    return np.frombuffer(data, np.uint8, math.prod(shape), header).reshape(shape)


def read_idx(root: pathlib.Path, stem: str, ndim: int) -> np.ndarray:
    """Reads `<root>/<stem>` or `<root>/<stem>.gz` with `parse_idx`.

    Raises:
      FileNotFoundError: neither file exists.
      ValueError: a corrupt gzip stream or IDX array; the message names the file.
    """
    plain, packed = root / stem, root / f"{stem}.gz"
    if plain.is_file():
        return parse_idx(plain.read_bytes(), str(plain), ndim)
    if not packed.is_file():
        raise FileNotFoundError(
            f"fashion_mnist source: neither {plain} nor {packed} exists. Install Debian's files with "
            f"`apt-get install dataset-fashion-mnist` (into {FASHION_MNIST_DIR}) or set config.data.root."
        )
    try:
        data = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{packed}: truncated or corrupt gzip stream ({err}).") from err
    return parse_idx(data, str(packed), ndim)


def _resize_grey(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w] -> [height, width, 3] float32 in [0, 1], bicubic, grey in every channel."""
    x = image.astype(np.float32) / 255
    if x.shape != (height, width):
        x = np.asarray(Image.fromarray(x).resize((width, height), Image.Resampling.BICUBIC))
    return np.repeat(np.clip(x, 0.0, 1.0)[..., None], 3, axis=-1)


@dataclasses.dataclass(frozen=True)
class FashionMnistSource:
    """Fashion-MNIST from IDX files: 28 x 28 grey, resized (bicubic) to (H, W), 3 channels.

    A non-square resolution stretches the image (as the procedural scenes do). Splits:
    "train" (60000) reads `train-*`, "validation" and "test" (10000) read `t10k-*`.

    Attributes:
      root: folder of `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
      split: "train", "validation" or "test".
      resolution: (H, W) of every image.

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: an unknown split, or corrupt files (see `read_idx`).
    """

    root: str
    split: str
    resolution: Resolution
    images: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    labels: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.split not in _FASHION_MNIST_PREFIXES:
            raise ValueError(
                f"fashion_mnist source: unknown split {self.split!r}; choose one of "
                f"{sorted(_FASHION_MNIST_PREFIXES)}."
            )
        root, prefix = pathlib.Path(self.root), _FASHION_MNIST_PREFIXES[self.split]
        images = read_idx(root, f"{prefix}-images-idx3-ubyte", 3)
        labels = read_idx(root, f"{prefix}-labels-idx1-ubyte", 1)
        if len(images) != len(labels) or labels.max(initial=0) > 9:
            raise ValueError(
                f"fashion_mnist source: {root}/{prefix}-*: {len(images)} images but {len(labels)} "
                f"labels, label range [0, {labels.max(initial=0)}]; expected equal counts, labels 0..9."
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` at the source's resolution (see `example`)."""
        return self.example(index, *self.resolution)

    def example(self, index: int, height: int, width: int) -> dict[str, Any]:
        """Example `index` resized (bicubic) from its 28 x 28 original to (height, width).

        Fashion-MNIST has no resolution beyond 28 px: above it (e.g. a resize-and-crop
        factor r > 1 at a 28 px training size) the example is an upsample, with no detail
        to add.

        Returns:
          {"image": [height, width, 3] float32 in [0, 1], "label": int32}.
        """
        return {"image": _resize_grey(self.images[index], height, width), "label": self.labels[index]}


def factor_name(factor: float) -> str:
    """Key of a resize factor in latent examples and records: 1.0 -> "1", 1.25 -> "1.25"."""
    return f"{factor:g}"


def latent_shard_name(split: str, shard: int, num_shards: int) -> str:
    """File name of one latent shard, e.g. "train-00003-of-00100.array_record"."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def encode_latent_record(latents: Mapping[str, np.ndarray], label: int, index: int) -> bytes:
    """One ArrayRecord record: an uncompressed `.npz` (read with np.load, no pickle).

    Arrays: "label" int64 scalar, "index" int64 scalar (the example's index in the image
    source), and "latents_<factor name>" [h_r, w_r, L] in the storage dtype, per factor.
    """
    buffer = io.BytesIO()
    arrays = {f"latents_{name}": value for name, value in latents.items()}
    # mypy matches `**arrays` against savez's `allow_pickle: bool` keyword as well as `**kwds`.
    np.savez(buffer, label=np.int64(label), index=np.int64(index), **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_latent_record(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_latent_record`: {"latents": {factor: float32}, "label": int32, "index": int}."""
    with np.load(io.BytesIO(record), allow_pickle=False) as arrays:
        latents = {
            key.removeprefix("latents_"): arrays[key].astype(np.float32)
            for key in arrays.files
            if key.startswith("latents_")
        }
        return {"latents": latents, "label": np.int32(arrays["label"]), "index": int(arrays["index"])}


def read_latent_manifest(directory: epath.PathLike) -> dict[str, Any]:
    """The manifest that extract_latents keeps in `directory` (local or gs://; see
    rpe_jax/data/latents.py).

    Raises:
      FileNotFoundError: no manifest in `directory`.
    """
    path = epath.Path(directory) / LATENT_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No latent manifest {path}: run `python -m rpe_jax.main --mode=extract_latents` with "
            "--workdir=W and point config.data.latents_dir at W/latents."
        )
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class LatentSource:
    """Pre-extracted latents of one split, read from its complete set of ArrayRecord shards.

    Attributes:
      directory: the folder of the manifest and the shards.
      split: split name.

    Raises:
      FileNotFoundError: no manifest, or a shard file is missing.
      ValueError: the split was not extracted, or its extraction is unfinished.
    """

    directory: str
    split: str
    latent_shape: tuple[int, ...] = dataclasses.field(init=False)
    records: grain.sources.ArrayRecordDataSource = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        manifest = read_latent_manifest(self.directory)
        splits = manifest["splits"]
        if self.split not in splits:
            raise ValueError(
                f"latents source: split {self.split!r} was not extracted to {self.directory} (extracted: "
                f"{sorted(splits)}); add it to config.data.latent_splits and run extract_latents."
            )
        info = splits[self.split]
        if len(info["done"]) != info["num_shards"]:
            raise ValueError(
                f"latents source: {self.directory} holds {len(info['done'])} of {info['num_shards']} "
                f"{self.split!r} shards; rerun extract_latents to finish them."
            )
        paths = [
            pathlib.Path(self.directory) / latent_shard_name(self.split, shard, info["num_shards"])
            for shard in range(info["num_shards"])
        ]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"latents source: shard files missing: {missing}.")
        shape = tuple(manifest["settings"]["latent_shapes"][factor_name(1.0)])
        object.__setattr__(self, "latent_shape", shape)
        object.__setattr__(self, "records", grain.sources.ArrayRecordDataSource([str(p) for p in paths]))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index`: {"latents": {factor: [h_r, w_r, L] float32}, "label": int32}."""
        example = decode_latent_record(self.records[index])
        return {"latents": example["latents"], "label": example["label"]}


def _pair(resolution: Sequence[int]) -> Resolution:
    """`resolution` as an (H, W) tuple (a config may hold it as a list)."""
    return cast(Resolution, tuple(resolution))


def _procedural(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    size = config.train_size if split == "train" else config.eval_size
    return procedural.ProceduralSource(
        size,
        resolution,
        split=split,
        seed=config.seed,
        num_classes=config.num_classes,
        style=config.procedural_style,
    )


def _image_folder(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    return ImageFolderSource(config.root, split, _pair(resolution), config.num_classes)


def _imagenet_tfds(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    data_dir = config.tfds_dir or None
    try:
        records = tfds.data_source("imagenet2012", split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, FileNotFoundError) as err:
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"imagenet_tfds source: no imagenet2012 prepared in ArrayRecord format under {where} "
            "(config.data.tfds_dir). ImageNet is a manual download: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in a folder MANUAL, then prepare once with `tfds build imagenet2012 "
            "--data_dir=DATA --manual_dir=MANUAL --file_format=array_record` or, in Python, "
            "`tfds.builder('imagenet2012', data_dir=DATA, file_format='array_record')"
            ".download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL))`."
        ) from err
    return TfdsImageSource(records, _pair(resolution))


def _fashion_mnist(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    return FashionMnistSource(config.root or FASHION_MNIST_DIR, split, _pair(resolution))


def _photos(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    size = config.train_size if split == "train" else config.eval_size
    return photos.PhotoSource(
        config.photos_dir or photos.DEFAULT_DIR,
        split,
        _pair(resolution),
        size,
        seed=config.seed,
        box=tuple(config.photo_box),
        num_classes=config.num_classes,
    )


def _latents(config: ml_collections.ConfigDict, split: str, resolution: Resolution):
    if not config.latents_dir:
        raise ValueError(
            "latents source: config.data.latents_dir is empty; set it to the latents/ folder of an "
            "extract_latents workdir."
        )
    source = LatentSource(config.latents_dir, split)
    if source.latent_shape[:2] != tuple(resolution):
        raise ValueError(
            f"latents source: {config.latents_dir} holds {source.latent_shape[0]}x{source.latent_shape[1]} "
            f"latents at factor 1, but the run asks for {resolution[0]}x{resolution[1]} (config.data."
            "resolution / 8); extract latents at this resolution or change it."
        )
    return source


SOURCES: dict[str, Callable] = {
    "procedural": _procedural,
    "image_folder": _image_folder,
    "imagenet_tfds": _imagenet_tfds,
    "fashion_mnist": _fashion_mnist,
    "photos": _photos,
    "latents": _latents,
}
