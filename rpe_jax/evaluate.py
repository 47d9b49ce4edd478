"""`--mode=evaluate`: FID, sFID, IS, precision and recall of the generated samples at
every inference resolution, spectral detail metrics, an optional Frechet distance on
ImageNet MobileNetV2 features, the flow-matching validation loss, and the
resolution-generalization table.

Reference statistics come from real images of the configured source rendered or
centre-cropped at each test resolution (cached on disk). Besides every method, the
table has the row `train_resized`: the first method's samples at the training
resolution resized to the test resolution (bicubic up, box down) — what a user does
instead of resolution generalization. Every sample-based cell has a bootstrap standard
error over the generated samples (`<metric>_se`; sFID and IS have none: their per-sample
terms are not kept). Outputs in `<workdir>/eval/` (`report.py`): results.json,
results.csv, results.md, and resolution_plot.png.

Legend: B batch, H x W image, F features, K spectral bands.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from rpe_jax import (
    config_utils,
    distributed,
    feature_extractor,
    metrics,
    paths,
    report,
    spectrum,
    validation_loss,
)
from rpe_jax import sample as sample_lib
from rpe_jax.data import sources
from rpe_jax.progress import Progress

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
COLUMNS = (
    *METRICS,
    "fd_mobilenet",
    "spectral_distance",
    "hf_ratio",
    "fm_loss",
    *(f"fm_loss_t{k}" for k in range(validation_loss.NUM_BANDS)),
)
RESIZED_BASELINE = "train_resized"
MOBILENET = "mobilenet_v2"


@dataclasses.dataclass
class FeatureSet:
    """Features of one image set: pool features (kept for precision/recall), FID and
    sFID statistics, logits for IS, per-image spectral band powers, and the MobileNetV2
    pool features when that extractor is on."""

    pool: np.ndarray  # [N, F]
    pool_stats: metrics.FeatureStats
    spatial_stats: metrics.FeatureStats
    logits: np.ndarray  # [N, classes]
    bands: np.ndarray  # [N, K]
    mobilenet: np.ndarray | None = None  # [N, F_m]


def extract(
    extractor,
    load_batch: Callable[[int], np.ndarray],
    num_batches: int,
    name: str,
    mobilenet: feature_extractor.FeatureFn | None = None,
) -> FeatureSet:
    """Features of batches 0 .. num_batches - 1, split over processes and gathered.

    Args:
      extractor: images [B, H, W, 3] float in [0, 1] -> InceptionFeatures.
      load_batch: batch index -> its images [B, H, W, 3] float in [0, 1].
      mobilenet: the ImageNet MobileNetV2 feature function, or None.

    Returns:
      The FeatureSet of all batches (rows in batch order), on every process.
    """
    mine = distributed.my_share(list(range(num_batches)))
    if not mine:
        raise ValueError(
            f"{name}: {num_batches} batches cannot keep {jax.process_count()} processes busy; "
            "lower config.eval.batch_size or use more samples."
        )
    parts: dict[str, list[np.ndarray]] = {"pool": [], "logits": [], "bands": [], "order": [], "mobilenet": []}
    spatial = metrics.StatsAccumulator()
    progress = Progress(len(mine), name, unit="batches")
    for index in mine:
        images = load_batch(index)
        features = jax.device_get(extractor(images))
        parts["pool"].append(np.asarray(features.pool))
        parts["logits"].append(np.asarray(features.logits))
        parts["bands"].append(spectrum.band_powers(images))
        parts["order"].append(np.full(len(images), index))
        if mobilenet is not None:
            parts["mobilenet"].append(np.asarray(mobilenet(images).pool))
        spatial.update(np.asarray(features.spatial))
        progress.update()
    gathered = {k: distributed.allgather_rows(np.concatenate(v)) for k, v in parts.items() if v}
    rows = np.argsort(gathered.pop("order"), kind="stable")
    pool = gathered["pool"][rows]
    return FeatureSet(
        pool,
        metrics.feature_stats(pool),
        _gathered_stats(spatial),
        gathered["logits"][rows],
        gathered["bands"][rows],
        gathered["mobilenet"][rows] if mobilenet is not None else None,
    )


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


def reference_features(config, resolution, extractor, workdir: str, mobilenet=None) -> FeatureSet:
    """Features of the first `eval.num_reference` reference images at `resolution`,
    cached in `<workdir>/eval/reference` (one file per extractor set)."""
    n, b = config.eval.num_reference, config.eval.batch_size
    source = config.eval.reference_source or config.data.source
    tag = f"{source}_{config.eval.reference_split}_{config_utils.resolution_name(resolution)}"
    extractors = config.eval.extractor + (f"+{MOBILENET}" if mobilenet is not None else "")
    path = epath.Path(workdir) / "eval" / "reference" / f"{tag}_{extractors}_{n}.npz"
    fields = {"pool", "logits", "spatial_mu", "spatial_sigma", "bands"}
    fields |= {"mobilenet"} if mobilenet is not None else set()
    data = paths.read_npz(path) if distributed.exists_on_process_0([path])[0] else {}
    if fields <= data.keys():
        return FeatureSet(
            data["pool"],
            metrics.feature_stats(data["pool"]),
            metrics.FeatureStats(data["spatial_mu"], data["spatial_sigma"], n),
            data["logits"],
            data["bands"],
            data["mobilenet"] if mobilenet is not None else None,
        )
    if data:
        logging.info("%s lacks %s (an older cache): recomputing it.", path, sorted(fields - data.keys()))
    images = reference_source(config, resolution, n)

    def load_batch(i: int) -> np.ndarray:
        indices = range(i * b, min(n, (i + 1) * b))
        return np.stack([np.asarray(images[j]["image"], np.float32) for j in indices])

    features = extract(extractor, load_batch, -(-n // b), f"reference {tag}", mobilenet)
    if jax.process_index() == 0:
        extra = {} if features.mobilenet is None else {"mobilenet": features.mobilenet}
        paths.write_npz(
            path,
            pool=features.pool,
            logits=features.logits,
            spatial_mu=features.spatial_stats.mean,
            spatial_sigma=features.spatial_stats.cov,
            bands=features.bands,
            **extra,
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
    """The feature metrics, the spectral distance and, with MobileNetV2 features, their
    Frechet distance `fd_mobilenet`."""
    pr = metrics.precision_recall(reference.pool, generated.pool, k=k)
    out = {
        "fid": metrics.frechet_distance(reference.pool_stats, generated.pool_stats),
        "sfid": metrics.frechet_distance(reference.spatial_stats, generated.spatial_stats),
        "inception_score": metrics.inception_score(
            generated.logits, splits=min(10, len(generated.logits))
        ).mean,
        "precision": pr.precision,
        "recall": pr.recall,
        "spectral_distance": spectrum.spectral_distance(reference.bands, generated.bands),
    }
    if reference.mobilenet is not None and generated.mobilenet is not None:
        out["fd_mobilenet"] = metrics.frechet_distance(
            metrics.feature_stats(reference.mobilenet), metrics.feature_stats(generated.mobilenet)
        )
    return out


def hf_cutoff(train_resolution, resolution, num_bands: int) -> float | None:
    """The training resolution's Nyquist frequency in a test image, cycles per pixel: that
    of the axis enlarged the most; None when no band of `spectrum.band_edges(num_bands)`
    starts at or above it (no axis enlarged, or too few bands)."""
    cutoff = min(spectrum.nyquist_cutoff(a, b) for a, b in zip(train_resolution, resolution, strict=True))
    return cutoff if spectrum.band_edges(num_bands)[-2] >= cutoff else None


def bootstrap_errors(
    reference: FeatureSet, generated: FeatureSet, k: int, cutoff: float | None, resamples: int, seed: int
) -> dict[str, float]:
    """Bootstrap standard errors `<metric>_se` over the generated samples (R = `resamples`
    resamples of its rows, fixed seed) of FID, fd_mobilenet, IS, precision and the spectral
    metrics. sFID has none (its per-sample spatial features, 2023-d for Inception, are
    accumulated, not kept), nor has recall (a resample repeats generated rows, whose k-NN
    radii then shrink to 0: the statistic is not defined under resampling)."""
    counts = metrics.bootstrap_counts(len(generated.pool), resamples, seed)
    inside = metrics.precision_indicators(reference.pool, generated.pool, k)
    splits = min(10, len(generated.logits))
    out = {
        "fid_se": metrics.standard_error(
            metrics.bootstrap_frechet(reference.pool_stats, generated.pool, counts)
        ),
        "inception_score_se": metrics.standard_error(
            [metrics.inception_score(np.repeat(generated.logits, c, 0), splits=splits).mean for c in counts]
        ),
        "precision_se": metrics.standard_error(counts @ inside / len(inside)),
        "spectral_distance_se": metrics.standard_error(
            [spectrum.spectral_distance(reference.bands, np.repeat(generated.bands, c, 0)) for c in counts]
        ),
    }
    if cutoff is not None:
        out["hf_ratio_se"] = metrics.standard_error(
            [
                spectrum.high_frequency_ratio(reference.bands, np.repeat(generated.bands, c, 0), cutoff)
                for c in counts
            ]
        )
    if reference.mobilenet is not None and generated.mobilenet is not None:
        stats = metrics.feature_stats(reference.mobilenet)
        out["fd_mobilenet_se"] = metrics.standard_error(
            metrics.bootstrap_frechet(stats, generated.mobilenet, counts)
        )
    return out


def score_with_errors(
    config: ml_collections.ConfigDict, reference: FeatureSet, generated: FeatureSet, resolution
) -> dict[str, float]:
    """`score`, `hf_ratio` above the training resolution, and the bootstrap errors."""
    train_resolution = config_utils.parse_resolution(config.data.resolution)
    cutoff = hf_cutoff(train_resolution, resolution, reference.bands.shape[1])
    out = score(reference, generated, config.eval.pr_k)
    if cutoff is not None:
        out["hf_ratio"] = spectrum.high_frequency_ratio(reference.bands, generated.bands, cutoff)
    if config.eval.bootstrap:
        out |= bootstrap_errors(
            reference, generated, config.eval.pr_k, cutoff, config.eval.bootstrap, config.seed
        )
    return out


def _mobilenet(config: ml_collections.ConfigDict) -> feature_extractor.FeatureFn | None:
    """The ImageNet MobileNetV2 features when `config.eval.imagenet_features_path` is set."""
    path = config.eval.imagenet_features_path
    if not path:
        return None
    return feature_extractor.load(MOBILENET, path, config.eval.batch_size)


def check_eval_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field when a count of `config.eval` is out of range."""
    lowest = {"bootstrap": 0, "fm_loss_images": 0, "fm_loss_times": 1 if config.eval.fm_loss_images else 0}
    for field, low in lowest.items():
        if config.eval[field] < low:
            raise ValueError(f"config.eval.{field} must be >= {low}, got {config.eval[field]}.")


