"""The resolution-generalization experiments and the script that runs and tabulates them.

Configs: each loads and validates, names registered methods only, and differs from the
shared settings by exactly its documented changes. Script: the tables, curve, CSV and
document are pure functions of the runs' results (synthetic here), and `--dry-run` lists
the stages in dependency order. Nothing trains.
"""

import dataclasses
import glob
import importlib
import json
import math
import os
import re
import shlex

import ml_collections
import pytest
from clu import metric_writers
from PIL import Image

from benchmarks import resolution_generalization as rg
from benchmarks import results_report as report
from configs.experiments import common
from rpe_jax import config_utils, methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "experiments", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py")
)
TWO_FINETUNE_STEPS = 2 * common.FINETUNE_DIVISOR  # pretraining steps whose fine-tunes take 2


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.experiments.{name}").get_config(arg)


def high_resolution(steps: int) -> dict:
    """The documented changes of a multi-stage run against the shared settings."""
    return {
        "data.resolution": common.HIGH_RESOLUTION,
        "positions.max_positions": 2 * common.HIGH_RESOLUTION // common.PATCH,
        "train.num_steps": steps,
        "train.checkpoint_every": math.ceil(steps / common.CHECKPOINTS_PER_RUN),
        "sample.resolutions": common.FINETUNE_TEST_RESOLUTIONS,
    }


PLAIN = {"positions.train_rule": "grid", "data.resize_crop_prob": 0.0, "model.micro_conditioning": False}
FINETUNE_STEPS = common.finetune_steps(common.STEPS)
DIFFERENCES = {
    "plain_rope": {**PLAIN, "sample.methods": common.BASELINES},
    "rpe2d": {"sample.methods": common.RPE2D_METHODS},
    "rpe2d_no_augment": {"data.resize_crop_prob": 0.0, "model.micro_conditioning": False},
    "rpe2d_no_micro": {"model.micro_conditioning": False},
    "plain_rope_finetune": {
        **PLAIN,
        **high_resolution(FINETUNE_STEPS),
        "sample.methods": ("extrapolation", "yarn"),
        "train.init_from": None,
    },
    "rpe2d_finetune": {**high_resolution(FINETUNE_STEPS), "train.init_from": None},
    "rpe2d_highres_scratch": high_resolution(common.equal_compute_steps(common.STEPS)),
}


def test_every_experiment_file_is_in_the_run_order():
    assert sorted(common.EXPERIMENTS) == FILES == sorted(DIFFERENCES)


@pytest.mark.parametrize("name", FILES)
def test_experiment_loads_validates_and_names_registered_methods(name):
    config = load(name)
    config_utils.validate(config, device_count=8)
    assert set(config.sample.methods) <= set(methods.METHODS)
    assert config.eval.extractor == "classifier"


@pytest.mark.parametrize("name", FILES)
def test_experiment_differs_from_the_shared_settings_exactly_as_documented(name):
    shared, mine = config_utils.leaf_fields(common.get_config()), config_utils.leaf_fields(load(name))
    assert set(shared) == set(mine)
    changed = {key: mine[key] for key in mine if mine[key] != shared[key]}
    assert changed == DIFFERENCES[name]


def test_shared_scale():
    config = common.get_config()
    assert config_utils.train_grid(config) == (8, 8)
    assert config_utils.max_positions(config) == (16, 16)
    assert config.model.variant == "DiT-S/2" and (config.model.depth, config.model.width) == (4, 128)
    assert (config.model.heads, config.train.batch_size, config.seed) == (4, 32, 0)
    assert config.sample.resolutions == (8, 12, 16, 24, 32, "16x32")
    assert config.sample.num_samples == config.eval.num_reference == 500
    assert (config.sample.solver, config.sample.steps, config.sample.cfg_scale) == ("heun", 10, 1.0)
    assert config.train.keep_checkpoints > common.CHECKPOINTS_PER_RUN  # the curve needs them all


def test_baselines_are_every_plain_rope_method_and_rpe2d_variants_the_rest():
    assert sorted(common.BASELINES) == sorted(m for m in methods.METHODS if not m.startswith("rpe2d"))
    assert sorted(common.RPE2D_METHODS) == sorted(m for m in methods.METHODS if m.startswith("rpe2d"))


