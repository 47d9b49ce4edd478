"""Sampling at every configured resolution and method, and image grids as PNG.

Legend: B batch, H x W image, C channels.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from rpe_jax import config_utils, train_state
from rpe_jax import methods as methods_lib
from rpe_jax.diffusion import sampling
from rpe_jax.models import vae as vae_lib
from rpe_jax.progress import Progress


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


def _decoder(config: ml_collections.ConfigDict):
    """Model outputs -> images in [-1, 1]: identity in pixel space, the VAE for latents."""
    if not config.data.latent:
        return lambda x: x
    if not config.vae.path:
        raise ValueError("Latent runs decode samples with the SD-VAE: set config.vae.path to its directory.")
    vae = vae_lib.load_vae(config.vae.path)
    decode = nnx.jit(lambda v, z: jnp.clip(vae_lib.decode_latents(v, z), -1, 1))
    return functools.partial(decode, vae)


def _batch_labels(config: ml_collections.ConfigDict, index: int) -> jax.Array:
    """Balanced labels for sample batch `index`: the class sequence 0, 1, ... C-1, ..."""
    b = config.sample.batch_size
    return (jnp.arange(index * b, (index + 1) * b) % config.data.num_classes).astype(jnp.int32)


def generate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`--mode=sample`: N samples per configured resolution and method, as .npz batches.

    Files: `<workdir>/generated/<method>/<HxW>/batch_%05d.npz` (uint8 `images`
    [B, H, W, 3], int32 `labels`) and a `grid.png` of the first batch. Batches already
    on disk are skipped, so an interrupted run resumes; each process takes every
    process_count-th batch.
    """
    graphdef, params, step = train_state.restore_ema_params(config, workdir, config.sample.checkpoint_step)
    sampler = GridSampler(config, graphdef)
    decode = _decoder(config)
    num_batches = -(-config.sample.num_samples // config.sample.batch_size)
    for method in config.sample.methods:
        for resolution in config_utils.sample_resolutions(config):
            out_dir = os.path.join(workdir, "generated", method, config_utils.resolution_name(resolution))
            os.makedirs(out_dir, exist_ok=True)
            todo = [
                i
                for i in range(jax.process_index(), num_batches, jax.process_count())
                if not os.path.exists(os.path.join(out_dir, f"batch_{i:05d}.npz"))
            ]
            logging.info(
                "%s at %s (step %d): %d of %d batches to do.",
                method,
                resolution,
                step,
                len(todo),
                num_batches,
            )
            _generate_batches(config, sampler, decode, params, resolution, method, todo, out_dir)


def _generate_batches(config, sampler, decode, params, resolution, method, todo, out_dir) -> None:
    progress = Progress(len(todo), f"{method} {config_utils.resolution_name(resolution)}")
    for index in todo:
        key = jax.random.fold_in(jax.random.key(config.seed), index)
        labels = _batch_labels(config, index)
        images = to_uint8(decode(sampler.images(params, resolution, method, labels, key)))
        path = os.path.join(out_dir, f"batch_{index:05d}.npz")
        np.savez(path + ".tmp.npz", images=images, labels=np.asarray(labels))
        os.replace(path + ".tmp.npz", path)  # a batch file exists only when complete
        if index == 0:
            save_png(image_grid(images[:64], 8), os.path.join(out_dir, "grid.png"))
        progress.update(images.shape[0])
