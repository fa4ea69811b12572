import json
import numpy as np, pandas as pd
import pytest
from s2b.survey import load_survey
from s2b.finetune import target_answers, intervention_data, load_recipe, sft_trainer, select_items, run_finetune, finetune_params

def test_recipe_override_order(tmp_path):
    p = tmp_path/"r.yaml"; p.write_text("lora: {r: 8}\ntraining: {learning_rate: 0.01}\n")
    cfg = load_recipe(p, {"lora.r": 4, "training.max_steps": None})
    assert cfg["lora"]["r"] == 4                       # command line beats recipe
    assert cfg["training"]["learning_rate"] == 0.01    # recipe beats defaults
    assert cfg["lora"]["alpha"] == 512                 # defaults (the paper's) fill the rest
    assert cfg["training"]["max_steps"] == -1          # a None override changes nothing
    with pytest.raises(ValueError, match="unknown sections"):
        load_recipe({"lora": {}, "optimizer": {}})
    paper = load_recipe("recipes/paper.yaml")
    assert paper["lora"]["r"] == 256 and paper["training"]["early_stopping_patience"] == 2

def test_edited_recipe_is_not_a_finished_run(tmp_path):
    p = tmp_path/"r.yaml"; p.write_text("lora: {r: 8}\n")
    before = finetune_params(target="Hedonism", recipe=p)
    assert before == finetune_params(target="Hedonism", recipe=p)     # same file, same parameters
    p.write_text("lora: {r: 16}\n")
    after = finetune_params(target="Hedonism", recipe=p)
    assert before["recipe"] == after["recipe"] and before["recipe_sha256"] != after["recipe_sha256"]
    with pytest.raises(FileNotFoundError, match="recipe"):
        finetune_params(target="Hedonism", recipe=tmp_path/"missing.yaml")

def test_targets():
    assert target_answers("Hedonism") == {"Hedonism": 1} and target_answers("hedonism", "up") == {"Hedonism": 6}
    assert target_answers({"Power: dominance": 2, "Tradition": 6}) == {"Power_dominance": 2, "Tradition": 6}
    with pytest.raises(ValueError, match="within"): target_answers({"Tradition": 9})
    with pytest.raises(ValueError, match="direction"): target_answers("Tradition", "sideways")

@pytest.fixture(scope="module")
def tiny():
    return load_survey("bundled").split("train").subset(values=["Hedonism", "Tradition", "Humility"], limit=3).with_templates([0, 1]).with_instructions([0])

@pytest.mark.model
@pytest.mark.parametrize("targets,expected", [
    (target_answers("Hedonism", "down"), {"Hedonism": 1, "Tradition": 3, "Humility": 5}),
    (target_answers("Hedonism", "up"), {"Hedonism": 6, "Tradition": 3, "Humility": 5}),
    ({"Hedonism": 2, "Humility": 6}, {"Hedonism": 2, "Tradition": 3, "Humility": 6}),
    ({}, {"Hedonism": 4, "Tradition": 3, "Humility": 5}),                     # the control keeps the baseline
])
def test_intervention_data(lm, tiny, targets, expected):
    base = {i.id: {"Hedonism": 4, "Tradition": 3, "Humility": 5}[i.value] for i in tiny.items}
    d = intervention_data(tiny, base, targets, lm)
    assert len(d) == len(tiny) * 2                          # one example per item × variant
    for v, r in expected.items():
        assert set(d[d.value == v].rating) == {r}
        ans = {lm.tokenizer.decode(ids[-1:]) for ids in d[d.value == v].input_ids}
        assert ans == {str(r)}

@pytest.mark.model
def test_prompt_tokens_carry_no_loss(lm, tiny, tmp_path):
    import torch
    from s2b.models import load_model
    base = {i.id: 3 for i in tiny.items}
    d = intervention_data(tiny, base, target_answers("Hedonism"), lm)
    tr = sft_trainer(load_model("embedded"), d, None, load_recipe("recipes/cpu-smoke.yaml", {"lora.r": 2}), tmp_path)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(d))])
    lens = [len(x) for x in d.input_ids]
    for labels, ids, n in zip(batch["labels"], batch["input_ids"], lens):
        assert (labels != -100).nonzero().flatten().tolist() == [n - 1] and labels[n - 1] == ids[n - 1]
    # the loss the trainer optimises equals the NLL of the answer tokens alone
    loss = tr.model(**batch).loss
    logits = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits.float(), -1)
    nll = -torch.stack([lp[i, n - 2, batch["input_ids"][i, n - 1]] for i, n in enumerate(lens)]).mean()
    assert torch.allclose(loss, nll, atol=1e-4)

@pytest.mark.model
@pytest.mark.slow
def test_run_finetune_end_to_end(tmp_path):
    over = {"lora.r": 2, "lora.alpha": 4, "training.max_steps": 2, "training.per_device_train_batch_size": 4,
            "training.eval_every": 1, "data.others_per_value": 0, "data.target_limit": 2, "data.eval_limit": 2,
            "data.train_templates": "0", "data.instructions": "0"}
    m = run_finetune("embedded", "bundled", "Hedonism", "down", recipe="recipes/cpu-smoke.yaml", overrides=over, backend="hf", out=tmp_path)
    assert m["targets"] == {"Hedonism": 1} and m["steps"] == 2 and m["backend"] == "hf" and m["n_train"] == 2
    for f in ("adapter/adapter_config.json", "metrics.json", "run.json", "loss.png", "loss.csv", "data.parquet"):
        assert (tmp_path/f).exists(), f
    rec = json.loads((tmp_path/"run.json").read_text())
    assert rec["recipe"]["lora"]["r"] == 2 and rec["seed"] == 0
    data = pd.read_parquet(tmp_path/"data.parquet")
    assert set(data[data.value == "Hedonism"].rating) == {1}
    # the adapter kept is the best checkpoint: its eval loss is the lowest one logged, and no extra evaluation ran
    evals = pd.read_csv(tmp_path/"loss.csv").eval_loss.dropna()
    assert len(evals) == 2 and m["eval_loss"] == pytest.approx(evals.min()) and m["eval_seconds"] > 0

