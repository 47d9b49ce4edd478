"""Settings shared by every resolution-generalization experiment; retune the scale here.

  python -m benchmarks.resolution_generalization --root=/runs/rg

Every experiment is a small DiT on the procedural scenes in pixel space: DiT-S/2 shrunk to
4 blocks x 128 (4 heads) at 16 px, so 8x8 tokens as in configs/demo.py, with `L = 16`
positions per axis (2 x the training grid). All share model, batch, optimizer, seed and
sampler; the main runs also share steps and test resolutions (0.5x .. 2x and a
non-square 1x x 2x grid). The multi-stage runs (`*_finetune`, `rpe2d_highres_scratch`)
train at `HIGH_RESOLUTION` with `L = 2 x` its grid.

Config switches, `configs/experiments/<name>.py:steps=200,samples=64` (unknown ones
fail): `steps` sets the pretraining steps (the fine-tunes take `steps // FINETUNE_DIVISOR`
and the from-scratch run the equal-compute count); `samples` sets the generated and
reference images per cell.

Training FLOPs (`train_flops`): 3 x the forward's matmul FLOPs, forward per example
`depth * N * (24 D^2 + 4 N D)` for N tokens and width D: the transformer blocks, 98-99 %
of the count of benchmarks/train_throughput.py at these sizes (the rest is embedders and
adaLN, per example). To first order FLOPs are proportional to steps x tokens x batch;
the `4 N D` attention term makes a 16x16-token step 4.92 x an 8x8-token step, not 4 x.
"""

import ml_collections

from configs import demo

TRAIN_RESOLUTION = 16  # pixels; 8x8 tokens with patch 2
HIGH_RESOLUTION = 32  # pixels; the multi-stage runs' training resolution (16x16 tokens)
PATCH = 2  # pixels per token side
VARIANT = f"DiT-S/{PATCH}"  # depth, width and heads below
DEPTH = 4
WIDTH = 128
HEADS = 4
MAX_POSITIONS = 16  # L per axis: 2 x the 8-token training grid
STEPS = 4_000  # pretraining steps of every main run (the loss is flat by then: docs/results.md)
FINETUNE_DIVISOR = 8  # a fine-tune takes STEPS // this steps at HIGH_RESOLUTION (500)
BATCH = 32
LEARNING_RATE = 1e-3  # peak, after WARMUP_STEPS; cosine decay to 0 (as configs/demo.py)
WARMUP_STEPS = 200
EMA_DECAY = 0.999
SEED = 0
# Test resolutions in pixels: 0.5x, 0.75x, 1x (sanity), 1.5x, 2x, and 1x by 2x.
TEST_RESOLUTIONS = (8, 12, 16, 24, 32, "16x32")
# Multi-stage runs: the old resolution (retention), in between, and the new one.
FINETUNE_TEST_RESOLUTIONS = (16, 24, 32)
NUM_SAMPLES = 500  # generated images per (method, resolution), and reference images
SAMPLE_BATCH = 100  # images per sampling batch (a multiple of the 10 classes)
# Sampler: Heun, 10 steps (20 evaluations), no guidance (half the cost of guided sampling;
# the comparison is between position rules, which guidance does not touch).
SAMPLE_STEPS = 10
CFG_SCALE = 1.0
CHECKPOINTS_PER_RUN = 4  # evenly spaced; the multi-stage curve evaluates each of them

# Every inference-time baseline of a plain-RoPE checkpoint: rpe_jax.methods.METHODS without
# the rpe2d* entries (tests/test_experiments.py checks the list against the registry).
BASELINES = (
    "extrapolation",
    "pi",
    "vision_pi",
    "ntk",
    "vision_ntk",
    "ntk_by_parts",
    "vision_ntk_by_parts",
    "yarn",
    "vision_yarn",
    "ntk_pro1",
    "vision_ntk_pro1",
    "ntk_pro2",
    "vision_ntk_pro2",
    "lumina_next",
    "lumina_next_unclamped",
)
# RPE-2D inference variants: spread / contiguous positions, without the attention scale,
# without the timestep shift, without both.
RPE2D_METHODS = ("rpe2d", "rpe2d_contiguous", "rpe2d_no_scale", "rpe2d_no_shift", "rpe2d_plain")

# Run order, dependencies first (a fine-tune starts from its module's INIT_FROM run).
EXPERIMENTS = (
    "plain_rope",
    "rpe2d",
    "rpe2d_no_augment",
    "rpe2d_no_micro",
    "plain_rope_finetune",
    "rpe2d_finetune",
    "rpe2d_highres_scratch",
)
SWITCHES = ("steps", "samples")


