"""Orbax checkpoints of the train state together with the Grain iterator state.

One `CheckpointManager` per workdir; each step saves a Composite of the (sharded)
train state and the data iterator, so a resumed run continues on the exact next batch.
"""

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from rpe_jax import paths


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The manager of `<workdir>/checkpoints` (local or gs://)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints,
        enable_async_checkpointing=config.train.async_checkpoint,
        create=True,
    )
    return ocp.CheckpointManager(paths.workdir_path(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
    """Saves (asynchronously when configured) the state and the iterator at `step`."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
    )
    manager.save(step, args=args, force=True)


def abstract_state(state, shardings):
    """ShapeDtypeStructs carrying the target shardings, for restoring into a layout."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, target, data_iterator=None):
    """Restores the state (resharded to `target`'s shardings) and, when given, the
    iterator (in place) from `step`."""
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]
