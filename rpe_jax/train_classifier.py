"""Trains the procedural-scenes classifier, the embedded dataset's FID network.

  python -m rpe_jax.train_classifier --workdir=/tmp/classifier [--steps=400 --batch_size=64]

Each step renders one batch of fresh training scenes (`ProceduralSource`, "train" split) at a
resolution drawn from `train_resolutions`, resizes it to the network's input side as evaluation
does, flips it at random and takes one AdamW step (warmup then cosine decay). So the features
learn to ignore the resize from any test resolution. At the end the validation split is scored
at every training resolution, and the network is written to the workdir with
`classifier.save_classifier` (`classifier.safetensors` + `classifier.json`, holding the
accuracies), ready for `feature_extractor.EXTRACTORS["classifier"]`.

Rendering runs on the host while the previous step runs on the device (asynchronous dispatch).

Shapes: B batch, R rendered side, S input side, K classes.
"""

import functools
import time
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from clu import metric_writers, parameter_overview, periodic_actions
from clu import metrics as clu_metrics
from flax import nnx

from rpe_jax.data import procedural
from rpe_jax.models import classifier

TRAIN_RESOLUTIONS = (16, 24, 32, 48, 64)


@flax.struct.dataclass
class TrainState:
    """Attributes: step [] int32 steps taken; params the network's nnx.Param state; opt_state."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


# CLU declares each metric by a class-valued annotation, which mypy cannot read as a type.
@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")  # type: ignore[valid-type]
    accuracy: clu_metrics.Average.from_output("accuracy")  # type: ignore[valid-type]
    grad_norm: clu_metrics.Average.from_output("grad_norm")  # type: ignore[valid-type]
    param_norm: clu_metrics.LastValue.from_output("param_norm")  # type: ignore[valid-type]
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")  # type: ignore[valid-type]


def make_schedule(steps: int, learning_rate: float) -> optax.Schedule:
    """Linear warmup over 5% of the steps (at least 1), then cosine decay to 0."""
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps)


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    key: jax.Array,
) -> tuple[TrainState, TrainMetrics]:
    """One AdamW step on a batch, with random horizontal flips drawn from fold_in(key, step).

    Args:
      state: the train state.
      images: [B, S, S, 3] in [0, 1], already resized to the input side.
      labels: [B] int32 in [0, K).
      graphdef: the network's structure (static).
      tx: the optimizer (static).
      schedule: the learning-rate schedule `tx` follows, for the metrics (static).
      key: base random key; the step's key is fold_in(key, step).

    Returns:
      The new state and the step's metrics.
    """
    flip = jax.random.bernoulli(jax.random.fold_in(key, state.step), 0.5, (images.shape[0], 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)

    def loss_fn(params):
        with jax.named_scope("forward"):
            logits = nnx.merge(graphdef, params)(images).logits  # [B, K]
        with jax.named_scope("loss"):
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = TrainMetrics.single_from_model_output(
        loss=loss,
        accuracy=jnp.mean(jnp.argmax(logits, -1) == labels),
        grad_norm=optax.tree.norm(grads),
        param_norm=optax.tree.norm(params),
        learning_rate=schedule(state.step),
    )
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _check_resolutions(resolutions: Sequence[int]) -> tuple[int, ...]:
    """Returns the training sides as a tuple, or raises ValueError."""
    resolutions = tuple(int(r) for r in resolutions)
    if not resolutions or min(resolutions) < 1:
        raise ValueError(f"train_resolutions must be a non-empty list of sides >= 1, got {resolutions}.")
    return resolutions


def _render(source: procedural.ProceduralSource, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records `indices` of `source` as images [B, R, R, 3] float32 and labels [B] int32."""
    records = [source[int(i)] for i in indices]
    return np.stack([r["image"] for r in records]), np.stack([r["label"] for r in records])


