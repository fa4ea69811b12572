#!/usr/bin/env python3
"""Profile throughput of s2b's rating modes on the same prompts and model, in one run (issue 7).

  (a) logit mode with prefix sharing    s2b.profile.rate(mode="logits", prefix_sharing=True)
  (b) logit mode, full prompts          s2b.profile.rate(mode="logits", prefix_sharing=False)
  (c) the paper's sample mode           s2b.profile.rate(mode="sample"): T=0.5, first digit, majority over variants
  (d) lm-evaluation-harness             HFLM(the loaded model).loglikelihood of " 1".." 6" after the same prompt text

Prints prompts/s and the ratios a/b, a/c, a/d; agreement (Spearman of per-item expected rating (a) vs majority
rating (c) and vs expected rating (d); Pearson of the value profiles); max |P_a - P_b| (must be <= 1e-3); and the
fraction of the machine's matmul throughput (FLOPs of the tokens computed, see bench/_common.FlopCounter) against a
torch.matmul peak measured in the same run.

CPU (2 cores, embedded SmolLM2, fp32), a subset:
  .venv/bin/python bench/profile_speed.py --limit 20 --templates 0,4,8 --json bench/results/profile_cpu.json
GPU (random-init Llama-3.1-8B config, bf16), the test split, then all 16,038 variants at 1x, 2x, 4x items:
  python3 bench/profile_speed.py --device cuda --random-config llama-3.1-8b --batch-size 256 --flush-every 0
  python3 bench/profile_speed.py --device cuda --random-config llama-3.1-8b --split all --modes a --scale 1,2,4 ...
"""
from __future__ import annotations
import argparse, math, os, sys, time
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="'embedded', a local model dir or an HF id (ignored with --random-config)")
    ap.add_argument("--random-config", choices=sorted(C.CONFIGS), help="build a random-init model of this config in memory")
    ap.add_argument("--tokenizer", help="tokenizer dir for --random-config (default: .gpu/tokenizer or the embedded model's)")
    ap.add_argument("--survey", help="survey file (default: the KVS json: $S2B_KVS, .gpu/ or ../shared/data/kvs/)")
    ap.add_argument("--split", default="test", help="train, eval, test, train+eval, or all")
    ap.add_argument("--limit", type=int, help="at most N items, spread over the values")
    ap.add_argument("--templates", help="comma-separated answer template ids (default: all 9)")
    ap.add_argument("--instructions", help="comma-separated instruction ids (default: all 3)")
    ap.add_argument("--modes", default="a,b,c,d", help="which of a,b,c,d to run")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: fp32 on CPU, bf16 on GPU)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of (a) and (b)")
    ap.add_argument("--sample-batch-size", type=int, help="batch size of (c) (default: --batch-size)")
    ap.add_argument("--lmeval-batch-size", type=int, help="batch size of (d) (default: --batch-size)")
    ap.add_argument("--flush-every", type=int, default=64,
                    help="rate()'s flush_every: rows per chunk handed to the scorer (s2b's default 64; 0 = all rows in one chunk)")
    ap.add_argument("--sweep", help="comma-separated bs or bs/flush_every entries: time mode (a) at each first")
    ap.add_argument("--pick-best", action="store_true", help="after --sweep, run (a) and (b) with the fastest entry's settings")
    ap.add_argument("--scale", help="comma-separated item multipliers for mode (a) alone, e.g. 1,2,4 (items repeated)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--threads", type=int, help="torch threads on CPU")
    ap.add_argument("--json", help="write all numbers here")
    return ap.parse_args(argv)


def load(a):
    import torch
    from s2b.models import LM, load_model, prepare_tokenizer, default_device, default_dtype
    device = a.device or default_device()
    dtype = getattr(torch, a.dtype) if a.dtype else default_dtype(device)
    t0 = time.time()
    if a.random_config:
        from transformers import AutoTokenizer
        tdir = C.tokenizer_dir(a.tokenizer)
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tdir))
        model = C.random_model(a.random_config, tok, device, dtype)
        lm = LM(model, tok, f"random:{a.random_config}", str(tdir), device, "hf", info={"random_init": a.random_config})
    else:
        lm = load_model(a.model, backend="hf", device=device, dtype=dtype)
    print(f"[load] {lm.name} on {device} ({dtype}) in {time.time()-t0:.1f}s", flush=True)
    return lm


def survey_of(a):
    from s2b.profile import prepare_survey
    kw = {"instructions": a.instructions} if a.instructions else {}
    return prepare_survey(C.kvs_path(a.survey), a.split, a.limit, a.templates, **kw)


