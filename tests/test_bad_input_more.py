"""More bad input through the CLI (recipes' ranges, grid shapes, model-dependent settings, surveys, posts, games, run
folders): each class exits non-zero with one line naming the file, record or setting, and nothing is written: no run
folder, no stage run, no model loaded. `python tests/test_bad_input_more.py` prints the table of classes and messages."""
import json, os
from pathlib import Path
import pytest
from test_bad_input import _adapter, _w, run_case

_ITEM = {"id": "a1", "statement": "I like maps", "value": "Hedonism", "split": "train"}

def _game(**change) -> dict:
    g = json.loads((Path(__file__).resolve().parent.parent/"data"/"games"/"harbor_council.json").read_text())
    for k, v in change.items():
        if k == "next": g["scenes"][g["start"]]["choices"][0]["next"] = v
        else: g[k] = v
    return g

def _run_folder(d: Path, text: str) -> str:
    d.mkdir(parents=True, exist_ok=True); (d/"run.json").write_text(text); return str(d)

def cases(t: Path) -> dict:
    "class -> (argv, text the message must contain); `t` is an empty folder for the files; every run goes to `t/out`."
    out = str(t/"out")
    ft = lambda *a: ["finetune", "--target", "Hedonism", "--out", out, *a]
    prof = lambda *a: ["profile", "--out", out, *a]
    rec = lambda name, text: ft("--recipe", _w(t/name, text))
    grid = lambda name, text: ["grid", _w(t/name, "values: [Hedonism]\n" + text), "--dry-run"]
    sv = lambda name, obj: _w(t/name, json.dumps(obj))
    cap = lambda *a: ["evaluate", "capability", "--adapter", str(t), "--control", str(t), "--out", out, *a]
    mach = lambda *a: ["evaluate", "machiavelli", "--out", out, *a]
    return {
        # fine-tune recipes: ranges, NaN and inf, names
        "recipe learning rate 1e9": (rec("lr9.yaml", "training: {learning_rate: 1.0e9}\n"), "lr9.yaml: training.learning_rate must be"),
        "recipe learning rate NaN": (rec("lrnan.yaml", "training: {learning_rate: .nan}\n"), "lrnan.yaml: training.learning_rate must be a finite number"),
        "recipe max_length 1": (rec("ml1.yaml", "training: {max_length: 1}\n"), "ml1.yaml: training.max_length must be within 32"),
        "recipe lora.r 100000": (rec("r1e5.yaml", "lora: {r: 100000}\n"), "r1e5.yaml: lora.r must be within 1..4096"),
        "recipe unknown scheduler": (rec("sch.yaml", "training: {lr_scheduler_type: wavy}\n"), "sch.yaml: training.lr_scheduler_type must be one of"),
        "recipe batch size 0": (rec("bs0.yaml", "training: {per_device_train_batch_size: 0}\n"), "bs0.yaml: training.per_device_train_batch_size must be positive"),
        "recipe dpo.beta 0": (rec("beta.yaml", "dpo: {beta: 0}\n"), "beta.yaml: dpo.beta must be positive"),
        "recipe prompt.examples negative": (rec("ex.yaml", "prompt: {examples: -1}\n"), "prompt.examples must be zero or more"),
        "--set caa.multiplier .nan": (ft("--method", "caa", "--set", "caa.multiplier=.nan"), "caa.multiplier must be a finite number"),
        "--set caa.multiplier .inf": (ft("--method", "caa", "--set", "caa.multiplier=.inf"), "caa.multiplier must be a finite number"),
        "--lr nan": (ft("--lr", "nan"), "training.learning_rate must be a finite number"),
        # settings that depend on the model, checked from its config before it loads
        "caa.layers out of the model's range": (ft("--method", "caa", "--set", "caa.layers=[99]"), "caa.layers [99] out of range: embedded has 30 layers"),
        "lora.r over the model's hidden size": (ft("--set", "lora.r=1024"), "lora.r 1024 is more than the hidden size of embedded (576)"),
        "max_length over the model's context": (ft("--set", "training.max_length=100000"), "training.max_length 100000 is more than the context"),
        "top_layers over the model's layers": (ft("--set", "lora.top_layers=64"), "lora.top_layers 64 is more than the 30 layers"),
        "unknown LoRA target module": (ft("--set", "lora.target_modules=[q_prj]"), "lora.target_modules ['q_prj'] are not linear layers of embedded"),
        "negative seed (finetune)": (ft("--seed", "-1"), "--seed: must be an integer of 0 or more"),
        "negative seed (profile)": (prof("--seed", "-3"), "--seed: must be an integer of 0 or more"),
        # grid recipes: shape, keys, ranges
        "grid models a string": (grid("gm.yaml", "models: embedded\n"), "gm.yaml: models must be a non-empty list"),
        "grid seed: for seeds:": (grid("gs.yaml", "seed: [1]\n"), "gs.yaml: unknown setting 'seed'; did you mean 'seeds'?"),
        "grid seeds: 0": (grid("gs0.yaml", "seeds: 0\n"), "gs0.yaml: seeds must be a non-empty list"),
        "grid negative seed": (grid("gsn.yaml", "seeds: [-1]\n"), "gsn.yaml: seeds[0] must be an integer of 0 or more"),
        "grid directions a string": (grid("gv.yaml", "directions: up\n"), "gv.yaml: directions must be a non-empty list"),
        "grid unknown backend": (grid("gb.yaml", "backend: vllm\n"), "gb.yaml: backend must be one of"),
        "grid unknown stage": (grid("gst.yaml", "stages: {aitta: {}}\n"), "gst.yaml: stages: unknown stage 'aitta'; did you mean 'aita'?"),
        "grid skip of an unknown stage": (grid("gsk.yaml", "skip: [machiavely]\n"), "gsk.yaml: skip[0]: unknown stage 'machiavely'"),
        "grid stage settings not a mapping": (grid("gsm.yaml", "stages: {aita: bundled}\n"), "gsm.yaml: stages.aita must be a mapping"),
        "grid negative MACHIAVELLI temperature": (grid("gt.yaml", "stages: {machiavelli: {temperature: -1}}\n"), "stages.machiavelli.temperature must be zero or more"),
        "grid negative few-shot": (grid("gf.yaml", "stages: {capability: {num_fewshot: -2}}\n"), "stages.capability.num_fewshot must be zero or more"),
        "grid capability limit 0": (grid("gl.yaml", "stages: {capability: {limit: 0}}\n"), "stages.capability.limit must be positive"),
        "grid batch size 0": (grid("gbs.yaml", "stages: {profile: {batch_size: 0}}\n"), "stages.profile.batch_size must be positive"),
        "grid caa.multiplier .nan": (grid("gcaa.yaml", "methods: [caa]\nstages: {finetune: {overrides: {caa.multiplier: .nan}}}\n"), "caa.multiplier must be a finite number"),
        # evaluation settings
        "MACHIAVELLI negative temperature": (mach("--temperature", "-1"), "--temperature: must be a number of 0 or more"),
        "capability --limit 0": (cap("--limit", "0"), "--limit: must be a number above 0"),
        "capability negative --limit": (cap("--limit", "-5"), "--limit: must be a number above 0"),
        "capability negative few-shot": (cap("--num-fewshot", "-1"), "--num-fewshot: must be an integer of 0 or more"),
        "capability batch size 0": (cap("--batch-size", "0"), "--batch-size: must be a positive integer"),
        # surveys, field by field
        "survey items not a list": (prof("--survey", sv("il.json", {"items": 3})), "il.json: 'items' must be a list of records"),
        "survey item not an object": (prof("--survey", sv("io.json", {"items": ["I like maps"]})), "io.json: item 0 must be an object"),
        "survey instruction without text": (prof("--survey", sv("it.json", {"items": [_ITEM], "instructions": [{"txt": "Rate it"}],
                                                                          "templates": ["Rating: {rating}"]})), "it.json: instructions[0] has no 'text'"),
        "KVS items not a mapping": (prof("--survey", sv("kv.json", {"tasks": ["Rate it."], "response_template": ["Rating: {rating}"], "train": [["x"]]})),
                                    "kv.json: item train[0] must be an object"),
        "survey empty statement": (prof("--survey", sv("se.json", {"items": [{**_ITEM, "statement": ""}]})), "se.json: item 0 is missing 'statement'"),
        "survey whitespace statement": (prof("--survey", sv("sw.json", {"items": [{**_ITEM, "statement": "   "}]})), "sw.json: item 0 is missing 'statement'"),
        "survey NaN statement": (prof("--survey", _w(t/"sn.json", '{"items": [{"id": "a", "statement": NaN, "value": "Hedonism"}]}')), "sn.json: item 0 is missing 'statement'"),
        "survey NaN item id": (prof("--survey", _w(t/"sid.json", '{"items": [{"id": NaN, "statement": "x", "value": "Hedonism"}]}')), "sid.json: item 0 is missing 'id'"),
        "survey item id a list": (prof("--survey", sv("sil.json", {"items": [{**_ITEM, "id": ["a"]}]})), "sil.json: item 0: 'id' must be a string or an integer"),
        "survey 10 MB statement": (prof("--survey", sv("big.json", {"items": [{**_ITEM, "statement": "x" * 10_000_000}]})), "big.json: item 0 (id 'a1'): 'statement' is 10000000 characters"),
        "--templates a": (prof("--templates", "a"), "templates: ids must be integers"),
        "--instructions x": (prof("--instructions", "x"), "instructions: ids must be integers"),
        # targets
        "target as bad JSON": (["finetune", "--target", '{"Hedonism": 1', "--out", out], "not valid JSON"),
        "target value without items in the survey": (["finetune", "--target", "Hedonism", "--out", out, "--survey",
                                                       sv("tr.json", {"items": [{**_ITEM, "value": "Tradition"}]})], "target Hedonism: the survey"),
        # input run folders and adapters
        "steering record without method": (prof("--adapter", _run_folder(t/"nomethod", json.dumps({"steering": {"targets": {}}}))), "has no 'method'"),
        "corrupt run.json in an input run": (prof("--adapter", _run_folder(t/"corrupt", '{"steering": ')), "corrupt/run.json: not valid JSON"),
        "run.json not an object": (prof("--adapter", _run_folder(t/"listrun", "[1, 2]")), "listrun/run.json: must be a JSON object"),
        "adapter of pickled weights only": (prof("--adapter", _pickled_adapter(t/"ad_bin")), "holds only adapter_model.bin"),
        # posts and games
        "posts not UTF-8": (["evaluate", "aita", "--posts", _w(t/"p.json", data=b'{"Hedonism": [{"post": "caf\xe9"}]}'), "--out", out], "p.json: not UTF-8"),
        "post id a list": (["evaluate", "aita", "--posts", sv("pid.json", {"Hedonism": [{"id": [1], "post": "x", "high_standard_stance": "YTA",
                                                                                           "low_standard_stance": "NTA"}]}), "--out", out], "'id' must be a string or an integer"),
        "game not UTF-8": (mach("--games", _w(t/"g.json", data=b'{"id": "caf\xe9"}')), "g.json: not UTF-8"),
        "game start a list": (mach("--games", sv("gsl.json", _game(start=["ch01"]))), "gsl.json: 'start' must be a scene id"),
        "game next a list": (mach("--games", sv("gnl.json", _game(next=["x"]))), "choice 0 next -> ['x']"),
        "empty games folder": (mach("--games", str(Path(_w(t/"nogames"/"README.txt", "x")).parent)), "holds no game files"),
    }

