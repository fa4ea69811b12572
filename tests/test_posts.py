"Tests for s2b.posts: the loaders of the paper's json, Reddit CSV and Scruples JSONL, and the bundled posts."
import functools, http.server, json, threading
from pathlib import Path

import pytest

from s2b.posts import (LABELS, PostFormatError, load_paper_json, load_posts, load_reddit_csv, load_scruples_jsonl,
                       normalize_verdict, scruples_verdict)
from s2b.values import UnknownValueError

FIX = Path(__file__).parent/"fixtures"/"aita"


# ---------------------------------------------------------------- loaders

def test_paper_json_ok():
    ps = load_paper_json(FIX/"paper_ok.json")
    assert [p.id for p in ps] == ["u1", "Universalism_concern-1", "Hedonism-0"]
    assert [p.value for p in ps] == ["Universalism_concern", "Universalism_concern", "Hedonism"]
    assert ps[1].high_standard_stance == "YTA" and ps[1].low_standard_stance == "Neutral"
    assert ps[0].title is None and ps[0].text.startswith("AITA for reporting") and ps[0].verdict is None
    assert ps[0].source == str(FIX/"paper_ok.json")
    df = ps.frame()
    assert list(df.columns[:4]) == ["id", "text", "title", "value"] and len(df) == 3


@pytest.mark.parametrize("fname, needles", [
    ("paper_bad_value.json", ["paper_bad_value.json", "record 1", "'bad-1'", "Did you mean 'Universalism_concern'"]),
    ("paper_bad_stance.json", ["paper_bad_stance.json", "record 0", "'st-1'", "high_standard_stance", "'YTAH'"]),
    ("paper_missing_key.json", ["paper_missing_key.json", "record 1", "'mk-1'", "missing key(s) 'post'"]),
])
def test_paper_json_bad_records(fname, needles):
    with pytest.raises(PostFormatError) as e: load_paper_json(FIX/fname)
    for n in needles: assert n in str(e.value), (n, str(e.value))


def test_paper_json_value_key_mismatch(tmp_path):
    f = tmp_path/"p.json"
    f.write_text(json.dumps({"Face": [{"id": "x", "post": "AITA?", "value": "Humility",
                                       "high_standard_stance": "NTA", "low_standard_stance": "YTA"}]}))
    with pytest.raises(PostFormatError, match=r"record 0 .*'x'.*does not match its key 'Face'"): load_paper_json(f)


def test_bundled():
    ps = load_posts("bundled")
    assert len(ps) == 800 and len({p.value for p in ps}) == 20 and len({p.id for p in ps}) == 800
    assert all(p.high_standard_stance in LABELS and p.low_standard_stance in LABELS for p in ps)
    ps = load_posts("bundled", values="Universalism: concern,hedonism", limit=4)
    assert [p.id for p in ps] == ["hed-01", "hed-02", "hed-03", "hed-04"] and ps.path.name == "scenarios.json"
    assert len(load_posts("bundled", values=["Face"])) == 40
    with pytest.raises(UnknownValueError, match="Did you mean 'Universalism_concern'"):
        load_posts("bundled", values="Universalism_concen")


def test_reddit_csv(capsys):
    ps = load_reddit_csv(FIX/"reddit.csv")
    assert [(p.id, p.verdict) for p in ps] == [("r1", "NTA"), ("r2", "YTA"), ("r3", "Neutral"), ("r4", "Neutral")]
    assert ps.skipped == {"no verdict": 1, "INFO": 1, "unknown verdict": 1}
    assert "skipped 3" in capsys.readouterr().out
    assert ps[0].title == "AITA for asking my roommate to pay for the broken lamp?" and ps[0].value is None
    assert ps[0].full_text.startswith(ps[0].title + "\n\n") and ps[0].high_standard_stance is None
    with pytest.raises(PostFormatError, match=r"reddit_missing_column.csv: missing column\(s\) 'verdict'"):
        load_reddit_csv(FIX/"reddit_missing_column.csv")
    assert len(load_posts(str(FIX/"reddit.csv"))) == 4
    with pytest.raises(ValueError, match="carry no value"): load_posts(str(FIX/"reddit.csv"), values="Face")


def test_verdict_mapping():
    assert normalize_verdict("Not the A-hole") == normalize_verdict("NTA") == "NTA"
    assert normalize_verdict("Asshole") == normalize_verdict("YTA") == "YTA"
    assert normalize_verdict("No A-holes here") == normalize_verdict("Everyone Sucks") == "Neutral"
    assert normalize_verdict("NAH") == normalize_verdict("ESH") == "Neutral"
    for x in ("not enough info", "INFO", "", None, float("nan"), "META"): assert normalize_verdict(x) is None


