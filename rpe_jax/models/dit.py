"""Class-conditional Diffusion Transformer (DiT) whose attention takes 2D positions.

The model never fixes a resolution: the token grid comes from the input's shape and the
(row, column) position of every token is an input, so one set of parameters runs on any
grid, square or not. Positions enter through 2D RoPE on queries and keys (default), DiT's
2D sin-cos absolute embedding, or not at all (`pos_encoding="none"`, for benchmarks).

Blocks follow DiT (Peebles & Xie 2023): adaLN-Zero modulation from the timestep + class
(+ optional crop micro-conditioning) embedding, zero-initialised final layer, a null
class for classifier-free guidance. QK-norm (FiTv2) is optional.

Weights carry logical axis names (`embed`, `mlp`, `heads`, `vocab`, `patch`, `freq`);
`rpe_jax.sharding` maps them onto mesh axes.

Legend: B batch, H x W image, C channels, P patch, N tokens, D width, K head dim.
"""

import dataclasses
import math
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from rpe_jax import positions as positions_lib
from rpe_jax import rope as rope_lib

# (depth, width, heads) of the DiT paper's sizes.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCH_SIZES = (1, 2, 4, 8)
POS_ENCODINGS = ("rope", "sincos", "none")
FREQUENCY_EMBED_DIM = 256  # sinusoid size of the timestep and micro-condition embedders


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Architecture of a DiT.

    Attributes:
      depth: number of transformer blocks.
      width: D, hidden size.
      heads: attention heads; D / heads must be divisible by 4 for 2D RoPE.
      patch: P, patch side in input pixels (or latent cells).
      in_channels: C of the input (4 for SD-VAE latents, 3 for pixels).
      out_channels: C of the velocity output; None means in_channels.
      num_classes: class labels; id `num_classes` is the null class for CFG.
      mlp_ratio: MLP hidden size / D.
      qk_norm: RMS-normalise queries and keys per head before RoPE (FiTv2).
      micro_conditioning: embed the crop `(r, top, left)` (DESIGN.md 1.4).
      pos_encoding: one of POS_ENCODINGS.
      time_scale: t in [0, 1] (and micro-condition values) are multiplied by this
        before the sinusoid, so the 256-d embedding resolves them finely.
      dtype: compute dtype (parameters stay float32).
      attention_impl: `jax.nn.dot_product_attention` implementation: None (XLA picks),
        "xla" or "cudnn".
    """

    depth: int
    width: int
    heads: int
    patch: int
    in_channels: int = 4
    out_channels: int | None = None
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    micro_conditioning: bool = False
    pos_encoding: str = "rope"
    time_scale: float = 1000.0
    dtype: Any = jnp.float32
    attention_impl: Literal["xla", "cudnn"] | None = None

    def __post_init__(self):
        for name in ("depth", "width", "heads", "patch", "in_channels", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}.")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"Unknown pos_encoding {self.pos_encoding!r}; choose one of {POS_ENCODINGS}.")
        if self.pos_encoding == "rope" and self.head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4; width/heads = {self.head_dim}.")
        if self.pos_encoding == "sincos" and self.width % 4:
            raise ValueError(f"The 2D sin-cos embedding needs a width divisible by 4, got {self.width}.")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


def decode_variant(name: str) -> dict[str, int]:
    """'DiT-XL/2' or 'XL/2' -> {'depth': 28, 'width': 1152, 'heads': 16, 'patch': 2}."""
    match = re.fullmatch(r"(?:DiT-)?(S|B|L|XL)/(\d+)", name)
    if not match or int(match.group(2)) not in PATCH_SIZES:
        raise ValueError(
            f"Unknown DiT variant {name!r}; expected 'DiT-<size>/<patch>' with size in "
            f"{sorted(SIZES)} and patch in {PATCH_SIZES}, e.g. 'DiT-XL/2'."
        )
    depth, width, heads = SIZES[match.group(1)]
    return {"depth": depth, "width": width, "heads": heads, "patch": int(match.group(2))}


def _dense(
    d_in: int, d_out: int, names: tuple[str, str], config: DiTConfig, rngs: nnx.Rngs, init=None
) -> nnx.Linear:
    """A Linear whose kernel carries logical axis names; xavier-uniform unless `init`."""
    init = init or nnx.initializers.xavier_uniform()
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=nnx.with_partitioning(init, names, eager_sharding=False),
        dtype=config.dtype,
        rngs=rngs,
    )


def _zero_dense(d_in: int, d_out: int, names, config: DiTConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return _dense(d_in, d_out, names, config, rngs, nnx.initializers.zeros_init())


def timestep_sinusoid(t: jax.Array, dim: int = FREQUENCY_EMBED_DIM, max_period: float = 10000.0) -> jax.Array:
    """DiT's sinusoidal embedding `[cos(t w), sin(t w)]`, `w_k = max_period^(-k/(dim/2))`.

    Args:
      t: [...] scalars (already multiplied by the time scale).

    Returns:
      [..., dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ScalarEmbedder(nnx.Module):
    """k scalars -> sinusoids (256-d each) -> MLP -> [B, D]. Used for t and for the crop."""

    def __init__(self, num_scalars: int, config: DiTConfig, *, zero_out: bool, rngs: nnx.Rngs):
        normal = nnx.initializers.normal(0.02)
        self.scale = config.time_scale
        self.fc1 = _dense(
            num_scalars * FREQUENCY_EMBED_DIM, config.width, ("freq", "embed"), config, rngs, normal
        )
        last_init = nnx.initializers.zeros_init() if zero_out else normal
        self.fc2 = _dense(config.width, config.width, ("embed", "embed"), config, rngs, last_init)

    def __call__(self, values: jax.Array) -> jax.Array:
        """values: [B, k] -> [B, D]."""
        emb = timestep_sinusoid(values * self.scale)  # [B, k, 256]
        return self.fc2(nnx.silu(self.fc1(emb.reshape(values.shape[0], -1))))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x: [B, N, D]; shift, scale: [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nnx.Module):
    """Multi-head self-attention with 2D RoPE on queries and keys."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.width
        self.qkv = _dense(d, 3 * d, ("embed", "heads"), config, rngs)
        self.proj = _dense(d, d, ("heads", "embed"), config, rngs)
        if config.qk_norm:
            self.q_norm = nnx.RMSNorm(config.head_dim, epsilon=1e-6, dtype=config.dtype, rngs=rngs)
            self.k_norm = nnx.RMSNorm(config.head_dim, epsilon=1e-6, dtype=config.dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array] | None, logit_scale) -> jax.Array:
        """x: [B, N, D]; rotary: (cos, sin) [B, N, 2, K/4] or None; logit_scale: [] -> [B, N, D]."""
        b, n, _ = x.shape
        cfg = self.config
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3 * cfg.heads, cfg.head_dim), 3, axis=2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = rope_lib.apply_rope(q, *rotary), rope_lib.apply_rope(k, *rotary)
        # The rules' factor on the logits, folded into q so every attention kernel takes it.
        q = (q * logit_scale).astype(q.dtype)
        out = jax.nn.dot_product_attention(q, k, v, implementation=cfg.attention_impl)
        return self.proj(out.reshape(b, n, cfg.width))


class Mlp(nnx.Module):
    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        hidden = int(config.width * config.mlp_ratio)
        self.fc1 = _dense(config.width, hidden, ("embed", "mlp"), config, rngs)
        self.fc2 = _dense(hidden, config.width, ("mlp", "embed"), config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.gelu(self.fc1(x), approximate=True))


def _layer_norm(config: DiTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.width, epsilon=1e-6, use_bias=False, use_scale=False, dtype=config.dtype, rngs=rngs
    )


class DiTBlock(nnx.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.norm2 = _layer_norm(config, rngs)
        self.mlp = Mlp(config, rngs=rngs)
        self.adaln = _zero_dense(config.width, 6 * config.width, ("embed", "mlp"), config, rngs)

    def __call__(self, x: jax.Array, c: jax.Array, rotary, logit_scale) -> jax.Array:
        """x: [B, N, D]; c: [B, D] conditioning -> [B, N, D]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.adaln(nnx.silu(c)), 6, axis=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), rotary, logit_scale)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nnx.Module):
    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        self.norm = _layer_norm(config, rngs)
        self.adaln = _zero_dense(config.width, 2 * config.width, ("embed", "mlp"), config, rngs)
        out = config.patch * config.patch * config.output_channels
        self.linear = _zero_dense(config.width, out, ("embed", "patch"), config, rngs)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        """x: [B, N, D]; c: [B, D] -> [B, N, P*P*C_out]."""
        shift, scale = jnp.split(self.adaln(nnx.silu(c)), 2, axis=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/P)*(W/P), P*P*C], tokens row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int], patch: int) -> jax.Array:
    """[B, n_h*n_w, P*P*C] -> [B, n_h*P, n_w*P, C]."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, grid[0], grid[1], patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, grid[0] * patch, grid[1] * patch, c)


UNCROPPED = (1.0, 0.0, 0.0)  # micro-condition (r, top, left) of an image that was not cropped


class DiT(nnx.Module):
    """Class-conditional DiT on any token grid."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.width
        patch_dim = config.patch * config.patch * config.in_channels
        self.patch_embed = _dense(patch_dim, d, ("patch", "embed"), config, rngs)
        self.t_embed = ScalarEmbedder(1, config, zero_out=False, rngs=rngs)
        self.y_embed = nnx.Embed(
            config.num_classes + 1,
            d,
            embedding_init=nnx.with_partitioning(
                nnx.initializers.normal(0.02), ("vocab", "embed"), eager_sharding=False
            ),
            dtype=config.dtype,
            rngs=rngs,
        )
        if config.micro_conditioning:
            self.micro_embed = ScalarEmbedder(3, config, zero_out=True, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(config.depth)])
        self.final = FinalLayer(config, rngs=rngs)

    def grid_of(self, x: jax.Array) -> tuple[int, int]:
        """Token grid (n_h, n_w) of an input x: [B, H, W, C]."""
        _, h, w, c = x.shape
        p = self.config.patch
        if h % p or w % p:
            raise ValueError(f"Input {h}x{w} is not divisible by the patch size {p}.")
        if c != self.config.in_channels:
            raise ValueError(f"Input has {c} channels; the model was built for {self.config.in_channels}.")
        return h // p, w // p

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        y: jax.Array,
        positions: jax.Array | None = None,
        micro: jax.Array | None = None,
        rope: rope_lib.Rope | None = None,
    ) -> jax.Array:
        """Predicts the velocity field.

        Args:
          x: [B, H, W, C] noisy latents or pixels; H, W multiples of P.
          t: [B] diffusion time in [0, 1] (0 noise, 1 data).
          y: [B] int class labels; `num_classes` is the null (unconditional) label.
          positions: [B or 1, N, 2] (row, column) of each token, row-major, N = H W / P^2;
            None means the plain grid `0..n-1`.
          micro: [B, 3] crop micro-condition (r, top, left); None means uncropped.
          rope: frequencies and logit factor (`rope.make_rope`); None means plain RoPE
            with the base frequencies.

        Returns:
          [B, H, W, C_out] float32.
        """
        cfg = self.config
        b = x.shape[0]
        grid = self.grid_of(x)
        n = grid[0] * grid[1]
        if positions is None:
            positions = positions_lib.grid_positions(grid)[None]
        if positions.ndim != 3 or positions.shape[1:] != (n, 2) or positions.shape[0] not in (1, b):
            raise ValueError(
                f"positions must be [B or 1, N, 2] with N = {n} tokens for the {grid} grid of "
                f"an input of shape {x.shape}; got {positions.shape}."
            )
        positions = jnp.broadcast_to(positions, (b, n, 2))
        logit_scale = jnp.float32(1.0) if rope is None else rope.logit_scale
        rotary = None
        if cfg.pos_encoding == "rope":
            plain = rope_lib.make_rope(cfg.head_dim, grid, grid)
            rotary = rope_lib.rotary_tables(positions, (rope or plain).freqs)  # [B, N, 2, K/4]

        tokens = self.patch_embed(patchify(x.astype(cfg.dtype), cfg.patch))  # [B, N, D]
        if cfg.pos_encoding == "sincos":
            tokens = tokens + rope_lib.sincos_embedding(positions, cfg.width).astype(tokens.dtype)

        c = self.t_embed(t.reshape(b, 1)) + self.y_embed(y)  # [B, D]
        if cfg.micro_conditioning:
            micro = jnp.broadcast_to(jnp.asarray(UNCROPPED), (b, 3)) if micro is None else micro
            c = c + self.micro_embed(micro)
        for block in self.blocks:
            tokens = block(tokens, c, rotary, logit_scale)
        out = self.final(tokens, c)  # [B, N, P*P*C_out]
        return unpatchify(out, grid, cfg.patch).astype(jnp.float32)


def create_model(name: str, *, rngs: nnx.Rngs, **overrides) -> DiT:
    """Builds a DiT by variant name ('DiT-S/2' ... 'DiT-XL/8'); overrides change any
    DiTConfig field (e.g. num_classes=10, in_channels=3, depth=2)."""
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"Unknown DiT options {sorted(unknown)}; valid: {sorted(fields)}.")
    return DiT(DiTConfig(**{**decode_variant(name), **overrides}), rngs=rngs)


def drop_labels(key: jax.Array, labels: jax.Array, prob: float, num_classes: int) -> jax.Array:
    """Label dropout for classifier-free guidance: with probability `prob` a label
    becomes the null class `num_classes`. labels: [B] -> [B]."""
    drop = jax.random.bernoulli(key, prob, labels.shape)
    return jnp.where(drop, num_classes, labels)