def parse_switches(arg: str | None) -> dict[str, int]:
    """Switches "steps=200,samples=64" -> {"steps": 200, "samples": 64}, defaults filled in.

    Raises:
      ValueError: on an unknown switch or a value that is not a positive integer.
    """
    values = {"steps": STEPS, "samples": NUM_SAMPLES}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in SWITCHES or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"Bad config switch {item!r}; use {', '.join(f'{s}=<positive int>' for s in SWITCHES)}."
            )
        values[key] = int(value)
    return values


def forward_flops(tokens: int, depth: int = DEPTH, width: int = WIDTH) -> float:
    """Matmul FLOPs of one example's forward pass through the blocks (module docstring)."""
    return float(depth * tokens * (24 * width**2 + 4 * tokens * width))


def train_flops(steps: int, tokens: int, batch: int = BATCH, depth: int = DEPTH, width: int = WIDTH) -> float:
    """Training FLOPs of `steps` steps: 3 x forward per example (forward + backward)."""
    return 3.0 * steps * batch * forward_flops(tokens, depth, width)


def tokens(resolution: int) -> int:
    """Tokens of a square resolution in pixels."""
    return (resolution // PATCH) ** 2


def finetune_steps(steps: int) -> int:
    return max(1, steps // FINETUNE_DIVISOR)


def equal_compute_steps(steps: int) -> int:
    """Steps at HIGH_RESOLUTION whose FLOPs equal pretraining (`steps` at TRAIN_RESOLUTION)
    plus the fine-tune: 4000 -> 4000 x 0.2031 + 500 = 1312 (1500 if FLOPs were
    proportional to tokens)."""
    total = train_flops(steps, tokens(TRAIN_RESOLUTION)) + train_flops(
        finetune_steps(steps), tokens(HIGH_RESOLUTION)
    )
    return round(total / train_flops(1, tokens(HIGH_RESOLUTION)))


def set_steps(config: ml_collections.ConfigDict, steps: int) -> None:
    """Optimizer steps, and CHECKPOINTS_PER_RUN evenly spaced checkpoints, all kept."""
    config.train.num_steps = steps
    config.train.checkpoint_every = -(-steps // CHECKPOINTS_PER_RUN)  # ceil: the last at the end
    config.train.keep_checkpoints = CHECKPOINTS_PER_RUN + 1  # + the last step's


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The shared settings (an RPE-2D run with resize-and-crop and micro-conditioning).

    Args:
      arg: config switches, "steps=N,samples=N" (module docstring).
    """
    switches = parse_switches(arg)
    config = demo.get_config()
    config.seed = SEED
    config.model.variant = VARIANT
    config.model.depth = DEPTH
    config.model.width = WIDTH
    config.model.heads = HEADS
    config.data.resolution = TRAIN_RESOLUTION
    config.positions.train_rule = "rpe2d"
    config.positions.max_positions = MAX_POSITIONS
    config.data.resize_crop_prob = 0.5
    config.data.max_resize_factor = 2.0  # = L / training grid side
    config.model.micro_conditioning = True
    config.train.batch_size = BATCH
    config.train.learning_rate = LEARNING_RATE
    config.train.warmup_steps = WARMUP_STEPS
    config.train.cosine_decay = True
    config.train.ema_decay = EMA_DECAY
    set_steps(config, switches["steps"])
    config.train.sample_every = 0
    config.sample.num_images = 0  # no grids at the end of training: --mode=sample writes them
    config.sample.resolutions = TEST_RESOLUTIONS
    config.sample.methods = ("rpe2d",)
    config.sample.num_samples = switches["samples"]
    config.sample.batch_size = min(SAMPLE_BATCH, switches["samples"])
    config.sample.solver = "heun"
    config.sample.steps = SAMPLE_STEPS
    config.sample.cfg_scale = CFG_SCALE
    config.eval.extractor = "classifier"  # --config.eval.extractor_path=<classifier workdir>
    config.eval.num_reference = switches["samples"]
    return config


def to_high_resolution(config: ml_collections.ConfigDict, steps: int) -> None:
    """Moves a run to HIGH_RESOLUTION: L = 2 x its grid, `steps` steps, the multi-stage test
    resolutions."""
    config.data.resolution = HIGH_RESOLUTION
    config.positions.max_positions = 2 * (HIGH_RESOLUTION // PATCH)  # 2 x the 16-token grid
    set_steps(config, steps)
    config.sample.resolutions = FINETUNE_TEST_RESOLUTIONS
