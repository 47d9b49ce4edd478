"""Tests of the DiT: sizes, any-grid forward, conditioning, and a PyTorch reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from rpe_jax import positions, rope
from rpe_jax.models import dit

TINY = dict(depth=2, width=64, heads=2, num_classes=10, in_channels=4)


def _param_count(model) -> int:
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _randomized(model, seed=0, scale=0.05, keep=lambda path: False):
    """Replaces every parameter (zero-initialised ones included) by noise."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        v if keep(jax.tree_util.keystr(p)) else v + scale * jax.random.normal(k, v.shape)
        for (p, v), k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, new))
    return model


# Published sizes (DiT paper, Table 1): S/2 33M, B/2 130M, L/2 458M, XL/2 675M parameters.
@pytest.mark.parametrize("name, published", [("S/2", 33e6), ("B/2", 130e6), ("L/2", 458e6), ("XL/2", 675e6)])
def test_parameter_counts_match_the_paper(name, published):
    counts = {
        pe: _param_count(
            nnx.eval_shape(lambda pe=pe: dit.create_model(name, pos_encoding=pe, rngs=nnx.Rngs(0)))
        )
        for pe in dit.POS_ENCODINGS
    }
    assert abs(counts["rope"] - published) / published < 0.01
    assert counts["rope"] == counts["sincos"] == counts["none"], "positions must add no parameters"


def test_variant_names_and_errors():
    assert dit.decode_variant("DiT-XL/2") == {"depth": 28, "width": 1152, "heads": 16, "patch": 2}
    assert dit.decode_variant("B/8")["patch"] == 8
    with pytest.raises(ValueError, match="'DiT-M/2'.*'XL'"):
        dit.decode_variant("DiT-M/2")
    with pytest.raises(ValueError, match="patch in"):
        dit.decode_variant("S/3")
    with pytest.raises(ValueError, match="Unknown DiT options.*'widht'"):
        dit.create_model("S/2", widht=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="head dim divisible by 4"):
        dit.create_model("S/2", width=60, heads=10, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def model():
    return _randomized(dit.create_model("S/2", micro_conditioning=True, rngs=nnx.Rngs(0), **TINY))


def _inputs(grid, patch=2, batch=2, seed=0):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, grid[0] * patch, grid[1] * patch, 4))
    t = jax.random.uniform(kt, (batch,))
    y = jnp.arange(batch) % 11  # includes the null class 10 when batch > 10
    return x, t, y


def test_one_set_of_parameters_runs_every_grid(model):
    fwd = nnx.jit(lambda m, x, t, y, p: m(x, t, y, p))
    for grid in [(8, 8), (16, 16), (24, 24), (32, 32), (16, 32), (48, 16)]:
        x, t, y = _inputs(grid)
        pos = positions.train_positions(jax.random.key(1), 2, grid, (48, 48))
        out = fwd(model, x, t, y, pos)
        assert out.shape == x.shape and out.dtype == jnp.float32
        assert bool(jnp.isfinite(out).all()) and float(jnp.abs(out).mean()) > 0


def test_rope_model_is_translation_invariant_and_sincos_is_not():
    x, t, y = _inputs((4, 6))
    pos = positions.train_positions(jax.random.key(2), 2, (4, 6), (12, 12))
    shifted = pos + jnp.array([5, 3])
    rope_model = _randomized(dit.create_model("S/2", rngs=nnx.Rngs(0), **TINY))
    np.testing.assert_allclose(rope_model(x, t, y, shifted), rope_model(x, t, y, pos), atol=1e-4)
    permuted = rope_model(x, t, y, pos[:, ::-1])
    assert float(jnp.abs(permuted - rope_model(x, t, y, pos)).max()) > 1e-3, "positions must matter"
    sincos_model = _randomized(dit.create_model("S/2", pos_encoding="sincos", rngs=nnx.Rngs(0), **TINY))
    assert float(jnp.abs(sincos_model(x, t, y, shifted) - sincos_model(x, t, y, pos)).max()) > 1e-3


