"Tests for s2b.aita: the gain, summaries, the judgment profile, resuming, the stage."
import json, math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2b import aita
from s2b.runs import save_figure
from s2b.aita import aita_metrics, post_gains, score_posts, summarize_gains
from s2b.posts import LABELS, load_paper_json, load_reddit_csv
from s2b.verdicts import renormalize

FIX = Path(__file__).parent/"fixtures"/"aita"


# ---------------------------------------------------------------- metrics

def _table(rows):
    return pd.DataFrame(rows, columns=["post_id", "value", "role", "high_standard_stance", "low_standard_stance",
                                       "p_NTA", "p_YTA", "p_Neutral"])


def test_gain_by_hand():
    df = _table([
        # post a: high NTA, low YTA (unused Neutral)
        ("a", "Tradition", "control", "NTA", "YTA", .50, .30, .20),
        ("a", "Tradition", "adapter", "NTA", "YTA", .30, .45, .25),
        # post b: high Neutral, low YTA (unused NTA)
        ("b", "Tradition", "control", "Neutral", "YTA", .40, .40, .20),
        ("b", "Tradition", "adapter", "Neutral", "YTA", .50, .40, .10),
        # post c: high YTA, low NTA (unused Neutral), another value
        ("c", "Face", "control", "YTA", "NTA", .20, .70, .10),
        ("c", "Face", "adapter", "YTA", "NTA", .30, .50, .20),
    ])
    pg = post_gains(df).set_index("post_id")
    # a: Δlow = Δp(YTA) = .15, Δhigh = Δp(NTA) = -.20, Δunused = Δp(Neutral) = .05 -> .15 + .20 + .025 = .375
    # b: Δlow = Δp(YTA) = 0, Δhigh = Δp(Neutral) = -.10, Δunused = Δp(NTA) = .10 -> 0 + .10 + .05 = .15
    # c: Δlow = Δp(NTA) = .10, Δhigh = Δp(YTA) = -.20, Δunused = Δp(Neutral) = .10 -> .10 + .20 + .05 = .35
    assert np.allclose(pg.loc[["a", "b", "c"], "gain"], [0.375, 0.15, 0.35])
    assert np.allclose(pg.loc[["a", "b", "c"], "shift_low"], [0.15, 0.0, 0.10])
    assert list(pg.loc[["a", "b", "c"], "unused"]) == ["Neutral", "NTA", "Neutral"]
    # the gain's two parts: which side the verdict moved to (Δlow − Δhigh) and the unused label's term (½Δunused)
    assert np.allclose(pg.loc[["a", "b", "c"], "stance_gain"], [0.35, 0.10, 0.30])
    assert np.allclose(pg.loc[["a", "b", "c"], "unused_term"], [0.025, 0.05, 0.05])
    assert np.allclose(pg.stance_gain + pg.unused_term, pg.gain)
    table, overall = summarize_gains(pg.reset_index(), n_boot=500, seed=3)
    t = table.set_index("value")
    assert list(table.value) == ["Face", "Tradition"]                       # circle order
    assert math.isclose(t.loc["Tradition", "gain"], (0.375 + 0.15)/2) and t.loc["Tradition", "n"] == 2
    assert math.isclose(overall["gain"], (2*0.2625 + 1*0.35)/3) and overall["n"] == 3   # weights = n posts
    assert math.isclose(overall["shift_low"], (0.15 + 0 + 0.10)/3)
    assert math.isclose(t.loc["Tradition", "stance_gain"], 0.225) and math.isclose(overall["unused_term"], 0.125/3)
    assert 0.15 <= t.loc["Tradition", "gain_lo"] <= t.loc["Tradition", "gain_hi"] <= 0.375
    assert t.loc["Face", "gain_lo"] == t.loc["Face", "gain_hi"] == pytest.approx(0.35)   # one post: no spread
    assert 0.15 <= overall["gain_ci"][0] <= overall["gain"] <= overall["gain_ci"][1] <= 0.375
    table2, overall2 = summarize_gains(pg.reset_index(), n_boot=500, seed=3)
    assert table2.equals(table) and overall2 == overall                      # seeded