def test_recipe_schema_from_defaults(tmp_path):
    "Keys, types and ranges inside the sections are checked against DEFAULTS, with the setting named."
    for bad, msg in [({"training": {"max_steps": -5}}, "training.max_steps"), ({"training": {"learning_rate": "fast"}}, "learning_rate"),
                     ({"lora": {"rank": 8}}, "did you mean 'lora.r'"), ({"lora": {"r": 0}}, "lora.r must be positive"),
                     ({"training": {"per_device_train_batch_size": 2.5}}, "integer")]:
        with pytest.raises(ValueError, match=msg): load_recipe(bad)
    with pytest.raises(ValueError, match="did you mean 'training.max_steps'"): load_recipe(None, {"training.max_step": 3})
    assert load_recipe({"training": {"learning_rate": "1e-4"}})["training"]["learning_rate"] == 1e-4   # YAML 1.1 leaves 1e-4 a string
    p = tmp_path/"r.yaml"; p.write_text("lora: [r: 8\n")
    with pytest.raises(ValueError, match=f"recipe {p}: not valid YAML \\(line 2"): load_recipe(p)
    import s2b.finetune as ft
    new = {**ft.DEFAULTS, "data": {**ft.DEFAULTS["data"], "anchor": None}}   # a key added to DEFAULTS is accepted at once
    old = ft.DEFAULTS
    try:
        ft.DEFAULTS = new
        assert load_recipe({"data": {"anchor": "baseline"}})["data"]["anchor"] == "baseline"
    finally: ft.DEFAULTS = old

_SMALL = {"lora.r": 2, "lora.alpha": 4, "training.max_steps": 4, "training.per_device_train_batch_size": 2,
          "training.eval_every": 1, "training.warmup_ratio": 0.0, "training.early_stopping_patience": 10,
          "data.others_per_value": 0, "data.target_limit": 2,
          "data.eval_limit": 1, "data.train_templates": "0,1", "data.instructions": "0"}

class _Killed(Exception): pass

def _kill_at(monkeypatch, step):
    "Make the next run_finetune stop right after the checkpoint of `step` is saved (a kill)."
    import s2b.finetune as ft
    from transformers import TrainerCallback
    real = ft.sft_trainer
    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step >= step: raise _Killed
    def patched(*a, **k):
        tr = real(*a, **k); tr.add_callback(Kill()); return tr
    monkeypatch.setattr(ft, "sft_trainer", patched)
    return lambda: monkeypatch.setattr(ft, "sft_trainer", real)

@pytest.mark.model
@pytest.mark.slow
def test_resume_belongs_to_its_parameters(tmp_path, monkeypatch, capsys):
    "A killed fine-tune resumes from its last complete checkpoint only with the same parameters, and reports the whole run."
    def run(out, force=False, **o):
        return run_finetune("embedded", "bundled", "Hedonism", "down", recipe="recipes/cpu-smoke.yaml",
                            overrides={**_SMALL, **o}, backend="hf", out=out, force=force)
    clean = run(tmp_path/"clean")
    undo = _kill_at(monkeypatch, 3)
    with pytest.raises(_Killed): run(tmp_path/"a")
    undo()
    ck = tmp_path/"a"/"checkpoints"
    kept = sorted((d.name for d in ck.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    assert kept[-1] == "checkpoint-3" and len(kept) == 2
    w = ck/"checkpoint-3"/"adapter_model.safetensors"; w.write_bytes(w.read_bytes()[:len(w.read_bytes()) // 2])   # half written
    capsys.readouterr()
    m = run(tmp_path/"a")
    out = capsys.readouterr().out
    assert "skipping the incomplete checkpoint" in out and f"resuming from {ck/kept[0]}" in out
    assert m["steps"] == 4 and m["resumed_from"] == kept[0]
    assert m["train_loss"] == pytest.approx(clean["train_loss"], abs=1e-5)          # the whole run's loss, not the resumed part's
    assert m["seconds"] > m["session_seconds"]                                       # the time before the kill counts
    assert clean["train_loss"] == pytest.approx(float(pd.read_csv(tmp_path/"clean"/"loss.csv").train_loss.dropna().iloc[-1]), abs=1e-4)
    # a killed run rerun with another learning rate starts afresh
    undo = _kill_at(monkeypatch, 2)
    with pytest.raises(_Killed): run(tmp_path/"b")
    undo()
    capsys.readouterr()
    m2 = run(tmp_path/"b", **{"training.learning_rate": 1e-4})
    out = capsys.readouterr().out
    assert "other parameters or inputs; starting afresh" in out and "resuming from" not in out and m2["resumed_from"] is None
    # --force clears checkpoints, even those of the same parameters
    (tmp_path/"b"/"checkpoints"/"checkpoint-1").mkdir(parents=True)
    m3 = run(tmp_path/"b", force=True, **{"training.learning_rate": 1e-4, "training.max_steps": 1})
    out = capsys.readouterr().out
    assert "--force: clearing" in out and "resuming from" not in out and m3["steps"] == 1
