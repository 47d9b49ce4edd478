"""Sharded flow-matching training of the DiT with RPE-2D positions, resumable exactly.

The train state is born sharded (abstract init, shardings from the partition rules, then
a jitted init with those out-shardings); the step is a pure jitted function of (state,
batch) whose RPE-2D draws, noise and times come from `fold_in(seed key, step)`, so a
resumed run replays exactly. Orbax saves the state and the Grain iterator together.

Legend: B batch, H x W image, C channels.
"""

import dataclasses
import functools
import json
import math
import signal
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from clu import metrics as clu_metrics
from etils import epath
from flax import nnx

from rpe_jax import checkpoint, config_utils, positions, sample, sharding
from rpe_jax.data import pipeline
from rpe_jax.diffusion import flow
from rpe_jax.models import dit
from rpe_jax.train_state import TrainState, create_train_state, learning_rate_schedule, make_optimizer


# CLU declares each metric by a class-valued annotation, which mypy cannot read as a type.
@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")  # type: ignore[valid-type]
    grad_norm: clu_metrics.Average.from_output("grad_norm")  # type: ignore[valid-type]
    param_norm: clu_metrics.LastValue.from_output("param_norm")  # type: ignore[valid-type]
    update_norm: clu_metrics.Average.from_output("update_norm")  # type: ignore[valid-type]
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static part of the train step, read once from the config."""

    grid: tuple[int, int]
    max_positions: tuple[int, int]
    train_rule: str
    per_sample: bool
    crop_coupled: bool
    micro_conditioning: bool
    time_sampler: str
    time_mean: float
    time_std: float
    label_dropout: float
    num_classes: int
    ema_decay: float
    grad_accum_steps: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "StepConfig":
        return cls(
            grid=config_utils.train_grid(config),
            max_positions=config_utils.max_positions(config),
            train_rule=config.positions.train_rule,
            per_sample=config.positions.per_sample,
            crop_coupled=config.positions.crop_coupled,
            micro_conditioning=config.model.micro_conditioning,
            time_sampler=config.objective.time_sampler,
            time_mean=config.objective.time_mean,
            time_std=config.objective.time_std,
            label_dropout=config.objective.label_dropout,
            num_classes=config.data.num_classes,
            ema_decay=config.train.ema_decay,
            grad_accum_steps=config.train.grad_accum_steps,
        )


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, batch: dict, key: jax.Array, cfg: StepConfig):
    """Flow-matching loss of one (micro-)batch with fresh RPE-2D positions.

    Args:
      batch: {"x": [B, H, W, C], "label": [B], "micro": [B, 3], "crop": [B, 4]}.
    """
    k_time, k_noise, k_pos, k_drop = jax.random.split(key, 4)
    x = batch["x"]
    b = x.shape[0]
    t = flow.sample_time(k_time, b, cfg.time_sampler, cfg.time_mean, cfg.time_std)
    noise = jax.random.normal(k_noise, x.shape, x.dtype)
    labels = dit.drop_labels(k_drop, batch["label"], cfg.label_dropout, cfg.num_classes)
    crop = batch["crop"] if cfg.crop_coupled else None
    pos = positions.TRAIN_RULES[cfg.train_rule](k_pos, b, cfg.grid, cfg.max_positions, cfg.per_sample, crop)
    micro = batch["micro"] if cfg.micro_conditioning else None
    model = nnx.merge(graphdef, params)
    with jax.named_scope("forward"):
        prediction = model(flow.interpolate(x, noise, t), t, labels, pos, micro)
    return flow.velocity_loss(prediction, x, noise).mean()


def _accumulated_grads(params, graphdef, batch, key, cfg: StepConfig):
    """Mean loss and gradients over `grad_accum_steps` micro-batches."""
    grad_fn = jax.value_and_grad(loss_fn)
    k = cfg.grad_accum_steps
    if k == 1:
        return grad_fn(params, graphdef, batch, key, cfg)
    # Micro-batch i takes every k-th example, so each device holds part of each one.
    micro = jax.tree.map(lambda v: v.reshape(v.shape[0] // k, k, *v.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, inputs):
        i, mb = inputs
        loss, grads = grad_fn(params, graphdef, mb, jax.random.fold_in(key, i), cfg)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return loss / k, jax.tree.map(lambda g: g / k, grads)


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay at `step`: min(decay, (1 + step) / (10 + step)).

    The warm-up keeps early averages from holding on to the random initialisation (with a
    flat 0.999, 13.5% of the EMA is still the initial weights after 2000 steps).
    """
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(
    state: TrainState,
    batch: dict,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: StepConfig,
) -> tuple[TrainState, TrainMetrics]:
    """One optimizer step: (state, batch) -> (new state, metrics)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, grads = _accumulated_grads(state.params, graphdef, batch, key, cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, cfg.ema_decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    metrics = TrainMetrics.single_from_model_output(
        loss=loss,
        grad_norm=optax.tree.norm(grads),
        param_norm=optax.tree.norm(params),
        update_norm=optax.tree.norm(updates),
        learning_rate=schedule(state.step),
    )
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    return new_state, metrics


def jit_train_step(config, graphdef, tx, shardings, mesh):
    step = functools.partial(
        train_step,
        graphdef=graphdef,
        tx=tx,
        schedule=learning_rate_schedule(config),
        cfg=StepConfig.from_config(config),
    )
    return jax.jit(
        step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


class PreemptionFlag:
    """Set by SIGTERM while training runs, so the loop saves and exits cleanly."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def check_finite(loss: float, step: int, last_good: int | None) -> None:
    """Raises RuntimeError when the loss is NaN or Inf, naming the step window."""
    if not math.isfinite(loss):
        raise RuntimeError(
            f"Training loss is {loss} at step {step} (last checked finite checkpoint: "
            f"{last_good}). Stopping without saving; the run resumes from that checkpoint. "
            "Lower config.train.learning_rate, enable config.train.grad_clip, or use float32."
        )


