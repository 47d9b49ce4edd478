"""The train state: its layout, optimizer, sharded creation, and restoring it.

The state is born sharded: abstract init (`jax.eval_shape`), shardings from the
partition rules, then a jitted init with those out-shardings.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from rpe_jax import checkpoint, config_utils, sharding


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator.

    Attributes:
      step: [] int32 optimizer steps taken.
      params: the DiT's nnx.Param state.
      ema_params: exponential moving average of params (used for sampling).
      opt_state: optax state.
      rng: [2] uint32 key data; the step key is fold_in(rng, step).
    """

    step: jax.Array
    params: nnx.State
    ema_params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to the peak, then constant or cosine decay."""
    t = config.train
    if t.cosine_decay:
        decay_steps = max(t.num_steps, t.warmup_steps + 1)  # short smoke runs end in warm-up
        end = t.learning_rate * t.min_lr_ratio
        return optax.warmup_cosine_decay_schedule(
            0.0, t.learning_rate, max(t.warmup_steps, 1), decay_steps, end
        )
    warmup = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
    return optax.join_schedules([warmup, optax.constant_schedule(t.learning_rate)], [t.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    t = config.train
    adamw = optax.adamw(learning_rate_schedule(config), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw) if t.grad_clip > 0 else adamw


def create_train_state(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation
):
    """Builds the train state directly in its sharded layout.

    Returns:
      (graphdef, state, state_shardings).
    """
    key = jax.random.key(config.seed)

    def init(key):
        model = config_utils.build_model(config, nnx.Rngs(key))
        params = nnx.state(model, nnx.Param)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(key),
        )

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: config_utils.build_model(config, nnx.Rngs(0))))
    abstract = jax.eval_shape(init, key)
    shardings = state_shardings(abstract, mesh, tx)
    state = jax.jit(init, out_shardings=shardings)(key)
    return graphdef, state, shardings


def state_shardings(
    abstract: TrainState, mesh: jax.sharding.Mesh, tx: optax.GradientTransformation
) -> TrainState:
    """Shardings of every leaf of the train state: parameters (and their EMA and optimizer
    moments) by the partition rules, scalars replicated."""
    params = sharding.state_shardings(abstract.params, mesh)
    replicated = sharding.replicated(mesh)
    opt = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, params, transform_non_params=lambda _: replicated
    )
    # A TrainState-shaped tree of shardings (what jit's out_shardings takes): its leaves are
    # shardings, not the arrays the fields are typed with.
    return TrainState(
        step=replicated,  # type: ignore[arg-type]
        params=params,
        ema_params=params,
        opt_state=opt,
        rng=replicated,  # type: ignore[arg-type]
    )


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
    """The EMA parameters of checkpoint `step` (default: the latest) in `workdir`.

    Returns:
      (graphdef, ema_params, step).

    Raises:
      FileNotFoundError: when the workdir has no checkpoint.
    """
    manager = checkpoint.make_manager(workdir, config)
    step = step if step is not None else manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"No checkpoint in {manager.directory}: train first (--mode=train with the same "
            "--workdir) or point --workdir at a trained run."
        )
    mesh = sharding.make_mesh(config.mesh.shape)
    tx = make_optimizer(config)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: config_utils.build_model(config, nnx.Rngs(0))))
    abstract = jax.eval_shape(lambda: create_train_state(config, mesh, tx)[1])
    target = checkpoint.abstract_state(abstract, state_shardings(abstract, mesh, tx))
    return graphdef, checkpoint.restore(manager, step, target).ema_params, step
