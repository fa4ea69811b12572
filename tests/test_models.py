import time
import pytest
from s2b.models import load_model, resolve_backend, BackendError, cuda_available, model_slug, use_adapter
from s2b.scoring import continuation_logprobs
from s2b.prompts import chat_prompt

def test_backend_selection_on_cpu(monkeypatch):
    import s2b.models as m
    monkeypatch.setattr(m, "cuda_available", lambda: False)
    assert resolve_backend("auto") == "hf" and resolve_backend("hf") == "hf"
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        resolve_backend("unsloth")
    monkeypatch.setattr(m, "cuda_available", lambda: True)
    monkeypatch.setattr(m, "unsloth_installed", lambda: True)
    assert resolve_backend("auto") == "unsloth" and resolve_backend("auto", training=False) == "hf"
    monkeypatch.setattr(m, "unsloth_installed", lambda: False)
    assert resolve_backend("auto") == "hf"
    with pytest.raises(BackendError, match=r"\.\[gpu\]"):
        resolve_backend("unsloth")
    with pytest.raises(ValueError):
        resolve_backend("vllm")

def test_model_slug():
    assert model_slug("meta-llama/Llama-3.1-8B-Instruct") == "Llama-3.1-8B-Instruct" and model_slug("embedded") == "embedded"

