"""Ablation of the demo: plain 2D RoPE on the fixed training grid, no augmentation.

Every inference-time baseline (PI, NTK, YaRN, ...) is evaluated on this checkpoint.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.positions.train_rule = "grid"
    config.data.resize_crop_prob = 0.0
    config.model.micro_conditioning = False
    config.sample.methods = ("extrapolation", "pi", "ntk", "yarn")
    return config
