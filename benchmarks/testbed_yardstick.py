"""The testbeds' yardstick: which metric can tell a native image from a resized one?

For each testbed (procedural `smooth` and `detailed` scenes, `photos` crops) it takes two
disjoint sets of real validation images at `--side` pixels, A and B, and B's examples at
half the side, bicubic-upsampled to `--side` (uint8, as evaluation's `train_resized` row
does). It prints, for each metric, A vs B (the floor: two samples of the same real
distribution) and A vs resized B (what resizing costs). A metric can judge resolution
generalization only where the second is far above the first. Metrics:
- `classifier FD`: Frechet distance on the procedural-scenes classifier's pool features
  (the embedded default's "FID"; `--classifier=DIR` from `python -m rpe_jax.train_classifier`).
- `MobileNetV2 FD`: Frechet distance on ImageNet MobileNetV2 features (`--mobilenet=PATH`,
  the nsfwjs@4.3.0 package; skipped when not given).
- `spectral distance` and `HF ratio` (power above the half side's Nyquist relative to A's):
  `rpe_jax.spectrum`.

  python -m benchmarks.testbed_yardstick --classifier=/tmp/classifier [--mobilenet=PATH --count=500]
"""

import argparse

import numpy as np
from PIL import Image

from rpe_jax import feature_extractor, metrics, spectrum
from rpe_jax.data import photos, procedural


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    """float [N, h, w, 3] in [0, 1] -> uint8 -> bicubic to side x side -> float [N, side, side, 3]."""
    out = []
    for image in images:
        pixels = Image.fromarray(np.round(image * 255).astype(np.uint8))
        out.append(np.asarray(pixels.resize((side, side), Image.Resampling.BICUBIC)))
    return np.stack(out).astype(np.float32) / 255


def _quantised(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255).astype(np.uint8).astype(np.float32) / 255


def testbed_sets(name: str, count: int, side: int) -> dict[str, np.ndarray]:
    """{"a", "b", "b_resized"}: [count, side, side, 3] float in [0, 1] of testbed `name`."""
    if name == "photos":
        source = photos.PhotoSource(photos.DEFAULT_DIR, "validation", (side, side), 2 * count)
        render = lambda indices, s: np.stack([source.example(i, s, s)["image"] for i in indices])  # noqa: E731
    else:
        scenes = procedural.ProceduralScenes(10, seed=0, split="validation", style=name)
        render = lambda indices, s: scenes.render_batch(indices, s, s)  # noqa: E731
    a, b = range(count), range(count, 2 * count)
    return {
        "a": _quantised(render(a, side)),
        "b": _quantised(render(b, side)),
        "b_resized": _resized(render(b, side // 2), side),
    }


def _frechet(extract, a: np.ndarray, b: np.ndarray) -> float:
    return metrics.frechet_distance(
        metrics.feature_stats(extract(a).pool), metrics.feature_stats(extract(b).pool)
    )


def yardstick(sets: dict[str, np.ndarray], extractors: dict, side: int) -> dict[str, tuple[float, float]]:
    """metric -> (A vs B, A vs resized B)."""
    out = {}
    for label, extract in extractors.items():
        out[label] = (
            _frechet(extract, sets["a"], sets["b"]),
            _frechet(extract, sets["a"], sets["b_resized"]),
        )
    powers = {key: spectrum.band_powers(images) for key, images in sets.items()}
    out["spectral distance"] = (
        spectrum.spectral_distance(powers["a"], powers["b"]),
        spectrum.spectral_distance(powers["a"], powers["b_resized"]),
    )
    cutoff = spectrum.nyquist_cutoff(side // 2, side)
    out["HF ratio (1 = real)"] = (
        spectrum.high_frequency_ratio(powers["a"], powers["b"], cutoff),
        spectrum.high_frequency_ratio(powers["a"], powers["b_resized"], cutoff),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True, help="a train_classifier workdir")
    parser.add_argument("--mobilenet", default="", help="the nsfwjs@4.3.0 package (.tgz or folder)")
    parser.add_argument("--count", type=int, default=500, help="images per set")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--testbeds", default="smooth,detailed,photos")
    args = parser.parse_args()
    extractors = {"classifier FD": feature_extractor.load("classifier", args.classifier)}
    if args.mobilenet:
        extractors["MobileNetV2 FD"] = feature_extractor.load("mobilenet_v2", args.mobilenet)
    side, half = args.side, args.side // 2
    print(f"real {side} px (A) vs real {side} px (B) and vs B rendered at {half} px, resized")
    print(f"{args.count} validation images per set\n")
    print("| testbed | metric | A vs B (floor) | A vs resized B | resized / floor |")
    print("|---|---|---|---|---|")
    for name in args.testbeds.split(","):
        scores = yardstick(testbed_sets(name, args.count, args.side), extractors, args.side)
        for metric, (floor, resized) in scores.items():
            ratio = "" if metric.startswith("HF") else f"{resized / max(floor, 1e-12):.1f}x"
            print(f"| {name} | {metric} | {floor:.4g} | {resized:.4g} | {ratio} |")


if __name__ == "__main__":
    main()
