"""How much detail a testbed has beyond the half-size render: spectral energy above Nyquist.

For each procedural style, renders the same validation scenes at `--side` pixels and at half
that side, upsamples the half-size renders (bicubic) back to `--side`, and prints the share of
spectral power above the half-size Nyquist frequency (0.25 cycles per pixel at the full side)
in each set (`rpe_jax.spectrum.high_frequency_share`), and their ratio. A testbed on which
a native high-resolution sample can beat a resized one needs the first share clearly larger.
Also prints each style's render time per image (scene draw included, best of 3 runs) at
`--side` and twice it.

  python -m benchmarks.testbed_detail [--scenes=500 --side=32]
"""

import argparse
import math
import time

import numpy as np
from PIL import Image

from rpe_jax import spectrum
from rpe_jax.data import procedural


def upsample(images: np.ndarray, side: int) -> np.ndarray:
    """[N, h, w, 3] float in [0, 1] -> [N, side, side, 3], bicubic per channel, clipped."""
    return np.stack(
        [
            np.stack(
                [
                    np.asarray(Image.fromarray(im[..., c]).resize((side, side), Image.Resampling.BICUBIC))
                    for c in range(3)
                ],
                -1,
            )
            for im in images
        ]
    ).clip(0.0, 1.0)


def detail_shares(style: str, scenes: int, side: int) -> tuple[float, float]:
    """(share above the half-size Nyquist in native renders, the same in upsampled half-size renders)."""
    source = procedural.ProceduralScenes(10, seed=0, split="validation", style=style)
    native = source.render_batch(range(scenes), side, side)
    resized = upsample(source.render_batch(range(scenes), side // 2, side // 2), side)
    cutoff = spectrum.nyquist_cutoff(side // 2, side)
    return (
        spectrum.high_frequency_share(spectrum.band_powers(native), cutoff),
        spectrum.high_frequency_share(spectrum.band_powers(resized), cutoff),
    )


def render_ms(style: str, scenes: int, side: int, repeats: int = 3) -> float:
    """Milliseconds per image to draw and render `scenes` validation scenes at side x side,
    the best of `repeats` runs (the CPUs may be shared)."""
    source = procedural.ProceduralScenes(10, seed=0, split="validation", style=style)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        source.render_batch(range(scenes), side, side)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--side", type=int, default=32)
    args = parser.parse_args()
    half = args.side // 2
    print(f"share of spectral power above the {half} px Nyquist at {args.side} px, {args.scenes} scenes")
    sides = (args.side, 2 * args.side)
    header = f"ms/image at {sides[0]}, {sides[1]} px"
    print(f"| style | native | half-size, upsampled | native / upsampled | {header} |")
    print("|---|---|---|---|---|")
    for style in procedural.STYLES:
        native, resized = detail_shares(style, args.scenes, args.side)
        times = ", ".join(f"{render_ms(style, args.scenes, s):.2f}" for s in sides)
        print(f"| {style} | {native:.4f} | {resized:.4f} | {native / resized:.1f}x | {times} |")


if __name__ == "__main__":
    main()
