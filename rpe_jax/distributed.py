"""Multi-process start-up: `jax.distributed.initialize` driven by the config.

`config.distributed.mode`:
  - "none": one process (the default);
  - "auto": let JAX detect the cluster (Cloud TPU pod slices, SLURM, ...);
  - "explicit": coordinator address, process count and process id from the config.
"""

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

MODES = ("none", "auto", "explicit")


def _explicit_args(cfg: ml_collections.ConfigDict) -> dict:
    missing = [k for k in ("coordinator_address", "num_processes", "process_id") if cfg[k] in (None, "")]
    if missing:
        raise ValueError(
            f"config.distributed.mode='explicit' needs {missing}; got coordinator_address="
            f"{cfg.coordinator_address!r}, num_processes={cfg.num_processes}, process_id={cfg.process_id}."
        )
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise ValueError(
            f"config.distributed.process_id {cfg.process_id} must be in "
            f"[0, num_processes={cfg.num_processes})."
        )
    return {
        "coordinator_address": cfg.coordinator_address,
        "num_processes": cfg.num_processes,
        "process_id": cfg.process_id,
    }


def initialize(config: ml_collections.ConfigDict) -> None:
    """Joins the process group named by `config.distributed` (no-op for mode "none")."""
    cfg = config.distributed
    if cfg.mode not in MODES:
        raise ValueError(f"Unknown config.distributed.mode {cfg.mode!r}; choose one of {MODES}.")
    if cfg.mode == "none":
        return
    kwargs = _explicit_args(cfg) if cfg.mode == "explicit" else {}
    if cfg.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    # A dead process stops the others: the coordination service notices its missing
    # heartbeats within `heartbeat_timeout` and fails every process's pending work.
    jax.distributed.initialize(
        initialization_timeout=cfg.initialization_timeout,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout,
        shutdown_timeout_seconds=cfg.shutdown_timeout,
        **kwargs,
    )


def allgather_rows(x: np.ndarray) -> np.ndarray:
    """Every process's rows, concatenated in process order, on every process.

    Args:
      x: [n_p, ...] this process's rows; n_p may differ between processes (even be 0),
        the trailing shape and dtype may not.

    Returns:
      [sum_p n_p, ...].
    """
    if jax.process_count() == 1:
        return x
    counts = np.asarray(multihost_utils.process_allgather(np.int32(len(x))))  # [P]
    padded = np.zeros((int(counts.max()), *x.shape[1:]), x.dtype)
    padded[: len(x)] = x
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, max n_p, ...]
    return np.concatenate([rows[:n] for rows, n in zip(gathered, counts, strict=True)])


def my_share(items: list) -> list:
    """This process's share of `items` for work split over processes: every P-th."""
    return items[jax.process_index() :: jax.process_count()]


def exists_on_process_0(paths: list[epath.PathLike]) -> list[bool]:
    """Whether each path (local or gs://) exists, as process 0 sees it, on every process (so
    that all processes skip the same finished work even when their views of the disk differ)."""
    exists = np.array([epath.Path(p).exists() for p in paths], np.int32)
    if jax.process_count() > 1:
        exists = np.asarray(multihost_utils.broadcast_one_to_all(exists))
    return [bool(e) for e in exists]
