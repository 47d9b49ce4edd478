"""Tests for rpe_jax.data.latents: resumable extraction and the latent resize-and-crop."""

import dataclasses
import json
import pickle

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs import base
from rpe_jax.data import latents, procedural, sources
from rpe_jax.models import vae as vae_lib

TINY_VAE = vae_lib.VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
FACTORS = (1.0, 1.5)  # a non-integer factor; each factor costs a compile
NUM_EXAMPLES = 10  # shards of 4, 4 and 2
SHARDS = ("train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003")
encode = nnx.jit(vae_lib.encode_to_latents)  # the reference: unsharded, one device


class Interrupted(Exception):
    """Raised by the patched encoder to simulate a crash."""


def _write_random_vae(directory) -> None:
    """A random TINY_VAE as a diffusers folder: config.json + safetensors in torch layouts.

    Weights are drawn with numpy (std 1 / sqrt(fan-in); norm scales near 1), which is much
    faster than initialising the NNX model eagerly.
    """
    abstract = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(TINY_VAE, rngs=nnx.Rngs(0)))
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    rng, tensors = np.random.default_rng(0), {}
    for path, leaf in flat.items():
        shape = leaf.shape
        if len(shape) == 1:
            value = rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T  # -> OIHW, [out, in]
        tensors[vae_lib.diffusers_key(path)] = np.ascontiguousarray(value, np.float32)
    save_file(tensors, directory / vae_lib.WEIGHTS_NAME)
    config = {
        "_class_name": "AutoencoderKL",
        "block_out_channels": list(TINY_VAE.block_out_channels),
        "layers_per_block": TINY_VAE.layers_per_block,
        "norm_num_groups": TINY_VAE.norm_num_groups,
    }
    (directory / vae_lib.CONFIG_NAME).write_text(json.dumps(config))


def _config(vae_path: str = "", **data):
    config = base.get_config()
    config.model.variant = "DiT-S/2"
    config.data.update(
        source="latents",
        resolution=32,
        num_classes=4,
        train_size=NUM_EXAMPLES,
        root="",
        latents_dir="",
        latent_source="procedural",
        latent_splits=("train",),
        latent_factors=FACTORS,
        latent_shard_size=4,
        latent_batch_size=8,
        latent_sample=False,
        latent_dtype="float32",
    )
    config.data.update(data)
    config.vae.path = vae_path
    return config


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """The diffusers folder of a random f8 VAE."""
    directory = tmp_path_factory.mktemp("vae")
    _write_random_vae(directory)
    return directory


@pytest.fixture(scope="module")
def extracted(vae_dir, tmp_path_factory):
    """An extraction interrupted in its second shard, then resumed; facts about both runs."""
    workdir = tmp_path_factory.mktemp("work")
    out = workdir / "latents"
    config = _config(str(vae_dir))
    calls = {"n": 0}
    encode = latents._encode

    def crashing(*args):
        calls["n"] += 1
        if calls["n"] == len(FACTORS) + 2:  # inside shard 1, after shard 0's one batch
            raise Interrupted
        return encode(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latents, "_encode", crashing)
        with pytest.raises(Interrupted):
            latents.extract_latents(config, str(workdir))
    after_crash = {
        "files": sorted(p.name for p in out.iterdir()),
        "done": json.loads((out / sources.LATENT_MANIFEST).read_text())["splits"]["train"]["done"],
        "shard0": (out / f"{SHARDS[0]}.array_record").stat(),
        "shard0_bytes": (out / f"{SHARDS[0]}.array_record").read_bytes(),
    }
    latents.extract_latents(config, str(workdir))
    return {"config": config, "workdir": workdir, "out": out, "after_crash": after_crash}


def _records(out) -> list[dict]:
    paths = [str(out / f"{name}.array_record") for name in SHARDS]
    data = sources.grain.sources.ArrayRecordDataSource(paths)
    return [sources.decode_latent_record(data[i]) for i in range(len(data))]


def test_latent_resolutions():
    assert latents.latent_resolutions(_config()) == {"1": (32, 32), "1.5": (48, 48)}
    config = _config(resolution=256, latent_factors=(1.0, 1.25, 1.5, 1.75, 2.0))
    assert latents.latent_resolutions(config)["1.75"] == (448, 448)


