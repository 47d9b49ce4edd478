"""Paper scale: DiT-XL/2 on ImageNet 256 SD-VAE latents, RPE-2D with L = 32 per axis.

  # 1. Encode ImageNet (folder layout) at 256 px and the resize factors, once:
  python -m rpe_jax.main --config=configs/imagenet256.py --workdir=/data/in256 --mode=extract_latents \
      --config.data.latent_source=image_folder --config.data.root=/data/imagenet \
      --config.vae.path=/models/sd-vae-ft-ema
  # 2. Train on the latents:
  python -m rpe_jax.main --config=configs/imagenet256.py --workdir=gs://BUCKET/rpe256 \
      --config.data.latents_dir=/data/in256/latents --config.vae.path=/models/sd-vae-ft-ema
"""

from configs import base


def get_config():
    config = base.get_config()
    config.data.resolution = 256  # 32x32 latents, 16x16 tokens with patch 2
    config.data.source = "latents"
    config.data.latent_source = "image_folder"
    config.eval.reference_source = "image_folder"
    # A bootstrap resample of 50k 2048-wide Inception features costs ~30 s on the host CPU per
    # cell and resample: report two sampling seeds for the key cells instead.
    config.eval.bootstrap = 0
    config.positions.max_positions = 32
    config.sample.resolutions = (128, 256, 384, 512)
    config.train.block_each_step = False
    return config
