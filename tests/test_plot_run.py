"""scripts/plot_run.py: curves from a logger=csv run, train/loss averaged between validations."""

from __future__ import annotations

import sys

from tests.conftest import load_script


def test_train_loss_is_averaged_over_each_validation_interval():
    script = load_script("plot_run")
    train = [(1, 4.0), (2, 2.0), (3, 1.0), (4, 3.0), (7, 9.0)]
    # (0, 2]: 4 and 2; (2, 4]: 1 and 3; (4, 6]: nothing, so no point; step 7 is after the last end.
    assert script.averaged_between(train, [2, 4, 6]) == [(2, 3.0), (4, 2.0)]


def test_plot_from_a_csv_run(tmp_path, monkeypatch):
    script = load_script("plot_run")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "step,train/loss,val/loss,val/action_l1,val/grounding_l1,val/success_rate,val/named_ball_rate/reach_ball\n"
        "0,2.0,,,,,\n1,1.0,,,,,\n1,,1.5,0.3,0.4,,\n3,0.5,,,,,\n3,,1.2,0.2,0.1,0.1,0.6\n"
    )
    curves = script.read_curves(tmp_path)
    assert curves["val/loss"] == [(2, 1.5), (4, 1.2)]  # logged steps are 0-based, plotted 1-based
    assert curves["val/success_rate"] == [(4, 0.1)]
    assert curves["val/named_ball_rate/reach_ball"] == [(4, 0.6)]
    assert curves["val/grounding_l1"] == [(2, 0.4), (4, 0.1)]
    out = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["plot_run.py", str(tmp_path), "--out", str(out)])
    script.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
