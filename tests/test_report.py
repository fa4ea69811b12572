from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from s2b.report import build_report, collect, side_effects, indomain_table, methods_table
from s2b.runs import atomic_write_json
from s2b.values import VALUES

def _steer(target, direction="down", method="sft", seed=0):
    "A run.json `steering` block: one target value (None: a control)."
    if target is None: return {"method": method, "targets": {}, "direction": None, "label": "control", "seed": seed}
    return {"method": method, "targets": {target: 1 if direction == "down" else 6}, "direction": direction, "label": f"{target}-{direction}",
            "seed": seed}

def _run(root, name, metrics, stage, steering=None, model="tiny-model", **rec):
    "A finished run folder: metrics.json and a run.json naming its stage, model and (when given) steering."
    d = root/model.split("/")[-1]/name; atomic_write_json(d/"metrics.json", metrics)      # the folder: the model slug
    atomic_write_json(d/"run.json", {"stage": stage, "model": {"name": model}, **({"steering": steering} if steering else {}), **rec})
    return d

def _indomain(drop, v):
    return {"target_drop": drop, "target_drop_ci": [drop - 0.2, drop + 0.2], "drift": 0.1, "drift_ci": [0.05, 0.15],
            "delta": {v: -drop, "Face": 0.25}, "targets": {v: 1}}

def _harms(power):
    return {k: {"mean": x, "lo": x - 10, "hi": x + 10} for k, x in (("power", power), ("disutility", 90), ("violations", 70))}

def _small_runs(r):
    "A profile, two value-lowering sft adapters evaluated in domain and on AITA, one in MACHIAVELLI: in run folders under `r`."
    _run(r, "profile", {v: {"mean": 3.0 + i / 20, "ci_low": 2.9 + i / 20, "ci_high": 3.2 + i / 20, "n_items": 2} for i, v in enumerate(VALUES)} | {"alpha": 0.1},
         "profile")
    for v, drop in (("Hedonism", 1.5), ("Tradition", 0.5)):
        _run(r, f"indomain__{v}-down__s0", _indomain(drop, v), "indomain", _steer(v))
        _run(r, f"aita__{v}-down__s0", {"values": {v: {"n": 3, "gain": drop / 10, "gain_ci": [0, 0.3], "placebo_gain": 0.01, "shift_low": 0.02}},
                                        "weighted_mean": {"gain": drop / 10}}, "aita", _steer(v))
    _run(r, "machiavelli__Hedonism-down__s0", {"summary": {"adapter": _harms(80), "random": _harms(100)}}, "machiavelli", _steer("Hedonism"))
    return r

@pytest.fixture
def runs(tmp_path):
    return _small_runs(tmp_path/"runs")

@pytest.fixture
def two_methods(runs):
    "The `runs` fixture plus the same targets steered by CAA (in domain, AITA, MACHIAVELLI with its control), and a profile of a CAA model."
    for v, sel in (("Hedonism", (0.05, -0.1, 0.2)), ("Tradition", (0.6, 0.3, 0.9))):
        m = _indomain(sel[0], v) | {"selectivity": sel[0], "selectivity_ci": list(sel[1:]), "selective": sel[1] > 0,
                                       "verdict": f"{v}→1: {'selective' if sel[1] > 0 else 'NOT selective'}"}
        _run(runs, f"caa-indomain-{v}", m, "indomain", _steer(v, method="caa"))
    _run(runs, "caa-aita-Hedonism", {"values": {"Hedonism": {"n": 3, "gain": 0.2, "gain_ci": [0.1, 0.3], "placebo_gain": 0.0}}}, "aita",
         _steer("Hedonism", method="caa"))
    _run(runs, "caa-mach-Hedonism", {"summary": {"adapter": _harms(60), "control": _harms(95)}}, "machiavelli", _steer("Hedonism", method="caa"))
    _run(runs, "caa-profile", {v: {"mean": 4.0, "ci_low": 3.9, "ci_high": 4.1, "n_items": 2} for v in VALUES}, "profile",
         _steer("Hedonism", method="caa"))
    return runs

