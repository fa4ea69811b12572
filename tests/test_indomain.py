import os
import numpy as np, pandas as pd
import pytest
from s2b.indomain import item_deltas, indomain_metrics, selectivity, selectivity_verdict

def _ratings(scores, templates=(0,)):
    return pd.DataFrame([{"item_id": i, "value": v, "split": "test", "instruction_id": 0, "template_id": t,
                          "expected": s[k] if isinstance(s, tuple) else s, "argmax": 1}
                         for i, (v, s) in scores.items() for k, t in enumerate(templates)])

def test_known_drop_and_drift():
    ctrl = _ratings({"h1": ("Hedonism", 4.0), "h2": ("Hedonism", 5.0), "t1": ("Tradition", 3.0), "t2": ("Tradition", 3.0), "f1": ("Face", 2.0)})
    cond = _ratings({"h1": ("Hedonism", 2.0), "h2": ("Hedonism", 4.0), "t1": ("Tradition", 3.5), "t2": ("Tradition", 2.5), "f1": ("Face", 3.0)})
    m = indomain_metrics(item_deltas(cond, ctrl), {"Hedonism": 1})
    assert m["target_drop"] == pytest.approx(1.5)
    assert m["drift"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["delta"] == pytest.approx({"Hedonism": -1.5, "Tradition": 0.0, "Face": 1.0})
    assert m["target_drop_ci"][0] <= 1.5 <= m["target_drop_ci"][1] and m["n_target_items"] == 2 and m["n_other_items"] == 3

def test_held_out_templates_are_scored_separately():
    ctrl = _ratings({"h1": ("Hedonism", (4.0, 4.0)), "t1": ("Tradition", (3.0, 3.0))}, templates=(0, 1))
    cond = _ratings({"h1": ("Hedonism", (1.0, 3.0)), "t1": ("Tradition", (3.0, 3.0))}, templates=(0, 1))
    seen = indomain_metrics(item_deltas(cond, ctrl, [0]), {"Hedonism": 1})
    held = indomain_metrics(item_deltas(cond, ctrl, [1]), {"Hedonism": 1})
    assert seen["target_drop"] == 3.0 and held["target_drop"] == 1.0 and seen["drift"] == held["drift"] == 0.0

def test_profile_target_drop_counts_every_target():
    ctrl = _ratings({"h1": ("Hedonism", 4.0), "t1": ("Tradition", 3.0)})
    cond = _ratings({"h1": ("Hedonism", 2.0), "t1": ("Tradition", 2.0)})
    m = indomain_metrics(item_deltas(cond, ctrl), {"Hedonism": 1, "Tradition": 1})
    assert m["target_drop"] == 1.5 and m["per_target"]["Tradition"]["drop"] == 1.0 and m["n_other_items"] == 0

def test_selectivity_known_answer():
    # target Hedonism down (goal 1): both items fall by 2 -> toward the goal +2; the others move by 0.5, 0.5 and 1 -> drift 2/3
    ctrl = _ratings({"h1": ("Hedonism", 4.0), "h2": ("Hedonism", 5.0), "t1": ("Tradition", 3.0), "t2": ("Tradition", 3.0), "f1": ("Face", 2.0)})
    cond = _ratings({"h1": ("Hedonism", 2.0), "h2": ("Hedonism", 3.0), "t1": ("Tradition", 3.5), "t2": ("Tradition", 2.5), "f1": ("Face", 3.0)})
    s = selectivity(item_deltas(cond, ctrl), {"Hedonism": 1})
    assert s["toward_goal"] == pytest.approx(2.0) and s["selectivity"] == pytest.approx(2.0 - 2 / 3)
    lo, hi = s["selectivity_ci"]
    # target items resampled alone give 2.0 always; the other items' mean |Δ| ranges over [0.5, 1.0]
    assert 2.0 - 1.0 <= lo <= hi <= 2.0 - 0.5 and s["selective"] and s["target_rank"] == {"Hedonism": 1}
    assert selectivity_verdict({**s, "drift": 2 / 3}, "Hedonism→1").startswith("Hedonism→1: selective:")

def test_selectivity_up_and_profile_targets_measure_the_approach_to_the_goal():
    ctrl = _ratings({"h1": ("Hedonism", 3.0), "t1": ("Tradition", 3.0), "f1": ("Face", 3.0)})
    cond = _ratings({"h1": ("Hedonism", 5.5), "t1": ("Tradition", 2.0), "f1": ("Face", 3.2)})
    up = selectivity(item_deltas(cond, ctrl), {"Hedonism": 6})
    assert up["toward_goal"] == pytest.approx(2.5) and up["selectivity"] == pytest.approx(2.5 - 0.6)
    # a profile target: Hedonism toward 4 overshoots (3 -> 5.5 ends 1.5 from 4: toward = 1 - 1.5 = -0.5), Tradition toward 2 arrives
    prof = selectivity(item_deltas(cond, ctrl), {"Hedonism": 4, "Tradition": 2})
    assert prof["toward_goal"] == pytest.approx((-0.5 + 1.0) / 2) and prof["selectivity"] == pytest.approx(0.25 - 0.2)

def test_not_selective_when_everything_moves_together():
    ctrl = _ratings({f"h{i}": ("Hedonism", 3.0) for i in range(3)} | {f"t{i}": ("Tradition", 3.0) for i in range(3)})
    cond = _ratings({f"h{i}": ("Hedonism", 1.5) for i in range(3)} | {f"t{i}": ("Tradition", 1.4 + 0.1 * i) for i in range(3)})
    s = selectivity(item_deltas(cond, ctrl), {"Hedonism": 1})
    assert s["selectivity"] == pytest.approx(1.5 - 1.5) and not s["selective"]
    assert selectivity_verdict({**s, "drift": 1.5}).startswith("NOT selective")

def test_selectivity_resamples_target_and_other_items_independently():
    # 2 target items and 40 other items: a joint resample over all 42 items would often draw no target item at all
    ctrl = _ratings({"h1": ("Hedonism", 4.0), "h2": ("Hedonism", 4.0)} | {f"t{i}": ("Tradition", 3.0) for i in range(40)})
    cond = _ratings({"h1": ("Hedonism", 1.0), "h2": ("Hedonism", 2.0)} | {f"t{i}": ("Tradition", 3.0 + (0.2 if i % 2 else 0)) for i in range(40)})
    s = selectivity(item_deltas(cond, ctrl), {"Hedonism": 1}, n_boot=2000)
    assert s["selectivity"] == pytest.approx(2.5 - 0.1)
    assert s["selectivity_ci"][0] >= 2.0 - 0.2 and s["selectivity_ci"][1] <= 3.0           # bounded by the two parts' ranges
    none = selectivity(item_deltas(cond, ctrl), {"Face": 1})             # no test item of the target: undefined, and said so
    assert np.isnan(none["selectivity"]) and not none["selective"]
    assert selectivity_verdict(none) == "NOT selective: selectivity undefined (no test items of the target)"

@pytest.mark.model
def test_runs_with_one_control_rate_it_once(tmp_path, capsys, random_adapters):
    from s2b.indomain import IndomainParams, run_indomain, shared_ratings_path
    from s2b.profile import prepare_survey
    random_adapters(tmp_path/"ctrl", tmp_path/"cond")
    kw = dict(adapter=str(tmp_path/"cond"), control=str(tmp_path/"ctrl"), limit=3, templates="0", instructions="0")
    a = run_indomain(IndomainParams(target="Hedonism", **kw), tmp_path/"a")
    shared = shared_ratings_path(tmp_path/"ctrl", "embedded", prepare_survey("bundled", "test", 3, "0", instructions="0"))
    assert shared.exists() and "reused" not in capsys.readouterr().out
    b = run_indomain(IndomainParams(target="Tradition", **kw), tmp_path/"b")      # a second target, same control
    assert "control ratings reused" in capsys.readouterr().out
    ca, cb = (pd.read_parquet(tmp_path/r/"ratings_control.parquet") for r in "ab")
    pd.testing.assert_frame_equal(ca, cb)
    assert a["n_items"] == b["n_items"] == 3 and np.isfinite(a["drift"])
    # a retrained control (other weights at the same path) is rated anew
    w = tmp_path/"ctrl"/"adapter_model.safetensors"; w.write_bytes(w.read_bytes() + b" ")
    assert shared_ratings_path(tmp_path/"ctrl", "embedded", prepare_survey("bundled", "test", 3, "0", instructions="0")) != shared
