"The training step computes only what the loss reads: the same loss, gradients and adapters as the full model's step."
import pytest
import pandas as pd
from s2b.survey import load_survey
from s2b.values import target_ratings
from s2b.recipes import load_recipe
from s2b.interventions import intervention_data
from s2b.finetune import answer_loss, answer_features, with_labels, lora_model, sft_trainer, run_finetune
from s2b.interventions import SteeringParams
from s2b.trainstep import prompt_batch, answer_logits, slot_loss, frozen_states
from s2b.profile import PCOLS

pytestmark = pytest.mark.model
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}

@pytest.fixture(scope="module")
def data(lm):
    "8 examples, hard and soft answers (the distribution anchor), of different lengths."
    import numpy as np
    s = load_survey("bundled").split("train").subset(values=["Hedonism", "Tradition"], limit=2).with_templates([0, 1]).with_instructions([0, 3])
    v = s.variants()
    p = np.array([[.1, .2, .3, .2, .1, .1] if x == "Tradition" else [1/6] * 6 for x in v.value])
    base = v.assign(**{c: p[:, k] for k, c in enumerate(PCOLS)}, expected=p @ np.arange(1, 7), argmax=p.argmax(1) + 1)
    return intervention_data(s, base, target_ratings("Hedonism", "up"), lm, anchor="distribution")

def _lora(top, dtype=None):
    from s2b.models import load_model
    import torch
    torch.manual_seed(0)
    m = lora_model(load_model("embedded", training=True), {**LORA, "top_layers": top}, "hf", 0, False)
    if dtype is not None: m.to(dtype)
    with torch.no_grad():                      # LoRA B is zero at the start: give it weights, so every LoRA gradient is non-zero
        for n, p in m.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.02)
    return m

def _loss_and_grads(model, loss):
    model.zero_grad(); loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

def _todays(model, d, pad):
    "Yesterday's step: whole right-padded sequences, every position's logits, `answer_loss`."
    import torch
    d = with_labels(d); L = d.input_ids.map(len).max()
    ids = torch.tensor([list(x) + [pad] * (L - len(x)) for x in d.input_ids])
    mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in d.input_ids])
    labels = torch.tensor([list(x) + [-100] * (L - len(x)) for x in d.labels])
    soft, cand = torch.tensor(list(d.soft), dtype=torch.float32), torch.tensor(list(d.cand))
    return answer_loss(model(input_ids=ids, attention_mask=mask).logits, labels, soft, cand)

# float64: the steps are the same sum (differences ~1e-8, the loss's float32 softmax); float32, as trained: the different
# padding and lengths change the order of float32 sums, 1.3e-5 at most measured on gradients up to 0.23
@pytest.mark.parametrize("top,dtype,tol", [(None, "float64", 1e-5), (10, "float64", 1e-5), (10, "float32", 5e-5)])
def test_answer_slot_step_equals_the_full_step(lm, data, top, dtype, tol):
    "Loss and every LoRA gradient of the answer-slot step (and, with top_layers, of the cached step) equal the full step's."
    import torch
    model, pad = _lora(top, getattr(torch, dtype)), lm.tokenizer.pad_token_id
    ref_loss, ref = _loss_and_grads(model, _todays(model, data, pad))
    feats = answer_features(data)
    b = prompt_batch(feats, pad)
    loss, g = _loss_and_grads(model, slot_loss(answer_logits(model, b)[0], b["soft"], b["cand"]))
    runs = [(loss, g)]
    fs = frozen_states(lm, model, [f["input_ids"] for f in feats])
    assert (fs is None) == (top is None)
    if fs is not None:
        assert fs.layer == 20 and fs.nbytes == sum(len(f["input_ids"]) for f in feats) * 576 * model.dtype.itemsize
        bf = prompt_batch(feats, pad, [fs[f["input_ids"]] for f in feats])
        runs.append(_loss_and_grads(model, slot_loss(answer_logits(model, bf, fs.layer)[0], bf["soft"], bf["cand"])))
    for loss, g in runs:
        assert abs(loss.item() - ref_loss.item()) < 1e-5
        assert g.keys() == ref.keys() and len(g) == (30 if top is None else 10) * 7 * 2
        worst = max(float((g[n] - ref[n]).abs().max()) for n in ref)
        assert worst < tol, worst

