"""Train-step throughput and model FLOPs utilisation (MFU) of DiT-S/2 and DiT-B/2.

Times the project's real jitted train step (`train.jit_train_step`, built from
configs/imagenet256.py with the variant, batch, dtype and accumulation changed) on random
SD-VAE-shaped latents [B, 32, 32, 4] (256 px, 16x16 tokens with patch 2; no data
pipeline), and between its steps a large `jnp.dot` in the compute dtype on the same device
(CPU: float32 2048^3; GPU/TPU: bfloat16 8192^3), one device's practical peak. Prints
images/s, achieved FLOP/s and their ratio to the peak times the device count (MFU),
medians over the timed steps.

  python -m benchmarks.train_throughput [--variants=S/2,B/2 --batch=8 --steps=5 --quick]

Model FLOPs, counted analytically (a multiply-add is 2 FLOPs; only matmuls count, as in
MFU; N tokens, D width, L depth, M = 4D MLP hidden, P patch, C / C' in / out channels,
F = 256 sinusoid width), forward, per example:

  L * N * (2*3D^2 [qkv] + 2*D^2 [proj] + 2*2*D*M [mlp] + 2*2*N*D [q k^T and p v])
    = L * N * (24 D^2 + 4 N D)                          transformer blocks
  + L * 2*D*6D                                          adaLN-Zero per block (per example)
  + 2*D*2D + 2*N*D*P^2*C'                               final layer: adaLN, linear
  + 2*N*P^2*C*D                                         patch embedding
  + (2*F*D + 2*D^2) * (1 + [micro: 3F instead of F])    t (and crop) embedders

Training counts 3x the forward (the backward pass computes gradients with respect to both
activations and weights). DiT-S/2 at 16x16 tokens: 12.1 GFLOP forward (the DiT paper's
6.06 "GFLOPs" are multiply-adds), 36.3 GFLOP per training example; DiT-B/2: 46.0 and 138.0.
The script also prints XLA's own count (`compiled.cost_analysis()["flops"]`), which adds
elementwise work (norms, softmax, RoPE, the optimizer) at 1 FLOP per element; with
--grad-accum > 1 XLA counts the body of the accumulation loop once, so the script
compares it with one micro-batch's analytic count.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import imagenet256
from rpe_jax import config_utils, sharding, train
from rpe_jax.models import dit

LATENT = (32, 32, 4)  # SD-VAE latent of a 256 px image: 16x16 tokens with patch 2


def forward_flops(cfg: dit.DiTConfig, grid: tuple[int, int]) -> float:
    """Matmul FLOPs of one example's forward pass (the formula in the module docstring)."""
    d, n, m = cfg.width, grid[0] * grid[1], int(cfg.width * cfg.mlp_ratio)
    patch_in = cfg.patch * cfg.patch * cfg.in_channels
    patch_out = cfg.patch * cfg.patch * cfg.output_channels
    f = dit.FREQUENCY_EMBED_DIM
    block_per_token = 2 * 3 * d * d + 2 * d * d + 2 * 2 * d * m + 2 * 2 * n * d
    blocks = cfg.depth * (n * block_per_token + 2 * d * 6 * d)
    final = 2 * d * 2 * d + 2 * n * d * patch_out
    embed = 2 * n * patch_in * d + (2 * f * d + 2 * d * d)
    if cfg.micro_conditioning:
        embed += 2 * 3 * f * d + 2 * d * d
    return float(blocks + final + embed)


