"""The evaluate mode end-to-end on a tiny trained demo checkpoint."""

import csv
import json
import os
import subprocess
import sys

from flax import nnx

from rpe_jax.models import classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.depth=2", "--config.model.width=64", "--config.model.heads=2",
    "--config.train.batch_size=8", "--config.train.num_steps=2", "--config.sample.num_images=2",
    "--config.sample.steps=1", "--config.sample.resolutions=(16, 24)",
    "--config.sample.methods=('rpe2d', 'rpe2d_plain')", "--config.sample.num_samples=8",
    "--config.sample.batch_size=4", "--config.eval.num_reference=8", "--config.eval.batch_size=4",
    "--config.eval.extractor=classifier",
]  # fmt: skip


def _run(workdir, mode, *extra):
    args = [sys.executable, "-m", "rpe_jax.main", f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}"]
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [*args, f"--mode={mode}", *TINY, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def test_evaluate_writes_the_table_csv_json_and_plot(tmp_path):
    extractor_dir = tmp_path / "classifier"
    # 16 px input: 512 spatial features keep the sFID matrix square roots cheap.
    config = classifier.ClassifierConfig(input_size=16, widths=classifier.VARIANTS["Ti"])
    model = classifier.Classifier(config, rngs=nnx.Rngs(0))
    classifier.save_classifier(model, extractor_dir, notes={})
    workdir = tmp_path / "run"
    _run(workdir, "train")
    sampled = _run(workdir, "sample")
    _run(workdir, "evaluate", f"--config.eval.extractor_path={extractor_dir}")
    out = workdir / "eval"
    rows = json.loads((out / "results.json").read_text())
    # Two methods at both resolutions, plus the resized training-resolution samples at 24 px.
    keys = sorted((r["method"], r["resolution"]) for r in rows)
    assert keys == sorted(
        [(m, r) for m in ("rpe2d", "rpe2d_plain") for r in ("16x16", "24x24")] + [("train_resized", "24x24")]
    )
    for row in rows:
        assert row["fid"] >= 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["inception_score"] >= 1 - 1e-6
    # At the training grid rpe2d_plain is rpe2d (no scale, no shift to drop): its batches are
    # copies and its scores reused; at 24 px the two samplers differ and both are drawn.
    assert "rpe2d_plain at (16, 16) draws the samples of rpe2d: copied" in sampled
    assert "rpe2d_plain at (24, 24) draws" not in sampled
    folder = workdir / "generated"
    copies = [(folder / m / "16x16" / "batch_00001.npz").read_bytes() for m in ("rpe2d", "rpe2d_plain")]
    assert copies[0] == copies[1]
    grids = [(folder / m / "16x16" / "grid.png").read_bytes() for m in ("rpe2d", "rpe2d_plain")]
    assert grids[0] == grids[1]
    scores = {(r["method"], r["resolution"]): r for r in rows}
    assert scores[("rpe2d", "16x16")] | {"method": "rpe2d_plain"} == scores[("rpe2d_plain", "16x16")]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    table = (out / "results.md").read_text()
    assert "### fid (lower is better)" in table and "| 16x16 (train) | 24x24 |" in table
    assert (out / "resolution_plot.png").stat().st_size > 10_000
    cached = list((out / "reference").iterdir())
    assert len(cached) == 2, "reference features are cached per resolution"
