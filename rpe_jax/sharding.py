"""Device mesh and partition rules: the one module that names mesh axes.

Two axes: `data` (pure data parallelism: parameters replicated) and `fsdp` (fully
sharded data parallelism: the batch is split over it too, and parameters and optimizer
state are sharded over it). Parameters carry logical axis names (see models/dit.py);
LOGICAL_RULES maps them to mesh axes. A dimension that the mesh axis does not divide
falls back to the parameter's largest dimension that it divides, else replication.

Legend: B batch.
"""

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device

# Logical parameter axis -> mesh axis (None: replicated).
LOGICAL_RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "mlp": None,
    "heads": None,
    "vocab": None,
    "patch": None,
    "freq": None,
}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh; at most one entry may be -1 (fills the remaining devices).

    Raises:
      ValueError: if the shape does not multiply to the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must give one size per axis {MESH_AXES}.")
    if shape.count(-1) > 1 or any(s < 1 and s != -1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: sizes must be positive, with at most one -1.")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {tuple(shape)} cannot fill {len(devices)} devices.")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices; {len(devices)} are available."
        )
    grid = np.asarray(devices).reshape(shape)
    # Auto axes: GSPMD propagates shardings through the model from the declared
    # parameter and batch shardings (Explicit axes would demand them on every op).
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _resolve(names: tuple, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Mesh spec of one parameter from its logical names and shape."""
    axes = []
    for name in names:  # a mesh axis shards at most one dimension: the first that asks
        axis = LOGICAL_RULES.get(name) if name else None
        axes.append(None if axis in axes else axis)
    for i, axis in enumerate(axes):
        if axis and shape[i] % mesh.shape[axis]:
            axes[i] = None
            fallback = [d for d in range(len(shape)) if shape[d] % mesh.shape[axis] == 0]
            if fallback:
                axes[max(fallback, key=lambda d: shape[d])] = axis
    return PartitionSpec(*axes)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every array of an (abstract) NNX state, from its logical names.

    Args:
      state: nnx.State whose Variables may carry `out_sharding` logical names.
      mesh: the training mesh.

    Returns:
      A state of the same structure with NamedSharding leaves.
    """
    specs = nnx.get_partition_spec(state)

    def to_sharding(spec, x):
        return NamedSharding(mesh, _resolve(tuple(spec), x.shape, mesh))

    return jax.tree.map(to_sharding, specs, state, is_leaf=lambda s: isinstance(s, PartitionSpec))


def check_batch_divides(global_batch: int, mesh: Mesh) -> None:
    """Raises ValueError if the global batch does not split evenly over the devices."""
    n = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch % n:
        raise ValueError(
            f"Global batch {global_batch} does not split over the {n} devices of mesh "
            f"{dict(mesh.shape)}; use a multiple of {n}."
        )


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's batch shard into global arrays sharded over the batch axes.

    Args:
      local: arrays [B_local, ...] read by this process.

    Returns:
      Global jax.Arrays [B_local * process_count, ...].
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