@pytest.mark.parametrize(
    "factors, message",
    [
        ((1.0, 1.25), "1.25"),
        ((1.5, 2.0), "must include 1.0"),
        ((1.0, 0.5), "below 1"),
        ((1.0, 1.0), "duplicate"),
    ],
)
def test_latent_resolutions_rejects(factors, message):
    with pytest.raises(ValueError, match=message):  # 32 px x 1.25 = 40 px = 5 latent cells: odd
        latents.latent_resolutions(_config(latent_factors=factors))


def test_interrupted_run_left_finished_and_partial_shards(extracted):
    crash = extracted["after_crash"]
    assert crash["done"] == [0]
    assert f"{SHARDS[0]}.array_record" in crash["files"]
    assert f"{SHARDS[1]}.array_record.partial" in crash["files"]
    assert f"{SHARDS[1]}.array_record" not in crash["files"]


def test_resume_completes_without_rewriting(extracted):
    out, crash = extracted["out"], extracted["after_crash"]
    stat = (out / f"{SHARDS[0]}.array_record").stat()
    assert (stat.st_ino, stat.st_mtime_ns) == (crash["shard0"].st_ino, crash["shard0"].st_mtime_ns)
    assert (out / f"{SHARDS[0]}.array_record").read_bytes() == crash["shard0_bytes"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.array_record" for name in SHARDS] + [sources.LATENT_MANIFEST]
    )
    manifest = json.loads((out / sources.LATENT_MANIFEST).read_text())
    assert manifest["splits"]["train"] == {"num_examples": NUM_EXAMPLES, "num_shards": 3, "done": [0, 1, 2]}
    assert manifest["settings"]["latent_shapes"] == {"1": [4, 4, 4], "1.5": [6, 6, 4]}


def test_every_example_once_with_its_label(extracted):
    records = _records(extracted["out"])
    assert [r["index"] for r in records] == list(range(NUM_EXAMPLES))
    assert [int(r["label"]) for r in records] == [i % 4 for i in range(NUM_EXAMPLES)]


def test_latents_match_direct_encode(extracted, vae_dir):
    model = vae_lib.load_vae(vae_dir)
    scenes = procedural.ProceduralScenes(num_classes=4, seed=0, split="train")
    records = _records(extracted["out"])
    for name, (height, width) in latents.latent_resolutions(extracted["config"]).items():
        images = scenes.render_batch(range(NUM_EXAMPLES), height, width)
        expected = np.asarray(encode(model, jax.numpy.asarray(images) * 2 - 1))
        stored = np.stack([r["latents"][name] for r in records])
        assert stored.shape == (NUM_EXAMPLES, height // 8, width // 8, 4)
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_finished_run_rewrites_nothing(extracted):
    out = extracted["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")}
    latents.extract_latents(extracted["config"], str(extracted["workdir"]))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")} == before


def test_other_settings_are_refused(extracted):
    config = _config(extracted["config"].vae.path, latent_factors=(1.0, 1.5, 2.0))
    with pytest.raises(ValueError, match="other settings.*factors"):
        latents.extract_latents(config, str(extracted["workdir"]))


