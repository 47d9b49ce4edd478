"""Multi-stage plain RoPE: the 16 px `plain_rope` run fine-tuned at 32 px.

  python -m rpe_jax.main --config=configs/experiments/plain_rope_finetune.py \
    --workdir=/runs/rg/plain_rope_finetune --config.train.init_from=/runs/rg/plain_rope

The plain-RoPE counterpart of `rpe2d_finetune` (see its docstring for the choice of
16 px -> 32 px): positions `0..n-1` on the 16x16-token grid, `steps // 8` steps with a
fresh optimizer. Sampled at 16, 24 and 32 px with `extrapolation` (at 16 px, below the
new training grid, every baseline's frequency rule reduces to it: the retention number)
and `yarn` (a strong interpolation baseline).
"""

from ml_collections import config_dict

from configs.experiments import common, plain_rope

INIT_FROM = "plain_rope"  # the experiment whose final checkpoint this run starts from


def get_config(arg=None):
    config = plain_rope.get_config(arg)
    common.to_high_resolution(config, common.finetune_steps(common.parse_switches(arg)["steps"]))
    config.train.init_from = config_dict.placeholder(str)  # the workdir of INIT_FROM
    config.sample.methods = ("extrapolation", "yarn")
    return config
