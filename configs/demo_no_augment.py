"""Ablation of the demo: RPE-2D without the random resize-and-crop."""

from configs import demo


def get_config():
    config = demo.get_config()
    config.data.resize_crop_prob = 0.0
    config.model.micro_conditioning = False
    return config
