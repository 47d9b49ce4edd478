"""A small CNN classifier of the procedural scenes: the embedded dataset's FID network.

No Inception weights can be downloaded for the embedded default, so its generated images are scored in
the feature space of this network, trained by `rpe_jax.train_classifier` on `ProceduralSource` renders.
One call gives the same `InceptionFeatures` as the FID Inception, so evaluation treats both alike:
- `pool`: the last block's channels averaged over space, [B, F] with F = widths[-1] (FID, precision,
  recall).
- `logits`: a linear head on `pool`, [B, K] (Inception Score).
- `spatial`: sFID's analogue, the first `SPATIAL_CHANNELS` channels of the second block's output (at
  half the input side, as Inception's `mixed_6/conv` is a mid-level map), flattened in (row, col,
  channel) order: [B, (S/2) * (S/2) * SPATIAL_CHANNELS].

Input: [B, H, W, 3] RGB in [0, 1] at any size, resized inside to S x S (`resize_area`: exact area
averaging when shrinking, so a 64-px render of a scene becomes its 32-px render up to edge aliasing;
bilinear when growing),
then mapped to [-1, 1]. Real and generated images take the same path.

Network: a 3x3 stem, then one residual block per width (3x3 conv, GroupNorm, SiLU, twice; stride 2 in
every block but the first), global average pool, linear head. Matmuls and
convolutions run at HIGHEST precision so features do not depend on TF32 or bf16 passes.

Files: `save_classifier` writes `classifier.safetensors` (parameters by path) and `classifier.json`
(`ClassifierConfig` plus training notes) into a directory; `load_classifier` rebuilds the network from
them without the training code.

Shapes: B batch, H and W image height and width, S input side, C channels, F pool features, K classes.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

from rpe_jax.models import inception
from rpe_jax.models.inception import InceptionFeatures

WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = "classifier.json"
TRAIN_COMMAND = "python -m rpe_jax.train_classifier --workdir={workdir}"
# Variant name -> block widths; "Ti" is the tiny test network.
VARIANTS = {"S": (16, 32, 64, 128), "Ti": (8, 16, 32, 64)}
GROUPS = 8  # GroupNorm groups (fewer when a width is smaller)
SPATIAL_STAGE = 1  # spatial features come from this block's output, at side S / 2
SPATIAL_CHANNELS = 8  # channels kept for the spatial features, as sFID keeps 7
_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """What builds a `Classifier`; stored as `classifier.json`.

    Attributes:
      num_classes: K, >= 2.
      input_size: S, the side images are resized to; a multiple of 2 ** (len(widths) - 1).
      widths: channels of each residual block, >= 2 blocks; F = widths[-1].
    """

    num_classes: int = 10
    input_size: int = 32
    widths: tuple[int, ...] = VARIANTS["S"]

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        stride = 2 ** (len(self.widths) - 1)
        if self.num_classes < 2 or len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(
                f"ClassifierConfig needs num_classes >= 2 and >= 2 positive widths; got "
                f"num_classes={self.num_classes}, widths={self.widths}."
            )
        if self.input_size < stride or self.input_size % stride:
            raise ValueError(
                f"input_size must be a positive multiple of {stride} (2 ** (blocks - 1) for widths "
                f"{self.widths}), got {self.input_size}."
            )
        if self.widths[SPATIAL_STAGE] < SPATIAL_CHANNELS:
            raise ValueError(
                f"widths[{SPATIAL_STAGE}] must be >= {SPATIAL_CHANNELS} (the spatial feature channels), "
                f"got widths={self.widths}."
            )

    @property
    def pool_features(self) -> int:
        """F, the width of `pool`."""
        return self.widths[-1]

    @property
    def spatial_features(self) -> int:
        """Width of `spatial`: (S / 2) ** 2 * SPATIAL_CHANNELS."""
        return (self.input_size // 2**SPATIAL_STAGE) ** 2 * SPATIAL_CHANNELS


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights: area averaging when shrinking, bilinear when growing.

    Shrinking, output pixel i averages the input interval [i * s, (i + 1) * s), s = in / out,
    weighting each input pixel by its overlap. Growing, torch's bilinear with half-pixel
    centres and clamped borders. Rows sum to 1.
    """
    if out_size < in_size:
        scale = in_size / out_size
        starts = np.arange(out_size)[:, None] * scale  # [out, 1]
        pixels = np.arange(in_size)[None, :]  # [1, in]
        overlap = np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts)
        return (np.maximum(overlap, 0.0) / scale).astype(np.float32)
    return inception.interpolation_matrix(in_size, out_size)


def resize_area(images: jax.Array, size: int) -> jax.Array:
    """Resizes to size x size: area averaging per axis when shrinking, bilinear when growing.

    Args:
      images: [B, H, W, C] float.
      size: output side, >= 1.

    Returns:
      [B, size, size, C] float32; unchanged (as float32) when already that size.
    """
    return inception.resize_separable(images, (size, size), _resize_weights)