def make_config(variant: str, batch: int, dtype: str, grad_accum: int):
    config = imagenet256.get_config()
    config.model.variant = f"DiT-{variant}"
    config.model.dtype = dtype
    config.train.batch_size = batch
    config.train.grad_accum_steps = grad_accum
    config_utils.validate(config, jax.device_count())
    return config


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """This process's share of a batch of random latents and labels, in the pipeline's layout."""
    rng = np.random.default_rng(seed)
    b = config.train.batch_size // jax.process_count()
    grid = config_utils.train_grid(config)
    return {
        "x": rng.standard_normal((b, *LATENT), np.float32),
        "label": rng.integers(0, config.data.num_classes, b).astype(np.int32),
        "micro": np.tile(np.asarray(dit.UNCROPPED, np.float32), (b, 1)),
        "crop": np.tile(np.asarray([*grid, 0, 0], np.int32), (b, 1)),
    }


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def make_peak(dtype, size: int, reps: int):
    """A timer of `reps` back-to-back `jnp.dot`s of size^2 matrices: returns FLOP/s."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))

    def measure() -> float:
        start = time.perf_counter()
        for _ in range(reps):
            out = dot(a, b)
        jax.block_until_ready(out)
        return reps * 2 * size**3 / (time.perf_counter() - start)

    return measure


def bench_variant(variant: str, args, peak) -> dict:
    """Compiles the variant's train step; alternates timed steps with peak matmuls."""
    config = make_config(variant, args.batch, args.dtype, args.grad_accum)
    mesh = sharding.make_mesh(config.mesh.shape)
    tx = train.make_optimizer(config)
    graphdef, state, shardings = train.create_train_state(config, mesh, tx)
    batch = sharding.global_batch(random_batch(config), mesh)
    start = time.perf_counter()
    step = train.jit_train_step(config, graphdef, tx, shardings, mesh).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    step_times, peaks = [], []
    for _ in range(args.steps):
        peaks.append(peak())
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - start)
    model_cfg = config_utils.model_config(config)
    fwd = forward_flops(model_cfg, config_utils.train_grid(config))
    return {
        "variant": variant,
        "compile_s": compile_s,
        "step_s": statistics.median(step_times),
        "peak": statistics.median(peaks),
        "train_flops": 3 * fwd * args.batch,
        "xla_flops": xla_flops(step),
        "xla_reference": 3 * fwd * args.batch / args.grad_accum,
        "loss": float(metrics.loss.compute()),
    }


def report(r: dict, args) -> None:
    achieved = r["train_flops"] / r["step_s"]
    print(
        f"DiT-{r['variant']}: step {r['step_s'] * 1e3:.0f} ms (median of {args.steps}; "
        f"compile {r['compile_s']:.0f} s; loss {r['loss']:.3f}) -> {args.batch / r['step_s']:.2f} images/s"
    )
    print(
        f"  FLOPs per step: analytic {r['train_flops'] / 1e9:.1f} G; XLA cost_analysis "
        f"{r['xla_flops'] / 1e9:.1f} G = {r['xla_flops'] / r['xla_reference']:.3f} x analytic"
        + (" (one micro-batch)" if args.grad_accum > 1 else "")
    )
    devices = jax.device_count()
    print(
        f"  achieved {achieved / 1e9:.1f} GFLOP/s; peak matmul {r['peak'] / 1e9:.1f} GFLOP/s per device "
        f"(median beside the steps) x {devices} device(s)"
    )
    print(f"  MFU = achieved / peak = {achieved / (r['peak'] * devices):.3f}")


def main() -> None:
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="S/2,B/2", help="comma-separated DiT sizes")
    parser.add_argument("--batch", type=int, default=8 if on_cpu else 64 * jax.device_count())
    parser.add_argument("--dtype", choices=sorted(config_utils.DTYPES), default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--peak-size", type=int, default=2048 if on_cpu else 8192)
    parser.add_argument("--quick", action="store_true", help="S/2 only, 3 timed steps, 1 warm-up")
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    if args.quick:
        args.variants, args.steps, args.warmup = "S/2", 3, 1
    peak_reps = 3 if on_cpu else 20
    peak = make_peak(config_utils.DTYPES[args.dtype], args.peak_size, peak_reps)
    device = jax.devices()[0].device_kind
    print(
        f"{jax.device_count()} x {device} ({jax.default_backend()}), {args.dtype}, batch {args.batch}, "
        f"grad_accum {args.grad_accum}, 16x16 tokens; peak = jnp.dot {args.peak_size}^3 x {peak_reps}"
    )
    for variant in args.variants.split(","):
        report(bench_variant(variant.strip(), args, peak), args)


if __name__ == "__main__":
    main()