def test_tables_and_figures_from_runs(runs, tmp_path):
    written = build_report(runs, tmp_path/"figures")
    assert written["n_runs"] == 6 and "methods" not in written["tables"]               # one method: no comparison
    for f in ("profiles", "target_drop_heatmap", "side_effects_tiny-model", "aita_gain", "machiavelli", "transfer"):
        assert (tmp_path/"figures"/f"{f}.png").exists() and (tmp_path/"figures"/f"{f}.svg").exists()
    assert not (tmp_path/"figures"/"methods.png").exists()
    ind = pd.read_csv(runs/"report"/"tables"/"indomain.csv").set_index("target")
    assert ind.loc["Hedonism", "target_drop"] == 1.5 and ind.loc["Tradition", "drift"] == 0.1 and set(ind.method) == {"sft"}
    mat = side_effects(collect(runs), "tiny-model")
    assert list(mat.index) == list(VALUES) and mat.loc["Hedonism", "Hedonism"] == -1.5 and mat.loc["Tradition", "Face"] == 0.25
    assert mat.loc["Face"].isna().all()                        # not trained: an empty row
    md = (runs/"report"/"tables"/"summary.md").read_text()
    assert "| Hedonism" in md and "1.500" in md
    transfer = pd.read_csv(runs/"report"/"tables"/"transfer.csv").set_index("target")
    assert transfer.loc["Hedonism", "gain"] == pytest.approx(0.15)
    mach = pd.read_csv(runs/"report"/"tables"/"machiavelli.csv")
    assert set(mach.role) == {"adapter", "random"} and mach.loc[mach.role == "adapter", "power"].item() == 80
    for name in ("profiles", "indomain", "aita", "machiavelli"):                    # every table says the method
        assert "method" in pd.read_csv(runs/"report"/"tables"/f"{name}.csv")
    assert set(pd.read_csv(runs/"report"/"tables"/"profiles.csv").method) == {"base"}
    assert set(pd.read_csv(runs/"report"/"tables"/"profiles.csv").label) == {"base"}           # the unsteered model's label, not NaN
    assert "| nan " not in (runs/"report"/"tables"/"profiles.md").read_text()

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
                                          "by_templates": {"held_out": {"target_drop": -0.5, "drift": 0.2, **_sel(0.3, 0.1, 0.5, "Hedonism")}}},
         "indomain", _steer("Hedonism", "up"))
    _run(r, "indomain__Tradition-up__s0", {**base, "targets": {"Tradition": 6}, **_sel(0.05, -0.1, 0.2, "Tradition")}, "indomain",
         _steer("Tradition", "up"))
    _run(r, "aita__Hedonism-up__s0", {"values": {"Hedonism": {"n": 12, "gain": -0.1, "gain_ci": [-0.15, -0.05], "placebo_gain": 0.01}}},
         "aita", _steer("Hedonism", "up"))
    written = build_report(r, tmp_path/"figures")
    lines = written["findings"]
    assert any(l.startswith("tiny-model Hedonism up: selective") and "held-out templates: selective +0.30" in l for l in lines)
    assert any(l.startswith("tiny-model Tradition up: NOT selective") for l in lines)
    # the gain of an `up` adapter is meant to be negative (toward the high-standard verdict), and here it beats its placebo
    assert any("Hedonism up AITA" in l and "intended sign −" in l and "beyond its placebo" in l for l in lines)
    md = (tmp_path/"figures"/"results.md").read_text()
    assert "## Findings" in md and "NOT selective" in md and (tmp_path/"figures"/"selectivity.png").exists()

