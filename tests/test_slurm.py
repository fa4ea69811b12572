"""The grid on a real one-node SLURM cluster (tests/slurm/cluster.sh): job arrays, dependencies, a cancelled job, its
resubmission, and results equal to the local executor's. Skips where SLURM cannot be started here; fails in CI (CI=true)."""
import importlib.util, json, math, os, socket, subprocess, sys, time
from pathlib import Path
import pytest
import s2b.cluster as C
from s2b.grid import plan

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "tests/slurm/grid.yaml"
_spec = importlib.util.spec_from_file_location("compare_metrics", ROOT/"bench"/"compare_metrics.py")
compare = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(compare)
pytestmark = [pytest.mark.model, pytest.mark.slow]

def _free_port() -> int:
    "A port p with p and p + 1 free (slurmctld, slurmd)."
    for _ in range(50):
        with socket.socket() as s: s.bind(("", 0)); p = s.getsockname()[1]
        try:
            with socket.socket() as s: s.bind(("", p + 1))
            return p
        except OSError: continue
    raise RuntimeError("no two free ports")

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    "A one-node SLURM cluster of this machine, for this module's tests; SLURM_CONF points at it while they run."
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, S2B_SLURM_PORT=str(_free_port()))
    p = subprocess.run(["bash", str(ROOT/"tests"/"slurm"/"cluster.sh"), "start", str(d)], capture_output=True, text=True, env=env, timeout=600)
    if p.returncode:
        why = f"no SLURM cluster here: {p.stderr.strip() or p.stdout.strip()}"
        if os.environ.get("CI") == "true": pytest.fail(why)           # CI must run this test
        pytest.skip(why)
    old = os.environ.get("SLURM_CONF"); os.environ["SLURM_CONF"] = str(d/"slurm.conf")
    yield d
    subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True)   # this private cluster's jobs only
    subprocess.run(["bash", str(ROOT/"tests"/"slurm"/"cluster.sh"), "stop", str(d)], capture_output=True)
    if old is None: os.environ.pop("SLURM_CONF", None)
    else: os.environ["SLURM_CONF"] = old

def _wait(until, what: str, timeout: float = 300, every: float = 1.0):
    t0 = time.time()
    while not (v := until()):
        if time.time() - t0 > timeout: raise AssertionError(f"waited {timeout:.0f}s for {what}")
        time.sleep(every)
    return v

def _idle(ids) -> bool:
    return C.scheduler_states([j for j in ids.values() if j != "done"]) == {}

def test_a_grid_on_slurm_cancelled_and_resubmitted_equals_the_local_grid(slurm, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    local = subprocess.Popen([sys.executable, "-m", "s2b.cli", "grid", RECIPE, "--runs-dir", str(tmp_path/"local")], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)   # beside the SLURM jobs
    runs = {r.key.split("/")[-1]: r for r in plan(RECIPE, tmp_path/"slurm")}
    ctrl, ft, ev = runs["finetune__control__s0"], runs["finetune__Hedonism-up__s0"], runs["indomain__Hedonism-up__s0"]
    out = []
    ids = C.run_grid(RECIPE, "slurm", runs_dir=tmp_path/"slurm", log=out.append)
    assert sum(l.startswith("submitted") for l in out) == 3, out          # a job array per layer
    sub = tmp_path/"slurm"/"_submitit"
    # the adapter starts only once its control finished (were the dependency ignored, it would stop at its own check)
    def checkpoint():
        if not C.scheduler_states([ids[ft.key]]):
            raise AssertionError(f"the adapter's job ended early: {(sub/(ids[ft.key] + '_0_log.err')).read_text()[-2000:]}")
        state = ft.out/"checkpoints"/"checkpoint-1"/"trainer_state.json"      # the last file the trainer writes
        try: return bool(json.loads(state.read_text()))
        except (OSError, ValueError): return False
    _wait(checkpoint, "the adapter's first checkpoint", every=0.3)
    assert C.stage_done(ctrl.out, ctrl.params)
    # the evaluation waits on SLURM's dependency while the adapter trains: each array names the arrays it reads from
    reason = subprocess.run(["squeue", "-h", "-j", ids[ev.key], "-o", "%r"], capture_output=True, text=True).stdout.strip()
    assert reason == "Dependency", reason
    script = lambda j: (sub/f"{j.split('_')[0]}_submission.sh").read_text()
    assert f"--dependency=afterany:{ids[ctrl.key]}\n" in script(ids[ft.key])
    assert f"--dependency=afterany:{':'.join(sorted([ids[ctrl.key], ids[ft.key]]))}\n" in script(ids[ev.key])
    subprocess.run(["scancel", ids[ft.key]], check=True)                  # cancelled mid-grid
    _wait(lambda: _idle(ids), "the grid's jobs to end")
    rows = {r["key"]: r for r in C.grid_status(list(runs.values()), sub)}
    print(C.format_status(list(rows.values()), "slurm-test"))
    assert [rows[r.key]["state"] for r in (ctrl, ft, ev)] == ["done", "failed", "skipped"]
    assert str(sub/f"{ids[ft.key]}_0_log.err") in rows[ft.key]["logs"] and rows[ft.key]["why"].startswith("CANCELLED at")
    # the same command again submits what did not finish: the adapter (from its checkpoint), then its evaluation
    out.clear()
    ids2 = C.run_grid(RECIPE, "slurm", runs_dir=tmp_path/"slurm", log=out.append)
    assert ids2[ctrl.key] == "done" and sum(l.startswith("submitted") for l in out) == 2, out
    _wait(lambda: _idle(ids2), "the resubmitted jobs to end")
    assert {r["state"] for r in C.grid_status(list(runs.values()), sub)} == {"done"}
    assert json.loads((ft.out/"metrics.json").read_text())["resumed_from"] in ("checkpoint-1", "checkpoint-2")   # not from the start
    log, _ = local.communicate(timeout=300)
    assert local.returncode == 0, log[-3000:]
    # every number of every metrics.json within 1e-6, timings excepted (bench/compare_metrics.py's rule)
    files = sorted(p.relative_to(tmp_path/"local") for p in (tmp_path/"local").rglob("metrics.json"))
    assert len(files) == 3 and files == sorted(p.relative_to(tmp_path/"slurm") for p in (tmp_path/"slurm").rglob("metrics.json"))
    bad, n = [], 0
    for f in files:
        a, b = (compare.numbers(json.loads((tmp_path/side/f).read_text())) for side in ("local", "slurm"))
        keys = {k for k in set(a) | set(b) if not compare.TIMING.search(k) and k != "resumed_from"}   # None here, a name there
        n += len(keys)
        bad += [f"{f}: {k}: {a.get(k)} vs {b.get(k)}" for k in sorted(keys)
                if k not in a or k not in b or not (abs(a[k] - b[k]) <= 1e-6 or math.isnan(a[k]) and math.isnan(b[k]))]
    assert n > 50 and not bad, bad
