"""Ablation of the demo: RPE-2D with resize-and-crop but no micro-conditioning."""

from configs import demo


def get_config():
    config = demo.get_config()
    config.model.micro_conditioning = False
    return config
