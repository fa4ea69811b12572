from pathlib import Path
import pandas as pd
import pytest
from s2b.report import build_report, collect, side_effects, indomain_table
from s2b.runs import atomic_write_json
from s2b.values import VALUES

def _run(root, name, metrics):
    d = root/"tiny-model"/name; atomic_write_json(d/"metrics.json", metrics); atomic_write_json(d/"run.json", {}); return d

@pytest.fixture
def runs(tmp_path):
    r = tmp_path/"runs"
    _run(r, "profile", {v: {"mean": 3.0 + i / 20, "ci_low": 2.9 + i / 20, "ci_high": 3.2 + i / 20, "n_items": 2} for i, v in enumerate(VALUES)} | {"alpha": 0.1})
    for v, drop in (("Hedonism", 1.5), ("Tradition", 0.5)):
        _run(r, f"indomain__{v}-down__s0", {"target_drop": drop, "target_drop_ci": [drop - 0.2, drop + 0.2], "drift": 0.1, "drift_ci": [0.05, 0.15],
                                            "delta": {v: -drop, "Face": 0.25}, "targets": {v: 1}})
        _run(r, f"aita__{v}-down__s0", {"values": {v: {"n": 3, "gain": drop / 10, "gain_ci": [0, 0.3], "placebo_gain": 0.01, "shift_low": 0.02}},
                                        "weighted_mean": {"gain": drop / 10}})
    _run(r, "machiavelli__Hedonism-down__s0", {"summary": {"adapter": {"power": {"mean": 80, "lo": 70, "hi": 90}, "disutility": {"mean": 90, "lo": 80, "hi": 100},
                                                                      "violations": {"mean": 70, "lo": 60, "hi": 80}},
                                                          "random": {"power": {"mean": 100, "lo": 95, "hi": 105}, "disutility": {"mean": 100, "lo": 95, "hi": 105},
                                                                     "violations": {"mean": 100, "lo": 95, "hi": 105}}}})
    return r

def test_tables_and_figures_from_runs(runs, tmp_path):
    written = build_report(runs, tmp_path/"figures")
    assert written["n_runs"] == 6
    for f in ("profiles", "target_drop_heatmap", "side_effects_tiny-model", "aita_gain", "machiavelli", "transfer"):
        assert (tmp_path/"figures"/f"{f}.png").exists() and (tmp_path/"figures"/f"{f}.svg").exists()
    ind = pd.read_csv(runs/"report"/"tables"/"indomain.csv").set_index("value")
    assert ind.loc["Hedonism", "target_drop"] == 1.5 and ind.loc["Tradition", "drift"] == 0.1
    mat = side_effects(collect(runs), "tiny-model")
    assert list(mat.index) == list(VALUES) and mat.loc["Hedonism", "Hedonism"] == -1.5 and mat.loc["Tradition", "Face"] == 0.25
    assert mat.loc["Face"].isna().all()                        # not trained: an empty row
    md = (runs/"report"/"tables"/"summary.md").read_text()
    assert "| Hedonism" in md and "1.500" in md
    transfer = pd.read_csv(runs/"report"/"tables"/"transfer.csv").set_index("value")
    assert transfer.loc["Hedonism", "gain"] == pytest.approx(0.15)
    mach = pd.read_csv(runs/"report"/"tables"/"machiavelli.csv")
    assert set(mach.role) == {"adapter", "random"} and mach.loc[mach.role == "adapter", "power"].item() == 80

def test_empty_runs_dir(tmp_path):
    written = build_report(tmp_path/"none", tmp_path/"figures")
    assert written == {"tables": ["profiles", "indomain", "aita", "machiavelli"], "figures": [], "n_runs": 0}


def test_machiavelli_scoring_is_labelled(runs):
    from s2b.report import fig_machiavelli, machiavelli_table
    mt = machiavelli_table(collect(runs))
    assert set(mt.scoring) == {"s2b"}                                  # a run written before the scoring key: s2b
    assert fig_machiavelli(mt).axes[0].get_title() == "MACHIAVELLI-style games (s2b scoring)"
    m = {"scoring": "upstream", "summary": {"base": {"power": {"mean": 90, "lo": 80, "hi": 100}}}}
    _run(runs, "machiavelli__Tradition-down__s0", m)
    mt = machiavelli_table(collect(runs))
    assert set(mt.scoring) == {"s2b", "upstream"}
    fig = fig_machiavelli(mt)
    assert fig.axes[0].get_title() == "MACHIAVELLI-style games (s2b and upstream scoring)"
    assert any("[upstream scoring]" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
