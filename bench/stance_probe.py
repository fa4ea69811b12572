"""Does the model read an AITA post's stance before any steering? A linear probe, fit on train posts, scored on test posts.

The AITA gain moves only if a verdict follows what the post says: each value's bundled posts are balanced so that the
strong holder's verdict is YTA on half and NTA on the other half, in both the train and the test split. The `verdict`
positive control (`s2b.ceiling`) must therefore learn, from the value's 20 train posts, to read a post's stance. This
probe asks whether that information is in the frozen model at all: for each value it reads the hidden state of the
AITA stage's prompt (`s2b.verdicts.fit_prompt`) at the answer slot (the last token) and averaged over the prompt, at
`--layers`, fits a logistic regression (C 0.1) on the 20 train posts (label: the strong holder's verdict) and scores
the 20 test posts it never saw: the accuracy (chance 0.5; with 20 posts, ±0.22 is the 95% interval around 0.5). It
also gives how often the base model's own first-token verdict agrees with the strong holder (does it read content?).

Run: `python bench/stance_probe.py [--values all|V1,V2] [--layers 15,20,25,30] [--out bench/results/stance_probe.json]`
(about 5 minutes for the 20 values on 2 cores).
"""
from __future__ import annotations
import argparse, json, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def post_states(lm, posts, layers):
    "(answer-slot states, prompt-mean states) per layer, the strong holder's verdict is YTA (1/0), base P(YTA) > P(NTA)."
    import torch
    from s2b.posts import LABELS
    from s2b.scoring import encode
    from s2b.verdicts import default_max_length, fit_prompt
    tok, ml = lm.tokenizer, default_max_length(lm)
    first = {l: encode(tok, l)[0] for l in LABELS}
    last, mean, y, says_yta = {L: [] for L in layers}, {L: [] for L in layers}, [], []
    with torch.no_grad():
        for p in posts:
            out = lm.model(torch.tensor([encode(tok, fit_prompt(tok, p, None, ml, 3)[0])]), output_hidden_states=True)
            for L in layers:
                h = out.hidden_states[L][0].float()
                last[L].append(h[-1].numpy()); mean[L].append(h.mean(0).numpy())
            lg = out.logits[0, -1]
            y.append(int(p.high_standard_stance == "YTA")); says_yta.append(int(lg[first["YTA"]] > lg[first["NTA"]]))
    return ({L: np.array(x) for L, x in last.items()}, {L: np.array(x) for L, x in mean.items()}, np.array(y), np.array(says_yta))


def heldout_accuracy(Xtr, ytr, Xte, yte) -> float:
    "Accuracy on the test posts of a standardised logistic regression fit on the train posts."
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(Xtr, ytr)
    return float((clf.predict(Xte) == yte).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", default="all")
    ap.add_argument("--layers", default="15,20,25,30")
    ap.add_argument("--out", default=str(ROOT/"bench/results/stance_probe.json"))
    a = ap.parse_args(argv)
    from s2b.models import load_model
    from s2b.posts import load_posts
    from s2b.values import VALUES, normalize_value
    lm = load_model("embedded", backend="hf")
    values = list(VALUES) if a.values == "all" else [normalize_value(v) for v in a.values.split(",")]
    layers = [int(x) for x in a.layers.split(",")]
    out = {"model": "embedded SmolLM2-135M-Instruct", "posts": "bundled", "prompt": "s2b.verdicts.fit_prompt", "values": {}}
    for v in values:
        tr, te = load_posts("bundled", values=v, split="train"), load_posts("bundled", values=v, split="test")
        (Ltr, Mtr, ytr, btr), (Lte, Mte, yte, bte) = post_states(lm, tr, layers), post_states(lm, te, layers)
        r = {"n_train": len(ytr), "n_test": len(yte),
             "base_agrees_with_strong_holder": float(np.mean(np.concatenate([btr == ytr, bte == yte]))),
             "answer_slot": {L: heldout_accuracy(Ltr[L], ytr, Lte[L], yte) for L in layers},
             "prompt_mean": {L: heldout_accuracy(Mtr[L], ytr, Mte[L], yte) for L in layers}}
        out["values"][v] = r
        best = max(max(r["answer_slot"].values()), max(r["prompt_mean"].values()))
        print(f"{v:<26} base agrees {r['base_agrees_with_strong_holder']:.2f}; test accuracy answer slot "
              + " ".join(f"L{L} {x:.2f}" for L, x in r["answer_slot"].items()) + "; prompt mean "
              + " ".join(f"L{L} {x:.2f}" for L, x in r["prompt_mean"].items()) + f"; best {best:.2f}", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
