"""Spectral statistics of image sets: how much fine detail generated images hold.

A resized image has the right colours and layout but little power above the Nyquist
frequency of the size it was generated at; feature-space distances of networks trained to
tell classes apart hardly see that. These statistics compare the radially averaged power
spectra of a generated and a real set at one resolution.

Per image (`band_powers`): subtract the per-channel mean, multiply by a separable Hann
window (no leakage from the image border's discontinuity), take |FFT|^2, average it over
channels and over the frequencies in each radial band. Radial frequency is
`rho = sqrt(f_y^2 + f_x^2)` in cycles per pixel, `f` in [-0.5, 0.5); the bands split
(0, 0.5] evenly into half-open rings (lo, hi], by default one per frequency step of the
shorter side (the corners beyond 0.5, present only along diagonals, are left out so
every band is a full ring). Everything is per image first, so a bootstrap over images is a
row resampling of the [N, K] band powers.

Legend: N, M images; H x W image; C channels; K bands.
"""

import numpy as np


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape) < 1 or min(images.shape[1:3]) < 4:
        raise ValueError(
            f"{name} must be images [N, H, W, C] with N >= 1 and H, W >= 4, got shape {images.shape}."
        )
    return images.astype(np.float64)


def radial_frequency(height: int, width: int) -> np.ndarray:
    """Radial frequency of each FFT bin, cycles per pixel: [H, W] in [0, 0.5 sqrt(2)]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return np.sqrt(fy**2 + fx**2)


def default_bands(height: int, width: int) -> int:
    """One band per frequency step of the shorter side: min(H, W) // 2."""
    return max(1, min(height, width) // 2)


def band_edges(num_bands: int) -> np.ndarray:
    """[K + 1] edges of the radial bands in cycles per pixel, evenly from 0 to 0.5."""
    if num_bands < 1:
        raise ValueError(f"num_bands must be >= 1, got {num_bands}.")
    return np.linspace(0.0, 0.5, num_bands + 1)


def band_powers(images: np.ndarray, num_bands: int | None = None) -> np.ndarray:
    """Radially averaged power spectrum of each image.

    Args:
      images: [N, H, W, C] float in [0, 1].
      num_bands: K, bands of `band_edges(K)`; None: `default_bands(H, W)`.

    Returns:
      [N, K] float64: the mean power of the frequencies in each band (the DC bin excluded).

    Raises:
      ValueError: images of the wrong rank or smaller than 4 x 4 pixels.
    """
    x = _check_images(images, "images")
    _, h, w, _ = x.shape
    x = x - x.mean(axis=(1, 2), keepdims=True)
    window = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    power = (np.abs(np.fft.fft2(x * window[..., None], axes=(1, 2))) ** 2).mean(-1)  # [N, H, W]
    num_bands = default_bands(h, w) if num_bands is None else num_bands
    rho = radial_frequency(h, w)
    edges = band_edges(num_bands)
    band = np.digitize(rho, edges[1:-1], right=True)  # [H, W] in 0 .. K - 1: (lo, hi]
    inside = (rho > 0) & (rho <= 0.5)
    out = np.empty((len(x), num_bands))
    for k in range(num_bands):
        mask = inside & (band == k)
        if not mask.any():
            raise ValueError(
                f"band {k} of {num_bands} holds no frequency of a {h}x{w} image; use fewer bands."
            )
        out[:, k] = power[:, mask].mean(-1)
    return out


def _check_powers(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1] or not len(real):
        raise ValueError(
            f"band powers must be [N, K] and [M, K] with equal K, got {real.shape} and {generated.shape}."
        )
    return real, generated


def spectral_distance(real: np.ndarray, generated: np.ndarray) -> float:
    """Mean over bands of the squared log ratio of the sets' mean band powers (0: equal).

    Args:
      real: [N, K] band powers of the real images.
      generated: [M, K] band powers of the generated images, same resolution and bands.
    """
    real, generated = _check_powers(real, generated)
    ratio = np.log(generated.mean(0) + 1e-20) - np.log(real.mean(0) + 1e-20)
    return float(np.mean(ratio**2))


def nyquist_cutoff(train_side: int, test_side: int) -> float:
    """The training resolution's Nyquist frequency seen in a test image: cycles per pixel.

    A sample generated at `train_side` pixels and resized to `test_side` holds (almost) no
    power above `0.5 * train_side / test_side` cycles per pixel of the test image.
    """
    if train_side < 1 or test_side < 1:
        raise ValueError(f"sides must be >= 1, got train_side={train_side}, test_side={test_side}.")
    return 0.5 * train_side / test_side


def high_frequency_share(powers: np.ndarray, cutoff: float) -> float:
    """Share of a set's power in the bands above `cutoff` cycles per pixel.

    Args:
      powers: [N, K] band powers (bands of `band_edges(K)`).
      cutoff: cycles per pixel in (0, 0.5); bands whose lower edge is at or above it count.

    Returns:
      The share in [0, 1]; 0 for a set with no power at all (flat images hold no detail).

    Raises:
      ValueError: powers not [N, K] with N, K >= 1, or cutoff outside (0, 0.5).
    """
    powers = np.asarray(powers, np.float64)
    if powers.ndim != 2 or min(powers.shape) < 1:
        raise ValueError(f"band powers must be [N, K] with N, K >= 1, got shape {powers.shape}.")
    if not 0.0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}.")
    edges = band_edges(powers.shape[1])
    # Each band's mean power times its ring area (~ its mid radius) gives its total power.
    mids = 0.5 * (edges[1:] + edges[:-1])
    total = powers.mean(0) * mids
    if not total.sum() > 0.0:
        return 0.0
    return float(total[edges[:-1] >= cutoff - 1e-9].sum() / total.sum())


def high_frequency_ratio(real: np.ndarray, generated: np.ndarray, cutoff: float) -> float:
    """`high_frequency_share` of the generated set over that of the real one (1: as detailed
    as real images; samples resized from below `cutoff` score far below 1).

    Args:
      real: [N, K] band powers of the real images.
      generated: [M, K] band powers of the generated images, same resolution and bands.
      cutoff: cycles per pixel in (0, 0.5), e.g. `nyquist_cutoff(train_side, test_side)`.

    Raises:
      ValueError: bad shapes or cutoff, or no real power above `cutoff` (no band starts
        at or above it, or flat real images).
    """
    real, generated = _check_powers(real, generated)
    real_share = high_frequency_share(real, cutoff)
    if real_share == 0.0:
        raise ValueError(f"the real images have no power in the bands above cutoff={cutoff}.")
    return high_frequency_share(generated, cutoff) / real_share
