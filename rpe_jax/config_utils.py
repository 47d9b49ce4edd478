"""Reading experiment configs: resolutions, token grids, the model, and validation.

`validate(config)` runs once at start-up, before any device work, and raises a
ValueError that names the field, its value and what would be valid.
"""

import math
import re

import jax.numpy as jnp
import ml_collections
from flax import nnx

from rpe_jax import methods as methods_lib
from rpe_jax import positions as positions_lib
from rpe_jax import sharding
from rpe_jax.data import procedural, sources
from rpe_jax.diffusion import flow, sampling
from rpe_jax.models import dit

Grid = tuple[int, int]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LATENT_FACTOR = 8  # SD-VAE downsampling


def parse_resolution(value) -> Grid:
    """256 -> (256, 256); "256x512" or (256, 512) -> (256, 512) as (H, W)."""
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, str) and (m := re.fullmatch(r"(\d+)x(\d+)", value)):
        return int(m.group(1)), int(m.group(2))
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"Bad resolution {value!r}: use a positive int, 'HxW' or (H, W).")


def as_pair(value) -> Grid:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def resolution_name(resolution: Grid) -> str:
    return f"{resolution[0]}x{resolution[1]}"


def input_size(config: ml_collections.ConfigDict, resolution: Grid) -> Grid:
    """Model input (H, W): pixels, or latent cells for latent runs."""
    factor = LATENT_FACTOR if config.data.latent else 1
    return resolution[0] // factor, resolution[1] // factor


def model_config(config: ml_collections.ConfigDict) -> dit.DiTConfig:
    sizes = dit.decode_variant(config.model.variant)
    for name in ("depth", "width", "heads"):
        if config.model[name] is not None:
            sizes[name] = config.model[name]
    if config.model.dtype not in DTYPES:
        raise ValueError(
            f"Unknown config.model.dtype {config.model.dtype!r}; choose one of {sorted(DTYPES)}."
        )
    return dit.DiTConfig(
        **sizes,
        in_channels=4 if config.data.latent else 3,
        num_classes=config.data.num_classes,
        qk_norm=config.model.qk_norm,
        micro_conditioning=config.model.micro_conditioning,
        pos_encoding=config.model.pos_encoding,
        dtype=DTYPES[config.model.dtype],
        attention_impl=config.model.attention_impl,
    )


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> dit.DiT:
    return dit.DiT(model_config(config), rngs=rngs)


def token_grid(config: ml_collections.ConfigDict, resolution: Grid) -> Grid:
    """Token grid of a resolution; raises if it does not split into whole patches."""
    patch = dit.decode_variant(config.model.variant)["patch"]
    factor = (LATENT_FACTOR if config.data.latent else 1) * patch
    if resolution[0] % factor or resolution[1] % factor:
        space = "latent (8 x patch)" if config.data.latent else "pixel (patch)"
        raise ValueError(
            f"Resolution {resolution_name(resolution)} is not divisible by {factor}, the {space} "
            f"token size of {config.model.variant}."
        )
    return resolution[0] // factor, resolution[1] // factor


def train_grid(config: ml_collections.ConfigDict) -> Grid:
    return token_grid(config, parse_resolution(config.data.resolution))


def max_positions(config: ml_collections.ConfigDict) -> Grid:
    """RPE-2D position range (L_h, L_w); the train grid itself for plain RoPE."""
    if config.positions.train_rule == "grid":
        return train_grid(config)
    return as_pair(config.positions.max_positions)


def sample_resolutions(config: ml_collections.ConfigDict) -> list[Grid]:
    return [parse_resolution(r) for r in config.sample.resolutions]


def sampler_config(config: ml_collections.ConfigDict) -> sampling.SamplerConfig:
    return sampling.SamplerConfig(
        steps=config.sample.steps,
        solver=config.sample.solver,
        cfg_scale=config.sample.cfg_scale,
        guidance_interval=tuple(config.sample.guidance_interval),
        time_shift=config.sample.time_shift,
        sde_scale=config.sample.sde_scale,
        rope_options=sampling.rope_lib.RopeOptions(watershed=config.sample.watershed),
    )