def test_bad_extraction_settings(tmp_path):
    with pytest.raises(ValueError, match="latent_source 'latents'"):
        latents.extract_latents(_config(latent_source="latents"), str(tmp_path))
    with pytest.raises(ValueError, match="latent_batch_size 6"):  # 8 simulated devices
        latents.extract_latents(_config(latent_batch_size=6), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No VAE weights"):
        latents.extract_latents(_config(str(tmp_path / "nowhere")), str(tmp_path))


def test_latents_source(extracted):
    data = _config(latents_dir=str(extracted["out"])).data
    source = sources.SOURCES["latents"](data, "train", (4, 4))
    source = pickle.loads(pickle.dumps(source))  # Grain workers receive it pickled
    assert len(source) == NUM_EXAMPLES
    example = source[3]
    assert {k: v.shape for k, v in example["latents"].items()} == {"1": (4, 4, 4), "1.5": (6, 6, 4)}
    assert example["latents"]["1"].dtype == np.float32 and example["label"] == 3
    with pytest.raises(ValueError, match="asks for 8x8"):
        sources.SOURCES["latents"](data, "train", (8, 8))
    with pytest.raises(ValueError, match="'validation' was not extracted"):
        sources.SOURCES["latents"](data, "validation", (4, 4))
    with pytest.raises(ValueError, match="latents_dir is empty"):
        sources.SOURCES["latents"](_config().data, "train", (4, 4))


def test_incomplete_extraction_is_refused(extracted, tmp_path):
    manifest = json.loads((extracted["out"] / sources.LATENT_MANIFEST).read_text())
    manifest["splits"]["train"]["done"] = [0, 2]
    (tmp_path / sources.LATENT_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="2 of 3 'train' shards"):
        sources.LatentSource(str(tmp_path), "train")


def _coordinate_latents(h: int, w: int, factors=(1.0, 1.5, 2.0)) -> dict:
    """Latents whose cell (i, j) holds (factor, i, j, 0): crops can be located exactly."""
    out = {}
    for r in factors:
        rows, cols = round(h * r), round(w * r)
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        out[sources.factor_name(r)] = np.stack([np.full_like(i, 0) + r, i, j, 0 * i], -1).astype(np.float32)
    return {"latents": out, "label": 7}


@pytest.mark.parametrize("h, w", [(4, 4), (4, 8)])
def test_latent_crop_lies_inside_token_aligned_and_matches_micro(h, w):
    transform, patch = latents.LatentResizeAndCrop(prob=1.0, patch=2), 2
    element = _coordinate_latents(h, w)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = transform.random_map(element, rng)
        assert set(out) == {"x", "label", "micro", "crop"}
        assert out["x"].shape == (h, w, 4) and out["x"].dtype == np.float32 and out["label"] == 7
        rows, cols, top, left = out["crop"].tolist()
        r = float(out["x"][0, 0, 0])
        assert r in (1.5, 2.0) and (rows, cols) == (round(h * r) // patch, round(w * r) // patch)
        assert 0 <= top <= rows - h // patch and 0 <= left <= cols - w // patch
        np.testing.assert_array_equal(out["x"][0, 0, 1:3], [top * patch, left * patch])
        np.testing.assert_array_equal(out["x"][-1, -1, 1:3], [top * patch + h - 1, left * patch + w - 1])
        np.testing.assert_allclose(out["micro"], [rows / (h // patch), top / rows, left / cols], rtol=1e-6)
        seen.add((r, top, left))
    assert {r for r, _, _ in seen} == {1.5, 2.0} and len(seen) > 10


def test_latent_crop_fraction_follows_prob():
    transform = latents.LatentResizeAndCrop(prob=0.3, patch=2)
    element, rng, n = _coordinate_latents(4, 4), np.random.default_rng(1), 4000
    outs = [transform.random_map(element, rng) for _ in range(n)]
    cropped = np.mean([float(o["x"][0, 0, 0]) > 1 for o in outs])
    assert abs(cropped - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    for o in outs:
        if float(o["x"][0, 0, 0]) == 1:
            np.testing.assert_array_equal(o["micro"], [1, 0, 0])
            np.testing.assert_array_equal(o["crop"], [2, 2, 0, 0])
            np.testing.assert_array_equal(o["x"], element["latents"]["1"])


def test_latent_crop_errors():
    element = _coordinate_latents(4, 4, factors=(1.0,))
    with pytest.raises(ValueError, match="factor > 1"):
        latents.LatentResizeAndCrop(prob=1.0, patch=2).random_map(element, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3x3 tokens"):
        latents.LatentResizeAndCrop(prob=0.0, patch=3).random_map(element, np.random.default_rng(0))


def test_latent_crop_in_a_grain_pipeline(extracted):
    data = _config(latents_dir=str(extracted["out"])).data
    source = sources.SOURCES["latents"](data, "train", (4, 4))
    dataset = sources.grain.MapDataset.source(source).seed(0).random_map(latents.LatentResizeAndCrop(0.5, 2))
    batch = next(iter(dataset.to_iter_dataset().batch(NUM_EXAMPLES)))
    assert batch["x"].shape == (NUM_EXAMPLES, 4, 4, 4) and batch["crop"].shape == (NUM_EXAMPLES, 4)
    assert set(np.unique(batch["micro"][:, 0]).tolist()) <= {1.0, 1.5}


def test_sampled_latents_are_reproducible(vae_dir):
    encoder, channels = latents._make_encoder(_config(str(vae_dir), latent_sample=True))
    images = procedural.ProceduralScenes(num_classes=4).render_batch(range(8), 32, 32)
    first = encoder(images, "train", "1", 0)
    assert first.shape == (8, 4, 4, channels)
    np.testing.assert_array_equal(first, encoder(images, "train", "1", 0))
    others = (
        encoder(images, "train", "1", 8),  # another batch
        encoder(images, "validation", "1", 0),  # another split
        dataclasses.replace(encoder, key=None)(images, "train", "1", 0),  # the posterior mean
    )
    for other in others:
        assert (np.abs(other - first).mean(axis=(1, 2, 3)) > 1e-3).all()