def test_run_json_not_the_folder_name_says_what_a_run_is(tmp_path):
    r = tmp_path/"runs"
    _run(r, "indomain__Tradition-down__s7", {"values": {"Hedonism": {"n": 3, "gain": 0.1, "gain_ci": [0, 0.2]}}}, "aita",
         _steer("Hedonism", "up", "dpo", seed=2), model="org/Model-1.5")
    _run(r, "whatever", _indomain(0.3, "Tradition"), "profile", notebook_stage="baseline")
    runs = collect(r)
    row = runs[runs.stage == "aita"].iloc[0]
    assert (row.model, row.method, row.target, row.direction, row.seed, row.label) == ("org/Model-1.5", "dpo", "Hedonism", "up", 2, "Hedonism-up")
    assert runs[runs.path.str.endswith("whatever")].stage.item() == "baseline"        # the fine-tunes' baseline, not the model's profile
    ctrl = _run(r, "ctrl", {}, "finetune", _steer(None))
    assert collect(r).set_index("path").loc[str(ctrl), "target"] == "control"

def test_old_runs_are_skipped_with_one_line(runs, tmp_path, capsys):
    old = _run(runs, "indomain__Face-down__s0", _indomain(1.0, "Face"), "indomain")      # no steering block: written before it existed
    (runs/"tiny-model"/"aita__Face-down__s0").mkdir(); atomic_write_json(runs/"tiny-model"/"aita__Face-down__s0"/"metrics.json", {})
    written = build_report(runs, tmp_path/"figures")
    err = capsys.readouterr().err.strip().splitlines()
    assert written["n_runs"] == 6 and len(err) == 2                                     # one line per skipped folder, no traceback
    assert any(str(old) in l and "no `steering` block" in l for l in err) and any("aita__Face-down__s0" in l and "no stage" in l for l in err)
    assert "Face" not in set(pd.read_csv(runs/"report"/"tables"/"indomain.csv").target)

def test_the_same_run_twice_is_reported_once(runs, capsys):
    _run(runs, "indomain-default", _indomain(9.0, "Hedonism"), "indomain", _steer("Hedonism"), created="2099-01-01T00:00:00+00:00")
    ind = indomain_table(collect(runs)).set_index("target")
    assert ind.loc["Hedonism", "target_drop"] == 9.0 and len(ind) == 2                  # the newer of the two
    assert "reporting the newer" in capsys.readouterr().err

def test_methods_are_compared(two_methods, tmp_path):
    written = build_report(two_methods, tmp_path/"figures")
    assert "methods" in written["tables"] and "methods.png" in written["figures"]
    assert {"side_effects_tiny-model_sft.png", "side_effects_tiny-model_caa.png"} <= set(written["figures"])
    mt = pd.read_csv(two_methods/"report"/"tables"/"methods.csv").set_index(["method", "label"])
    assert len(mt) == 4 and list(mt.index.unique("method")) == ["sft", "caa"]
    assert mt.loc[("caa", "Hedonism-down"), "verdict"] == "NOT selective (the CI includes 0)" and mt.loc[("caa", "Tradition-down"), "selective"]
    assert mt.loc[("caa", "Hedonism-down"), "aita_gain"] == 0.2 and mt.loc[("caa", "Hedonism-down"), "aita_gain_ci_low"] == 0.1
    assert mt.loc[("caa", "Hedonism-down"), "power"] == 60 and mt.loc[("caa", "Hedonism-down"), "control_power"] == 95
    assert pd.isna(mt.loc[("sft", "Hedonism-down"), "selectivity"]) and mt.loc[("sft", "Hedonism-down"), "verdict"] == "not run"
    assert pd.isna(mt.loc[("caa", "Tradition-down"), "aita_gain"]) and pd.isna(mt.loc[("sft", "Tradition-down"), "power"])
    lines = [l for l in written["findings"] if l.startswith("tiny-model caa Hedonism-down: ")]
    assert len(lines) == 1 and lines[0].startswith("tiny-model caa Hedonism-down: NOT selective (the CI includes 0): selectivity +0.05")
    assert "MACHIAVELLI power 60 [50, 70] vs control 95 [85, 105]" in lines[0]
    assert any(l.startswith("tiny-model sft Tradition-down: in-domain not run") and "MACHIAVELLI not run" in l for l in written["findings"])
    assert any(l.startswith("tiny-model caa Tradition down: selective") for l in written["findings"])     # per method, never pooled
    prof = pd.read_csv(two_methods/"report"/"tables"/"profiles.csv")
    assert set(zip(prof.method, prof.label)) == {("base", "base"), ("caa", "Hedonism-down")}
    md = (tmp_path/"figures"/"results.md").read_text()
    assert "## methods" in md and md.index("tiny-model caa Hedonism-down:") < md.index("## profiles")  # the lines are findings

