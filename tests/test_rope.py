"""Tests of 2D RoPE, the frequency and attention-scale rules, and the sin-cos embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpe_jax import methods, positions, rope

HEAD_DIM = 64  # d = 32 per axis, as in the published NTK numbers
ALL_RULES = sorted(rope.FREQUENCY_RULES)


def _rule(name, train=(16, 16), test=(32, 32), t=0.5):
    return rope.make_rope(HEAD_DIM, train, test, name, t=jnp.float32(t))


def _logits(q, k, pos, freqs):
    """q, k: [1, N, H, K]; pos: [1, N, 2] -> [H, N, N] rotated q.k."""
    cos, sin = rope.rotary_tables(pos, freqs)
    qr, kr = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
    return jnp.einsum("bnhk,bmhk->hnm", qr, kr)


@pytest.mark.parametrize("name", ALL_RULES)
def test_logits_depend_only_on_position_difference(name):
    kq, kk, kp = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (1, 20, 2, HEAD_DIM))
    k = jax.random.normal(kk, (1, 20, 2, HEAD_DIM))
    pos = jax.random.uniform(kp, (1, 20, 2), maxval=30.0)
    freqs = _rule(name).freqs
    base = _logits(q, k, pos, freqs)
    for shift in (jnp.array([7.0, -3.0]), jnp.array([0.5, 11.25])):
        np.testing.assert_allclose(_logits(q, k, pos + shift, freqs), base, atol=2e-4, rtol=1e-4)
    # Identical positions: the rotation cancels and q.k is the plain dot product.
    same = jnp.full((1, 20, 2), 13.0)
    plain = jnp.einsum("bnhk,bmhk->hnm", q, k)
    np.testing.assert_allclose(_logits(q, k, same, freqs), plain, atol=2e-4, rtol=1e-4)


def test_rotation_matches_complex_rotation_per_axis():
    # Independent formula: each pair (a, b) is the complex number a + ib times e^{i p f};
    # pairs of the first half of the head use the row, of the second half the column.
    x = jax.random.normal(jax.random.key(1), (1, 3, 1, 16))
    pos = jnp.array([[[2.0, 5.0], [0.0, 1.0], [7.5, 3.0]]])
    freqs = rope.make_rope(16, (4, 4), (4, 4)).freqs
    out = np.asarray(rope.apply_rope(x, *rope.rotary_tables(pos, freqs)))[0, :, 0]
    xs = np.asarray(x)[0, :, 0]
    f = np.asarray(freqs)
    for n in range(3):
        for axis in range(2):
            half = xs[n, axis * 8 : (axis + 1) * 8]
            z = (half[:4] + 1j * half[4:]) * np.exp(1j * float(pos[0, n, axis]) * f[axis])
            np.testing.assert_allclose(out[n, axis * 8 : axis * 8 + 4], z.real, atol=1e-5)
            np.testing.assert_allclose(out[n, axis * 8 + 4 : (axis + 1) * 8], z.imag, atol=1e-5)


def test_base_frequencies():
    f = rope.base_frequencies(HEAD_DIM)
    assert f.shape == (16,)
    np.testing.assert_allclose(f, 10000.0 ** (-np.arange(16) * 2 / 32), rtol=1e-6)


def test_ntk_base_published_values():
    # FiT's dynntk at d = 32: 20945.9 for s = 2 and 15411.0 for s = 1.5.
    assert rope.ntk_base(32, 2.0) == pytest.approx(20945.9, abs=0.1)
    assert rope.ntk_base(32, 1.5) == pytest.approx(15411.0, abs=0.1)
    freqs = np.asarray(_rule("ntk").freqs)
    np.testing.assert_allclose(freqs[0], 20945.88 ** (-np.arange(0, 32, 2) / 32), rtol=1e-5)


def test_yarn_extrapolation_weights_published_values():
    w = rope.extrapolation_weights(32, 16, high_rot=32, low_rot=1, theta=10000)
    np.testing.assert_allclose(w, [1, 0.5] + [0] * 14)
    w = rope.extrapolation_weights(36, 32, high_rot=32, low_rot=1, theta=10000)
    np.testing.assert_allclose(w, [1, 0.75, 0.5, 0.25] + [0] * 14)
    # The YaRN rule blends PI and the base frequencies with these weights.
    f = rope.base_frequencies(HEAD_DIM)
    freqs = np.asarray(_rule("yarn").freqs[0])
    np.testing.assert_allclose(freqs[:3], [f[0], 0.5 * f[1] + 0.25 * f[1], f[2] / 2], rtol=1e-6)


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("test_grid", [(16, 16), (8, 12)])
def test_rules_reduce_to_plain_frequencies_without_upscaling(name, test_grid):
    if name == "lumina_next_unclamped" and test_grid != (16, 16):
        return  # this variant's isotropic scale is not clamped: checked below
    f = rope.base_frequencies(HEAD_DIM)
    for t in (0.1, 0.9):
        freqs = np.asarray(_rule(name, test=test_grid, t=t).freqs)
        np.testing.assert_allclose(freqs, np.stack([f, f]), rtol=1e-5)


def test_decoupled_scales_are_per_axis():
    f = rope.base_frequencies(HEAD_DIM)
    freqs = np.asarray(_rule("vision_pi", test=(48, 16)).freqs)
    np.testing.assert_allclose(freqs, np.stack([f / 3, f]), rtol=1e-6)
    # Without --decouple FiT scales both axes by the longer side (a quirk kept).
    freqs = np.asarray(_rule("pi", test=(48, 16)).freqs)
    np.testing.assert_allclose(freqs, np.stack([f / 3, f / 3]), rtol=1e-6)


def test_rule_logit_factors():
    # YaRN: m = 0.1 ln 2 + 1 on cos and sin of q and k -> m^2 on the logits.
    assert float(_rule("yarn").logit_scale) == pytest.approx((0.1 * math.log(2) + 1) ** 2)
    assert float(_rule("vision_yarn", test=(32, 16)).logit_scale) == pytest.approx(
        (0.1 * math.log(2) + 1) ** 2
    )
    # NTK-pro keeps FiTv2's factor 2: m > 1 at the training size.
    same = (16, 16)
    assert float(_rule("ntk_pro1", test=same).logit_scale) == pytest.approx(math.log(32) / math.log(16))
    assert float(_rule("ntk_pro2", test=same).logit_scale) == pytest.approx(math.log(512) / math.log(256))
    assert float(_rule("ntk_pro1", test=(4, 4)).logit_scale) == 1.0
    for name in ("extrapolation", "pi", "ntk", "vision_ntk", "lumina_next"):
        assert float(_rule(name).logit_scale) == 1.0


def test_attention_scale_rules():
    def scale(rule, n_train, n_test):
        side = (int(math.isqrt(n_train)),) * 2, (int(math.isqrt(n_test)),) * 2
        return float(rope.make_rope(HEAD_DIM, *side, attention_scale=rule).logit_scale)

    assert scale("proportional", 256, 64) == pytest.approx(0.866, abs=1e-3)  # Lumina-Next
    assert scale("proportional", 256, 1024) == pytest.approx(math.sqrt(10 / 8))
    assert scale("entropy", 256, 1024) == pytest.approx(10 / 8)
    assert scale("yarn", 256, 1024) == pytest.approx((0.1 * math.log(2) + 1) ** 2)
    assert scale("yarn", 256, 64) == 1.0
    assert scale("none", 256, 1024) == 1.0
    combined = rope.make_rope(HEAD_DIM, (16, 16), (32, 32), "yarn", "entropy").logit_scale
    assert float(combined) == pytest.approx((0.1 * math.log(2) + 1) ** 2 * 10 / 8)


def test_lumina_next_switches_at_the_watershed():
    f = rope.base_frequencies(HEAD_DIM)
    # (16, 64) from (16, 16): isotropic s = sqrt(1024 / 256) = 2 on both axes.
    before = np.asarray(_rule("lumina_next", test=(16, 64), t=0.2999).freqs)
    np.testing.assert_allclose(before, np.stack([f / 2, f / 2]), rtol=1e-6)
    after = np.asarray(_rule("lumina_next", test=(16, 64), t=0.3).freqs)
    ntk = 20000.0 ** (-np.arange(0, 32, 2) / 32)
    np.testing.assert_allclose(after, np.stack([ntk, ntk]), rtol=1e-5)
    # Smaller grid: s = 0.5 in the unclamped variant.
    small = np.asarray(_rule("lumina_next_unclamped", test=(8, 8), t=0.1).freqs)
    np.testing.assert_allclose(small[0], 2 * f, rtol=1e-6)
    with pytest.raises(ValueError, match="pass t"):
        rope.make_rope(HEAD_DIM, (16, 16), (32, 32), "lumina_next")
    opts = rope.RopeOptions(watershed=0.5)
    mid = rope.make_rope(HEAD_DIM, (16, 16), (16, 64), "lumina_next", t=jnp.float32(0.4), options=opts)
    np.testing.assert_allclose(np.asarray(mid.freqs[0]), f / 2, rtol=1e-6)


def _peer_lumina_frequencies(train_side, test_h, test_w, t, watershed=0.3, theta=10000.0, d=32):
    """Lumina-Next's sampler and rotary table, from its definitions (BASELINES.md and the
    peer's `lumina_next_t2i/sample.py`): `scale_factor = sqrt(w h) / base` only when the
    resolution exceeds the base one, else 1; then PI (`1 / (theta^(2k/d) s)`) while
    `t < watershed`, NTK (`1 / (theta s)^(2k/d)`) from then on."""
    exceeds = test_h * test_w > train_side**2
    s = math.sqrt(test_h * test_w) / train_side if exceeds else 1.0
    k = np.arange(d // 2)
    if t < watershed:
        return 1.0 / (theta ** (2 * k / d) * s)
    return 1.0 / (theta * s) ** (2 * k / d)


@pytest.mark.parametrize("test_grid", [(8, 8), (12, 16), (16, 16), (24, 24), (16, 64)])
@pytest.mark.parametrize("t", [0.1, 0.29, 0.3, 0.8])
def test_lumina_next_matches_the_peer_sampler(test_grid, t):
    got = np.asarray(_rule("lumina_next", test=test_grid, t=t).freqs)
    expected = _peer_lumina_frequencies(16, *test_grid, t)
    np.testing.assert_allclose(got, np.stack([expected, expected]), rtol=1e-5)


def test_lumina_next_keeps_unclamped_proportional_attention():
    # The peer's softmax scale sqrt(log_{N_train} N / head_dim) has no clamp: 256 -> 64
    # tokens gives sqrt(log(64) / log(256)) = sqrt(3/4) on the logits, in both variants.
    for name in ("lumina_next", "lumina_next_unclamped"):
        method = methods.get_method(name)
        r = rope.make_rope(HEAD_DIM, (16, 16), (8, 8), method.frequency_rule, method.attention_scale, t=0.5)
        assert float(r.logit_scale) == pytest.approx(math.sqrt(0.75))


def test_lumina_next_is_jittable_in_t():
    fn = jax.jit(lambda t: rope.make_rope(HEAD_DIM, (16, 16), (32, 32), "lumina_next", t=t).freqs)
    assert not np.allclose(fn(jnp.float32(0.1)), fn(jnp.float32(0.9)))


def test_unknown_rule_names_list_the_choices():
    with pytest.raises(ValueError, match="Unknown frequency rule 'ntk_pro3'.*'ntk_pro1'"):
        rope.make_rope(HEAD_DIM, (16, 16), (32, 32), "ntk_pro3")
    with pytest.raises(ValueError, match="Unknown attention-scale rule 'loud'.*'proportional'"):
        rope.make_rope(HEAD_DIM, (16, 16), (32, 32), attention_scale="loud")
    with pytest.raises(ValueError, match="divisible by 4"):
        rope.base_frequencies(18)


def test_sincos_embedding_layout():
    d = 16
    pos = jnp.array([[[0, 0], [0, 1], [2, 0]]])
    emb = np.asarray(rope.sincos_embedding(pos, d))[0]
    omega = 10000.0 ** (-np.arange(4) / 4)
    zero = np.concatenate([np.zeros(4), np.ones(4)])
    np.testing.assert_allclose(emb[0], np.concatenate([zero, zero]), atol=1e-6)
    # First half encodes the column, second half the row, each [sin, cos].
    np.testing.assert_allclose(emb[1, :8], np.concatenate([np.sin(omega), np.cos(omega)]), atol=1e-6)
    np.testing.assert_allclose(emb[1, 8:], zero, atol=1e-6)
    np.testing.assert_allclose(emb[2, :8], zero, atol=1e-6)
    np.testing.assert_allclose(emb[2, 8:], np.concatenate([np.sin(2 * omega), np.cos(2 * omega)]), atol=1e-6)


def test_rope_runs_on_non_square_and_float_grids():
    pos = positions.inference_positions((48, 16), (32, 32), allow_fractional=True)[None]
    x = jnp.ones((1, 48 * 16, 2, HEAD_DIM))
    out = rope.apply_rope(x, *rope.rotary_tables(pos, _rule("vision_ntk", test=(48, 16)).freqs))
    assert out.shape == x.shape and bool(jnp.isfinite(out).all())
    # Rotations preserve norms.
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
