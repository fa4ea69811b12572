"""Bad input through the CLI: each class exits non-zero with one line naming the file or the setting, never a traceback.
`python tests/test_bad_input.py` prints the table of classes and messages."""
import json, os
from pathlib import Path
import pytest
from s2b.cli import main

def _adapter(d: Path, base="HuggingFaceTB/SmolLM2-135M-Instruct", width=576, corrupt=False) -> str:
    "A fake LoRA adapter folder (no model needed): a config naming `base`, q_proj matrices taking inputs of `width`."
    import torch
    from safetensors.torch import save_file
    d.mkdir(parents=True, exist_ok=True)
    (d/"adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA", "r": 4,
                                                      "lora_alpha": 8, "target_modules": ["q_proj"]}))
    w = d/"adapter_model.safetensors"
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, width),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(width, 4)}, str(w))
    if corrupt: w.write_bytes(w.read_bytes()[:100])
    return str(d)

def _w(p: Path, text=None, data=None) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data) if data is not None else p.write_text(text)
    return str(p)

_ITEM = {"id": "a1", "statement": "I like maps", "value": "Hedonism", "split": "test"}

def cases(t: Path) -> dict:
    "class -> (argv, text the message must contain); `t` is an empty folder for the files."
    out = str(t/"out")
    ft = lambda *a: ["finetune", "--target", "Hedonism", "--out", out, *a]
    prof = lambda *a: ["profile", "--out", out, *a]
    sv = lambda name, obj: _w(t/name, json.dumps(obj))
    return {
        "recipe file missing": (ft("--recipe", str(t/"nope.yaml")), "nope.yaml"),
        "recipe not YAML": (ft("--recipe", _w(t/"bad.yaml", "lora: [r: 8\n")), "bad.yaml: not valid YAML (line 2"),
        "recipe not UTF-8": (ft("--recipe", _w(t/"latin.yaml", data=b"lora:\n  r: 8 # caf\xe9\n")), "latin.yaml: not UTF-8"),
        "recipe unknown section": (ft("--recipe", _w(t/"sec.yaml", "optimizer: {lr: 1}\n")), "unknown sections ['optimizer']"),
        "recipe unknown key in a section": (ft("--recipe", _w(t/"key.yaml", "lora: {rank: 8}\n")), "'lora.rank'; did you mean 'lora.r'"),
        "recipe value of the wrong type": (ft("--recipe", _w(t/"lr.yaml", "training: {learning_rate: fast}\n")), "training.learning_rate must be a number"),
        "recipe max_steps negative": (ft("--recipe", _w(t/"ms.yaml", "training: {max_steps: -5}\n")), "training.max_steps must be -1"),
        "recipe rank zero": (ft("--recipe", _w(t/"r0.yaml", "lora: {r: 0}\n")), "lora.r must be positive"),
        "--set typo": (ft("--set", "training.max_step=3"), "did you mean 'training.max_steps'"),
        "--set without =": (ft("--set", "lora.r"), "--set needs SECTION.KEY=VALUE"),
        "--set of the wrong type": (ft("--set", "lora.r=big"), "lora.r must be an integer"),
        "--limit 0": (prof("--limit", "0"), "--limit: must be a positive integer"),
        "--limit -1": (prof("--limit", "-1"), "--limit: must be a positive integer"),
        "--max-steps -5": (ft("--max-steps", "-5"), "--max-steps: must be -1 (train by epochs) or a positive integer"),
        "survey file missing": (prof("--survey", str(t/"none.json")), "none.json not found"),
        "survey not UTF-8": (prof("--survey", _w(t/"latin.json", data=b'{"items": [], "name": "caf\xe9"}')), "latin.json: not UTF-8"),
        "survey not JSON": (prof("--survey", _w(t/"broken.json", "{items: ")), "broken.json: not valid JSON"),
        "survey scale not integer": (prof("--survey", sv("sc1.json", {"items": [_ITEM], "scale": {"min": 1, "max": "six"}})), "sc1.json: 'scale' must be"),
        "survey scale other than 1-6": (prof("--survey", sv("sc7.json", {"items": [_ITEM], "scale": {"min": 1, "max": 7}})), "sc7.json: 'scale' 1-7 is not supported"),
        "survey item with an unknown value": (prof("--survey", sv("val.json", {"items": [{**_ITEM, "value": "Hedonizm"}]})), "val.json: item 0 (id 'a1')"),
        "survey CSV without a column": (prof("--survey", _w(t/"s.csv", "id,text\n1,x\n")), "s.csv: CSV needs the columns"),
        "unknown split": (prof("--split", "training"), "Unknown split 'training'"),
        "template id out of range": (prof("--templates", "99"), "template ids must be within"),
        "unknown target value": (["finetune", "--target", "Hedonizm", "--out", out], "Hedonizm"),
        "baseline folder missing": (ft("--baseline", str(t/"nobase")), "baseline"),
        "model path missing": (prof("--model", str(t/"models"/"llama")), "models/llama: no such folder"),
        "model folder that is not a model": (prof("--model", str(t)), "not a model folder (it has no config.json)"),
        "adapter folder without adapter": (prof("--adapter", str(t)), "no LoRA adapter in it"),
        "adapter of another base model": (prof("--adapter", _adapter(t/"ad_llama", base="meta-llama/Llama-3.1-8B")),
                                          "was trained on meta-llama/Llama-3.1-8B, not on embedded; pass --allow-other-base"),
        "adapter with other shapes": (prof("--adapter", _adapter(t/"ad_wide", width=2048)), "the model's hidden size is 576"),
        "adapter weights corrupt": (prof("--adapter", _adapter(t/"ad_bad", corrupt=True)), "adapter_model.safetensors: not a readable safetensors file"),
        "--out is a file": (["profile", "--out", _w(t/"afile.txt", "x")], "afile.txt is a file"),
        "--out under a file": (["profile", "--out", str(Path(_w(t/"afile2.txt", "x"))/"run")], "cannot create the folder"),
        "--out holds another stage's run": (["profile", "--out", str(Path(_w(t/"ftrun"/"run.json", json.dumps({"stage": "finetune"}))).parent)],
                                            "holds a finetune run"),
        "grid recipe missing": (["grid", str(t/"grid.yaml"), "--dry-run"], "grid.yaml not found"),
        "grid recipe with an unknown value": (["grid", _w(t/"g1.yaml", "values: [Hedonizm]\n"), "--dry-run"], "g1.yaml: values: Unknown value 'Hedonizm'"),
        "grid recipe with a bad direction": (["grid", _w(t/"g2.yaml", "values: [Hedonism]\ndirections: [sideways]\n"), "--dry-run"], "g2.yaml: directions must be down/up"),
        "grid recipe with a bad fine-tune recipe": (["grid", _w(t/"g3.yaml", f"values: [Hedonism]\nstages: {{finetune: {{recipe: {t/'ms.yaml'}}}}}\n"), "--dry-run"],
                                                    "training.max_steps must be -1"),
        "grid recipe with a misspelt slurm key": (["grid", _w(t/"g5.yaml", "values: [Hedonism]\nslurm: {gpus: 1}\n"), "--dry-run"],
                                                  "g5.yaml: unknown setting 'slurm.gpus'; did you mean 'slurm.gpus_per_node'?"),
        "grid recipe with a bad slurm time": (["grid", _w(t/"g6.yaml", "values: [Hedonism]\nslurm: {time: soon}\n"), "--status"],
                                              "g6.yaml: slurm.time must be minutes (240) or a SLURM time"),
        "demo recipe missing": (["demo", "--recipe", str(t/"demo.yaml")], "demo.yaml not found"),
        "AITA posts file missing": (["evaluate", "aita", "--posts", str(t/"posts.json"), "--out", out], "posts.json"),
        "AITA post with a bad split": (["evaluate", "aita", "--posts", sv("split.json", {"Hedonism": [{"id": "h7", "post": "AITA?",
                                        "high_standard_stance": "NTA", "low_standard_stance": "YTA", "split": "val"}]}), "--out", out],
                                       "split.json: record 0 ('Hedonism'[0], id 'h7'): post 'h7': split must be 'train' or 'test', not 'val'"),
        "verdict method without train posts of its value": (["finetune", "--method", "verdict", "--target", "Face", "--posts",
                                       sv("hed.json", {"Hedonism": [{"post": "AITA?", "high_standard_stance": "NTA", "low_standard_stance": "YTA"}]}),
                                       "--out", out], "no posts of Face in"),
        "offline hub id not cached": (prof("--model", "nobody-s2b/not-a-model"), "HF_HUB_OFFLINE is set"),
    }

