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
    assert written == {"tables": ["profiles", "indomain", "aita", "machiavelli"], "figures": [], "n_runs": 0, "findings": []}
    assert "_no steering runs_" in (tmp_path/"figures"/"results.md").read_text()

def _sel(sel, lo, hi, v):
    return {"selectivity": sel, "selectivity_ci": [lo, hi], "selective": lo > 0, "toward_goal": sel + 0.1, "target_rank": {v: 1},
            "n_values": 20, "verdict": f"{v}→6: {'selective' if lo > 0 else 'NOT selective'}: selectivity {sel:+.2f} [{lo:+.2f}, {hi:+.2f}]"}

def test_findings_say_in_words_whether_a_result_is_selective(tmp_path):
    r = tmp_path/"runs"
    base = {"target_drop": -1.0, "target_drop_ci": [-1.2, -0.8], "drift": 0.1, "drift_ci": [0.05, 0.15], "delta": {"Face": 0.1}}
    _run(r, "indomain__Hedonism-up__s0", {**base, "targets": {"Hedonism": 6}, **_sel(0.9, 0.5, 1.3, "Hedonism"),
                                          "by_templates": {"held_out": {"target_drop": -0.5, "drift": 0.2, **_sel(0.3, 0.1, 0.5, "Hedonism")}}})
    _run(r, "indomain__Tradition-up__s0", {**base, "targets": {"Tradition": 6}, **_sel(0.05, -0.1, 0.2, "Tradition")})
    _run(r, "aita__Hedonism-up__s0", {"values": {"Hedonism": {"n": 12, "gain": -0.1, "gain_ci": [-0.15, -0.05], "placebo_gain": 0.01}}})
    written = build_report(r, tmp_path/"figures")
    lines = written["findings"]
    assert any(l.startswith("tiny-model Hedonism up: selective") and "held-out templates: selective +0.30" in l for l in lines)
    assert any(l.startswith("tiny-model Tradition up: NOT selective") for l in lines)
    # the gain of an `up` adapter is meant to be negative (toward the high-standard verdict), and here it beats its placebo
    assert any("Hedonism up AITA" in l and "intended sign −" in l and "beyond its placebo" in l for l in lines)
    md = (tmp_path/"figures"/"results.md").read_text()
    assert "## Findings" in md and "NOT selective" in md and (tmp_path/"figures"/"selectivity.png").exists()


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
