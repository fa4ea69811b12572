import math
import numpy as np, pandas as pd
import pytest
from s2b.survey import load_survey
from s2b.profile import (encode_variants, score_plain, score_shared, rate, value_profile, consistency, majority, parse_rating,
                         rating_slot, run_profile, ProfileParams, PCOLS, KEY, item_scores)

def test_majority_and_parsing():
    assert majority([3, 3, 5]) == 3 and majority([2, 5]) == 2 and majority([1, 1, 6, 6, 2]) == 1 and majority([1, 1, 6, 6, 5]) == 6   # ties -> nearest the mean
    assert math.isnan(majority([float("nan")]))
    assert parse_rating("I'd say 4, maybe 5") == 4 and math.isnan(parse_rating("eight"))

def _toy(p):
    rows = []
    for i, (item, value, probs) in enumerate(p):
        rows.append({"item_id": item, "value": value, "split": "test", "instruction_id": i % 2, "template_id": 0, **dict(zip(PCOLS, probs))})
    from s2b.profile import _finish
    return _finish(pd.DataFrame(rows))

def test_value_profile_and_consistency_on_known_ratings():
    one = [0, 0, 0, 0, 0, 1.0]; two = [0, 1.0, 0, 0, 0, 0]
    r = _toy([("a", "Hedonism", one), ("a", "Hedonism", one), ("b", "Hedonism", two), ("b", "Hedonism", two),
              ("c", "Tradition", two), ("c", "Tradition", two)])
    prof = value_profile(r).set_index("value")
    assert prof.loc["Hedonism", "mean"] == 4.0 and prof.loc["Hedonism", "n_items"] == 2
    assert prof.loc["Hedonism", "ci_low"] == 2.0 and prof.loc["Hedonism", "ci_high"] == 6.0
    assert prof.loc["Tradition", "mean"] == 2.0
    assert consistency(r)["alpha"] == pytest.approx(1.0)      # every variant agrees on every item
    assert consistency(r)["entropy"] == pytest.approx(0.0, abs=1e-9)

@pytest.fixture(scope="module")
def small(lm):
    s = load_survey("bundled").split("test").subset(limit=2).with_templates([0, 1])
    return s, encode_variants(lm, s)

@pytest.mark.model
def test_rating_slot(lm):
    shared, cands = rating_slot(lm.tokenizer, "My answer is {rating}")
    assert [lm.tokenizer.decode([c]) for c in cands] == ["1", "2", "3", "4", "5", "6"]
    assert lm.tokenizer.decode(shared).strip() == ""              # SmolLM2 spells " 5" as a space token, then the digit

@pytest.mark.model
def test_batched_equals_one_by_one_and_sums_to_one(lm, small):
    _, enc = small
    p1, m1 = score_plain(lm, enc, batch_size=1)
    p8, _ = score_plain(lm, enc, batch_size=8)
    assert np.allclose(p1.sum(1), 1, atol=1e-6) and np.abs(p1 - p8).max() < 1e-4
    assert ((m1 > 0) & (m1 <= 1)).all()

@pytest.mark.model
def test_prefix_sharing_equals_plain(lm, small):
    _, enc = small
    p_plain, _ = score_plain(lm, enc, batch_size=8)
    p_shared, _ = score_shared(lm, enc, batch_size=5)
    assert np.abs(p_plain - p_shared).max() < 1e-3

def _kill_at_call(monkeypatch, n):
    "Make the n-th call of `s2b.profile.score_shared` raise KeyboardInterrupt (a kill mid-run); returns the undo."
    import s2b.profile as P
    orig, calls = P.score_shared, {"n": 0}
    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == n: raise KeyboardInterrupt("killed")
        return orig(*a, **k)
    monkeypatch.setattr(P, "score_shared", dying)
    return lambda: monkeypatch.setattr(P, "score_shared", orig)

@pytest.mark.model
def test_resume_after_interruption_gives_identical_table(lm, small, tmp_path, monkeypatch):
    s, _ = small
    full, _ = rate(lm, s, cache=tmp_path/"full.parquet", batch_size=1, flush_every=4)
    undo = _kill_at_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt): rate(lm, s, cache=tmp_path/"r.parquet", batch_size=1, flush_every=4)
    undo()
    partial = pd.read_parquet(tmp_path/"r.parquet")
    assert 0 < len(partial) < len(full)
    resumed, stats = rate(lm, s, cache=tmp_path/"r.parquet", batch_size=1, flush_every=4)
    assert stats["n_cached"] == len(partial) and stats["n_computed"] == len(full) - len(partial)
    pd.testing.assert_frame_equal(resumed, full, check_exact=False, atol=1e-5)   # batch composition: float noise only
    again, stats = rate(lm, s, cache=tmp_path/"r.parquet")
    assert stats["n_computed"] == 0