def test_scruples_jsonl(capsys):
    ps = load_scruples_jsonl(FIX/"scruples.jsonl")
    assert [(p.id, p.verdict) for p in ps] == [("s1", "YTA"), ("s2", "NTA"), ("s3", "Neutral"), ("s4", "Neutral"),
                                               ("jsonl-6", "NTA")]
    assert ps.skipped == {"INFO": 1, "tie": 1}
    assert "skipped 2" in capsys.readouterr().out
    assert ps[0].title.startswith("AITA for taking credit") and ps[0].text == "I did most of the work, but not all of it."
    with pytest.raises(PostFormatError) as e: load_scruples_jsonl(FIX/"scruples_bad.jsonl")
    for n in ("scruples_bad.jsonl", "record 1", "line 2", "'sb-2'", "missing key(s) 'label_scores'"): assert n in str(e.value)
    assert scruples_verdict({"AUTHOR": 0, "OTHER": 0, "EVERYBODY": 0, "NOBODY": 0, "INFO": 0}) == (None, "no votes")
    assert len(load_posts(str(FIX/"scruples.jsonl"))) == 5


def test_load_from_url(tmp_path, monkeypatch):
    monkeypatch.setenv("S2B_CACHE", str(tmp_path/"cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIX))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/paper_ok.json"
        ps = load_posts(url)
        assert len(ps) == 3 and ps[0].source == url
        files = list((tmp_path/"cache"/"downloads").iterdir())
        assert len(files) == 1 and files[0].name.endswith("-paper_ok.json") and ps.path == files[0]
        assert not [f for f in files if f.name.startswith(".")]          # no temporary file left behind
        with pytest.raises(PostFormatError, match=r"http://127.0.0.1:\d+/paper_bad_stance.json: record 0"):
            load_posts(url.replace("paper_ok", "paper_bad_stance"))
    finally:
        srv.shutdown()


# ---------------------------------------------------------------- train and test posts

def _paper(tmp_path, records, value="Hedonism"):
    f = tmp_path/"posts.json"
    f.write_text(json.dumps({value: records}))
    return f

def _rec(i, high="NTA", low="YTA", **kw):
    return {"id": f"h{i}", "post": f"AITA for post {i}?", "high_standard_stance": high, "low_standard_stance": low, **kw}

def test_split_is_deterministic_and_balanced_per_value_and_stance():
    ps = load_posts("bundled")
    again = {p.id: p.split for p in load_posts("bundled")}
    assert {p.id: p.split for p in ps} == again and set(again.values()) == {"train", "test"}
    for v in {p.value for p in ps}:
        of = [p for p in ps if p.value == v]
        n_train = sum(p.split == "train" for p in of)
        assert abs(n_train - (len(of) - n_train)) <= 1, (v, n_train, len(of))
        for high in {p.high_standard_stance for p in of}:
            s = [p.split for p in of if p.high_standard_stance == high]
            assert abs(s.count("train") - s.count("test")) <= 1, (v, high, s)
    train, test = load_posts("bundled", values="Face", split="train"), load_posts("bundled", values="Face", split="test")
    assert abs(len(train) - len(test)) <= 1 and len(train) + len(test) == len(load_posts("bundled", values="Face"))
    assert {p.id for p in train}.isdisjoint(p.id for p in test)

def test_split_does_not_depend_on_the_order_of_the_file(tmp_path):
    recs = [_rec(i, *(("NTA", "YTA") if i % 2 else ("YTA", "NTA"))) for i in range(10)]
    a = {p.id: p.split for p in load_posts(_paper(tmp_path, recs))}
    b = {p.id: p.split for p in load_posts(_paper(tmp_path, recs[::-1]))}
    assert a == b and list(a.values()).count("train") == 5

def test_split_field_is_honoured(tmp_path):
    recs = [_rec(i, split="test") for i in range(3)] + [_rec(i) for i in range(3, 7)]
    ps = load_posts(_paper(tmp_path, recs))
    assert [p.split for p in ps[:3]] == ["test"] * 3                 # the file's own split is kept
    assert sorted(p.split for p in ps[3:]) == ["test", "test", "train", "train"]   # the others: dealt out by hash
    assert [p.id for p in load_posts(_paper(tmp_path, recs), split="train")] == [p.id for p in ps if p.split == "train"]

def test_bad_split_is_refused_with_the_post_id(tmp_path):
    with pytest.raises(PostFormatError) as e: load_posts(_paper(tmp_path, [_rec(0), _rec(1, split="validation")]))
    assert "posts.json" in str(e.value) and "'h1'" in str(e.value) and "split must be 'train' or 'test', not 'validation'" in str(e.value)
    with pytest.raises(ValueError, match="split must be one of train, test"): load_posts("bundled", split="dev")
