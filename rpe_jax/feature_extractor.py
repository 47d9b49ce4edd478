"""Evaluation feature extractors, one registry: name -> loader(path) -> feature function.

A feature function maps images [N, H, W, 3] in [0, 1] (any N, H, W) to `InceptionFeatures` of NumPy
float32 arrays (pool [N, F], logits [N, K], spatial [N, F_s]), running the network jitted on
fixed-size batches (the last one padded), so each image size compiles once. Both networks resize
inside, real and generated images alike:
- "inception": the FID InceptionV3 (`models/inception.py`); path: pytorch-fid's weights file.
- "classifier": the procedural-scenes classifier (`models/classifier.py`); path: the directory
  `python -m rpe_jax.train_classifier --workdir=DIR` wrote. The embedded default uses it.
- "mobilenet_v2": the frozen, ImageNet-initialised blocks of nsfwjs's MobileNetV2 (`models/mobilenet_v2.py`),
  ImageNet features available offline; path: `nsfwjs-4.3.0.tgz` from `npm pack nsfwjs@4.3.0`, or the
  folder it unpacks to. No ImageNet head: its logits are [N, 0], so report a Frechet distance on these
  features (not "FID") and no Inception Score.

Shapes: N images, B batch, H and W image height and width.
"""

import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rpe_jax.models import classifier, inception, mobilenet_v2

DEFAULT_BATCH_SIZE = 128
FeatureFn = Callable[[np.ndarray], inception.InceptionFeatures]


def batched_features(model: nnx.Module, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureFn:
    """Wraps a network returning `InceptionFeatures` as a jitted, batched NumPy function.

    Args:
      model: maps [B, H, W, 3] in [0, 1] to `InceptionFeatures`.
      batch_size: B, images per jitted call, >= 1.

    Returns:
      features(images [N, H, W, 3]) -> `InceptionFeatures` of float32 NumPy arrays [N, ...].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))

    def features(images: np.ndarray) -> inception.InceptionFeatures:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
            raise ValueError(f"images must be [N, H, W, 3] RGB with N >= 1, got shape {images.shape}.")
        parts = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            padded = np.pad(batch, [(0, batch_size - len(batch)), (0, 0), (0, 0), (0, 0)])
            out = forward(state, jnp.asarray(padded))
            parts.append([np.asarray(field[: len(batch)], np.float32) for field in out])
        pool, logits, spatial = (np.concatenate(field) for field in zip(*parts, strict=True))
        return inception.InceptionFeatures(pool=pool, logits=logits, spatial=spatial)

    return features


def _checked_path(name: str, path: str | pathlib.Path | None, how: str) -> pathlib.Path:
    if not path:
        raise ValueError(f"The {name!r} feature extractor needs a weights path, got {path!r}; {how}.")
    return pathlib.Path(path)


def load_inception(path: str | pathlib.Path, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureFn:
    """FID InceptionV3 features from pytorch-fid's weights file at `path`.

    Raises:
      ValueError: `path` is empty.
      FileNotFoundError: no file at `path` (the message gives the download URL).
    """
    how = f"download {inception.FID_WEIGHTS_URL} and give its local path"
    model = inception.load_fid_inception(_checked_path("inception", path, how))
    return batched_features(model, batch_size)


def load_classifier(path: str | pathlib.Path, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureFn:
    """Procedural-scenes classifier features from the training directory at `path`.

    Raises:
      ValueError: `path` is empty.
      FileNotFoundError: the weights or config file is missing (the message gives the training command).
    """
    how = f"train one with `{classifier.TRAIN_COMMAND.format(workdir='DIR')}` and give DIR"
    model = classifier.load_classifier(_checked_path("classifier", path, how))
    return batched_features(model, batch_size)


def load_mobilenet_v2(path: str | pathlib.Path, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureFn:
    """ImageNet MobileNetV2 features (pool [N, 384], logits [N, 0], spatial [N, 1372]) from nsfwjs at `path`.

    Raises:
      ValueError: `path` is empty, or the package's model does not match the network.
      FileNotFoundError: no package at `path` (the message gives the `npm pack` command).
    """
    how = (
        f"run `{mobilenet_v2.NPM_COMMAND}` and give the path of the .tgz it writes or of its unpacked folder"
    )
    model = mobilenet_v2.load_mobilenet_v2(_checked_path("mobilenet_v2", path, how))
    return batched_features(model, batch_size)


EXTRACTORS: dict[str, Callable[..., FeatureFn]] = {
    "inception": load_inception,
    "classifier": load_classifier,
    "mobilenet_v2": load_mobilenet_v2,
}


def load(name: str, path: str | pathlib.Path, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureFn:
    """The feature function of extractor `name` (a key of `EXTRACTORS`) with weights at `path`.

    Raises:
      ValueError: unknown name (the message lists the choices) or empty path.
      FileNotFoundError: missing weights (the message says how to produce them).
    """
    if name not in EXTRACTORS:
        raise ValueError(f"Unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}.")
    return EXTRACTORS[name](path, batch_size)
