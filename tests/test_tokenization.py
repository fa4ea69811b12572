"""A prompt variant's token ids are those of its whole text, however they are computed.

Scoring shares the prefix's KV cache across statements (`s2b.survey.prompt_parts` splits each prompt
into a prefix and a suffix), and `s2b.profile.encode_variants` renders the chat template once per
(instruction, template) and tokenises all suffixes in one batched call. Both must give exactly the
ids that tokenising each prompt alone gives, for every variant of the bundled survey and, when it
is beside the checkout, of the paper's KVS survey (16,038 variants). Only the embedded model's
tokenizer is loaded.
"""
import pytest

from s2b.models import LM
from s2b.scoring import encode
from s2b.profile import encode_variants, rating_slot
from s2b.survey import load_survey
from s2b.prompts import prompt_parts


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    from s2b.models import materialize_embedded, prepare_tokenizer
    return prepare_tokenizer(AutoTokenizer.from_pretrained(materialize_embedded()))


@pytest.fixture(params=["bundled", "kvs"])
def survey(request):
    "Every variant of the bundled survey, then of the paper's KVS survey (skipped when it is absent)."
    src = request.getfixturevalue("kvs_path") if request.param == "kvs" else "bundled"
    return load_survey(src)


def _parts(tok, survey):
    "(row of `survey.variants()`, prefix, suffix) for every variant, each prompt built on its own."
    stmt = {i.id: i.statement for i in survey.items}
    for r in survey.variants().itertuples():
        pre, suf = prompt_parts(tok, survey.instructions[r.instruction_id], stmt[r.item_id], survey.templates[r.template_id])
        yield r, pre, suf


@pytest.mark.model
def test_prefix_and_suffix_tokenise_like_the_whole_prompt(tok, survey):
    n = 0
    for r, pre, suf in _parts(tok, survey):
        assert encode(tok, pre) + encode(tok, suf) == encode(tok, pre + suf), (r.item_id, r.instruction_id, r.template_id)
        n += 1
    assert n == len(survey.items) * len(survey.instructions) * len(survey.templates) > 0


@pytest.mark.model
def test_encode_variants_equals_encoding_each_prompt_alone(tok, survey):
    enc = encode_variants(LM(None, tok, "embedded", "embedded", "cpu"), survey)
    slots = {t: rating_slot(tok, survey.templates[t]) for t in survey.template_ids()}
    assert len(enc) == len(survey.variants()) > 0
    for (r, pre, suf), row in zip(_parts(tok, survey), enc.itertuples()):
        assert (row.item_id, row.instruction_id, row.template_id) == (r.item_id, r.instruction_id, r.template_id)
        shared, cands = slots[r.template_id]
        assert row.prefix_ids == encode(tok, pre), (r.item_id, r.instruction_id)
        assert row.suffix_ids == encode(tok, suf) + shared, (r.item_id, r.template_id)
        assert row.cand_ids == cands and row.n_tokens == len(row.prefix_ids) + len(row.suffix_ids)