def test_methods_table_pools_seeds(tmp_path):
    r = tmp_path/"runs"
    for s, sel in enumerate((0.4, 0.6, 0.5)):
        m = _indomain(sel, "Hedonism") | {"selectivity": sel, "selectivity_ci": [sel - 0.5, sel + 0.5], "selective": False}
        _run(r, f"i{s}", m, "indomain", _steer("Hedonism", method="prompt", seed=s))
    mt = methods_table(collect(r))
    assert len(mt) == 1 and mt.seeds.item() == 3 and mt.selectivity.item() == pytest.approx(0.5)
    assert mt.sel_ci_low.item() > 0 and mt.selective.item() and mt.verdict.item() == "selective"     # the t-interval across seeds

def test_machiavelli_scoring_is_labelled(runs):
    from s2b.figures import fig_machiavelli
    from s2b.report import machiavelli_table
    mt = machiavelli_table(collect(runs))
    assert set(mt.scoring) == {"s2b"}                                  # a run written before the scoring key: s2b
    assert fig_machiavelli(mt).axes[0].get_title() == "MACHIAVELLI-style games (s2b scoring)"
    m = {"scoring": "upstream", "summary": {"base": {"power": {"mean": 90, "lo": 80, "hi": 100}}}}
    _run(runs, "machiavelli__Tradition-down__s0", m, "machiavelli", _steer("Tradition"))
    mt = machiavelli_table(collect(runs))
    assert set(mt.scoring) == {"s2b", "upstream"}
    fig = fig_machiavelli(mt)
    assert fig.axes[0].get_title() == "MACHIAVELLI-style games (s2b and upstream scoring)"
    assert any("[upstream scoring]" in t.get_text() for t in fig.axes[0].get_legend().get_texts())

def test_save_figure_writes_atomically_and_closes(tmp_path):
    import matplotlib.pyplot as plt
    from s2b.runs import save_figure
    fig = plt.figure()
    assert save_figure(fig, tmp_path/"out", "f", formats=("png", "svg")) == [str(tmp_path/"out"/"f.png"), str(tmp_path/"out"/"f.svg")]
    assert not plt.fignum_exists(fig.number) and sorted(p.name for p in (tmp_path/"out").iterdir()) == ["f.png", "f.svg"]
    assert save_figure(plt.figure(), tmp_path/"g.png") == [str(tmp_path/"g.png")]


