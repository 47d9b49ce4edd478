"""Sample-quality metrics over feature arrays: FID, sFID, IS, precision and recall.

The feature extractor (the FID Inception network or a project classifier) lives elsewhere;
this module only sees arrays. Conventions follow the ADM evaluator
(`guided-diffusion/evaluations/evaluator.py`), which in turn follows pytorch-fid, the
original Inception Score code (`openai/improved-gan`) and Kynkaanniemi et al. 2019:

- FID is `frechet_distance` on pool3 statistics, sFID the same on the flattened spatial
  (`mixed_6/conv`, first 7 channels) statistics; covariances use ddof=1 (`np.cov`).
- IS is computed from softmax probabilities over the classifier logits.
- Precision/recall use k-NN radii with k=3, excluding the point itself, in float32.

- Uncertainty: a bootstrap over the generated rows (`bootstrap_counts`), with each
  statistic a weighted sum of per-row terms, so no resample copies features.

The module runs a little over 500 lines on purpose: the distances, precision/recall and their
bootstrap share the private feature checks and k-NN helpers; split, they would import each
other's private functions.

Shape legend: N samples, F feature width, C classes.
"""

import dataclasses
import functools
import io
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from etils import epath
from scipy import linalg, special

_HIGHEST = jax.lax.Precision.HIGHEST


