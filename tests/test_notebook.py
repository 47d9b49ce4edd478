"""notebooks/colab_demo.ipynb, executed headless on CPU with tiny parameters: every cell runs and
the sample grids, the metric plot and the results table are shown inline."""

import ast
import os
import sys

import ipykernel  # noqa: F401  (the kernel the notebook runs in)
import nbclient
import nbformat
import pytest

from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_demo.ipynb")
RUNS = ("rpe2d", "plain_rope")
SIZE = demo.get_config().data.resolution  # the training size; the notebook samples it and 2x
RESOLUTIONS = (f"{SIZE}x{SIZE}", f"{2 * SIZE}x{2 * SIZE}")


def _tiny_parameters(workdir) -> dict:
    """Values for the notebook's parameters cell: a 2-block DiT, 2 steps, 8 samples."""
    return {
        "TRAIN_STEPS": 2,
        "SAMPLE_STEPS": 1,
        "SCALES": (1, 2),
        "PLAIN_METHODS": ("extrapolation",),
        "NUM_IMAGES": 2,
        "NUM_SAMPLES": 8,
        "NUM_REFERENCE": 8,
        # 16 px input: 512 spatial features keep the sFID matrix square roots cheap.
        "CLASSIFIER_ARGS": {
            "steps": 2,
            "batch_size": 8,
            "variant": "Ti",
            "input_size": 16,
            "train_resolutions": (16,),
            "eval_size": 8,
            "log_every": 1,
        },
        "OVERRIDES": {
            "model.depth": 2,
            "model.width": 64,
            "model.heads": 2,
            "train.batch_size": 8,
            "sample.batch_size": 4,
            "eval.batch_size": 4,
        },
        "WORKDIR": str(workdir),
    }


def _inject_parameters(nb, values: dict) -> None:
    """Papermill's convention: a cell tagged `injected-parameters` right after the one tagged
    `parameters`, assigning the new values. Every name must be a parameter of the notebook."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(nb.cells[index].source)
    declared = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    assert set(values) <= declared, f"not parameters of the notebook: {set(values) - declared}"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def _images(cell) -> int:
    return sum(o.output_type == "display_data" and "image/png" in o.data for o in cell.outputs)


def _cell(nb, text: str):
    """The one code cell whose source contains `text`."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


@pytest.mark.slow  # an end-to-end run
def test_notebook_runs_headless_and_shows_its_figures(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        assert cell.cell_type != "code" or not cell.outputs, "commit the notebook with outputs cleared"
    _inject_parameters(nb, _tiny_parameters(workdir))
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable, end='')"))
    # The kernel inherits this environment: one CPU device (not conftest's 8), the checkout on the
    # path so the install cell finds rpe_jax and skips the clone.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None
            assert not [o for o in cell.outputs if o.output_type == "error"]
    assert nb.cells[-1].outputs[0].text == sys.executable, "the kernel runs this interpreter"
    assert _images(_cell(nb, '"samples"')) == len(RUNS) * len(RESOLUTIONS)
    results = _cell(nb, "resolution_plot.png")
    assert _images(results) == 1
    markdown = [o.data["text/markdown"] for o in results.outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "### fid (lower is better)" in markdown[0]
    for method in ("rpe2d", "extrapolation", "train_resized"):
        assert f"| {method} |" in markdown[0]
    for run in RUNS:
        for resolution in RESOLUTIONS:
            assert (workdir / run / "samples" / f"step_0000002_{resolution}.png").stat().st_size > 0
    assert (workdir / "eval" / "resolution_plot.png").stat().st_size > 10_000
    assert (workdir / "classifier" / "classifier.json").exists()
