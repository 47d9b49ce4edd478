"""Ablation: RPE-2D positions without resize-and-crop (and so without micro-conditioning).

  python -m rpe_jax.main --config=configs/experiments/rpe2d_no_augment.py \
    --workdir=/runs/rg/rpe2d_no_augment
"""

from configs.experiments import common


def get_config(arg=None):
    config = common.get_config(arg)
    config.data.resize_crop_prob = 0.0
    config.model.micro_conditioning = False
    return config
