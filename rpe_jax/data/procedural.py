"""Procedural scenes: an embedded, multi-resolution, class-conditional image dataset.

Every image is rendered analytically from an integer index at any resolution, so each
scene exists at the training resolution and at every test resolution: real
high-resolution ground truth for resolution-generalization experiments, with nothing to
download.

Scene model. A scene lives on the unit square, `x` to the right (columns), `y` down
(rows). The class fixes what is drawn (a shape kind, or a layout of several shapes); the
index randomises the rest: colours, size, position, a tilt of up to ~23 degrees, counts
within the class's range, pattern phases, a shading direction, and a smooth background
(a brightness gradient plus three low-frequency sinusoids). Shapes are bright and
saturated, backgrounds dark and muted, so each class reads at 32 px and even at 16 px.

Styles (`STYLES`, config.data.procedural_style). "smooth" is the look above (the recorded
results). "detailed" draws the same layout and adds fine structure whose physical frequency
is fixed, from 4 to 64 cycles per unit (`DETAIL_CYCLES`): gratings and sharp stripes
(`textures.Grating`) modulating the background's and each shape's brightness, so a 32 px render shows
detail that a 16 px render averages away, and a 64 px one detail beyond that
(docs/assets/detailed_scenes.png). Gratings are box-filtered analytically over each pixel.

Rendering. Pixel `(i, j)` of an `H x W` image samples the point
`((j + 0.5) / W, (i + 0.5) / H)`: a non-square image shows the same scene with the unit
square stretched. Edges are anti-aliased from signed distance functions (SDFs, negative
inside): `coverage = clip(0.5 - sdf / pixel, 0, 1)` with `pixel = max(1 / H, 1 / W)`, so
a 64-px render box-downsampled by 2 matches the 32-px render. Arithmetic is float32 (the
gratings float64, then cast); renders are bit-identical across processes on one
machine (across CPU types the last bit of `sin` may differ).

Determinism and splits. Scene parameters come from
`np.random.default_rng([seed, SPLITS[split], index])`. `label = index % num_classes`, so
labels are exactly balanced over any `num_classes` consecutive indices. The index space is
unbounded (`index >= 0`); "train" and "validation" draw from different seed streams, so
their scenes are disjoint (with probability one) while index `i` has the same label in
both.

Shape legend: H image height, W image width (pixels), B batch.
"""

import colorsys
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from rpe_jax.data import sdf, textures

# Split name -> seed stream.
SPLITS = {"train": 0, "validation": 1}