def test_micro_conditioning_is_zero_at_init():
    def is_last_micro_layer(path):
        return "micro_embed" in path and "fc2" in path

    m = _randomized(
        dit.create_model("S/2", micro_conditioning=True, rngs=nnx.Rngs(0), **TINY),
        keep=is_last_micro_layer,
    )
    x, t, y = _inputs((4, 4))
    crop = jnp.array([[1.5, 0.25, 0.5], [2.0, 0.5, 0.0]])
    np.testing.assert_array_equal(m(x, t, y, micro=crop), m(x, t, y))
    m = _randomized(m, seed=1)
    assert float(jnp.abs(m(x, t, y, micro=crop) - m(x, t, y)).max()) > 1e-4


def test_zero_initialised_model_predicts_zero():
    m = dit.create_model("S/2", rngs=nnx.Rngs(0), **TINY)
    x, t, y = _inputs((4, 4))
    np.testing.assert_array_equal(m(x, t, y), jnp.zeros_like(x))


def test_bad_inputs_raise_clear_errors(model):
    x, t, y = _inputs((4, 4))
    with pytest.raises(ValueError, match=r"N = 16 tokens.*\(2, 9, 2\)"):
        model(x, t, y, jnp.zeros((2, 9, 2), jnp.int32))
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        model(jnp.zeros((1, 9, 8, 4)), t[:1], y[:1])
    with pytest.raises(ValueError, match="3 channels"):
        model(jnp.zeros((1, 8, 8, 3)), t[:1], y[:1])


def test_bf16_compute_keeps_float32_params():
    m32 = _randomized(dit.create_model("S/2", rngs=nnx.Rngs(0), **TINY))
    m16 = dit.create_model("S/2", dtype=jnp.bfloat16, rngs=nnx.Rngs(0), **TINY)
    nnx.update(m16, nnx.state(m32, nnx.Param))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    x, t, y = _inputs((4, 4))
    a, b = m32(x, t, y), m16(x, t, y)
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())


def test_drop_labels():
    y = jnp.arange(10000) % 7
    assert (dit.drop_labels(jax.random.key(0), y, 0.0, 7) == y).all()
    assert (dit.drop_labels(jax.random.key(0), y, 1.0, 7) == 7).all()
    dropped = dit.drop_labels(jax.random.key(0), y, 0.1, 7)
    assert abs(float((dropped == 7).mean()) - 0.1) < 0.015
    assert ((dropped == y) | (dropped == 7)).all()


# --- PyTorch reference: the DiT forward written with torch ops (conv patch embedding,
# complex-number RoPE, scaled_dot_product_attention) on our weights.


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


