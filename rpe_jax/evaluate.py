"""`--mode=evaluate`: FID, sFID, IS, precision and recall of the generated samples at
every inference resolution, and the resolution-generalization table.

Reference statistics come from real images of the configured source rendered or
centre-cropped at each test resolution (cached on disk). Besides every method, the
table has the row `train_resized`: the first method's samples at the training
resolution resized to the test resolution (bicubic up, box down) — what a user does
instead of resolution generalization. Outputs in `<workdir>/eval/`: results.json,
results.csv, results.md, and resolution_plot.png.

Legend: B batch, H x W image, F features.
"""

import csv
import dataclasses
import functools
import io
import json
from collections.abc import Callable

import jax
import matplotlib
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from rpe_jax import config_utils, distributed, feature_extractor, metrics, paths
from rpe_jax import sample as sample_lib
from rpe_jax.data import sources
from rpe_jax.progress import Progress

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
RESIZED_BASELINE = "train_resized"


@dataclasses.dataclass
class FeatureSet:
    """Features of one image set: pool features (kept for precision/recall), FID and
    sFID statistics, and logits for IS."""

    pool: np.ndarray  # [N, F]
    pool_stats: metrics.FeatureStats
    spatial_stats: metrics.FeatureStats
    logits: np.ndarray  # [N, classes]


def extract(extractor, load_batch: Callable[[int], np.ndarray], num_batches: int, name: str) -> FeatureSet:
    """Features of batches 0 .. num_batches - 1, split over processes and gathered.

    Args:
      extractor: images [B, H, W, 3] float in [0, 1] -> InceptionFeatures.
      load_batch: batch index -> its images [B, H, W, 3] float in [0, 1].

    Returns:
      The FeatureSet of all batches (rows in batch order), on every process.
    """
    mine = distributed.my_share(list(range(num_batches)))
    if not mine:
        raise ValueError(
            f"{name}: {num_batches} batches cannot keep {jax.process_count()} processes busy; "
            "lower config.eval.batch_size or use more samples."
        )
    pool_parts, logit_parts, order_parts = [], [], []
    spatial = metrics.StatsAccumulator()
    progress = Progress(len(mine), name, unit="batches")
    for index in mine:
        features = jax.device_get(extractor(load_batch(index)))
        pool_parts.append(np.asarray(features.pool))
        logit_parts.append(np.asarray(features.logits))
        order_parts.append(np.full(len(pool_parts[-1]), index))
        spatial.update(np.asarray(features.spatial))
        progress.update()
    rows = np.argsort(distributed.allgather_rows(np.concatenate(order_parts)), kind="stable")
    pool = distributed.allgather_rows(np.concatenate(pool_parts))[rows]
    logits = distributed.allgather_rows(np.concatenate(logit_parts))[rows]
    return FeatureSet(pool, metrics.feature_stats(pool), _gathered_stats(spatial), logits)


def _gathered_stats(local: metrics.StatsAccumulator) -> metrics.FeatureStats:
    """Statistics of every process's accumulated features."""
    count, mean, m2 = local.moments()
    counts = distributed.allgather_rows(np.array([count]))
    means, m2s = distributed.allgather_rows(mean[None]), distributed.allgather_rows(m2[None])
    total = metrics.StatsAccumulator()
    for moments in zip(counts, means, m2s, strict=True):
        total.merge(*moments)
    return total.result()


def reference_source(config: ml_collections.ConfigDict, resolution, count: int):
    """The reference images' source at `resolution`; items {"image": [H, W, 3] in [0, 1]}."""
    name = config.eval.reference_source or config.data.source
    if name not in sources.SOURCES:
        raise ValueError(
            f"Unknown config.eval.reference_source {name!r}; choose one of {sorted(sources.SOURCES)}."
        )
    source = sources.SOURCES[name](config.data, config.eval.reference_split, tuple(resolution))
    if len(source) < count:
        raise ValueError(
            f"Reference source {name!r} has {len(source)} images; config.eval.num_reference={count}."
        )
    return source


def reference_features(config, resolution, extractor, workdir: str) -> FeatureSet:
    """Features of the first `eval.num_reference` reference images at `resolution`,
    cached in `<workdir>/eval/reference`."""
    n, b = config.eval.num_reference, config.eval.batch_size
    source = config.eval.reference_source or config.data.source
    tag = f"{source}_{config.eval.reference_split}_{config_utils.resolution_name(resolution)}"
    path = epath.Path(workdir) / "eval" / "reference" / f"{tag}_{config.eval.extractor}_{n}.npz"
    if distributed.exists_on_process_0([path])[0]:
        data = paths.read_npz(path)
        return FeatureSet(
            data["pool"],
            metrics.feature_stats(data["pool"]),
            metrics.FeatureStats(data["spatial_mu"], data["spatial_sigma"], n),
            data["logits"],
        )
    images = reference_source(config, resolution, n)

    def load_batch(i: int) -> np.ndarray:
        indices = range(i * b, min(n, (i + 1) * b))
        return np.stack([np.asarray(images[j]["image"], np.float32) for j in indices])

    features = extract(extractor, load_batch, -(-n // b), f"reference {tag}")
    if jax.process_index() == 0:
        paths.write_npz(
            path,
            pool=features.pool,
            logits=features.logits,
            spatial_mu=features.spatial_stats.mean,
            spatial_sigma=features.spatial_stats.cov,
        )
    return features


def generated_files(workdir: str, method: str, resolution) -> list[epath.Path]:
    """The sample batches of (method, resolution) on disk."""
    folder = sample_lib.generated_folder(workdir, method, resolution)
    files = sorted(folder.glob("batch_*.npz"))
    if not files:
        raise FileNotFoundError(f"No samples in {folder}: run --mode=sample first.")
    return files


def generated_batch(path: epath.PathLike, size=None) -> np.ndarray:
    """One sample batch file as float [0, 1] [B, H, W, 3], optionally resized to (H, W)."""
    images = paths.read_npz(path)["images"]
    if size is not None and images.shape[1:3] != tuple(size):
        images = np.stack([_resize_uint8(im, size) for im in images])
    return images.astype(np.float32) / 255.0


def _load_generated(files: list[epath.Path], size, index: int) -> np.ndarray:
    return generated_batch(files[index], size)


def _resize_uint8(image: np.ndarray, size) -> np.ndarray:
    """Bicubic when enlarging, box (area) when shrinking; size = (H, W)."""
    method = Image.Resampling.BICUBIC if size[0] > image.shape[0] else Image.Resampling.BOX
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), method))


