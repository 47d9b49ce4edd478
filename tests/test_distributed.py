"""Multi-process start-up: config errors, and two real CPU processes joining one group."""

import os
import socket
import subprocess
import sys

import pytest

from configs import demo
from rpe_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from configs import demo
from rpe_jax import distributed, sharding
config = demo.get_config()
config.distributed.mode = "explicit"
config.distributed.coordinator_address = sys.argv[1]
config.distributed.num_processes = 2
config.distributed.process_id = int(sys.argv[2])
config.distributed.cpu_collectives = "gloo"
distributed.initialize(config)
mesh = sharding.make_mesh((-1, 1))
local = np.full((4, 1), jax.process_index() + 1.0, np.float32)  # 4 local devices, one row each
total = jax.jit(jnp.sum)(sharding.global_batch({"v": local}, mesh)["v"])
print("RESULT", jax.process_count(), jax.device_count(), float(total))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_group_and_reduce_globally():
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": ROOT}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, address, str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        # 2 processes x 4 devices; rows of process 0 hold 1, of process 1 hold 2.
        assert "RESULT 2 8 12.0" in out, out[-3000:]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mode": "cluster"}, r"Unknown config.distributed.mode 'cluster'"),
        ({"mode": "explicit", "num_processes": 2, "process_id": 0}, r"needs \['coordinator_address'\]"),
        (
            {"mode": "explicit", "coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
            r"process_id 2 must be in \[0, num_processes=2\)",
        ),
    ],
)
def test_inconsistent_settings_are_named(fields, message):
    config = demo.get_config()
    for k, v in fields.items():
        config.distributed[k] = v
    with pytest.raises(ValueError, match=message):
        distributed.initialize(config)