def test_metrics_schema_and_placebo_on_made_up_numbers():
    df = _table([
        ("a", "Tradition", "base", "NTA", "YTA", .6, .3, .1),
        ("a", "Tradition", "control", "NTA", "YTA", .5, .3, .2),
        ("a", "Tradition", "adapter", "NTA", "YTA", .3, .5, .2),
        ("a", "Tradition", "placebo", "NTA", "YTA", .5, .4, .1),
    ])
    df["coverage"], df["seconds"], df["truncated"], df["verdict"] = [.9, .8, .7, .6], 2.0, False, None
    m = aita_metrics(df, n_boot=100)
    v = m["values"]["Tradition"]
    assert v["gain"] == pytest.approx(0.4) and v["shift_low"] == pytest.approx(0.2)
    assert v["stance_gain"] == pytest.approx(0.4) and v["unused_term"] == pytest.approx(0.0) and len(v["stance_gain_ci"]) == 2
    assert m["weighted_mean"]["stance_gain"] == pytest.approx(0.4)
    # placebo: Δlow = .1, Δhigh = 0, Δunused = -.1 -> .1 - 0 - .05 = .05
    assert v["placebo_gain"] == pytest.approx(0.05) and v["placebo_gain_ci"] == pytest.approx([0.05, 0.05])
    assert v["coverage"] == pytest.approx({"base": .9, "control": .8, "adapter": .7, "placebo": .6})
    assert m["weighted_mean"]["placebo_gain"] == pytest.approx(0.05) and m["roles"] == ["base", "adapter", "control", "placebo"]
    assert m["profile"]["base"]["Tradition"]["agree_high"] == 1.0 and m["profile"]["adapter"]["all"]["agree_low"] == 1.0
    assert m["seconds_per_post"] == {"base": 2.0, "adapter": 2.0, "control": 2.0, "placebo": 2.0}
    base_only = aita_metrics(df[df.role == "base"], n_boot=100)
    assert base_only["values"]["Tradition"]["gain"] is None and "placebo_gain" not in base_only["values"]["Tradition"]
    assert base_only["profile"]["base"]["all"]["p_NTA"] == pytest.approx(.6)
    json.dumps(m)


def test_cache_of_a_run_of_before_is_reused_under_the_adapter_role(tmp_path, monkeypatch):
    "An AITA run of before called the adapter's role 'conditioned': its cached scores are the adapter's, not scored again."
    from s2b.runs import atomic_to_parquet
    ps = load_paper_json(FIX/"paper_ok.json")
    calls = []
    def fake(lm, post, system=None, max_length=None):
        calls.append(post.id)
        return {**{f"p_{l}": 1/3 for l in LABELS}, **{f"logp_{l}": -1.0 for l in LABELS},
                "coverage": 0.5, "truncated": False, "n_tokens": 10, "seconds": 0.1}
    monkeypatch.setattr(aita, "score_post", fake)
    cache = tmp_path/"posts.parquet"
    score_posts(None, ps, "adapter", cache=cache, config="cfg", progress=False)
    n = len(calls)
    old = pd.read_parquet(cache); atomic_to_parquet(old.assign(role="conditioned"), cache)    # as a run of before wrote it
    df = score_posts(None, ps, "adapter", cache=cache, config="cfg", progress=False)
    assert len(calls) == n and set(df.role) == {"adapter"} and len(df) == len(ps)

def test_score_posts_resumes(tmp_path, monkeypatch):
    ps = load_paper_json(FIX/"paper_ok.json")
    calls = []
    def fake(lm, post, system=None, max_length=None):
        calls.append(post.id)
        if post.id == "Hedonism-0" and len(calls) == 3: raise KeyboardInterrupt      # killed on the third post
        p = renormalize([-1.0, -2.0, -3.0])
        return {**{f"p_{l}": x for l, x in zip(LABELS, p)}, **{f"logp_{l}": -1.0 for l in LABELS},
                "coverage": 0.5, "truncated": False, "n_tokens": 10, "seconds": 0.1}
    monkeypatch.setattr(aita, "score_post", fake)
    cache = tmp_path/"posts.parquet"
    with pytest.raises(KeyboardInterrupt):
        score_posts(None, ps, "base", cache=cache, config="cfg", every=1, progress=False)
    assert list(pd.read_parquet(cache).post_id) == ["u1", "Universalism_concern-1"]   # saved every post
    df = score_posts(None, ps, "base", cache=cache, config="cfg", every=1, progress=False)
    assert calls == ["u1", "Universalism_concern-1", "Hedonism-0", "Hedonism-0"] and len(df) == 3
    assert list(df.post_id) == [p.id for p in ps] and set(df.role) == {"base"}
    score_posts(None, ps, "control", cache=cache, config="cfg2", progress=False)       # another role: kept apart
    assert len(calls) == 7 and len(pd.read_parquet(cache)) == 6
    score_posts(None, ps, "base", cache=cache, config="other", progress=False)         # new config: rescored
    assert len(calls) == 10