def score(reference: FeatureSet, generated: FeatureSet, k: int) -> dict[str, float]:
    pr = metrics.precision_recall(reference.pool, generated.pool, k=k)
    return {
        "fid": metrics.frechet_distance(reference.pool_stats, generated.pool_stats),
        "sfid": metrics.frechet_distance(reference.spatial_stats, generated.spatial_stats),
        "inception_score": metrics.inception_score(
            generated.logits, splits=min(10, len(generated.logits))
        ).mean,
        "precision": pr.precision,
        "recall": pr.recall,
    }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Scores every (method, resolution) with samples on disk; writes the table and plot.

    Returns:
      Rows {"method", "resolution", "tokens", metric: value, ...}.
    """
    extractor = feature_extractor.load(
        config.eval.extractor, config.eval.extractor_path, config.eval.batch_size
    )
    train_resolution = config_utils.parse_resolution(config.data.resolution)
    rows = []
    for resolution in config_utils.sample_resolutions(config):
        reference = reference_features(config, resolution, extractor, workdir)
        candidates: list[tuple[str, list[epath.Path], config_utils.Grid | None]] = [
            (m, generated_files(workdir, m, resolution), None) for m in config.sample.methods
        ]
        if resolution != train_resolution and train_resolution in config_utils.sample_resolutions(config):
            files = generated_files(workdir, config.sample.methods[0], train_resolution)
            candidates.append((RESIZED_BASELINE, files, resolution))
        shared = sample_lib.shared_samples(config, resolution)
        scores: dict[str, dict[str, float]] = {}
        for method, files, size in candidates:
            name = f"{method} {config_utils.resolution_name(resolution)}"
            source = shared.get(method, method)
            if source not in scores:
                load = functools.partial(_load_generated, files, size)
                generated = extract(extractor, load, len(files), name)
                scores[source] = score(reference, generated, config.eval.pr_k)
            row: dict[str, str | int | float] = {
                "method": method,
                "resolution": config_utils.resolution_name(resolution),
            }
            row["tokens"] = int(np.prod(config_utils.token_grid(config, resolution)))
            row.update(scores[source])
            logging.info("%s", row)
            rows.append(row)
    if jax.process_index() == 0:
        write_results(rows, epath.Path(workdir) / "eval", train_resolution)
    return rows


def write_results(rows: list[dict], out_dir: epath.PathLike, train_resolution) -> None:
    """results.json, results.csv, results.md (one table per metric) and the plot, in `out_dir`
    (local or gs://)."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["method", "resolution", "tokens", *METRICS])
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / "results.csv").write_text(table.getvalue())
    (out_dir / "results.md").write_text(markdown_table(rows, train_resolution))
    plot(rows, out_dir / "resolution_plot.png")


def _grid(rows: list[dict]):
    methods = list(dict.fromkeys(r["method"] for r in rows))
    resolutions = sorted({(r["tokens"], r["resolution"]) for r in rows})
    values = {(r["method"], r["resolution"]): r for r in rows}
    return methods, [name for _, name in resolutions], values


def markdown_table(rows: list[dict], train_resolution) -> str:
    """One Markdown table per metric: methods x resolutions; the training one is marked."""
    methods, resolutions, values = _grid(rows)
    train_name = config_utils.resolution_name(train_resolution)
    header = [f"{r} (train)" if r == train_name else r for r in resolutions]
    lines = []
    for metric in METRICS:
        better = "lower" if metric in ("fid", "sfid") else "higher"
        lines += [f"### {metric} ({better} is better)", "", "| method | " + " | ".join(header) + " |"]
        lines.append("|---" * (len(resolutions) + 1) + "|")
        for method in methods:
            cells = [
                f"{values[(method, r)][metric]:.3f}" if (method, r) in values else "—" for r in resolutions
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: epath.PathLike) -> None:
    """Metric vs resolution, one line per method, one panel per metric."""
    methods, resolutions, values = _grid(rows)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    for ax, metric in zip(axes, METRICS, strict=True):
        for method in methods:
            xs = [i for i, r in enumerate(resolutions) if (method, r) in values]
            ax.plot(xs, [values[(method, resolutions[i])][metric] for i in xs], marker="o", label=method)
        ax.set_xticks(range(len(resolutions)), resolutions, rotation=45)
        ax.set_title(metric)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    paths.write_figure(path, fig, dpi=100)
    plt.close(fig)