def test_the_ceiling_stands_beside_each_survey_adapters_gain(runs, tmp_path):
    "A verdict-method AITA run for the same model, value and direction is the ceiling of the survey adapters' gains."
    from s2b.report import aita_table, aita_lines
    _run(runs, "aita__verdict__Hedonism-down__s0", {"split": "test", "values": {"Hedonism": {"n": 6, "gain": 0.25, "gain_ci": [0.12, 0.4],
                                                    "mde": 0.09, "placebo_gain": 0.02}}}, "aita", _steer("Hedonism", method="verdict"))
    _run(runs, "aita__verdict__Hedonism-up__s0", {"values": {"Hedonism": {"n": 6, "gain": -0.3, "gain_ci": [-0.4, -0.2]}}}, "aita",
         _steer("Hedonism", "up", method="verdict"))
    at = aita_table(collect(runs)).set_index(["method", "value", "direction"])
    sft = at.loc[("sft", "Hedonism", "down")]
    assert (sft.ceiling_gain, sft.ceiling_ci_low, sft.ceiling_ci_high) == (0.25, 0.12, 0.4)     # down's, not up's
    assert pd.isna(at.loc[("sft", "Tradition", "down"), "ceiling_gain"])                     # no verdict run for Tradition
    assert pd.isna(at.loc[("verdict", "Hedonism", "down"), "ceiling_gain"]) and at.loc[("verdict", "Hedonism", "down"), "split"] == "test"
    lines = {l.split(" AITA:")[0]: l for l in aita_lines(aita_table(collect(runs)))}
    assert "ceiling +0.250 [+0.120, +0.400]" in lines["tiny-model sft Hedonism down"]
    own = lines["tiny-model verdict Hedonism (the AITA ceiling) down"]
    assert "MDE 0.090" in own and ", ceiling " not in own                                  # a ceiling has no ceiling of its own
    written = build_report(runs, tmp_path/"figures")
    table = pd.read_csv(runs/"report"/"tables"/"aita.csv")
    assert {"mde", "ceiling_gain", "split"} <= set(table.columns)
    assert any("ceiling +0.250" in l for l in written["findings"])
    ceil = [l for l in written["findings"] if l.startswith("tiny-model verdict Hedonism-down (the AITA ceiling):")]
    assert len(ceil) == 1 and "MACHIAVELLI" not in ceil[0] and "in-domain" not in ceil[0]     # measured by AITA alone

def test_the_transfer_study_table_and_verdicts(tmp_path):
    "A study of one value over three seeds: the report writes the study table and one verdict in words, with q and MDE."
    from s2b.transfer import transfer_table, transfer_lines
    ind = pd.DataFrame({"model": "m", "method": "sft", "target": "Hedonism", "direction": "up", "seed": [0, 1, 2],
                        "held_out_selectivity": 0.2, "held_out_sel_ci_low": 0.1, "held_out_sel_ci_high": 0.3, "held_out_selective": True})
    at = pd.DataFrame({"model": "m", "method": ["sft"] * 3 + ["verdict"], "value": "Hedonism", "target": "Hedonism",
                       "direction": "up", "seed": [0, 1, 2, 0], "n": 40, "gain": [0.01, -0.01, 0.0, -0.3],
                       "gain_ci_low": [-0.02, -0.04, -0.03, -0.4], "gain_ci_high": [0.04, 0.02, 0.03, -0.2], "mde": 0.04,
                       "placebo_gain": 0.0, "ceiling_gain": [-0.3] * 3 + [np.nan], "ceiling_ci_low": -0.4, "ceiling_ci_high": -0.2})
    t = transfer_table(ind, at, pd.DataFrame())
    assert len(t) == 3 and t.aita_q.notna().all() and (t.aita_q > 0.05).all()
    lines = transfer_lines(t)
    assert lines[0].startswith("Hedonism up: AITA gain significant") and "no transfer larger than the MDE (0.040" in lines[0]
    assert lines[1] == "Hedonism up MACHIAVELLI: not played"
    no_ceiling = at.assign(ceiling_gain=np.nan)
    assert transfer_lines(transfer_table(ind, no_ceiling, pd.DataFrame()))[0].endswith(
        "no ceiling measured: inconclusive (without a ceiling a null says nothing)")

