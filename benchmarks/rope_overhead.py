"""Cost of RPE-2D + 2D RoPE over a DiT without positional encoding.

Times a jitted forward+backward of DiT-S/2 at a 16x16 token grid (batch 32 by default):
(a) with a fresh RPE-2D position draw and RoPE on q and k, (b) with no positional
encoding at all. Runs alternate between the two so drift affects both; prints medians and
the ratio a/b (target: at most 1.05).

  python -m benchmarks.rope_overhead [--variant=S/2 --batch=32 --grid=16 --repeats=7]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from rpe_jax import positions
from rpe_jax.models import dit


def make_step(model: dit.DiT, draw_positions: bool, grid: int, max_positions: int):
    """A jitted (params, x, key) -> grads step of a flow-matching-like squared loss."""
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(params, x, key):
        m = nnx.merge(graphdef, params)
        b = x.shape[0]
        t = jax.random.uniform(key, (b,))
        pos = None
        if draw_positions:
            pos = positions.train_positions(key, b, (grid, grid), (max_positions, max_positions))
        out = m(x, t, jnp.zeros((b,), jnp.int32), pos)
        return jnp.mean((out - x) ** 2)

    return jax.jit(jax.grad(loss_fn)), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="S/2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    patch = dit.decode_variant(args.variant)["patch"]
    side = args.grid * patch
    x = jax.random.normal(jax.random.key(0), (args.batch, side, side, 4))
    steps = {}
    for name, pe, draw in (("rpe2d+rope", "rope", True), ("no_pe", "none", False)):
        model = dit.create_model(args.variant, pos_encoding=pe, rngs=nnx.Rngs(0))
        steps[name] = make_step(model, draw, args.grid, 2 * args.grid)
    times = {name: [] for name in steps}
    for fn, params in steps.values():  # compile + warm up
        jax.block_until_ready(fn(params, x, jax.random.key(1)))
    for i in range(args.repeats):
        for name, (fn, params) in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, x, jax.random.key(i)))
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    device = jax.devices()[0].device_kind
    print(f"DiT-{args.variant}, grid {args.grid}x{args.grid}, batch {args.batch}, {device}")
    for name, m in med.items():
        print(f"  {name:12s} fwd+bwd median {m * 1e3:9.1f} ms over {args.repeats} runs")
    print(f"ratio rpe2d+rope / no_pe = {med['rpe2d+rope'] / med['no_pe']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
