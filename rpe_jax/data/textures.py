"""Fine periodic textures for the procedural scenes' detailed style: gratings and stripes
of fixed physical frequency, rendered as exact pixel-area averages.

Legend: H image height, W image width (pixels); points on the unit square, x right, y down.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grating:
    """A fine periodic structure: a sinusoid, or a sharper stripe pattern of odd harmonics.

    `g(p) = sum_{n = 1, 3, ..., 2 harmonics - 1} sin(n (2 pi f . p + phase)) / n` at point p,
    times `amplitude`: harmonics 1 is a smooth grating, 3 a square-ish stripe pattern
    (the first terms of a square wave's series).

    Attributes:
      frequency: (fx, fy) cycles per unit length; fixed in the scene, so a render shows it
        exactly when its pixels are small enough, at any resolution.
      phase: radians.
      amplitude: relative brightness modulation.
      harmonics: number of odd harmonics, >= 1.
    """

    frequency: tuple[float, float]
    phase: float
    amplitude: float
    harmonics: int = 1


Texture = tuple[Grating, ...]


def render_texture(texture: Texture, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel-area averages of a non-empty texture: x: [1, W], y: [H, 1] -> [H, W] float32.

    The average of `sin(2 pi (fx x + fy y) + c)` over a pixel of size (1/W, 1/H) centred at
    (x, y) is its centre value times `sinc(fx / W) sinc(fy / H)` (np.sinc, normalised): each
    harmonic is box-filtered exactly, so a render has no aliasing beyond the box filter's own,
    and box-downsampling a 2x render by 2 gives the 1x render. All G harmonics at once, in
    float64 (phases reach ~10^3 radians): `sin(a + b) = sin a cos b + cos a sin b` with
    a: [W, G] and b: [H, G] makes the sum over G two [H, G] @ [G, W] products.
    """
    fx, fy, phase, weight = np.array(
        [
            (n * g.frequency[0], n * g.frequency[1], n * g.phase, g.amplitude / n)
            for g in texture
            for n in range(1, 2 * g.harmonics, 2)
        ]
    ).T  # each [G]; frequencies in cycles per unit
    weight = weight * np.sinc(fx / x.shape[1]) * np.sinc(fy / y.shape[0])
    a = (2.0 * math.pi) * x.reshape(-1, 1).astype(np.float64) * fx + phase  # [W, G]
    b = (2.0 * math.pi) * y.reshape(-1, 1).astype(np.float64) * fy  # [H, G]
    total = (np.cos(b) * weight) @ np.sin(a).T + (np.sin(b) * weight) @ np.cos(a).T
    return total.astype(np.float32)


def draw_texture(
    rng: np.random.Generator, count: int, cycles: tuple[float, float], amplitude: tuple[float, float]
) -> Texture:
    """`count` gratings, frequencies log-uniform in `cycles` (per unit length), any direction,
    a third of them sharp stripes (3 odd harmonics)."""
    magnitude = np.exp(rng.uniform(math.log(cycles[0]), math.log(cycles[1]), size=count))
    direction = rng.uniform(0.0, math.pi, size=count)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=count)
    amplitudes = rng.uniform(*amplitude, size=count)
    stripes = rng.random(count) < 1 / 3
    return tuple(
        Grating((float(f * math.cos(d)), float(f * math.sin(d))), float(p), float(a), 3 if sharp else 1)
        for f, d, p, a, sharp in zip(magnitude, direction, phases, amplitudes, stripes, strict=True)
    )
