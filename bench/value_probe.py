"""Does the model tell the 20 values apart before any steering? A linear probe on its state at the answer slot.

A survey adapter can only move one value's statements selectively if the model's own state already separates them
from the other values' statements. This probe reads the hidden state at the last prompt token (the answer slot) of
every bundled statement (template 0, instruction 3: the training prompt) at the layer where the CPU recipe's LoRA
starts (`--layers`, default 20 and 25, and the last, 30), fits a 20-way logistic regression on the 240 train
statements and scores the 160 eval + test statements it never saw: the accuracy (chance 0.05) and, per value, the
one-vs-rest AUC. With `--coverage RUNS_DIR` (a grid's run folder, e.g. papermill_runs/all-values-cpu) it also gives the
Spearman correlation, across values, of each value's AUC with its held-out selectivity.

Run: `python bench/value_probe.py [--layers 20,25,30] [--coverage RUNS_DIR] [--out bench/results/value_probe.json]`
(about a minute on 2 cores).
"""
from __future__ import annotations
import argparse, json, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def states(layers):
    "(features per layer, value, split) of every bundled statement under the training prompt."
    import torch
    from s2b.models import load_model
    from s2b.profile import encode_variants
    from s2b.survey import load_survey
    lm = load_model("embedded", backend="hf")
    enc = encode_variants(lm, load_survey("bundled").with_templates("0").with_instructions("3"))
    feats = {L: [] for L in layers}
    with torch.no_grad():
        for r in enc.itertuples():
            hs = lm.model(torch.tensor([list(r.prefix_ids) + list(r.suffix_ids)]), output_hidden_states=True).hidden_states
            for L in layers: feats[L].append(hs[L][0, -1].float().numpy())
    return {L: np.array(x) for L, x in feats.items()}, enc.value.to_numpy(), enc.split.to_numpy()


def probe(X, y, train):
    "Held-out 20-way accuracy and one-vs-rest AUC per value of a logistic regression fit on `train` rows."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler
    X = StandardScaler().fit(X[train]).transform(X)
    clf = LogisticRegression(C=0.05, max_iter=3000).fit(X[train], y[train])
    P = clf.predict_proba(X[~train])
    acc = float((clf.classes_[P.argmax(1)] == y[~train]).mean())
    return acc, {v: float(roc_auc_score(y[~train] == v, P[:, i])) for i, v in enumerate(clf.classes_)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="20,25,30")
    ap.add_argument("--coverage", default=None, help="a grid's run folder: correlate each value's AUC with its held-out selectivity")
    ap.add_argument("--out", default=str(ROOT/"bench/results/value_probe.json"))
    a = ap.parse_args(argv)
    layers = [int(x) for x in a.layers.split(",")]
    feats, y, split = states(layers)
    out = {"model": "embedded SmolLM2-135M-Instruct", "prompt": "template 0, instruction 3", "n_train": int((split == "train").sum()),
           "n_heldout": int((split != "train").sum()), "layers": {}}
    for L in layers:
        acc, auc = probe(feats[L], y, split == "train")
        out["layers"][L] = {"accuracy": acc, "auc": auc}
        print(f"layer {L}: 20-way accuracy on {out['n_heldout']} unseen statements {acc:.3f} (chance 0.05); "
              f"one-vs-rest AUC median {np.median(list(auc.values())):.2f}, lowest "
              + ", ".join(f"{v} {x:.2f}" for v, x in sorted(auc.items(), key=lambda kv: kv[1])[:4]))
    if a.coverage:
        from scipy.stats import spearmanr
        from s2b.report import collect
        from s2b.coverage import coverage_table
        t = coverage_table(collect(a.coverage))
        sel = t.groupby("target").held_out_selectivity.mean()
        out["coverage"] = {"runs_dir": str(a.coverage), "held_out_selectivity": sel.to_dict(), "spearman": {}}
        for L in layers:
            auc = out["layers"][L]["auc"]; v = [x for x in sel.index if x in auc]
            rho, p = spearmanr([auc[x] for x in v], [sel[x] for x in v])
            out["coverage"]["spearman"][L] = {"rho": float(rho), "p": float(p), "n": len(v)}
            print(f"layer {L}: Spearman ρ of the probe's AUC with the held-out selectivity (mean over seeds) across {len(v)} values: "
                  f"{rho:+.2f} (p {p:.3f})")
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__": main()
