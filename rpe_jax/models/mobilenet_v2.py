"""The frozen, ImageNet-initialised blocks of nsfwjs's MobileNetV2 in Flax NNX; a reader of its package.

npm `nsfwjs@4.3.0` ships `dist/models/mobilenet_v2/`: a Keras 2.2.4 MobileNetV2 (width 1.0, 224 px)
converted to TF.js, fine-tuned to 5 NSFW classes. Its `model.json` marks every layer up to
`block_10_project_BN` `trainable: false` and every layer from `block_11_expand` on `trainable: true`
(the last fine-tuning stage's `training_config`: SGD at lr 9e-7). This module ports only the layers
marked frozen. Caveat, measured on the wallpaper photos: their batch-norm moving statistics fit
nsfwjs's [0, 1] inputs, not the [-1, 1] inputs Keras's ImageNet MobileNetV2 was trained on (at
`bn_Conv1` the batch variance is 0.8x the stored one with [0, 1] inputs, 3.2x with [-1, 1]), so
these layers were ImageNet-initialised but at least their statistics were re-estimated during the NSFW
training; the flags describe its last stage only. Call the features "ImageNet-pretrained MobileNetV2"
(`fd_mobilenet`), not FID. One call gives:
- `pool`: the channel means of `block_10_depthwise_relu`, [B, 384]. The last frozen layer is
  `block_10_project_BN` (96 channels), but its spatial mean is an affine map of this layer's spatial
  mean (a 1x1 convolution and batch-norm commute with averaging), so the 384 means carry everything
  the 96 do and more; they are the last non-linear features of the frozen part, as pool_3 is for FID.
- `logits`: [B, 0]. The network's own head is the fine-tuned NSFW classifier, not ImageNet's.
- `spatial`: sFID's analogue, channels 0..6 of the last frozen block's output `block_10_project_BN`
  ([B, 14, 14, 96] at 224 px: 1/16 of the input side, as `mixed_6/conv` is 17/299), flattened in
  (row, col, channel) order: [B, 14 * 14 * 7].

Input as nsfwjs's `NSFWJS.infer` (`dist/esm/core.js`) prepares it: pixels divided by 255, i.e. our
[0, 1] images as they are (no mapping to [-1, 1]), resized to 224x224 by `tf.image.resizeBilinear(...,
alignCorners=true)` unless already 224x224. Layers as Keras builds them (`model.json` topology): ReLU6,
batch-norm at inference with the stored moving statistics and the topology's epsilon (1e-3), stride-2
convolutions after an explicit (0, 1) zero padding of bottom and right (`correct_pad` at even sides),
stride-1 3x3 convolutions with "same" padding, residual adds when stride is 1 and widths agree.

Package files: `model.min.js` and `group1-shard*.min.js` are browserify wrappers around a JS object
literal (the model.json) and a base64 string (the weight bytes). `read_package` parses them without
a JS engine and dequantises the uint8 weights as TF.js does: `q * scale + min`.

Shapes: B batch, H and W image height and width, C channels.
"""

import base64
import io
import pathlib
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rpe_jax.models import inception
from rpe_jax.models.inception import InceptionFeatures

