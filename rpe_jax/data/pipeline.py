"""Grain input pipeline: source -> shuffle -> transforms -> batches -> this process's block.

Pixel sources enter as indices: `DrawFlip` draws the flip, then `RenderResizeAndCrop`
asks the source for each example at its resized size (the resize-and-crop of the source
image, never an upsample of the training-size one). Every example leaves the pipeline as
  {"x": [H, W, C] float32 in [-1, 1], "label": int32,
   "micro": float32 [3] = (r, top, left), "crop": int32 [4] = (rows, cols, top, left)}
where `micro` is the random resize-and-crop's micro-condition (uncropped: (1, 0, 0)),
normalised so top and left are fractions of the resized image, and `crop` gives the
same crop in tokens (resized token grid and offset) for crop-coupled RPE-2D positions.

Transforms are small picklable classes, so Grain worker processes can run them.
"""

import dataclasses
from typing import Any

import grain
import ml_collections
import numpy as np

from rpe_jax.data import latents, sources


def make_source(config: ml_collections.ConfigDict, split: str, resolution: tuple[int, int]):
    """The random-access source named by `config.source` (see data/sources.py)."""
    if config.source not in sources.SOURCES:
        raise ValueError(f"Unknown data source {config.source!r}; choose one of {sorted(sources.SOURCES)}.")
    return sources.SOURCES[config.source](config, split, resolution)


def draw_crop(
    rng: np.random.Generator, grid: tuple[int, int], prob: float, max_factor: float
) -> tuple[int, int, int, int]:
    """The random resize-and-crop of one example, in tokens (DESIGN.md 1.4).

    With probability `prob`, a factor `r ~ U[1, max_factor]` rounded so the resized grid is
    whole tokens, and a uniformly random token-aligned offset of the training grid inside it;
    otherwise the identity. Draw order: the coin, r, top, left.

    Args:
      rng: the example's generator.
      grid: (h, w) training token grid.
      prob: probability of resizing.
      max_factor: largest r (at most L / n_train so positions stay in range).

    Returns:
      (rows, cols, top, left): the resized token grid and the crop's offset in it.
    """
    h, w = grid
    if rng.random() >= prob:
        return h, w, 0, 0
    r = rng.uniform(1.0, max_factor)
    rh, rw = max(h, round(r * h)), max(w, round(r * w))
    return rh, rw, int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))


@dataclasses.dataclass
class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip of `element["x"]` with probability `prob`."""

    prob: float = 0.5

    def random_map(self, element, rng: np.random.Generator):
        if rng.random() < self.prob:
            element = {**element, "x": element["x"][:, ::-1]}
        return element


class ExampleIndex(grain.transforms.Map):
    """Source index -> {"index": int}, the element `DrawFlip` and `RenderResizeAndCrop` fill in."""

    def map(self, element):
        return {"index": int(element)}


@dataclasses.dataclass
class DrawFlip(grain.transforms.RandomMap):
    """Adds "flip": whether `RenderResizeAndCrop` mirrors the example (probability `prob`)."""

    prob: float = 0.5

    def random_map(self, element, rng: np.random.Generator):
        return {**element, "flip": bool(rng.random() < self.prob)}


@dataclasses.dataclass
class RenderResizeAndCrop(grain.transforms.RandomMap):
    """{"index", "flip"} -> model input: resize-and-crop from the source, micro-condition.

    The resized image is the source's own example at the resized size
    (`source.example(index, rows * patch, cols * patch)`: a procedural scene rendered there,
    a photo or file resized from its original), so a crop of a zoomed-in example carries the
    detail of the larger size instead of an upsampled blur. Each example is rendered once.
    A flip mirrors the whole resized image before the crop.

    Output: {"x": [H, W, C] float32 in [-1, 1], "label": int32, "micro": float32 [3]
    = (r, top / rows, left / cols), "crop": int32 [4] = (rows, cols, top, left)}.

    Attributes:
      source: a pixel source with `example(index, height, width)`.
      resolution: (H, W) training size in pixels, multiples of `patch`.
      patch: pixels per token side.
      prob: probability of resizing.
      max_factor: largest resize factor.
    """

    source: Any
    resolution: tuple[int, int]
    patch: int = 2
    prob: float = 0.5
    max_factor: float = 2.0

    def random_map(self, element, rng: np.random.Generator):
        p = self.patch
        h, w = self.resolution[0] // p, self.resolution[1] // p
        rows, cols, top, left = draw_crop(rng, (h, w), self.prob, self.max_factor)
        example = self.source.example(element["index"], rows * p, cols * p)
        x = example["image"][:, ::-1] if element["flip"] else example["image"]
        x = x[top * p : (top + h) * p, left * p : (left + w) * p]
        return {
            "x": np.asarray(x, np.float32) * 2 - 1,
            "label": np.int32(example["label"]),
            "micro": np.array([rows / h, top / rows, left / cols], np.float32),
            "crop": np.array([rows, cols, top, left], np.int32),
        }


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
    flip_prob = config.flip_prob if augment else 0.0
    crop_prob = config.resize_crop_prob if augment else 0.0
    # Transforms run on the global (shuffled, repeated) index, before the process split,
    # so every example gets the same augmentation whatever the process count.
    if config.source == "latents":  # resize-and-crop picks one of the stored factors
        ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None)
        ds = ds.random_map(latents.LatentFlip(flip_prob))
        ds = ds.random_map(latents.LatentResizeAndCrop(crop_prob, patch))
    else:  # pixel sources render each example once, at its resized size
        ds = grain.MapDataset.range(len(source)).seed(config.seed).shuffle().repeat(None)
        # Grain seeds each random_map from its depth below `.seed`: one map, then the flip,
        # then the crop keeps the flips and crops of the former upsampling pipeline
        # (map to [-1, 1], RandomFlip, ResizeAndCrop) for the same config.
        ds = ds.map(ExampleIndex()).random_map(DrawFlip(flip_prob))
        render = RenderResizeAndCrop(source, tuple(resolution), patch, crop_prob, config.max_resize_factor)
        ds = ds.random_map(render)
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
