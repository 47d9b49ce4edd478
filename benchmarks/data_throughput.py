"""Input-pipeline throughput against the train step's consumption rate.

Measures examples/s of (a) the embedded procedural pipeline (the real
`pipeline.create_dataset` with configs/demo.py: 32 px, flips and resize-and-crop on), (a')
the same pipeline on the `photos` source (Debian's wallpaper photographs; skipped if absent)
and (b) a synthetic SD-VAE latent pipeline (random [32, 32, 4] latents written to a temporary
ArrayRecord file, read back through `grain.sources.ArrayRecordDataSource`, decoded,
flipped and batched; skipped if `array_record` is missing), each with 0 and with N Grain
worker processes. Beside them it times the real jitted train step
(`train.jit_train_step`) of the demo model and of DiT-S/2 at 256 px (16x16 tokens) on the
same device and prints pipeline examples/s / step examples/s (target: at least 5).

Each pipeline is timed in its own block (medians over segments after a warm-up that
absorbs worker start-up): alternating would let one pipeline's prefetching workers run
while the other is timed. Pipelines and steps are timed apart, each with the whole
machine; in training they share it, so on a CPU-only host the ratio is an upper bound.

  python -m benchmarks.data_throughput [--workers=2 --batches=20 --repeats=3 --steps=5]
"""

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import grain
import jax
import numpy as np
from absl import flags

from benchmarks import train_throughput
from configs import demo
from rpe_jax import config_utils, sharding, train
from rpe_jax.data import photos, pipeline
from rpe_jax.models import dit

try:
    from array_record.python.array_record_module import ArrayRecordWriter
except ImportError:  # the latent pipeline is then skipped
    ArrayRecordWriter = None

LATENT = train_throughput.LATENT


