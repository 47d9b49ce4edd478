"""The FID InceptionV3 in Flax NNX, and a torch-free import of pytorch-fid's weights.

The network is pytorch-fid's port of TF's `inception-2015-12-05` graph (TTUR's FID, guided-diffusion's
evaluator, the Inception Score). Unlike torchvision's InceptionV3, the average pools of the A, C and
first E blocks leave the padding out of the mean, the last E block (`Mixed_7c`) max-pools, and there
are 1008 classes. One call gives (`InceptionFeatures`):
- `pool`: pool_3, the 2048 averaged `Mixed_7c` channels (FID, precision and recall).
- `logits`: pool_3 times the softmax weights WITHOUT the checkpoint's `fc.bias`, as the Inception Score
  reference computes them (guided-diffusion `evaluator.py` `_create_softmax_graph`, after improved-gan:
  pool_3 @ the weights of `softmax/logits/MatMul`); the IS takes a softmax over all 1008.
- `spatial`: sFID's `mixed_6/conv:0` (Nash et al. 2021; guided-diffusion), channels 0..6. TF's
  `mixed, mixed_1, ..., mixed_10` are torchvision's `Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c`,
  so `mixed_6` is `Mixed_6d` (`Mixed_6e` is `mixed_7`), and the FID weight conversion maps
  `mixed_6/conv/{conv2d_params,batchnorm}` to `Mixed_6d.branch1x1.{conv,bn}`. The graph's op named
  after a layer is its output (`mixed_6/conv/Conv2D` and `.../batchnorm` are inside it; `pool_3` is
  the pool's output), so `mixed_6/conv:0` is that 1x1 branch after batch-norm and ReLU, [B, 17, 17,
  192]: the first branch concatenated into `Mixed_6d`'s output. Its 7 channels are flattened in (row,
  col, channel) order, as guided-diffusion flattens its NHWC tensor: 17 * 17 * 7 = 2023.

Input as in pytorch-fid's `InceptionV3`: [0, 1] images resized to 299x299 as `F.interpolate(
mode="bilinear", align_corners=False)` (no antialiasing), mapped to [-1, 1]. guided-diffusion's TF
graph resizes [0, 255] pixels by TF1's `ResizeBilinear` (no half-pixel centres) and maps them by
(x - 128) / 128: its numbers and OpenAI's reference statistics are close to, not equal to, ours.

Shapes: B batch, H and W image height and width, C channels.
"""

import collections
import dataclasses
import pathlib
import pickle
import zipfile
from typing import IO, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from flax.typing import PathParts

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
INPUT_SIZE = 299  # the network's input side; images of any size are resized to it
NUM_CLASSES = 1008  # classes of the TF 2015-12-05 softmax layer
POOL_FEATURES = 2048
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 channels of mixed_6/conv
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
BN_EPSILON = 1e-3  # the checkpoint's BasicConv2d batch-norm epsilon
# Evaluation numbers must not depend on TF32 or bf16 passes on accelerators.
_PRECISION = jax.lax.Precision.HIGHEST


class InceptionFeatures(NamedTuple):
    """The features of one batch (see the module docstring): JAX arrays from the networks,
    NumPy arrays from `feature_extractor`'s batched functions."""

    pool: jax.Array | np.ndarray  # [B, 2048] pool_3: FID, precision and recall
    logits: jax.Array | np.ndarray  # [B, 1008] logits without bias: Inception Score
    spatial: jax.Array | np.ndarray  # [B, 2023] mixed_6/conv channels 0..6, (row, col, channel): sFID


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Returns the [out_size, in_size] weights of torch's bilinear, align_corners=False."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low)[:, None]
    eye = np.eye(in_size)
    return ((1.0 - frac) * eye[low] + frac * eye[high]).astype(np.float32)


