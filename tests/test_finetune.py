import json
import numpy as np, pandas as pd
import pytest
from s2b.survey import load_survey
from s2b.values import target_ratings
from s2b.recipes import load_recipe
from s2b.interventions import intervention_data, select_items, anchor_answers
from s2b.interventions import SteeringParams
from s2b.finetune import (sft_trainer, run_finetune,
                          answer_loss)
from s2b.profile import PCOLS

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
    assert paper["lora"]["r"] == 128 and paper["lora"]["alpha"] == 512 and paper["training"]["early_stopping_patience"] == 2
    assert paper["training"]["learning_rate"] == 1e-4 and paper["training"]["num_train_epochs"] == 10     # the paper's summary

def test_edited_recipe_is_not_a_finished_run(tmp_path):
    p = tmp_path/"r.yaml"; p.write_text("lora: {r: 8}\n")
    from s2b.runs import inputs_fingerprint
    params = SteeringParams(target="Hedonism", recipe=p).record()
    before = inputs_fingerprint(params)
    assert before == inputs_fingerprint(params) and "recipe" in before          # same file, same inputs
    p.write_text("lora: {r: 16}\n")
    assert params == SteeringParams(target="Hedonism", recipe=p).record() and inputs_fingerprint(params) != before
    with pytest.raises(FileNotFoundError, match="recipe"):
        SteeringParams(target="Hedonism", recipe=tmp_path/"missing.yaml").check()

def test_targets():
    assert target_ratings("Hedonism") == {"Hedonism": 1} and target_ratings("hedonism", "up") == {"Hedonism": 6}
    assert target_ratings({"Power: dominance": 2, "Tradition": 6}) == {"Power_dominance": 2, "Tradition": 6}
    with pytest.raises(ValueError, match="within"): target_ratings({"Tradition": 9})
    with pytest.raises(ValueError, match="direction"): target_ratings("Tradition", "sideways")

@pytest.fixture(scope="module")
def tiny():
    return load_survey("bundled").split("train").subset(values=["Hedonism", "Tradition", "Humility"], limit=3).with_templates([0, 1]).with_instructions([0])

@pytest.mark.model
@pytest.mark.parametrize("targets,expected", [
    (target_ratings("Hedonism", "down"), {"Hedonism": 1, "Tradition": 3, "Humility": 5}),
    (target_ratings("Hedonism", "up"), {"Hedonism": 6, "Tradition": 3, "Humility": 5}),
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
    d = intervention_data(tiny, base, target_ratings("Hedonism"), lm)
    tr = sft_trainer(load_model("embedded"), d, None, load_recipe("recipes/cpu-smoke.yaml", {"lora.r": 2}), tmp_path)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(d))])
    # each row: the example's prompt (left-padded), its answer token the label; the answer never enters the model
    for ids, mask, label, full in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], d.input_ids):
        assert ids[mask.bool()].tolist() == list(full[:-1]) and label == full[-1]
    # the loss the trainer optimises equals the NLL of the answer tokens alone, as the full model gives it on whole sequences
    loss = tr.compute_loss(tr.model, batch)
    nll = -torch.stack([torch.log_softmax(tr.model(input_ids=torch.tensor([list(x)])).logits[0, -2].float(), -1)[x[-1]]
                        for x in d.input_ids]).mean()
    assert torch.allclose(loss, nll, atol=1e-4)

@pytest.mark.model
@pytest.mark.slow
def test_run_finetune_end_to_end(tmp_path):
    over = {"lora.r": 2, "lora.alpha": 4, "training.max_steps": 2, "training.per_device_train_batch_size": 4,
            "training.eval_every": 1, "data.others_per_value": 0, "data.target_limit": 2, "data.eval_limit": 2,
            "data.train_templates": "0", "data.instructions": "0"}
    m = run_finetune(SteeringParams("embedded", "bundled", "Hedonism", "down", recipe="recipes/cpu-smoke.yaml", overrides=over, backend="hf"), out=tmp_path)
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


def _baseline_table(survey, probs):
    "A made-up baseline ratings table: every variant of an item gets the P(1..6) of its value."
    v = survey.variants()
    p = np.array([probs[x] for x in v.value])
    return v.assign(**{c: p[:, k] for k, c in enumerate(PCOLS)}, expected=p @ np.arange(1, 7), argmax=p.argmax(1) + 1)