class DecodeLatent(grain.transforms.Map):
    """ArrayRecord bytes (int32 label, then float32 [32, 32, 4]) -> a model-input example."""

    def map(self, element):
        grid = (LATENT[0] // 2, LATENT[1] // 2)  # patch 2
        return {
            "x": np.frombuffer(element, np.float32, offset=4).reshape(LATENT),
            "label": np.frombuffer(element, np.int32, count=1)[0],
            "micro": np.asarray(dit.UNCROPPED, np.float32),
            "crop": np.asarray([*grid, 0, 0], np.int32),
        }


def write_latents(path: str, count: int, num_classes: int = 1000) -> None:
    """Writes `count` random latent records to one ArrayRecord file."""
    rng = np.random.default_rng(0)
    writer = ArrayRecordWriter(path, "group_size:1")
    for i in range(count):
        latent = rng.standard_normal(LATENT, np.float32)
        writer.write(np.int32(i % num_classes).tobytes() + latent.tobytes())
    writer.close()


def latent_dataset(path: str, batch_size: int, workers: int, seed: int = 0) -> grain.IterDataset:
    source = grain.sources.ArrayRecordDataSource([path])
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    ds = ds.map(DecodeLatent()).random_map(pipeline.RandomFlip(0.5))
    ds = ds.to_iter_dataset().batch(batch_size, drop_remainder=True)
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return ds


def pixel_dataset(config, workers: int, source: str = "procedural") -> grain.IterDataset:
    """The demo config's training pipeline on `source` with `workers` Grain workers."""
    config = config.copy_and_resolve_references()
    config.data.workers = workers
    config.data.source = source
    if source == "photos":  # labels are photo indices
        config.data.num_classes = max(config.data.num_classes, len(photos.PHOTOS))
    patch = dit.decode_variant(config.model.variant)["patch"]
    resolution = config_utils.input_size(config, config_utils.parse_resolution(config.data.resolution))
    return pipeline.create_dataset(
        config.data, split="train", resolution=resolution, patch=patch, batch_size=config.train.batch_size
    )


def pipeline_rate(dataset: grain.IterDataset, args) -> float:
    """Median examples/s over `repeats` segments of `batches` batches, after a warm-up."""
    it = iter(dataset)
    for _ in range(args.warmup_batches):
        batch = next(it)
    size = len(batch["label"])
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rates.append(args.batches * size / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rate(config, local_batch: dict, args) -> float:
    """Median examples/s of the real jitted train step of `config` on one fixed batch."""
    mesh = sharding.make_mesh(config.mesh.shape)
    tx = train.make_optimizer(config)
    graphdef, state, shardings = train.create_train_state(config, mesh, tx)
    batch = sharding.global_batch(local_batch, mesh)
    step = train.jit_train_step(config, graphdef, tx, shardings, mesh).lower(state, batch).compile()
    times = []
    for i in range(args.warmup_steps + args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    return config.train.batch_size / statistics.median(times)


def measure_pipelines(args) -> dict[str, float]:
    config = demo.get_config()
    rates = {}
    sources = ["procedural"] + (
        ["photos"] if pathlib.Path(photos.DEFAULT_DIR, photos.PHOTOS[0]).is_dir() else []
    )
    for source in sources:
        for workers in (0, args.workers):
            dataset = pixel_dataset(config, workers, source)
            rates[f"{source} 32px aug, {workers} workers"] = pipeline_rate(dataset, args)
    if ArrayRecordWriter is None:
        print("array_record is not importable: skipping the ArrayRecord latent pipeline.")
        return rates
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "latents.array_record")
        write_latents(path, args.records)
        for workers in (0, args.workers):
            ds = latent_dataset(path, args.latent_batch, workers)
            rates[f"ArrayRecord latents, {workers} workers"] = pipeline_rate(ds, args)
    return rates


def measure_steps(args) -> dict[str, float]:
    config = demo.get_config()
    first = next(iter(pixel_dataset(config, 0)))  # a real demo batch
    rates = {"demo step (DiT 128w x4, 8x8 tok, b32)": step_rate(config, first, args)}
    s2 = train_throughput.make_config("S/2", args.latent_batch, args.dtype, 1)
    latents = train_throughput.random_batch(s2)
    rates[f"DiT-S/2 step (16x16 tok, b{args.latent_batch})"] = step_rate(s2, latents, args)
    return rates


def main() -> None:
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(os.cpu_count(), 16), help="N Grain workers")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed segment")
    parser.add_argument("--repeats", type=int, default=3, help="timed segments per pipeline")
    parser.add_argument("--warmup-batches", type=int, default=5)
    parser.add_argument("--records", type=int, default=512, help="latents in the ArrayRecord file")
    parser.add_argument("--latent-batch", type=int, default=8 if on_cpu else 256)
    parser.add_argument("--dtype", choices=sorted(config_utils.DTYPES), default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; its workers need them parsed

    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, {args.dtype}")
    pipes = measure_pipelines(args)
    steps = measure_steps(args)
    for name, rate in steps.items():
        print(f"  {name:44s} {rate:9.1f} examples/s")
    (demo_name, demo_rate), (s2_name, s2_rate) = steps.items()
    print(f"  {'pipeline':44s} {'examples/s':>10s} {'/ demo step':>11s} {'/ S/2 step':>11s}")
    for name, rate in pipes.items():
        print(f"  {name:44s} {rate:10.1f} {rate / demo_rate:11.1f} {rate / s2_rate:11.1f}")
    for source in ("procedural", "photos"):
        best = [r for n, r in pipes.items() if n.startswith(source)]
        if best:
            print(f"ratio {source} pipeline / demo step = {max(best) / demo_rate:.1f} (target >= 5)")
    latent = [r for n, r in pipes.items() if n.startswith("ArrayRecord")]
    if latent:
        print(f"ratio latent pipeline / DiT-S/2 step = {max(latent) / s2_rate:.1f} (target >= 5)")


if __name__ == "__main__":
    main()
