"""Compare every number in every `metrics.json` of two runs folders (timings excepted).

    python bench/compare_metrics.py RUNS_A RUNS_B [--tol 1e-6]

`--rename OLD=NEW` reads A's key OLD as NEW (a renamed role: `--rename conditioned=adapter`); `--new KEY` allows a key that
only B has (a setting added since, e.g. `--new target_repeat --new revision`).

A refactoring that should not change behaviour runs `s2b demo --runs-dir RUNS_A` before it and `--runs-dir RUNS_B`
after it (same recipe, same seed, empty folders), then this. It prints each number that differs by more than `--tol`
(or is missing on one side) and exits 1 if there is any; the counts of files and numbers compared otherwise.
"""
import argparse, json, math, re, sys
from pathlib import Path

TIMING = re.compile(r"(^|[._])(seconds|session_seconds|eval_seconds|seconds_per_\w+|\w*_per_s|cpu_seconds_per_item)($|[.\[])")

def numbers(o, path=""):
    "{json path: number} for every number in `o` (bools and strings left out)."
    if isinstance(o, dict): return {k2: v2 for k, v in o.items() for k2, v2 in numbers(v, f"{path}.{k}" if path else k).items()}
    if isinstance(o, list): return {k2: v2 for i, v in enumerate(o) for k2, v2 in numbers(v, f"{path}[{i}]").items()}
    if isinstance(o, (int, float)) and not isinstance(o, bool): return {path: float(o)}
    if o is None: return {path: math.nan}
    return {}

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a"); ap.add_argument("b"); ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--rename", action="append", default=[], help="OLD=NEW: A's key OLD is B's NEW")
    ap.add_argument("--new", action="append", default=[], help="a key (last path part) that only B may have")
    a = ap.parse_args(argv)
    A, B = Path(a.a), Path(a.b)
    files = sorted({p.relative_to(A) for p in A.rglob("metrics.json")} | {p.relative_to(B) for p in B.rglob("metrics.json")})
    bad, n = [], 0
    for f in files:
        if not (A/f).exists() or not (B/f).exists(): bad.append(f"{f}: only in {'B' if not (A/f).exists() else 'A'}"); continue
        na, nb = numbers(json.loads((A/f).read_text())), numbers(json.loads((B/f).read_text()))
        for old, new in (r.split("=", 1) for r in a.rename):
            na = {re.sub(rf"(^|\.){re.escape(old)}($|[.\[])", rf"\g<1>{new}\g<2>", k): v for k, v in na.items()}
        nb = {k: v for k, v in nb.items() if k in na or re.split(r"[.\[]", k)[-1] not in a.new}
        for k in sorted(set(na) | set(nb)):
            if TIMING.search(k): continue
            n += 1
            x, y = na.get(k), nb.get(k)
            if x is None or y is None: bad.append(f"{f}: {k} only in {'B' if x is None else 'A'}"); continue
            if math.isnan(x) and math.isnan(y): continue
            if not abs(x - y) <= a.tol: bad.append(f"{f}: {k}: {x!r} vs {y!r}")
    for line in bad: print(line)
    print(f"{len(files)} metrics.json files, {n} numbers compared (timings excepted), tolerance {a.tol:g}: "
          f"{'all agree' if not bad else f'{len(bad)} differ'}")
    return 1 if bad else 0

if __name__ == "__main__": sys.exit(main())