# ---------------------------------------------------------------- the embedded model

@pytest.fixture(scope="module")
def lm():
    from s2b.models import load_model
    return load_model("embedded", backend="hf")


@pytest.mark.model
def test_end_to_end_with_random_adapters(lm, tmp_path, monkeypatch, random_adapters):
    random_adapters(tmp_path/"cond", tmp_path/"ctrl")
    out = tmp_path/"run"
    p = aita.AitaParams(adapter=str(tmp_path/"cond"), control=str(tmp_path/"ctrl"), placebo=str(tmp_path/"cond"), limit=2, n_boot=200)
    m = aita.run_aita(p, out, progress=False)
    for f in ("metrics.json", "posts.parquet", "run.json", "gain.png", "p_labels.png", "profile.png"):
        assert (out/f).exists(), f
    disk = json.loads((out/"metrics.json").read_text())
    assert disk["roles"] == ["adapter", "control", "placebo"] and disk["n_posts"] == 2
    v = disk["values"]["Self_direction_thought"]
    assert set(v) >= {"n", "gain", "gain_ci", "shift_low", "shift_low_ci", "coverage", "placebo_gain", "placebo_gain_ci"}
    assert v["n"] == 2 and len(v["gain_ci"]) == 2 and v["gain_ci"][0] <= v["gain"] <= v["gain_ci"][1]
    assert set(v["coverage"]) == {"adapter", "control", "placebo"}
    wm = disk["weighted_mean"]
    assert set(wm) >= {"n", "gain", "gain_ci", "shift_low", "shift_low_ci", "coverage", "placebo_gain", "placebo_gain_ci"}
    assert wm["gain"] == pytest.approx(v["gain"]) and set(disk["seconds_per_post"]) == {"adapter", "control", "placebo"}
    # the placebo is the same adapter here, scored in a second pass: equal up to float32 rounding (0.4% seen once under load)
    assert wm["placebo_gain"] == pytest.approx(wm["gain"], rel=1e-2)
    df = pd.read_parquet(out/"posts.parquet")
    assert set(df.columns) >= {"post_id", "value", "role", "p_NTA", "p_YTA", "p_Neutral", "coverage", "truncated"}
    assert len(df) == 6 and np.allclose(df[["p_NTA", "p_YTA", "p_Neutral"]].sum(axis=1), 1)
    by = df.set_index(["role", "post_id"])
    assert np.allclose(by.loc["adapter", "p_NTA"], by.loc["placebo", "p_NTA"], atol=1e-6)
    assert not np.allclose(by.loc["adapter", "p_NTA"], by.loc["control", "p_NTA"], atol=1e-4)   # adapters switch
    run = json.loads((out/"run.json").read_text())
    assert run["stage"] == "aita" and run["params"]["limit"] == 2 and run["seed"] == 0
    assert run["data"]["posts"]["path"].endswith("scenarios.json") and len(run["data"]["posts"]["sha256"]) == 64
    assert run["model"]["name"] == "embedded" and set(run["adapters"]) == {"adapter", "control", "placebo"}
    # done: a second call returns the metrics without loading a model
    import s2b.evaluation
    monkeypatch.setattr(s2b.evaluation, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reloaded")))
    again = aita.run_aita(p, out)
    assert again == disk


def test_profile_without_values_and_figures(tmp_path):
    import matplotlib; matplotlib.use("Agg")
    ps = load_reddit_csv(FIX/"reddit.csv")
    rows = [{"post_id": p.id, "value": None, "role": "base", "high_standard_stance": None, "low_standard_stance": None,
             "verdict": p.verdict, "p_NTA": .7, "p_YTA": .2, "p_Neutral": .1, "coverage": .5, "truncated": False,
             "seconds": 1.0} for p in ps]
    m = aita_metrics(pd.DataFrame(rows), n_boot=50)
    assert m["values"] == {} and m["weighted_mean"]["gain"] is None and m["n_posts"] == 4
    allp = m["profile"]["base"]["all"]
    assert allp["agree_verdict"] == pytest.approx(0.25) and allp["p_verdict"] == pytest.approx((.7 + .2 + .1 + .1)/4)
    assert allp["p_high"] is None
    save_figure(aita.plot_profile(m), tmp_path/"profile.png")
    save_figure(aita.plot_label_distributions(pd.DataFrame(rows)), tmp_path/"p.png")
    df = _table([(i, v, r, "NTA", "YTA", p, 1 - p - .1, .1) for i, v in (("a", "Face"), ("b", "Hedonism"))
                 for r, p in (("control", .5), ("adapter", .3), ("placebo", .45))])
    df["coverage"], df["seconds"], df["truncated"], df["verdict"] = .5, 1.0, False, None
    m = aita_metrics(df, n_boot=50)
    save_figure(aita.plot_gain(m), tmp_path/"gain.png")
    assert all((tmp_path/f).stat().st_size > 1000 for f in ("profile.png", "p.png", "gain.png"))
    assert list(aita.metrics_table(m).index) == ["Hedonism", "Face", "weighted mean"]

@pytest.mark.model
def test_truncated_posts_are_said_on_the_console(tmp_path, capsys):
    from s2b.aita import AitaParams, run_aita
    m = run_aita(AitaParams(limit=1, max_length=200, n_boot=10), tmp_path, progress=False)
    assert m["n_truncated"] == 1
    assert "1 of 1 posts were cut to fit 200 tokens" in capsys.readouterr().out


def test_mde_in_the_metrics_and_the_words():
    "Each value's MDE comes from its own per-post gains (paired: adapter − control per post); one post gives none."
    from s2b.stats import mde, mean_se
    rows = []
    for i, (pc, pt) in enumerate([(.5, .3), (.5, .4), (.4, .35), (.6, .3)]):     # Tradition: 4 posts, high NTA, low YTA
        rows += [(f"t{i}", "Tradition", "control", "NTA", "YTA", pc, 1 - pc - .1, .1),
                 (f"t{i}", "Tradition", "adapter", "NTA", "YTA", pt, 1 - pt - .1, .1)]
    rows += [("f0", "Face", "control", "NTA", "YTA", .5, .4, .1), ("f0", "Face", "adapter", "NTA", "YTA", .4, .5, .1)]
    df = _table(rows)
    df["coverage"], df["seconds"], df["truncated"], df["verdict"] = .9, 1.0, False, None
    m = aita_metrics(df, n_boot=200)
    gains = post_gains(df).set_index("post_id").gain
    t = m["values"]["Tradition"]
    assert t["mde"] == pytest.approx(mde(mean_se(gains[[f"t{i}" for i in range(4)]])))
    assert t["mde"] == pytest.approx(2.8016 * gains[[f"t{i}" for i in range(4)]].std(ddof=1) / 2, rel=1e-4)
    assert m["values"]["Face"]["mde"] is None and m["weighted_mean"]["mde"] == pytest.approx(mde(mean_se(gains)))
    table = aita.metrics_table(m)
    assert table.loc["Tradition", "mde"] == pytest.approx(t["mde"])
    json.dumps(m)
    assert f"MDE {t['mde']:.3f}" in aita.gain_verdict(t)
    face = aita.gain_verdict(m["values"]["Face"])                   # one post: a CI of zero width, no claim
    assert face.endswith("no spread to measure over 1 post(s): no difference claimed") and "shift in" not in face
    wide = {"gain": 0.01, "gain_ci": [-0.02, 0.05], "n": 12, "mde": 0.041}
    assert aita.gain_verdict(wide).endswith("no shift larger than 0.041 (MDE; the CI includes 0)")


def test_a_null_is_no_transfer_only_where_its_mde_is_below_the_shown_ceiling():
    "The ceiling shown, a null reads 'no transfer larger than the MDE' only if the MDE is below the ceiling's size."
    from s2b.aita import gain_verdict
    e = {"gain": 0.05, "gain_ci": [-0.05, 0.15], "n": 40, "ceiling_gain": 0.167, "ceiling_gain_ci": [0.087, 0.246]}
    assert gain_verdict({**e, "mde": 0.1}).endswith("the ceiling is shown, so this is no transfer larger than the MDE")
    assert gain_verdict({**e, "mde": 0.204}).endswith("inconclusive: the MDE is not below the ceiling's 0.167, so these posts could not see even its shift")
