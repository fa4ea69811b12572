"""How the notebooks read: export cells, their median length, and example cells per export cell.

    python bench/notebook_style.py [NBS_DIR]

An export cell is a code cell nbdev exports (`#| export`), its import cell aside; an example is a code cell that
follows an export cell before the next export cell (the fastcore style: a definition, then its example).
"""
import json, statistics, sys
from pathlib import Path

def cells(nb: Path) -> list[dict]:
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]

def source(c) -> str: return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]

def stats(nbs_dir="nbs") -> dict:
    sizes, examples, per_nb = [], 0, {}
    for nb in sorted(Path(nbs_dir).glob("*.ipynb")):
        ex, n_ex, after = [], 0, False
        for c in cells(nb):
            s = source(c)
            if s.lstrip().startswith("#| export") and "from __future__ import annotations" not in s:
                ex.append(len(s.splitlines()) - 1); after = True
            elif s.strip() and not s.lstrip().startswith("#|") and after: n_ex += 1; after = False
        sizes += ex; examples += n_ex
        per_nb[nb.name] = (len(ex), statistics.median(ex) if ex else 0, n_ex)
    return {"export_cells": len(sizes), "median_lines": statistics.median(sizes), "over_30": sum(s > 30 for s in sizes),
            "examples_per_export": round(examples / len(sizes), 2), "per_notebook": per_nb}

if __name__ == "__main__":
    s = stats(sys.argv[1] if len(sys.argv) > 1 else "nbs")
    for nb, (n, med, ex) in s.pop("per_notebook").items(): print(f"{nb:28s} export cells {n:3d}  median {med:5.1f} lines  examples {ex:3d}")
    print(s)