def training_batch(
    sources: dict[int, procedural.ProceduralSource], step: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The batch of step `step` (>= 0): scenes [step * B, (step + 1) * B) at a seeded random side.

    Args:
      sources: side R -> training source at that side, each with size >= (step + 1) * B.
      step: the step index.
      batch_size: B.
      seed: draws the side, `default_rng([seed, step])`.

    Returns:
      images [B, R, R, 3] float32 in [0, 1] and labels [B] int32.
    """
    side = sorted(sources)[np.random.default_rng([seed, step]).integers(len(sources))]
    return _render(sources[side], np.arange(step * batch_size, (step + 1) * batch_size))


def validation_accuracy(
    model: classifier.Classifier,
    resolutions: Sequence[int],
    *,
    num_classes: int,
    seed: int,
    size: int = 1000,
    batch_size: int = 250,
) -> dict[int, float]:
    """Top-1 accuracy on the first `size` validation scenes, rendered at each side.

    Args:
      model: the classifier.
      resolutions: sides R to render at.
      num_classes: K of the dataset.
      seed: dataset seed.
      size: scenes per side (class-balanced when a multiple of K).
      batch_size: scenes per forward pass.

    Returns:
      {R: accuracy in [0, 1]}.
    """
    graphdef, state = nnx.split(model)
    resize = jax.jit(functools.partial(classifier.resize_area, size=model.config.input_size))
    predict = jax.jit(lambda state, x: jnp.argmax(nnx.merge(graphdef, state)(x).logits, -1))
    accuracies = {}
    for side in resolutions:
        source = procedural.ProceduralSource(
            size, side, split="validation", seed=seed, num_classes=num_classes
        )
        correct = 0
        for start in range(0, size, batch_size):
            images, labels = _render(source, np.arange(start, min(start + batch_size, size)))
            correct += int(jnp.sum(predict(state, resize(images)) == labels))
        accuracies[side] = correct / size
    return accuracies


def _check_finite(summary: dict[str, float], step: int, log_every: int) -> None:
    if not np.isfinite(summary["loss"]):
        raise RuntimeError(
            f"Classifier loss is {summary['loss']} in steps ({max(0, step - log_every)}, {step}]; "
            "lower --learning_rate."
        )


def _train_loop(
    step_fn: Callable[..., tuple[TrainState, TrainMetrics]],
    state: TrainState,
    next_batch: Callable[[int], tuple[np.ndarray, np.ndarray]],
    input_size: int,
    steps: int,
    writer: metric_writers.MetricWriter,
    log_every: int,
) -> TrainState:
    """Runs `steps` steps of `step_fn` (unjitted) on `next_batch(step)`; logs metrics, progress and ETA."""
    step_fn = jax.jit(step_fn, donate_argnums=0)
    resize = jax.jit(functools.partial(classifier.resize_area, size=input_size))
    images, labels = next_batch(0)
    start = time.time()
    step_fn = step_fn.lower(state, resize(images), labels).compile()
    logging.info("Compiled the train step in %.1f s.", time.time() - start)
    report = periodic_actions.ReportProgress(num_train_steps=steps, writer=writer, every_steps=log_every)
    metrics = None
    for step in range(1, steps + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, step_metrics = step_fn(state, resize(images), labels)  # dispatched, not awaited
        metrics = step_metrics if metrics is None else metrics.merge(step_metrics)
        if step < steps:
            with report.timed("data"):  # renders while the device runs the step
                images, labels = next_batch(step)
        report(step)
        if step % log_every == 0 or step == steps:
            summary = {k: float(v) for k, v in metrics.compute().items()}
            _check_finite(summary, step, log_every)
            writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
            metrics = None
    return state


def train_classifier(
    workdir: str,
    *,
    num_classes: int = 10,
    input_size: int = 32,
    steps: int = 400,
    batch_size: int = 64,
    seed: int = 0,
    train_resolutions: Sequence[int] = TRAIN_RESOLUTIONS,
    variant: str = "S",
    learning_rate: float = 3e-3,
    weight_decay: float = 0.05,
    eval_size: int = 1000,
    log_every: int = 50,
) -> tuple[classifier.Classifier, dict[int, float]]:
    """Trains the classifier, scores it on the validation split, saves it into `workdir`.

    Args:
      workdir: output directory (metrics, `classifier.safetensors`, `classifier.json`).
      num_classes: K, classes of the procedural dataset.
      input_size: S, the side images are resized to.
      steps: optimizer steps, >= 1.
      batch_size: B, scenes per step.
      seed: dataset seed (both splits), initialisation, flips and side draws.
      train_resolutions: sides R drawn uniformly, one per batch; also the validation sides.
      variant: network size, a key of `classifier.VARIANTS`.
      learning_rate: AdamW peak learning rate.
      weight_decay: AdamW decoupled weight decay.
      eval_size: validation scenes per side.
      log_every: steps between metric logs.

    Returns:
      The trained network and {R: validation accuracy} for every side in `train_resolutions`.

    Raises:
      ValueError: on an unknown variant or bad sizes.
      RuntimeError: if the loss stops being finite.
    """
    if variant not in classifier.VARIANTS:
        raise ValueError(
            f"Unknown classifier variant {variant!r}; choose one of {sorted(classifier.VARIANTS)}."
        )
    if steps < 1 or batch_size < 1 or eval_size < 1 or log_every < 1:
        raise ValueError(
            f"steps, batch_size, eval_size and log_every must be >= 1, got {steps}, {batch_size}, "
            f"{eval_size}, {log_every}."
        )
    resolutions = _check_resolutions(train_resolutions)
    config = classifier.ClassifierConfig(num_classes, input_size, classifier.VARIANTS[variant])
    logging.info(
        "Classifier %s, variant %s; training sides %s, batch %d.", config, variant, resolutions, batch_size
    )
    # RBG keys: their kernels compile several times faster than threefry's on CPU (init took 33 s
    # with threefry, 8.5 s with RBG on the shared 2-core machine); the weights are saved, not redrawn.
    key = jax.random.key(seed, impl="rbg")
    model = classifier.Classifier(config, rngs=nnx.Rngs(key))
    graphdef, params = nnx.split(model, nnx.Param)
    parameter_overview.log_parameter_overview(nnx.to_pure_dict(params))
    schedule = make_schedule(steps, learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step_fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, key=key)
    sources = {
        side: procedural.ProceduralSource(steps * batch_size, side, seed=seed, num_classes=num_classes)
        for side in resolutions
    }
    start = time.time()
    writer = metric_writers.create_default_writer(workdir)
    with metric_writers.ensure_flushes(writer):
        next_batch = functools.partial(training_batch, sources, batch_size=batch_size, seed=seed)
        state = _train_loop(step_fn, state, next_batch, input_size, steps, writer, log_every)
        model = nnx.merge(graphdef, state.params)
        accuracies = validation_accuracy(
            model, resolutions, num_classes=num_classes, seed=seed, size=eval_size
        )
        writer.write_scalars(steps, {f"eval_accuracy_{side}px": acc for side, acc in accuracies.items()})
    notes = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "variant": variant,
        "train_resolutions": list(resolutions),
        "validation_accuracy": {str(side): acc for side, acc in accuracies.items()},
        "train_seconds": round(time.time() - start, 1),
    }
    path = classifier.save_classifier(model, workdir, notes)
    logging.info("Validation accuracy by side: %s. Saved %s.", accuracies, path)
    return model, accuracies


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (library imports define none)."""
    flags.DEFINE_string(
        "workdir", None, "Output directory for the weights, config and metrics.", required=True
    )
    flags.DEFINE_integer("steps", 400, "Optimizer steps.")
    flags.DEFINE_integer("batch_size", 64, "Scenes per step.")
    flags.DEFINE_integer("seed", 0, "Dataset, initialisation and augmentation seed.")
    flags.DEFINE_integer("num_classes", 10, "Classes of the procedural dataset.")
    flags.DEFINE_integer("input_size", 32, "Side images are resized to before the network.")
    flags.DEFINE_list(
        "train_resolutions", list(map(str, TRAIN_RESOLUTIONS)), "Rendered sides, one per batch."
    )
    flags.DEFINE_enum("variant", "S", sorted(classifier.VARIANTS), "Network size.")
    flags.DEFINE_float("learning_rate", 3e-3, "AdamW peak learning rate.")
    flags.DEFINE_integer("eval_size", 1000, "Validation scenes per side.")
    flags.DEFINE_integer("log_every", 50, "Steps between metric logs.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.info("%d devices (%s).", jax.device_count(), jax.devices()[0].platform)
    train_classifier(
        FLAGS.workdir,
        num_classes=FLAGS.num_classes,
        input_size=FLAGS.input_size,
        steps=FLAGS.steps,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        train_resolutions=[int(r) for r in FLAGS.train_resolutions],
        variant=FLAGS.variant,
        learning_rate=FLAGS.learning_rate,
        eval_size=FLAGS.eval_size,
        log_every=FLAGS.log_every,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