def resize_separable(images: jax.Array, size: tuple[int, int], weights) -> jax.Array:
    """Resizes rows then columns with per-axis weight matrices `weights(in, out) -> [out, in]`.

    Args:
        images: [B, H, W, C] float.
        size: (height, width) of the output.

    Returns:
        [B, height, width, C] float32; an axis already at its size is left as is.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"resize size must be positive, got {size}.")
    x = images.astype(jnp.float32)
    if x.shape[1] != height:
        rows = jnp.asarray(weights(x.shape[1], height))
        x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=_PRECISION)  # [B, height, W, C]
    if x.shape[2] != width:
        cols = jnp.asarray(weights(x.shape[2], width))
        x = jnp.einsum("pw,bowc->bopc", cols, x, precision=_PRECISION)  # [B, height, width, C]
    return x


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes as torch's `F.interpolate(mode="bilinear", align_corners=False)`.

    Half-pixel centres, source coordinates clamped at the border, no antialiasing (unlike
    `jax.image.resize`, which antialiases when shrinking). images: [B, H, W, C] ->
    [B, height, width, C] float32.
    """
    return resize_separable(images, size, interpolation_matrix)


class BasicConv(nnx.Module):
    """Convolution without bias, inference batch-norm (running statistics), ReLU.

    The checkpoint's symmetric torch paddings are TF's "SAME" (stride 1, odd kernels) or
    "VALID" (no padding), as in the original graph.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int],
        *,
        strides: int = 1,
        padding: str = "SAME",
        rngs: nnx.Rngs,
    ):
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"BasicConv padding must be 'SAME' or 'VALID', got {padding!r}.")
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size,
            strides,
            padding=padding,
            use_bias=False,
            precision=_PRECISION,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_features, use_running_average=True, epsilon=BN_EPSILON, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H', W', C_out]."""
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """TF's 3x3 stride-1 SAME average pool: padding left out of the mean."""
    return nnx.avg_pool(x, (3, 3), (1, 1), "SAME", count_include_pad=False)


def _max_pool_3x3(x: jax.Array, strides: int, padding: str) -> jax.Array:
    return nnx.max_pool(x, (3, 3), (strides, strides), padding)


class InceptionA(nnx.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(in_features, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(in_features, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_features, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, rngs=rngs)
        self.branch_pool = BasicConv(in_features, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]."""
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], -1)


class InceptionB(nnx.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(in_features, 384, 3, strides=2, padding="VALID", rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_features, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, strides=2, padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, 35, 35, C] -> [B, 17, 17, 480 + C]."""
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), branch3x3dbl, _max_pool_3x3(x, 2, "VALID")], -1)


class InceptionC(nnx.Module):
    """17x17 block (Mixed_6b..6e) with factorised 7x7 branches."""

    def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv(in_features, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(in_features, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(in_features, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), rngs=rngs)
        self.branch_pool = BasicConv(in_features, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, 17, 17, C] -> [B, 17, 17, 768]; channels 0..191 are the 1x1 branch."""
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            branch7x7dbl = layer(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], -1)


class InceptionD(nnx.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(in_features, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, strides=2, padding="VALID", rngs=rngs)
        self.branch7x7x3_1 = BasicConv(in_features, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, strides=2, padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, 17, 17, C] -> [B, 8, 8, 512 + C]."""
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2, "VALID")], -1)


