"""Multi-process start-up: `jax.distributed.initialize` driven by the config.

`config.distributed.mode`:
  - "none": one process (the default);
  - "auto": let JAX detect the cluster (Cloud TPU pod slices, SLURM, ...);
  - "explicit": coordinator address, process count and process id from the config.
"""

import jax
import ml_collections
from absl import logging

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
    jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout, **kwargs)
    logging.info(
        "Process %d of %d: %d local / %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