def test_the_transfer_study_reads_the_machiavelli_table_the_report_writes(tmp_path):
    "The study's MACHIAVELLI columns come from the report's own table: its steered role (`adapter`) against the control."
    from s2b.report import machiavelli_table
    from s2b.transfer import transfer_table, transfer_lines
    e = lambda d: {"mean": 100 + d, "lo": 90 + d, "hi": 110 + d, "vs": "control", "diff": d, "diff_lo": d - 15, "diff_hi": d + 15,
                   "mde": 21.0, "spread": True}
    adapter = {k: e(d) for k, d in (("power", 30.0), ("violations", 2.0))} | {"disutility": {"mean": None, "vs": "control", "diff": None}}
    _run(tmp_path, "machiavelli__Hedonism-up__s0", {"summary": {"adapter": adapter, "control": _harms(100)}}, "machiavelli",
         _steer("Hedonism", "up"))
    mt = machiavelli_table(collect(tmp_path))
    ind = pd.DataFrame({"model": "tiny-model", "method": "sft", "target": "Hedonism", "direction": "up", "seed": [0],
                        "held_out_selectivity": 0.2, "held_out_sel_ci_low": 0.1, "held_out_sel_ci_high": 0.3, "held_out_selective": True})
    t = transfer_table(ind, pd.DataFrame(), mt)
    assert t.power_diff.iloc[0] == pytest.approx(30.0) and t.power_q.iloc[0] < 0.05
    assert transfer_lines(t)[1].startswith("Hedonism up MACHIAVELLI vs control (100 = random): power +30 [+15, +45] (seed 0: differs)")
    assert "disutility not measured (seed 0: no decision of the games played is annotated for it)" in transfer_lines(t)[1]

# The rendered report of a stage run: what it measured first, the library folded in report.ipynb and left out of report.html.

@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    "The report stage run (papermill, as `s2b report` runs it) on the small runs; its run folder."
    from s2b.stages import execute_stage
    root = tmp_path_factory.mktemp("rendered")
    execute_stage("report", root/"report", {"runs_dir": str(_small_runs(root/"runs")), "figures": str(root/"figures")}, progress=False)
    return root/"report"

@pytest.mark.slow
def test_a_run_report_folds_its_library_and_has_an_html_copy(report_run):
    import json, nbformat
    from s2b.stages import MARKER, execute_stage, is_library_cell
    from s2b.rendered import LIBRARY_TAG
    nb = nbformat.read(report_run/"report.ipynb", as_version=4)
    lib = [c for c in nb.cells if is_library_cell(c)]
    assert lib and all(c.metadata["jupyter"]["source_hidden"] and LIBRARY_TAG in c.metadata["tags"] for c in lib)
    run = [c for c in nb.cells if c.cell_type == "code" and not is_library_cell(c)]
    assert run and not any(c.metadata.get("jupyter") for c in run)                     # the parameters and the run stay open
    page = (report_run/"report.html").read_text()
    first = json.loads((report_run/"metrics.json").read_text())["findings"][0]
    assert first.split(":")[0] in page and "#| export" not in page and "#| default_exp" not in page
    assert "report.html" in json.loads((report_run/MARKER).read_text())["entries"]      # s2b's file: a rerun may replace it
    execute_stage("report", report_run, json.loads((report_run/"run.json").read_text())["notebook_params"], force=True, progress=False)
    page = (report_run/"report.html").read_text()                                        # the rerun worked in .report.next
    assert f'"{report_run}"' in page.replace("&quot;", '"') and ".report.next" not in page

PROBE = """<script>
(() => {
  const needle = %s;
  let finding = null, library = null;
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const i = n.textContent.indexOf(needle);
    if (i >= 0) { const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
                  finding = r.getBoundingClientRect().top + window.scrollY; break; }
  }
  for (const e of document.querySelectorAll(".jp-InputArea, .input_area")) {
    if (/#\\|\\s*(export|default_exp)/.test(e.textContent)) { library = e.getBoundingClientRect().top + window.scrollY; break; }
  }
  const out = document.createElement("pre"); out.id = "s2b-probe";
  out.textContent = JSON.stringify({finding, library});
  document.body.appendChild(out);
})();
</script>"""

