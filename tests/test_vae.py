"""Tests for rpe_jax.models.vae: parity with diffusers' torch AutoencoderKL and weight import."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx
from safetensors.numpy import load_file, save_file

from rpe_jax.models import vae as vae_lib

TINY = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
}
TINY_OURS = vae_lib.VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)
SD_VAE_PARAMS = 83_653_863
TOLERANCE = 1e-4  # Max abs error relative to the reference's max abs value, float32.

# Jitted once per model graph: a whole-graph compile is faster than eager op-by-op on CPU.
encode = nnx.jit(lambda model, x: model.encode(x))
decode = nnx.jit(lambda model, z: model.decode(z))


def _rel_error(ours: jax.Array, reference_nchw: np.ndarray) -> float:
    reference = reference_nchw.transpose(0, 2, 3, 1)
    assert ours.shape == reference.shape
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def torch_vae() -> TorchAutoencoderKL:
    torch.manual_seed(0)
    model = TorchAutoencoderKL(**TINY).eval()
    with torch.no_grad():  # Move GroupNorm scales off 1 and biases off 0.
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def vae_dir(torch_vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vae")
    torch_vae.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def weights(vae_dir) -> dict[str, np.ndarray]:
    return load_file(vae_dir / vae_lib.WEIGHTS_NAME)


@pytest.fixture(scope="module")
def reference(torch_vae):
    """Inputs (NCHW) and torch outputs: a non-square image batch and a latent batch."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 3, 32, 24)).astype(np.float32)
    latents = rng.normal(size=(2, 4, 16, 12)).astype(np.float32)
    with torch.no_grad():
        posterior = torch_vae.encode(torch.from_numpy(images)).latent_dist
        decoded = torch_vae.decode(torch.from_numpy(latents)).sample
    return {
        "images": images,
        "latents": latents,
        "mean": posterior.mean.numpy(),
        "logvar": posterior.logvar.numpy(),
        "decoded": decoded.numpy(),
    }


@pytest.fixture(scope="module")
def vae(vae_dir) -> vae_lib.AutoencoderKL:
    return vae_lib.load_vae(vae_dir)


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _legacy_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    out = {}
    for key, value in weights.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def test_from_diffusers_reads_torch_config(torch_vae, vae):
    config = vae_lib.VAEConfig.from_diffusers(dict(torch_vae.config))
    assert config == TINY_OURS
    assert vae.config == config


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"dropout": 0.1}, "dropout"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"up_block_types": ["AttnUpDecoderBlock2D"] * 2}, "up_block_types"),
        ({"latents_mean": [0.0] * 4}, "latents_mean"),
        ({"_class_name": "AutoencoderTiny"}, "AutoencoderTiny"),
        ({"norm_num_groups": 7}, "norm_num_groups"),
    ],
)
def test_from_diffusers_rejects_unsupported(torch_vae, change, named):
    with pytest.raises(ValueError, match=named):
        vae_lib.VAEConfig.from_diffusers({**torch_vae.config, **change})


def test_from_diffusers_requires_keys_with_other_diffusers_defaults(torch_vae):
    config = {k: v for k, v in torch_vae.config.items() if k != "layers_per_block"}
    with pytest.raises(ValueError, match="layers_per_block"):
        vae_lib.VAEConfig.from_diffusers(config)


def test_default_config_is_sd_vae_size():
    config = vae_lib.VAEConfig()
    model = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(config, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(p.size for p in params) == SD_VAE_PARAMS
    assert config.downsample_factor == 8 and config.latent_channels == 4
    assert config.scaling_factor == 0.18215


def test_encode_decode_match_diffusers(vae, reference):
    mean, logvar = encode(vae, _nhwc(reference["images"]))
    decoded = decode(vae, _nhwc(reference["latents"]))
    assert _rel_error(mean, reference["mean"]) < TOLERANCE
    assert _rel_error(logvar, reference["logvar"]) < TOLERANCE
    assert _rel_error(decoded, reference["decoded"]) < TOLERANCE


def test_logvar_is_clamped_as_in_diffusers(vae, reference):
    model = nnx.clone(vae)
    bias = model.quant_conv.bias
    bias[...] = bias[...].at[4:].add(100.0)  # logvar channels far above diffusers' 20.
    _, logvar = encode(model, _nhwc(reference["images"]))
    np.testing.assert_array_equal(logvar, 20.0)


def test_legacy_attention_names_load_the_same(vae, weights, tmp_path):
    legacy = _legacy_names(weights)
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    save_file(legacy, tmp_path / vae_lib.WEIGHTS_NAME)
    ours = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(vae.config, rngs=nnx.Rngs(1)))
    vae_lib.load_diffusers_weights(ours, tmp_path / vae_lib.WEIGHTS_NAME)
    for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(vae)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def bad_file(tmp_path):
    def write(tensors):
        path = tmp_path / "bad.safetensors"
        save_file(tensors, path)
        return path

    return write