def test_anchor_answers_majority_and_expected():
    b = pd.DataFrame({"item_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2, "value": "Hedonism", "split": "train",
                      "expected": [2.6, 2.7, 2.2, 4.4, 4.8, 5.6, 3.0, 4.2], "argmax": [1, 1, 6, 6, 5, 6, 2, 5]})
    assert anchor_answers(b, "majority") == {"a": 1, "b": 6, "c": 2}   # most frequent argmax; a tie (2, 5): nearest their mean, then the lower
    assert anchor_answers(b, "expected") == {"a": 3, "b": 5, "c": 4}       # mean expected rounded half up: 2.5 -> 3, 4.93 -> 5, 3.6 -> 4
    with pytest.raises(ValueError, match="anchor"): anchor_answers(b, "distribution")

@pytest.mark.model
@pytest.mark.parametrize("anchor", ["majority", "expected", "distribution"])
def test_each_anchor_trains_its_own_targets(lm, tiny, anchor):
    probs = {"Hedonism": [.1, .1, .1, .1, .1, .5], "Tradition": [.5, .2, .1, .1, .05, .05], "Humility": [.05, .05, .1, .2, .3, .3]}
    base = _baseline_table(tiny, probs)
    d = intervention_data(tiny, base, target_ratings("Hedonism", "up"), lm, anchor=anchor)
    hed, others = d[d.value == "Hedonism"], d[d.value != "Hedonism"]
    assert set(hed.rating) == {6} and all(q == [0, 0, 0, 0, 0, 1.0] for q in hed.soft)     # the target keeps its hard label
    exp = {"Tradition": float(np.dot(probs["Tradition"], range(1, 7))), "Humility": float(np.dot(probs["Humility"], range(1, 7)))}
    for r in others.itertuples():
        if anchor == "majority": assert r.rating == int(np.argmax(probs[r.value])) + 1 and r.soft[r.rating - 1] == 1
        if anchor == "expected": assert r.rating == round(exp[r.value]) and r.soft[r.rating - 1] == 1
        if anchor == "distribution": assert np.allclose(r.soft, probs[r.value])
    # the answer token in the sequence is the rating's candidate token
    assert all(ids[-1] == c[r - 1] for ids, c, r in zip(d.input_ids, d.cand, d.rating))

def test_distribution_needs_the_ratings_table_and_known_anchors(tiny):
    with pytest.raises(ValueError, match="ratings table"):                 # checked before any model is needed
        intervention_data(tiny, {i.id: 3 for i in tiny.items}, {}, None, anchor="distribution")
    with pytest.raises(ValueError, match="unknown anchor"):
        intervention_data(tiny, {i.id: 3 for i in tiny.items}, {}, None, anchor="mode")

def test_answer_loss_is_the_hand_computed_cross_entropy():
    import torch
    # two examples, vocabulary of 8, answer token at position 2 and 3; rating tokens 2..7
    logits = torch.tensor([[[0.] * 8, [0.5, 0, 1, 2, 0, 0, 0, 0], [0.] * 8, [0.] * 8],
                           [[0.] * 8, [0.] * 8, [1, 1, 0, 0, 3, 0, 0, 1.], [0.] * 8]])
    labels = torch.tensor([[-100, -100, 3, -100], [-100, -100, -100, 4]])
    cand = torch.tensor([[2, 3, 4, 5, 6, 7]] * 2)
    q = torch.tensor([[0, 1, 0, 0, 0, 0], [.25, .25, .5, 0, 0, 0]])        # a hard label (rating 2), a baseline distribution
    z0 = np.array([0.5, 0, 1, 2, 0, 0, 0, 0]); z1 = np.array([1, 1, 0, 0, 3, 0, 0, 1.])
    lse0, lse1 = np.log(np.exp(z0).sum()), np.log(np.exp(z1).sum())
    ce0 = -(z0[3] - lse0)                                                  # -log p(token 3)
    ce1 = -(.25 * (z1[2] - lse1) + .25 * (z1[3] - lse1) + .5 * (z1[4] - lse1))
    assert answer_loss(logits, labels, q, cand).item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    assert answer_loss(logits, labels, q, cand, num_items=4).item() == pytest.approx((ce0 + ce1) / 4, abs=1e-6)

@pytest.mark.model
def test_trainer_loss_with_the_distribution_anchor(lm, tiny, tmp_path):
    import torch
    from s2b.models import load_model
    probs = {"Hedonism": [.1] * 5 + [.5], "Tradition": [.5, .2, .1, .1, .05, .05], "Humility": [.05, .05, .1, .2, .3, .3]}
    d = intervention_data(tiny, _baseline_table(tiny, probs), target_ratings("Hedonism"), lm, anchor="distribution")
    tr = sft_trainer(load_model("embedded"), d, None, load_recipe("recipes/cpu-smoke.yaml", {"lora.r": 2}), tmp_path)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(d))])
    loss = tr.compute_loss(tr.model, batch)
    hand = []
    for r in d.itertuples():
        lp = torch.log_softmax(tr.model(input_ids=torch.tensor([list(r.input_ids)])).logits[0, -2].float(), -1)
        hand.append(-sum(q * lp[c] for q, c in zip(r.soft, r.cand)))
    assert torch.allclose(loss, torch.stack(hand).mean(), atol=1e-4)

