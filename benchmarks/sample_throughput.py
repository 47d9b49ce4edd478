"""Sampling speed and memory at 1x, 1.5x, 2x and 4x the training token count.

For each grid: images/s of one jitted sampling call (RPE-2D method, CFG on), and the
compiled program's temporary memory (XLA's memory analysis; on GPU also the device's
peak bytes). Prints the memory growth per token between consecutive grids: linear
growth means attention does not materialise the N x N score matrix (cuDNN flash
attention on GPU with --attention=cudnn); quadratic growth means it does.

  python -m benchmarks.sample_throughput [--variant=DiT-S/2 --batch=8 --steps=4
      --dtype=float32|bfloat16 --attention=xla|cudnn]
"""

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from rpe_jax import methods
from rpe_jax.diffusion import sampling
from rpe_jax.models import dit

TRAIN_GRID = (16, 16)  # 256 px latents with patch 2


def grid_for(multiple: float) -> tuple[int, int]:
    side = round(TRAIN_GRID[0] * math.sqrt(multiple))
    return side, side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="DiT-S/2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default=None, choices=["xla", "cudnn"])
    parser.add_argument("--multiples", default="1,1.5,2,4")
    args = parser.parse_args()

    model = dit.create_model(
        args.variant, dtype=jnp.dtype(args.dtype), attention_impl=args.attention, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(model, nnx.Param)
    labels = jnp.arange(args.batch) % 1000
    config = sampling.SamplerConfig(steps=args.steps, solver="euler", cfg_scale=1.5)
    device = jax.devices()[0]
    setting = f"batch {args.batch}, {args.steps} Euler steps + CFG"
    print(f"{args.variant} {args.dtype}, {setting}, {device.device_kind}")
    rows = []
    for multiple in [float(m) for m in args.multiples.split(",")]:
        grid = grid_for(multiple)
        fn = sampling.make_sampler(graphdef, grid, TRAIN_GRID, (64, 64), methods.get_method("rpe2d"), config)
        compiled = fn.lower(params, jax.random.key(0), labels).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        jax.block_until_ready(compiled(params, jax.random.key(0), labels))
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, jax.random.key(i), labels))
            times.append(time.perf_counter() - start)
        stats = device.memory_stats() or {}
        tokens = grid[0] * grid[1]
        rows.append(
            (multiple, tokens, args.batch / statistics.median(times), temp, stats.get("peak_bytes_in_use"))
        )
    print(f"{'x train':>8} {'tokens':>7} {'images/s':>9} {'temp MiB':>9} {'peak MiB':>9} {'MiB/token':>10}")
    for i, (multiple, tokens, ips, temp, peak) in enumerate(rows):
        growth = "" if i == 0 else f"{(temp - rows[i - 1][3]) / (tokens - rows[i - 1][1]) / 2**20:10.3f}"
        peak_mib = f"{peak / 2**20:9.0f}" if peak else f"{'n/a':>9}"
        print(f"{multiple:8.1f} {tokens:7d} {ips:9.2f} {temp / 2**20:9.1f} {peak_mib} {growth}")
    ratio = (rows[-1][3] / rows[0][3]) / (rows[-1][1] / rows[0][1])
    span = f"from {rows[0][1]} to {rows[-1][1]} tokens"
    print(f"temp memory grows {ratio:.2f}x faster than the token count {span}")


if __name__ == "__main__":
    main()