Color = tuple[float, float, float]
# (x, y) brightness gain per radius of offset from a shape's centre.
Shade = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A second colour painted inside a shape, in the shape's rotated frame.

    Attributes:
      kind: "stripes" (bands across the frame's u axis) or "checker".
      color: (r, g, b) in [0, 1].
      cell: width of one stripe or checker cell, in unit-square lengths.
      angle: rotation of the pattern relative to the shape, radians.
      offset: (u, v) shift of the pattern, unit-square lengths.
    """

    kind: str
    color: Color
    cell: float
    angle: float
    offset: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape on the unit square.

    Attributes:
      sdf: name of its distance function in `sdf.SDFS`.
      center: (x, y) in unit-square coordinates.
      radius: scale; the shape fits in a disc of about this radius.
      angle: rotation, radians, clockwise on screen (y points down).
      params: parameters of the distance function, in units of `radius`.
      color: (r, g, b) in [0, 1], before shading.
      shade: (x, y) brightness gain per `radius` of offset from the centre (lighting).
      pattern: optional second colour inside the shape.
      texture: fine structure modulating the shape's brightness (detailed style).
    """

    sdf: str
    center: tuple[float, float]
    radius: float
    angle: float
    params: tuple[float, ...]
    color: Color
    shade: Shade
    pattern: Pattern | None = None
    texture: textures.Texture = ()


@dataclasses.dataclass(frozen=True)
class Background:
    """A smooth background, `color * (1 + gradient . (p - 0.5)) + waves` at point p.

    Attributes:
      color: (r, g, b) mean colour.
      gradient: (x, y) relative brightness change across the unit square.
      frequencies: K (fx, fy) wave frequencies, cycles per unit length.
      phases: K wave phases, radians.
      amplitudes: K (r, g, b) wave amplitudes.
      texture: fine structure modulating the brightness (detailed style).
    """

    color: Color
    gradient: tuple[float, float]
    frequencies: tuple[tuple[float, float], ...]
    phases: tuple[float, ...]
    amplitudes: tuple[Color, ...]
    texture: textures.Texture = ()


@dataclasses.dataclass(frozen=True)
class SceneParams:
    """Everything needed to render one scene, at any resolution."""

    label: int
    kind: str
    background: Background
    shapes: tuple[Shape, ...]


def _pattern_sdf(kind: str, u: np.ndarray, v: np.ndarray, cell: float) -> np.ndarray:
    """Distance to the nearest cell line, negative on even cells. u, v: [H, W]."""
    dist = np.abs(u - cell * np.round(u / cell))
    parity = np.floor(u / cell)
    if kind == "checker":
        dist = np.minimum(dist, np.abs(v - cell * np.round(v / cell)))
        parity = parity + np.floor(v / cell)
    return np.where(np.mod(parity, 2.0) == 0.0, -dist, dist)


def _coverage(sdf: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a distance field in unit-square lengths."""
    return np.clip(0.5 - sdf / pixel, 0.0, 1.0)


def _render_background(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x: [1, W], y: [H, 1] pixel centres -> [H, W, 3] float32."""
    gx, gy = background.gradient
    brightness = 1.0 + gx * (x - 0.5) + gy * (y - 0.5)  # [H, W]
    if background.texture:
        brightness = brightness + textures.render_texture(background.texture, x, y)
    image = brightness[..., None] * np.asarray(background.color, np.float32)
    freqs = 2.0 * math.pi * np.asarray(background.frequencies, np.float32)  # [K, 2]
    phases = x[..., None] * freqs[:, 0] + y[..., None] * freqs[:, 1]  # [H, W, K]
    waves = np.sin(phases + np.asarray(background.phases, np.float32))
    return image + waves @ np.asarray(background.amplitudes, np.float32)


def _paint_shape(image: np.ndarray, shape: Shape, x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """Composites `shape` over image [H, W, 3]; x: [1, W], y: [H, 1] -> [H, W, 3]."""
    dx, dy = x - shape.center[0], y - shape.center[1]
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    lx = (cos * dx + sin * dy) / shape.radius  # [H, W], shape frame
    ly = (cos * dy - sin * dx) / shape.radius
    alpha = _coverage(sdf.SDFS[shape.sdf](lx, ly, shape.params) * shape.radius, pixel)
    shading = (1.0 + (shape.shade[0] * dx + shape.shade[1] * dy) / shape.radius)[..., None]
    if shape.texture:
        shading = shading + textures.render_texture(shape.texture, x, y)[..., None]
    color = shading * np.asarray(shape.color, np.float32)  # [H, W, 3]
    if shape.pattern is not None:
        pat = shape.pattern
        pcos, psin = math.cos(pat.angle), math.sin(pat.angle)
        u = (pcos * lx + psin * ly) * shape.radius + pat.offset[0]
        v = (pcos * ly - psin * lx) * shape.radius + pat.offset[1]
        mix = _coverage(_pattern_sdf(pat.kind, u, v, pat.cell), pixel)[..., None]
        color = color + mix * (shading * np.asarray(pat.color, np.float32) - color)
    return image + alpha[..., None] * (color - image)


def render_scene(scene: SceneParams, height: int, width: int) -> np.ndarray:
    """Renders a scene at any resolution (the unit square stretched to H x W).

    Args:
      scene: the scene, e.g. from `ProceduralScenes.scene`.
      height: H, pixels, >= 1.
      width: W, pixels, >= 1.

    Returns:
      [H, W, 3] float32 in [0, 1].

    Raises:
      ValueError: if height or width is not a positive integer.
    """
    height = _check_int("height", height, minimum=1)
    width = _check_int("width", width, minimum=1)
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]  # [1, W]
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]  # [H, 1]
    pixel = max(1.0 / height, 1.0 / width)
    image = _render_background(scene.background, x, y)
    for shape in scene.shapes:
        image = _paint_shape(image, shape, x, y, pixel)
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One uniform draw as a Python float (NumPy scalars would promote float32 to float64)."""
    return float(rng.uniform(low, high))


def _bright_color(rng: np.random.Generator, hue: float | None = None) -> Color:
    """Saturated and bright; hue uniform unless given."""
    hue = _uniform(rng, 0.0, 1.0) if hue is None else hue
    return colorsys.hsv_to_rgb(hue % 1.0, _uniform(rng, 0.55, 0.95), _uniform(rng, 0.8, 1.0))


def _contrast_color(rng: np.random.Generator, color: Color) -> Color:
    """A bright colour whose hue is at least a quarter turn away from `color`'s."""
    return _bright_color(rng, colorsys.rgb_to_hsv(*color)[0] + _uniform(rng, 0.25, 0.75))


def _one_shape(
    rng: np.random.Generator,
    shade: Shade,
    *,
    sdf: str,
    radius: tuple[float, float],
    params: tuple[float, ...] = (),
    random_params: tuple[tuple[float, float], ...] = (),
) -> tuple[Shape, ...]:
    """One tilted shape near the centre.

    Args:
      rng: the scene's generator.
      shade: the scene's lighting.
      sdf: name in `sdf.SDFS`.
      radius: (low, high) of the uniform radius draw.
      params: fixed leading parameters of the distance function.
      random_params: (low, high) of one uniform draw per further parameter.
    """
    center = tuple((0.5 + rng.uniform(-0.1, 0.1, size=2)).tolist())
    size = _uniform(rng, *radius)
    params = params + tuple(_uniform(rng, low, high) for low, high in random_params)
    return (Shape(sdf, center, size, _uniform(rng, -0.4, 0.4), params, _bright_color(rng), shade),)


def _draw_striped_disc(rng: np.random.Generator, shade: Shade) -> tuple[Shape, ...]:
    """A disc with stripes of a contrasting colour at any angle."""
    (disc,) = _one_shape(rng, shade, sdf="disc", radius=(0.26, 0.36))
    color, cell = _contrast_color(rng, disc.color), _uniform(rng, 0.06, 0.08)
    stripes = Pattern("stripes", color, cell, _uniform(rng, 0.0, math.pi), (0.0, 0.0))
    return (dataclasses.replace(disc, pattern=stripes),)


def _draw_checker(rng: np.random.Generator, shade: Shade) -> tuple[Shape, ...]:
    """A square split into 3 x 3 checker cells of two contrasting colours."""
    (square,) = _one_shape(rng, shade, sdf="square", radius=(0.3, 0.42))
    half_side = square.radius * math.sqrt(0.5)
    color = _contrast_color(rng, square.color)
    checker = Pattern("checker", color, 2 * half_side / 3, 0.0, (half_side, half_side))
    return (dataclasses.replace(square, pattern=checker),)


def _draw_dot_grid(rng: np.random.Generator, shade: Shade) -> tuple[Shape, ...]:
    """k x k equal dots, k in {2, 3}, on a tilted square lattice."""
    k = int(rng.integers(2, 4))
    spacing = _uniform(rng, 0.24, 0.3) if k == 2 else _uniform(rng, 0.18, 0.22)
    radius = spacing * _uniform(rng, 0.28, 0.36)
    center = 0.5 + rng.uniform(-0.08, 0.08, size=2)
    angle, color = _uniform(rng, -0.4, 0.4), _bright_color(rng)
    steps = (np.arange(k) - (k - 1) / 2) * spacing  # [k]
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centers = center + np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2) @ rot.T  # [k*k, 2]
    return tuple(Shape("disc", tuple(c), radius, 0.0, (), color, shade) for c in centers.tolist())