def _assert_load_fails(bad_path, *fragments):
    model = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(TINY_OURS, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError) as err:
        vae_lib.load_diffusers_weights(model, bad_path)
    for fragment in (str(bad_path), *fragments):
        assert fragment in str(err.value)


def test_missing_key_is_named(weights, bad_file):
    key = "decoder.up_blocks.0.upsamplers.0.conv.weight"
    path = bad_file({k: v for k, v in weights.items() if k != key})
    _assert_load_fails(path, "missing keys [" + key + "]", "unexpected keys [none]")


def test_unexpected_key_is_named(weights, bad_file):
    path = bad_file({**weights, "encoder.extra.weight": np.zeros(3, np.float32)})
    _assert_load_fails(path, "missing keys [none]", "encoder.extra.weight")


def test_legacy_and_new_name_together_is_unexpected(weights, bad_file):
    key = "encoder.mid_block.attentions.0.to_q.bias"
    legacy = "encoder.mid_block.attentions.0.query.bias"
    path = bad_file({**weights, legacy: weights[key]})
    _assert_load_fails(path, "unexpected keys [" + legacy + "]")


def test_wrong_shape_is_named(weights, bad_file):
    key = "encoder.conv_in.weight"
    path = bad_file({**weights, key: np.zeros((32, 3, 5, 5), np.float32)})
    _assert_load_fails(path, key, "(32, 3, 5, 5)")


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / vae_lib.WEIGHTS_NAME
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vae_lib.load_vae(path.parent)
    model = nnx.eval_shape(lambda: vae_lib.AutoencoderKL(TINY_OURS, rngs=nnx.Rngs(0)))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vae_lib.load_diffusers_weights(model, path)


def test_config_json_is_read(vae_dir, tmp_path):
    config = json.loads((vae_dir / "config.json").read_text())
    config["mid_block_add_attention"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / vae_lib.WEIGHTS_NAME).write_bytes((vae_dir / vae_lib.WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match="unexpected keys .*attentions.0.to_q.weight"):
        vae_lib.load_vae(tmp_path)


@nnx.jit
def _latent_outputs(model, images, key):
    """One compile for all the quantities test_latent_scaling compares."""
    mean, logvar = model.encode(images)
    latents = vae_lib.encode_to_latents(model, images)
    sample = vae_lib.encode_to_latents(model, images, key)
    return mean, logvar, latents, sample, vae_lib.decode_latents(model, latents), model.decode(mean)


def test_latent_scaling(vae, reference):
    images = _nhwc(reference["images"])
    mean, logvar, latents, sample, decoded, expected = _latent_outputs(vae, images, jax.random.key(0))
    np.testing.assert_allclose(latents, mean * 0.18215, rtol=1e-6)
    np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-5)
    noise = (sample / 0.18215 - mean) / jnp.exp(0.5 * logvar)  # [B, h, w, L] ~ N(0, 1)
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.1


def test_bf16_compute_keeps_float32_params(vae_dir, vae, reference):
    vae_bf16 = vae_lib.load_vae(vae_dir, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(vae_bf16, nnx.Param)))
    decoded = decode(vae_bf16, _nhwc(reference["latents"]))
    assert decoded.dtype == jnp.float32
    assert _rel_error(decoded, reference["decoded"]) < 5e-2


def test_nchw_input_is_rejected(vae, reference):
    with pytest.raises(ValueError, match=r"NHWC \[B, H, W, 3\]"):
        vae.encode(jnp.asarray(reference["images"]))
