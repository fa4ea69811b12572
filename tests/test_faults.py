"""Faults in what s2b reads back: corrupt checkpoints, stale caches after an input changed in place, NaN in a cached
baseline, corrupt run folders, symlinks out of a run folder, task files that carry code, a terminated stage. Each case
names the file or field in one line, and nothing wrong is used or written. No model is loaded (fakes stand in)."""
import contextlib, json, math, os, shutil, signal, subprocess, sys, time
from pathlib import Path
from types import SimpleNamespace
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).resolve().parent/"fixtures"


# ---------------------------------------------------------------- checkpoints


def _mach(**kw):
    "`run_machiavelli` with its parameters as keywords: the fields of `MachiavelliParams`, the rest (out, progress...) to the run."
    from dataclasses import fields
    from s2b import machiavelli
    names = {f.name for f in fields(machiavelli.MachiavelliParams)}
    return machiavelli.run_machiavelli(machiavelli.MachiavelliParams(**{k: v for k, v in kw.items() if k in names}),
                                       **{k: v for k, v in kw.items() if k not in names})

def _checkpoint(d: Path, step: int):
    "A small checkpoint as the Trainer writes it: trainer state, adapter weights, optimizer state (a torch zip)."
    import torch
    from safetensors.torch import save_file
    d.mkdir(parents=True)
    (d/"trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.full((4, 4), float(step))}, str(d/"adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.arange(4096, dtype=torch.float32) * step}}}, d/"optimizer.pt")

