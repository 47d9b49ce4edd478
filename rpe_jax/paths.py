"""File access for run folders that are local or on Cloud Storage (gs://), through etils.epath.

Every read and write under a workdir goes through `epath.Path` (`os`, `open`, `glob` and the
libraries' own savers reach only local disks), so `--workdir=gs://bucket/run`, which every
process of a multi-host run can see, works as a local folder does. The helpers cover what
`epath.Path` lacks: NumPy archives, PNG images and figures (their writers seek, which Cloud
Storage files cannot), atomic writes, and local staging for writers that take only local names.
"""

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from etils import epath
from PIL import Image


def workdir_path(workdir: epath.PathLike) -> epath.Path:
    """`workdir` as an `epath.Path`: a URI (gs://bucket/run) as given, a local path made absolute."""
    path = epath.Path(workdir)
    return path if path.is_absolute() else epath.Path(os.path.abspath(path))


def is_local(path: epath.PathLike) -> bool:
    """Whether `path` is on a local disk (not a URI such as gs://bucket/run)."""
    return "://" not in os.fspath(path)


def write_bytes(path: epath.PathLike, data: bytes) -> None:
    """Writes `data` to `path`, creating its folder first."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_atomic(path: epath.PathLike, data: bytes) -> None:
    """Writes `data` to `<path>.partial`, then renames it to `path`, so `path` exists only
    when complete (and no `*.npz` glob sees the partial file)."""
    path = epath.Path(path)
    temporary = path.with_name(path.name + ".partial")
    write_bytes(temporary, data)
    temporary.replace(path)


def write_npz(path: epath.PathLike, **arrays: np.ndarray) -> None:
    """Writes an uncompressed `.npz` atomically (`write_atomic`)."""
    buffer = io.BytesIO()
    # mypy matches `**arrays` against savez's `allow_pickle: bool` keyword as well as `**kwds`.
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    write_atomic(path, buffer.getvalue())


def read_npz(path: epath.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file (no pickles)."""
    with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
        return dict(data)


def write_png(path: epath.PathLike, image: np.ndarray) -> None:
    """Writes an image [H, W, C] uint8 as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def write_figure(path: epath.PathLike, figure, **savefig_kwargs) -> None:
    """Writes a Matplotlib figure as a PNG file."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig_kwargs)
    write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def local_staging(path: epath.Path) -> Iterator[str]:
    """A local file name for a writer that takes only local names, moved to `path` when the
    block ends without an error.

    A local `path` is staged beside it as `<path>.partial` (left there on error and removed
    by the next attempt); a remote one in a local temporary folder, then copied into place.
    """
    if is_local(path):
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        yield os.fspath(partial)
        partial.replace(path)
    else:
        with tempfile.TemporaryDirectory() as folder:
            partial = epath.Path(folder) / path.name
            yield os.fspath(partial)
            partial.copy(path, overwrite=True)
