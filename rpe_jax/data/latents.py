"""SD-VAE latents: extracted once into ArrayRecord shards, then randomly resized and cropped.

Extraction (`extract_latents`; `python -m rpe_jax.main --mode=extract_latents`) encodes
the image source config.data.latent_source at the training resolution (H, W)
(config.data.resolution, pixels) and at every resize factor r in config.data.latent_factors,
each from the source's own image at (r H, r W) (for photographs the ADM centre crop at that
size, for procedural scenes a render), with the VAE at config.vae.path: the posterior mean,
or a sample when config.data.latent_sample, times the VAE's scaling factor.

Output, in <workdir>/latents/ (set config.data.latents_dir to it to train on it):
  <split>-SSSSS-of-NNNNN.array_record: shard s holds examples [s S, (s + 1) S) of the image
    source in order (S = config.data.latent_shard_size), one record per example, laid out as
    `sources.encode_latent_record` writes it: latents per factor, label, source index.
  manifest.json: {"settings": {...}, "splits": {split: {"num_examples", "num_shards", "done"}}}.
A shard is written to `<name>.partial` (for a gs:// workdir, to a local temporary file) and moved
into place once complete, then listed under "done".
A rerun skips every finished shard (never rewriting it), redoes an interrupted one, and
refuses a folder extracted with other settings.

Training reads the shards with the `latents` source (data/sources.py) and turns each example
into the pipeline's model input with `LatentResizeAndCrop`.

Legend: B batch, H/W image height/width (pixels), h/w latent height/width, L latent channels.
"""

import dataclasses
import datetime
import functools
import json
import math
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from array_record.python import array_record_module
from etils import epath
from flax import nnx

from rpe_jax import config_utils, paths, sharding
from rpe_jax.data import sources
from rpe_jax.models import dit
from rpe_jax.models import vae as vae_lib

Resolution = tuple[int, int]

BASE_FACTOR = sources.factor_name(1.0)  # key of the training-resolution latents
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}  # storage dtypes
LOG_EVERY_S = 30.0  # progress log period, seconds
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: fast random access


def latent_resolutions(config: ml_collections.ConfigDict) -> dict[str, Resolution]:
    """Pixel resolution of every stored factor, {factor name: (r H, r W)}.

    Args:
      config: the experiment config (data.resolution, data.latent_factors, model.variant).

    Returns:
      The (H, W) images to encode per factor, in config order.

    Raises:
      ValueError: the factors lack 1.0, hold one below 1 or a duplicate, or a factor gives a
        side that is not a whole number of tokens (VAE factor 8 x model patch pixels).
    """
    height, width = config_utils.parse_resolution(config.data.resolution)
    patch = dit.decode_variant(config.model.variant)["patch"]
    token = config_utils.LATENT_FACTOR * patch
    factors = tuple(float(r) for r in config.data.latent_factors)
    names = [sources.factor_name(r) for r in factors]
    if 1.0 not in factors or min(factors) < 1.0 or len(set(names)) != len(names):
        raise ValueError(
            f"config.data.latent_factors {factors}: must include 1.0, and hold no factor below 1 "
            "and no duplicate."
        )
    resolutions = {}
    for factor, name in zip(factors, names, strict=True):
        sides = (height * factor, width * factor)
        if any(abs(s - round(s)) > 1e-6 or round(s) % token for s in sides):
            raise ValueError(
                f"config.data.latent_factors entry {factor:g}: {height}x{width} px x {factor:g} = "
                f"{sides[0]:g}x{sides[1]:g} px is not a whole number of {token}-px tokens (VAE factor "
                f"{config_utils.LATENT_FACTOR} x patch {patch} of {config.model.variant}): r * side / 8 "
                "must be a multiple of the patch."
            )
        resolutions[name] = (round(sides[0]), round(sides[1]))
    return resolutions


