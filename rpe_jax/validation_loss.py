"""Flow-matching validation loss of a checkpoint at any resolution, for every method.

The velocity loss (`diffusion/flow.py`) of the model on real images at the test
resolution, on a fixed grid of times (midpoints of `T` equal steps in (0, 1)) with fixed
noise: no sampling, so it exists for every method at every resolution. A method enters as
its sampler uses it: its token positions, and at each time its RoPE frequencies and logit
factor (`rope.make_rope`); class labels are the images' own, the micro-condition is
"uncropped". A method's time shift only moves the times a sampler visits, so it does not
change the loss at a given time: methods that differ only there get equal losses.
Methods compare at one resolution (same images, same noise); across resolutions the loss
also follows how predictable the images' pixels are (on the procedural scenes it falls
with the image size whatever the method).

Legend: B images, T times, H x W model input, C channels, N tokens, F frequencies.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rpe_jax import config_utils, train_state
from rpe_jax import methods as methods_lib
from rpe_jax import rope as rope_lib
from rpe_jax.diffusion import flow
from rpe_jax.models import vae as vae_lib

NUM_BANDS = 4  # the loss is also reported per band of T / 4 consecutive times


def loss_times(num_times: int) -> np.ndarray:
    """[T] midpoints `(i + 1/2) / T` of T equal steps in (0, 1), float32."""
    if num_times < 1:
        raise ValueError(f"The number of loss times must be >= 1, got {num_times}.")
    return ((np.arange(num_times) + 0.5) / num_times).astype(np.float32)


def fixed_noise(seed: int, num_times: int, shape: tuple[int, ...]) -> np.ndarray:
    """[T, B, H, W, C] standard normal noise that depends only on (seed, time index, shape):
    every method at a resolution sees the same noise."""
    keys = jax.random.split(jax.random.key(seed), num_times)
    return np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys))


def method_ropes(
    head_dim: int,
    grid: tuple[int, int],
    train_grid: tuple[int, int],
    method: methods_lib.Method,
    times: np.ndarray,
    options: rope_lib.RopeOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """A method's RoPE at each time: frequencies [T, 2, F] and logit factors [T]."""
    ropes = [
        rope_lib.make_rope(
            head_dim, train_grid, grid, method.frequency_rule, method.attention_scale, jnp.float32(t), options
        )
        for t in times
    ]
    return np.stack([np.asarray(r.freqs) for r in ropes]), np.stack(
        [np.asarray(r.logit_scale) for r in ropes]
    )


def make_loss_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    """A jitted `loss(params, data, labels, noise, t, positions, freqs, logit_scale) -> [B]`:
    the per-image velocity loss at one time t [] (data, noise: [B, H, W, C]; labels [B];
    positions [N, 2]; freqs [2, F]; logit_scale [])."""

    def loss(params, data, labels, noise, t, positions, freqs, logit_scale):
        model = nnx.merge(graphdef, params)
        ts = jnp.full((data.shape[0],), t)
        rope = rope_lib.Rope(freqs, logit_scale)
        prediction = model(flow.interpolate(data, noise, ts), ts, labels, positions[None], None, rope)
        return flow.velocity_loss(prediction, data, noise)

    return jax.jit(loss)


def validation_losses(
    loss_fn: Callable[..., jax.Array],
    params: nnx.State,
    data: np.ndarray,
    labels: np.ndarray,
    noise: np.ndarray,
    times: np.ndarray,
    positions: np.ndarray,
    ropes: tuple[np.ndarray, np.ndarray],
    batch_size: int,
) -> np.ndarray:
    """Per-image velocity losses at every time.

    Args:
      loss_fn: from `make_loss_fn`.
      params: the (EMA) model parameters.
      data: [B, H, W, C] images in model space ([-1, 1] pixels or latents).
      labels: [B] int class labels (the null class `num_classes` for unlabelled data).
      noise: [T, B, H, W, C] from `fixed_noise`.
      times: [T] from `loss_times`.
      positions: [N, 2] the method's token positions.
      ropes: (freqs [T, 2, F], logit_scale [T]) from `method_ropes`.
      batch_size: images per call.

    Returns:
      [B, T] float64 losses.
    """
    freqs, scales = ropes
    out = np.empty((len(data), len(times)))
    for j, t in enumerate(times):
        for start in range(0, len(data), batch_size):
            end = min(len(data), start + batch_size)
            out[start:end, j] = loss_fn(
                params,
                data[start:end],
                labels[start:end],
                noise[j, start:end],
                jnp.float32(t),
                positions,
                freqs[j],
                scales[j],
            )
    return out


