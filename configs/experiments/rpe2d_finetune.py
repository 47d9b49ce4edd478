"""Multi-stage RPE-2D: the 16 px `rpe2d` run fine-tuned at 32 px (inheritance).

  python -m rpe_jax.main --config=configs/experiments/rpe2d_finetune.py --workdir=/runs/rg/rpe2d_finetune \
    --config.train.init_from=/runs/rg/rpe2d

The low-resolution stage is the `rpe2d` run itself (16 px, 8x8 tokens), not a separate
run at half of it: 8 px gives 4x4 tokens, where RPE-2D draws 4 of 8 positions per axis,
the scenes are a few blobs and the evaluation classifier is not trained below 16 px. So
the paper's "low-res pretrain, high-res fine-tune" is 16 px -> 32 px here, and the
pretrained checkpoint is shared with the main table (no compute spent twice).

The fine-tune trains at 32 px (16x16 tokens) with `L = 32` for `steps // 8` steps (500)
with a fresh optimizer (warm-up and cosine decay again) from the `rpe2d` parameters and
EMA: RoPE has no position table, so the parameters carry over to any grid and `L`.
`train.init_from` is a placeholder here; the benchmark script passes the source workdir.
Sampled at 16 px (retention), 24 and 32 px; checkpoints at each quarter for the
FID-vs-compute curve.
"""

from ml_collections import config_dict

from configs.experiments import common, rpe2d

INIT_FROM = "rpe2d"  # the experiment whose final checkpoint this run starts from


def get_config(arg=None):
    config = rpe2d.get_config(arg)
    common.to_high_resolution(config, common.finetune_steps(common.parse_switches(arg)["steps"]))
    config.train.init_from = config_dict.placeholder(str)  # the workdir of INIT_FROM
    config.sample.methods = ("rpe2d",)
    return config