def test_finetunes_start_from_an_earlier_experiment():
    for name in ("rpe2d_finetune", "plain_rope_finetune"):
        source = importlib.import_module(f"configs.experiments.{name}").INIT_FROM
        assert common.EXPERIMENTS.index(source) < common.EXPERIMENTS.index(name)
        assert load(source).model == load(name).model or source.startswith("plain")
        assert load(source).positions.train_rule == load(name).positions.train_rule


def test_scratch_run_has_the_compute_of_pretraining_plus_finetune():
    for steps in (common.STEPS, 8, 1000):
        pretrain = common.train_flops(steps, common.tokens(common.TRAIN_RESOLUTION))
        finetune = common.train_flops(common.finetune_steps(steps), common.tokens(common.HIGH_RESOLUTION))
        scratch_steps = load("rpe2d_highres_scratch", f"steps={steps}").train.num_steps
        step = common.train_flops(1, common.tokens(common.HIGH_RESOLUTION))
        assert abs(common.train_flops(scratch_steps, 256) - pretrain - finetune) <= step / 2
    assert common.equal_compute_steps(6000) == 1969  # 6000 x 0.203125 (64 vs 256 tokens) + 750


def test_flop_formula_matches_the_benchmark_figure():
    # benchmarks/README.md: DiT-S/2 (12 x 384) at 16x16 tokens, 12.1 GFLOP forward.
    assert common.forward_flops(256, depth=12, width=384) == pytest.approx(12.1e9, rel=0.01)


def test_config_switches():
    config = load("rpe2d_finetune", f"steps={TWO_FINETUNE_STEPS},samples=10")
    assert (config.train.num_steps, config.train.checkpoint_every) == (2, 1)
    assert (config.sample.num_samples, config.sample.batch_size, config.eval.num_reference) == (10, 10, 10)
    with pytest.raises(ValueError, match="Bad config switch 'step=8'"):
        load("rpe2d", "step=8")


# ---------------------------------------------------------------- tables and document


