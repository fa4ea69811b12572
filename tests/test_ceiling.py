"Tests for s2b.ceiling, the verdict method (the AITA positive control): which posts, which answers, the control, the run."
import json
import pytest
from s2b.ceiling import verdict_data, verdict_examples
from s2b.posts import LABELS, load_posts
from s2b.values import target_ratings


@pytest.fixture(scope="module")
def train():
    return load_posts("bundled", values="Universalism_nature", split="train")


def test_it_learns_the_target_values_train_posts(train):
    d = verdict_data(load_posts("bundled", split="train"), target_ratings("Universalism_nature", "up"))
    assert set(d.value) == {"Universalism_nature"} and set(d.split) == {"train"}
    assert list(d.post_id) == [p.id for p in train] and len(d) >= 6
    test_ids = {p.id for p in load_posts("bundled", values="Universalism_nature", split="test")}
    assert test_ids.isdisjoint(d.post_id)                          # the test posts are never trained on


def test_down_learns_the_low_stance_and_up_the_high_stance(train):
    down = verdict_data(train, target_ratings("Universalism_nature", "down"))
    up = verdict_data(train, target_ratings("Universalism_nature", "up"))
    assert list(down.label) == [p.low_standard_stance for p in train]
    assert list(up.label) == [p.high_standard_stance for p in train]
    assert (down.label != up.label).all()                           # the bundled posts' two stances differ


def test_a_profile_target_sets_each_value_by_its_rating():
    ps = load_posts("bundled", values="Face,Humility", split="train")
    d = verdict_data(ps, {"Face": 1, "Humility": 6}).set_index("post_id")
    for p in ps: assert d.loc[p.id, "label"] == (p.low_standard_stance if p.value == "Face" else p.high_standard_stance)


def test_the_control_deals_the_same_labels_at_random(train):
    "The control: the same posts and the same mix of labels, shuffled among them (seeded), so no stance-label link."
    up = verdict_data(train, target_ratings("Universalism_nature", "up"))
    c = verdict_data(train, target_ratings("Universalism_nature", "up"), shuffle=0)
    assert list(c.post_id) == list(up.post_id) and sorted(c.label) == sorted(up.label)
    assert list(verdict_data(train, target_ratings("Universalism_nature", "up"), shuffle=0).label) == list(c.label)   # seeded
    assert (c.label != up.label).mean() > 0.2
    with pytest.raises(ValueError, match="no posts of Hedonism"): verdict_data(train, {"Hedonism": 1})


@pytest.mark.model
def test_examples_are_the_scored_prompt_and_the_label(lm, train):
    from s2b.scoring import encode
    from s2b.verdicts import aita_prompt, default_max_length
    d = verdict_data(train[:2], {"Universalism_nature": 1})
    ex = verdict_examples(lm.tokenizer, d, train, default_max_length(lm))
    for e, p, label in zip(ex, train, d.label):
        prompt = encode(lm.tokenizer, aita_prompt(lm.tokenizer, p.full_text))
        assert e["input_ids"] == prompt + encode(lm.tokenizer, label)          # what continuation_logprobs scores
        assert e["labels"] == [-100] * len(prompt) + encode(lm.tokenizer, label)  # the loss on the label's tokens only


@pytest.mark.model
def test_the_trainer_learns_each_posts_label_at_its_first_token(train, tmp_path):
    "The loss is at the label's first token (where NTA, YTA and Neutral differ), after exactly the prompt the AITA stage scores."
    from s2b.ceiling import verdict_trainer
    from s2b.models import load_model
    from s2b.scoring import encode
    from s2b.verdicts import aita_prompt, default_max_length
    lm = load_model("embedded")                                       # its own: the trainer puts LoRA layers into the model
    d = verdict_data(train[:3], {"Universalism_nature": 6})
    tr = verdict_trainer(lm, verdict_examples(lm.tokenizer, d, train, default_max_length(lm)),
                         {"lora": {"r": 4, "alpha": 8, "top_layers": 2}, "training": {"max_steps": 1}}, tmp_path)
    first = [encode(lm.tokenizer, l)[0] for l in LABELS]
    assert len(set(first)) == 3
    for f, p, label in zip(tr.train_dataset, train, d.label):
        assert f["input_ids"] == encode(lm.tokenizer, aita_prompt(lm.tokenizer, p.full_text))     # the prompt, the slot after it
        assert f["labels"] == first[LABELS.index(label)] and f["cand"] == first
        assert f["soft"] == [float(l == label) for l in LABELS]
    assert tr.frozen is not None and tr.frozen.layer == lm.model.config.num_hidden_layers - 2   # the lower layers run once per post


@pytest.mark.model
def test_the_control_trains_every_post_toward_the_labels_mix(train, tmp_path):
    "mix=True (the control): each post's target is the shares of the labels, so nothing ties a post to its own label."
    from s2b.ceiling import verdict_trainer
    from s2b.models import load_model
    from s2b.verdicts import default_max_length
    lm = load_model("embedded")
    d = verdict_data(train[:4], {"Universalism_nature": 6}, shuffle=0)
    tr = verdict_trainer(lm, verdict_examples(lm.tokenizer, d, train, default_max_length(lm)),
                         {"lora": {"r": 4, "alpha": 8, "top_layers": 2}, "training": {"max_steps": 1}}, tmp_path, mix=True)
    share = [float((d.label == l).mean()) for l in LABELS]
    assert sorted(set(d.label)) == ["NTA", "YTA"] and all(f["soft"] == pytest.approx(share) for f in tr.train_dataset)


def test_a_pooled_ceiling_learns_every_values_posts_each_with_its_own_stance():
    "`verdict.posts_of: all`: every value's train posts, each answered with its own value's stance in the target's direction."
    from s2b.ceiling import verdict_targets
    ps = load_posts("bundled", split="train")
    up = verdict_data(ps, verdict_targets(target_ratings("Tradition", "up"), "all")).set_index("post_id")
    assert len(up) == len(ps) and up.value.nunique() == 20
    for p in ps: assert up.loc[p.id, "label"] == p.high_standard_stance
    assert verdict_targets(target_ratings("Tradition", "up"), "target") == {"Tradition": 6}
    with pytest.raises(ValueError, match="one target value"): verdict_targets({"Face": 1, "Humility": 6}, "all")
    with pytest.raises(ValueError, match="'target' or 'all'"): verdict_targets({"Face": 1}, "some")