def repeat_items(s, k: int):
    "The survey with every item repeated k times (new ids): k× the prompts, same token lengths."
    if k == 1: return s
    return replace(s, items=[replace(i, id=f"{i.id}~{r}") for r in range(k) for i in s.items])


def sync(lm):
    import torch
    if lm.device.startswith("cuda"): torch.cuda.synchronize()


def run_mode(lm, survey, mode, fc, bs, flush, seed=0):
    "Run one mode; return (ratings frame, stats) with wall seconds (prompt building included) and FLOP stats."
    from s2b.profile import rate
    fc.reset(); sync(lm)
    t0 = time.perf_counter()
    if mode in ("a", "b"):
        df, st = rate(lm, survey, "logits", batch_size=bs, prefix_sharing=(mode == "a"), flush_every=flush, desc=f"({mode})")
    elif mode == "c":
        df, st = rate(lm, survey, "sample", batch_size=bs, flush_every=flush, seed=seed, desc="(c)")
    else:
        df, st = lmeval_rate(lm, survey, bs)
    sync(lm)
    st = dict(st); st["wall_seconds"] = time.perf_counter() - t0
    return df, st


def lmeval_prompts(lm, survey):
    "(variants frame, contexts, continuations per variant): the same prompt text as s2b, continuations '{space}1'..'{space}6'."
    from s2b.prompts import prompt_parts
    from s2b.survey import answer_prefix
    df = survey.variants()
    stmt = {i.id: i.statement for i in survey.items}
    ctx, conts = [], []
    for r in df.itertuples():
        pre, suf = prompt_parts(lm.tokenizer, survey.instructions[r.instruction_id], stmt[r.item_id], survey.templates[r.template_id])
        _, space = answer_prefix(survey.templates[r.template_id])
        ctx.append(pre + suf); conts.append([f"{space}{k}" for k in range(1, 7)])
    return df, ctx, conts


def lmeval_rate(lm, survey, bs):
    "Mode (d): lm-evaluation-harness's HF backend scores the 6 continuations of every prompt as loglikelihood requests."
    import numpy as np, torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from s2b.profile import PCOLS, _finish
    t0 = time.perf_counter()
    hflm = lmeval_model(lm, bs)
    df, ctx, conts = lmeval_prompts(lm, survey)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(c, k), idx=j, metadata=("s2b", n, 1))
            for n, (c, ks) in enumerate(zip(ctx, conts)) for j, k in enumerate(ks)]
    t1 = time.perf_counter()
    out = hflm.loglikelihood(reqs, disable_tqdm=True)
    secs = time.perf_counter() - t1
    ll = np.array([o[0] for o in out], float).reshape(len(df), 6)
    p = np.exp(ll - ll.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    df = df.copy(); df[PCOLS] = p
    df["mass"] = np.exp(ll).sum(1)                 # mass of the 6 continuations (both tokens)
    return _finish(df), {"n_prompts": len(df), "n_computed": len(df), "seconds": secs, "prompts_per_s": len(df) / secs,
                         "prep_seconds": t1 - t0}


_HFLM = {}
def lmeval_model(lm, bs):
    from lm_eval.models.huggingface import HFLM
    key = (id(lm.model), bs)
    if key not in _HFLM:
        _HFLM.clear()
        _HFLM[key] = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=bs, device=lm.device,
                          max_length=getattr(lm.model.config, "max_position_embeddings", 2048))
    return _HFLM[key]


def agreement(res):
    "Correlations between the modes' per-item scores and value profiles; max |P_a - P_b| and |P_a - P_d|."
    import numpy as np
    from scipy.stats import spearmanr, pearsonr
    from s2b.profile import item_scores, value_profile, PCOLS, KEY
    out = {}
    items = {m: item_scores(df).set_index("item_id")["score"] for m, (df, _) in res.items()}
    prof = {m: value_profile(df, n_boot=200).set_index("value")["mean"] for m, (df, _) in res.items()}
    def corr(x, y, f):
        j = x.index.intersection(y.index); x, y = x[j].astype(float), y[j].astype(float)
        ok = ~(np.isnan(x.to_numpy()) | np.isnan(y.to_numpy()))
        if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0: return float("nan"), int(ok.sum())
        return float(f(x[ok], y[ok])[0]), int(ok.sum())
    for m in ("b", "c", "d"):
        if "a" in res and m in res:
            out[f"items_spearman_a_{m}"], out[f"items_n_a_{m}"] = corr(items["a"], items[m], spearmanr)
            out[f"profile_pearson_a_{m}"], out[f"profile_n_a_{m}"] = corr(prof["a"], prof[m], pearsonr)
            out[f"profile_spearman_a_{m}"], _ = corr(prof["a"], prof[m], spearmanr)
    for m in ("b", "d"):
        if "a" in res and m in res:
            pa = res["a"][0].set_index(KEY)[PCOLS]; pm = res[m][0].set_index(KEY)[PCOLS].loc[pa.index]
            dP = np.abs(pa.to_numpy() - pm.to_numpy()).max(1)
            out[f"max_abs_dP_a_{m}"] = float(dP.max())
            out[f"frac_dP_a_{m}_over_1e-3"] = float((dP > 1e-3).mean())
    if "c" in res:
        out["c_parse_rate"] = float(res["c"][0]["sampled"].notna().mean())
    return out