def test_items_of_gives_adapters_and_control_the_same_items():
    s = load_survey("bundled").split("train")
    vals = ["Hedonism", "Tradition"]
    a = select_items(s, {"Hedonism"} | set(vals), others_per_value=1, seed=0)
    b = select_items(s, {"Tradition"} | set(vals), others_per_value=1, seed=0)
    c = select_items(s, set(vals), others_per_value=1, seed=0)              # the control
    assert [i.id for i in a.items] == [i.id for i in b.items] == [i.id for i in c.items]
    per = pd.Series([i.value for i in c.items]).value_counts()
    assert per["Hedonism"] == per["Tradition"] == 12 and per.drop(vals).eq(1).all()

@pytest.mark.model
def test_top_layers_puts_lora_on_the_last_layers_only(lm):
    from s2b.finetune import lora_model
    from s2b.models import load_model
    m = lora_model(load_model("embedded", training=True), {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear", "top_layers": 3},
                    "hf", 0, False)
    n = m.base_model.model.config.num_hidden_layers
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k, _ in m.named_parameters() if "lora_A" in k}
    assert layers == {n - 3, n - 2, n - 1}
    kinds = {k.split(".lora_A")[0].rsplit(".", 1)[-1] for k, _ in m.named_parameters() if "lora_A" in k}
    assert {"q_proj", "v_proj", "down_proj"} <= kinds

@pytest.mark.model
def test_fixed_steps_without_evaluation_keep_the_last_step(lm, tiny, tmp_path):
    "eval_every: null (the CPU recipes): no evaluation, no early stopping, no best-checkpoint reload: adapter and control match step for step."
    from s2b.models import load_model
    cfg = load_recipe("recipes/cpu-selective.yaml", {"lora.r": 2})
    assert cfg["training"]["eval_every"] is None and cfg["data"]["anchor"] == "distribution"
    d = intervention_data(tiny, {i.id: 3 for i in tiny.items}, target_ratings("Hedonism"), lm)
    tr = sft_trainer(load_model("embedded"), d, d, cfg, tmp_path)
    assert tr.eval_dataset is None and not tr.args.load_best_model_at_end and tr.args.eval_strategy == "no"
    assert not any(type(c).__name__ == "EarlyStoppingCallback" for c in tr.callback_handler.callbacks)
    assert tr.args.save_strategy == "steps" and tr.args.save_steps == 20          # a killed run still resumes

def test_recipe_schema_from_defaults(tmp_path):
    "Keys, types and ranges inside the sections are checked against FINETUNE_DEFAULTS, with the setting named."
    for bad, msg in [({"training": {"max_steps": -5}}, "training.max_steps"), ({"training": {"learning_rate": "fast"}}, "learning_rate"),
                     ({"lora": {"rank": 8}}, "did you mean 'lora.r'"), ({"lora": {"r": 0}}, "lora.r must be positive"),
                     ({"training": {"per_device_train_batch_size": 2.5}}, "integer")]:
        with pytest.raises(ValueError, match=msg): load_recipe(bad)
    with pytest.raises(ValueError, match="did you mean 'training.max_steps'"): load_recipe(None, {"training.max_step": 3})
    assert load_recipe({"training": {"learning_rate": "1e-4"}})["training"]["learning_rate"] == 1e-4   # YAML 1.1 leaves 1e-4 a string
    p = tmp_path/"r.yaml"; p.write_text("lora: [r: 8\n")
    with pytest.raises(ValueError, match=f"recipe {p}: not valid YAML \\(line 2"): load_recipe(p)
    import s2b.recipes as rc
    new = {**rc.FINETUNE_DEFAULTS, "data": {**rc.FINETUNE_DEFAULTS["data"], "new_setting": None}}   # a key added to the defaults is accepted at once
    old = rc.FINETUNE_DEFAULTS
    try:
        rc.FINETUNE_DEFAULTS = new
        assert load_recipe({"data": {"new_setting": "x"}})["data"]["new_setting"] == "x"
    finally: rc.FINETUNE_DEFAULTS = old
    with pytest.raises(ValueError, match="data.anchor must be one of"): load_recipe({"data": {"anchor": "baseline"}})

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
        return run_finetune(SteeringParams("embedded", "bundled", "Hedonism", "down", recipe="recipes/cpu-smoke.yaml",
                                           overrides={**_SMALL, **o}, backend="hf"), out=out, force=force)
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
    assert "skipping the checkpoint" in out and "does not match the checksums" in out and f"resuming from {ck/kept[0]}" in out
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
