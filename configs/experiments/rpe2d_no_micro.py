"""Ablation: RPE-2D with resize-and-crop but no micro-conditioning of the crop.

  python -m rpe_jax.main --config=configs/experiments/rpe2d_no_micro.py \
    --workdir=/runs/rg/rpe2d_no_micro
"""

from configs.experiments import common


def get_config(arg=None):
    config = common.get_config(arg)
    config.model.micro_conditioning = False
    return config
