import csv, http.server, json, threading
from functools import partial
from pathlib import Path
import pytest
from s2b.survey import load_survey, SurveyError, answer_prefix, SPLITS
from s2b.prompts import prompt_parts
from s2b.values import VALUES

def test_kvs_loader(kvs_path):
    s = load_survey(kvs_path)
    assert len(s) == 594 and s.n_variants == 27 and len(s.instructions) == 3 and len(s.templates) == 9
    assert s.split_counts() == {"train": 378, "eval": 108, "test": 108}
    assert {i.value for i in s.items} == set(VALUES)
    assert len(s.split("test").variants()) == 108 * 27
    assert s.sha256 == "5a03b1e5b607c634cd83711097a2a02b48ba564d36477b4c1a6669a8cab827d2"

def test_kvs_from_url_is_cached(kvs_path, tmp_path, monkeypatch):
    monkeypatch.setenv("S2B_CACHE", str(tmp_path/"cache"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(kvs_path.parent))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/{kvs_path.name}"
        assert len(load_survey(url)) == 594
    finally: srv.shutdown()
    assert len(load_survey(url)) == 594                       # second time from the cache, server gone
    assert len(list((tmp_path/"cache"/"downloads").iterdir())) == 1

def test_bundled_survey():
    s = load_survey("bundled")
    assert len(s) == 400 and len(s.instructions) == 4 and len(s.templates) >= 3
    per_value = {v: sum(i.value == v for i in s.items) for v in VALUES}
    assert min(per_value.values()) >= 6
    assert all(s.split_counts()[k] > 0 for k in SPLITS)

def test_limit_spreads_over_values():
    s = load_survey("bundled").split("test").subset(limit=20)
    assert len(s) == 20 and {i.value for i in s.items} == set(VALUES)

def test_csv_survey(tmp_path):
    p = tmp_path/"mine.csv"
    p.write_text("id,statement,value,split\na1,I plant trees,universalism: nature,train\na2,I keep my word,Benevolence_dependability,test\n")
    s = load_survey(p)
    assert [i.value for i in s.items] == ["Universalism_nature", "Benevolence_dependability"] and s.n_variants >= 9

def _write(tmp_path, obj, name="s.json"):
    p = tmp_path/name; p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj); return p

GOOD = {"instructions": ["Rate 1-6."], "templates": ["My answer is {rating}"],
        "items": [{"id": "x1", "statement": "I like maps", "value": "Universalism_nature", "split": "test"}]}

@pytest.mark.parametrize("change,message", [
    (lambda d: d["items"][0].pop("value"), "item 0 is missing 'value'"),
    (lambda d: d["items"][0].update(value="Universalism_natur"), "id 'x1'.*Did you mean 'Universalism_nature'"),
    (lambda d: d.update(templates=["My answer is"]), r"answer template 0 .* \{rating\}"),
    (lambda d: d["items"][0].update(split="dev"), "unknown split 'dev'"),
    (lambda d: d.update(items=[]), "'items' is empty"),
])
def test_bad_s2b_survey(tmp_path, change, message):
    d = json.loads(json.dumps(GOOD)); change(d)
    p = _write(tmp_path, d)
    with pytest.raises(SurveyError, match=message) as e:
        load_survey(p)
    assert str(p) in str(e.value)

def test_empty_split(tmp_path):
    s = load_survey(_write(tmp_path, GOOD))
    with pytest.raises(SurveyError, match="split 'train' is empty"):
        s.split("train")
    kvs = {"tasks": ["Rate."], "response_template": ["Rating: {rating}"], "train": [], "test": []}
    with pytest.raises(SurveyError, match="split 'train' is empty"):
        load_survey(_write(tmp_path, kvs, "kvs.json"))

def test_kvs_item_missing_key(tmp_path):
    kvs = {"tasks": ["Rate."], "response_template": ["Rating: {rating}"],
           "test": [{"sentence": "Being kind", "level2": ["Benevolence_caring"]}, {"sentence": "Being tidy"}]}
    with pytest.raises(SurveyError, match=r"item test\[1\] is missing 'level2'"):
        load_survey(_write(tmp_path, kvs, "kvs.json"))

def test_not_json(tmp_path):
    with pytest.raises(SurveyError, match="not valid JSON"):
        load_survey(_write(tmp_path, "{oops", "broken.json"))

class _Plain:
    "A tokenizer without a chat template."
    chat_template = None

def test_plain_text_fallback_without_chat_template():
    pre, suf = prompt_parts(_Plain(), "Rate it.", "I like maps", "My answer is {rating}")
    assert pre == "User: Rate it.\n\nStatement:" and suf == " I like maps\nAssistant: My answer is"
    assert answer_prefix("Rating: {rating}") == ("Rating:", " ")

@pytest.mark.model
def test_chat_template_prompt(lm):
    pre, suf = prompt_parts(lm.tokenizer, "Rate it.", "I like maps", "My answer is {rating}")
    assert pre.startswith("<|im_start|>system") and "Rate it." in pre and suf.endswith("<|im_start|>assistant\nMy answer is")
