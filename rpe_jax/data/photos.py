"""Natural photographs with real multi-resolution ground truth: random crops of the photos
in Debian's `plasma-workspace-wallpapers`.

The package ships 2560 x 1600 JPEGs (beside illustrations and renders, which are left out):
`PHOTOS` lists the photographs, chosen by looking at each wallpaper: nature, water, a forest,
leaves, boats, cups, a building's facade. Only these photographs are used for training and
our own evaluation; photographs shipped by other packages are not used at all.

Splits. Each photo's columns are split: boxes of "train" lie in its left
`1 - VALIDATION_FRACTION` (60 %), boxes of "validation" in the right 40 % (1024 of 2560 px),
so no training pixel is ever a validation pixel, while both splits show every photo (the
labels mean the same) at the same box scales. `box` max must fit the narrower region.

Examples. Index `i` of a split maps, through `np.random.default_rng([seed, SPLITS[split], i])`,
to a photo (uniform), a square crop box of side `s` source pixels (log-uniform in
`box = (min, max)`), its centre (uniform where an s x s box fits inside the split's region)
and a horizontal flip (probability 1/2). `example(i, H, W)` resizes that box to H x W with
PIL's antialiased bicubic filter from the full-resolution photo (see Speed), so every test
resolution and every resize-and-crop factor shows true detail as long as
`H, W <= min(box)`: the default 256 px box minimum covers outputs up to 256 px (a 128 px
test size, or a 64 px training size resized by up to 4x); the default maximum, 1024 px,
is the validation region's width, and the 4x range of scales lets a model see the same
content zoomed in and out. A non-square request keeps the box's centre and scale: its
longer side is `s` and its aspect H:W (always inside the region, since an s x s box fits).
`label` is the photo's index in `PHOTOS`, so `num_classes >= len(PHOTOS)`.

Speed. Each process decodes a photo once (`_decoded`, cached): ~12 MB each, ~135 MB for
all (~0.7 s). A resize first box-averages the box by the largest integer factor that leaves
at least `REDUCING_GAP` (3) source pixels per output pixel for the bicubic step (PIL's
`reducing_gap`): both steps are antialiasing filters, within 3/255 of the one-step
resample on the Debian photos, and ~5x faster (32 px from a 1024 px box: 1.3 ms, not 6.6).

Legend: H, W output height and width; s box side in source pixels.
"""

import dataclasses
import functools
import math
import pathlib
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_DIR = "/usr/share/wallpapers"  # Debian's plasma-workspace-wallpapers
INSTALL_HINT = "apt-get install plasma-workspace-wallpapers"
# The photographs of plasma-workspace-wallpapers (4:5.27); the package's other wallpapers
# are illustrations, renders or abstract art.
PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
)
SPLITS = {"train": 0, "validation": 1}
VALIDATION_FRACTION = 0.4  # the right part of each photo's width that only validation sees
REDUCING_GAP = 3.0  # least source pixels per output pixel left to the bicubic step


def split_columns(photo_width: int, split: str) -> tuple[int, int]:
    """The columns [start, stop) of a photo `photo_width` px wide whose pixels `split` may use."""
    boundary = round(photo_width * (1 - VALIDATION_FRACTION))
    return (0, boundary) if split == "train" else (boundary, photo_width)


def photo_path(directory: str | pathlib.Path, name: str) -> pathlib.Path:
    """The largest JPEG of wallpaper `name` under `directory` (by pixel count in its file name).

    Raises:
      FileNotFoundError: the wallpaper has no JPEG; the message says how to install the package.
    """
    folder = pathlib.Path(directory) / name / "contents" / "images"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []

    def pixels(path: pathlib.Path) -> int:
        width, _, height = path.stem.partition("x")
        return int(width) * int(height) if width.isdigit() and height.isdigit() else 0

    if not files:
        raise FileNotFoundError(
            f"photos source: no JPEG of the wallpaper {name!r} in {folder}. Install Debian's photos with "
            f"`{INSTALL_HINT}` (into {DEFAULT_DIR}) or set config.data.photos_dir to a folder of "
            "<name>/contents/images/<W>x<H>.jpg."
        )
    return max(files, key=pixels)


@functools.lru_cache(maxsize=len(PHOTOS))
def _decoded(path: str) -> Image.Image:
    """The photo at `path`, decoded to RGB once per process."""
    with Image.open(path) as image:
        return image.convert("RGB")