def main(argv=None):
    a = parse_args(argv)
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if "d" in modes:
        try: import lm_eval.models.huggingface  # noqa: F401
        except Exception as e:
            print(f"[setup] mode (d) skipped: lm_eval cannot be imported ({type(e).__name__}: {e})", flush=True); modes.remove("d")
    lm = load(a)
    gpu = lm.device.startswith("cuda")
    survey = survey_of(a)
    flush = a.flush_every if a.flush_every > 0 else 10**9
    prov = C.provenance(lm.device)
    print(f"[setup] {survey!r}; {prov['machine']}; commit {prov['git_commit']}", flush=True)
    peak = C.matmul_peak(lm.device, lm.model.dtype if gpu else torch.float32)
    print(f"[peak] torch.matmul {peak['n']}^3 {peak['dtype']}: {peak['tflops']:.2f} TFLOP/s", flush=True)
    fc = C.FlopCounter(lm.model)
    report = {"provenance": prov, "model": lm.record(), "n_params": fc.n_params, "n_body_params": fc.n_body,
              "survey": repr(survey), "n_prompts": len(survey) * survey.n_variants, "peak": peak,
              "batch_size": a.batch_size, "flush_every": a.flush_every, "modes": {}}
    bsz = {"a": a.batch_size, "b": a.batch_size, "c": a.sample_batch_size or a.batch_size, "d": a.lmeval_batch_size or a.batch_size}

    if not a.no_warmup:                             # kernels, allocator, cuBLAS handles: out of the timings
        tiny = survey.subset(limit=2).with_templates(survey.template_ids()[:2])
        for m in (modes or ["a"]): run_mode(lm, tiny, m, fc, bsz[m], flush)

    if a.sweep:
        rows = []
        for entry in a.sweep.split(","):
            bs, _, fl = entry.partition("/")
            bs, fl = int(bs), (int(fl) if fl else a.flush_every)
            try:
                if gpu: torch.cuda.reset_peak_memory_stats()
                _, st = run_mode(lm, survey, "a", fc, bs, fl if fl > 0 else 10**9)
                mem = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
                rows.append({"batch_size": bs, "flush_every": fl, "n_prompts": st["n_computed"], "prompts_per_s": st["n_computed"] / st["wall_seconds"],
                             "wall_s": st["wall_seconds"], "model_s": st["seconds"], "peak_gib": mem, **fc.summary(st["seconds"], peak["tflops"])})
                print(f"[sweep] a bs={bs} flush_every={fl}: {rows[-1]['prompts_per_s']:.1f} prompts/s, model {st['seconds']:.2f}s, "
                      f"wall {st['wall_seconds']:.2f}s, MFU {rows[-1]['mfu']:.3f}, peak {mem} GiB", flush=True)
            except torch.OutOfMemoryError:
                print(f"[sweep] a bs={bs}: out of memory", flush=True); rows.append({"batch_size": bs, "flush_every": fl, "error": "OOM"})
                torch.cuda.empty_cache()
        report["sweep"] = rows; C.write_json(a.json, report)
        ok = [r for r in rows if "error" not in r]
        if ok and a.pick_best:
            best = max(ok, key=lambda r: r["prompts_per_s"])
            bsz["a"] = bsz["b"] = best["batch_size"]; flush = best["flush_every"] if best["flush_every"] > 0 else 10**9
            report["batch_size"], report["flush_every"] = best["batch_size"], best["flush_every"]
            print(f"[sweep] using batch size {bsz['a']}, flush_every {best['flush_every']} for (a) and (b)", flush=True)

    res = {}
    for m in modes:
        if gpu: torch.cuda.reset_peak_memory_stats()
        df, st = run_mode(lm, survey, m, fc, bsz[m], flush)
        st["batch_size"] = bsz[m]
        st["wall_prompts_per_s"] = st["n_computed"] / st["wall_seconds"]
        st.update(fc.summary(st["seconds"], peak["tflops"]))
        if gpu: st["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res[m] = (df, st); report["modes"][m] = st
        C.write_json(a.json, report)                # after each step: a run cut off keeps what it measured
        print(f"[{m}] {st['n_computed']} prompts: wall {st['wall_seconds']:.2f}s ({st['wall_prompts_per_s']:.2f} prompts/s), "
              f"model {st['seconds']:.2f}s ({st['prompts_per_s']:.2f} prompts/s), {st['tokens']} tokens "
              f"({st['padded_tokens']} with pads), MFU {st['mfu']:.3f}", flush=True)

    if a.scale:
        rows = []
        for k in [int(x) for x in a.scale.split(",")]:
            s = repeat_items(survey, k)
            if gpu: torch.cuda.reset_peak_memory_stats()
            _, st = run_mode(lm, s, "a", fc, bsz["a"], flush)
            rows.append({"scale": k, "n_prompts": st["n_computed"], "wall_s": st["wall_seconds"], "model_s": st["seconds"],
                         "encode_s": st["wall_seconds"] - st["seconds"], "prompts_per_s": st["n_computed"] / st["wall_seconds"],
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None, **fc.summary(st["seconds"], peak["tflops"])})
            print(f"[scale] {k}x: {st['n_computed']} prompts, wall {st['wall_seconds']:.2f}s (model {st['seconds']:.2f}s, "
                  f"prompt building {rows[-1]['encode_s']:.2f}s), {rows[-1]['prompts_per_s']:.1f} prompts/s, MFU {rows[-1]['mfu']:.3f}", flush=True)
            report["scale"] = rows; C.write_json(a.json, report)

    report["batch_size_used"] = bsz["a"]
    if len(res) > 1:
        report["agreement"] = agreement(res)

    # ---- the table, last (the device reply carries the end of the output) ----
    print("\n===== profile_speed summary")
    print(f"model {lm.name} ({fc.n_params/1e9:.3f} B params, {lm.model.dtype}) on {prov['machine']}; commit {prov['git_commit']}")
    print(f"prompts: {survey!r}; flush_every {a.flush_every}; matmul peak {peak['tflops']:.2f} TFLOP/s ({peak['dtype']})")
    print(f"{'mode':<34}{'bs':>5}{'prompts':>8}{'wall s':>9}{'prompts/s':>11}{'model s':>9}{'tokens':>10}{'TFLOP/s':>9}{'MFU':>7}")
    names = {"a": "(a) logits, prefix sharing", "b": "(b) logits, full prompts", "c": "(c) sample T=0.5 + majority",
             "d": "(d) lm-eval HFLM loglikelihood"}
    for m, (_, st) in res.items():
        print(f"{names[m]:<34}{st['batch_size']:>5}{st['n_computed']:>8}{st['wall_seconds']:>9.2f}{st['wall_prompts_per_s']:>11.2f}"
              f"{st['seconds']:>9.2f}{st['tokens']:>10}{st['achieved_tflops']:>9.3f}{st['mfu']:>7.3f}")
    if "a" in res:
        ra = report["modes"]["a"]["wall_prompts_per_s"]
        report["ratios"] = {f"a/{m}": ra / report["modes"][m]["wall_prompts_per_s"] for m in res if m != "a"}
        print("speed ratios (wall prompts/s): " + ", ".join(f"{k} = {v:.2f}x" for k, v in report["ratios"].items()))
    if "agreement" in report:
        g = report["agreement"]
        print("agreement: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in g.items()))
        if "max_abs_dP_a_b" in g:
            print(f"max |P_a - P_b| = {g['max_abs_dP_a_b']:.2e}: {'PASS' if g['max_abs_dP_a_b'] <= 1e-3 else 'FAIL'} (<= 1e-3)")
    for r in report.get("sweep", []):
        if "error" in r: print(f"sweep bs={r['batch_size']} flush_every={r['flush_every']}: {r['error']}"); continue
        print(f"sweep (a) bs={r['batch_size']} flush_every={r['flush_every']}: {r['n_prompts']} prompts, {r['wall_s']:.2f}s wall "
              f"({r['model_s']:.2f}s model), {r['prompts_per_s']:.1f} prompts/s, MFU {r['mfu']:.3f}, peak {r['peak_gib']} GiB")
    for r in report.get("scale", []):
        print(f"scale {r['scale']}x: {r['n_prompts']} prompts in {r['wall_s']:.2f}s wall ({r['model_s']:.2f}s model), "
              f"{r['prompts_per_s']:.1f} prompts/s, MFU {r['mfu']:.3f}")
    C.write_json(a.json, report)
    return report


if __name__ == "__main__":
    main()
