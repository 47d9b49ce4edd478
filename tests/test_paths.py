"""Workdir files go through etils.epath, so gs:// workdirs work: tested against a fake bucket.

The fake: epath's own TensorFlow backend (what gs:// paths use when TensorFlow is installed)
with every gs://bucket/... path redirected to TensorFlow's in-memory ram:// file system. A
write that bypassed epath would land in the current folder as `gs:/bucket/...` (or fail);
the fixture runs each test in an empty folder and checks that it stays empty.
"""

import csv
import io
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from etils import epath
from etils.epath import backend, gpath
from orbax.checkpoint._src.path import gcs_utils
from PIL import Image

from configs import base
from rpe_jax import checkpoint, distributed, evaluate, metrics, paths, report, sample
from rpe_jax.data import latents, sources
from rpe_jax.models import inception


def _ram(path) -> str:
    """gs://b/x -> ram://b/x; other paths as given."""
    path = os.fspath(path)
    return "ram://" + path.removeprefix("gs://") if path.startswith("gs://") else path


def _gs(path: str) -> str:
    return "gs://" + path.removeprefix("ram://") if path.startswith("ram://") else path


class _RamBackend(backend._TfBackend):
    """epath's TensorFlow backend with gs:// paths kept in memory (ram://); other paths as given."""

    def open(self, path, mode):
        return super().open(_ram(path), mode)

    def exists(self, path):
        return super().exists(_ram(path))

    def isdir(self, path):
        return super().isdir(_ram(path))

    def listdir(self, path):
        return super().listdir(_ram(path))

    def glob(self, path):
        return [_gs(p) for p in super().glob(_ram(path))]

    def walk(self, top, **kwargs):
        return ((_gs(root), dirs, files) for root, dirs, files in super().walk(_ram(top), **kwargs))

    def makedirs(self, path, **kwargs):
        return super().makedirs(_ram(path), **kwargs)

    def mkdir(self, path, **kwargs):
        return super().mkdir(_ram(path), **kwargs)

    def rmtree(self, path):
        return super().rmtree(_ram(path))

    def remove(self, path):
        return super().remove(_ram(path))

    def rename(self, path, dst):
        return super().rename(_ram(path), _ram(dst))

    def replace(self, path, dst):
        return super().replace(_ram(path), _ram(dst))

    def copy(self, path, dst, overwrite):
        return super().copy(_ram(path), _ram(dst), overwrite)

    def stat(self, path):
        return super().stat(_ram(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """An empty fake bucket gs://<name>; the test runs in an empty folder, checked after it."""
    fake = _RamBackend()
    monkeypatch.setattr(
        gpath._GPath,
        "_backend",
        property(lambda p: fake if p._uri_scheme == "gs" else backend.os_backend),
    )
    monkeypatch.setattr(gpath, "_GCS_BACKENDS", frozenset({fake}))  # the backend of mixed copies
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)  # asks GCS
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    name = f"bucket-{tmp_path.name}"
    tf.io.gfile.makedirs(f"ram://{name}")
    yield epath.Path(f"gs://{name}")
    tf.io.gfile.rmtree(f"ram://{name}")
    assert not list(cwd.iterdir()), "a gs:// path reached the local file system"


def test_workdir_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.workdir_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(paths.workdir_path("run")) == str(tmp_path / "run")
    assert str(paths.workdir_path(tmp_path / "run")) == str(tmp_path / "run")
    assert paths.is_local("run") and not paths.is_local("gs://bucket/run")


def test_checkpoint_manager_keeps_a_gs_workdir(bucket):
    config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 2, "async_checkpoint": False}})
    manager = checkpoint.make_manager(f"{bucket}/run", config)
    assert str(manager.directory) == f"{bucket}/run/checkpoints"
    assert tf.io.gfile.isdir(_ram(manager.directory)), "created in the bucket"
    assert manager.latest_step() is None
    manager.close()


