"Tests for s2b.lmeval (the bundled lm-eval task, task errors, scoring on the embedded model) and s2b.capability (Δ and the stage)."
import ast, json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lm_eval")
from s2b import capability as C, lmeval as L
from s2b.stages import STAGES, _KEEP, stage_copy, stage_notebook
from s2b.runs import repo_root

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the bundled task (no model)

def test_bundled_questions():
    qs = L.load_questions()
    assert len(qs) >= 100 and qs.id.is_unique
    assert set(qs.domain) == {"science", "geography", "arithmetic_logic", "everyday", "language"}
    assert (qs.choices.map(len) == 4).all() and sorted(qs.answer.value_counts().tolist()) == [len(qs)//4]*4
    readme = (ROOT/"data"/"capability"/"README.md").read_text()
    assert "CC-BY-4.0" in readme and "s2b_general" in readme
    assert L.bundled_tasks() == {"s2b_general": ROOT/"data"/"capability"/"s2b_general.yaml"}


def test_bad_question_file(tmp_path):
    f = tmp_path/"q.jsonl"
    f.write_text(json.dumps({"id": "x", "domain": "d", "question": "q?", "choices": ["a", "a", "b", "c"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="line 1.*4 different options"): L.load_questions(f)


def test_parse_tasks():
    assert L.parse_tasks("bundled") == ["s2b_general"]
    assert L.parse_tasks("default,arc_easy, s2b_general") == ["mmlu", "arc_easy", "hellaswag", "s2b_general"]
    with pytest.raises(L.TaskError, match="no task"): L.parse_tasks(" , ")


def test_bundled_task_loads_offline():
    ts = L.load_tasks("s2b_general")
    t = ts["s2b_general"]["s2b_general"]
    docs = t.test_docs()
    assert len(docs) == len(L.load_questions()) and t.get_config("output_type") == "multiple_choice"
    assert t.doc_to_text(docs[0]).startswith("Question: ") and t.doc_to_text(docs[0]).endswith("\nAnswer:")
    assert t.doc_to_choice(docs[0])[t.doc_to_target(docs[0])] == "carbon dioxide"


# ---------------------------------------------------------------- errors that name the task

def test_missing_task_name_is_a_clear_error():
    with pytest.raises(L.TaskError) as e: L.check_tasks("s2b_general,no_such_task_xyz,arc_eazy")
    msg = str(e.value)
    assert "'no_such_task_xyz'" in msg and "'arc_eazy' (did you mean arc_easy" in msg and "Traceback" not in msg
    assert L.check_tasks("arc_easy,s2b_general") == ["arc_easy", "s2b_general"]      # known names load no data


def test_missing_task_name_from_the_cli(tmp_path, capsys):
    from s2b.cli import main
    rc = main(["evaluate", "capability", "--adapter", str(tmp_path), "--control", str(tmp_path), "--tasks", "no_such_task_xyz",
               "--out", str(tmp_path/"run")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("s2b: error: unknown lm-eval task 'no_such_task_xyz'") and "Traceback" not in err
    assert not (tmp_path/"run").exists()                                   # no notebook ran


@pytest.fixture
def offline(monkeypatch):
    "The Hugging Face hub unreachable, as on these machines (and fast: no retries)."
    import datasets.config, huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def test_unreachable_hub_task_is_a_clear_error(offline):
    with pytest.raises(L.TaskError) as e: L.load_tasks("s2b_general,arc_easy")
    msg = str(e.value)
    assert msg.startswith("lm-eval task 'arc_easy' could not be loaded") and "allenai/ai2_arc" in msg
    assert "Hugging Face hub" in msg and "s2b_general" in msg and "Traceback" not in msg


# ---------------------------------------------------------------- metrics (no model)

def test_paired_delta_and_drop_flag():
    rows = [("t", i, r, float(ok)) for i in range(50) for r, ok in (("control", True), ("adapter", i >= 10))]
    df = pd.DataFrame(rows, columns=["task", "doc_id", "role", "acc"]).assign(acc_norm=np.nan)
    m = C.capability_metrics(df)
    e = m["tasks"]["t"]["acc"]
    assert e["delta"] == pytest.approx(-0.2) and e["delta_ci"][1] < 0 and e["drop"] and m["drops"] == ["t"]
    assert m["metrics"] == ["acc"] and m["n_items"] == {"adapter": 50, "control": 50}
    same = C.capability_metrics(df.assign(acc=1.0))["tasks"]["t"]["acc"]
    assert same["delta"] == 0.0 and same["delta_ci"] == [0.0, 0.0] and not same["drop"]


def test_paired_delta_draws_through_s2b_stats():
    "Δ's CI comes from s2b.stats and draws what the stage drew before it used s2b.stats: one (n_boot, n) block of indices."
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    d = a - b.astype(float)
    reps = d[np.random.default_rng([0, 9]).integers(0, 40, size=(300, 40))].mean(1)
    delta, ci = C.paired_delta(a, b, 300, [0, 9])
    assert delta == d.mean() and np.allclose(ci, np.quantile(reps, [0.025, 0.975]), rtol=0, atol=1e-12)

def test_stage_notebook_shape():
    "One parameters cell after the library; no parameter shadows a definition of the notebook (as tests/test_runs.py checks)."
    assert STAGES["capability"].notebook == "06g_capability.ipynb" and STAGES["capability"].run.__name__ == "run_capability"
    nb = stage_notebook("capability")
    full, run = stage_copy(nb, examples=True), stage_copy(nb)
    lib = lambda c: c.cell_type == "code" and bool(_KEEP.search(c.source))
    last = max(i for i, c in enumerate(full.cells) if lib(c))
    params = [i for i, c in enumerate(full.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] > last and len(run.cells) < len(full.cells)
    names = lambda src: {t.id for n in ast.parse(src).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined = set()
    for c in filter(lib, run.cells):
        tree = ast.parse(c.source)
        defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | names(c.source)
    assert not names(full.cells[params[0]].source) & defined


# ---------------------------------------------------------------- on the embedded model

@pytest.mark.model
def test_bundled_task_scores_on_the_embedded_model(lm):
    from s2b.scoring import continuation_logprobs
    tasks = L.load_tasks("bundled")
    df, r = L.evaluate_role(L.hflm(lm), tasks, "base", limit=10)
    assert len(df) == 10 and list(df.doc_id) == list(range(10)) and (df.n_choices == 4).all()
    assert (df.acc == (df.pred == df.target)).all() and df.acc.mean() > 0.25          # better than chance on easy questions
    assert r["versions"]["s2b_general"] == 1.0 and r["lm_eval_version"] == L.lm_eval_version()
    t = tasks["s2b_general"]["s2b_general"]; doc = t.test_docs()[3]
    ours = continuation_logprobs(lm, t.doc_to_text(doc), [" " + c for c in t.doc_to_choice(doc)])
    assert np.allclose(ours, df.loglik[3], atol=1e-3)


def _zero(adapter_dir):
    from safetensors.torch import load_file, save_file
    f = Path(adapter_dir)/"adapter_model.safetensors"
    save_file({k: v.zero_() for k, v in load_file(f).items()}, f)


@pytest.mark.model
def test_zeroed_adapter_gives_zero_delta_exactly(lm, random_adapters, tmp_path):
    cond, ctrl = random_adapters(tmp_path/"zero_a", tmp_path/"zero_b")
    _zero(cond); _zero(ctrl)
    m = C.run_capability(C.CapabilityParams(adapter=cond, control=ctrl, tasks="s2b_general", limit=12, base=True, n_boot=200), tmp_path/"run")
    e = m["tasks"]["s2b_general"]
    for k in m["metrics"]:
        assert e[k]["delta"] == 0.0 and e[k]["delta_ci"] == [0.0, 0.0] and not e[k]["drop"]
        assert e[k]["adapter"] == e[k]["control"] == e[k]["base"]
    s = pd.read_parquet(tmp_path/"run"/"samples.parquet")
    ll = {r: np.stack(s[s.role == r].sort_values("doc_id").loglik.to_list()) for r in ("base", "adapter", "control")}
    assert (ll["adapter"] == ll["base"]).all() and (ll["control"] == ll["base"]).all()   # bit for bit: the adapters add 0
    assert m["drops"] == [] and m["n_items"] == {"base": 12, "adapter": 12, "control": 12}


@pytest.mark.model
def test_stage_end_to_end_from_the_cli(lm, random_adapters, tmp_path, capsys):
    "`s2b evaluate capability` with two random adapters: the run directory and its numbers."
    from s2b.cli import main
    cond, ctrl = random_adapters(tmp_path/"cond", tmp_path/"ctrl")
    out = tmp_path/"run"
    assert main(["evaluate", "capability", "--adapter", cond, "--control", ctrl, "--tasks", "bundled", "--limit", "12",
                 "--out", str(out)]) == 0
    for f in ("report.ipynb", "metrics.json", "run.json", "samples.parquet", "delta.png"): assert (out/f).exists(), f
    m, rec = json.loads((out/"metrics.json").read_text()), json.loads((out/"run.json").read_text())
    assert m["roles"] == ["adapter", "control"] and m["task_versions"] == {"s2b_general": 1.0}
    assert rec["lm_eval"]["version"] == L.lm_eval_version() and rec["lm_eval"]["tasks"]["s2b_general"]["version"] == 1.0
    assert rec["data"]["s2b_general"]["sha256"] and rec["adapters"]["adapter"] == str(Path(cond).resolve())
    s = pd.read_parquet(out/"samples.parquet")
    w = s.pivot_table(index="doc_id", columns="role", values="acc")
    e = m["tasks"]["s2b_general"]["acc"]
    assert e["delta"] == pytest.approx((w.adapter - w.control).mean()) and e["delta_ci"][0] <= e["delta"] <= e["delta_ci"][1]
    assert e["drop"] == (e["delta_ci"][1] < 0)
    capsys.readouterr()
    assert main(["evaluate", "capability", "--adapter", cond, "--control", ctrl, "--tasks", "bundled", "--limit", "12",
                 "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out                    # the same parameters: skipped


@pytest.mark.parametrize("role", ["adapter", "conditioned"])          # 'conditioned': the adapter's role in runs of before
def test_report_table_and_grid_stage(tmp_path, role):
    "The report collects capability runs into a table (an old run's too); the grid plans the stage only when a recipe lists it."
    from s2b.report import build_report
    from s2b.runs import atomic_write_json
    import s2b.grid as G
    d = tmp_path/"runs"/"m"/"capability__Hedonism-down__s0"
    atomic_write_json(d/"metrics.json", {"metrics": ["acc"], "tasks": {"s2b_general": {"kind": "task", "n": 40, "acc": {
        role: 0.8, "control": 0.9, "delta": -0.1, "delta_ci": [-0.2, -0.025], "drop": True}}}})
    atomic_write_json(d/"run.json", {"stage": "capability", "model": {"name": "m"}, "steering": {
        "method": "sft", "targets": {"Hedonism": 1}, "direction": "down", "label": "Hedonism-down", "seed": 0}})
    written = build_report(tmp_path/"runs", tmp_path/"figures")
    assert written["tables"][-1] == "capability"
    t = pd.read_csv(tmp_path/"runs"/"report"/"tables"/"capability.csv")
    assert t.loc[0, "target"] == "Hedonism" and t.loc[0, "delta"] == -0.1 and bool(t.loc[0, "drop"])
    assert t.loc[0, "adapter"] == 0.8 and t.loc[0, "control"] == 0.9
    assert not any(r.stage == "capability" for r in G.plan({"values": ["Hedonism"]}, runs_dir=tmp_path/"p"))
    runs = G.plan({"values": ["Hedonism", "Tradition"], "stages": {"capability": {"first_value_only": True}}}, runs_dir=tmp_path/"p")
    cap = [r for r in runs if r.stage == "capability"]
    assert [r.key for r in cap] == ["embedded/capability__Hedonism-down__s0"] and cap[0].params["limit"] == 40
    assert not any(r.stage == "capability" for r in G.plan({"values": ["Hedonism"], "stages": {"capability": {}}, "skip": ["capability"]},
                                                          runs_dir=tmp_path/"p"))