def _train(lm, data, cache: bool, tmp, steps=6):
    from s2b.models import load_model
    import transformers
    transformers.set_seed(0)                   # as run_finetune does: the same LoRA initialisation
    cfg = load_recipe("recipes/cpu-selective.yaml", {"lora.r": 4, "lora.alpha": 8, "training.max_steps": steps,
                                                    "training.per_device_train_batch_size": 4, "training.frozen_cache": cache})
    tr = sft_trainer(load_model("embedded"), data, None, cfg, tmp)
    assert (tr.frozen is not None) == cache
    tr.train()
    return {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" in n}, tr.state.log_history

# 6 steps at lr 2e-3: float32 noise (1e-7) in the states grows through Adam, whose first updates are ±lr for any gradient:
# 8.9e-5 measured, while the LoRA B weights moved 2e-3 and more
ADAPTER_TOL = 5e-4

def test_cached_training_gives_the_same_adapter(lm, data, tmp_path):
    "Same seed, same batches: the adapter trained on the cached states equals the one trained on the full model."
    a, ha = _train(lm, data, False, tmp_path/"a")
    b, hb = _train(lm, data, True, tmp_path/"b")
    top = load_recipe("recipes/cpu-selective.yaml")["lora"]["top_layers"]          # A and B of 7 linear layers in each adapted layer
    assert a.keys() == b.keys() and len(a) == top * 7 * 2
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    moved = max(float(a[n].abs().max()) for n in a if "lora_B" in n)           # it trained: B moved from 0
    assert diff < ADAPTER_TOL and moved > 4 * ADAPTER_TOL, (diff, moved)
    la, lb = [h["loss"] for h in ha if "loss" in h], [h["loss"] for h in hb if "loss" in h]
    assert len(la) == 6 and pytest.approx(la, abs=1e-5) == lb

@pytest.mark.parametrize("batch,accumulate", [(8, 1), (4, 2)])
def test_a_logged_step_loss_is_the_mean_over_its_examples(lm, data, tmp_path, batch, accumulate):
    "The Trainer divides the summed loss by the number of examples (it once counted one fewer per batch: a loss ×8/7)."
    import torch
    from s2b.models import load_model
    model = load_model("embedded")
    with torch.no_grad():
        logits, _ = answer_logits(model.model, prompt_batch(answer_features(data), model.tokenizer.pad_token_id))
        f = answer_features(data)
        want = float(slot_loss(logits, torch.tensor([x["soft"] for x in f]), torch.tensor([x["cand"] for x in f])))
    cfg = load_recipe("recipes/cpu-selective.yaml", {"lora.r": 4, "lora.alpha": 8, "training.max_steps": 1, "training.frozen_cache": False,
                                                    "training.per_device_train_batch_size": batch,
                                                    "training.gradient_accumulation_steps": accumulate})
    tr = sft_trainer(model, data, None, cfg, tmp_path)     # LoRA's B starts at 0: the first step's loss is the base model's
    tr.train()
    assert len(data) == 8 and [h["loss"] for h in tr.state.log_history if "loss" in h] == [pytest.approx(want, abs=1e-4)]

def test_bad_answer_marks_are_named():
    with pytest.raises(ValueError, match="example 0: completion_mask must mark exactly one answer token, it marks 2"):
        answer_features(pd.DataFrame({"input_ids": [[1, 2, 3]], "completion_mask": [[0, 1, 1]], "soft": [[1.]], "cand": [[3]]}))

class _Killed(Exception): pass

@pytest.mark.slow
def test_a_resumed_run_uses_the_cache(tmp_path, monkeypatch, capsys):
    "Killed after its checkpoint at step 2 and resumed, a cached run ends with the adapter of an uninterrupted one."
    import torch, s2b.finetune as ft
    from safetensors.torch import load_file
    from transformers import TrainerCallback
    over = {"lora.r": 2, "lora.alpha": 4, "lora.top_layers": 4, "training.max_steps": 4, "training.per_device_train_batch_size": 2,
            "training.eval_every": 2, "training.warmup_ratio": 0.0, "training.early_stopping_patience": 10, "data.others_per_value": 0,
            "data.target_limit": 2, "data.eval_limit": 1, "data.train_templates": "0,1", "data.instructions": "0"}
    run = lambda out: run_finetune(SteeringParams("embedded", "bundled", "Hedonism", "down", recipe="recipes/cpu-smoke.yaml",
                                                  overrides=over, backend="hf"), out=out)
    run(tmp_path/"clean")
    real = ft.sft_trainer
    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step >= 2: raise _Killed
    monkeypatch.setattr(ft, "sft_trainer", lambda *a, **k: (lambda tr: (tr.add_callback(Kill()), tr)[1])(real(*a, **k)))
    with pytest.raises(_Killed): run(tmp_path/"a")
    monkeypatch.setattr(ft, "sft_trainer", real)
    capsys.readouterr()
    m = run(tmp_path/"a")
    out = capsys.readouterr().out
    assert "resuming from" in out and m["resumed_from"] == "checkpoint-2" and "the states entering layer 26" in out
    assert m["frozen_cache"]["layer"] == 26 and m["frozen_cache"]["computed"] == 0 and m["frozen_cache"]["read"] > 0   # from disk
    a, b = (load_file(str(tmp_path/d/"adapter"/"adapter_model.safetensors")) for d in ("clean", "a"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < ADAPTER_TOL

def test_dpo_reads_the_same_states_for_policy_and_reference(tmp_path):
    "DPO's loss and LoRA gradients with the frozen cache equal those without it (float32, within 1e-5)."
    import torch
    from s2b.models import load_model
    from s2b.dpo import dpo_pairs, dpo_trainer
    s = load_survey("bundled").split("train").subset(values=["Hedonism", "Tradition"], limit=2).with_templates([0]).with_instructions([0])
    runs = []
    for cache in (False, True):
        lm = load_model("embedded", training=True)
        pairs = dpo_pairs(lm, s, {i.id: 3 for i in s.items}, {"Hedonism": 6})
        recipe = {"lora": {**LORA, "top_layers": 3}, "training": {"max_steps": 1, "frozen_cache": cache}}
        torch.manual_seed(0)
        tr = dpo_trainer(lm, pairs, recipe, tmp_path/str(cache))
        assert (tr.frozen is not None) == cache
        with torch.no_grad():
            for n, p in tr.model.named_parameters():
                if "lora_B" in n: p.normal_(0, 0.2)                # policy ≠ reference
        batch = tr.data_collator([tr.train_dataset[i] for i in range(len(pairs))])
        runs.append(_loss_and_grads(tr.model, tr.compute_loss(tr.model, batch)))
    (l0, g0), (l1, g1) = runs
    assert abs(l0.item() - l1.item()) < 1e-5 and abs(l0.item() - __import__("math").log(2)) > 1e-4
    assert g0.keys() == g1.keys() and max(float((g0[n] - g1[n]).abs().max()) for n in g0) < 1e-5
