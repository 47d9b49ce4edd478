"""Time of `metrics.frechet_distance` against pytorch-fid's `calculate_frechet_distance`.

Both get the same two feature statistics: `--samples` correlated Gaussian features of width
`--width` each (2048: Inception pool3, and the classifier's spatial features for sFID; 500
samples, fewer than the width, gives the rank-deficient covariances of the results page).
pytorch-fid takes the general `scipy.linalg.sqrtm` of C_a C_b; ours two symmetric
eigendecompositions. Calls alternate so drift affects both; prints medians, the ratio and
the relative difference of the two values.

  python -m benchmarks.frechet_distance [--width=2048 --samples=500 --repeats=3]
"""

import argparse
import statistics
import time
import warnings

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from rpe_jax import metrics


def gaussian_features(seed: int, samples: int, width: int, shift: float) -> np.ndarray:
    """[samples, width] correlated Gaussian features with mean `shift`."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(width, width)) / np.sqrt(width)
    return rng.normal(size=(samples, width)) @ mixing + shift


def pytorch_fid(a: metrics.FeatureStats, b: metrics.FeatureStats) -> float:
    with warnings.catch_warnings():  # pytorch-fid passes sqrtm(disp=False): deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(calculate_frechet_distance(a.mean, a.cov, b.mean, b.cov))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    a = metrics.feature_stats(gaussian_features(0, args.samples, args.width, 0.0))
    b = metrics.feature_stats(gaussian_features(1, args.samples, args.width, 0.1))
    functions = {"ours": metrics.frechet_distance, "pytorch-fid": pytorch_fid}
    times: dict[str, list[float]] = {name: [] for name in functions}
    values = {}
    for _ in range(args.repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            values[name] = fn(a, b)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"Frechet distance, width {args.width}, {args.samples} samples per set, {args.repeats} runs")
    for name, m in med.items():
        print(f"  {name:12s} median {m:8.2f} s   value {values[name]:.6f}")
    diff = abs(values["ours"] - values["pytorch-fid"]) / abs(values["pytorch-fid"])
    print(
        f"ratio pytorch-fid / ours = {med['pytorch-fid'] / med['ours']:.2f}; relative difference {diff:.1e}"
    )


if __name__ == "__main__":
    main()