def _torch_sinusoid(v, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = v[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _torch_mlp_embed(p, v):
    emb = _torch_sinusoid(v * 1000.0).reshape(v.shape[0], -1)
    return F.linear(
        F.silu(F.linear(emb, _t(p["fc1"]["kernel"]).T, _t(p["fc1"]["bias"]))),
        _t(p["fc2"]["kernel"]).T,
        _t(p["fc2"]["bias"]),
    )


def _torch_rope(x, pos, freqs):
    """x: [B, H, N, K]; each axis half holds pairs (j, j + K/8) as complex numbers."""
    b, h, n, k = x.shape
    parts = []
    for axis in range(2):
        half = x[..., axis * k // 2 : (axis + 1) * k // 2]
        z = torch.complex(half[..., : k // 4], half[..., k // 4 :])
        z = z * torch.polar(torch.ones_like(freqs[axis]), pos[:, None, :, axis, None] * freqs[axis])
        parts += [z.real, z.imag]
    return torch.cat(parts, dim=-1)


def _torch_dit(params, cfg, x, t, y, pos, micro, freqs, logit_scale):
    p_, d, h = cfg.patch, cfg.width, cfg.heads
    k = d // h
    xs = _t(x).permute(0, 3, 1, 2)  # NCHW
    w = _t(params["patch_embed"]["kernel"]).reshape(p_, p_, cfg.in_channels, d).permute(3, 2, 0, 1)
    tok = F.conv2d(xs, w, _t(params["patch_embed"]["bias"]), stride=p_)
    b, _, gh, gw = tok.shape
    tok = tok.flatten(2).transpose(1, 2)  # [B, N, D]
    c = (
        _torch_mlp_embed(params["t_embed"], _t(t)[:, None])
        + _t(params["y_embed"]["embedding"])[torch.from_numpy(np.asarray(y))]
    )
    c = c + _torch_mlp_embed(params["micro_embed"], _t(micro))
    pos, freqs = _t(pos), _t(freqs)
    for blk in params["blocks"].values():
        mod = F.linear(F.silu(c), _t(blk["adaln"]["kernel"]).T, _t(blk["adaln"]["bias"])).chunk(6, dim=-1)
        hmod = F.layer_norm(tok, (d,), eps=1e-6) * (1 + mod[1][:, None]) + mod[0][:, None]
        qkv = F.linear(hmod, _t(blk["attn"]["qkv"]["kernel"]).T, _t(blk["attn"]["qkv"]["bias"]))
        q, kk, v = qkv.reshape(b, -1, 3, h, k).permute(2, 0, 3, 1, 4)
        q, kk = _torch_rope(q, pos, freqs), _torch_rope(kk, pos, freqs)
        att = F.scaled_dot_product_attention(q, kk, v, scale=logit_scale / math.sqrt(k))
        att = att.transpose(1, 2).reshape(b, -1, d)
        tok = tok + mod[2][:, None] * F.linear(
            att, _t(blk["attn"]["proj"]["kernel"]).T, _t(blk["attn"]["proj"]["bias"])
        )
        hmod = F.layer_norm(tok, (d,), eps=1e-6) * (1 + mod[4][:, None]) + mod[3][:, None]
        mlp = F.gelu(
            F.linear(hmod, _t(blk["mlp"]["fc1"]["kernel"]).T, _t(blk["mlp"]["fc1"]["bias"])),
            approximate="tanh",
        )
        tok = tok + mod[5][:, None] * F.linear(
            mlp, _t(blk["mlp"]["fc2"]["kernel"]).T, _t(blk["mlp"]["fc2"]["bias"])
        )
    fin = params["final"]
    shift, scale = F.linear(F.silu(c), _t(fin["adaln"]["kernel"]).T, _t(fin["adaln"]["bias"])).chunk(
        2, dim=-1
    )
    out = F.linear(
        F.layer_norm(tok, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None],
        _t(fin["linear"]["kernel"]).T,
        _t(fin["linear"]["bias"]),
    )
    out = out.reshape(b, gh, gw, p_, p_, -1)  # DiT's unpatchify
    return torch.einsum("nhwpqc->nhpwqc", out).reshape(b, gh * p_, gw * p_, -1).numpy()


@pytest.mark.parametrize("rule", ["extrapolation", "vision_yarn"])
def test_matches_pytorch_reference(rule):
    m = _randomized(dit.create_model("S/2", micro_conditioning=True, rngs=nnx.Rngs(3), **TINY), scale=0.1)
    grid = (4, 6)
    x, t, y = _inputs(grid, batch=3, seed=4)
    pos = positions.train_positions(jax.random.key(5), 3, grid, (8, 12))
    micro = jnp.array([[1.0, 0.0, 0.0], [1.5, 0.25, 0.5], [2.0, 0.5, 0.25]])
    r = rope.make_rope(32, (2, 3), grid, rule, "proportional")
    ours = np.asarray(m(x, t, y, pos, micro, r))
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    ref = _torch_dit(params, m.config, x, t, y, pos, micro, r.freqs, float(r.logit_scale))
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max())