def _check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError on extraction settings that cannot work."""
    data = config.data
    if data.latent_source not in sources.SOURCES or data.latent_source == "latents":
        choices = sorted(set(sources.SOURCES) - {"latents"})
        raise ValueError(
            f"Unknown config.data.latent_source {data.latent_source!r}; choose one of {choices}."
        )
    if data.latent_dtype not in LATENT_DTYPES:
        raise ValueError(
            f"Unknown config.data.latent_dtype {data.latent_dtype!r}; choose one of {sorted(LATENT_DTYPES)}."
        )
    devices = jax.local_device_count()
    if data.latent_batch_size < 1 or data.latent_batch_size % devices:
        raise ValueError(
            f"config.data.latent_batch_size {data.latent_batch_size} must be a positive multiple of the "
            f"{devices} local devices."
        )
    if data.latent_shard_size < 1:
        raise ValueError(f"config.data.latent_shard_size {data.latent_shard_size} must be >= 1.")
    if jax.process_count() > 1:
        raise ValueError(f"extract_latents runs in one process; this run has {jax.process_count()}.")


def _settings(
    config: ml_collections.ConfigDict, resolutions: Mapping[str, Resolution], channels: int
) -> dict[str, Any]:
    """What the stored latents depend on, as JSON-ready values."""
    factor = config_utils.LATENT_FACTOR
    return {
        "source": config.data.latent_source,
        "root": config.data.root,
        "resolution": list(resolutions[BASE_FACTOR]),
        "factors": list(resolutions),
        "latent_shapes": {name: [h // factor, w // factor, channels] for name, (h, w) in resolutions.items()},
        "shard_size": config.data.latent_shard_size,
        "dtype": config.data.latent_dtype,
        "sample": config.data.latent_sample,
        "seed": config.data.seed,
        "vae_path": str(config.vae.path),
    }


def _save_manifest(directory: epath.Path, manifest: dict[str, Any]) -> None:
    """Writes the manifest atomically (temporary file, then rename)."""
    path = directory / sources.LATENT_MANIFEST
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    temporary.replace(path)


def _open_manifest(directory: epath.Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest, created if absent.

    Raises:
      ValueError: the folder holds latents extracted with other settings.
    """
    if not (directory / sources.LATENT_MANIFEST).is_file():
        manifest = {"settings": settings, "splits": {}}
        _save_manifest(directory, manifest)
        return manifest
    manifest = sources.read_latent_manifest(directory)
    old = manifest["settings"]
    changed = [
        f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
        for k in sorted(old | settings)
        if old.get(k) != settings.get(k)
    ]
    if changed:
        raise ValueError(
            f"{directory} holds latents extracted with other settings ({'; '.join(changed)}); use another "
            f"workdir, or delete {directory} to start over."
        )
    return manifest


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, key: jax.Array | None):
    """images: [B, H, W, 3] in [0, 1] -> [B, h, w, L] scaled latents (the mean when key is None)."""
    return vae_lib.encode_to_latents(nnx.merge(graphdef, state), images * 2 - 1, key)


@dataclasses.dataclass(frozen=True)
class _Encoder:
    """The VAE replicated over the local devices; batches are split over them."""

    graphdef: nnx.GraphDef
    state: nnx.State
    mesh: jax.sharding.Mesh
    key: jax.Array | None  # base key when sampling the posterior

    def __call__(self, images: np.ndarray, split: str, factor: str, start: int) -> np.ndarray:
        """images: [B, H, W, 3] -> [B, h, w, L]; a sample's key comes from (split, factor, start)."""
        key = None
        if self.key is not None:
            key = jax.random.fold_in(self.key, zlib.crc32(f"{split}/{factor}".encode()))
            key = jax.random.fold_in(key, start)
        batch = jax.device_put(images, sharding.batch_sharding(self.mesh))
        return np.asarray(_encode(self.graphdef, self.state, batch, key))


def _make_encoder(config: ml_collections.ConfigDict) -> tuple[_Encoder, int]:
    """The encoder of the VAE at config.vae.path, and its latent channels L."""
    vae = vae_lib.load_vae(config.vae.path)
    if vae.config.downsample_factor != config_utils.LATENT_FACTOR:
        raise ValueError(
            f"The VAE at {config.vae.path} downsamples by {vae.config.downsample_factor}; the project's "
            f"latent runs assume {config_utils.LATENT_FACTOR}."
        )
    mesh = sharding.make_mesh((-1, 1), jax.local_devices())
    graphdef, state = nnx.split(vae)
    state = jax.device_put(state, sharding.replicated(mesh))
    key = jax.random.key(config.data.seed) if config.data.latent_sample else None
    return _Encoder(graphdef, state, mesh, key), vae.config.latent_channels