NPM_COMMAND = "npm pack nsfwjs@4.3.0"
MODEL_DIR = "package/dist/models/mobilenet_v2"  # inside the .tgz; the unpacked folder may drop "package/"
INPUT_SIZE = 224
POOL_LAYER = "block_10_depthwise_relu"
SPATIAL_LAYER = "block_10_project_BN"
SPATIAL_CHANNELS = 7  # as sFID keeps channels 0..6 of mixed_6/conv
SPATIAL_SIDE = INPUT_SIZE // 16
POOL_FEATURES = 384
SPATIAL_FEATURES = SPATIAL_SIDE * SPATIAL_SIDE * SPATIAL_CHANNELS
# (expansion, output channels, stride) of Keras's blocks "expanded_conv", "block_1", ..., "block_10".
BLOCKS = (
    (1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1), (6, 96, 1),
)  # fmt: skip
STEM_CHANNELS = 32
_PRECISION = jax.lax.Precision.HIGHEST
_BN_FIELDS = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean", "var": "moving_variance"}
_QUANTIZED = {"uint8": np.uint8, "uint16": np.uint16}


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, stride: int, pad: tuple[tuple[int, int], tuple[int, int]]
) -> jax.Array:
    """A depthwise convolution as a sum of k * k shifted, strided products (one filter per channel).

    On XLA:CPU this runs ~10x faster than `conv_general_dilated(feature_group_count=C)`.

    Args:
      x: [B, H, W, C].
      kernel: [k, k, C].
      stride: the step of both axes.
      pad: ((top, bottom), (left, right)) zeros added before the convolution.

    Returns:
      [B, H_out, W_out, C], H_out = (H + top + bottom - k) // stride + 1, likewise W_out.
    """
    x = jnp.pad(x, ((0, 0), *pad, (0, 0)))
    size = kernel.shape[0]
    rows = (x.shape[1] - size) // stride * stride + 1  # the span the output rows read per tap
    cols = (x.shape[2] - size) // stride * stride + 1
    out = jnp.zeros((), x.dtype)
    for i in range(size):
        for j in range(size):
            out = out + x[:, i : i + rows : stride, j : j + cols : stride, :] * kernel[i, j]
    return out


class ConvBN(nnx.Module):
    """A bias-free convolution (dense or depthwise), inference batch-norm and optional ReLU6."""

    def __init__(
        self,
        kernel_shape: tuple[int, int, int, int],
        name: str,
        bn_name: str,
        *,
        depthwise: bool = False,
        stride: int = 1,
        relu6: bool = True,
        epsilon: float = 1e-3,
    ):
        """Placeholder weights (zero kernel, identity batch-norm); `load_mobilenet_v2` fills them.

        Args:
          kernel_shape: Keras's kernel shape, [k, k, C_in, C_out], or [k, k, C, 1] when depthwise.
          name: the Keras convolution layer name (weights `{name}/kernel` or `/depthwise_kernel`).
          bn_name: the Keras batch-norm layer name (weights `{bn_name}/gamma`, ...).
          depthwise: one k x k filter per channel.
          stride: 1 ("same" padding) or 2 (zero padding of 0 before and 1 after, then "valid").
          relu6: apply min(max(x, 0), 6) after the batch-norm.
          epsilon: the batch-norm epsilon.
        """
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}.")
        if depthwise and kernel_shape[3] != 1:
            raise ValueError(f"A depthwise kernel must be [k, k, C, 1], got {kernel_shape}.")
        self.name, self.bn_name = name, bn_name
        self.depthwise, self.stride, self.relu6, self.epsilon = depthwise, stride, relu6, epsilon
        self.kernel = nnx.Param(jnp.zeros(kernel_shape))
        channels = kernel_shape[2] if depthwise else kernel_shape[3]
        self.gamma = nnx.Param(jnp.ones(channels))
        self.beta = nnx.Param(jnp.zeros(channels))
        self.mean = nnx.Param(jnp.zeros(channels))
        self.var = nnx.Param(jnp.ones(channels))

    @property
    def kernel_key(self) -> str:
        return f"{self.name}/{'depthwise_kernel' if self.depthwise else 'kernel'}"

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C_in] -> [B, H / stride, W / stride, C_out]."""
        kernel = self.kernel[...]
        size = kernel.shape[0]
        pad = ((0, 1), (0, 1)) if self.stride == 2 else ((size // 2, size // 2),) * 2
        if self.depthwise:
            x = depthwise_conv(x, kernel[..., 0], self.stride, pad)
        else:
            x = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=_PRECISION,
            )
        x = (x - self.mean[...]) * (self.gamma[...] / jnp.sqrt(self.var[...] + self.epsilon)) + self.beta[...]
        return jnp.clip(x, 0.0, 6.0) if self.relu6 else x


class InvertedResidual(nnx.Module):
    """Keras's `_inverted_res_block`: 1x1 expand (not in block 0), 3x3 depthwise, 1x1 linear project."""

    def __init__(self, index: int, in_channels: int, expansion: int, out_channels: int, stride: int):
        """Args: Keras block `index` (0: "expanded_conv"), C_in, expansion t, C_out, stride (1 or 2)."""
        prefix = f"block_{index}_" if index else "expanded_conv_"
        width = in_channels * expansion
        self.expand = (
            ConvBN((1, 1, in_channels, width), prefix + "expand", prefix + "expand_BN") if index else None
        )
        self.depthwise = ConvBN(
            (3, 3, width, 1), prefix + "depthwise", prefix + "depthwise_BN", depthwise=True, stride=stride
        )
        self.project = ConvBN(
            (1, 1, width, out_channels), prefix + "project", prefix + "project_BN", relu6=False
        )
        self.residual = stride == 1 and in_channels == out_channels

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, H, W, C_in] -> (depthwise_relu [B, H', W', C_in * t], output [B, H', W', C_out])."""
        hidden = self.depthwise(self.expand(x) if self.expand is not None else x)
        out = self.project(hidden)
        return hidden, (x + out if self.residual else out)


def resize_align_corners(images: jax.Array, size: int) -> jax.Array:
    """TF's `resizeBilinear(alignCorners=true)`: corners map to corners. [B, H, W, C] -> [B, S, S, C]."""

    def weights(in_size: int, out_size: int) -> np.ndarray:
        src = np.arange(out_size) * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
        low = np.floor(src).astype(np.int64)
        high = np.minimum(low + 1, in_size - 1)
        frac = (src - low)[:, None]
        eye = np.eye(in_size)
        return ((1.0 - frac) * eye[low] + frac * eye[high]).astype(np.float32)

    return inception.resize_separable(images, (size, size), weights)


