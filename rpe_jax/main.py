"""Entry point: `python -m rpe_jax.main --config=configs/demo.py --workdir=DIR [--mode=train]`.

Config values are overridden from the command line, e.g.
`--config.train.batch_size=64 --config.sample.resolutions="(256, 512)"`; unknown keys fail.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rpe_jax import config_utils, distributed, evaluate, sample, train
from rpe_jax.data import latents

FLAGS = flags.FLAGS

# Mode name -> function(config, workdir).
MODES = {
    "train": train.train_and_evaluate,
    "sample": sample.generate,
    "evaluate": evaluate.evaluate,
    "extract_latents": latents.extract_latents,
}

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", sorted(MODES), "What to run.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    distributed.initialize(config)  # first: it must precede any JAX computation
    config_utils.validate(config)  # fail fast, before any training work
    logging.info(
        "Process %d/%d; %d local and %d global devices (%s).",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    MODES[FLAGS.mode](config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
