"""RPE-2D trained from scratch at 32 px with the compute of pretraining + fine-tune.

  python -m rpe_jax.main --config=configs/experiments/rpe2d_highres_scratch.py \
    --workdir=/runs/rg/rpe2d_highres_scratch

The control of `rpe2d_finetune`: same resolution (32 px, 16x16 tokens, `L = 32`), same
model, batch and optimizer, from random initialisation, for the steps whose training FLOPs
equal those of `rpe2d` (4000 steps at 8x8 tokens) plus `rpe2d_finetune` (500 steps at
16x16 tokens): `common.equal_compute_steps`, 1312 steps (an 8x8-token step costs 0.2031 of
a 16x16-token one with the attention term; 0.25 and 1500 steps if FLOPs were proportional to
steps x tokens x batch).
"""

from configs.experiments import common, rpe2d


def get_config(arg=None):
    config = rpe2d.get_config(arg)
    common.to_high_resolution(config, common.equal_compute_steps(common.parse_switches(arg)["steps"]))
    config.sample.methods = ("rpe2d",)
    return config