class MobileNetV2Features(nnx.Module):
    """Keras MobileNetV2 (width 1.0) from the input to block 10, the layers nsfwjs marks frozen."""

    def __init__(self):
        self.stem = ConvBN((3, 3, 3, STEM_CHANNELS), "Conv1", "bn_Conv1", stride=2)
        blocks, channels = [], STEM_CHANNELS
        for index, (expansion, out_channels, stride) in enumerate(BLOCKS):
            blocks.append(InvertedResidual(index, channels, expansion, out_channels, stride))
            channels = out_channels
        self.blocks = nnx.List(blocks)

    def conv_bns(self) -> Iterator[ConvBN]:
        """Every `ConvBN` in network order."""
        yield self.stem
        for block in self.blocks:
            yield from (
                layer for layer in (block.expand, block.depthwise, block.project) if layer is not None
            )

    def endpoints(self, images: jax.Array) -> dict[str, jax.Array]:
        """The two feature maps, named as the Keras layers that output them.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1], any H and W.

        Returns:
          {POOL_LAYER: [B, 14, 14, 384], SPATIAL_LAYER: [B, 14, 14, 96]}.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}.")
        x = images.astype(jnp.float32)
        if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_align_corners(x, INPUT_SIZE)
        x = self.stem(x)
        hidden = x
        for block in self.blocks:
            hidden, x = block(x)
        return {POOL_LAYER: hidden, SPATIAL_LAYER: x}

    def __call__(self, images: jax.Array) -> InceptionFeatures:
        """Computes the evaluation features (see the module docstring).

        Args:
          images: [B, H, W, 3] float RGB in [0, 1], any H and W.

        Returns:
          `InceptionFeatures`: pool [B, 384], logits [B, 0], spatial [B, 1372].
        """
        maps = self.endpoints(images)
        batch = images.shape[0]
        pool = maps[POOL_LAYER].mean(axis=(1, 2))
        spatial = maps[SPATIAL_LAYER][..., :SPATIAL_CHANNELS].reshape(batch, -1)
        return InceptionFeatures(pool=pool, logits=jnp.zeros((batch, 0), jnp.float32), spatial=spatial)


_TOKEN = re.compile(
    r'\s*(?:(?P<punct>[{}\[\]:,])|(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<bool>![01])|(?P<name>[A-Za-z_$][\w$]*))"
)
_NAMES = {"null": None, "true": True, "false": False}


def parse_js_literal(text: str, start: int = 0) -> tuple[Any, int]:
    """Parses the minified JS literal (JSON plus bare keys, `!0`/`!1`, `.5`) that begins at `start`.

    Returns:
      (value, index just past it).

    Raises:
      ValueError: text that is not such a literal (the message gives the offset).
    """
    tokens: list[tuple[str, str]] = []
    stack = 0
    pos = start
    while True:  # tokenise just the one value: until its brackets balance
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"Unexpected JS text at offset {pos}: {text[pos : pos + 40]!r}.")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
        stack += {"{": 1, "[": 1, "}": -1, "]": -1}.get(match.group(kind), 0) if kind == "punct" else 0
        if stack == 0:
            break
    value, used = _parse_tokens(tokens, 0)
    if used != len(tokens):
        raise ValueError(f"Malformed JS literal at offset {start}.")
    return value, pos


def _parse_tokens(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    kind, text = tokens[i]
    if kind == "string":
        return text[1:-1].encode().decode("unicode_escape"), i + 1
    if kind == "number":
        number = float(text)
        return (int(number) if re.fullmatch(r"-?\d+", text) else number), i + 1
    if kind == "bool":
        return text == "!0", i + 1
    if kind == "name":
        if text not in _NAMES:
            raise ValueError(f"Unexpected JS name {text!r} in a literal.")
        return _NAMES[text], i + 1
    close = {"{": "}", "[": "]"}.get(text)
    if close is None:
        raise ValueError(f"Unexpected {text!r} in a JS literal.")
    items: list[Any] = []
    i += 1
    while tokens[i][1] != close:
        if text == "{":
            key = tokens[i][1].strip('"')
            if tokens[i + 1][1] != ":":
                raise ValueError(f"Expected ':' after key {key!r} in a JS literal.")
            value, i = _parse_tokens(tokens, i + 2)
            items.append((key, value))
        else:
            value, i = _parse_tokens(tokens, i)
            items.append(value)
        if tokens[i][1] == ",":
            i += 1
    return (dict(items) if text == "{" else items), i + 1


_EXPORTS = re.compile(r"\{1:\[function\([\w$,]*\)\{[\w$]+\.exports=")


def unwrap_bundle(text: str, name: str) -> Any:
    """The value a browserify `.min.js` wrapper exports (nsfwjs's `scripts/bundle-model.mjs` output).

    Raises:
      ValueError: `name` does not hold such a wrapper.
    """
    match = _EXPORTS.search(text)
    if match is None:
        raise ValueError(f"{name} is not an nsfwjs model bundle (no 'module.exports=' wrapper found).")
    return parse_js_literal(text, match.end())[0]


def _package_reader(path: pathlib.Path) -> Callable[[str], str | None]:
    """A function relative file name -> text, over the .tgz or the unpacked folder at `path`."""
    if not path.exists():
        raise FileNotFoundError(
            f"No nsfwjs package at {str(path)!r}: run `{NPM_COMMAND}` (it writes nsfwjs-4.3.0.tgz) and give "
            "the path of that .tgz, or of the folder it unpacks to."
        )
    if path.is_file():
        with tarfile.open(path) as archive:
            members = {m.name: m for m in archive.getmembers() if m.name.startswith(MODEL_DIR + "/")}
            files = {name[len(MODEL_DIR) + 1 :]: archive.extractfile(m) for name, m in members.items()}
            texts = {name: f.read().decode() for name, f in files.items() if f is not None}
        return lambda name: texts.get(name)
    roots = [path / MODEL_DIR, path / MODEL_DIR.removeprefix("package/"), path]
    root = next((r for r in roots if (r / "model.min.js").is_file()), roots[0])
    return lambda name: (root / name).read_text() if (root / name).is_file() else None


def _stored_dtype(spec: dict[str, Any]) -> np.dtype:
    """The dtype a `weightsManifest` entry's bytes are stored in."""
    quant = spec.get("quantization")
    if quant is None:
        return np.dtype("<f4")
    if quant["dtype"] not in _QUANTIZED:
        raise ValueError(
            f"Weight {spec['name']!r}: quantization {quant['dtype']!r} is not one of {list(_QUANTIZED)}."
        )
    return np.dtype(_QUANTIZED[quant["dtype"]])


def dequantize(data: bytes, spec: dict[str, Any]) -> np.ndarray:
    """One weight from its bytes and its `weightsManifest` entry, as TF.js decodes it.

    Args:
      data: the weight's bytes.
      spec: {"name", "shape", "dtype": "float32", optional "quantization": {"dtype", "min", "scale"}}.

    Returns:
      float32 [*shape]: q * scale + min (computed in float64, as JS does) for uint8/uint16 weights.

    Raises:
      ValueError: another quantization dtype.
    """
    values = np.frombuffer(data, _stored_dtype(spec))
    quant = spec.get("quantization")
    if quant is not None:
        values = values.astype(np.float64) * quant["scale"] + quant["min"]
    return values.astype(np.float32).reshape(spec["shape"])


def read_package(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads nsfwjs's mobilenet_v2 model.json and all its weights from the package.

    Args:
      path: `nsfwjs-4.3.0.tgz` (from `npm pack nsfwjs@4.3.0`), or the folder it unpacks to
        (holding `package/dist/models/mobilenet_v2/` or `dist/models/mobilenet_v2/`), or that folder.

    Returns:
      (model.json as a dict, {weight name: float32 array}).

    Raises:
      FileNotFoundError: no package at `path`, or a file of it is missing.
      ValueError: a file is not an nsfwjs bundle, or the shards are shorter than the manifest says.
    """
    read = _package_reader(pathlib.Path(path))

    def bundle(name: str) -> Any:
        text = read(name)
        if text is None:
            raise FileNotFoundError(
                f"{MODEL_DIR}/{name} is missing from the nsfwjs package at {str(path)!r}."
            )
        return unwrap_bundle(text, name)

    model_json = bundle("model.min.js")
    weights = {}
    for group in model_json["weightsManifest"]:
        data = b"".join(base64.b64decode(bundle(f"{shard}.min.js")) for shard in group["paths"])
        stream = io.BytesIO(data)
        for spec in group["weights"]:
            size = int(np.prod(spec["shape"])) * _stored_dtype(spec).itemsize
            chunk = stream.read(size)
            if len(chunk) != size:
                raise ValueError(
                    f"Weight {spec['name']!r} needs {size} bytes; the shards {group['paths']} end early."
                )
            weights[spec["name"]] = dequantize(chunk, spec)
    return model_json, weights


def _check_layer(layers: dict[str, dict[str, Any]], name: str, class_name: str) -> dict[str, Any]:
    """The config of Keras layer `name`, checked to exist, be of `class_name` and be frozen."""
    if name not in layers:
        raise ValueError(f"Layer {name!r} is missing from the model.json topology.")
    layer = layers[name]
    if layer["class_name"] != class_name:
        raise ValueError(f"Layer {name!r} is a {layer['class_name']}, expected a {class_name}.")
    if layer["config"].get("trainable", True):
        raise ValueError(f"Layer {name!r} is trainable (fine-tuned), not one of the frozen layers.")
    return layer["config"]


def load_mobilenet_v2(path: str | pathlib.Path) -> MobileNetV2Features:
    """The frozen MobileNetV2 with nsfwjs's weights, checked against the package's topology.

    Args:
      path: see `read_package`.

    Returns:
      A `MobileNetV2Features` whose batch-norm epsilons come from the topology.

    Raises:
      FileNotFoundError: see `read_package`.
      ValueError: a layer is missing, of another kind or trainable in the topology; a weight is missing
        or has another shape (the message names it).
    """
    model_json, weights = read_package(path)
    layers = {
        layer["name"]: layer for layer in model_json["modelTopology"]["model_config"]["config"]["layers"]
    }
    model = MobileNetV2Features()
    for conv in model.conv_bns():
        config = _check_layer(layers, conv.name, "DepthwiseConv2D" if conv.depthwise else "Conv2D")
        if tuple(config["strides"]) != (conv.stride, conv.stride):
            raise ValueError(f"Layer {conv.name!r} has strides {config['strides']}, expected {conv.stride}.")
        conv.epsilon = float(_check_layer(layers, conv.bn_name, "BatchNormalization")["epsilon"])
        keys = {"kernel": conv.kernel_key} | {
            ours: f"{conv.bn_name}/{theirs}" for ours, theirs in _BN_FIELDS.items()
        }
        for attribute, key in keys.items():
            param = getattr(conv, attribute)
            if key not in weights:
                raise ValueError(f"Weight {key!r} is missing from the nsfwjs package at {str(path)!r}.")
            if weights[key].shape != param.shape:
                raise ValueError(f"Weight {key!r} has shape {weights[key].shape}, expected {param.shape}.")
            param[...] = jnp.asarray(weights[key])
    return model
