"""Plain 2D RoPE on the fixed training grid: the checkpoint every baseline runs on.

  python -m rpe_jax.main --config=configs/experiments/plain_rope.py --workdir=/runs/rg/plain_rope

As configs/demo_plain_rope.py: positions `0..n-1`, no resize-and-crop, no
micro-conditioning. Sampled with every inference-time baseline of the method registry
(extrapolation, PI, NTK, NTK-by-parts, YaRN, FiTv2 NTK-pro, each also per axis, and
Lumina-Next), all on this one checkpoint.
"""

from configs.experiments import common


def get_config(arg=None):
    config = common.get_config(arg)
    config.positions.train_rule = "grid"
    config.data.resize_crop_prob = 0.0
    config.model.micro_conditioning = False
    config.sample.methods = common.BASELINES
    return config
