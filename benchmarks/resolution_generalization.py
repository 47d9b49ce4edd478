"""Resolution generalization at small scale: trains, samples and scores every experiment of
configs/experiments/ and writes the tables, plots and sample grids into docs/results.md.

  python -m benchmarks.resolution_generalization --root=/runs/rg [--only=rpe2d,plain_rope]
      [--steps=N] [--samples=N] [--classifier-steps=N] [--dry-run] [--assemble-only]

Stages, in `common.EXPERIMENTS` order (dependencies first), each skipped when its output is
complete, each a subprocess whose failure stops the script naming the command:
  classifier   `python -m rpe_jax.train_classifier` into ROOT/classifier (the FID features)
  X: train     `python -m rpe_jax.main --config=configs/experiments/X.py` in ROOT/X; done when
               the checkpoint of the last step exists, else it resumes; a fine-tune gets
               `--config.train.init_from=ROOT/<its INIT_FROM>`
  X: sample    `--mode=sample` (resumable batches)
  X: evaluate  `--mode=evaluate` with the classifier -> ROOT/X/eval/results.json
  X: curve S   multi-stage runs: checkpoint S (each quarter) copied into ROOT/X/curve/step_S,
               sampled (`sample.checkpoint_step`) and scored at 32 px with the run's first method
               and, for a fine-tune, step 0: its source's last checkpoint under the source's
               config, the model it starts from
`--only` selects experiments (a fine-tune's unselected source is trained, not sampled);
`--steps` / `--samples` become the config switches `steps=N,samples=N`. Then, from every
run under ROOT merged with the run records in docs/assets/results/runs/ (results_report's
docstring), the results block of docs/results.md is rewritten between its markers (the
file is created with a skeleton if missing; text outside the markers is kept), and the
records, plots, a long CSV and sample grids go to docs/assets/results/. Wall time per stage is kept
in ROOT/timings.json; the ETA prices the remaining training and sampling FLOPs at the
measured rate (before any measurement: the demo's ~3 steps/s at batch 32, 64 tokens).
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks import results_report as report
from configs.experiments import common
from rpe_jax import config_utils
from rpe_jax import sample as sample_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Demo on 2 CPU cores: ~3 steps/s at batch 32 with 64 tokens (DiT-S, 4 blocks x 128).
PRIOR_FLOPS_PER_S = 3 * common.train_flops(1, 64)
# Fixed costs, measured on the tiny run (2 loaded CPU cores): start-up, restore and the train
# step's compilation per subprocess; compiling one (method, resolution) sampler; scoring one
# cell (mostly the two 2048 x 2048 eigendecompositions of sFID).
STAGE_OVERHEAD_S = 45
SAMPLER_COMPILE_S = 20
EVAL_CELL_S = 30

# ---------------------------------------------------------------- the plan of stages


@dataclasses.dataclass
class Stage:
    """One subprocess of the pipeline.

    Attributes:
      label: "experiment: stage".
      command: argv, "python" standing for this interpreter.
      done: whether the stage's output is already complete (checked when it is reached).
      work: FLOPs it still has to do, for the ETA.
      fixed_s: its seconds that do not scale with FLOPs (besides STAGE_OVERHEAD_S).
      before: prepares its inputs (a curve point's checkpoint copy).
    """

    label: str
    command: list[str]
    done: Callable[[], bool]
    work: float = 0.0
    fixed_s: float = 0.0
    before: Callable[[], None] | None = None

    def estimate(self, rate: float) -> float:
        return STAGE_OVERHEAD_S + self.fixed_s + self.work / rate


def main_command(name: str, arg: str | None, workdir: str, mode: str, *extra: str) -> list[str]:
    config = f"configs/experiments/{name}.py" + (f":{arg}" if arg else "")
    flags = [f"--config={config}", f"--workdir={workdir}", f"--mode={mode}", *extra]
    return ["python", "-m", "rpe_jax.main", *flags]


def sample_files(config, workdir: str, methods, resolutions) -> dict[tuple[str, str], list[str]]:
    """{(method, "HxW"): the batch files --mode=sample writes} of a config."""
    count = math.ceil(config.sample.num_samples / config.sample.batch_size)
    out = {}
    for method in methods:
        for res in map(report.resolution_name, resolutions):
            folder = os.path.join(workdir, "generated", method, res)
            out[(method, res)] = [os.path.join(folder, f"batch_{i:05d}.npz") for i in range(count)]
    return out


def sampled(files: dict) -> bool:
    return all(os.path.exists(f) for paths in files.values() for f in paths)


def evaluated(workdir: str, files: dict) -> bool:
    """results.json covers every (method, resolution) and is newer than every sample batch."""
    path = os.path.join(workdir, "eval", "results.json")
    if not os.path.exists(path) or not sampled(files):
        return False
    with open(path) as f:
        have = {(r["method"], r["resolution"]) for r in json.load(f)}
    newest = max(os.path.getmtime(p) for paths in files.values() for p in paths)
    return set(files) <= have and os.path.getmtime(path) >= newest


def drawn_cells(config, methods, resolutions) -> set[tuple[str, str]]:
    """(method, "HxW") cells whose samples are drawn; the others copy an earlier method's
    (`rpe_jax.sample.shared_samples`) and cost neither sampling nor scoring."""
    config = config.copy_and_resolve_references()
    config.sample.methods = tuple(methods)
    cells = set()
    for resolution in resolutions:
        shared = sample_lib.shared_samples(config, config_utils.parse_resolution(resolution))
        cells |= {(m, report.resolution_name(resolution)) for m, first in shared.items() if m == first}
    return cells


def sample_work(config, files: dict) -> float:
    """FLOPs of the missing sample batches that are drawn (not copied): NFE x (2 with
    guidance) forwards per image."""
    nfe = config.sample.steps * (2 if config.sample.solver == "heun" else 1)
    nfe *= 2 if config.sample.cfg_scale != 1.0 else 1
    patch = int(config.model.variant.rsplit("/", 1)[1])
    drawn = drawn_cells(config, {m for m, _ in files}, {res for _, res in files})
    work = 0.0
    for (method, res), paths in files.items():
        if (method, res) not in drawn:
            continue
        h, w = config_utils.parse_resolution(res)
        missing = sum(not os.path.exists(p) for p in paths)
        flops = common.forward_flops((h // patch) * (w // patch), config.model.depth, config.model.width)
        work += missing * config.sample.batch_size * nfe * flops
    return work


def train_work(config, workdir: str) -> float:
    steps = report.checkpoint_steps(workdir)
    h, w = config_utils.parse_resolution(report.resolution_name(config.data.resolution))
    patch = int(config.model.variant.rsplit("/", 1)[1])
    remaining = config.train.num_steps - (steps[-1] if steps else 0)
    tokens = (h // patch) * (w // patch)
    return common.train_flops(
        max(remaining, 0), tokens, config.train.batch_size, config.model.depth, config.model.width
    )


def train_stage(root: str, name: str, arg: str | None) -> Stage:
    config, source = report.load_experiment(name, arg)
    workdir = os.path.join(root, name)
    extra = [f"--config.train.init_from={os.path.join(root, source)}"] if source else []
    final = os.path.join(workdir, "checkpoints", str(config.train.num_steps))
    return Stage(
        f"{name}: train",
        main_command(name, arg, workdir, "train", *extra),
        lambda: os.path.isdir(final),
        train_work(config, workdir),
    )


def sample_and_evaluate(
    label: str,
    name: str,
    arg: str | None,
    workdir: str,
    extractor: str,
    cell: tuple[str, int | str] | None = None,
    checkpoint: tuple[str, int] | None = None,
) -> list[Stage]:
    """The sample and evaluate stages of experiment `name` in `workdir`: every configured
    (method, resolution), or only `cell`; of the workdir's last checkpoint, or of
    `checkpoint` = (checkpoints folder, step), copied into `workdir` (a curve point)."""
    config, _ = report.load_experiment(name, arg)
    methods, resolutions, extra, before = config.sample.methods, config.sample.resolutions, [], None
    if cell is not None:
        methods, resolutions = (cell[0],), (cell[1],)
        extra = [
            f"--config.sample.resolutions=({cell[1]!r},)",
            f'--config.sample.methods=("{cell[0]}",)',  # double quotes: shell-friendly
        ]
    if checkpoint is not None:
        folder, step = checkpoint
        extra.append(f"--config.sample.checkpoint_step={step}")
        before = copy_checkpoint(
            os.path.join(folder, str(step)), os.path.join(workdir, "checkpoints", str(step))
        )
    files = sample_files(config, workdir, methods, resolutions)
    evaluate_flags = [*extra, f"--config.eval.extractor_path={extractor}"]
    return [
        Stage(
            f"{label}: sample",
            main_command(name, arg, workdir, "sample", *extra),
            lambda: sampled(files),
            sample_work(config, files),
            SAMPLER_COMPILE_S * sum(not os.path.exists(p[-1]) for p in files.values()),
            before,
        ),
        Stage(
            f"{label}: evaluate",
            main_command(name, arg, workdir, "evaluate", *evaluate_flags),
            lambda: evaluated(workdir, files),
            fixed_s=EVAL_CELL_S * evaluation_cells(config, methods, resolutions),
        ),
    ]


def evaluation_cells(config, methods, resolutions) -> int:
    """Scores --mode=evaluate computes: every drawn (method, resolution), and `train_resized` at
    every other resolution when the training one is sampled."""
    names = [report.resolution_name(r) for r in resolutions]
    train = report.resolution_name(config.data.resolution)
    return len(drawn_cells(config, methods, resolutions)) + (len(names) - 1 if train in names else 0)


def copy_checkpoint(source: str, target: str) -> Callable[[], None]:
    """A function that copies checkpoint folder `source` to `target` unless it is there."""

    def copy() -> None:
        if os.path.isdir(target):
            return
        if not os.path.isdir(source):
            raise FileNotFoundError(f"Checkpoint {source} is missing (deleted, or keep_checkpoints too low).")
        shutil.copytree(source, target + ".tmp", dirs_exist_ok=True)
        os.replace(target + ".tmp", target)

    return copy


def curve_stages(root: str, name: str, arg: str | None, extractor: str) -> list[Stage]:
    """Sample and score, at the run's training resolution with its first method, every
    intermediate checkpoint (each `checkpoint_every` steps) into ROOT/name/curve/step_S; and
    for a fine-tune, step 0: the source's last checkpoint under the source's config (its `L`),
    the model the fine-tune starts from."""
    config, source = report.load_experiment(name, arg)
    every, last = config.train.checkpoint_every, config.train.num_steps
    cell = (config.sample.methods[0], config.data.resolution)
    points = [(name, step, os.path.join(root, name, "checkpoints")) for step in range(every, last, every)]
    if source:
        source_steps = report.load_experiment(source, arg)[0].train.num_steps
        points.insert(0, (source, source_steps, os.path.join(root, source, "checkpoints")))
    stages = []
    for experiment, step, folder in points:
        shown = 0 if experiment == source else step
        workdir = os.path.join(root, name, "curve", f"step_{shown:07d}")
        label = f"{name}: curve {shown}"
        stages += sample_and_evaluate(label, experiment, arg, workdir, extractor, cell, (folder, step))
    return stages


def classifier_sides() -> str:
    """Every image side of the test resolutions, for the classifier's training renders."""
    names = map(report.resolution_name, common.TEST_RESOLUTIONS + common.FINETUNE_TEST_RESOLUTIONS)
    return ",".join(map(str, sorted({side for n in names for side in config_utils.parse_resolution(n)})))


def build_plan(root: str, names: list[str], arg: str | None, classifier_steps: int | None) -> list[Stage]:
    """Every stage, dependencies first; a fine-tune's unselected source is only trained."""
    extractor = os.path.join(root, "classifier")
    command = ["python", "-m", "rpe_jax.train_classifier", f"--workdir={extractor}"]
    command.append(f"--train_resolutions={classifier_sides()}")
    if classifier_steps:
        command.append(f"--steps={classifier_steps}")
    plan = [Stage("classifier", command, lambda: os.path.exists(os.path.join(extractor, "classifier.json")))]
    trained = set()
    for name in common.EXPERIMENTS:
        if name not in names:
            continue
        source = report.load_experiment(name, arg)[1]
        if source and source not in trained:
            plan.append(train_stage(root, source, arg))
            trained.add(source)
        if name not in trained:
            plan.append(train_stage(root, name, arg))
            trained.add(name)
        plan += sample_and_evaluate(name, name, arg, os.path.join(root, name), extractor)
        if name in report.CURVE_RUNS:
            plan += curve_stages(root, name, arg, extractor)
    return plan


# ---------------------------------------------------------------- running the plan


class Eta:
    """Time left: the remaining FLOPs at the measured rate, plus the fixed costs.

    The rate is measured on the finished stages that had FLOPs to do, their fixed costs
    taken off; before any, it is PRIOR_FLOPS_PER_S.
    """

    def __init__(self, plan: list[Stage]):
        self.left = {id(s): s for s in plan}
        self.done_work = self.work_seconds = 0.0

    def finished(self, stage: Stage, seconds: float | None = None) -> None:
        """Counts a stage off; `seconds`: its wall time, when it ran."""
        del self.left[id(stage)]
        if stage.work and seconds is not None:
            self.done_work += stage.work
            self.work_seconds += max(seconds - STAGE_OVERHEAD_S - stage.fixed_s, 1.0)

    @property
    def rate(self) -> float:
        return self.done_work / self.work_seconds if self.done_work else PRIOR_FLOPS_PER_S

    def seconds(self) -> float:
        return sum(s.estimate(self.rate) for s in self.left.values())


def execute(stage: Stage, root: str) -> float:
    """Runs one stage from the repository root; records its wall time in ROOT/timings.json
    (read again before writing, so runners of other experiments on the same root keep
    theirs) and returns it.

    Raises:
      SystemExit: naming the stage and its command, when the command fails.
    """
    if stage.before:
        stage.before()
    began = time.time()
    status = subprocess.run([sys.executable, *stage.command[1:]], cwd=REPO).returncode
    if status:
        raise SystemExit(
            f"Stage {stage.label!r} failed with exit status {status}: {shlex.join(stage.command)}"
        )
    seconds = round(time.time() - began, 1)
    path = os.path.join(root, "timings.json")
    os.makedirs(root, exist_ok=True)
    timings = report.read_json(path, {}) | {stage.label: seconds}
    with open(path + ".tmp", "w") as f:
        json.dump(timings, f, indent=2)
    os.replace(path + ".tmp", path)
    return seconds


def run_plan(plan: list[Stage], root: str, dry_run: bool) -> None:
    """Runs (or, dry, lists with estimates) every stage with its command, wall time and the ETA."""
    start, eta, estimates = time.time(), Eta(plan), {}
    for i, stage in enumerate(plan, 1):
        prefix = f"[{i}/{len(plan)} {time.strftime('%H:%M:%S')}] {stage.label}"
        if stage.done():
            print(f"{prefix}: done already, skipped", flush=True)
            eta.finished(stage)
            continue
        command = shlex.join(stage.command)
        if dry_run:
            estimate = stage.estimate(PRIOR_FLOPS_PER_S)
            experiment = stage.label.split(":")[0]
            estimates[experiment] = estimates.get(experiment, 0.0) + estimate
            print(f"{prefix} (~{report.fmt_duration(estimate)}): {command}", flush=True)
            continue
        print(f"{prefix}: {command}", flush=True)
        seconds = execute(stage, root)
        eta.finished(stage, seconds)
        print(
            f"{prefix}: done in {report.fmt_duration(seconds)}; "
            f"elapsed {report.fmt_duration(time.time() - start)}; "
            f"ETA {report.fmt_duration(eta.seconds())} at {eta.rate / 1e9:.1f} GFLOP/s",
            flush=True,
        )
    if estimates:
        rate = PRIOR_FLOPS_PER_S / 1e9
        print(f"Estimate at {rate:.1f} GFLOP/s (the demo's training rate) + fixed costs:", flush=True)
        for experiment, seconds in estimates.items():
            print(f"  {experiment}: {report.fmt_duration(seconds)}", flush=True)
        print(f"  total: {report.fmt_duration(sum(estimates.values()))}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder of the run workdirs")
    parser.add_argument("--only", default="", help="comma-separated experiments (default: all)")
    parser.add_argument("--steps", type=int, help="pretraining steps (config switch steps=N)")
    parser.add_argument("--samples", type=int, help="images per cell (config switch samples=N)")
    parser.add_argument("--classifier-steps", type=int, help="classifier steps (default: its own)")
    parser.add_argument("--docs", default=os.path.join(REPO, "docs", "results.md"), help="document to write")
    parser.add_argument("--dry-run", action="store_true", help="list the stages, run nothing")
    parser.add_argument("--assemble-only", action="store_true", help="only rewrite the document")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(common.EXPERIMENTS)
    unknown = sorted(set(names) - set(common.EXPERIMENTS))
    if unknown:
        parser.error(f"unknown experiments {unknown}; choose from {list(common.EXPERIMENTS)}")
    switches = [f"{k}={v}" for k, v in (("steps", args.steps), ("samples", args.samples)) if v]
    arg = ",".join(switches) or None
    root = os.path.abspath(args.root)
    command = shlex.join(["python", "-m", "benchmarks.resolution_generalization", *(argv or sys.argv[1:])])
    if not args.assemble_only:
        run_plan(build_plan(root, names, arg, args.classifier_steps), root, args.dry_run)
    if not args.dry_run:
        report.assemble(root, args.docs, command)


if __name__ == "__main__":
    main()