def test_sample_batches_written_to_gs_are_read_back_by_evaluate(bucket):
    workdir = f"{bucket}/run"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 4, 8, 8, 3), np.uint8)
    labels = np.arange(8, dtype=np.int32).reshape(2, 4)
    folder = epath.Path(workdir) / "generated" / "rpe2d" / "8x8"
    files = [folder / f"batch_{i:05d}.npz" for i in range(2)]
    assert distributed.exists_on_process_0(files) == [False, False]
    for i in range(2):
        sample._write_batch(images[i], labels[i], files[i], with_grid=i == 0)
    assert distributed.exists_on_process_0(files) == [True, True]
    found = evaluate.generated_files(workdir, "rpe2d", (8, 8))
    assert [str(f) for f in found] == [str(f) for f in files], "no temporary file is left"
    np.testing.assert_array_equal(evaluate.generated_batch(found[1]), images[1].astype(np.float32) / 255)
    assert evaluate.generated_batch(found[0], size=(16, 12)).shape == (4, 16, 12, 3)
    np.testing.assert_array_equal(paths.read_npz(files[1])["labels"], labels[1])
    grid = np.asarray(Image.open(io.BytesIO((folder / "grid.png").read_bytes())))
    np.testing.assert_array_equal(grid, sample.image_grid(images[0], 8))


def test_evaluation_results_are_written_to_gs(bucket):
    rows = [
        {"method": m, "resolution": r, "tokens": t, **dict.fromkeys(evaluate.METRICS, v)}
        for m, v in (("rpe2d", 1.5), ("rpe2d_plain", 2.5))
        for r, t in (("8x8", 16), ("16x16", 64))
    ]
    out = bucket / "run" / "eval"
    report.write_results(rows, out, (8, 8), evaluate.METRICS)
    assert json.loads((out / "results.json").read_text()) == rows
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [(r["method"], r["resolution"], float(r["fid"])) for r in table] == [
        (r["method"], r["resolution"], r["fid"]) for r in rows
    ]
    assert "| method | 8x8 (train) | 16x16 |" in (out / "results.md").read_text()
    assert Image.open(io.BytesIO((out / "resolution_plot.png").read_bytes())).format == "PNG"


def _features(images: np.ndarray) -> inception.InceptionFeatures:
    flat = images.reshape(len(images), -1)
    return inception.InceptionFeatures(pool=flat[:, :4], logits=flat[:, 4:7], spatial=flat[:, 7:10])


def _unused_extractor(images):
    raise AssertionError("the cached reference features should have been read")


def test_reference_features_are_cached_on_gs(bucket):
    config = base.get_config()
    config.data.update(source="procedural", num_classes=4)
    config.eval.update(num_reference=6, batch_size=4, extractor="test")
    computed = evaluate.reference_features(config, (8, 8), _features, f"{bucket}/run")
    cached = list((bucket / "run" / "eval" / "reference").iterdir())
    assert [p.name for p in cached] == ["procedural_validation_8x8_test_6.npz"]
    read = evaluate.reference_features(config, (8, 8), _unused_extractor, f"{bucket}/run")
    np.testing.assert_array_equal(read.pool, computed.pool)
    np.testing.assert_array_equal(read.spatial_stats.cov, computed.spatial_stats.cov)


def test_feature_stats_round_trip_through_gs(bucket):
    stats = metrics.FeatureStats(np.arange(3.0), np.eye(3), count=5)
    stats.save(bucket / "stats.npz")
    loaded = metrics.FeatureStats.load(f"{bucket}/stats.npz")
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == 5


def test_latent_shards_and_manifest_are_written_to_gs(bucket, tmp_path):
    directory = bucket / "run" / "latents"
    directory.mkdir(parents=True)
    assert latents._open_manifest(directory, {"dtype": "float32"}) == {
        "settings": {"dtype": "float32"},
        "splits": {},
    }
    assert sources.read_latent_manifest(directory)["settings"] == {"dtype": "float32"}
    with pytest.raises(ValueError, match="other settings"):
        latents._open_manifest(directory, {"dtype": "float16"})

    config = ml_collections.ConfigDict({"data": {"latent_batch_size": 4, "latent_dtype": "float32"}})
    batch = {"index": np.array([5, 6]), "label": np.array([1, 3]), "images": {"1.0": np.ones((2, 8, 8, 3))}}

    def encoder(images, split, factor, start):
        return images[:, ::8, ::8, :2] * start  # [B, 1, 1, 2]

    shard = directory / "train-00000-of-00001.array_record"
    latents._write_shard(shard, iter([batch]), encoder, config, "train", latents._Progress("train", 2))
    assert sorted(p.name for p in directory.iterdir()) == [sources.LATENT_MANIFEST, shard.name]
    local = shard.copy(tmp_path / shard.name)
    data = sources.grain.sources.ArrayRecordDataSource([str(local)])
    records = [sources.decode_latent_record(data[i]) for i in range(len(data))]
    assert [(r["index"], int(r["label"])) for r in records] == [(5, 1), (6, 3)]
    np.testing.assert_array_equal(records[1]["latents"]["1.0"], np.full((1, 1, 2), 5.0))