def _draw_scatter(rng: np.random.Generator, shade: Shade) -> tuple[Shape, ...]:
    """5 to 8 small dots of random colours at random places."""
    centers = rng.uniform(0.12, 0.88, size=(int(rng.integers(5, 9)), 2)).tolist()
    return tuple(
        Shape("disc", tuple(c), _uniform(rng, 0.05, 0.075), 0.0, (), _bright_color(rng), shade)
        for c in centers
    )


# Class kind -> (rng, shade) -> shapes, in label order: `num_classes = k` uses the first k.
_CLASSES: dict[str, Callable[[np.random.Generator, Shade], tuple[Shape, ...]]] = {
    "disc": functools.partial(_one_shape, sdf="disc", radius=(0.2, 0.32)),
    "square": functools.partial(_one_shape, sdf="square", radius=(0.28, 0.42)),
    "triangle": functools.partial(_one_shape, sdf="star", radius=(0.3, 0.42), params=(3.0, 2.0)),
    "ring": functools.partial(_one_shape, sdf="ring", radius=(0.24, 0.36), random_params=((0.3, 0.45),)),
    "cross": functools.partial(_one_shape, sdf="cross", radius=(0.26, 0.38), random_params=((0.28, 0.38),)),
    "star": functools.partial(_one_shape, sdf="star", radius=(0.3, 0.42), params=(5.0, 3.0)),
    "striped_disc": _draw_striped_disc,
    "crescent": functools.partial(
        _one_shape, sdf="crescent", radius=(0.24, 0.34), random_params=((0.45, 0.65), (0.75, 0.9))
    ),
    "dot_grid": _draw_dot_grid,
    "scatter": _draw_scatter,
    "heart": functools.partial(_one_shape, sdf="heart", radius=(0.24, 0.34)),
    "checker": _draw_checker,
}
CLASS_KINDS = tuple(_CLASSES)
MAX_CLASSES = len(CLASS_KINDS)