def run_case(argv, capsys=None):
    import contextlib, io
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try: rc = main(argv)
        except SystemExit as x: rc = x.code
    return rc, o.getvalue() + e.getvalue()

@pytest.fixture(scope="module")
def folder(tmp_path_factory): return tmp_path_factory.mktemp("bad")

def _names():
    import tempfile
    return list(cases(Path(tempfile.mkdtemp())))

@pytest.mark.parametrize("name", _names())
def test_bad_input_is_named_in_one_line(name, folder, monkeypatch):
    import s2b.cli, s2b.grid
    def reached(*a, **k): raise AssertionError(f"{name}: the bad input reached a stage run")
    monkeypatch.setattr(s2b.cli, "execute_stage", reached); monkeypatch.setattr(s2b.grid, "execute_stage", reached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("S2B_ALLOW_OTHER_BASE", "")
    argv, want = cases(folder)[name]
    rc, text = run_case(argv)
    assert rc not in (0, None), f"{name}: exit {rc}: {text}"
    assert "Traceback" not in text, text
    lines = [l for l in text.strip().splitlines() if l.strip()]
    assert len(lines) == 1, f"{name}: {len(lines)} lines:\n{text}"
    assert want in lines[0], f"{name}: {lines[0]!r} does not contain {want!r}"
    assert not (folder/"out"/"report.ipynb").exists()                 # nothing ran

def test_at_least_25_classes(): assert len(_names()) >= 25

def test_debug_shows_the_traceback(folder):
    with pytest.raises(ValueError, match="did you mean"):
        main(["--debug", "finetune", "--target", "Hedonism", "--out", str(folder/"out"), "--set", "training.max_step=3"])

def test_allow_other_base_lets_the_adapter_through(folder, monkeypatch):
    "--allow-other-base is a parameter of the run (recorded, and passed to the stage), never an environment variable."
    import s2b.cli
    from s2b.models import check_adapter
    ad = _adapter(folder/"ad_llama2", base="meta-llama/Llama-3.1-8B")
    with pytest.raises(ValueError, match="allow-other-base"): check_adapter(ad, "embedded")
    assert check_adapter(ad, "embedded", allow_other_base=True) == Path(ad)
    seen = {}
    monkeypatch.setattr(s2b.cli, "execute_stage", lambda stage, out, params, **k: seen.update(params) or Path(out)/"report.ipynb")
    rc, text = run_case(["profile", "--out", str(folder/"other"), "--adapter", ad, "--limit", "2"])
    assert rc == 1 and "allow-other-base" in text and not seen
    assert main(["profile", "--out", str(folder/"other"), "--adapter", ad, "--limit", "2", "--allow-other-base"]) == 0
    assert seen["allow_other_base"] is True and seen["adapter"] == str(Path(ad).resolve())
    assert "S2B_ALLOW_OTHER_BASE" not in os.environ

def test_revision_and_refresh_reach_the_stage(folder, monkeypatch):
    "--revision is a run parameter (so recorded and compared); --refresh downloads the survey URL again before the stage starts."
    import shutil, s2b.cli, s2b.runs
    from s2b.survey import bundled_survey_path
    seen, fetched = {}, []
    def download(url, dest_dir=None, force=False, **k):
        fetched.append((url, force)); f = folder/"fetched.json"; shutil.copy(bundled_survey_path(), f); return f
    monkeypatch.setattr(s2b.runs, "download", download)
    monkeypatch.setattr(s2b.cli, "execute_stage", lambda stage, out, params, **k: seen.update(params) or Path(out)/"report.ipynb")
    url = "https://example.org/survey.json"
    assert main(["profile", "--out", str(folder/"rev"), "--revision", "abc123", "--refresh", "--limit", "2", "--survey", url]) == 0
    assert seen["revision"] == "abc123" and seen["survey"] == url and fetched[0] == (url, True)
    assert "S2B_MODEL_REVISION" not in os.environ and "S2B_REFRESH" not in os.environ
    ad = _adapter(folder/"ind_ad")                       # an evaluation takes the model options too, as parameters of its run
    assert main(["evaluate", "indomain", "--adapter", ad, "--control", ad, "--out", str(folder/"ind"), "--thinking", "--revision", "r1"]) == 0
    assert seen["thinking"] is True and seen["revision"] == "r1" and seen["adapter"] == str(Path(ad).resolve())

def test_unreachable_hub_fails_fast(folder, monkeypatch):
    import time, s2b.models as M
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(M, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    rc, text = run_case(["profile", "--out", str(folder/"hub"), "--model", "nobody-s2b/not-a-model"])
    assert rc == 1 and "the hub cannot be reached" in text and len(text.strip().splitlines()) == 1 and time.time() - t0 < 10

if __name__ == "__main__":
    import tempfile
    os.environ["HF_HUB_OFFLINE"] = "1"
    t = Path(tempfile.mkdtemp())
    print("| class | message |\n|---|---|")
    for name, (argv, _) in cases(t).items():
        rc, text = run_case(argv)
        print(f"| {name} | `{text.strip().replace(str(t), '<tmp>').replace('|', '/')}` (exit {rc}) |")


def test_report_of_a_missing_runs_folder_is_one_line(tmp_path):
    "`s2b report --runs-dir` of a folder that does not exist names it in one line, and no notebook runs."
    rc, text = run_case(["report", "--runs-dir", str(tmp_path/"nope"), "--figures", str(tmp_path/"figs")])
    assert rc == 1 and text.strip() == f"s2b: error: report: no runs folder {(tmp_path/'nope').resolve()}" and not (tmp_path/"nope").exists()
