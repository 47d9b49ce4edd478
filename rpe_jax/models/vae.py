"""The Stable Diffusion VAE (diffusers `AutoencoderKL`) in Flax NNX, NHWC, with weight import.

The network mirrors diffusers' module tree, so that every diffusers state-dict key names one
NNX parameter (see `diffusers_key`). Parameters are float32; `dtype` sets the compute dtype.

Shapes: B batch, H/W image height/width, C channels, N = H * W tokens, L latent channels,
h/w latent height/width (H / f, W / f with f = `VAEConfig.downsample_factor`).
"""

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
_EPS = 1e-6  # GroupNorm epsilon of every norm in the SD VAE.
_LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clamps the posterior log-variance to this range.


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of an `AutoencoderKL`; the defaults are the SD VAE (sd-vae-ft-mse/ema).

    Attributes:
        in_channels: image channels read by the encoder.
        out_channels: image channels written by the decoder.
        block_out_channels: width of each resolution level, highest resolution first; every
            level but the last halves the resolution.
        layers_per_block: ResNet blocks per encoder level (the decoder has one more).
        latent_channels: L, channels of the latent.
        norm_num_groups: GroupNorm groups; must divide every width.
        mid_block_add_attention: single-head self-attention in the mid blocks.
        use_quant_conv: 1x1 conv after the encoder.
        use_post_quant_conv: 1x1 conv before the decoder.
        scaling_factor: latents for the diffusion model are (z - shift_factor) * scaling_factor.
        shift_factor: see scaling_factor (0 for the SD VAE).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0

    def __post_init__(self):
        sizes = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
        }
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{name}={value!r}: must be a positive int.")
        widths = self.block_out_channels
        if not widths or any(not isinstance(c, int) or c % self.norm_num_groups for c in widths):
            raise ValueError(
                f"VAEConfig.block_out_channels={widths!r}: must be a non-empty tuple of ints, "
                f"each divisible by norm_num_groups={self.norm_num_groups}."
            )
        if not self.scaling_factor > 0:
            raise ValueError(f"VAEConfig.scaling_factor={self.scaling_factor!r}: must be > 0.")

    @property
    def downsample_factor(self) -> int:
        """f: image side / latent side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "VAEConfig":
        """Builds the config from a diffusers `AutoencoderKL` `config.json` dict.

        Args:
            config: the parsed `config.json`.

        Returns:
            The equivalent `VAEConfig`.

        Raises:
            ValueError: the dict describes a network this module does not implement, has
                unknown keys, or lacks a key whose diffusers default differs from ours.
        """
        class_name = config.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise ValueError(f"_class_name={class_name!r}: only 'AutoencoderKL' is supported.")
        fields = {f.name for f in dataclasses.fields(cls)}
        checked = {"down_block_types", "up_block_types", "act_fn", "latents_mean", "latents_std"}
        runtime_hints = {"sample_size", "force_upcast"}  # No effect on the network.
        unknown = sorted(
            k for k in config if not k.startswith("_") and k not in fields | checked | runtime_hints
        )
        if unknown:
            raise ValueError(f"Unknown AutoencoderKL config keys {unknown}; known: {sorted(fields)}.")
        # diffusers' own defaults for these two are (64,) and 1, not the SD VAE's.
        lacking = [k for k in ("block_out_channels", "layers_per_block") if k not in config]
        if lacking:
            raise ValueError(f"AutoencoderKL config lacks {lacking}: add them to config.json.")
        num_levels = len(config["block_out_channels"])
        expected = {
            "down_block_types": ["DownEncoderBlock2D"] * num_levels,
            "up_block_types": ["UpDecoderBlock2D"] * num_levels,
            "act_fn": "silu",
            "latents_mean": None,
            "latents_std": None,
        }
        for key, want in expected.items():
            got = config.get(key, want)
            if (list(got) if isinstance(got, list | tuple) else got) != want:
                raise ValueError(f"AutoencoderKL config {key}={got!r}: only {want!r} is supported.")
        kwargs = {k: v for k, v in config.items() if k in fields}
        kwargs["block_out_channels"] = tuple(config["block_out_channels"])
        if kwargs.get("shift_factor") is None:
            kwargs["shift_factor"] = 0.0
        return cls(**kwargs)


def _conv(cin: int, cout: int, size: int, *, dtype: Any, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
    """A `size` x `size` conv, 'same' padded unless `padding` is given."""
    pad = size // 2
    kwargs.setdefault("padding", ((pad, pad), (pad, pad)))
    return nnx.Conv(cin, cout, (size, size), dtype=dtype, rngs=rngs, **kwargs)


def _group_norm(channels: int, groups: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm as in diffusers (eps 1e-6, two-pass variance: statistics in float32)."""
    return nnx.GroupNorm(
        channels, num_groups=groups, epsilon=_EPS, use_fast_variance=False, dtype=dtype, rngs=rngs
    )


