"The three steering methods beside sft (s2b.persona, s2b.caa, s2b.dpo) on a tiny random Llama: fast, no download."
import math, re
import pytest
import torch

from s2b.values import VALUES
from s2b.survey import Survey, Item
from s2b.models import LM, prepare_tokenizer
from s2b.persona import persona_prompt, persona_examples, neutral_prompt
from s2b.caa import caa_pairs, caa_vectors, shuffled_pairs, save_vectors
from s2b.steering import add_vectors, load_vectors, decoder_layers
from s2b.dpo import dpo_pairs, train_dpo

INSTRUCTION = "Rate the statement from 1 to 6."
STATEMENTS = {"t1": ("I keep old customs", "Tradition"), "t2": ("I follow the ways my family always followed", "Tradition"),
              "h1": ("I enjoy good food", "Hedonism"), "h2": ("I like to have fun with my friends every day", "Hedonism")}

@pytest.fixture(scope="module")
def survey():
    "2 values × 2 train items, one instruction, two answer templates."
    items = [Item(i, s, v, "train") for i, (s, v) in STATEMENTS.items()]
    return Survey("tiny", items, [INSTRUCTION], ["My rating is {rating}", "Rating: {rating}"])

def _tokenizer():
    "A word-level tokenizer over the words the tiny survey and the plain chat fallback use (no chat template)."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    text = " ".join([INSTRUCTION, "User: Assistant: Statement: My rating is Rating:", *(s for s, _ in STATEMENTS.values())])
    words = sorted(set(text.split()) | {str(k) for k in range(1, 7)})
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *words])}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"))

def _tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=1, eos_token_id=2, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()

@pytest.fixture
def tiny():
    "A fresh tiny random Llama (3 layers, hidden 32) with the word-level tokenizer, as an `LM`."
    tok = _tokenizer()
    return LM(_tiny_model(len(tok)), tok, "tiny", "tiny", "cpu")

# --- persona -----------------------------------------------------------------------------------------------------

def test_persona_names_the_target_and_its_direction(survey):
    down, up = persona_prompt({"Tradition": 1}), persona_prompt({"tradition": 6})
    assert "Tradition" in down and "Tradition" in up and down != up
    assert "not guide you at all" in down and "above all else" in up
    ex = persona_examples(survey, {"Tradition": 1}, 5)
    assert sorted(ex) == sorted(s for s, v in STATEMENTS.values() if v == "Tradition")      # only the target's, at most n
    assert 'rate 1 of 6: "' in persona_prompt({"Tradition": 1}, ex)
    with pytest.raises(ValueError): persona_prompt({"Tradition": 1, "Hedonism": 6}, ex)    # whose rating? ambiguous

@pytest.mark.parametrize("targets,n", [({"Tradition": 1}, 0), ({"Hedonism": 6}, 2), ({"Face": 1, "Humility": 6}, 0)])
def test_neutral_prompt_has_no_values_and_the_same_length(survey, targets, n):
    like = persona_prompt(targets, {v: persona_examples(survey, {v: 1}, n) for v in targets} if n else ())
    neutral = neutral_prompt(like)
    assert neutral == neutral_prompt(like)
    assert abs(len(neutral.split()) / len(like.split()) - 1) <= 0.10 and abs(len(neutral) / len(like) - 1) <= 0.10
    words = set(re.findall(r"[a-z]+", neutral.lower()))
    assert not words & {p for v in VALUES for p in v.lower().split("_")}

# --- caa ---------------------------------------------------------------------------------------------------------

BASE = {"t1": 1, "t2": 4, "h1": 2, "h2": 1}