@pytest.mark.model
def test_sample_mode(lm):
    s = load_survey("bundled").split("test").subset(limit=2).with_templates([0]).with_instructions([0])
    r, _ = rate(lm, s, mode="sample", seed=1)
    assert set(r.columns) >= {"sampled", "item_id"} and len(r) == 2
    items = item_scores(r)
    assert items.score.isna().all() or items.score.dropna().between(1, 6).all()

@pytest.mark.model
def test_run_profile_writes_the_run_directory(lm, tmp_path):
    m = run_profile(ProfileParams(limit=3, templates="0", instructions="0"), out=tmp_path, lm=lm)
    assert {"alpha", "prompts_per_s", "coverage"} <= set(m)
    assert sum(v in m for v in ("Self_direction_thought", "Self_direction_action", "Stimulation")) == 3
    assert m["Stimulation"].keys() >= {"mean", "ci_low", "ci_high", "n_items"}
    for f in ("metrics.json", "run.json", "ratings.parquet", "profile.png"): assert (tmp_path/f).exists()
    import json
    rec = json.loads((tmp_path/"run.json").read_text())
    assert rec["data"]["survey"]["sha256"] and rec["versions"]["torch"] and rec["model"]["hf_id"] and "git_commit" in rec
    r = pd.read_parquet(tmp_path/"ratings.parquet")
    assert {"item_id", "value", "split", "instruction_id", "template_id", *PCOLS, "expected", "argmax"} <= set(r)
    m2 = run_profile(ProfileParams(limit=3, templates="0", instructions="0"), out=tmp_path, lm=lm)
    assert m2 == json.loads((tmp_path/"metrics.json").read_text())       # finished: reused, not recomputed
    assert "steering" not in rec and rec["params"]["adapter"] is None       # the un-steered model: `base` in the report

@pytest.mark.model
def test_profile_of_a_prompt_run_and_a_caa_run(lm, tmp_path):
    """`s2b profile --adapter RUN` takes a steering run of any method: its artefact goes on the model through `steer` (the
    persona changes every prompt, the CAA vectors the logits), the ratings move, and the run records who steered."""
    import json
    from s2b.interventions import SteeringParams
    from s2b.persona import run_prompt
    from s2b.caa import run_caa
    small = SteeringParams(target="Hedonism", direction="down", recipe="recipes/cpu-smoke.yaml",
                           overrides={"data.train_templates": "0", "data.others_per_value": 0, "data.target_limit": 2, "caa.multiplier": 8.0})
    run_prompt(small, out=tmp_path/"prompt"); run_caa(small, out=tmp_path/"caa")
    sel = dict(limit=2, templates="0", instructions="0", values="Hedonism,Tradition")
    run_profile(ProfileParams(**sel), out=tmp_path/"base", lm=lm)
    base = pd.read_parquet(tmp_path/"base"/"ratings.parquet")
    for method in ("prompt", "caa"):
        p = ProfileParams(**sel, adapter=str(tmp_path/method))
        p.check()                                                        # what the CLI checks: no adapter files needed
        run_profile(p, out=tmp_path/f"profile-{method}", lm=lm)
        r = pd.read_parquet(tmp_path/f"profile-{method}"/"ratings.parquet")
        assert (r[KEY].values == base[KEY].values).all() and not np.allclose(r[PCOLS], base[PCOLS], atol=1e-3), method
        rec = json.loads((tmp_path/f"profile-{method}"/"run.json").read_text())
        assert (rec["steering"]["method"], rec["steering"]["label"]) == (method, "Hedonism-down") and rec["params"]["adapter"] == str(tmp_path/method)
        assert lm.persona is None and lm.adapter is None                # steer gave the model back as it was
    with pytest.raises(FileNotFoundError, match="no such folder"): ProfileParams(adapter=str(tmp_path/"nothing")).check()

@pytest.mark.model
def test_killed_profile_resumes_to_the_clean_numbers(lm, tmp_path, monkeypatch):
    "Batches are fixed by the survey, not by what is left: a run killed midway and resumed equals a clean run within 1e-6."
    s = load_survey("bundled").split("test").subset(limit=6).with_templates([0, 1, 2]).with_instructions([0, 1])
    clean, _ = rate(lm, s, batch_size=4)
    undo = _kill_at_call(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt): rate(lm, s, cache=tmp_path/"r.parquet", batch_size=4, flush_seconds=0)
    undo()
    partial = pd.read_parquet(tmp_path/"r.parquet")
    assert len(partial) == 3 * 4                                  # every finished batch reached the disk (flush by time)
    resumed, stats = rate(lm, s, cache=tmp_path/"r.parquet", batch_size=4)
    assert stats["n_cached"] == 12 and stats["n_computed"] == len(clean) - 12
    assert np.abs(resumed[PCOLS].to_numpy() - clean[PCOLS].to_numpy()).max() < 1e-6
    pd.testing.assert_frame_equal(resumed[KEY], clean[KEY])