def _data_iterator(config: ml_collections.ConfigDict, patch: int):
    batch = config.train.batch_size
    if batch % jax.process_count():
        raise ValueError(f"Global batch {batch} does not split over {jax.process_count()} processes.")
    dataset = pipeline.create_dataset(
        config.data,
        split="train",
        resolution=config_utils.input_size(config, config_utils.parse_resolution(config.data.resolution)),
        patch=patch,
        batch_size=batch // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return iter(dataset)


def _log_start(config, mesh, state, workdir, writer, initial_step):
    logging.info("Config:\n%s", config)
    logging.info(
        "Mesh %s over %d devices; %d processes.",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    logging.info("Batch per device: %d.", config.train.batch_size // jax.device_count())
    parameter_overview.log_parameter_overview(nnx.to_pure_dict(state.params))
    if initial_step == 0 and jax.process_index() == 0:
        writer.write_hparams(
            {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort()), indent=2))


def _write_samples(sampler: sample.GridSampler, state: TrainState, step: int, workdir: str) -> None:
    paths = sample.write_sample_grids(sampler, state.ema_params, step, workdir)
    if paths and jax.process_index() == 0:
        logging.info("Wrote %d sample grids at step %d: %s", len(paths), step, paths)


def _init_from(source_dir: str, config, state: TrainState, shardings) -> TrainState:
    """A fresh run that starts from another run's parameters and EMA (any training grid:
    the parameters do not depend on it), with a fresh optimizer and step 0."""
    source = checkpoint.make_manager(source_dir, config)
    step = source.latest_step()
    if step is None:
        raise FileNotFoundError(f"config.train.init_from={source_dir!r} has no checkpoint to start from.")
    restored = checkpoint.restore(source, step, checkpoint.abstract_state(state, shardings))
    logging.info(
        "Initialised parameters and EMA from %s, step %d; optimizer state is fresh.", source_dir, step
    )
    return state.replace(params=restored.params, ema_params=restored.ema_params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) in `workdir`; writes checkpoints, metrics and sample grids.

    Returns:
      The final train state.
    """
    config_utils.validate(config, jax.device_count())
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_divides(config.train.batch_size // config.train.grad_accum_steps, mesh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    tx = make_optimizer(config)
    graphdef, state, shardings = create_train_state(config, mesh, tx)
    patch = dit.decode_variant(config.model.variant)["patch"]
    data = _data_iterator(config, patch)
    manager = checkpoint.make_manager(workdir, config)
    if manager.latest_step() is not None:
        logging.info("Resuming from step %d in %s.", manager.latest_step(), workdir)
        state = checkpoint.restore(
            manager, manager.latest_step(), checkpoint.abstract_state(state, shardings), data
        )
    elif config.train.init_from:
        state = _init_from(config.train.init_from, config, state, shardings)
    initial_step = int(state.step)
    _log_start(config, mesh, state, workdir, writer, initial_step)

    step_fn = jit_train_step(config, graphdef, tx, shardings, mesh)
    first = sharding.global_batch(next(data), mesh)
    start = time.time()
    step_fn = step_fn.lower(state, first).compile()
    logging.info("Compiled the train step in %.1f s.", time.time() - start)
    sampler = sample.GridSampler(config, graphdef, mesh)
    num_steps = config.train.num_steps
    hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)]
    if config.train.profile_steps and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=config.train.profile_steps, logdir=workdir))
    last_good = manager.latest_step()
    report = hooks[0]
    metrics = None
    with metric_writers.ensure_flushes(writer), PreemptionFlag() as preempted:
        for step in range(initial_step + 1, num_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                with report.timed("data"):
                    batch = first if step == initial_step + 1 else sharding.global_batch(next(data), mesh)
                state, step_metrics = step_fn(state, batch)
                if config.train.block_each_step:
                    check_finite(float(step_metrics.loss.compute()), step, last_good)
            metrics = step_metrics if metrics is None else metrics.merge(step_metrics)
            for hook in hooks:
                hook(step)
            is_last = step == num_steps or preempted.raised
            if step % config.train.log_every == 0 or is_last:
                summary = metrics.compute()
                check_finite(float(summary["loss"]), step, last_good)
                writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
                metrics = None
            if step % config.train.checkpoint_every == 0 or is_last:
                with report.timed("checkpoint"):
                    check_finite(float(step_metrics.loss.compute()), step, last_good)
                    checkpoint.save(manager, step, state, data)
                last_good = step
            sample_every = config.train.sample_every
            if (sample_every and step % sample_every == 0) or step == num_steps:
                with report.timed("sample"):
                    _write_samples(sampler, state, step, workdir)
            if preempted.raised:
                break
    manager.wait_until_finished()
    return state