def row(method, resolution, fid, **extra):
    h, w = config_utils.parse_resolution(resolution)
    metrics = {"sfid": 1.0, "inception_score": 2.0, "precision": 0.5, "recall": 0.25} | extra
    return {"method": method, "resolution": resolution, "tokens": h * w // 4, "fid": fid, **metrics}


def run_config(resolution=16, steps=6000, methods_=("rpe2d",)):
    return {
        "data": {"resolution": resolution},
        "model": {"variant": "DiT-S/2", "depth": 4, "width": 128},
        "train": {"batch_size": 32, "num_steps": steps},
        "sample": {"methods": list(methods_), "num_samples": 1000},
    }


def synthetic_runs() -> dict[str, report.Run]:
    """Two baselines and RPE-2D at three resolutions, plus a fine-tune with a curve."""
    plain = [
        row(m, r, fid)
        for m, fids in (("extrapolation", (30, 10, 90)), ("ntk", (31, 10, 50)))
        for r, fid in zip(("8x8", "16x16", "32x32"), fids, strict=True)
    ]
    plain += [row("train_resized", "8x8", 20.0), row("train_resized", "32x32", 40.0)]
    rpe = [row("rpe2d", r, fid) for r, fid in (("8x8", 25.0), ("16x16", 11.0), ("16x32", 35.0))]
    rpe += [row("train_resized", "8x8", 21.0)]
    finetune_config = run_config(32, 1500)
    return {
        "plain_rope": report.Run(
            "plain_rope", run_config(methods_=("extrapolation", "ntk")), plain, {}, 6000
        ),
        "rpe2d": report.Run("rpe2d", run_config(), rpe + [row("rpe2d", "32x32", 60.0)], {}, 6000),
        "rpe2d_finetune": report.Run(
            "rpe2d_finetune",
            finetune_config,
            [row("rpe2d", "16x16", 14.0), row("rpe2d", "32x32", 12.0)],
            {0: [row("rpe2d", "32x32", 61.0)], 750: [row("rpe2d", "32x32", 20.0, precision=0.4)]},
            1500,
        ),
    }


def cells(lines: list[str]) -> dict[tuple[str, str], list[str]]:
    """{(checkpoint, method): cells} of a Markdown table from metric_table."""
    return {
        tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
        for line in lines[2:]
    }


def test_main_table_places_each_value_in_its_cell():
    runs = synthetic_runs()
    rows = report.main_rows(runs)
    assert rows == [
        ("plain_rope", "extrapolation"),
        ("plain_rope", "ntk"),
        ("plain_rope", "train_resized"),
        ("rpe2d", "rpe2d"),
        ("rpe2d", "train_resized"),
    ]
    columns = report.main_columns(runs, rows, "16x16")
    assert [label for _, label in columns] == ["8x8 (0.5x)", "16x16 (train)", "32x32 (2x)", "16x32 (1x, 2x)"]
    lines = report.metric_table(runs, rows, columns, "fid")
    assert lines[0] == "| checkpoint | method | 8x8 (0.5x) | 16x16 (train) | 32x32 (2x) | 16x32 (1x, 2x) |"
    table = cells(lines)
    assert table[("plain_rope", "extrapolation")] == ["30.00", "**10.00**", "90.00", "—"]
    assert table[("plain_rope", "ntk")] == ["31.00", "**10.00**", "50.00", "—"]
    assert table[("plain_rope", "train_resized")] == ["**20.00**", "—", "**40.00**", "—"]
    assert table[("rpe2d", "rpe2d")] == ["25.00", "11.00", "60.00", "**35.00**"]
    recall = cells(report.metric_table(runs, rows, columns, "recall"))
    assert recall[("rpe2d", "rpe2d")] == ["**0.250**", "**0.250**", "**0.250**", "**0.250**"]


def test_curve_starts_a_finetune_at_its_source_compute_and_score():
    points = report.curve_points(synthetic_runs(), {"rpe2d_finetune": "rpe2d"})
    pretrain = common.train_flops(6000, 64)
    step = common.train_flops(1, 256)
    assert [(p["step"], p["fid"]) for p in points] == [(0, 61.0), (750, 20.0), (1500, 12.0)]
    assert [p["flops"] for p in points] == pytest.approx(
        [pretrain, pretrain + 750 * step, pretrain + 1500 * step]
    )
    assert (
        report.curve_table(points)[3]
        == f"| rpe2d_finetune | rpe2d | 750 | {points[1]['flops'] / 1e12:.1f} | 20.00 | 0.400 | 0.250 |"
    )


def test_retention_and_grid_choices():
    runs = synthetic_runs()
    table = cells(
        report.metric_table(
            runs, [("rpe2d", "rpe2d"), ("rpe2d_finetune", "rpe2d")], report.retention_columns(), "fid"
        )
    )
    assert table == {
        ("rpe2d", "rpe2d"): ["**11.00**", "—", "60.00"],
        ("rpe2d_finetune", "rpe2d"): ["14.00", "—", "**12.00**"],
    }
    choices = dict(report.grid_choices(runs, [("8x8", ""), ("32x32", "")]))
    assert choices["8x8"] == [("rpe2d", "rpe2d", 25.0), ("plain_rope", "extrapolation", 30.0)]
    assert choices["32x32"] == [("rpe2d", "rpe2d", 60.0), ("plain_rope", "ntk", 50.0)]


def test_replace_block_keeps_the_text_around_the_markers():
    block = report.BEGIN_LINE + "\nold\n" + report.END
    text = "# Title\n\nhand-written intro\n\n" + block + "\n\n## Discussion\nmine\n"
    new = report.replace_block(text, "new table")
    assert new == text.replace("\nold\n", "\nnew table\n")
    assert report.replace_block(new, "newer") == text.replace("\nold\n", "\nnewer\n")
    appended = report.replace_block("# Someone's page\n", "block")
    assert appended == f"# Someone's page\n\n{report.BEGIN_LINE}\nblock\n{report.END}\n"


def write_run(root: str, run: report.Run) -> None:
    workdir = os.path.join(root, run.name)
    os.makedirs(os.path.join(workdir, "eval"))
    os.makedirs(os.path.join(workdir, "checkpoints", str(run.steps)))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(run.config, f)
    with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
        json.dump(run.rows, f)
    for step, rows in run.curve.items():
        os.makedirs(os.path.join(workdir, "curve", f"step_{step:07d}", "eval"))
        with open(os.path.join(workdir, "curve", f"step_{step:07d}", "eval", "results.json"), "w") as f:
            json.dump(rows, f)
    for r in run.rows:
        folder = os.path.join(workdir, "generated", r["method"], r["resolution"])
        os.makedirs(folder, exist_ok=True)
        Image.new("RGB", (8, 8)).save(os.path.join(folder, "grid.png"))


def test_assemble_writes_the_document_assets_and_csv(tmp_path):
    root, doc = str(tmp_path / "runs"), str(tmp_path / "docs" / "results.md")
    os.makedirs(os.path.dirname(doc))
    for run in synthetic_runs().values():
        write_run(root, run)
    with open(os.path.join(root, "timings.json"), "w") as f:
        json.dump({"rpe2d: sample": 3600.0}, f)
    # Training wall time comes from the trainers' own `uptime`: per event file, summed.
    for folder, uptimes in (("rpe2d", (100.0, 25.0)), ("classifier", (60.0,))):
        for uptime in uptimes:
            writer = metric_writers.create_default_writer(os.path.join(root, folder))
            writer.write_scalars(1, {"uptime": uptime / 2})
            writer.write_scalars(2, {"uptime": uptime})
            writer.close()
    report.assemble(root, doc, "python -m benchmarks.resolution_generalization --root=/r")
    text = open(doc).read()
    assert text.startswith("# Results") and "python -m benchmarks.resolution_generalization --root=/r" in text
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert "| rpe2d | rpe2d | 25.00 | 11.00 | 60.00 | **35.00** |" in text
    assert "| rpe2d | 6000 | 8x8 | 32 | 62.8 | 2m05s | 1h00m | — | — |" in text
    assert "Classifier (feature network) training: 1m00s." in text
    for link in re.findall(r"\]\(([^)]+)\)", text):  # assets beside the document, the rest in the repo
        folder = os.path.join(ROOT, "docs") if link.startswith("../") else os.path.dirname(doc)
        assert os.path.exists(os.path.join(folder, link)), link
    assets = tmp_path / "docs" / "assets" / "results"
    assert {"resolution_fid.png", "compute_fid.png", "grid_32x32_plain_rope_ntk.png"} <= set(
        os.listdir(assets)
    )
    csv_lines = (assets / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "run,step,method,resolution,tokens,fid,sfid,inception_score,precision,recall"
    assert "rpe2d_finetune,750,rpe2d,32x32,256,20.0,1.0,2.0,0.4,0.25" in csv_lines
    # Names like `module.attr` in code spans must exist in rpe_jax (tests/test_docs.py checks docs/).
    modules = {
        os.path.basename(p)[:-3]
        for p in glob.glob(os.path.join(ROOT, "rpe_jax", "**", "*.py"), recursive=True)
    }
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    assert not [
        s for s in spans for stem, _ in re.findall(r"(?<![\w./-])([a-z_]+)\.(\w+)", s) if stem in modules
    ]
    # A re-run rewrites the block only.
    with open(doc, "a") as f:
        f.write("Our discussion.\n")
    report.assemble(root, doc, "another command")
    again = open(doc).read()
    assert again.endswith("Our discussion.\n") and "another command" not in again


def test_run_records_round_trip():
    run = synthetic_runs()["rpe2d_finetune"]
    run = dataclasses.replace(run, loss=[(100, 0.5), (200, 0.4)], timings={"rpe2d_finetune: sample": 9.0})
    assert report.record_run(json.loads(json.dumps(report.run_record(run)))) == run


def test_merge_replaces_the_records_cells_with_the_roots_and_keeps_the_rest():
    archived = synthetic_runs()["rpe2d"]
    archived = dataclasses.replace(
        archived, loss=[(6000, 0.3)], train_seconds=50.0, timings={"rpe2d: sample": 7.0}
    )
    # A fresh run still training, scored at one cell only (its config names its source folder).
    config = run_config() | {"train": run_config()["train"] | {"init_from": "/elsewhere"}}
    fresh = report.Run("rpe2d", config, [row("rpe2d", "32x32", 59.0)], {}, 1000, [(1000, 0.9)], 5.0)
    merged = report.merge_run(archived, fresh)
    fids = {(r["method"], r["resolution"]): r["fid"] for r in merged.rows}
    assert fids[("rpe2d", "32x32")] == 59.0 and fids[("rpe2d", "8x8")] == 25.0
    assert len(merged.rows) == len(archived.rows)
    assert (merged.steps, merged.loss, merged.train_seconds) == (6000, [(6000, 0.3)], 50.0)
    assert merged.timings == {"rpe2d: sample": 7.0}
    # Trained to its last step, the root's run brings its own training record.
    done = report.merge_run(archived, dataclasses.replace(fresh, steps=6000))
    assert (done.steps, done.loss, done.train_seconds) == (6000, [(1000, 0.9)], 5.0)
    # Another setup: the record is dropped.
    other = dataclasses.replace(fresh, config=run_config(steps=8000))
    assert report.merge_run(archived, other) == other


def test_assemble_keeps_recorded_runs_missing_from_a_new_root(tmp_path):
    first, doc = str(tmp_path / "first"), str(tmp_path / "docs" / "results.md")
    os.makedirs(os.path.dirname(doc))
    for run in synthetic_runs().values():
        write_run(first, run)
    report.assemble(first, doc, "cmd")
    before = open(doc).read()
    records = tmp_path / "docs" / "assets" / "results" / report.RECORDS
    assert sorted(os.listdir(records)) == ["plain_rope.json", "rpe2d.json", "rpe2d_finetune.json"]
    # A later machine has only a re-scored rpe2d cell: every other number and grid stays.
    second = str(tmp_path / "second")
    write_run(second, dataclasses.replace(synthetic_runs()["rpe2d"], rows=[row("rpe2d", "8x8", 24.0)]))
    report.assemble(second, doc, "cmd")
    after = open(doc).read()
    assert after == before.replace("| rpe2d | rpe2d | 25.00 |", "| rpe2d | rpe2d | 24.00 |").replace(
        "rpe2d, FID 25.00", "rpe2d, FID 24.00"
    )
    report.assemble(str(tmp_path / "none"), doc, "cmd")  # records alone rebuild the page
    assert open(doc).read() == after


# ---------------------------------------------------------------- the plan


def test_dry_run_lists_stages_in_dependency_order_with_init_from(tmp_path, capsys):
    root = tmp_path / "runs"
    rg.main(["--root", str(root), "--dry-run", f"--steps={TWO_FINETUNE_STEPS}", "--samples=10"])
    out = capsys.readouterr().out
    labels = re.findall(r"^\[[^\]]+\] (.+?)(?: \(~[^)]*\))?: (?:python|done)", out, flags=re.M)
    assert labels[0] == "classifier"
    assert labels.index("plain_rope: train") < labels.index("plain_rope_finetune: train")
    assert labels.index("rpe2d: train") < labels.index("rpe2d_finetune: train")
    assert "rpe2d_finetune: curve 1: sample" in labels  # 2 fine-tune steps, a checkpoint each
    assert f"--config.train.init_from={root / 'rpe2d'}" in out
    assert f"--config=configs/experiments/rpe2d_finetune.py:steps={TWO_FINETUNE_STEPS},samples=10" in out
    assert not root.exists()  # a dry run writes nothing


def test_only_trains_a_missing_source_without_sampling_it(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "plain_rope" / "checkpoints" / str(TWO_FINETUNE_STEPS)).mkdir(parents=True)
    only = "--only=rpe2d_finetune,plain_rope_finetune"
    rg.main(["--root", str(root), "--dry-run", f"--steps={TWO_FINETUNE_STEPS}", only])
    out = capsys.readouterr().out
    assert "rpe2d: train (~" in out and "rpe2d: sample" not in out
    assert "plain_rope: train: done already, skipped" in out and "plain_rope: sample" not in out


def test_a_finetunes_curve_starts_with_its_source_checkpoint_under_the_source_config(tmp_path):
    root = str(tmp_path)
    for name, source, method in (
        ("rpe2d_finetune", "rpe2d", "rpe2d"),
        ("plain_rope_finetune", "plain_rope", "extrapolation"),
    ):
        stages = rg.curve_stages(root, name, f"steps={TWO_FINETUNE_STEPS}", "/classifier")
        assert [s.label for s in stages] == [
            f"{name}: curve {k}: {m}" for k in (0, 1) for m in ("sample", "evaluate")
        ]
        start = shlex.join(stages[0].command)
        workdir = os.path.join(root, name, "curve", "step_0000000")
        assert (
            f"--config=configs/experiments/{source}.py:steps={TWO_FINETUNE_STEPS} --workdir={workdir}"
            in start
        )
        assert f"--config.sample.checkpoint_step={TWO_FINETUNE_STEPS}" in start  # the source's last
        assert f"'--config.sample.resolutions=(32,)' '--config.sample.methods=(\"{method}\",)'" in start
        assert f"--config=configs/experiments/{name}.py:" in shlex.join(stages[2].command)
        # The source's checkpoint is copied in before sampling.
        os.makedirs(os.path.join(root, source, "checkpoints", str(TWO_FINETUNE_STEPS), "state"))
        stages[0].before()
        assert os.path.isdir(os.path.join(workdir, "checkpoints", str(TWO_FINETUNE_STEPS), "state"))


def test_evaluation_is_redone_when_samples_are_newer(tmp_path):
    config = load("rpe2d_finetune", "samples=10")
    files = rg.sample_files(config, str(tmp_path), ("rpe2d",), (16,))
    assert not rg.sampled(files) and rg.sample_work(config, files) > 0
    for path in files[("rpe2d", "16x16")]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    assert rg.sampled(files) and rg.sample_work(config, files) == 0
    (tmp_path / "eval").mkdir()
    results = tmp_path / "eval" / "results.json"
    results.write_text(json.dumps([row("rpe2d", "16x16", 1.0)]))
    assert rg.evaluated(str(tmp_path), files)
    os.utime(files[("rpe2d", "16x16")][0], (results.stat().st_mtime + 10,) * 2)
    assert not rg.evaluated(str(tmp_path), files)


def test_a_failing_stage_stops_the_plan_naming_its_command(tmp_path):
    stage = rg.Stage("x: train", ["python", "-c", "raise SystemExit(3)"], lambda: False)
    with pytest.raises(SystemExit, match=r"'x: train' failed with exit status 3: python -c"):
        rg.run_plan([stage], str(tmp_path), dry_run=False)


def test_only_drawn_cells_cost_sampling_and_scoring():
    # On the training grid every rule is the identity except FiTv2's NTK-pro pair, whose
    # multiplier sqrt(ln(2L) / ln(L0)) exceeds 1 there (BASELINES.md); so 14 baselines draw 3.
    config = load("plain_rope", "samples=10")
    drawn = rg.drawn_cells(config, common.BASELINES, (16,))
    assert drawn == {("extrapolation", "16x16"), ("ntk_pro1", "16x16"), ("ntk_pro2", "16x16")}
    assert rg.evaluation_cells(config, common.BASELINES, (16,)) == 3
    files = rg.sample_files(config, "/nonexistent", common.BASELINES, (16,))
    one = rg.sample_files(config, "/nonexistent", ("extrapolation",), (16,))
    assert rg.sample_work(config, files) == 3 * rg.sample_work(config, one)


def test_training_loss_is_read_from_the_event_files(tmp_path):
    writer = metric_writers.create_default_writer(str(tmp_path))
    writer.write_hparams({"seed": 0})  # the trainer logs these too: not scalars, skipped
    writer.write_texts(0, {"config": "model: DiT-S/2"})
    logged = [(100, 0.9), (200, 0.5), (300, 0.42), (400, 0.40), (500, 0.41)]
    for step, loss in logged:
        writer.write_scalars(step, {"train_loss": loss, "train_grad_norm": 1.0})
    writer.close()
    curve = report.loss_curve(str(tmp_path))
    assert [s for s, _ in curve] == [s for s, _ in logged]
    assert [v for _, v in curve] == pytest.approx([v for _, v in logged])
    # 10 % of 5 points rounds to 1: the last value against the one before.
    last, change = report.loss_change(curve)
    assert last == pytest.approx(0.41) and change == pytest.approx(0.01 / 0.40)
    last, change = report.loss_change(curve, fraction=0.4)  # 2 points: (0.40 + 0.41) vs (0.5 + 0.42)
    assert last == pytest.approx(0.405) and change == pytest.approx((0.405 - 0.46) / 0.46)
    assert report.loss_change(curve[:1]) is None


def test_training_tables_show_only_finished_runs():
    curve = [(step, 1.0) for step in range(100, 3100, 100)]
    running = report.Run("rpe2d", run_config(steps=6000), [], {}, 3000, curve, 60.0)
    finished = dataclasses.replace(running, steps=6000)
    assert not running.trained and finished.trained
    assert report.loss_table({"rpe2d": running}) == report.loss_table({})
    assert len(report.loss_table({"rpe2d": finished})) == 3
    assert len(report.compute_table({"rpe2d": running})) == 2
