"""Sampling at every configured resolution and method, and image grids as PNG.

Legend: B batch, H x W image, C channels.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from PIL import Image, ImageDraw, ImageFont

from rpe_jax import config_utils, distributed, paths, sharding, train_state
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


def labelled_panels(panels: list[np.ndarray], titles: list[str], gap: int = 4) -> np.ndarray:
    """Image grids [H_i, W_i, 3] side by side, each under its title, on a white canvas."""
    title_height = 12
    height = max(p.shape[0] for p in panels) + title_height
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for panel, title in zip(panels, titles, strict=True):
        canvas.paste(Image.fromarray(panel), (left, title_height))
        draw.text((left + 1, 0), title, fill="black", font=ImageFont.load_default())
        left += panel.shape[1] + gap
    return np.asarray(canvas)


class GridSampler:
    """One jitted sampler per (resolution, method), compiled on first use, run over the
    whole mesh: every process calls `images` together and gets every image back.

    Args:
      config: the experiment config (model, positions, sample sections).
      graphdef: the DiT's graph definition.
      mesh: the mesh the parameters live on; sample batches are split over its devices.
    """

    def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh):
        self.config = config
        self.graphdef = graphdef
        self.mesh = mesh
        self.train_grid = config_utils.train_grid(config)
        self.max_positions = config_utils.max_positions(config)
        self.sampler_config = config_utils.sampler_config(config)
        self._samplers: dict[tuple[tuple[int, ...], str], Callable[..., jax.Array]] = {}

    def images(self, params: nnx.State, resolution, method: str, labels: np.ndarray, key: jax.Array):
        """Samples model-space outputs (pixels in [-1, 1] or latents).

        Args:
          labels: [B] class ids, the same on every process.

        Returns:
          [B, H, W, C] float32 NumPy array, on every process.
        """
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
        # Pad to a whole number of rows per device; sample i does not depend on the padding.
        b = len(labels)
        padded = np.zeros(-(-b // self.mesh.size) * self.mesh.size, np.int32)
        padded[:b] = labels
        batch = sharding.batch_sharding(self.mesh)
        global_labels = jax.make_array_from_callback(padded.shape, batch, lambda index: padded[index])
        out = self._samplers[cache_key](params, key, global_labels)
        return multihost_utils.process_allgather(out, tiled=True)[:b]


def shared_samples(config: ml_collections.ConfigDict, resolution) -> dict[str, str]:
    """{configured method: the first configured method that draws the same samples at
    `resolution`} (itself when none does), by `sampling.same_sampler`. `generate` copies the
    batches of such a method and `evaluate` copies its scores instead of recomputing them.
    """
    args = (
        config_utils.model_config(config).head_dim,
        config_utils.token_grid(config, resolution),
        config_utils.train_grid(config),
        config_utils.max_positions(config),
    )
    sampler_config = config_utils.sampler_config(config)
    inputs: dict[str, dict[str, np.ndarray]] = {}
    first: dict[str, str] = {}
    for method in config.sample.methods:
        mine = sampling.sampler_inputs(*args, methods_lib.get_method(method), sampler_config)
        same = (m for m, theirs in inputs.items() if sampling.same_sampler(mine, theirs))
        first[method] = next(same, method)
        if first[method] == method:
            inputs[method] = mine
    return first


def write_sample_grids(sampler: GridSampler, params: nnx.State, step: int, workdir: str) -> list[str]:
    """Writes one PNG per configured resolution, the methods side by side; returns the
    paths (process 0 writes; every process samples).

    The labels cycle through the classes and the noise key is fixed, so grids of
    different steps, resolutions and methods are comparable.
    """
    config = sampler.config
    if config.data.latent:
        logging.warning("Sample grids of latent runs need the VAE decoder; skipped at step %d.", step)
        return []
    n = config.sample.num_images
    if n == 0:
        return []
    labels = np.arange(n, dtype=np.int32) % config.data.num_classes
    key = jax.random.key(config.seed + 1)
    columns = min(n, config.data.num_classes)
    written = []
    for resolution in config_utils.sample_resolutions(config):
        panels = [
            image_grid(to_uint8(sampler.images(params, resolution, method, labels, key)), columns)
            for method in config.sample.methods
        ]
        name = f"step_{step:07d}_{config_utils.resolution_name(resolution)}.png"
        path = epath.Path(workdir) / "samples" / name
        if jax.process_index() == 0:
            paths.write_png(path, labelled_panels(panels, list(config.sample.methods)))
        written.append(str(path))
    return written


def _decoder(config: ml_collections.ConfigDict):
    """Model outputs -> images in [-1, 1]: identity in pixel space, the VAE for latents."""
    if not config.data.latent:
        return lambda x: x
    if not config.vae.path:
        raise ValueError("Latent runs decode samples with the SD-VAE: set config.vae.path to its directory.")
    vae = vae_lib.load_vae(config.vae.path)
    decode = nnx.jit(lambda v, z: jnp.clip(vae_lib.decode_latents(v, z), -1, 1))
    return functools.partial(decode, vae)


def _batch_labels(config: ml_collections.ConfigDict, index: int) -> np.ndarray:
    """Balanced labels for sample batch `index`: the class sequence 0, 1, ... C-1, ..."""
    b = config.sample.batch_size
    return (np.arange(index * b, (index + 1) * b) % config.data.num_classes).astype(np.int32)


def generate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`--mode=sample`: N samples per configured resolution and method, as .npz batches.

    Files: `<workdir>/generated/<method>/<HxW>/batch_%05d.npz` (uint8 `images`
    [B, H, W, 3], int32 `labels`) and a `grid.png` of the first batch. Batches already
    on disk are skipped, so an interrupted run resumes. Every batch is split over all
    devices of all processes; process 0 decodes and writes it, so the files do not
    depend on the process count.
    """
    mesh = sharding.make_mesh(config.mesh.shape)
    graphdef, params, step = train_state.restore_ema_params(config, workdir, config.sample.checkpoint_step)
    sampler = GridSampler(config, graphdef, mesh)
    decode = _decoder(config) if jax.process_index() == 0 else None
    num_batches = -(-config.sample.num_samples // config.sample.batch_size)
    shared = {r: shared_samples(config, r) for r in config_utils.sample_resolutions(config)}
    for method in config.sample.methods:
        for resolution in config_utils.sample_resolutions(config):
            files = generated_files(workdir, method, resolution, num_batches)
            todo = [i for i, done in enumerate(distributed.exists_on_process_0(files)) if not done]
            source = shared[resolution][method]
            if source != method:
                logging.info("%s at %s draws the samples of %s: copied.", method, resolution, source)
                if jax.process_index() == 0:
                    for index in todo:
                        copy_from = generated_files(workdir, source, resolution, num_batches)[index]
                        paths.write_atomic(files[index], copy_from.read_bytes())
                        if index == 0:
                            grid = generated_folder(workdir, source, resolution) / "grid.png"
                            paths.write_atomic(files[0].parent / "grid.png", grid.read_bytes())
                continue
            logging.info(
                "%s at %s (step %d): %d of %d batches to do.",
                method,
                resolution,
                step,
                len(todo),
                num_batches,
            )
            progress = Progress(len(todo), f"{method} {config_utils.resolution_name(resolution)}")
            for index in todo:
                labels = _batch_labels(config, index)
                key = jax.random.fold_in(jax.random.key(config.seed), index)
                images = sampler.images(params, resolution, method, labels, key)
                if decode is not None:
                    _write_batch(to_uint8(decode(images)), labels, files[index], index == 0)
                progress.update(len(labels))


def generated_folder(workdir: epath.PathLike, method: str, resolution) -> epath.Path:
    """Where the sample batches of (method, resolution) go: `<workdir>/generated/<method>/<HxW>`."""
    return epath.Path(workdir) / "generated" / method / config_utils.resolution_name(resolution)


def generated_files(workdir: epath.PathLike, method: str, resolution, num_batches: int) -> list[epath.Path]:
    """Its batch files `batch_%05d.npz`, `num_batches` of them."""
    folder = generated_folder(workdir, method, resolution)
    return [folder / f"batch_{i:05d}.npz" for i in range(num_batches)]


def _write_batch(images: np.ndarray, labels: np.ndarray, path: epath.Path, with_grid: bool) -> None:
    paths.write_npz(path, images=images, labels=labels)  # a batch file exists only when complete
    if with_grid:
        paths.write_png(path.parent / "grid.png", image_grid(images[:64], 8))