def _draw_background(rng: np.random.Generator, waves: int = 3) -> Background:
    """Dark, muted colour; waves of 0.5 to 2.5 cycles per unit in random directions."""
    hsv = rng.uniform((0.0, 0.2, 0.15), (1.0, 0.6, 0.4))
    direction = rng.uniform(0.0, 2.0 * math.pi, size=waves)
    cycles = rng.uniform(0.5, 2.5, size=(waves, 1))
    frequencies = cycles * np.stack([np.cos(direction), np.sin(direction)], -1)  # [K, 2]
    return Background(
        color=colorsys.hsv_to_rgb(*hsv.tolist()),
        gradient=tuple(rng.uniform(-0.6, 0.6, size=2).tolist()),
        frequencies=tuple(map(tuple, frequencies.tolist())),
        phases=tuple(rng.uniform(0.0, 2.0 * math.pi, size=waves).tolist()),
        amplitudes=tuple(map(tuple, rng.uniform(0.0, 0.05, size=(waves, 3)).tolist())),
    )


# Fine structure of the detailed style: frequencies from 4 to 64 cycles per unit, so that
# renders at 16, 32, 64 and 128 px each show structure a half-size render averages away.
DETAIL_CYCLES = (4.0, 64.0)


def _add_detail(rng: np.random.Generator, scene: SceneParams) -> SceneParams:
    """The scene with fine textures on its background and inside every shape."""
    background = dataclasses.replace(
        scene.background, texture=textures.draw_texture(rng, 6, DETAIL_CYCLES, (0.24, 0.6))
    )
    shapes = tuple(
        dataclasses.replace(shape, texture=textures.draw_texture(rng, 3, DETAIL_CYCLES, (0.16, 0.4)))
        for shape in scene.shapes
    )
    return dataclasses.replace(scene, background=background, shapes=shapes)


