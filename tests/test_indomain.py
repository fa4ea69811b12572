import os
import numpy as np, pandas as pd
import pytest
from s2b.indomain import item_deltas, indomain_metrics

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

@pytest.mark.model
def test_runs_with_one_control_rate_it_once(tmp_path, capsys, random_adapters):
    from s2b.indomain import run_indomain, shared_ratings_path
    from s2b.profile import prepare_survey
    random_adapters(tmp_path/"ctrl", tmp_path/"cond")
    kw = dict(adapter=str(tmp_path/"cond"), control=str(tmp_path/"ctrl"), limit=3, templates="0", instructions="0")
    a = run_indomain("embedded", "bundled", target="Hedonism", out=tmp_path/"a", **kw)
    shared = shared_ratings_path(tmp_path/"ctrl", "embedded", prepare_survey("bundled", "test", 3, "0", instructions="0"))
    assert shared.exists() and "reused" not in capsys.readouterr().out
    b = run_indomain("embedded", "bundled", target="Tradition", out=tmp_path/"b", **kw)      # a second target, same control
    assert "control ratings reused" in capsys.readouterr().out
    ca, cb = (pd.read_parquet(tmp_path/r/"ratings_control.parquet") for r in "ab")
    pd.testing.assert_frame_equal(ca, cb)
    assert a["n_items"] == b["n_items"] == 3 and np.isfinite(a["drift"])
    # a retrained control (new weights file) is rated anew
    w = tmp_path/"ctrl"/"adapter_model.safetensors"; os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    assert shared_ratings_path(tmp_path/"ctrl", "embedded", prepare_survey("bundled", "test", 3, "0", instructions="0")) != shared
