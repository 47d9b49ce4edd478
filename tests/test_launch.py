"""The local multi-process launcher: its dry run, and a real 2-process start-up."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")


def test_dry_run_gives_every_process_the_same_command_but_its_id():
    out = subprocess.run(
        [SCRIPT, "-n", "4", "--dry-run", "--", "--config=configs/demo.py", "--workdir=/tmp/a run"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.splitlines()  # fmt: skip
    assert len(out) == 4
    for i, line in enumerate(out):
        assert f"--config.distributed.process_id={i}" in line
        assert "--workdir=/tmp/a\\ run" in line, "quoting must survive spaces"
        assert line.replace(f"process_id={i}", "process_id=X") == out[0].replace(
            "process_id=0", "process_id=X"
        )
    assert "--config.distributed.num_processes=4" in out[0]


def test_bad_process_count_is_rejected():
    proc = subprocess.run([SCRIPT, "-n", "zero", "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "-n must be a positive integer, got 'zero'" in proc.stderr


def test_a_failing_process_fails_the_launch():
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [SCRIPT, "-n", "2", "--", "--config=configs/demo.py", "--workdir=/tmp/x", "--mode=nope"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "[0] " in proc.stdout and "[1] " in proc.stdout