def _validation_images(config: ml_collections.ConfigDict, resolution) -> tuple[np.ndarray, np.ndarray]:
    """The first `eval.fm_loss_images` reference images at `resolution` in [0, 1]
    [B, H, W, 3] and their labels [B] (the null class where the source has none)."""
    n = config.eval.fm_loss_images
    images = reference_source(config, resolution, n)
    items = [images[i] for i in range(n)]
    labels = [item.get("label", config.data.num_classes) for item in items]
    return np.stack([np.asarray(item["image"], np.float32) for item in items]), np.asarray(labels, np.int32)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Scores every (method, resolution) with samples on disk; writes the table and plot.

    Returns:
      Rows {"method", "resolution", "tokens", metric: value, metric_se: error, ...}.
    """
    check_eval_config(config)
    extractor = feature_extractor.load(
        config.eval.extractor, config.eval.extractor_path, config.eval.batch_size
    )
    mobilenet = _mobilenet(config)
    fm_loss = validation_loss.ValidationLoss(config, workdir) if config.eval.fm_loss_images else None
    train_resolution = config_utils.parse_resolution(config.data.resolution)
    rows = []
    for resolution in config_utils.sample_resolutions(config):
        reference = reference_features(config, resolution, extractor, workdir, mobilenet)
        losses = fm_loss.at(*_validation_images(config, resolution)) if fm_loss is not None else {}
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
                generated = extract(extractor, load, len(files), name, mobilenet)
                scores[source] = score_with_errors(config, reference, generated, resolution)
            row: dict[str, str | int | float] = {
                "method": method,
                "resolution": config_utils.resolution_name(resolution),
            }
            row["tokens"] = int(np.prod(config_utils.token_grid(config, resolution)))
            row.update(scores[source])
            row.update(losses.get(method, {}))
            logging.info("%s", row)
            rows.append(row)
    if jax.process_index() == 0:
        columns = report.present_metrics(rows, COLUMNS)
        report.write_results(rows, epath.Path(workdir) / "eval", train_resolution, columns)
    return rows