class InceptionE(nnx.Module):
    """8x8 block (Mixed_7b with an average pool, Mixed_7c with a max pool)."""

    def __init__(self, in_features: int, *, pool: str, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {pool!r}.")
        self.pool = pool
        self.branch1x1 = BasicConv(in_features, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(in_features, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(in_features, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), rngs=rngs)
        self.branch_pool = BasicConv(in_features, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, 8, 8, C] -> [B, 8, 8, 2048]."""
        stem3x3 = self.branch3x3_1(x)
        branch3x3 = [self.branch3x3_2a(stem3x3), self.branch3x3_2b(stem3x3)]
        stem3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = [self.branch3x3dbl_3a(stem3x3dbl), self.branch3x3dbl_3b(stem3x3dbl)]
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1, "SAME")
        branches = [self.branch1x1(x), *branch3x3, *branch3x3dbl, self.branch_pool(pooled)]
        return jnp.concatenate(branches, -1)


class FIDInceptionV3(nnx.Module):
    """The FID InceptionV3; attribute names follow the checkpoint's keys.

    Build it with random weights here, or with the FID weights by `load_fid_inception`.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, strides=2, padding="VALID", rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, padding="VALID", rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, padding="VALID", rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, pool="avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, pool="max", rngs=rngs)
        self.fc = nnx.Linear(POOL_FEATURES, NUM_CLASSES, use_bias=False, precision=_PRECISION, rngs=rngs)

    def __call__(self, images: jax.Array) -> InceptionFeatures:
        """Computes the evaluation features.

        Args:
            images: [B, H, W, 3] float RGB in [0, 1], any H and W.

        Returns:
            `InceptionFeatures`: pool [B, 2048], logits [B, 1008], spatial [B, 2023].
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {images.shape}.")
        x = resize_bilinear(images, (INPUT_SIZE, INPUT_SIZE))  # [B, 299, 299, 3]
        x = 2.0 * x - 1.0
        x = self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))  # [B, 147, 147, 32]
        x = _max_pool_3x3(self.Conv2d_2b_3x3(x), 2, "VALID")  # [B, 73, 73, 64]
        x = _max_pool_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2, "VALID")  # [B, 35, 35, 192]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 35, 35, 288]
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # [B, 17, 17, 768]
        x = self.Mixed_6d(x)  # [B, 17, 17, 768]; channels 0..191 are mixed_6/conv
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)  # [B, 2023]
        x = self.Mixed_7a(self.Mixed_6e(x))  # [B, 8, 8, 1280]
        x = self.Mixed_7c(self.Mixed_7b(x))  # [B, 8, 8, 2048]
        pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
        return InceptionFeatures(pool=pool, logits=self.fc(pool), spatial=spatial)


# ---- Reading torch checkpoints without torch -------------------------------------------------

# numpy dtype codes of the storage types a float model's state dict holds.
_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
# What garbage bytes can raise while being parsed as a checkpoint.
_PARSE_ERRORS = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    ArithmeticError,
)


@dataclasses.dataclass
class _Storage:
    """A flat typed buffer; `data` is filled once its bytes are read."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _TensorRef:
    """A strided view into a `_Storage`, as `torch._utils._rebuild_tensor_v2` describes it."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise ValueError("a tensor refers to a storage whose bytes are not in the file")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= flat.size:
            raise ValueError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"overruns its storage of {flat.size} elements"
            )
        strides = [s * flat.itemsize for s in self.stride]
        view = np.lib.stride_tricks.as_strided(flat[self.offset :], self.size, strides)
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensor state dicts only: no global but OrderedDict, storages, tensors, parameters."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):  # nn.Parameter: its tensor
            return lambda tensor, *_: tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a tensor state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', dtype, key, location, numel); legacy adds view metadata (None).
        typename, dtype, key, _, numel, *view = pid
        if typename != "storage" or not isinstance(dtype, np.dtype) or any(view):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        return self._storages.setdefault(str(key), _Storage(dtype, int(numel)))


def _unpickle(file: IO[bytes], storages: dict[str, _Storage]) -> Any:
    return _RestrictedUnpickler(file, storages).load()


_BYTE_ORDERS: dict[str, Literal["<", ">"]] = {"little": "<", "big": ">"}  # torch's byteorder entry


def _read_zip(path: pathlib.Path) -> Any:
    """Reads torch >= 1.6's format: `<name>/data.pkl` plus one `<name>/data/<key>` per storage."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"expected one */data.pkl entry, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with archive.open(pickles[0]) as file:
            obj = _unpickle(file, storages)
        order: Literal["<", ">"] = "<"
        if f"{prefix}byteorder" in archive.namelist():
            order = _BYTE_ORDERS[archive.read(f"{prefix}byteorder").decode()]
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            dtype = storage.dtype.newbyteorder(order)
            storage.data = np.frombuffer(raw, dtype, count=storage.numel)
    return obj


def _read_legacy(path: pathlib.Path) -> Any:
    """Reads torch < 1.6's format: magic, protocol, sys info, object, keys, raw storages."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as file:
        if _unpickle(file, storages) != _LEGACY_MAGIC:
            raise ValueError("neither a zip archive nor a legacy torch file (bad magic number)")
        protocol = _unpickle(file, storages)
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"legacy protocol {protocol}, expected {_LEGACY_PROTOCOL}")
        if not _unpickle(file, storages).get("little_endian", False):
            raise ValueError("big-endian legacy files are not supported")
        obj = _unpickle(file, storages)
        for key in _unpickle(file, storages):
            storage = storages[str(key)]
            numel = int(np.frombuffer(file.read(8), "<i8")[0])
            if numel != storage.numel:
                raise ValueError(f"storage {key}: {numel} elements stored, {storage.numel} used")
            raw = file.read(numel * storage.dtype.itemsize)
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"), count=numel)
    return obj


def read_torch_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict of tensors into numpy, without torch.

    Reads torch's zip format (>= 1.6) and its legacy stream. Unpickling admits only OrderedDict,
    storages, tensors and parameters (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`),
    so a file cannot run code; strided, offset and storage-sharing tensors come out contiguous.

    Args:
        path: the checkpoint file.

    Returns:
        {key: array} in the file's key order.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a readable state dict of tensors.
    """
    path = pathlib.Path(path)
    try:
        reader = _read_zip if zipfile.is_zipfile(path) else _read_legacy
        obj = reader(path)
        if not isinstance(obj, dict):
            raise ValueError(f"the file holds a {type(obj).__name__}, not a state dict")
        bad = [k for k, v in obj.items() if not isinstance(v, _TensorRef)]
        if bad:
            raise ValueError(f"entries that are not tensors: {bad}")
        return {str(k): v.to_numpy() for k, v in obj.items()}
    except _PARSE_ERRORS as err:
        raise ValueError(f"{path} is not a readable torch state dict: {err}") from err


# ---- Loading the FID weights -----------------------------------------------------------------

# Flax leaf names that differ from torch's. `num_batches_tracked` counters and `fc.bias` (not part
# of the unbiased IS logits, see the module docstring) are read and left unused.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_UNUSED_KEY = "fc.bias"
_UNUSED_SUFFIX = ".num_batches_tracked"


def _torch_key(path: PathParts) -> str:
    *modules, leaf = map(str, path)
    return ".".join([*modules, _LEAF_NAMES.get(leaf, leaf)])


def _match_weights(
    tensors: dict[str, np.ndarray], targets: dict[PathParts, jax.ShapeDtypeStruct]
) -> tuple[dict[PathParts, np.ndarray], list[str]]:
    """Returns the model's arrays by path, and the problems found (missing, shape, unexpected)."""
    values, problems, used = {}, [], set()
    for path, target in targets.items():
        key = _torch_key(path)
        if key not in tensors:
            problems.append(f"missing key {key}")
            continue
        used.add(key)
        array = tensors[key]  # conv [O, I, kh, kw] -> [kh, kw, I, O]; linear [O, I] -> [I, O]
        array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
        if array.shape != target.shape:
            problems.append(f"{key}: shape {array.shape} (Flax layout), expected {target.shape}")
            continue
        values[path] = array.astype(target.dtype)
    unused = {k for k in tensors if k == _UNUSED_KEY or k.endswith(_UNUSED_SUFFIX)}
    problems += [f"unexpected key {k}" for k in tensors if k not in used | unused]
    return values, problems


def load_fid_inception(path: str | pathlib.Path) -> FIDInceptionV3:
    """Builds `FIDInceptionV3` with pytorch-fid's FID weights; torch is not needed.

    Args:
        path: `pt_inception-2015-12-05-6726825d.pth`, downloaded from `FID_WEIGHTS_URL`.

    Returns:
        The network, every parameter and batch-norm statistic taken from the file.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is unreadable, lacks or adds keys, or has a wrong shape.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}. Download {FID_WEIGHTS_URL} on a "
            "machine with internet access (it is the file pytorch-fid uses) and copy it there."
        )
    tensors = read_torch_state_dict(path)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0))))
    targets = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(state)}
    values, problems = _match_weights(tensors, targets)
    if problems:
        raise ValueError(
            f"{path} does not match the FID Inception network ({len(problems)} problems): "
            + "; ".join(problems)
        )
    arrays = jax.device_put(traverse_util.unflatten_dict(values))
    nnx.replace_by_pure_dict(state, arrays)
    return nnx.merge(graphdef, state)
