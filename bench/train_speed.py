#!/usr/bin/env python3
"""LoRA training throughput of s2b's fine-tuning path: plain transformers + peft vs Unsloth (issue 7, issue 3).

Every configuration runs in its own process (Unsloth must be imported before transformers and patches it
globally), through the code users run: `s2b.models.load_model(dir, backend=...)`, `s2b.finetune.intervention_data`
on the KVS train split, `s2b.finetune.sft_trainer` (TRL SFTTrainer, loss on the answer token only). A callback
times each optimizer step (CUDA synchronised; the first `--warmup` steps, which hold Unsloth's compile, are left
out) and the collator counts the tokens of each batch. Printed per configuration: tokens/s (real tokens, pads
excluded), examples/s, step time (median), peak GPU memory (weights included), and the ratios to the first one.

A configuration is `backend[:key=value,...]`, keys: bs (per-device batch), gc (gradient checkpointing 0/1),
pad (padded = s2b's collator, right padding to the longest row; padding_free = TRL's collator flattening the batch
into one row with position_ids, after checking that the loss of 8 examples is the same both ways), mult (pad to a
multiple of this), r, alpha. The collator changes are benchmark-only hooks: sft_trainer has no knob for them.

  # CPU (2 cores): the peft backend on the embedded model, cpu-smoke sizes
  .venv/bin/python bench/train_speed.py --model embedded --configs hf:bs=8,r=16,alpha=32 --steps 4 --warmup 1
  # GPU: random-init Llama-3.1-8B dir, the paper's LoRA (r=256, alpha=512), batch 16
  python3 bench/train_speed.py --make llama-3.1-8b --model /tmp/llama8b --configs "hf;unsloth;unsloth:pad=padded;unsloth:gc=1"
  # CPU, issue 24: the training step of before (whole sequences, every position's logits), the answer slot's logits alone,
  # and those above the cached frozen layers, interleaved on the same batches of the demo's data in one process
  .venv/bin/python bench/train_speed.py --compare-steps --threads 2 --bs 8 --steps 8 --warmup 1 --json bench/results/train_steps_cpu.json
  # GPU: s2b.finetune.run_finetune end to end, backend hf vs unsloth, on a random Llama-3.2-1B-shaped dir
  python3 bench/train_speed.py --make llama-3.2-1b --model /tmp/llama1b --run-finetune hf,unsloth --steps 15
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
             "TOKENIZERS_PARALLELISM": "false", "UNSLOTH_COMPILE_LOCATION": "/tmp/unsloth_compiled_cache"}.items():
    os.environ.setdefault(k, v)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="'embedded' or a local model dir")
    ap.add_argument("--make", choices=sorted(C.CONFIGS), help="first save a random-init model of this config (+ embedded tokenizer) to --model")
    ap.add_argument("--tokenizer", help="tokenizer dir for --make")
    ap.add_argument("--survey", help="KVS json (default: $S2B_KVS, .gpu/ or ../shared/data/kvs/)")
    ap.add_argument("--configs", default="hf", help="';'-separated configurations (see above)")
    ap.add_argument("--run-finetune", help="instead: comma-separated backends for s2b.finetune.run_finetune end to end")
    ap.add_argument("--compare-steps", action="store_true", help="instead: the three training steps of issue 24 side by side "
                    "(the demo's data and recipes/cpu-selective.yaml's LoRA; --bs, --steps, --warmup, --threads apply)")
    ap.add_argument("--target", default="Achievement", help="value whose items get the forced answer")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--alpha", type=int, default=512)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    ap.add_argument("--threads", type=int, help="torch threads on CPU")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-finetune", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def parse_config(spec: str, a) -> dict:
    backend, _, rest = spec.strip().partition(":")
    cfg = {"backend": backend, "bs": a.bs, "gc": 0, "pad": "padded", "r": a.r, "alpha": a.alpha, "mult": 0}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        cfg[k.strip()] = v.strip() if k.strip() == "pad" else int(v)
    if cfg["backend"] not in ("hf", "unsloth"): raise SystemExit(f"unknown backend in {spec!r}")
    return cfg


def label(cfg: dict) -> str:
    s = f"{cfg['backend']} bs={cfg['bs']} gc={cfg['gc']} r={cfg['r']}"
    s += " padding-free" if cfg["pad"] == "padding_free" else ""
    return s + (f" mult={cfg['mult']}" if cfg.get("mult") else "")


def replace_collator(trainer, lm, mult: int = 0, padding_free: bool = False):
    "Benchmark-only hook: rebuild sft_trainer's collator with pad_to_multiple_of / padding_free (sft_trainer has no such knob)."
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    trainer.data_collator = DataCollatorForLanguageModeling(pad_token_id=lm.tokenizer.pad_token_id, pad_to_multiple_of=mult or None,
                                                            padding_free=padding_free)
    print(f"[child] collator replaced: pad_to_multiple_of={mult or None}, padding_free={padding_free}", flush=True)


def packed_vs_padded_loss(trainer, lm, n: int = 8):
    "Loss of the same n examples, padded and padding-free (one flattened row with position_ids): equal if packing is handled."
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as D
    feats = [trainer.train_dataset[i] for i in range(n)]
    dev = next(trainer.model.parameters()).device
    out = {}
    for name, pf in (("padded", False), ("padding_free", True)):
        b = {k: v.to(dev) for k, v in D(pad_token_id=lm.tokenizer.pad_token_id, padding_free=pf)(feats).items()}
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out[name] = float(trainer.model(**b).loss)
    print(f"[child] loss of {n} examples: padded {out['padded']:.5f}, padding-free {out['padding_free']:.5f}", flush=True)
    return out


# ------------------------------------------------------------------ child side
def _import_backend(backend: str, pad: str = "padded"):
    if backend == "unsloth":
        t0 = time.time()
        import unsloth  # noqa: F401  -- before transformers, trl and peft
        print(f"[child] import unsloth {unsloth.__version__}: {time.time()-t0:.1f}s", flush=True)
    else:
        assert "unsloth" not in sys.modules


def step_timer(cuda: bool, stats: dict):
    "A TrainerCallback recording the wall time between consecutive optimizer steps (synchronised) and peak memory."
    import torch
    from transformers import TrainerCallback
    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            stats["t_begin"] = self.last = time.perf_counter(); stats["steps"] = []
        def on_step_end(self, args, state, control, **kw):
            if cuda: torch.cuda.synchronize()
            t = time.perf_counter(); stats["steps"].append(t - self.last); self.last = t
        def on_train_end(self, args, state, control, **kw):
            if cuda:
                stats["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
                stats["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return Timer()


def count_tokens(trainer, stats: dict):
    "Wrap the trainer's collator: per batch (real tokens, tokens with pads, examples)."
    orig = trainer.data_collator
    stats["batches"] = []
    def collate(features):
        b = orig(features)
        ids, am = b["input_ids"], b.get("attention_mask")
        real = int(am.sum()) if am is not None else int(ids.numel())
        stats["batches"].append((real, int(ids.numel()), len(features)))
        return b
    trainer.data_collator = collate
    return trainer


def summarize(stats: dict, warmup: int) -> dict:
    import statistics
    st, bt = stats.get("steps", []), stats.get("batches", [])
    n = min(len(st), len(bt))
    timed = list(range(min(warmup, max(n - 1, 0)), n))
    secs = sum(st[i] for i in timed)
    tok = sum(bt[i][0] for i in timed); padded = sum(bt[i][1] for i in timed); ex = sum(bt[i][2] for i in timed)
    return {"steps_run": len(st), "steps_timed": len(timed), "first_step_s": st[0] if st else None,
            "step_s_median": statistics.median([st[i] for i in timed]) if timed else None,
            "step_s_mean": secs / len(timed) if timed else None,
            "tokens_per_s": tok / secs if secs else None, "examples_per_s": ex / secs if secs else None,
            "tokens_per_s_at_median": (tok / len(timed)) / statistics.median([st[i] for i in timed]) if timed else None,
            "tokens_per_step": tok / len(timed) if timed else None, "pad_fraction": 1 - tok / padded if padded else None,
            "peak_alloc_gib": stats.get("peak_alloc_gib"), "peak_reserved_gib": stats.get("peak_reserved_gib")}


def training_data(lm, a, n_examples: int):
    "Intervention data on the KVS train split: the target's items answer 1, every other item a baseline 3."
    from s2b.survey import load_survey
    from s2b.interventions import intervention_data
    from s2b.values import target_ratings
    s = load_survey(C.kvs_path(a.survey)).split("train")
    d = intervention_data(s, {i.id: 3 for i in s.items}, target_ratings(a.target, "down"), lm)
    return d.sample(n=min(len(d), n_examples), random_state=0).reset_index(drop=True)


def child(a):
    cfg = json.loads(a.child)
    _import_backend(cfg["backend"], cfg["pad"])
    import torch
    from s2b.models import load_model, default_device
    from s2b.recipes import load_recipe
    from s2b.finetune import sft_trainer
    if a.threads: torch.set_num_threads(a.threads)
    device = a.device or default_device(); cuda = device.startswith("cuda")
    t0 = time.time()
    lm = load_model(a.model, backend=cfg["backend"], training=True, device=device, max_seq_length=a.max_length)
    lm.model.train()
    print(f"[child] load_model({a.model!r}, backend={cfg['backend']}): {time.time()-t0:.1f}s, {type(lm.model).__name__}, "
          f"{lm.model.dtype}, attn {getattr(lm.model.config, '_attn_implementation', None)}", flush=True)
    data = training_data(lm, a, cfg["bs"] * (a.steps + 2))
    rc = load_recipe(None, {"lora.r": cfg["r"], "lora.alpha": cfg["alpha"], "training.per_device_train_batch_size": cfg["bs"],
                            "training.max_steps": a.steps, "training.gradient_checkpointing": bool(cfg["gc"]),
                            "training.max_length": a.max_length})
    out = Path(tempfile.mkdtemp(prefix="s2b-train-"))
    t0 = time.time()
    trainer = sft_trainer(lm, data, None, rc, out, cfg["backend"])
    print(f"[child] sft_trainer: {time.time()-t0:.1f}s, {type(trainer).__name__}, collator {type(trainer.data_collator).__name__}", flush=True)
    check = None
    if cfg["pad"] == "padding_free": check = packed_vs_padded_loss(trainer, lm)
    if cfg.get("mult") or cfg["pad"] == "padding_free":
        replace_collator(trainer, lm, int(cfg.get("mult") or 0), cfg["pad"] == "padding_free")
    stats = {}
    trainer.add_callback(step_timer(cuda, stats)); count_tokens(trainer, stats)
    ntrain = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    res = trainer.train()
    out_stats = summarize(stats, a.warmup)
    out_stats.update(packed_vs_padded_loss=check, config=cfg, label=label(cfg), trainable_params=ntrain, train_loss=res.training_loss,
                     loss_finite=bool(res.training_loss == res.training_loss), steps_s=[round(x, 4) for x in stats["steps"]],
                     device=torch.cuda.get_device_name(0) if cuda else "cpu")
    print("RESULT " + json.dumps(out_stats), flush=True)


def child_finetune(a):
    "s2b.finetune.run_finetune end to end with one backend, the paper's recipe cut to a few steps; a timer added."
    backend = a.child_finetune
    _import_backend(backend)
    import torch
    import s2b.finetune as F
    stats = {}
    orig = F.sft_trainer
    def timed_sft_trainer(*args, **kw):
        tr = orig(*args, **kw)
        tr.add_callback(step_timer(torch.cuda.is_available(), stats)); count_tokens(tr, stats)
        return tr
    F.sft_trainer = timed_sft_trainer
    out = Path(tempfile.mkdtemp(prefix=f"s2b-ft-{backend}-"))
    t0 = time.time()
    from s2b.interventions import SteeringParams
    p = SteeringParams(model=a.model, survey=C.kvs_path(a.survey), target=a.target, direction="down", recipe="recipes/paper.yaml",
                       overrides={"training.max_steps": a.steps, "lora.r": a.r, "lora.alpha": a.alpha,
                                  "training.per_device_train_batch_size": a.bs,
                                  "data.others_per_value": 4, "data.eval_limit": 20}, backend=backend)
    m = F.run_finetune(p, out=out, force=True)
    wall = time.time() - t0
    s = summarize(stats, a.warmup)
    s.update(label=f"run_finetune backend={backend}", backend=m["backend"], device=m["device"], wall_s=wall, steps=m["steps"],
             train_seconds=m["seconds"], seconds_per_step_incl_compile=m["seconds_per_step"], train_loss=m["train_loss"],
             eval_loss=m["eval_loss"], n_train=m["n_train"], adapter_saved=(out/"adapter"/"adapter_config.json").exists(),
             steps_s=[round(x, 4) for x in stats.get("steps", [])])
    print("RESULT " + json.dumps(s), flush=True)


# ------------------------------------------------------------------ issue 24: three steps on the same batches
STEPS = {"before": "whole sequences, right-padded, every position's logits (answer_loss)",
         "answer slot": "prompts, left-padded, the last position's logits only (slot_loss)",
         "answer slot + frozen cache": "the same, the layers below the first adapted one read from FrozenStates"}

def demo_examples(lm):
    "The demo's fine-tuning examples (recipes/cpu-selective.yaml's items, templates and instruction); every other item answers 3."
    from s2b.survey import load_survey
    from s2b.recipes import load_recipe
    from s2b.interventions import intervention_data, select_items
    from s2b.values import target_ratings
    d = load_recipe("recipes/cpu-selective.yaml")["data"]
    s = load_survey("bundled").split("train")
    s = select_items(s, {"Universalism_nature", "Power_resources"}, d["others_per_value"], seed=0)
    s = s.with_templates([int(x) for x in d["train_templates"].split(",")]).with_instructions([int(x) for x in d["instructions"].split(",")])
    return intervention_data(s, {i.id: 3 for i in s.items}, target_ratings("Universalism_nature", "up"), lm)


def compare_steps(a):
    """One process, one LoRA model: per round, the same batch through each step (order rotated), forward + backward timed
    (the optimizer step, the same for all three, is left out and no weights change). FLOPs: torch.utils.flop_counter's
    count of one step's matmuls and attention, forward and backward, as torch dispatches them; MFU against torch.matmul
    2048^3 fp32 measured in the same run."""
    import statistics, torch
    from torch.utils.flop_counter import FlopCounterMode
    from s2b.models import load_model
    from s2b.recipes import load_recipe
    from s2b.finetune import lora_model, answer_features, answer_loss, with_labels
    from s2b.trainstep import prompt_batch, answer_logits, slot_loss, frozen_states
    torch.set_num_threads(a.threads or 2)
    lm = load_model(a.model, training=True)
    data = demo_examples(lm)
    torch.manual_seed(0)
    model = lora_model(lm, load_recipe("recipes/cpu-selective.yaml")["lora"], "hf", 0, False)
    model.train()
    feats, pad = answer_features(data), lm.tokenizer.pad_token_id
    t0 = time.perf_counter()
    fs = frozen_states(lm, model, [f["input_ids"] for f in feats], root=tempfile.mkdtemp(prefix="s2b-frozen-"))
    fill_s = time.perf_counter() - t0
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [[order[(i * a.bs + j) % len(order)] for j in range(a.bs)] for i in range(a.steps + a.warmup)]

    def before(idx):
        d = with_labels(data.iloc[idx]); L = d.input_ids.map(len).max()
        ids = torch.tensor([list(x) + [pad] * (L - len(x)) for x in d.input_ids])
        mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in d.input_ids])
        labels = torch.tensor([list(x) + [-100] * (L - len(x)) for x in d.labels])
        soft, cand = torch.tensor(list(d.soft), dtype=torch.float32), torch.tensor(list(d.cand))
        return lambda: answer_loss(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels, soft, cand)
    def slot(idx, cached=False):
        fsx = [feats[i] for i in idx]
        b = prompt_batch(fsx, pad, [fs[f["input_ids"]] for f in fsx] if cached else None)
        return lambda: slot_loss(answer_logits(model, b, fs.layer if cached else None)[0], b["soft"], b["cand"])
    make = {"before": before, "answer slot": slot, "answer slot + frozen cache": lambda idx: slot(idx, True)}
    times = {k: [] for k in make}; losses = {k: [] for k in make}
    for r, idx in enumerate(batches):
        names = list(make); names = names[r % 3:] + names[:r % 3]
        for k in names:
            step = make[k](idx)                     # batch building (and the cache's lookups) outside the timer, as in a DataLoader
            model.zero_grad(set_to_none=True)
            t = time.perf_counter(); loss = step(); loss.backward(); dt = time.perf_counter() - t
            if r >= a.warmup: times[k].append(dt); losses[k].append(float(loss.detach()))
    flops = {}
    for k in make:
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as fc: make[k](batches[-1])().backward()
        flops[k] = fc.get_total_flops() / a.bs        # per example of that batch
    peak = C.matmul_peak("cpu", torch.float32)
    n_tok = [sum(len(data.input_ids.iloc[i]) for i in idx) for idx in batches[a.warmup:]]
    rows = []
    for k in make:
        secs = sum(times[k]); med = statistics.median(times[k])
        fl = flops[k] * a.bs * len(times[k])
        rows.append({"label": k, "what": STEPS[k], "step_s_median": med, "step_s_mean": secs / len(times[k]),
                     "tokens_per_s": sum(n_tok) / secs, "examples_per_s": a.bs * len(times[k]) / secs,
                     "gflop_per_example": flops[k] / 1e9, "achieved_tflops": fl / secs / 1e12, "mfu": fl / secs / 1e12 / peak["tflops"],
                     "mean_loss": sum(losses[k]) / len(losses[k]), "steps_s": [round(x, 4) for x in times[k]]})
    cache = {"prompts": len(fs.states), "mib": fs.nbytes / 2**20, "fill_s": fill_s, "layer": fs.layer,
             "fill_s_per_prompt": fill_s / len(fs.states)}
    return {"examples": len(data), "batch": a.bs, "rounds_timed": a.steps, "threads": torch.get_num_threads(), "peak": peak,
            "frozen_cache": cache, "results": rows}


def print_compare(rep, prov):
    print(f"\n===== train_speed --compare-steps: embedded SmolLM2-135M, recipes/cpu-selective.yaml's LoRA (r 16, last 10 of 30 layers), "
          f"the demo's {rep['examples']} examples, batch {rep['batch']}, {rep['rounds_timed']} interleaved rounds, {rep['threads']} threads; "
          f"{prov['machine']}; commit {prov['git_commit']}")
    print(f"torch.matmul 2048^3 fp32: {rep['peak']['tflops']:.3f} TFLOP/s. FLOPs: torch.utils.flop_counter (matmuls and attention, "
          f"forward + backward) of one step; the optimizer step is not timed (the same for all three)")
    print(f"{'step':<30}{'tok/s':>9}{'ex/s':>8}{'step ms':>10}{'GFLOP/ex':>10}{'TFLOP/s':>9}{'MFU':>7}{'loss':>8}")
    base = rep["results"][0]
    for r in rep["results"]:
        print(f"{r['label']:<30}{r['tokens_per_s']:>9.0f}{r['examples_per_s']:>8.2f}{r['step_s_median']*1e3:>10.0f}"
              f"{r['gflop_per_example']:>10.2f}{r['achieved_tflops']:>9.3f}{r['mfu']:>7.3f}{r['mean_loss']:>8.4f}")
    for r in rep["results"][1:]:
        print(f"{r['label']} vs before: tokens/s x{r['tokens_per_s']/base['tokens_per_s']:.2f}, median step time "
              f"x{r['step_s_median']/base['step_s_median']:.2f}, FLOPs per example x{r['gflop_per_example']/base['gflop_per_example']:.2f}")
    c = rep["frozen_cache"]
    print(f"frozen cache: the states entering layer {c['layer']} of {c['prompts']} prompts, {c['mib']:.1f} MiB, computed once in "
          f"{c['fill_s']:.1f}s ({c['fill_s_per_prompt']*1e3:.0f} ms a prompt)")


# ------------------------------------------------------------------ parent side
def spawn(a, extra: list[str], timeout: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--r", str(a.r), "--alpha", str(a.alpha), "--bs", str(a.bs), "--max-length", str(a.max_length), "--target", a.target] + \
          (["--survey", a.survey] if a.survey else []) + (["--device", a.device] if a.device else []) + \
          (["--threads", str(a.threads)] if a.threads else []) + extra
    print(f"\n===== {' '.join(extra)}", flush=True)
    res = None
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=dict(os.environ))
        t0 = time.time()
        for line in p.stdout:
            line = line.rstrip("\n")
            if line.startswith("RESULT "): res = json.loads(line[7:]); print("RESULT (parsed)", flush=True)
            elif "it/s]" not in line and "s/it]" not in line: print("  " + line, flush=True)
            if time.time() - t0 > timeout: p.kill(); print("  [timeout]"); break
        p.wait()
        if p.returncode: print(f"  [exit {p.returncode}]", flush=True)
    except Exception as e:  # keep going with the other configurations
        print(f"  [failed: {e}]", flush=True)
    return res


def main(argv=None):
    a = parse_args(argv)
    if a.child: return child(a)
    if a.child_finetune: return child_finetune(a)
    import torch
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.make:
        C.make_model_dir(a.make, a.model, a.tokenizer, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    prov = C.provenance(device)
    if a.compare_steps:
        rep = {"provenance": prov, **compare_steps(a)}
        C.write_json(a.json, rep); print_compare(rep, prov)
        return rep
    report = {"provenance": prov, "model": a.model, "make": a.make, "steps": a.steps, "warmup": a.warmup, "results": []}
    if a.run_finetune:
        for b in a.run_finetune.split(","):
            r = spawn(a, ["--child-finetune", b.strip()], a.timeout)
            report["results"].append(r or {"label": f"run_finetune backend={b}", "error": True})
            C.write_json(a.json, report)                   # after each one: a killed run keeps what it measured
    else:
        for spec in a.configs.split(";"):
            cfg = parse_config(spec, a)
            r = spawn(a, ["--child", json.dumps(cfg)], a.timeout)
            report["results"].append(r or {"label": label(cfg), "config": cfg, "error": True})
            C.write_json(a.json, report)
    C.write_json(a.json, report)
    # ---- the table, last
    print(f"\n===== train_speed summary: {a.model}{' (random ' + a.make + ')' if a.make else ''}, {a.steps} steps, first "
          f"{a.warmup} untimed; {prov['machine']}; commit {prov['git_commit']}")
    print(f"{'configuration':<44}{'tok/s':>9}{'tok/s@med':>10}{'ex/s':>8}{'step ms':>9}{'1st step s':>11}{'pad %':>7}{'peak GiB':>9}{'loss':>8}")
    base = next((r for r in report["results"] if not r.get("error")), None)
    for r in report["results"]:
        if r.get("error"): print(f"{r['label']:<44} FAILED"); continue
        f = lambda x, fmt: format(x, fmt) if isinstance(x, (int, float)) else "-".rjust(int(fmt.split(".")[0]))
        print(f"{r['label']:<44}{f(r['tokens_per_s'], '9.0f')}{f(r.get('tokens_per_s_at_median'), '10.0f')}{f(r['examples_per_s'], '8.1f')}{f(None if r['step_s_median'] is None else r['step_s_median']*1e3, '9.1f')}"
              f"{f(r['first_step_s'], '11.1f')}{f(None if r['pad_fraction'] is None else 100*r['pad_fraction'], '7.1f')}"
              f"{f(r.get('peak_alloc_gib'), '9.2f')}{f(r.get('train_loss'), '8.3f')}")
    if base:
        for r in report["results"]:
            if r is base or r.get("error") or not base.get("tokens_per_s") or not r.get("tokens_per_s"): continue
            mem = (f", peak memory x{r['peak_alloc_gib']/base['peak_alloc_gib']:.2f}" if r.get("peak_alloc_gib") and base.get("peak_alloc_gib") else "")
            print(f"{r['label']} vs {base['label']}: tokens/s x{r['tokens_per_s']/base['tokens_per_s']:.2f} (mean over timed steps), "
                  f"x{r['tokens_per_s_at_median']/base['tokens_per_s_at_median']:.2f} (at the median step), "
                  f"median step time x{r['step_s_median']/base['step_s_median']:.2f}{mem}")
    return report


if __name__ == "__main__":
    main()
