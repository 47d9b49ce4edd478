"""Paper scale: DiT-XL/2 on ImageNet 512 latents (32x32 tokens), tested at 768 and 1024."""

from configs import imagenet256


def get_config():
    config = imagenet256.get_config()
    config.data.resolution = 512
    config.positions.max_positions = 64
    config.sample.resolutions = (512, 768, 1024)
    return config
