"""Tests of the results writer: tables with standard errors, the CSV, the family plot."""

import csv
import json

import pytest

from rpe_jax import methods, report


def _row(method, resolution, tokens, **values):
    return {"method": method, "resolution": resolution, "tokens": tokens, **values}


ROWS = [
    _row("rpe2d", "16x16", 64, fid=5.0, fid_se=0.5, hf_ratio=0.9, fm_loss=0.3),
    _row("rpe2d_plain", "16x16", 64, fid=4.0, fid_se=0.4, hf_ratio=1.3, fm_loss=0.2),
    _row("rpe2d", "32x32", 256, fid=9.0, fid_se=1.0, hf_ratio=0.8, fm_loss=0.5),
    _row("rpe2d_plain", "32x32", 256, fid=12.0, fid_se=1.5, hf_ratio=0.95, fm_loss=0.6),
    _row("pi", "32x32", 256, fid=10.0, fid_se=0.7, hf_ratio=0.5, fm_loss=0.4),
    _row("train_resized", "32x32", 256, fid=11.0, fid_se=0.2, hf_ratio=0.1),
]


def test_family_plot_picks_the_best_member_by_the_metrics_direction():
    best = report.family_best(ROWS, "fid")
    assert best["rpe2d"]["16x16"]["method"] == "rpe2d_plain"  # lower FID
    assert best["rpe2d"]["32x32"]["method"] == "rpe2d"
    assert best["pi"]["32x32"]["method"] == "pi" and "16x16" not in best["pi"]
    # hf_ratio: closest to 1 wins, from either side.
    ratio = report.family_best(ROWS, "hf_ratio")
    assert ratio["rpe2d"]["16x16"]["method"] == "rpe2d"  # |0.9 - 1| < |1.3 - 1|
    assert ratio["rpe2d"]["32x32"]["method"] == "rpe2d_plain"
    # A row without the metric is left out: train_resized has no flow-matching loss.
    assert "train_resized" not in report.family_best(ROWS, "fm_loss")
    assert report.family_best(ROWS, "precision") == {}


def test_every_method_has_exactly_one_family():
    members = [m for group in methods.FAMILIES.values() for m in group]
    assert sorted(members) == sorted(methods.METHODS)
    assert methods.family("vision_ntk_pro2") == "ntk" and methods.family("train_resized") == "train_resized"


def test_tables_print_value_plus_minus_error_and_mark_training(tmp_path):
    metrics = report.present_metrics(ROWS, ("fid", "sfid", "hf_ratio", "fm_loss"))
    assert metrics == ["fid", "hf_ratio", "fm_loss"]  # no row has sfid
    table = report.markdown_table(ROWS, (16, 16), metrics)
    assert "### fid (lower is better)" in table and "### hf_ratio (closer to 1 is better)" in table
    assert "| method | 16x16 (train) | 32x32 |" in table
    assert "| rpe2d | 5.000 ± 0.500 | 9.000 ± 1.000 |" in table
    assert "| pi | — | 10.000 ± 0.700 |" in table
    assert "| train_resized | — | 0.100 |" in table  # no standard error: the value alone
    report.write_results(ROWS, tmp_path, (16, 16), metrics)
    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["method", "resolution", "tokens", "fid", "fid_se", "hf_ratio", "fm_loss"]
    assert len(rows) == len(ROWS) and rows[-1]["fm_loss"] == ""
    assert json.loads((tmp_path / "results.json").read_text()) == ROWS
    assert (tmp_path / "resolution_plot.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "metric, direction", [("fid", "lower"), ("recall", "higher"), ("fm_loss_t2", "lower")]
)
def test_directions(metric, direction):
    assert report.better(metric) == direction