def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """Every leaf field by its dotted name, e.g. {"train.batch_size": 256, ...}."""
    leaves = {}
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            leaves.update(leaf_fields(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown config.{field} {value!r}; choose one of {sorted(choices)}.")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Checks a config before any device work.

    Args:
      config: the experiment config.
      device_count: global device count, to check the mesh and the batch split.

    Raises:
      ValueError: naming the offending field, its value, and what would be valid.
    """
    model_config(config)  # variant, sizes, dtype, pos_encoding
    _choice("positions.train_rule", config.positions.train_rule, positions_lib.TRAIN_RULES)
    _choice("data.source", config.data.source, sources.SOURCES)
    _choice("data.procedural_style", config.data.procedural_style, procedural.STYLES)
    for field in ("log_every", "checkpoint_every"):
        if config.train[field] < 1:
            raise ValueError(
                f"config.train.{field} must be a positive number of steps, got {config.train[field]}."
            )
    if config.train.num_steps < 0:
        raise ValueError(f"config.train.num_steps must be >= 0, got {config.train.num_steps}.")
    if config.train.sample_every < 0:
        raise ValueError(
            f"config.train.sample_every must be >= 0 (0: only at the end), got {config.train.sample_every}."
        )
    _choice("objective.time_sampler", config.objective.time_sampler, flow.TIME_SAMPLERS)
    _choice("sample.solver", config.sample.solver, sampling.SOLVERS)
    sampling.fixed_shift(config.sample.time_shift)
    for name in config.sample.methods:
        _choice("sample.methods entry", name, methods_lib.METHODS)
    grid = train_grid(config)
    limit = max_positions(config)
    if grid[0] > limit[0] or grid[1] > limit[1]:
        raise ValueError(
            f"config.positions.max_positions {limit} is smaller than the training grid {grid}; "
            f"RPE-2D needs L >= the grid side (2 x is the default)."
        )
    largest = min(limit[0] / grid[0], limit[1] / grid[1])
    field = "latent_factors" if config.data.source == "latents" else "max_resize_factor"
    factor = max(config.data[field]) if field == "latent_factors" else config.data[field]
    if config.data.resize_crop_prob > 0 and not 1.0 <= factor <= largest:
        raise ValueError(
            f"config.data.{field} {config.data[field]} must be within [1, {largest:g}] "
            f"so that resized grids stay within max_positions {limit}."
        )
    for resolution in sample_resolutions(config):
        test_grid = token_grid(config, resolution)
        for name in config.sample.methods:
            method = methods_lib.get_method(name)
            if method.positions == "grid":
                continue
            try:
                positions_lib.inference_positions(test_grid, limit, method.positions)
            except ValueError as err:
                raise ValueError(
                    f"config.sample.resolutions entry {resolution_name(resolution)} with method "
                    f"{name!r}: {err}"
                ) from err
    batch, accum = config.train.batch_size, config.train.grad_accum_steps
    if batch < 1 or accum < 1 or batch % accum:
        raise ValueError(
            f"config.train.batch_size {batch} must be a positive multiple of grad_accum_steps {accum}."
        )
    if device_count is not None:
        mesh_shape = tuple(config.mesh.shape)
        n = math.prod(s for s in mesh_shape if s != -1)
        if (-1 in mesh_shape and device_count % n) or (-1 not in mesh_shape and n != device_count):
            raise ValueError(f"config.mesh.shape {mesh_shape} does not fit {device_count} devices.")
        if (batch // accum) % device_count:
            raise ValueError(
                f"config.train.batch_size {batch} (/{accum} accumulation steps) does not split over "
                f"{device_count} devices (mesh axes {sharding.MESH_AXES}); use a multiple of "
                f"{device_count * accum}."
            )