def test_caa_pairs(tiny, survey):
    pairs = caa_pairs(tiny, survey, BASE, {"Tradition": 6})
    assert list(pairs.item_id) == ["t1", "t1", "t2", "t2"] and list(pairs.template_id) == [0, 1, 0, 1]
    tok = tiny.tokenizer
    assert [tok.convert_ids_to_tokens(int(i)) for i in pairs.target_id] == ["6"] * 4
    assert [tok.convert_ids_to_tokens(int(i)) for i in pairs.baseline_id] == ["1", "1", "4", "4"]
    assert tok.convert_ids_to_tokens(pairs.prompt_ids[0][-3:]) == ["My", "rating", "is"]
    assert list(caa_pairs(tiny, survey, BASE, {"Tradition": 1}).item_id) == ["t2", "t2"]   # t1's baseline is the target

def _hand_vectors(lm, pairs):
    "The mean difference computed the plain way: one unpadded forward per sequence, every layer's output from the model."
    model = lm.model
    norm, model.model.norm = model.model.norm, torch.nn.Identity()    # so the last hidden state is the last layer's output
    try:
        diffs = []
        with torch.no_grad():
            for p, t, b in zip(pairs.prompt_ids, pairs.target_id, pairs.baseline_id):
                hs = [model(torch.tensor([list(p) + [a]]), output_hidden_states=True).hidden_states for a in (t, b)]
                diffs.append(torch.stack([hs[0][l + 1][0, -1] - hs[1][l + 1][0, -1] for l in range(len(hs[0]) - 1)]))
    finally: model.model.norm = norm
    return torch.stack(diffs).mean(0)

def test_caa_vectors_equal_a_hand_computed_mean_difference(tiny, survey):
    pairs = caa_pairs(tiny, survey, BASE, {"Tradition": 6, "Hedonism": 6})
    assert len(set(map(len, pairs.prompt_ids))) > 1                                         # batches need padding
    want = _hand_vectors(tiny, pairs)
    hooks = [len(b._forward_hooks) for b in decoder_layers(tiny.model)]    # transformers' own output-capture hooks
    for bs in (1, 3, 8):
        got = caa_vectors(tiny, pairs, batch_size=bs)
        assert sorted(got) == [0, 1, 2]
        for l, v in got.items(): torch.testing.assert_close(v, want[l], atol=1e-5, rtol=0)
    assert sorted(caa_vectors(tiny, pairs, layers=[2])) == [2]
    assert [len(b._forward_hooks) for b in decoder_layers(tiny.model)] == hooks                 # ours are removed

def test_shuffled_pairs_swap_whole_rows(tiny, survey):
    pairs = caa_pairs(tiny, survey, BASE, {"Tradition": 6, "Hedonism": 6})
    sh = shuffled_pairs(pairs, seed=3)
    swapped = sh.target_rating != pairs.target_rating
    assert (sh.baseline_id[swapped] == pairs.target_id[swapped]).all() and sh[~swapped].equals(pairs[~swapped])
    assert sh.equals(shuffled_pairs(pairs, seed=3)) and sh.prompt_ids.equals(pairs.prompt_ids)

def test_add_vectors(tiny, survey):
    pairs = caa_pairs(tiny, survey, BASE, {"Tradition": 6})
    vectors = caa_vectors(tiny, pairs)
    x = torch.tensor([pairs.prompt_ids[0]])
    with torch.no_grad():
        plain = tiny.model(x).logits
        with add_vectors(tiny, vectors, 0.0): zero = tiny.model(x).logits
        with add_vectors(tiny, vectors, 2.0): steered = tiny.model(x).logits
        with add_vectors(tiny, {1: vectors[1]}, 2.0): one = tiny.model(x).logits
        after = tiny.model(x).logits
    assert torch.equal(plain, zero) and torch.equal(plain, after)
    assert not torch.allclose(plain, steered) and not torch.allclose(steered, one)
    with pytest.raises(RuntimeError):
        with add_vectors(tiny, vectors, 1.0): raise RuntimeError("boom")
    assert not any(b._forward_hooks for b in decoder_layers(tiny.model))                   # removed on an error too

