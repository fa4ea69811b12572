import json, subprocess, sys
from pathlib import Path
import pytest
import s2b.grid as G
import s2b.cluster as C
from s2b.stages import StageFailed
from s2b.runs import atomic_write_json, inputs_fingerprint

ROOT = Path(__file__).resolve().parent.parent

def test_paper_plan_is_the_full_grid(tmp_path):
    runs = G.plan("recipes/paper.yaml", runs_dir=tmp_path)
    # 3 models × (profile + baseline + 3 controls + 20 values × 3 seeds × (finetune, indomain, aita, machiavelli)) + report
    assert len(runs) == 3 * (2 + 3 + 20 * 3 * 4) + 1
    keys = [r.key for r in runs]
    for r in runs:                                           # every dependency comes first
        assert all(keys.index(d) < keys.index(r.key) for d in r.deps)
    falcon = next(r for r in runs if r.key == "Falcon3-7B-Instruct/finetune__Face-down__s2")
    assert json.loads(falcon.params["overrides"]) == {"lora.alpha": 1024}
    assert next(r for r in runs if r.key == "Qwen3-8B/finetune__Face-down__s2").params["overrides"] == "{}"

def test_dry_run_prints_the_plan():
    out = subprocess.run([sys.executable, "-m", "s2b.cli", "grid", "recipes/paper.yaml", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "736 runs" in out and out.count("todo") == 736 and "Llama-3.1-8B-Instruct/finetune__Universalism_nature-down__s1" in out
    assert "--executor slurm submits 4 job arrays for the 736 runs to do" in out         # not 736 sbatch calls

def _fake_stage(calls, fail=()):
    def fake(stage, out, params, force=False, **kw):
        calls.append(Path(out).name)
        if Path(out).name in fail: raise StageFailed(f"stage {stage!r} failed\n  read the rendered notebook: {out}/report.ipynb")
        atomic_write_json(Path(out)/"metrics.json", {})
        atomic_write_json(Path(out)/"run.json", {"notebook_params": {**params, "out": str(Path(out).resolve())},
                                                 "notebook_inputs": inputs_fingerprint(params)})
        (Path(out)/"report.ipynb").write_text("{}")
        return Path(out)/"report.ipynb"
    return fake

def test_failed_run_skips_its_dependents(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(G, "execute_stage", _fake_stage(calls, fail={"finetune__Hedonism-down__s0"}))
    runs = G.plan({"values": ["Hedonism", "Tradition"]}, runs_dir=tmp_path)
    status = G.run_local(runs, log=lambda *a: None)
    assert status["embedded/finetune__Hedonism-down__s0"].startswith("failed") and "report.ipynb" in status["embedded/finetune__Hedonism-down__s0"]
    for k in ("indomain__Hedonism-down__s0", "aita__Hedonism-down__s0", "machiavelli__Hedonism-down__s0", "aita__Tradition-down__s0"):
        assert status[f"embedded/{k}"] == "skipped (dependency failed)" and k not in calls   # aita of Tradition needs the Hedonism placebo
    assert status["embedded/indomain__Tradition-down__s0"] == "done" and status["report"] == "skipped (dependency failed)"
    # a second run skips what finished and retries what failed
    calls.clear(); monkeypatch.setattr(G, "execute_stage", _fake_stage(calls))
    status = G.run_local(runs, log=lambda *a: None)
    assert "profile" not in calls and "finetune__Hedonism-down__s0" in calls and status["report"] == "done"
    assert "indomain__Tradition-down__s0" not in calls                  # its inputs did not change
    calls.clear(); G.run_local(runs, log=lambda *a: None)
    assert calls == []                                                   # everything finished: nothing runs
    # remaking an input remakes what depends on it, even when its own parameters did not change
    import shutil; shutil.rmtree(tmp_path/"embedded"/"finetune__Tradition-down__s0")
    calls.clear(); G.run_local(runs, log=lambda *a: None)
    assert {"finetune__Tradition-down__s0", "indomain__Tradition-down__s0", "aita__Tradition-down__s0",
            "aita__Hedonism-down__s0", "report"} <= set(calls) and "indomain__Hedonism-down__s0" not in calls

def test_slurm_executor_through_submitit_debug(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "execute_stage", _fake_stage(calls))
    runs = G.plan({"values": ["Hedonism"], "skip": ["machiavelli", "aita"]}, runs_dir=tmp_path/"runs")
    ids = C.run_slurm(runs, {"partition": "gpu", "time": 5}, folder=tmp_path/"sub", cluster="debug", log=lambda *a: None)
    assert set(ids) == {r.key for r in runs}
    assert sorted(calls) == sorted(Path(r.out).name for r in runs)
    for r in runs:                                          # dependencies ran first
        assert all(calls.index(d.split("/")[-1]) < calls.index(Path(r.out).name)
                   for d in r.deps)
    assert {r["state"] for r in C.grid_status(runs, tmp_path/"sub", live={})} == {"done"}
    calls.clear()                                           # a second submission submits nothing
    assert set(C.run_slurm(runs, {}, folder=tmp_path/"sub", cluster="debug", log=lambda *a: None).values()) == {"done"} and calls == []

def test_a_failed_job_stops_its_dependents_only(tmp_path, monkeypatch):
    "One failed fine-tune: its evaluations stop at their own check, the other value's go on; status names the failure and its log."
    calls = []
    monkeypatch.setattr(C, "execute_stage", _fake_stage(calls, fail={"finetune__Hedonism-down__s0"}))
    runs = G.plan({"values": ["Hedonism", "Tradition"], "skip": ["aita", "machiavelli", "profile"]}, runs_dir=tmp_path/"runs")
    C.run_slurm(runs, {}, folder=tmp_path/"sub", cluster="debug", log=lambda *a: None)
    assert "indomain__Tradition-down__s0" in calls and "indomain__Hedonism-down__s0" not in calls and "report" not in calls
    rows = {r["key"]: r for r in C.grid_status(runs, tmp_path/"sub", live={})}
    ft, ev = rows["embedded/finetune__Hedonism-down__s0"], rows["embedded/indomain__Hedonism-down__s0"]
    assert ft["state"] == "failed" and ft["why"]            # submitit's debug executor keeps no result: the cause is a guess
    assert ev["state"] == "skipped" and ev["why"] == "embedded/finetune__Hedonism-down__s0 did not finish"
    assert rows["embedded/indomain__Tradition-down__s0"]["state"] == "done" and rows["report"]["state"] == "skipped"
    text = C.format_status(list(rows.values()), "t")
    assert text.splitlines()[-1] == "s2b grid t: 7 runs: 4 done, 0 queued, 0 running, 1 failed, 2 skipped, 0 not submitted"
    # resubmitting submits what did not finish, and only that
    calls.clear(); monkeypatch.setattr(C, "execute_stage", _fake_stage(calls))
    ids = C.run_slurm(runs, {}, folder=tmp_path/"sub", cluster="debug", log=lambda *a: None)
    assert sorted(calls) == ["finetune__Hedonism-down__s0", "indomain__Hedonism-down__s0", "report"]
    assert ids["embedded/indomain__Tradition-down__s0"] == "done"
    assert {r["state"] for r in C.grid_status(runs, tmp_path/"sub", live={})} == {"done"}

@pytest.mark.slow
def test_slurm_executor_through_submitit_local_runs_a_real_stage(tmp_path):
    runs = G.plan({"values": ["Hedonism"], "skip": ["profile", "indomain", "aita", "machiavelli"]}, runs_dir=tmp_path/"runs")
    report = [r for r in runs if r.stage == "report"]
    report[0].deps = []
    ids = C.run_slurm(report, {}, folder=tmp_path/"sub", cluster="local", log=lambda *a: None)
    assert list(ids) == ["report"]
    out = tmp_path/"runs"/"report"
    assert (out/"report.ipynb").exists() and json.loads((out/"metrics.json").read_text())["n_runs"] == 0


def test_machiavelli_scoring_passes_through(tmp_path):
    runs = G.plan({"values": ["Hedonism"], "stages": {"machiavelli": {"scoring": "upstream", "episodes": 2}}}, runs_dir=tmp_path)
    (m,) = [r for r in runs if r.stage == "machiavelli"]
    assert m.params["scoring"] == "upstream" and m.params["episodes"] == 2 and m.params["games"] == "bundled"