class ResnetBlock(nnx.Module):
    """Two norm-SiLU-conv steps plus a skip, 1x1-projected when the widths differ."""

    def __init__(self, cin: int, cout: int, groups: int, *, dtype: Any, rngs: nnx.Rngs):
        self.norm1 = _group_norm(cin, groups, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
        self.norm2 = _group_norm(cout, groups, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, cin] -> [B, H, W, cout]."""
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nnx.Module):
    """Single-head self-attention over the H * W positions with a residual; softmax in float32."""

    def __init__(self, channels: int, groups: int, *, dtype: Any, rngs: nnx.Rngs):
        self.group_norm = _group_norm(channels, groups, dtype=dtype, rngs=rngs)
        self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        b, height, width, c = x.shape
        h = self.group_norm(x).reshape(b, height * width, c)  # [B, N, C]
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        logits = jnp.einsum("bnc,bmc->bnm", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v.dtype)  # [B, N, N]
        out = self.to_out(jnp.einsum("bnm,bmc->bnc", weights, v))  # [B, N, C]
        return x + out.reshape(b, height, width, c)


class MidBlock(nnx.Module):
    """ResNet, optional attention, ResNet at the lowest resolution; diffusers UNetMidBlock2D."""

    def __init__(self, channels: int, groups: int, add_attention: bool, *, dtype: Any, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [ResnetBlock(channels, channels, groups, dtype=dtype, rngs=rngs) for _ in range(2)]
        )
        self.attention = Attention(channels, groups, dtype=dtype, rngs=rngs) if add_attention else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


def _resnets(cin: int, cout: int, depth: int, groups: int, *, dtype: Any, rngs: nnx.Rngs):
    """`depth` ResNet blocks, the first cin -> cout, the others cout -> cout."""
    return nnx.List(
        [ResnetBlock(cout if i else cin, cout, groups, dtype=dtype, rngs=rngs) for i in range(depth)]
    )


class DownBlock(nnx.Module):
    """Encoder level `level`: ResNets, then (but for the last level) a stride-2 conv."""

    def __init__(self, config: VAEConfig, level: int, *, dtype: Any, rngs: nnx.Rngs):
        widths, depth = config.block_out_channels, config.layers_per_block
        cin, cout = widths[max(level - 1, 0)], widths[level]
        self.resnets = _resnets(cin, cout, depth, config.norm_num_groups, dtype=dtype, rngs=rngs)
        # diffusers' Downsample2D(padding=0): zero-pad bottom/right by one, then no padding.
        pad = ((0, 1), (0, 1))
        self.downsample = (
            _conv(cout, cout, 3, strides=2, padding=pad, dtype=dtype, rngs=rngs)
            if level < len(widths) - 1
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, cin] -> [B, ceil(H / 2), ceil(W / 2), cout] (last level: H, W)."""
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsample is None else self.downsample(x)


class UpBlock(nnx.Module):
    """Decoder level `level`: ResNets, then (but for the last level) 2x nearest + 3x3 conv."""

    def __init__(self, config: VAEConfig, level: int, *, dtype: Any, rngs: nnx.Rngs):
        widths, depth = config.block_out_channels[::-1], config.layers_per_block + 1
        cin, cout = widths[max(level - 1, 0)], widths[level]
        self.resnets = _resnets(cin, cout, depth, config.norm_num_groups, dtype=dtype, rngs=rngs)
        self.upsample = _conv(cout, cout, 3, dtype=dtype, rngs=rngs) if level < len(widths) - 1 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, cin] -> [B, 2H, 2W, cout] (last level: H, W)."""
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsample is None:
            return x
        return self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Encoder(nnx.Module):
    """Image -> 2L moments (mean and log-variance), before quant_conv."""

    def __init__(self, config: VAEConfig, *, dtype: Any, rngs: nnx.Rngs):
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = _conv(config.in_channels, widths[0], 3, dtype=dtype, rngs=rngs)
        self.down_blocks = nnx.List(
            [DownBlock(config, i, dtype=dtype, rngs=rngs) for i in range(len(widths))]
        )
        self.mid_block = MidBlock(widths[-1], groups, config.mid_block_add_attention, dtype=dtype, rngs=rngs)
        self.conv_norm_out = _group_norm(widths[-1], groups, dtype=dtype, rngs=rngs)
        self.conv_out = _conv(widths[-1], 2 * config.latent_channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, in_channels] -> [B, h, w, 2L]."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latent (after post_quant_conv) -> image."""

    def __init__(self, config: VAEConfig, *, dtype: Any, rngs: nnx.Rngs):
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = _conv(config.latent_channels, widths[-1], 3, dtype=dtype, rngs=rngs)
        self.mid_block = MidBlock(widths[-1], groups, config.mid_block_add_attention, dtype=dtype, rngs=rngs)
        self.up_blocks = nnx.List([UpBlock(config, i, dtype=dtype, rngs=rngs) for i in range(len(widths))])
        self.conv_norm_out = _group_norm(widths[0], groups, dtype=dtype, rngs=rngs)
        self.conv_out = _conv(widths[0], config.out_channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """z: [B, h, w, L] -> [B, H, W, out_channels]."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """The KL autoencoder: `encode` images to a diagonal Gaussian, `decode` latents to images.

    Args:
        config: the architecture.
        dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
        rngs: initialisation keys (weights are usually replaced by `load_diffusers_weights`).
    """

    def __init__(self, config: VAEConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(config, dtype=dtype, rngs=rngs)
        moments, latent = 2 * config.latent_channels, config.latent_channels
        self.quant_conv = (
            _conv(moments, moments, 1, dtype=dtype, rngs=rngs) if config.use_quant_conv else None
        )
        self.post_quant_conv = (
            _conv(latent, latent, 1, dtype=dtype, rngs=rngs) if config.use_post_quant_conv else None
        )

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior of images.

        Args:
            x: [B, H, W, in_channels] images in [-1, 1] (NHWC).

        Returns:
            (mean, logvar): each [B, h, w, L] float32; logvar clamped to [-30, 20] as in diffusers.

        Raises:
            ValueError: x is not NHWC with in_channels channels.
        """
        _check_channels("x", x, self.config.in_channels)
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *_LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """Images of unscaled latents.

        Args:
            z: [B, h, w, L] latents (not multiplied by scaling_factor).

        Returns:
            [B, H, W, out_channels] float32 images, nominally in [-1, 1].

        Raises:
            ValueError: z is not NHWC with L channels.
        """
        _check_channels("z", z, self.config.latent_channels)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)


