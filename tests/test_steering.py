"One interface for every steering artefact: the steering block, reading a run, and steering a loaded model."
import json
import pytest, torch
from s2b.runs import atomic_write_json
from s2b.steering import steering_record, read_steering, steer, add_vectors

def _prompt_run(path, persona="You care about nature above everything else.", control=False):
    atomic_write_json(path/"run.json", {"stage": "prompt", "steering": steering_record("prompt", {} if control else {"Universalism_nature": 6}, "up", 0)})
    atomic_write_json(path/"steering.json", {"persona": persona})
    return path

def test_a_run_says_who_steered_what(tmp_path):
    st = read_steering(_prompt_run(tmp_path))
    assert (st.method, st.targets, st.direction, st.label, st.seed) == ("prompt", {"Universalism_nature": 6}, "up", "Universalism_nature-up", 0)
    assert st.record()["path"] == str(tmp_path) and st.settings["persona"].startswith("You care")
    with pytest.raises(FileNotFoundError, match="no such folder"): read_steering(tmp_path/"missing")

@pytest.mark.model
def test_the_persona_reaches_every_chat(tmp_path, monkeypatch):
    "With a prompt artefact on, survey variants, AITA prompts and MACHIAVELLI turns all start with its persona; after, none does."
    from s2b.models import load_model
    from s2b.survey import load_survey
    from s2b.profile import encode_variants
    from s2b import verdicts
    from s2b.posts import Post
    from s2b.agents import LMAgent
    lm = load_model("embedded"); tok = lm.tokenizer
    persona = "You care about nature above everything else."
    s = load_survey("bundled").split("test").subset(limit=1).with_templates([0]).with_instructions([0])
    info = {"game_state": {"num_choices": 2}, "title": "Harbour", "short_summary": "A town.", "player_character": "you"}
    scored = []                                       # the prompt the AITA stage scores, as `score_post` builds it
    monkeypatch.setattr(verdicts, "label_logprobs", lambda lm, prompt: scored.append(prompt) or dict.fromkeys(verdicts.LABELS, -1.0))
    def chats():
        enc = encode_variants(lm, s)
        verdicts.score_post(lm, Post("p1", "AITA for planting trees?"))
        return [tok.decode(enc.prefix_ids.iloc[0]), scored[-1], LMAgent(lm).prompt("You stand at the dock.\n0: Stay\n1: Leave", info)]
    with steer(lm, read_steering(_prompt_run(tmp_path, persona))):
        assert lm.persona == persona and all(persona in c for c in chats())
    assert lm.persona is None and not any(persona in c for c in chats())
    assert not hasattr(tok, "s2b_persona")            # the model's state, not an attribute on its tokenizer

@pytest.mark.model
def test_vectors_on_a_model_multiplier_zero_is_the_model(tmp_path):
    from s2b.models import load_model
    from safetensors.torch import save_file
    lm = load_model("embedded"); ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode(): base = lm.model(ids).logits
    v = {"layer.5": torch.randn(lm.model.config.hidden_size)}
    save_file(v, str(tmp_path/"steering.safetensors"))
    for m, same in ((0.0, True), (8.0, False)):
        atomic_write_json(tmp_path/"run.json", {"steering": steering_record("caa", {"Hedonism": 1}, "down", 0)})
        atomic_write_json(tmp_path/"steering.json", {"multiplier": m})
        with steer(lm, read_steering(tmp_path)), torch.inference_mode():
            assert torch.equal(lm.model(ids).logits, base) is same
    with torch.inference_mode(): assert torch.equal(lm.model(ids).logits, base)       # the hooks are gone

@pytest.mark.model
def test_adapters_swap_by_role_on_one_model(tmp_path, random_adapters):
    from s2b.models import load_model
    random_adapters(tmp_path/"a", tmp_path/"b")
    lm = load_model("embedded"); ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode(): base = lm.model(ids).logits
    out = {}
    for role in ("a", "b", "a"):
        with steer(lm, read_steering(tmp_path/role), role), torch.inference_mode(): out.setdefault(role, []).append(lm.model(ids).logits)
    assert torch.equal(out["a"][0], out["a"][1]) and not torch.equal(out["a"][0], out["b"][0])
    with torch.inference_mode(): assert torch.equal(lm.model(ids).logits, base)       # base again after the block