def summarize(losses: np.ndarray) -> dict[str, float]:
    """`fm_loss` (mean over images and times), its standard error over images `fm_loss_se`,
    and `fm_loss_t{k}` the mean over the k-th of NUM_BANDS bands of consecutive times
    (fewer bands when T < NUM_BANDS).

    Args:
      losses: [B, T] from `validation_losses`.
    """
    per_image = losses.mean(axis=1)
    se = per_image.std(ddof=1) / np.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
    out = {"fm_loss": float(per_image.mean()), "fm_loss_se": float(se)}
    bands = np.array_split(np.arange(losses.shape[1]), min(NUM_BANDS, losses.shape[1]))
    for k, band in enumerate(bands):
        out[f"fm_loss_t{k}"] = float(losses[:, band].mean())
    return out


class ValidationLoss:
    """The validation loss of a run's EMA checkpoint (`config.sample.checkpoint_step`, the
    latest by default; restored as `--mode=sample` does) for every configured method.

    Args:
      config: the experiment config (`eval.fm_loss_times`, `eval.batch_size`, `sample.methods`).
      workdir: the run's workdir with its checkpoints.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.graphdef, self.params, self.step = train_state.restore_ema_params(
            config, workdir, config.sample.checkpoint_step
        )
        self.loss_fn = make_loss_fn(self.graphdef)
        self.times = loss_times(config.eval.fm_loss_times)
        self.encode = _encoder(config)

    def at(self, images: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
        """{method: `summarize` of its losses} on real images at their resolution.

        Args:
          images: [B, H, W, 3] in [0, 1] at a test resolution.
          labels: [B] int class labels.
        """
        config = self.config
        resolution = images.shape[1:3]
        grid = config_utils.token_grid(config, resolution)
        data = self.encode(images)
        noise = fixed_noise(config.seed, len(self.times), data.shape)
        head_dim = config_utils.model_config(config).head_dim
        options = config_utils.sampler_config(config).rope_options
        out: dict[str, dict[str, float]] = {}
        done: dict[bytes, dict[str, float]] = {}  # methods with equal inputs share the result
        for name in config.sample.methods:
            method = methods_lib.get_method(name)
            positions = np.asarray(
                methods_lib.method_positions(method, grid, config_utils.max_positions(config))
            )
            ropes = method_ropes(head_dim, grid, config_utils.train_grid(config), method, self.times, options)
            key = b"".join(np.ascontiguousarray(a).tobytes() for a in (positions, *ropes))
            if key in done:
                out[name] = done[key]
                continue
            losses = validation_losses(
                self.loss_fn,
                self.params,
                data,
                labels,
                noise,
                self.times,
                positions,
                ropes,
                config.eval.batch_size,
            )
            out[name] = done[key] = summarize(losses)
        return out


def _encoder(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
    """Images [B, H, W, 3] in [0, 1] -> model inputs: pixels in [-1, 1], or SD-VAE latents."""
    if not config.data.latent:
        return lambda images: np.asarray(images, np.float32) * 2 - 1
    if not config.vae.path:
        raise ValueError(
            "The validation loss of a latent run encodes the images with the SD-VAE: set "
            "config.vae.path, or config.eval.fm_loss_images=0 to skip it."
        )
    vae = vae_lib.load_vae(config.vae.path)
    encode = nnx.jit(vae_lib.encode_to_latents)
    b = config.eval.batch_size
    return lambda images: np.concatenate(
        [np.asarray(encode(vae, jnp.asarray(images[i : i + b]) * 2 - 1)) for i in range(0, len(images), b)]
    )
