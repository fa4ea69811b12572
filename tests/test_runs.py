import json, tempfile
from pathlib import Path
import pytest
from s2b.runs import STAGES, execute_stage, repo_root, stage_copy, stage_done, _KEEP

def _is_lib(c): return c.cell_type == "code" and bool(_KEEP.search(c.source))

@pytest.mark.parametrize("stage", ["profile", "finetune", "indomain", "aita", "machiavelli", "report"])
def test_stage_copy_keeps_the_library_and_the_run(stage):
    nb = repo_root()/"nbs"/STAGES[stage]
    full, run = stage_copy(nb, examples=True), stage_copy(nb)
    assert sum(map(_is_lib, run.cells)) == sum(map(_is_lib, full.cells)) > 0
    assert sum("parameters" in c.metadata.get("tags", []) for c in run.cells) == 1
    last = max(i for i, c in enumerate(full.cells) if _is_lib(c))
    assert [c.source for c in run.cells[-(len(full.cells) - last - 1):]] == [c.source for c in full.cells[last + 1:]]
    assert len(run.cells) < len(full.cells)                       # every stage notebook has examples to leave out

def test_stage_copy_needs_a_parameters_cell(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| export\nx = 1")])
    nbformat.write(nb, tmp_path/"n.ipynb")
    with pytest.raises(ValueError, match="parameters"):
        stage_copy(tmp_path/"n.ipynb")

@pytest.mark.slow
def test_execute_stage_runs_the_stage_once(tmp_path, capsys):
    out = tmp_path/"report"
    params = {"runs_dir": str(tmp_path/"runs"), "figures": str(tmp_path/"figures")}
    sockets = lambda: set(Path(tempfile.gettempdir()).glob("s2b-kernel-*"))
    before_run = sockets()
    report = execute_stage("report", out, params, stream=True)
    assert "figure files" in capsys.readouterr().out                         # the notebook's own output, live
    nb = json.loads(report.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any("assert parse_run_dir(" in c for c in code)                # the examples were left out
    assert any("def parse_run_dir" in c for c in code)                        # the library was not
    assert json.loads((out/"metrics.json").read_text())["n_runs"] == 0 and stage_done(out, params)
    assert sockets() <= before_run                                             # the kernel's IPC sockets are gone
    before = report.stat().st_mtime_ns
    execute_stage("report", out, params, progress=False)                       # finished: skipped, not rerun
    assert report.stat().st_mtime_ns == before and "already finished" in capsys.readouterr().out

@pytest.mark.parametrize("stage", ["profile", "finetune", "indomain", "aita", "machiavelli", "report"])
def test_parameters_do_not_shadow_the_library(stage):
    "A parameter named like a function of the notebook would replace that function in the stage run."
    import ast
    nb = stage_copy(repo_root()/"nbs"/STAGES[stage])
    names = lambda src: {t.id for n in ast.parse(src).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined = set()
    for c in nb.cells:
        if _is_lib(c):
            tree = ast.parse(c.source)
            defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | names(c.source)
    params = names(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])))
    assert not params & defined, f"{STAGES[stage]}: parameters {sorted(params & defined)} shadow the notebook's own definitions"
