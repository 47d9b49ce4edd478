"""Grain input pipeline: source -> shuffle -> transforms -> batches -> this process's block.

Every example leaves the pipeline as
  {"x": [H, W, C] float32 in [-1, 1], "label": int32,
   "micro": float32 [3] = (r, top, left), "crop": int32 [4] = (rows, cols, top, left)}
where `micro` is the random resize-and-crop's micro-condition (uncropped: (1, 0, 0)),
normalised so top and left are fractions of the resized image, and `crop` gives the
same crop in tokens (resized token grid and offset) for crop-coupled RPE-2D positions.

Transforms are small picklable classes, so Grain worker processes can run them.
"""

import dataclasses

import grain
import ml_collections
import numpy as np
from PIL import Image

from rpe_jax.data import latents, sources


def make_source(config: ml_collections.ConfigDict, split: str, resolution: tuple[int, int]):
    """The random-access source named by `config.source` (see data/sources.py)."""
    if config.source not in sources.SOURCES:
        raise ValueError(f"Unknown data source {config.source!r}; choose one of {sorted(sources.SOURCES)}.")
    return sources.SOURCES[config.source](config, split, resolution)


class ToModelInput(grain.transforms.Map):
    """{"image" in [0, 1], "label"} -> {"x" in [-1, 1], "label" int32}."""

    def map(self, element):
        return {
            "x": element["image"].astype(np.float32) * 2 - 1,
            "label": np.int32(element["label"]),
        }


@dataclasses.dataclass
class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability `prob`."""

    prob: float = 0.5

    def random_map(self, element, rng: np.random.Generator):
        if rng.random() < self.prob:
            element = {**element, "x": element["x"][:, ::-1]}
        return element


def resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a float image [H, W, C] -> [height, width, C], per channel."""
    channels = [
        np.asarray(Image.fromarray(x[..., c]).resize((width, height), Image.Resampling.BICUBIC))
        for c in range(x.shape[-1])
    ]
    return np.stack(channels, axis=-1)


@dataclasses.dataclass
class ResizeAndCrop(grain.transforms.RandomMap):
    """Random resize-and-crop with its micro-condition (DESIGN.md 1.4).

    With probability `prob`, upscale by `r ~ U[1, max_factor]` rounded so the resized
    image is a whole number of tokens per side, then crop the original size at a
    uniformly random token-aligned offset. Otherwise the example is uncropped.

    Attributes:
      prob: probability of augmenting an example.
      max_factor: largest resize factor (at most L / n_train so positions stay in range).
      patch: pixels (or latent cells) per token side.
    """

    prob: float = 0.5
    max_factor: float = 2.0
    patch: int = 2

    def random_map(self, element, rng: np.random.Generator):
        x = element["x"]
        h, w = x.shape[0] // self.patch, x.shape[1] // self.patch  # token grid
        rh, rw, top, left = h, w, 0, 0
        if rng.random() < self.prob:
            r = rng.uniform(1.0, self.max_factor)
            rh, rw = max(h, round(r * h)), max(w, round(r * w))
            top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
            p = self.patch
            x = resize(x, rh * p, rw * p)[top * p : (top + h) * p, left * p : (left + w) * p]
            x = np.clip(x, -1.0, 1.0)  # bicubic overshoots at edges
        micro = np.array([rh / h, top / rh, left / rw], np.float32)
        return {**element, "x": x, "micro": micro, "crop": np.array([rh, rw, top, left], np.int32)}


def create_dataset(
    config: ml_collections.ConfigDict,
    *,
    split: str,
    resolution: tuple[int, int],
    patch: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    augment: bool = True,
) -> grain.IterDataset:
    """The batched, sharded dataset of one process.

    Args:
      config: the data config (source, seed, flip_prob, resize_crop_prob,
        max_resize_factor, workers, ...).
      split: "train" or "validation".
      resolution: (H, W) in input pixels (or latent cells).
      patch: model patch size, for token-aligned crops.
      batch_size: examples per batch on this process.
      process_index, process_count: this process's shard of the data.
      augment: apply flips and resize-and-crop.

    Returns:
      An infinite IterDataset of dict batches; its iterator's state is checkpointable.
    """
    source = make_source(config, split, resolution)
    # Transforms run on the global (shuffled, repeated) index, before the process split,
    # so every example gets the same augmentation whatever the process count.
    ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None)
    flip_prob = config.flip_prob if augment else 0.0
    crop_prob = config.resize_crop_prob if augment else 0.0
    if config.source == "latents":  # resize-and-crop picks one of the stored factors
        ds = ds.random_map(latents.LatentFlip(flip_prob))
        ds = ds.random_map(latents.LatentResizeAndCrop(crop_prob, patch))
    else:
        ds = ds.map(ToModelInput()).random_map(RandomFlip(flip_prob))
        ds = ds.random_map(ResizeAndCrop(crop_prob, config.max_resize_factor, patch))
    # Global batch g is blocks g * P ... g * P + P - 1 of `batch_size` consecutive
    # examples; process p takes block p. Concatenated in process order (as
    # jax.make_array_from_process_local_data does), the local batches are exactly the
    # batch a single process would read.
    ds = ds.batch(batch_size, drop_remainder=True)[process_index::process_count]
    # Read threads pay off for decoding files; for cheap in-memory sources polling their
    # futures costs more than the reads (threads 0: 712 -> 1140 procedural examples/s).
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=2 * config.read_threads)
    ds = ds.to_iter_dataset(read)
    if config.workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers))
    return ds
