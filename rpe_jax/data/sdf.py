"""Signed distance functions of the procedural scenes' shapes (negative inside).

Each takes x, y in a shape's frame, in units of its radius, broadcast to [H, W], and returns
[H, W] with |gradient| ~ 1. `SDFS` is the registry: name -> function(x, y, params).
"""

import math
from collections.abc import Callable

import numpy as np

# Signed distance functions in a shape's frame, in units of its radius: x, y broadcast
# to [H, W]; each returns [H, W] with |gradient| ~ 1.


def _box_sdf(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    dx = np.abs(x) - half_w
    dy = np.abs(y) - half_h
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return outside + np.minimum(np.maximum(dx, dy), 0.0)


def _star_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Star with n points (params (n, m), 2 <= m <= n; m = 2 is a regular n-gon).

    Circumradius 1, one vertex pointing up (-y). After Inigo Quilez's `sdStar`.
    """
    n, m = params
    an, en = math.pi / n, math.pi / m
    acs, ecs = (math.cos(an), math.sin(an)), (math.cos(en), math.sin(en))
    bn = np.mod(np.arctan2(x, -y), 2.0 * an) - an
    r = np.hypot(x, y)
    px = r * np.cos(bn) - acs[0]
    py = r * np.abs(np.sin(bn)) - acs[1]
    t = np.clip(-(px * ecs[0] + py * ecs[1]), 0.0, acs[1] / ecs[1])
    px = px + ecs[0] * t
    py = py + ecs[1] * t
    return np.hypot(px, py) * np.sign(px)


def _square_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Axis-aligned square of circumradius 1 (half-side sqrt(1/2))."""
    del params
    return _box_sdf(x, y, math.sqrt(0.5), math.sqrt(0.5))


def _disc_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Unit disc; no params."""
    del params
    return np.hypot(x, y) - 1.0


def _ring_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Annulus of outer radius 1; params (thickness,)."""
    (thickness,) = params
    return np.abs(np.hypot(x, y) - 1.0 + 0.5 * thickness) - 0.5 * thickness


def _cross_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Plus sign with arms of half-length 1; params (arm half-width,)."""
    (arm,) = params
    return np.minimum(_box_sdf(x, y, 1.0, arm), _box_sdf(x, y, arm, 1.0))


def _crescent_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Unit disc minus a disc at (offset, 0); params (offset, cut radius)."""
    offset, cut = params
    return np.maximum(np.hypot(x, y) - 1.0, cut - np.hypot(x - offset, y))


def _heart_sdf(x: np.ndarray, y: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """Heart about 2.2 wide and 2 tall, tip down. After Inigo Quilez's `sdHeart`."""
    del params
    scale = 0.55
    qx = np.abs(x) * scale
    qy = (1.0 - y) * scale
    lobe = np.hypot(qx - 0.25, qy - 0.75) - math.sqrt(2.0) / 4.0
    t = 0.5 * np.maximum(qx + qy, 0.0)
    body = np.sqrt(np.minimum(qx**2 + (qy - 1.0) ** 2, (qx - t) ** 2 + (qy - t) ** 2))
    return np.where(qx + qy > 1.0, lobe, body * np.sign(qx - qy)) / scale


SDFS: dict[str, Callable[[np.ndarray, np.ndarray, tuple[float, ...]], np.ndarray]] = {
    "disc": _disc_sdf,
    "square": _square_sdf,
    "star": _star_sdf,
    "ring": _ring_sdf,
    "cross": _cross_sdf,
    "crescent": _crescent_sdf,
    "heart": _heart_sdf,
}
