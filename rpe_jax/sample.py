"""Sampling at every configured resolution and method, and image grids as PNG.

Legend: B batch, H x W image, C channels.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from rpe_jax import config_utils
from rpe_jax import methods as methods_lib
from rpe_jax.diffusion import sampling


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """[B, H, W, C] -> [rows * H, columns * W, C], row-major, blank cells at the end."""
    b, h, w, c = images.shape
    rows = -(-b // columns)
    padded = np.zeros((rows * columns, h, w, c), images.dtype)
    padded[:b] = images
    return padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)


def save_png(image: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image).save(path)


class GridSampler:
    """One jitted sampler per (resolution, method), compiled on first use.

    Args:
      config: the experiment config (model, positions, sample sections).
      graphdef: the DiT's graph definition.
    """

    def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef):
        self.config = config
        self.graphdef = graphdef
        self.train_grid = config_utils.train_grid(config)
        self.max_positions = config_utils.max_positions(config)
        self.sampler_config = config_utils.sampler_config(config)
        self._samplers = {}

    def images(self, params: nnx.State, resolution, method: str, labels: jax.Array, key: jax.Array):
        """Samples [B, H, W, C] model-space outputs (pixels in [-1, 1] or latents)."""
        cache_key = (tuple(resolution), method)
        if cache_key not in self._samplers:
            self._samplers[cache_key] = sampling.make_sampler(
                self.graphdef,
                config_utils.token_grid(self.config, resolution),
                self.train_grid,
                self.max_positions,
                methods_lib.get_method(method),
                self.sampler_config,
            )
        return self._samplers[cache_key](params, key, labels)


def write_sample_grids(sampler: GridSampler, params: nnx.State, step: int, workdir: str) -> list[str]:
    """Writes one PNG grid per configured resolution and method; returns the paths.

    The labels cycle through the classes and the noise key is fixed, so grids of
    different steps, resolutions and methods are comparable.
    """
    config = sampler.config
    if config.data.latent:
        logging.warning("Sample grids of latent runs need the VAE decoder; skipped at step %d.", step)
        return []
    n = config.sample.num_images
    labels = jnp.arange(n, dtype=jnp.int32) % config.data.num_classes
    key = jax.random.key(config.seed + 1)
    columns = min(n, config.data.num_classes)
    paths = []
    for resolution in config_utils.sample_resolutions(config):
        for method in config.sample.methods:
            images = to_uint8(sampler.images(params, resolution, method, labels, key))
            name = f"step_{step:07d}_{config_utils.resolution_name(resolution)}_{method}.png"
            path = os.path.join(workdir, "samples", name)
            save_png(image_grid(images, columns), path)
            paths.append(path)
    return paths
