"""Test set-up: 8 simulated CPU devices, so sharding tests run on any machine."""

import os

# Must be set before jax initialises its backends.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=30",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
