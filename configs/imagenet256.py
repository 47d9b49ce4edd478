"""Paper scale: DiT-XL/2 on ImageNet 256 SD-VAE latents, RPE-2D with L = 32 per axis.

  python -m rpe_jax.main --config=configs/imagenet256.py --workdir=gs://BUCKET/rpe256 \
      --config.data.source=imagenet_latents --config.vae.path=/path/to/sd-vae-ft-ema
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.resolution = 256  # 32x32 latents, 16x16 tokens with patch 2
    config.positions.max_positions = 32
    config.sample.resolutions = (128, 256, 384, 512)
    config.train.block_each_step = False
    return config