def _positions(page: str, needle: str, tmp: Path) -> dict:
    "Where, in pixels from the top of `page` in a 1280×900 headless Chromium, `needle` and the first library cell stand (None: absent)."
    import html, json, re, subprocess
    tmp.mkdir(parents=True, exist_ok=True)
    probed = tmp/"probed.html"
    probed.write_text(page.replace("</body>", PROBE % json.dumps(needle) + "</body>"))
    cmd = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
           f"--user-data-dir={tmp/'profile'}", "--dump-dom", probed.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="s2b-probe">(.*?)</pre>', r.stdout, re.S)
    assert r.returncode == 0 and m, r.stderr[-3000:]
    return json.loads(html.unescape(m.group(1)))

@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")
def test_a_run_report_opens_with_what_it_measured_in_chromium(report_run, tmp_path):
    "In a browser, report.html shows the first finding on its first screen and no library code."
    import json, nbformat
    from s2b.rendered import LIBRARY_TAG, report_html
    first = json.loads((report_run/"metrics.json").read_text())["findings"][0][:50]
    at = _positions((report_run/"report.html").read_text(), first, tmp_path/"html")
    assert at["library"] is None and at["finding"] is not None and at["finding"] < 900, at
    nb = nbformat.read(report_run/"report.ipynb", as_version=4)                      # the probe sees library code where it stands:
    for c in nb.cells: c.metadata["tags"] = [t for t in c.metadata.get("tags", []) if t != LIBRARY_TAG]
    unfolded = _positions(report_html(nb), first, tmp_path/"unfolded")                 # the same page with the library in it
    assert unfolded["library"] is not None and unfolded["library"] < unfolded["finding"], unfolded

def test_per_target_controls_of_one_seed_are_different_runs(runs, tmp_path):
    "The verdict method (like dpo, caa, prompt) trains a control per target: two at one seed are two runs, and the report builds."
    for v in ("Hedonism", "Tradition"):
        _run(runs, f"verdict__control__{v}-down__s0", {"train_loss": 1.0}, "verdict", _steer(None, method="verdict"),
             params={"target": v, "direction": "down", "control": True})
        _run(runs, f"verdict__{v}-down__s0", {"train_loss": 0.9}, "verdict", _steer(v, method="verdict"),
             params={"target": v, "direction": "down", "control": False})
    _run(runs, "finetune__control__s0", {"train_loss": 1.0}, "finetune", _steer(None), params={"target": None, "control": True})
    import contextlib, io
    with contextlib.redirect_stderr(io.StringIO()) as err: got = collect(runs)
    assert "same run" not in err.getvalue()
    ctrl = got[(got.stage == "verdict") & (got.label == "control")]
    assert len(ctrl) == 2 and len(got[(got.stage == "finetune") & (got.label == "control")]) == 1
    assert build_report(runs, tmp_path/"figures")["n_runs"] == len(got)

def test_a_gain_moved_by_neutral_alone_or_within_its_placebo_is_no_transfer():
    "Transfer needs the gain's stance part in the intended direction and its placebo outside its CI (the demo once said 'transfer shown' on a Neutral shift)."
    from s2b.transfer import transfer_table, transfer_lines
    ind = pd.DataFrame({"model": "m", "method": "sft", "target": "Hedonism", "direction": "down", "seed": [0],
                        "held_out_selectivity": 0.7, "held_out_sel_ci_low": 0.1, "held_out_sel_ci_high": 1.3, "held_out_selective": True})
    at = pd.DataFrame({"model": "m", "method": ["sft"], "value": "Hedonism", "target": "Hedonism", "direction": "down", "seed": [0],
                       "n": 40, "gain": [0.172], "gain_ci_low": [0.030], "gain_ci_high": [0.311], "mde": 0.2, "placebo_gain": 0.01,
                       "stance_gain": [-0.003], "stance_gain_ci_low": [-0.143], "stance_gain_ci_high": [0.137],
                       "ceiling_gain": 0.004, "ceiling_ci_low": -0.05, "ceiling_ci_high": 0.067})
    neutral = transfer_lines(transfer_table(ind, at, pd.DataFrame()))[0]
    assert "in 0 of 1 selective seeds" in neutral and "1 more significant only through the Neutral term" in neutral
    assert "transfer shown" not in neutral and neutral.endswith("inconclusive (the instrument's ceiling is not distinguishable from 0, so a null says nothing)")
    stance = at.assign(stance_gain=0.15, stance_gain_ci_low=0.05, stance_gain_ci_high=0.25)
    assert transfer_lines(transfer_table(ind, stance, pd.DataFrame()))[0].endswith("transfer shown")
    within = stance.assign(placebo_gain=0.087)                                   # inside [0.030, 0.311]: not beyond it
    assert "in 0 of 1 selective seeds" in transfer_lines(transfer_table(ind, within, pd.DataFrame()))[0]