def crop_box(
    photo_size: tuple[int, int], side: float, center: tuple[float, float], height: int, width: int
) -> tuple[float, float, float, float]:
    """The source box (left, top, right, bottom) of an H x W request: longer side `side`,
    aspect H:W, centred at `center` (x, y); inside the photo when an s x s box fits there."""
    scale = side / max(height, width)
    half_w, half_h = 0.5 * width * scale, 0.5 * height * scale
    cx, cy = center
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    if box[0] < 0 or box[1] < 0 or box[2] > photo_size[0] or box[3] > photo_size[1]:
        raise ValueError(f"crop box {box} leaves the {photo_size[0]}x{photo_size[1]} photo.")
    return box


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """Random crops of the `PHOTOS`, any size (see the module docstring).

    Attributes:
      directory: the wallpapers folder (`<name>/contents/images/*.jpg`).
      split: "train" or "validation".
      resolution: (H, W) of `__getitem__`'s images.
      size: number of examples (epoch length), >= 1.
      seed: dataset seed.
      box: (min, max) crop-box side in source pixels, 1 <= min <= max <= every photo's height
        and the width of each split's columns (1024 for 2560 x 1600 photos).
      num_classes: labels are photo indices, so at least len(PHOTOS).

    Raises:
      FileNotFoundError: the folder or a photo is missing (the message names the package).
      ValueError: an unknown split, a bad box range, or too few classes.
    """

    directory: str
    split: str
    resolution: tuple[int, int]
    size: int
    seed: int = 0
    box: tuple[int, int] = (256, 1024)
    num_classes: int = len(PHOTOS)
    paths: tuple[str, ...] = dataclasses.field(init=False, repr=False)
    sizes: tuple[tuple[int, int], ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"photos source: unknown split {self.split!r}; choose one of {sorted(SPLITS)}.")
        if self.num_classes < len(PHOTOS):
            raise ValueError(
                f"photos source: labels are the {len(PHOTOS)} photos' indices, but config.data.num_classes="
                f"{self.num_classes}; set it to at least {len(PHOTOS)}."
            )
        if self.size < 1:
            raise ValueError(f"photos source: size must be >= 1, got {self.size}.")
        paths = tuple(str(photo_path(self.directory, name)) for name in PHOTOS)
        sizes = []
        for path in paths:
            with Image.open(path) as image:  # reads the header only
                sizes.append(image.size)
        low, high = self.box
        regions = [split_columns(width, split) for width, _ in sizes for split in SPLITS]
        shortest = min(min(height for _, height in sizes), min(stop - start for start, stop in regions))
        if not 1 <= low <= high <= shortest:
            raise ValueError(
                f"photos source: config.data.photo_box={tuple(self.box)} must satisfy 1 <= min <= max <= "
                f"{shortest} (the photos' height and each split's share of their width, in source "
                "pixels)."
            )
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "sizes", tuple(sizes))

    def __len__(self) -> int:
        return self.size

    def draw(self, index: int) -> tuple[int, float, tuple[float, float], bool]:
        """Example `index`'s (photo index, box side, box centre (x, y), flip), fixed by the seed."""
        if not 0 <= index < self.size:
            raise IndexError(f"photos source: index must be in [0, {self.size}), got {index!r}.")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
        photo = int(rng.integers(len(self.paths)))
        side = math.exp(rng.uniform(math.log(self.box[0]), math.log(self.box[1])))
        width, height = self.sizes[photo]
        start, stop = split_columns(width, self.split)
        center = (rng.uniform(start + side / 2, stop - side / 2), rng.uniform(side / 2, height - side / 2))
        return photo, side, (float(center[0]), float(center[1])), bool(rng.random() < 0.5)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example `index` at the source's resolution (see `example`)."""
        return self.example(index, *self.resolution)

    def example(self, index: int, height: int, width: int) -> dict[str, Any]:
        """Example `index` resized from its source box to (height, width).

        Returns:
          {"image": [height, width, 3] float32 in [0, 1], "label": int32 (the photo's index)}.
        """
        photo, side, center, flip = self.draw(index)
        box = crop_box(self.sizes[photo], side, center, height, width)
        image = _decoded(self.paths[photo]).resize(
            (width, height), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP
        )
        pixels = np.asarray(image, np.float32) / 255
        return {"image": pixels[:, ::-1] if flip else pixels, "label": np.int32(photo)}