@dataclasses.dataclass(frozen=True)
class _MultiResolutionSource:
    """Example i of one image source at every factor's resolution.

    Attributes:
      sources: {factor name: image source}, all of one length.
    """

    sources: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.sources[BASE_FACTOR])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"images": {factor: [r H, r W, 3] float32}, "label": int64, "index": int64}."""
        examples = {name: source[index] for name, source in self.sources.items()}
        labels = {name: int(example["label"]) for name, example in examples.items()}
        if len(set(labels.values())) != 1:
            raise ValueError(f"Example {index} has different labels at different factors: {labels}.")
        return {
            "images": {name: example["image"] for name, example in examples.items()},
            "label": np.int64(labels[BASE_FACTOR]),
            "index": np.int64(index),
        }


def _batches(source: _MultiResolutionSource, start: int, stop: int, batch_size: int) -> Iterator[dict]:
    """Batches of examples [start, stop) in order, read by a pool of threads; the last may be short."""
    options = grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1), prefetch_buffer_size=2 * batch_size)
    return iter(grain.MapDataset.source(source)[start:stop].to_iter_dataset(options).batch(batch_size))


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """[n, ...] -> [size, ...], zeros after the n rows."""
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if len(x) < size else x


class _Progress:
    """Logs examples done, examples/s and the time left, at most every LOG_EVERY_S seconds."""

    def __init__(self, split: str, todo: int):
        self.split, self.todo, self.done = split, todo, 0
        self.start = self.last = time.monotonic()

    def update(self, count: int, force: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not force and now - self.last < LOG_EVERY_S:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = datetime.timedelta(seconds=round((self.todo - self.done) / rate)) if rate else "unknown"
        logging.info(
            "Latents %s: %d/%d examples of this run, %.1f examples/s, %s left.",
            self.split,
            self.done,
            self.todo,
            rate,
            left,
        )


def _write_shard(
    path: epath.Path,
    batches: Iterator[dict],
    encoder: _Encoder,
    config: ml_collections.ConfigDict,
    split: str,
    progress: _Progress,
) -> None:
    """Encodes `batches` into a partial file (ArrayRecord writes local files only: `<path>.partial`,
    or a local temporary file for a gs:// `path`), moved to `path` once every record is written."""
    batch_size, dtype = config.data.latent_batch_size, LATENT_DTYPES[config.data.latent_dtype]
    with paths.local_staging(path) as partial:
        writer = array_record_module.ArrayRecordWriter(partial, _WRITER_OPTIONS)
        try:
            for batch in batches:
                count, start = len(batch["index"]), int(batch["index"][0])
                latents = {
                    name: encoder(_pad(images, batch_size), split, name, start)[:count].astype(dtype)
                    for name, images in batch["images"].items()
                }
                for i in range(count):
                    example = {name: value[i] for name, value in latents.items()}
                    writer.write(sources.encode_latent_record(example, batch["label"][i], batch["index"][i]))
                progress.update(count)
        finally:
            writer.close()


def _finished_shards(directory: epath.Path, split: str, info: dict[str, Any]) -> set[int]:
    """Shards whose final file exists; warns about listed ones that went missing."""
    done = set()
    for shard in range(info["num_shards"]):
        if (directory / sources.latent_shard_name(split, shard, info["num_shards"])).is_file():
            done.add(shard)
        elif shard in info["done"]:
            logging.warning("Latents %s: finished shard %d is missing; writing it again.", split, shard)
    return done


def _extract_split(
    config: ml_collections.ConfigDict,
    split: str,
    resolutions: Mapping[str, Resolution],
    encoder: _Encoder,
    directory: epath.Path,
    manifest: dict[str, Any],
) -> None:
    """Writes every unfinished shard of `split`, recording each in the manifest."""
    build = sources.SOURCES[config.data.latent_source]
    source = _MultiResolutionSource(
        {name: build(config.data, split, res) for name, res in resolutions.items()}
    )
    lengths = {name: len(s) for name, s in source.sources.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Source {config.data.latent_source!r} ({split}) has lengths {lengths} per factor.")
    size, shard_size = len(source), config.data.latent_shard_size
    expected = {"num_examples": size, "num_shards": math.ceil(size / shard_size), "done": []}
    info = manifest["splits"].setdefault(split, expected)
    if (info["num_examples"], info["num_shards"]) != (expected["num_examples"], expected["num_shards"]):
        raise ValueError(
            f"{directory} holds {info['num_examples']} {split!r} examples; the source now has {size}. Use "
            "another workdir, or delete the folder to start over."
        )
    done = _finished_shards(directory, split, info)
    info["done"] = sorted(done)
    _save_manifest(directory, manifest)
    todo = [shard for shard in range(info["num_shards"]) if shard not in done]
    bounds = {shard: (shard * shard_size, min(size, (shard + 1) * shard_size)) for shard in todo}
    logging.info(
        "Latents %s: %d examples in %d shards, %d done, %d to write.",
        split,
        size,
        info["num_shards"],
        len(done),
        len(todo),
    )
    progress = _Progress(split, sum(stop - start for start, stop in bounds.values()))
    for shard, (start, stop) in bounds.items():
        path = directory / sources.latent_shard_name(split, shard, info["num_shards"])
        batches = _batches(source, start, stop, config.data.latent_batch_size)
        _write_shard(path, batches, encoder, config, split, progress)
        done.add(shard)
        info["done"] = sorted(done)
        _save_manifest(directory, manifest)
        progress.update(0, force=True)


def extract_latents(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Encodes config.data.latent_source into resumable ArrayRecord shards in <workdir>/latents.

    Args:
      config: the experiment config; reads data.{resolution, latent_source, latent_splits,
        latent_factors, latent_shard_size, latent_batch_size, latent_sample, latent_dtype, seed,
        root} (plus the source's own fields), model.variant (for the patch) and vae.path.
      workdir: output folder (local or gs://); the latents go to its `latents/` sub-folder.

    Raises:
      ValueError: invalid factors or extraction settings, or a folder extracted with other
        settings (see `latent_resolutions`, the module docstring).
      FileNotFoundError: no VAE weights at config.vae.path, or missing source files.
    """
    resolutions = latent_resolutions(config)
    _check_config(config)
    directory = epath.Path(workdir) / "latents"
    directory.mkdir(parents=True, exist_ok=True)
    encoder, channels = _make_encoder(config)
    manifest = _open_manifest(directory, _settings(config, resolutions, channels))
    for split in config.data.latent_splits:
        _extract_split(config, split, resolutions, encoder, directory, manifest)
    logging.info("Latents complete in %s: splits %s.", directory, sorted(manifest["splits"]))


def _tokens(shape: tuple[int, ...], patch: int) -> Resolution:
    """Token grid of a [h, w, L] latent; raises ValueError unless the patch divides h and w."""
    if shape[0] % patch or shape[1] % patch:
        raise ValueError(f"A latent of shape {shape} is not a whole number of {patch}x{patch} tokens.")
    return shape[0] // patch, shape[1] // patch


@dataclasses.dataclass
class LatentFlip(grain.transforms.RandomMap):
    """Horizontal flip of every stored latent of an example, with probability `prob`.

    Flipping an SD-VAE latent approximates encoding the flipped image (the encoder is
    not exactly equivariant); it is applied before the crop so `micro` stays true.
    """

    prob: float = 0.5

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if rng.random() >= self.prob:
            return element
        return {**element, "latents": {k: v[:, ::-1] for k, v in element["latents"].items()}}


@dataclasses.dataclass
class LatentResizeAndCrop(grain.transforms.RandomMap):
    """Random resize-and-crop of stored latents, with the micro-condition of pipeline.RenderResizeAndCrop.

    With probability `prob`, picks a stored factor r > 1 uniformly and crops the factor-1 size
    from its latent at a uniformly random token-aligned offset; otherwise keeps the factor-1
    latent, uncropped. Output, as pipeline.RenderResizeAndCrop's:
      {"x": [h, w, L] float32, "label": int32,
       "micro": float32 [3] = (r, top / resized rows, left / resized cols) (uncropped (1, 0, 0)),
       "crop": int32 [4] = (resized rows, resized cols, top, left) in tokens}.

    Attributes:
      prob: probability of resizing and cropping an example.
      patch: latent cells per token side.
    """

    prob: float = 0.5
    patch: int = 2

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """element: {"latents": {factor name: [h_r, w_r, L]}, "label": int} (the `latents` source)."""
        latents = element["latents"]
        x = latents[BASE_FACTOR]
        h, w = _tokens(x.shape, self.patch)
        rows, cols, top, left = h, w, 0, 0
        if rng.random() < self.prob:
            larger = sorted((name for name in latents if float(name) > 1.0), key=float)
            if not larger:
                raise ValueError(
                    f"Resize-and-crop needs a stored factor > 1; the latents hold {sorted(latents)}."
                )
            resized = latents[larger[rng.integers(len(larger))]]
            rows, cols = _tokens(resized.shape, self.patch)
            top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
            p = self.patch
            x = resized[top * p : (top + h) * p, left * p : (left + w) * p]
        return {
            "x": np.asarray(x, np.float32),
            "label": np.int32(element["label"]),
            "micro": np.array([rows / h, top / rows, left / cols], np.float32),
            "crop": np.array([rows, cols, top, left], np.int32),
        }