def _pickled_adapter(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d/"adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "peft_type": "LORA"}))
    (d/"adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return str(d)

@pytest.fixture(scope="module")
def folder(tmp_path_factory): return tmp_path_factory.mktemp("bad2")

def _names():
    import tempfile
    return list(cases(Path(tempfile.mkdtemp())))

@pytest.mark.parametrize("name", _names())
def test_bad_input_is_named_and_nothing_is_written(name, folder, monkeypatch):
    import s2b.cli, s2b.grid, s2b.models
    def reached(*a, **k): raise AssertionError(f"{name}: the bad input reached a stage run")
    monkeypatch.setattr(s2b.cli, "execute_stage", reached); monkeypatch.setattr(s2b.grid, "execute_stage", reached)
    monkeypatch.setattr(s2b.models, "load_model", reached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); monkeypatch.setenv("S2B_ALLOW_OTHER_BASE", "")
    argv, want = cases(folder)[name]
    rc, text = run_case(argv)
    assert rc not in (0, None), f"{name}: exit {rc}: {text}"
    assert "Traceback" not in text, text
    lines = [l for l in text.strip().splitlines() if l.strip()]
    assert len(lines) == 1, f"{name}: {len(lines)} lines:\n{text}"
    assert want in lines[0], f"{name}: {lines[0]!r} does not contain {want!r}"
    assert not (folder/"out").exists() and not (folder/"papermill_runs").exists()      # no run folder was made

def test_at_least_40_more_classes(): assert len(_names()) >= 40

def test_a_csv_survey_with_a_byte_order_mark_is_read(tmp_path):
    "Excel writes CSV with a byte-order mark: the first column is still `id`."
    from s2b.survey import load_survey
    p = tmp_path/"bom.csv"; p.write_bytes("\ufeffid,statement,value\na1,I like maps,Hedonism\n".encode("utf-8"))
    assert [i.id for i in load_survey(p).items] == ["a1"]

def test_an_upstream_game_without_its_source_or_variables_entry_is_named(tmp_path):
    "Upstream loads a game's source/ file and its variables.json entry too: one is missing, one line names both."
    from s2b.upstream import upstream_games
    d = tmp_path/"game_data"
    for f in ("trees/a_game_tree.json", "annotations_clean/a.json", "trees/b_game_tree.json", "annotations_clean/b.json", "source/a.json"):
        (d/f).parent.mkdir(parents=True, exist_ok=True); (d/f).write_text("{}")
    (d/"game_metadata.json").write_text(json.dumps({"a": {}, "b": {}})); (d/"variables.json").write_text(json.dumps({"a": {}}))
    assert upstream_games(tmp_path) == ["a"]
    with pytest.raises(FileNotFoundError, match=r"'b': missing its source file in .*source, its entry in .*variables.json"):
        upstream_games(tmp_path, ["b"])

if __name__ == "__main__":
    import tempfile
    os.environ["HF_HUB_OFFLINE"] = "1"
    t = Path(tempfile.mkdtemp())
    print("| class | message |\n|---|---|")
    for name, (argv, _) in cases(t).items():
        rc, text = run_case(argv)
        print(f"| {name} | `{text.strip().replace(str(t), '<tmp>').replace('|', '/')}` (exit {rc}) |")