class ConvNorm(nnx.Module):
    """3x3 (or 1x1) convolution then GroupNorm; the activation is left to the caller."""

    def __init__(self, in_features: int, out_features: int, *, kernel: int = 3, strides: int = 1, rngs):
        conv_args = dict(padding="SAME", use_bias=False, precision=_PRECISION, rngs=rngs)
        self.conv = nnx.Conv(in_features, out_features, (kernel, kernel), strides, **conv_args)
        self.norm = nnx.GroupNorm(out_features, num_groups=min(GROUPS, out_features), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H / strides, W / strides, C_out]."""
        return self.norm(self.conv(x))


class ResBlock(nnx.Module):
    """Two ConvNorms with SiLU, plus a shortcut (1x1 ConvNorm when the shape changes)."""

    def __init__(self, in_features: int, out_features: int, *, strides: int = 1, rngs: nnx.Rngs):
        self.conv1 = ConvNorm(in_features, out_features, strides=strides, rngs=rngs)
        self.conv2 = ConvNorm(out_features, out_features, rngs=rngs)
        reshapes = strides != 1 or in_features != out_features
        shortcut = (
            ConvNorm(in_features, out_features, kernel=1, strides=strides, rngs=rngs) if reshapes else None
        )
        self.shortcut = nnx.data(shortcut)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H / strides, W / strides, C_out]."""
        residual = x if self.shortcut is None else self.shortcut(x)
        return jax.nn.silu(residual + self.conv2(jax.nn.silu(self.conv1(x))))


class Classifier(nnx.Module):
    """The procedural-scenes classifier (see the module docstring)."""

    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        widths = config.widths
        self.stem = ConvNorm(3, widths[0], rngs=rngs)
        self.blocks = nnx.List(
            ResBlock(widths[max(index - 1, 0)], width, strides=1 if index == 0 else 2, rngs=rngs)
            for index, width in enumerate(widths)
        )
        self.head = nnx.Linear(widths[-1], config.num_classes, precision=_PRECISION, rngs=rngs)

    def __call__(self, images: jax.Array) -> InceptionFeatures:
        """Computes the evaluation features.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1], any H and W.

        Returns:
          `InceptionFeatures`: pool [B, F], logits [B, K], spatial [B, (S/2)^2 * SPATIAL_CHANNELS].
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {images.shape}.")
        x = 2.0 * resize_area(images, self.config.input_size) - 1.0  # [B, S, S, 3]
        x = jax.nn.silu(self.stem(x))  # [B, S, S, C_0]
        spatial = None
        for index, block in enumerate(self.blocks):
            x = block(x)  # [B, S / 2^index, S / 2^index, C_index]
            if index == SPATIAL_STAGE:
                spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)  # [B, (S/2)^2 * 8]
        assert spatial is not None  # ClassifierConfig has >= 2 blocks, so block SPATIAL_STAGE ran
        pool = jnp.mean(x, axis=(1, 2))  # [B, F]
        return InceptionFeatures(pool=pool, logits=self.head(pool), spatial=spatial)


def _weight_key(path: tuple[Any, ...]) -> str:
    """A parameter's key in the weights file: its path joined by '/', e.g. 'blocks/1/conv1/conv/kernel'."""
    return "/".join(map(str, path))


def save_classifier(model: Classifier, directory: str | pathlib.Path, notes: dict[str, Any]) -> pathlib.Path:
    """Writes the parameters and the config (plus `notes`, e.g. accuracies) into `directory`.

    Args:
      model: the trained network.
      directory: created if missing; gets `WEIGHTS_NAME` and `CONFIG_NAME`.
      notes: JSON-serialisable extras stored beside the config under "notes".

    Returns:
      The path of the weights file.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    save_file(
        {_weight_key(path): np.asarray(var.get_value()) for path, var in flat}, directory / WEIGHTS_NAME
    )
    config = model.config
    record = {
        **dataclasses.asdict(config),
        "pool_features": config.pool_features,
        "spatial_features": config.spatial_features,
        "notes": notes,
    }
    (directory / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return directory / WEIGHTS_NAME


def load_classifier(directory: str | pathlib.Path) -> Classifier:
    """Builds a `Classifier` from a directory written by `save_classifier`.

    Args:
      directory: holds `WEIGHTS_NAME` and `CONFIG_NAME`.

    Returns:
      The network with every parameter taken from the file.

    Raises:
      FileNotFoundError: a file is missing (the message gives the training command).
      ValueError: the weights do not match the config (missing, unexpected or misshapen arrays).
    """
    directory = pathlib.Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"Classifier file {directory / name} not found. Train the FID classifier of the procedural "
                f"scenes with `{TRAIN_COMMAND.format(workdir=directory)}` (a few minutes on a CPU)."
            )
    record = json.loads((directory / CONFIG_NAME).read_text())
    fields = {field.name for field in dataclasses.fields(ClassifierConfig)}
    config = ClassifierConfig(**{key: value for key, value in record.items() if key in fields})
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Classifier(config, rngs=nnx.Rngs(0))))
    targets = {tuple(path): var.get_value() for path, var in nnx.to_flat_state(state)}
    keys = {path: _weight_key(path) for path in targets}
    arrays = load_file(directory / WEIGHTS_NAME)
    problems = [f"missing {key}" for key in keys.values() if key not in arrays]
    problems += [f"unexpected {key}" for key in arrays if key not in keys.values()]
    problems += [
        f"{keys[path]}: shape {arrays[keys[path]].shape}, expected {target.shape}"
        for path, target in targets.items()
        if keys[path] in arrays and arrays[keys[path]].shape != target.shape
    ]
    if problems:
        raise ValueError(
            f"{directory / WEIGHTS_NAME} does not match its config {config} ({len(problems)} problems): "
            + "; ".join(problems)
        )
    values = {path: jnp.asarray(arrays[keys[path]], target.dtype) for path, target in targets.items()}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, state)