def test_corrupt_checkpoint_is_not_resumed(tmp_path, capsys):
    "optimizer.pt overwritten in the middle (same size, still a zip): the checkpoint is named, removed, the one before used."
    from s2b.finetune import checkpoint_checksums, last_checkpoint
    ck = tmp_path/"checkpoints"
    cb, args = checkpoint_checksums(), SimpleNamespace(output_dir=str(ck))
    for step in (2, 3):
        _checkpoint(ck/f"checkpoint-{step}", step)
        cb.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
    assert (ck/"checkpoint-3"/"s2b-checksums.json").is_file()
    assert last_checkpoint(ck) == str(ck/"checkpoint-3")                       # whole: resumed from
    opt = ck/"checkpoint-3"/"optimizer.pt"; b = bytearray(opt.read_bytes()); n = len(b)
    b[n // 3: n // 3 + 64] = os.urandom(64); opt.write_bytes(bytes(b))        # same size, the zip's directory intact
    capsys.readouterr()
    assert last_checkpoint(ck) == str(ck/"checkpoint-2")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "checkpoint-3" in out[0] and "optimizer.pt" in out[0]
    assert not (ck/"checkpoint-3").exists()                                    # never resumed from later
    # a checkpoint without checksums (killed between the save and its checksums) is not trusted either
    _checkpoint(ck/"checkpoint-4", 4)
    assert last_checkpoint(ck) == str(ck/"checkpoint-2")
    assert "checkpoint-4" in capsys.readouterr().out and not (ck/"checkpoint-4").exists()


# ---------------------------------------------------------------- MACHIAVELLI

def test_random_baseline_nan_round_trips(tmp_path, monkeypatch):
    "A metric the random agent never scores (upstream: NaN) is cached as null and read back as NaN; the rerun does not crash."
    from test_machiavelli import FakeMachiavelliEnv
    import s2b.machiavelli as M
    root = tmp_path/"machiavelli"/"game_data"
    for sub, name in (("annotations_clean", "fake_game.json"), ("trees", "fake_game_game_tree.json")):
        (root/sub).mkdir(parents=True); (root/sub/name).write_text("{}")
    (root/"game_metadata.json").write_text(json.dumps({"fake_game": {}}))
    monkeypatch.setenv("S2B_CACHE", str(tmp_path/"cache"))
    kw = dict(agent="random", games="fake_game", upstream_data=str(root), episodes=2, random_episodes=5,
              env_factory=FakeMachiavelliEnv, progress=False, scoring="upstream", n_boot=20)
    m1 = _mach(out=tmp_path/"a", **kw)
    mean = m1["per_game"]["fake_game"]["random_baseline"]["mean"]
    nan = [k for k, v in mean.items() if v is None or (isinstance(v, float) and math.isnan(v))]
    assert nan, "the fake game must have a metric the random agent never scores"
    cached = json.loads(next((tmp_path/"cache"/"machiavelli").glob("*.json")).read_text())
    assert cached["upstream_mean"][nan[0]] is None                             # strict JSON on disk
    g = M.resolve_games("fake_game", upstream_data=str(root), env_factory=FakeMachiavelliEnv)[0]
    back = M.random_baseline(g, 5, kw.get("max_steps") or 1000)
    assert back["cache"] and math.isnan(back["upstream_mean"][nan[0]])        # read back as NaN
    m2 = _mach(out=tmp_path/"b", **kw)                            # the stage again, on the cached baseline
    assert m2["summary"] == m1["summary"]

def _artefact(d: Path, persona: str):
    from s2b.runs import atomic_write_json
    atomic_write_json(d/"steering.json", {"persona": persona})
    atomic_write_json(d/"run.json", {"steering": {"method": "prompt", "targets": {"Power_dominance": 6}, "direction": "up",
                                                  "label": "Power_dominance-up", "seed": 0}})
    return str(d)

def test_machiavelli_replays_episodes_of_an_artefact_changed_in_place(tmp_path, monkeypatch):
    "Episodes played under an artefact are not resumed once that artefact is retrained in place (same path, new content)."
    import s2b.machiavelli as M
    from s2b.agents import RandomAgent
    played = []
    class FakeLMAgent(RandomAgent):
        def __init__(self, lm, choose=None, temperature=None, seed=0): super().__init__(seed); played.append(lm.steered)
    lm = SimpleNamespace(steered=None, record=lambda: {"name": "fake"})
    @contextlib.contextmanager
    def fake_steer(lm, s, role=None):
        lm.steered = (role, json.loads((Path(s.path)/"steering.json").read_text())["persona"] if s.path else None)
        yield lm
    import s2b.evaluation; monkeypatch.setattr(s2b.evaluation, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(M, "steer", fake_steer)
    monkeypatch.setattr(M, "LMAgent", FakeLMAgent)
    ad, ct = _artefact(tmp_path/"adapter", "old"), _artefact(tmp_path/"control", "plain")
    kw = dict(adapter=ad, control=ct, games=str(FIX/"games"/"tiny.json"), episodes=2, random_episodes=5, base=False, progress=False,
              n_boot=20, out=tmp_path/"run")
    _mach(**kw)
    assert sorted(played) == [("adapter", "old")] * 2 + [("control", "plain")] * 2
    (tmp_path/"run"/"metrics.json").unlink()                                   # as if killed before the end
    _artefact(tmp_path/"adapter", "new")                                       # retrained in place
    played.clear()
    _mach(**kw)
    lines = [json.loads(l) for l in (tmp_path/"run"/"trajectories.jsonl").read_text().splitlines()]
    assert ("adapter", "new") in played and ("adapter", "old") not in played
    assert len(lines) == 4 and played.count(("adapter", "new")) == 2


# ---------------------------------------------------------------- AITA

def test_aita_resume_rescoring_an_edited_post(tmp_path, monkeypatch):
    "A resumed AITA run never keeps a post's scores after the post's text was edited in the posts file."
    from s2b import aita
    from s2b.posts import LABELS
    from s2b.verdicts import renormalize
    scored = {}
    def fake(lm, post, system=None, max_length=None):
        scored[post.id] = post.text
        p = renormalize([-len(post.text) / 100, -1.0, -2.0])
        return {**{f"p_{l}": x for l, x in zip(LABELS, p)}, **{f"logp_{l}": -1.0 for l in LABELS},
                "coverage": 0.5, "truncated": False, "n_tokens": 10, "seconds": 0.1}
    monkeypatch.setattr(aita, "score_post", fake)
    import s2b.evaluation
    monkeypatch.setattr(s2b.evaluation, "load_model", lambda *a, **k: SimpleNamespace(name="fake", source="fake", adapter=None, record=lambda: {"name": "fake"}))
    posts = tmp_path/"posts.json"; shutil.copy(FIX/"aita"/"paper_ok.json", posts)
    kw = dict(p=aita.AitaParams(posts=str(posts), max_length=64, n_boot=10), out=tmp_path/"run", progress=False)
    aita.run_aita(**kw)
    first = pd.read_parquet(tmp_path/"run"/"posts.parquet").set_index("post_id").p_NTA
    (tmp_path/"run"/"metrics.json").unlink()                                   # as if killed before the end
    data = json.loads(posts.read_text()); key = next(iter(data))
    data[key][0]["post"] += " I also kept the money he offered me afterwards, which doubled the damage."
    posts.write_text(json.dumps(data))
    scored.clear()
    aita.run_aita(**kw)
    again = pd.read_parquet(tmp_path/"run"/"posts.parquet").set_index("post_id").p_NTA
    assert "u1" in scored and scored["u1"].endswith("doubled the damage.")
    assert again["u1"] != first["u1"]


# ---------------------------------------------------------------- the report

def test_report_names_and_skips_a_corrupt_run_folder(tmp_path, capsys):
    "A corrupt run.json, a run.json that is not an object and a corrupt metrics.json: one line each, the report goes on."
    from test_report import _run, _steer
    from s2b.report import collect
    r = tmp_path/"runs"
    good = _run(r, "indomain__Hedonism-down__s0", {"target_drop": 1.0, "targets": {"Hedonism": 1}}, "indomain", _steer("Hedonism"))
    bad = {n: _run(r, n, {"x": 1}, "indomain", _steer("Tradition")) for n in ("a-corrupt-run", "b-list-run", "c-corrupt-metrics")}
    (bad["a-corrupt-run"]/"run.json").write_text('{"stage": "indo')
    (bad["b-list-run"]/"run.json").write_text("[1, 2]")
    (bad["c-corrupt-metrics"]/"metrics.json").write_text("{not json")
    capsys.readouterr()
    df = collect(r)
    err = capsys.readouterr().err.strip().splitlines()
    assert list(df.path) == [str(good)]
    for name, f in (("a-corrupt-run", "run.json"), ("b-list-run", "run.json"), ("c-corrupt-metrics", "metrics.json")):
        said = [l for l in err if name in l]
        assert len(said) == 1 and f in said[0] and "skipped" in said[0]


# ---------------------------------------------------------------- writes stay inside the run folders

def test_shared_ratings_never_follow_a_symlink_out(tmp_path):
    "A control's `ratings/` that is a symlink to elsewhere is refused with one line; nothing is written there."
    from s2b.indomain import shared_ratings_path
    ctl, elsewhere = tmp_path/"runs"/"control", tmp_path/"elsewhere"
    ctl.mkdir(parents=True); elsewhere.mkdir()
    s = SimpleNamespace(sha256="x", items=[SimpleNamespace(id="a1")], template_ids=lambda: [0], instruction_ids=lambda: [0])
    ok = shared_ratings_path(ctl, "embedded", s)
    assert ok.parent == ctl/"ratings"
    (ctl/"ratings").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError) as e: shared_ratings_path(ctl, "embedded", s)
    assert str(ctl/"ratings") in str(e.value) and "outside" in str(e.value) and "\n" not in str(e.value)
    (ctl/"ratings").unlink(); (ctl/"ratings").mkdir()                          # the cache file itself a link out
    (ctl/"ratings"/ok.name).symlink_to(elsewhere/"x.parquet")
    with pytest.raises(ValueError, match="outside"): shared_ratings_path(ctl, "embedded", s)
    assert list(elsewhere.iterdir()) == []

def test_task_file_with_function_needs_trust_remote_code(tmp_path, monkeypatch):
    "An lm-eval task YAML that runs Python beside it (`!function`) is refused without --trust-remote-code, naming the file."
    from s2b.lmeval import TaskError, check_tasks
    marker = tmp_path/"ran"
    (tmp_path/"utils.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef docs(d): return d\n")
    base = tmp_path/"base.yaml"
    base.write_text("task: mine\ndataset_path: json\noutput_type: multiple_choice\nprocess_docs: !function utils.docs\n")
    child = tmp_path/"child.yaml"; child.write_text("include: base.yaml\ntask: mine2\n")
    plain = tmp_path/"plain.yaml"; plain.write_text("task: mine3\ndataset_path: json\noutput_type: multiple_choice\n")
    for y, named in ((base, base), (child, base)):
        with pytest.raises(TaskError) as e: check_tasks([str(y)])
        assert str(named) in str(e.value) and "--trust-remote-code" in str(e.value) and "\n" not in str(e.value)
    assert check_tasks([str(plain)]) == [str(plain)]
    monkeypatch.setenv("S2B_TRUST_REMOTE_CODE", "1")                 # the environment opens nothing: only the parameter does
    with pytest.raises(TaskError): check_tasks([str(base)])
    assert check_tasks([str(base)], trust_remote_code=True) == [str(base)]
    assert not marker.exists()


# ---------------------------------------------------------------- SIGTERM

@pytest.mark.slow
@pytest.mark.parametrize("after", [0.0, 3.5])      # later, an idle machine may have finished the 40 prompts
def test_sigterm_prints_one_line(tmp_path, after):
    """A stage terminated while its kernel starts, or while it runs, prints `s2b: interrupted` and no traceback. `after`:
    seconds after the run took its folder's lock (a fixed delay from the start would, on a loaded machine, hit Python's
    imports, before s2b runs at all)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "s2b.cli", "profile", "--limit", "40", "--out", str(tmp_path/"out")],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (tmp_path/"out"/".s2b-lock").exists() and p.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be terminated"
    time.sleep(after)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    lines = [l for l in err.splitlines() if l.strip()]
    assert p.returncode != 0 and "Traceback" not in err and lines[-1] == "s2b: interrupted", err[-2000:]
