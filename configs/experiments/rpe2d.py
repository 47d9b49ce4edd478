"""RPE-2D with random resize-and-crop and micro-conditioning (the method as a whole).

  python -m rpe_jax.main --config=configs/experiments/rpe2d.py --workdir=/runs/rg/rpe2d

Sampled with `rpe2d` (spread positions, proportional attention, timestep shift) and its
inference ablations: contiguous positions, no attention scale, no shift, neither.
"""

from configs.experiments import common


def get_config(arg=None):
    config = common.get_config(arg)
    config.sample.methods = common.RPE2D_METHODS
    return config
