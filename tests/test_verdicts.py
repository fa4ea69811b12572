"Tests for s2b.verdicts: the prompt, truncation to the context, label scoring and renormalisation."
import math

import numpy as np
import pytest

from s2b.posts import LABELS, Post, load_posts
from s2b.verdicts import ELLIPSIS, aita_prompt, coverage, fit_prompt, renormalize, score_post


def test_renormalize():
    lp = [-1.3, -2.9, -0.4]
    p = renormalize(lp)
    assert math.isclose(p.sum(), 1.0) and (p > 0).all()
    raw = np.exp(lp)
    for i in range(3):
        for j in range(3): assert math.isclose(p[i]/p[j], raw[i]/raw[j], rel_tol=1e-9)
    assert np.allclose(renormalize({"a": -1000.0, "b": -1001.0, "c": -1002.0}), renormalize([0, -1, -2]))  # stable
    assert math.isclose(coverage(lp), raw.sum())


def test_truncation_with_a_character_tokenizer():
    class CharTok:                                  # one token per character; no chat template (plain fallback)
        chat_template = None
        def __call__(self, text, add_special_tokens=False): return {"input_ids": [ord(c) for c in text]}
        def decode(self, ids, **kw): return "".join(map(chr, ids))
    tok = CharTok()
    body = "AITA for keeping the dog? " + " ".join(f"Sentence number {i} of the story." for i in range(40)) + " So, AITA?"
    post = Post("long", body)
    full, cut = fit_prompt(tok, post, max_length=10_000)
    assert not cut and body in full
    n0 = len(aita_prompt(tok, ""))
    short, cut = fit_prompt(tok, post, max_length=n0 + 200, reserve=3)
    assert cut and len(short) <= n0 + 197 and ELLIPSIS in short
    assert "AITA for keeping the dog?" in short and "So, AITA?" in short and short.endswith("Assistant: ")
    assert "Sentence number 0" in short and "Sentence number 39" in short and "Sentence number 20" not in short
    titled = Post("t", "First part. " * 50 + "Was I wrong?", title="AITA for X?")
    short, cut = fit_prompt(tok, titled, max_length=n0 + 60)
    assert cut and "AITA for X?\n\n" in short and short.count("Was I wrong?") == 1 and len(short) <= n0 + 60
    with pytest.raises(ValueError, match="no room"): fit_prompt(tok, post, max_length=n0 + 3)


# ---------------------------------------------------------------- the embedded model

@pytest.fixture(scope="module")
def lm():
    from s2b.models import load_model
    return load_model("embedded", backend="hf")


@pytest.mark.model
def test_label_scoring_equals_hand_sum(lm):
    import torch
    from s2b.scoring import encode
    post = Post("demo", "AITA for eating my roommate's leftovers? They were about to go off. AITA?")
    prompt = aita_prompt(lm.tokenizer, post.full_text)
    s = score_post(lm, post)                                   # label_logprobs on the post's prompt
    lp = {l: s[f"logp_{l}"] for l in LABELS}
    assert len(encode(lm.tokenizer, "NTA")) == 2                    # multi-token: "N" + "TA"
    ids = encode(lm.tokenizer, prompt)
    for label in LABELS:
        lab = encode(lm.tokenizer, label)
        with torch.inference_mode():
            logits = lm.model(torch.tensor([ids + lab])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        hand = sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(lab))
        assert lp[label] == pytest.approx(hand, abs=1e-3)
    assert s["p_NTA"] + s["p_YTA"] + s["p_Neutral"] == pytest.approx(1.0)
    assert s["coverage"] == pytest.approx(sum(math.exp(lp[l]) for l in LABELS), rel=1e-4) and 0 < s["coverage"] < 1
    assert s["p_YTA"] / s["p_NTA"] == pytest.approx(math.exp(lp["YTA"] - lp["NTA"]), rel=1e-4)
    assert not s["truncated"]


@pytest.mark.model
def test_truncation_keeps_the_question(lm):
    from s2b.scoring import encode
    post = load_posts("bundled", limit=1)[0]
    tok = lm.tokenizer
    n_full = len(encode(tok, aita_prompt(tok, post.full_text)))
    prompt, cut = fit_prompt(tok, post, max_length=n_full - 40, reserve=2)
    assert cut and len(encode(tok, prompt)) <= n_full - 42 and ELLIPSIS in prompt
    title = post.text.split("?")[0] + "?"
    assert title in prompt and 'AITA?\n"""' in prompt and "Answer with the label only" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    s = score_post(lm, post, max_length=n_full - 40)
    assert s["truncated"] and s["n_tokens"] <= n_full - 40