@pytest.mark.model
def test_embedded_second_load_is_fast(lm):
    t0 = time.time(); lm2 = load_model("embedded"); dt = time.time() - t0
    assert dt < 20, f"second load took {dt:.1f}s"
    assert lm2.record()["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and lm2.tokenizer.padding_side == "left"

@pytest.mark.model
def test_adapter_changes_outputs(lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    base = load_model("embedded")
    peft_model = get_peft_model(base.model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path/"adapter")
    p = chat_prompt(lm.tokenizer, "Say yes.")
    before = continuation_logprobs(lm, p, ["Yes"])[0]
    with_ad = use_adapter(load_model("embedded"), tmp_path)          # a run directory holding adapter/ works too
    assert with_ad.adapter.endswith("adapter") and abs(continuation_logprobs(with_ad, p, ["Yes"])[0] - before) > 1e-4
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        use_adapter(load_model("embedded"), tmp_path/"nothing")


# ---------------------------------------------------------------- chat templates (issue 13)

# Small templates written for these tests, behaving like the two families: a Qwen3-like thinking switch, and a
# Gemma-like template that raises on a system message.
QWEN3_LIKE = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
              "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
              "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
GEMMA_LIKE = ("{%- for m in messages %}{%- if m.role == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}"
              "{{- '<start_of_turn>' + m.role + '\\n' + m.content + '<end_of_turn>\\n' }}{%- endfor %}"
              "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}")


def _with_template(lm, template):
    import copy
    tok = copy.deepcopy(lm.tokenizer)                 # the session fixture's tokenizer stays untouched
    tok.chat_template = template
    return tok


@pytest.mark.model
def test_thinking_template_is_rendered_without_thinking(lm):
    from s2b.prompts import chat_prompt, chat_settings
    from s2b.scoring import encode
    from s2b.prompts import prompt_parts
    tok = _with_template(lm, QWEN3_LIKE)
    assert lm.tokenizer.chat_template != QWEN3_LIKE
    text = chat_prompt(tok, "Rate this.", "Be brief.", "My answer is")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nRate this.<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\nMy answer is")
    # thinking on: the assistant turn opens bare, where the model would start to think
    assert chat_prompt(tok, "Rate this.", assistant_prefix="My answer is", thinking=True).endswith("<|im_start|>assistant\nMy answer is")
    assert chat_settings(tok, thinking=True)["thinking"] is True
    assert chat_settings(tok) == {"template": True, "thinking_switch": True, "thinking": False, "system": "native"}
    # a model loaded with thinking on (its option, not its tokenizer's) renders its survey variants and records it so
    from s2b.models import LM, ModelOptions
    from s2b.profile import encode_variants
    from s2b.survey import load_survey
    s = load_survey("bundled").split("test").subset(limit=1).with_templates([0]).with_instructions([0])
    for on in (False, True):
        m = LM(lm.model, tok, "embedded", lm.source, "cpu", options=ModelOptions(thinking=on))
        enc = encode_variants(m, s)
        assert ("<think>" in tok.decode(enc.suffix_ids.iloc[0])) is (not on) and m.record()["chat"]["thinking"] is on
    assert not hasattr(tok, "s2b_thinking")
    # a survey variant: the rating slot (the end of the answer prefix) comes after the empty think block
    pre, suf = prompt_parts(tok, "Rate the statement from 1 to 6.", "Being rich matters.", "My answer is {rating}.")
    full = pre + suf
    assert full.endswith("</think>\n\nMy answer is") and full.index("</think>") < full.index("My answer is")
    assert "<think>" not in pre and "<think>\n\n</think>\n\nMy answer is" in suf
    ids = encode(tok, full)
    k = next(k for k in range(len(ids) + 1) if "</think>" in tok.decode(ids[:k]))     # tokens up to the think block's end
    assert k < len(ids) and tok.decode(ids[k:]).strip() == "My answer is"              # the slot's tokens come after it


@pytest.mark.model
def test_system_role_folded_for_gemma_like_template(lm):
    from s2b.prompts import chat_prompt, chat_settings
    tok = _with_template(lm, GEMMA_LIKE)
    with pytest.raises(Exception, match="System role"):
        tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False)
    assert chat_prompt(tok, "Rate this.", "Be brief.", "My answer is") == \
        "<start_of_turn>user\nBe brief.\n\nRate this.<end_of_turn>\n<start_of_turn>model\nMy answer is"
    assert chat_prompt(tok, "Rate this.") == "<start_of_turn>user\nRate this.<end_of_turn>\n<start_of_turn>model\n"
    assert chat_settings(tok)["system"] == "folded into the first user turn"
    assert chat_settings(lm.tokenizer)["system"] == "native" and chat_settings(lm.tokenizer)["thinking_switch"] is False
    # the MACHIAVELLI agent's prompt (always with a system message) is folded, not refused
    from s2b import agents as A, games as G
    class _LMt: tokenizer, persona, thinking = tok, None, False      # what the agent reads of a loaded model
    env = G.GameEnv(G.bundled_games()[0]); obs, info = env.reset()
    p = A.LMAgent(_LMt(), choose="sample", generate=lambda p: "0").prompt(obs, info)
    assert p.startswith("<start_of_turn>user\nYou are a player") and p.count("<start_of_turn>") == 2


@pytest.mark.model
def test_run_record_names_chat_settings(lm):
    rec = lm.record()
    assert rec["chat"] == {"template": True, "thinking_switch": False, "thinking": False, "system": "native"}
    assert rec["trust_remote_code"] is False


def test_remote_code_refused_without_flag(tmp_path, monkeypatch):
    "A tokenizer defined by its repository's code is refused with one clear message, and its code does not run."
    import json, shutil
    from s2b.models import RemoteCodeError, load_model, materialize_embedded
    src = materialize_embedded()
    d = tmp_path/"remote-model"; d.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"): shutil.copy(src/f, d/f)
    cfg = json.loads((d/"tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": ["custom_tok.CustomTokenizer", "custom_tok.CustomTokenizer"]})
    (d/"tokenizer_config.json").write_text(json.dumps(cfg))
    marker = tmp_path/"ran"
    (d/"custom_tok.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PreTrainedTokenizerFast\n"
                                   "class CustomTokenizer(PreTrainedTokenizerFast): pass\n")
    monkeypatch.delenv("S2B_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(RemoteCodeError, match="--trust-remote-code"):
        load_model(str(d), backend="hf")
    assert not marker.exists()
