"""Writing evaluation results: results.json, results.csv, results.md and a resolution plot.

Rows are dicts `{"method", "resolution", "tokens", metric: value, metric + "_se": standard
error, ...}`; a row may lack a metric (the `train_resized` row has no flow-matching loss).
The tables print `value ± se`; the plot shows, for each method family
(`methods.FAMILIES`), its best member at each resolution with error bars, one panel per
metric. The CSV and JSON keep every row.
"""

import csv
import io
import json
from collections.abc import Callable, Sequence

import matplotlib
from etils import epath
from matplotlib.artist import Artist

from rpe_jax import config_utils, paths
from rpe_jax import methods as methods_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

HIGHER_IS_BETTER = ("inception_score", "precision", "recall")
ONE_IS_BEST = ("hf_ratio",)
SE_SUFFIX = "_se"


def better(metric: str) -> str:
    """Which values of `metric` are better: "higher", "closer to 1" or "lower"."""
    if metric in HIGHER_IS_BETTER:
        return "higher"
    if metric in ONE_IS_BEST:
        return "closer to 1"
    return "lower"


def badness(metric: str, value: float) -> float:
    """A number that is smaller for better values of `metric` (to pick the best row)."""
    direction = better(metric)
    if direction == "higher":
        return -value
    if direction == "closer to 1":
        return abs(value - 1.0)
    return value


def present_metrics(rows: list[dict], order: Sequence[str]) -> list[str]:
    """The metrics of `order` that at least one row has, in that order."""
    return [m for m in order if any(r.get(m) is not None for r in rows)]


def format_cell(row: dict | None, metric: str) -> str:
    """`value ± se`, `value` without a standard error, or "—" without a value."""
    if row is None or row.get(metric) is None:
        return "—"
    se = row.get(metric + SE_SUFFIX)
    return f"{row[metric]:.3f}" if se is None else f"{row[metric]:.3f} ± {se:.3f}"


def _grid(rows: list[dict]):
    """(methods in first-seen order, resolution names by token count, {(method, res): row})."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    resolutions = sorted({(r["tokens"], r["resolution"]) for r in rows})
    values = {(r["method"], r["resolution"]): r for r in rows}
    return methods, [name for _, name in resolutions], values


def write_results(
    rows: list[dict], out_dir: epath.PathLike, train_resolution, metrics: Sequence[str]
) -> None:
    """results.json, results.csv, results.md (one table per metric) and resolution_plot.png
    in `out_dir` (local or gs://).

    Args:
      rows: the evaluated rows.
      out_dir: the output folder.
      train_resolution: (H, W) of training, marked in the tables.
      metrics: the metric columns, in order; each `_se` column follows its metric in the CSV.
    """
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    fields = ["method", "resolution", "tokens"]
    for metric in metrics:
        fields += [metric] + [metric + SE_SUFFIX] * any(metric + SE_SUFFIX in r for r in rows)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / "results.csv").write_text(table.getvalue())
    (out_dir / "results.md").write_text(markdown_table(rows, train_resolution, metrics))
    # The per-band flow-matching losses stay in the tables: the plot keeps their mean.
    per_band = [m for m in metrics if m.startswith("fm_loss_t")]
    plot(rows, out_dir / "resolution_plot.png", [m for m in metrics if m not in per_band], train_resolution)


def _marked(resolutions: list[str], train_resolution) -> list[str]:
    """Resolution names with the training one marked "(train)"."""
    train_name = config_utils.resolution_name(train_resolution)
    return [f"{r} (train)" if r == train_name else r for r in resolutions]


def markdown_table(rows: list[dict], train_resolution, metrics: Sequence[str]) -> str:
    """One Markdown table per metric: methods x resolutions, cells `value ± se`; the
    training resolution is marked."""
    methods, resolutions, values = _grid(rows)
    header = _marked(resolutions, train_resolution)
    lines = []
    for metric in metrics:
        lines += [f"### {metric} ({better(metric)} is better)", ""]
        lines += ["| method | " + " | ".join(header) + " |", "|---" * (len(resolutions) + 1) + "|"]
        for method in methods:
            cells = [format_cell(values.get((method, r)), metric) for r in resolutions]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def family_best(
    rows: list[dict], metric: str, family_of: Callable[[str], str] = methods_lib.family
) -> dict[str, dict[str, dict]]:
    """{family: {resolution: the row of its best member there}} for `metric`; rows without
    the metric are left out."""
    best: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row.get(metric) is None:
            continue
        cells = best.setdefault(family_of(row["method"]), {})
        held = cells.get(row["resolution"])
        if held is None or badness(metric, row[metric]) < badness(metric, held[metric]):
            cells[row["resolution"]] = row
    return best


def plot(rows: list[dict], path: epath.PathLike, metrics: Sequence[str], train_resolution) -> None:
    """Metric vs resolution, one panel per metric, one line per method family (its best
    member at each resolution) with standard-error bars; the training resolution is marked."""
    _, resolutions, _ = _grid(rows)
    columns = min(4, len(metrics))
    panels = -(-len(metrics) // columns)
    fig, axes = plt.subplots(panels, columns, figsize=(4 * columns, 3.5 * panels), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for name, cells in family_best(rows, metric).items():
            xs = [i for i, r in enumerate(resolutions) if r in cells]
            found = [cells[resolutions[i]] for i in xs]
            ys = [r[metric] for r in found]
            errors = [r.get(metric + SE_SUFFIX) or 0.0 for r in found]
            style = ":" if name == "train_resized" else "-"
            ax.errorbar(xs, ys, yerr=errors, fmt=style, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(resolutions)), _marked(resolutions, train_resolution), rotation=45)
        ax.set_title(f"{metric} ({better(metric)} is better)", fontsize="medium")
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    legend: dict[str, Artist] = {}  # every family of any panel, once
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    labels = list(legend)
    fig.legend(list(legend.values()), labels, loc="upper center", ncol=min(len(labels), 7), fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.5 * panels)))
    paths.write_figure(path, fig, dpi=100)
    plt.close(fig)