def _checked_features(features: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    """Returns `features` as a float NumPy array after checking shape and finiteness.

    Args:
      features: [N, F] array-like (NumPy or jax.Array).
      name: what the caller calls it, used in error messages.
      min_rows: smallest valid N.

    Returns:
      [N, F] NumPy floating array.

    Raises:
      ValueError: if not 2-D, F == 0, N < min_rows, or any value is NaN or infinite.
    """
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [N, F], got shape {array.shape}; flatten spatial features "
            "with features.reshape(len(features), -1)."
        )
    if array.shape[1] == 0:
        raise ValueError(f"{name} has shape {array.shape}: feature width F must be >= 1.")
    if array.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {array.shape[0]} samples (shape {array.shape}); need at least {min_rows}."
        )
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(
            f"{name} has {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} "
            f"infinite values out of {array.size} (shape {array.shape}, "
            f"{int((~finite.all(axis=1)).sum())} bad samples)."
        )
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStats:
    """Gaussian summary of a feature set, as FID needs it.

    Attributes:
      mean: [F] float64 sample mean.
      cov: [F, F] float64 sample covariance with ddof=1 (`np.cov(features, rowvar=False)`).
      count: number of samples N; 0 when unknown (loaded from a file that does not record it).
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self):
        width = np.shape(self.mean)[0] if np.ndim(self.mean) == 1 else None
        if width is None or np.shape(self.cov) != (width, width):
            raise ValueError(
                f"FeatureStats needs mean [F] and cov [F, F], got mean {np.shape(self.mean)} "
                f"and cov {np.shape(self.cov)}."
            )
        if self.count < 0:
            raise ValueError(f"FeatureStats count must be >= 0 (0 = unknown), got {self.count}.")

    def save(self, path: epath.PathLike) -> None:
        """Writes `mu`, `sigma` and `count` to an `.npz` file at exactly `path` (local or gs://).

        The `mu`/`sigma` keys match pytorch-fid and ADM reference files.
        """
        buffer = io.BytesIO()  # np.savez seeks, which Cloud Storage files cannot
        np.savez(buffer, mu=self.mean, sigma=self.cov, count=np.int64(self.count))
        epath.Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: epath.PathLike, key_suffix: str = "") -> "FeatureStats":
        """Reads statistics from an `.npz` file.

        Args:
          path: a file (local or gs://) written by `save`, by pytorch-fid, or an ADM reference batch.
          key_suffix: appended to `mu`/`sigma`; "_s" reads the spatial (sFID) statistics of
            an ADM reference batch such as `VIRTUAL_imagenet256_labeled.npz`.

        Returns:
          The statistics as float64; count 0 if the file does not record it.

        Raises:
          ValueError: if the keys are missing (the message lists the keys present).
        """
        mean_key, cov_key = f"mu{key_suffix}", f"sigma{key_suffix}"
        with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
            if mean_key not in data or cov_key not in data:
                raise ValueError(
                    f"{os.fspath(path)} lacks keys {mean_key!r}/{cov_key!r}; it has "
                    f"{sorted(data.files)}. Pick key_suffix accordingly ('' or '_s' for ADM)."
                )
            count = int(data["count"]) if "count" in data else 0
            return cls(
                mean=data[mean_key].astype(np.float64),
                cov=data[cov_key].astype(np.float64),
                count=count,
            )


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and ddof=1 covariance of a feature set, in float64.

    Args:
      features: [N, F] with N >= 2.

    Returns:
      FeatureStats equal to `np.mean(features, 0)`, `np.cov(features, rowvar=False)`.

    Raises:
      ValueError: if features is not [N, F] with N >= 2, or has NaN/infinite values.
    """
    array = _checked_features(features, "features", min_rows=2).astype(np.float64)
    return FeatureStats(
        mean=array.mean(axis=0),
        cov=np.atleast_2d(np.cov(array, rowvar=False)),
        count=array.shape[0],
    )


def _merge_moments(
    count_a: int,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    count_b: int,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al. parallel merge of (count, mean [F], centred scatter M2 [F, F])."""
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + np.outer(delta, delta) * (count_a * count_b / count)
    return count, mean, m2


class StatsAccumulator:
    """Streaming `FeatureStats` over batches in float64, without holding all features.

    Each batch is centred on its own mean, then merged with Chan et al.'s update, so there
    is no large-sum cancellation. Memory is O(F^2) whatever the number of batches.

    Example:
      acc = StatsAccumulator()
      for batch in batches:  # each [B, F]
          acc.update(batch)
      stats = acc.result()
    """

    def __init__(self) -> None:
        self._count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of samples seen so far."""
        return self._count

    def update(self, batch: np.ndarray) -> None:
        """Adds a batch.

        Args:
          batch: [B, F] with B >= 1 and the same F as earlier batches.

        Raises:
          ValueError: on a bad shape, a changed F, or NaN/infinite values.
        """
        array = _checked_features(batch, "batch", min_rows=1).astype(np.float64)
        if self._mean is not None and array.shape[1] != self._mean.shape[0]:
            raise ValueError(f"batch has F={array.shape[1]} but earlier batches had F={self._mean.shape[0]}.")
        batch_mean = array.mean(axis=0)
        centred = array - batch_mean
        self.merge(array.shape[0], batch_mean, centred.T @ centred)

    def merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Adds the moments of another set of samples (e.g. another process's `moments()`).

        Args:
          count: number of samples (0: nothing is added).
          mean: [F] their mean.
          m2: [F, F] their centred scatter matrix sum_i (x_i - mean)(x_i - mean)^T.
        """
        if count == 0:
            return
        if self._mean is None or self._m2 is None:
            self._count, self._mean, self._m2 = int(count), np.asarray(mean), np.asarray(m2)
            return
        if np.shape(mean) != self._mean.shape:
            raise ValueError(f"merged moments have F={np.shape(mean)} but earlier ones {self._mean.shape}.")
        self._count, self._mean, self._m2 = _merge_moments(self._count, self._mean, self._m2, count, mean, m2)

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, mean [F], m2 [F, F]) of everything seen, for `merge` elsewhere.

        Raises:
          ValueError: if nothing was seen yet.
        """
        if self._mean is None or self._m2 is None:
            raise ValueError("no samples seen yet.")
        return self._count, self._mean, self._m2

    def result(self) -> FeatureStats:
        """Statistics of everything seen, ddof=1 as `np.cov`.

        Raises:
          ValueError: if fewer than 2 samples were seen.
        """
        if self._count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self._count}.")
        count, mean, m2 = self.moments()
        return FeatureStats(mean=mean.copy(), cov=m2 / (count - 1), count=count)


def _nonnegative(eigenvalues: np.ndarray, name: str) -> np.ndarray:
    """Ascending eigenvalues of a symmetric PSD matrix, rounding below 0 taken as 0.

    Raises:
      ValueError: if one is below -1e-6 x the largest (the matrix is not PSD).
    """
    if eigenvalues[0] < -1e-6 * max(abs(eigenvalues[-1]), 1e-30):
        raise ValueError(
            f"{name} is not positive semi-definite (eigenvalue {eigenvalues[0]:.3g}, largest "
            f"{eigenvalues[-1]:.3g}); pass covariances of feature sets."
        )
    return np.clip(eigenvalues, 0, None)


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """Frechet distance between two Gaussians: the value of pytorch-fid and the ADM evaluator.

    d^2 = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 sqrt(C_a C_b)). Those evaluators take the
    general matrix `sqrtm` of C_a C_b; here, with S = C_a^(1/2), C_a C_b = S (S C_b S) S^-1 is
    similar to the symmetric PSD S C_b S, so Tr sqrt(C_a C_b) is the sum of the square roots
    of its eigenvalues: two symmetric eigendecompositions, real by construction (no complex
    round-off, no diagonal-offset retry for singular products, as with rank-deficient
    covariances of fewer samples than features) and several times faster at F = 2048
    (benchmarks/frechet_distance.py).

    Args:
      stats_a: statistics with mean [F], cov [F, F].
      stats_b: statistics with the same F.

    Returns:
      The squared Frechet distance (FID / sFID on pool3 / spatial features).

    Raises:
      ValueError: if the feature widths differ or a covariance is not PSD.
    """
    if stats_a.mean.shape != stats_b.mean.shape:
        raise ValueError(
            f"feature widths differ: {stats_a.mean.shape[0]} vs {stats_b.mean.shape[0]}; "
            "compare statistics from the same network layer."
        )
    mean_a, mean_b = stats_a.mean.astype(np.float64), stats_b.mean.astype(np.float64)
    cov_a, cov_b = stats_a.cov.astype(np.float64), stats_b.cov.astype(np.float64)
    values, vectors = linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(_nonnegative(values, "the first covariance"))) @ vectors.T
    product = linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(_nonnegative(product, "C_a^(1/2) C_b C_a^(1/2) (the second covariance)")).sum()
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


class InceptionScore(NamedTuple):
    """Mean and standard deviation (ddof=0) of the per-split scores."""

    mean: float
    std: float


def _looks_like_probs(array: np.ndarray) -> bool:
    """Whether every entry is in [0, 1] and every row of [N, C] sums to 1 within 1e-3."""
    in_range = bool(np.all((array >= 0) & (array <= 1)))
    return in_range and bool(np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def inception_score(
    logits_or_probs: np.ndarray, splits: int = 10, *, from_logits: bool | None = None
) -> InceptionScore:
    """Inception Score, exp(E_x[KL(p(y|x) || p(y))]), over `splits` contiguous splits.

    Convention of the original code (`openai/improved-gan` inception_score/model.py):
    split i is rows [i*N//splits, (i+1)*N//splits), p(y) is the split's mean prediction,
    and the result is mean and std over splits. The ADM evaluator computes the same from
    softmax over the logits, with splits of 5000 rows (10 splits for 50k samples) and
    reports only the mean. Shuffle the samples first if their order is class-sorted.

    Args:
      logits_or_probs: [N, C] classifier logits or probabilities; N >= splits.
      splits: number of splits, >= 1.
      from_logits: True applies softmax (float64), False takes rows as probabilities,
        None decides: probabilities iff all entries are in [0, 1] and rows sum to 1.

    Returns:
      InceptionScore(mean, std); between 1 and C.

    Raises:
      ValueError: on bad shapes, too few samples, NaN/inf, or from_logits=False on rows
        that are not probabilities.
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}.")
    array = _checked_features(logits_or_probs, "logits_or_probs", min_rows=splits)
    array = array.astype(np.float64)
    is_probs = _looks_like_probs(array)
    if from_logits is False and not is_probs:
        raise ValueError(
            "from_logits=False but rows are not probabilities (entries in [0, 1], row sums "
            f"in [{array.sum(axis=1).min()}, {array.sum(axis=1).max()}]); pass logits "
            "with from_logits=True."
        )
    probs = special.softmax(array, axis=1) if from_logits or not is_probs else array
    n = probs.shape[0]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]  # [N/splits, C]
        marginal = part.mean(axis=0, keepdims=True)  # [1, C]
        kl = special.rel_entr(part, marginal).sum(axis=1)  # [N/splits]
        scores.append(np.exp(kl.mean()))
    return InceptionScore(mean=float(np.mean(scores)), std=float(np.std(scores)))


class PrecisionRecall(NamedTuple):
    """Improved precision (fake inside real manifold) and recall (real inside fake)."""

    precision: float
    recall: float


def _sq_dists_to(point: jax.Array, points: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Squared distances from point [F] to points [N, F] with norms [N], clamped >= 0 -> [N]."""
    dots = jnp.matmul(points, point, precision=_HIGHEST)
    return jnp.maximum(sq_norms - 2.0 * dots + jnp.dot(point, point, precision=_HIGHEST), 0.0)


@functools.partial(jax.jit, static_argnames=("k", "batch_size"))
def _knn_sq_radii(points: jax.Array, k: int, batch_size: int) -> jax.Array:
    """Squared distance from each of points [N, F] to its k-th nearest other point -> [N]."""
    sq_norms = jnp.sum(points * points, axis=1)
    indices = jnp.arange(points.shape[0])

    def one_row(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        index, point = args
        sq_dists = jnp.where(indices == index, jnp.inf, _sq_dists_to(point, points, sq_norms))
        neg_nearest, _ = jax.lax.top_k(-sq_dists, k)  # [k], nearest first
        # min, not [k - 1]: indexing top_k's output falls onto a ~50x slower path on XLA:CPU.
        return -jnp.min(neg_nearest)

    return jax.lax.map(one_row, (indices, points), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames="batch_size")
def _inside_balls(queries: jax.Array, centres: jax.Array, sq_radii: jax.Array, batch_size: int) -> jax.Array:
    """Whether each of queries [Q, F] is within some ball (centres [N, F], radii^2 [N]) -> [Q]."""
    sq_norms = jnp.sum(centres * centres, axis=1)

    def one_row(query: jax.Array) -> jax.Array:
        return jnp.any(_sq_dists_to(query, centres, sq_norms) <= sq_radii)

    return jax.lax.map(one_row, queries, batch_size=batch_size)


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 3, batch_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019), as in the ADM evaluator.

    Each real sample gets a ball whose radius is the distance to its k-th nearest other
    real sample; precision is the fraction of fake samples inside at least one real ball
    (distance <= radius). Recall swaps the roles. Runs in float32 under `jax.jit` on the
    default device, `batch_size` query rows at a time, so peak memory is about
    batch_size x max(N_real, N_fake) floats, never N x N.

    Args:
      real_features: [N_real, F], N_real > k.
      fake_features: [N_fake, F], N_fake > k.
      k: neighbourhood size, >= 1 (3 in the paper and ADM).
      batch_size: query rows per block of pairwise distances, >= 1.

    Returns:
      PrecisionRecall(precision, recall), each in [0, 1].

    Raises:
      ValueError: on bad k or batch_size, too few samples, differing F, or NaN/inf.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}.")
    checked_real = _checked_features(real_features, "real_features", min_rows=k + 1)
    checked_fake = _checked_features(fake_features, "fake_features", min_rows=k + 1)
    if checked_real.shape[1] != checked_fake.shape[1]:
        raise ValueError(
            f"feature widths differ: real F={checked_real.shape[1]}, fake F={checked_fake.shape[1]}; "
            "use the same network layer for both."
        )
    real = jnp.asarray(checked_real, jnp.float32)
    fake = jnp.asarray(checked_fake, jnp.float32)
    real_sq_radii = _knn_sq_radii(real, k, batch_size)
    fake_sq_radii = _knn_sq_radii(fake, k, batch_size)
    fakes_inside = int(jnp.sum(_inside_balls(fake, real, real_sq_radii, batch_size)))
    reals_inside = int(jnp.sum(_inside_balls(real, fake, fake_sq_radii, batch_size)))
    return PrecisionRecall(precision=fakes_inside / fake.shape[0], recall=reals_inside / real.shape[0])


# ---------------------------------------------------------------------------------------
# Bootstrap over the generated samples: R resamples of N rows with replacement, each a
# vector of counts [N] (summing to N), so statistics become weighted sums of per-row terms.


def bootstrap_counts(num_rows: int, resamples: int, seed: int = 0) -> np.ndarray:
    """How often each row is drawn in each of `resamples` bootstrap resamples.

    Args:
      num_rows: N, rows of the set resampled (>= 1).
      resamples: R (>= 1).
      seed: NumPy generator seed (fixed: reruns give the same standard errors).

    Returns:
      [R, N] int64 counts, each row summing to N.
    """
    if num_rows < 1 or resamples < 1:
        raise ValueError(f"num_rows and resamples must be >= 1, got {num_rows} and {resamples}.")
    rows = np.random.default_rng(seed).integers(0, num_rows, size=(resamples, num_rows))
    return np.stack([np.bincount(r, minlength=num_rows) for r in rows])


def weighted_stats(features: np.ndarray, counts: np.ndarray) -> FeatureStats:
    """`feature_stats` of the multiset taking row i `counts[i]` times, without copying rows.

    Args:
      features: [N, F].
      counts: [N] nonnegative integers, sum >= 2.
    """
    x = _checked_features(features, "features", min_rows=1).astype(np.float64)
    w = np.asarray(counts, np.float64)
    total = w.sum()
    if w.shape != (len(x),) or total < 2:
        raise ValueError(f"counts must be [N={len(x)}] summing to >= 2, got shape {w.shape}, sum {total}.")
    mean = w @ x / total
    centred = x - mean
    return FeatureStats(mean=mean, cov=(centred.T * w) @ centred / (total - 1), count=int(total))


def bootstrap_frechet(reference: FeatureStats, features: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`frechet_distance(reference, weighted_stats(features, c))` for each resample c.

    The reference's square root is computed once; each resample costs one weighted
    covariance and one symmetric eigenvalue problem.

    Args:
      reference: statistics of the real set, mean [F].
      features: [N, F] generated features.
      counts: [R, N] from `bootstrap_counts`.

    Returns:
      [R] squared Frechet distances.
    """
    values, vectors = linalg.eigh(reference.cov.astype(np.float64))
    root = (vectors * np.sqrt(_nonnegative(values, "the reference covariance"))) @ vectors.T
    out = []
    for c in counts:
        stats = weighted_stats(features, c)
        product = linalg.eigvalsh(root @ stats.cov @ root)
        trace_sqrt = np.sqrt(_nonnegative(product, "C_ref^(1/2) C C_ref^(1/2)")).sum()
        diff = reference.mean - stats.mean
        out.append(diff @ diff + np.trace(reference.cov) + np.trace(stats.cov) - 2 * trace_sqrt)
    return np.asarray(out)


def precision_indicators(
    real_features: np.ndarray, fake_features: np.ndarray, k: int = 3, batch_size: int = 1024
) -> np.ndarray:
    """Whether each fake sample lies in a real k-NN ball: [N_fake] bool, whose mean is
    `precision_recall(...).precision` (so a bootstrap over fakes is a weighted mean).

    Args:
      real_features: [N_real, F], N_real > k.
      fake_features: [N_fake, F].
    """
    real = jnp.asarray(_checked_features(real_features, "real_features", min_rows=k + 1), jnp.float32)
    fake = jnp.asarray(_checked_features(fake_features, "fake_features", min_rows=1), jnp.float32)
    return np.asarray(_inside_balls(fake, real, _knn_sq_radii(real, k, batch_size), batch_size))


def standard_error(values: npt.ArrayLike) -> float:
    """Bootstrap standard error: the ddof=1 standard deviation of the resampled values [R]
    (0 for a single resample)."""
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0
