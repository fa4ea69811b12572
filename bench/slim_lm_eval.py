"""Repack the lm_eval wheel without `lm_eval/tasks/` (15,000 task files, ~8 MiB): bench/profile_speed.py imports only
lm_eval.models.huggingface and lm_eval.api, never the tasks. RECORD is rewritten so the wheel stays valid.
  python3 bench/slim_lm_eval.py lm_eval-0.4.13-py3-none-any.whl .whl-bench/lm_eval-0.4.13-0slim-py3-none-any.whl"""
import base64, hashlib, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
def h(b): return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
zin = zipfile.ZipFile(src)
rec = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
keep = {n: zin.read(n) for n in zin.namelist()
        if n != rec and not (n.startswith("lm_eval/tasks/") and n != "lm_eval/tasks/__init__.py")}
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for n, d in keep.items(): z.writestr(n, d)
    z.writestr(rec, "\n".join([f"{n},{h(d)},{len(d)}" for n, d in keep.items()] + [f"{rec},,"]) + "\n")
print(f"kept {len(keep)} entries -> {dst}")
