"""Test set-up: 8 simulated CPU devices, so sharding tests run on any machine."""

import importlib.util
import os

# Must be set before jax initialises its backends.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=30",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Triton (pulled in by torch._dynamo when the diffusers reference VAE loads) segfaults in
# triton/knobs.py if TensorFlow (imported by CLU's writers) was loaded first; the other
# order works (tensorflow-cpu 2.21 with torch 2.14.1's triton). Load Triton first.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