def test_save_load_vectors(tmp_path):
    vectors = {0: torch.randn(8), 2: torch.randn(8)}
    p = save_vectors(tmp_path/"sub"/"v.safetensors", vectors, {"targets": {"Tradition": 1}, "multiplier": 4.0})
    back, meta = load_vectors(p)
    assert meta == {"targets": {"Tradition": 1}, "multiplier": 4.0} and sorted(back) == [0, 2]
    assert all(torch.equal(back[l], vectors[l]) for l in vectors)
    assert [f.name for f in (tmp_path/"sub").iterdir()] == ["v.safetensors"]              # no temporary file left

# --- dpo ---------------------------------------------------------------------------------------------------------

def _prompt(statement, answer="My rating is"):
    return f"User: {INSTRUCTION}\n\nStatement: {statement}\nAssistant: {answer}"

def test_dpo_pairs_hand_made_survey(tiny, survey):
    one = Survey(survey.name, survey.items, survey.instructions, survey.templates, active_templates=(0,))
    got = dpo_pairs(tiny, one, BASE, {"Tradition": 1}).to_pandas()
    rows = list(zip(got.item_id, got.prompt, got.chosen, got.rejected))
    # t1: target 1 = baseline 1, dropped; t2: 1 over its baseline 4; h1 keeps 2 over the push to 1; h2: 1 = 1, dropped
    assert rows == [("t2", _prompt(STATEMENTS["t2"][0]), " 1", " 4"), ("h1", _prompt(STATEMENTS["h1"][0]), " 2", " 1")]
    assert list(got.target) == [True, False]
    up = dpo_pairs(tiny, survey, BASE, {"Hedonism": 6}).to_pandas()
    assert list(zip(up.item_id, up.template_id, up.chosen, up.rejected)) == [
        ("t1", 0, " 1", " 6"), ("t1", 1, " 1", " 6"), ("t2", 0, " 4", " 6"), ("t2", 1, " 4", " 6"),
        ("h1", 0, " 6", " 2"), ("h1", 1, " 6", " 2"), ("h2", 0, " 6", " 1"), ("h2", 1, " 6", " 1")]
    assert up.prompt[1] == _prompt(STATEMENTS["t1"][0], "Rating:")
    kept = dpo_pairs(tiny, one, BASE, {"Tradition": 1}, anchor_answers_by_item={"h1": 1, "h2": 5}).to_pandas()
    assert list(zip(kept.item_id, kept.chosen, kept.rejected)) == [("t2", " 1", " 4"), ("h2", " 5", " 1")]
    with pytest.raises(ValueError, match="no baseline rating"): dpo_pairs(tiny, survey, {"t1": 1}, {"Tradition": 6})

def test_dpo_trains_two_steps_and_saves_a_peft_adapter(tiny, survey, tmp_path):
    from peft import PeftModel
    pairs = dpo_pairs(tiny, survey, BASE, {"Tradition": 6})
    recipe = {"lora": {"r": 2, "alpha": 4, "top_layers": 2}, "dpo": {"beta": 0.2},
              "training": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5e-2, "warmup_ratio": 0.0}}
    path = train_dpo(tiny, pairs, recipe, tmp_path)
    assert path == tmp_path/"adapter" and not (tmp_path/"checkpoints").exists() and not (tmp_path/".adapter.tmp").exists()
    losses = [h["loss"] for h in __import__("pandas").read_csv(tmp_path/"loss.csv").to_dict("records") if h.get("loss") == h.get("loss")]
    assert len(losses) == 2 and math.isclose(losses[0], math.log(2), rel_tol=1e-3)          # step 1: policy = reference
    loaded = PeftModel.from_pretrained(_tiny_model(len(tiny.tokenizer)), str(path))
    lora = {k for k, _ in loaded.named_parameters() if "lora_B" in k}
    assert lora and {int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in lora} == {1, 2}  # the top 2 of 3 layers
    assert any(float(p.abs().sum()) > 0 for k, p in loaded.named_parameters() if "lora_B" in k)