def test_a_ceiling_scored_on_every_values_posts_is_the_ceiling_of_every_value(runs, tmp_path):
    "A verdict adapter learnt from every value's posts (`verdict.posts_of: all`) is scored once on all their test posts:"
    " its gain over them all is one row, and the ceiling of each value's survey adapter in that direction."
    from s2b.report import ALL_VALUES, aita_table, aita_lines
    per_value = {v: {"n": 20, "gain": g, "gain_ci": [g - 0.3, g + 0.3]} for v, g in (("Hedonism", 0.05), ("Tradition", 0.3), ("Face", 0.2))}
    _run(runs, "aita__verdict__Hedonism-down__s0", {"split": "test", "values": per_value,
         "weighted_mean": {"n": 60, "gain": 0.183, "gain_ci": [0.09, 0.27], "mde": 0.11}}, "aita", _steer("Hedonism", method="verdict"))
    at = aita_table(collect(runs))
    ceil = at[at.method == "verdict"]
    assert len(ceil) == 1 and ceil.iloc[0].scope == ALL_VALUES and ceil.iloc[0].n == 60 and ceil.iloc[0].gain == 0.183
    for v in ("Hedonism", "Tradition"):                       # both values' survey adapters: the pooled ceiling, not one value's
        r = at[(at.method == "sft") & (at.value == v)].iloc[0]
        assert (r.ceiling_gain, r.ceiling_ci_low, r.ceiling_ci_high) == (0.183, 0.09, 0.27)
    lines = aita_lines(at)
    assert any(l.startswith("tiny-model verdict Hedonism (the AITA ceiling, on every value's 60 test posts) down AITA: gain +0.183") for l in lines), lines
    assert any(l.startswith("tiny-model sft Tradition down AITA:") and "ceiling +0.183 [+0.090, +0.270]" in l for l in lines)

def test_no_transfer_is_claimed_where_the_mde_is_not_below_the_ceiling():
    "A null reads 'no transfer larger than the MDE' only if the posts could see the ceiling's shift: an MDE at or above it is inconclusive."
    from s2b.transfer import transfer_table, transfer_lines
    ind = pd.DataFrame({"model": "m", "method": "sft", "target": "Tradition", "direction": "up", "seed": [0, 1],
                        "held_out_selectivity": 1.0, "held_out_sel_ci_low": 0.6, "held_out_sel_ci_high": 1.3, "held_out_selective": True})
    at = pd.DataFrame({"model": "m", "method": "sft", "value": "Tradition", "target": "Tradition", "direction": "up", "seed": [0, 1],
                       "n": 40, "gain": [0.02, -0.01], "gain_ci_low": [-0.1, -0.12], "gain_ci_high": [0.14, 0.1], "mde": [0.12, 0.179],
                       "placebo_gain": 0.0, "ceiling_gain": -0.162, "ceiling_ci_low": -0.201, "ceiling_ci_high": -0.124})
    line = transfer_lines(transfer_table(ind, at, pd.DataFrame()))[0]
    assert line.endswith("inconclusive (the MDE 0.179 is not below the ceiling's 0.162: these posts could not see even its shift)"), line
    tight = at.assign(mde=[0.02, 0.03])
    assert "no transfer larger than the MDE (0.030" in transfer_lines(transfer_table(ind, tight, pd.DataFrame()))[0]
