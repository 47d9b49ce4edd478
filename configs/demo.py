"""The embedded default: procedural scenes in pixel space, a small DiT, 2 CPU cores.

  python -m rpe_jax.main --config=configs/demo.py --workdir=/tmp/rpe_demo

Trains at 32 px (patch 4: 8x8 tokens, L = 16 per axis), 2000 steps in about 10 minutes on
2 CPU cores, and writes sample grids at 32, 48 and 64 px (8, 12 and 16 tokens per side) with
RPE-2D and with plain RoPE extrapolation.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.variant = "DiT-S/4"
    config.model.depth = 4
    config.model.width = 128
    config.model.heads = 4
    config.data.source = "procedural"
    config.data.latent = False
    config.data.resolution = 32
    config.data.num_classes = 10
    config.data.train_size = 100_000
    config.data.eval_size = 10_000
    config.data.read_threads = 0  # rendering is cheap: threads cost more than they save
    config.positions.max_positions = 16  # 2 x the 8-token training grid
    config.train.batch_size = 32
    config.train.num_steps = 2_000
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 200
    config.train.cosine_decay = True
    config.train.ema_decay = 0.999
    config.train.log_every = 100
    config.train.checkpoint_every = 1_000
    config.train.sample_every = 0
    config.train.async_checkpoint = False
    config.train.block_each_step = True
    config.sample.resolutions = (32, 48, 64)
    config.sample.methods = ("rpe2d", "extrapolation")
    config.sample.steps = 32
    config.sample.cfg_scale = 2.0
    config.sample.num_images = 20
    config.sample.num_samples = 1_000
    return config