# Scene style -> (rng after the layout's draws, scene) -> scene. "smooth" is the original
# look (the recorded results); "detailed" draws the same layout and adds fine structure.
STYLES: dict[str, Callable[[np.random.Generator, SceneParams], SceneParams]] = {
    "smooth": lambda rng, scene: scene,
    "detailed": _add_detail,
}


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Returns `value` as an int, or raises ValueError naming it and the valid range."""
    valid = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    if (
        not isinstance(value, int | np.integer)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ProceduralScenes:
    """An infinite, deterministic, class-balanced set of procedural scenes.

    Attributes:
      num_classes: number of classes, in [1, MAX_CLASSES]; the first `num_classes` of
        `CLASS_KINDS`.
      seed: dataset seed, >= 0.
      split: "train" or "validation" (disjoint seed streams).
      style: a name in STYLES: "smooth" (shapes on smooth backgrounds) or "detailed" (the
        same layouts with fine structure from 4 to 64 cycles per unit).

    Raises:
      ValueError: on a value outside these ranges; methods raise it for `index < 0`.
    """

    num_classes: int = 10
    seed: int = 0
    split: str = "train"
    style: str = "smooth"

    def __post_init__(self):
        _check_int("num_classes", self.num_classes, minimum=1, maximum=MAX_CLASSES)
        _check_int("seed", self.seed, minimum=0)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.style not in STYLES:
            raise ValueError(f"Unknown procedural style {self.style!r}; choose one of {sorted(STYLES)}.")

    def label(self, index: int) -> int:
        """Class of scene `index` (>= 0): `index % num_classes`."""
        return _check_int("index", index, minimum=0) % self.num_classes

    def scene(self, index: int) -> SceneParams:
        """Parameters of scene `index` (>= 0), drawn from its own seeded generator."""
        label = self.label(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        background = _draw_background(rng)
        light, strength = _uniform(rng, 0.0, 2.0 * math.pi), _uniform(rng, 0.1, 0.35)
        shade = (strength * math.cos(light), strength * math.sin(light))
        kind = CLASS_KINDS[label]
        return STYLES[self.style](rng, SceneParams(label, kind, background, _CLASSES[kind](rng, shade)))

    def render(self, index: int, height: int, width: int) -> np.ndarray:
        """Renders scene `index` as [H, W, 3] float32 in [0, 1] (see `render_scene`)."""
        return render_scene(self.scene(index), height, width)

    def render_batch(self, indices: Sequence[int], height: int, width: int) -> np.ndarray:
        """Renders scenes `indices` ([B] ints >= 0) as [B, H, W, 3] float32 in [0, 1]."""
        return np.stack([self.render(int(i), height, width) for i in indices])


def _resolution_hw(resolution: object) -> tuple[int, int]:
    """An int side or an (h, w) pair -> (h, w), each >= 1."""
    if isinstance(resolution, tuple | list) and len(resolution) == 2:
        height, width = resolution
        return _check_int("height", height, 1), _check_int("width", width, 1)
    if isinstance(resolution, tuple | list):
        raise ValueError(f"resolution must be an int or an (h, w) pair, got {resolution!r}")
    side = _check_int("resolution", resolution, minimum=1)
    return side, side


@dataclasses.dataclass(frozen=True)
class ProceduralSource:
    """Grain random-access source: the first `size` scenes of a `ProceduralScenes` set.

    Module-level and picklable, so Grain worker processes can render. Shuffle with Grain:
    index order is label order (`label = index % num_classes`).

    Attributes:
      size: number of records (epoch length), >= 1.
      resolution: image side in pixels, or (height, width).
      split: "train" or "validation".
      seed: dataset seed, >= 0.
      num_classes: in [1, MAX_CLASSES].
      style: a name in STYLES.

    Raises:
      ValueError: on a value outside these ranges.
    """

    size: int
    resolution: int | tuple[int, int]
    split: str = "train"
    seed: int = 0
    num_classes: int = 10
    style: str = "smooth"
    scenes: ProceduralScenes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_int("size", self.size, minimum=1)
        _resolution_hw(self.resolution)
        scenes = ProceduralScenes(self.num_classes, self.seed, self.split, self.style)
        object.__setattr__(self, "scenes", scenes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of every image."""
        return (*_resolution_hw(self.resolution), 3)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray | np.int32]:
        """Record `index` in [0, size) at the source's resolution (see `example`)."""
        height, width, _ = self.image_shape
        return self.example(index, height, width)

    def example(self, index: int, height: int, width: int) -> dict[str, np.ndarray | np.int32]:
        """Record `index` in [0, size) rendered at any size (the resize-and-crop's source).

        Returns:
          {"image": [height, width, 3] float32 in [0, 1], "label": int32}.
        """
        if not 0 <= index < self.size:
            raise IndexError(f"index must be in [0, {self.size}), got {index!r}")
        return {
            "image": self.scenes.render(index, height, width),
            "label": np.int32(self.scenes.label(index)),
        }