def _check_channels(name: str, x: jax.Array, channels: int):
    """Raises a ValueError unless x is [B, H, W, channels]."""
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(
            f"{name} has shape {x.shape}: expected NHWC [B, H, W, {channels}] "
            "(transpose NCHW arrays with x.transpose(0, 2, 3, 1))."
        )


def encode_to_latents(vae: AutoencoderKL, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Scaled latents of images, as the diffusion model sees them.

    Args:
        vae: the autoencoder.
        images: [B, H, W, in_channels] in [-1, 1].
        key: PRNG key to sample the posterior; None takes its mean.

    Returns:
        [B, h, w, L] float32: (z - shift_factor) * scaling_factor.
    """
    mean, logvar = vae.encode(images)
    z = mean
    if key is not None:
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: jax.Array) -> jax.Array:
    """Images of scaled latents (the inverse scaling of `encode_to_latents`).

    Args:
        vae: the autoencoder.
        latents: [B, h, w, L] scaled latents.

    Returns:
        [B, H, W, out_channels] float32 images, nominally in [-1, 1].
    """
    return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor)


_PATH_RENAMES = {
    "downsample": "downsamplers.0.conv",
    "upsample": "upsamplers.0.conv",
    "attention": "attentions.0",
    "to_out": "to_out.0",
    "kernel": "weight",
    "scale": "weight",
}
_LEGACY_ATTENTION = re.compile(r"(\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_key(path: tuple[str | int, ...]) -> str:
    """The diffusers state-dict key of an NNX parameter path.

    Args:
        path: e.g. ('encoder', 'down_blocks', 0, 'downsample', 'kernel').

    Returns:
        e.g. 'encoder.down_blocks.0.downsamplers.0.conv.weight'.
    """
    return ".".join(_PATH_RENAMES.get(str(part), str(part)) for part in path)


def _canonical_key(key: str) -> str:
    """Maps legacy attention names (query/key/value/proj_attn) to to_q/to_k/to_v/to_out.0."""
    match = _LEGACY_ATTENTION.search(key)
    if match is None:
        return key
    prefix, name, leaf = match.groups()
    return f"{key[: match.start()]}{prefix}.{_LEGACY_NAMES[name]}.{leaf}"


def _to_nnx_layout(array: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    """Torch layout -> NNX layout: conv OIHW -> HWIO, linear [out, in] -> [in, out]."""
    if len(target) == 4 and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if len(target) == 2 and array.ndim == 2:
        return array.T
    return array


def load_diffusers_weights(vae: AutoencoderKL, path: str | pathlib.Path) -> None:
    """Loads a diffusers `diffusion_pytorch_model.safetensors` into `vae`, in place.

    Every key of the file must map to one parameter and every parameter must be assigned.
    Values are cast to the parameter dtype (float32). `vae` may be abstract (`nnx.eval_shape`).

    Args:
        vae: the autoencoder, built with the file's config.
        path: the safetensors file.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: keys missing from or unexpected in the file, or shapes that do not match;
            the message names the file and the keys.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No VAE weights file at {path}.")
    tensors = load_file(path)
    params = nnx.state(vae, nnx.Param)
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))
    by_key = {diffusers_key(p): p for p in flat}
    assigned, unexpected, mismatched = {}, [], []
    for key in sorted(tensors, key=lambda k: _canonical_key(k) != k):  # Current names first.
        array, canonical = tensors[key], _canonical_key(key)
        if canonical not in by_key or canonical in assigned:
            unexpected.append(key)
            continue
        target = flat[by_key[canonical]]
        value = _to_nnx_layout(array, target.shape)
        if value.shape != target.shape:
            mismatched.append(f"{key} {array.shape} -> parameter {target.shape}")
        assigned[canonical] = value
    missing = sorted(set(by_key) - set(assigned))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not match the VAE: missing keys {_listing(missing)}, unexpected keys "
            f"{_listing(sorted(unexpected))}, shapes that do not convert (torch OIHW/[out, in] "
            f"-> NNX HWIO/[in, out]) {_listing(mismatched)}. Does the VAEConfig match the "
            "file's config.json?"
        )
    new = {by_key[k]: jnp.asarray(v, dtype=flat[by_key[k]].dtype) for k, v in assigned.items()}
    nnx.replace_by_pure_dict(params, nnx.traversals.unflatten_mapping(new))
    nnx.update(vae, params)


def _listing(keys: list[str], limit: int = 20) -> str:
    """Up to `limit` keys, then how many were left off."""
    shown = ", ".join(keys[:limit]) if keys else "none"
    return f"[{shown}]" + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_vae(directory_or_file: str | pathlib.Path, *, dtype: Any = jnp.float32) -> AutoencoderKL:
    """Builds an `AutoencoderKL` from diffusers files, without random initialisation.

    Args:
        directory_or_file: a diffusers VAE directory (holding `diffusion_pytorch_model.safetensors`
            and optionally `config.json`) or the safetensors file itself. The `config.json`
            beside the weights sets the architecture; without one, the SD VAE default is used.
        dtype: compute dtype; parameters are float32.

    Returns:
        The autoencoder with the file's weights.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: the config or the weights do not describe a supported VAE.
    """
    path = pathlib.Path(directory_or_file)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config_path = weights.parent / CONFIG_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"No VAE weights file at {weights}.")
    config = VAEConfig()
    if config_path.is_file():
        config = VAEConfig.from_diffusers(json.loads(config_path.read_text()))
    vae = nnx.eval_shape(lambda: AutoencoderKL(config, dtype=dtype, rngs=nnx.Rngs(0)))
    load_diffusers_weights(vae, weights)
    return vae
