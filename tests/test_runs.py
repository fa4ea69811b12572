import json, os, tempfile
from pathlib import Path
import pytest
from s2b.stages import STAGES, execute_stage, stage_copy, stage_done, stage_notebook, is_library_cell
from s2b.runs import repo_root

@pytest.mark.parametrize("stage", ["profile", "finetune", "indomain", "aita", "machiavelli", "report"])
def test_stage_copy_keeps_the_library_and_the_run(stage):
    nb = stage_notebook(stage)
    full, run = stage_copy(nb, examples=True), stage_copy(nb)
    assert sum(map(is_library_cell, run.cells)) == sum(map(is_library_cell, full.cells)) > 0
    assert sum("parameters" in c.metadata.get("tags", []) for c in run.cells) == 1
    last = max(i for i, c in enumerate(full.cells) if is_library_cell(c))
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
    sockets = lambda: set(Path(tempfile.gettempdir()).glob(f"s2b-kernel-{os.getpid()}-*"))     # this process's (others may run beside)
    before_run = sockets()
    report = execute_stage("report", out, params, stream=True)
    assert "figure files" in capsys.readouterr().out                         # the notebook's own output, live
    nb = json.loads(report.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any("assert run_info(" in c for c in code)                    # the examples were left out
    assert any("def run_info" in c for c in code)                            # the library was not
    assert json.loads((out/"metrics.json").read_text())["n_runs"] == 0 and stage_done(out, params)
    assert sockets() <= before_run                                             # the kernel's IPC sockets are gone
    before = report.stat().st_mtime_ns
    execute_stage("report", out, params, progress=False)                       # finished: skipped, not rerun
    assert report.stat().st_mtime_ns == before and "already finished" in capsys.readouterr().out

@pytest.mark.parametrize("stage", ["profile", "finetune", "indomain", "aita", "machiavelli", "report"])
def test_parameters_do_not_shadow_the_library(stage):
    "A parameter named like a function of the notebook would replace that function in the stage run."
    import ast
    nb = stage_copy(stage_notebook(stage))
    names = lambda src: {t.id for n in ast.parse(src).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined = set()
    for c in nb.cells:
        if is_library_cell(c):
            tree = ast.parse(c.source)
            defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | names(c.source)
    params = names(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])))
    assert not params & defined, f"{STAGES[stage].notebook}: parameters {sorted(params & defined)} shadow the notebook's own definitions"

def _toy_stage(tmp_path, monkeypatch):
    "A stage notebook that writes metrics.json and run.json, and fails when asked to."
    import nbformat, s2b.stages as R
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import json, pathlib"),
        nbformat.v4.new_code_cell('out = "x"\nvalue = 1\nfail = False\nsurvey = None\nforce = False\nprobe = False', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('if probe:\n    try: import s2b_probe_module\n    except ModuleNotFoundError: pass\n'
                                  '    else: raise RuntimeError("imported code from the run folder")'),
        nbformat.v4.new_code_cell('if fail: raise ValueError("bad value")\n'
                                  'pathlib.Path(out, "metrics.json").write_text(json.dumps({"value": value, "out": out}))\n'
                                  'pathlib.Path(out, "run.json").write_text(json.dumps({"stage": "toy", "params": {"value": value}}))'),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path/"toy.ipynb"; nbformat.write(nb, path)
    monkeypatch.setattr(R, "stage_notebook", lambda stage: path)

@pytest.mark.slow
def test_a_failed_rerun_keeps_the_finished_run(tmp_path, monkeypatch, capsys):
    from s2b.stages import StageFailed, RunFolderError, check_out_dir
    _toy_stage(tmp_path, monkeypatch)
    out = tmp_path/"run"
    report = execute_stage("toy", out, {"value": 1}, progress=False)
    good = {f: (out/f).read_bytes() for f in ("report.ipynb", "metrics.json", "run.json")}
    with pytest.raises(StageFailed) as e: execute_stage("toy", out, {"value": 2, "fail": True}, progress=False)
    msg = str(e.value)
    assert "bad value" in msg and "report.failed.ipynb" in msg and "kept as it was" in msg
    failed = Path(msg.split("read the failed notebook: ")[1].split()[0])
    assert failed.exists() and failed.parent != out
    assert {f: (out/f).read_bytes() for f in good} == good                         # the finished run, untouched
    execute_stage("toy", out, {"value": 1}, progress=False)
    assert "already finished" in capsys.readouterr().out                           # and still finished
    execute_stage("toy", out, {"value": 3}, progress=False)                         # a rerun that succeeds replaces it
    assert json.loads((out/"metrics.json").read_text()) == {"value": 3, "out": str(out)}   # paths point at the run folder
    rec = json.loads((out/"run.json").read_text())
    assert rec["notebook_params"]["out"] == str(out) and not (tmp_path/".run.next").exists() and report.exists()
    with pytest.raises(RunFolderError, match="holds a toy run"): check_out_dir("profile", out)
    with pytest.raises(RunFolderError, match="is a file"): check_out_dir("toy", out/"metrics.json")

@pytest.mark.slow
def test_an_edited_input_is_not_a_finished_run(tmp_path, monkeypatch):
    _toy_stage(tmp_path, monkeypatch)
    survey = tmp_path/"survey.json"; survey.write_text('{"items": []}')
    params = {"value": 1, "survey": str(survey)}
    execute_stage("toy", tmp_path/"run", params, progress=False)
    assert stage_done(tmp_path/"run", params)
    survey.write_text('{"items": [1]}')                                            # same path, other content
    assert not stage_done(tmp_path/"run", params)

def test_kernel_files_of_a_killed_run_are_removed(tmp_path):
    import subprocess, sys
    from s2b.stages import clean_kernel_files
    p = subprocess.Popen([sys.executable, "-c", "pass"]); p.wait()                # a process that is gone
    f = Path(tempfile.gettempdir())/f"s2b-kernel-{p.pid}-deadbeef0000-1"; f.write_text("")
    mine = Path(tempfile.gettempdir())/f"s2b-kernel-{os.getpid()}-deadbeef0000-1"; mine.write_text("")
    try:
        gone = clean_kernel_files()
        assert f in gone and not f.exists() and mine.exists()                       # a live process's files stay
    finally: mine.unlink(missing_ok=True); f.unlink(missing_ok=True)

@pytest.mark.slow
def test_a_terminated_run_leaves_no_kernel_files(tmp_path):
    "SIGTERM to `s2b` ends the stage kernel and removes its sockets and connection file."
    import nbformat, signal, subprocess, sys, time
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time"),
                                         nbformat.v4.new_code_cell('out = runs_dir = figures = "x"', metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("time.sleep(120)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path/"sleep.ipynb")
    (tmp_path/"runs").mkdir()                                   # `s2b report` names a missing runs folder before it starts
    code = ("import pathlib, sys, s2b.stages as R, s2b.cli as C; R.stage_notebook = lambda s: pathlib.Path(sys.argv[1]); "
            "sys.exit(C.main(['report', '--runs-dir', sys.argv[2], '--figures', sys.argv[3]]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path/"sleep.ipynb"), str(tmp_path/"runs"), str(tmp_path/"figs")],
                         cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    files = lambda: list(Path(tempfile.gettempdir()).glob(f"s2b-kernel-{p.pid}-*"))
    t0 = time.time()
    while not files() and time.time() - t0 < 120: time.sleep(0.5)
    assert files(), "the stage kernel did not start"
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in out
    assert not files()


def test_a_stage_run_defines_every_name_its_run_uses():
    "The cells a stage run executes (first cell, library, parameters, run) define every name the run cells read."
    import ast, builtins
    from s2b.stages import is_library_cell
    for st in sorted(set(STAGES)):
        nb = stage_copy(stage_notebook(st))
        defined, used = set(dir(builtins)) | {"display"}, set()
        params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])][0]
        for i, c in enumerate(nb.cells):
            if c.cell_type != "code": continue
            tree = ast.parse("\n".join(l for l in c.source.split("\n") if not l.startswith(("#|", "%", "!"))))
            for n in ast.walk(tree):
                if isinstance(n, (ast.Import, ast.ImportFrom)): defined |= {(a.asname or a.name).split(".")[0] for a in n.names}
                elif isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)): defined.add(n.name)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store): defined.add(n.id)
                elif isinstance(n, ast.arg): defined.add(n.arg)
                elif isinstance(n, ast.Name) and i > params and not is_library_cell(c): used.add(n.id)
        assert not used - defined, f"stage {st}: its run reads {sorted(used - defined)}, which a stage run never defines"

@pytest.mark.slow
def test_a_users_files_survive_every_rerun_force_and_failure(tmp_path, monkeypatch):
    "Nothing s2b did not write is ever deleted: files beside a run, and a folder that is not s2b's, stay as they were."
    from s2b.stages import StageFailed, RunFolderError
    _toy_stage(tmp_path, monkeypatch)
    home = tmp_path/"project"; (home/"data").mkdir(parents=True)
    (home/"thesis.tex").write_text("chapter 1"); (home/"data"/"raw.csv").write_text("a,b\n1,2\n")
    mine = lambda: sorted((str(p.relative_to(home)), p.read_bytes()) for p in home.rglob("*") if p.is_file() and not {"run", ".run.next"} & set(p.parts))
    before = mine()
    out = home/"run"
    for params, force in (({"value": 1}, False), ({"value": 2}, False), ({"value": 2}, True), ({"value": 3}, True)):
        execute_stage("toy", out, params, force=force, progress=False)
        assert mine() == before and json.loads((out/"metrics.json").read_text())["value"] == params["value"]
    with pytest.raises(StageFailed): execute_stage("toy", out, {"value": 4, "fail": True}, progress=False)
    with pytest.raises(StageFailed): execute_stage("toy", out, {"value": 4, "fail": True}, force=True, progress=False)
    assert mine() == before and json.loads((out/"metrics.json").read_text())["value"] == 3
    # the user's own folder as --out: refused before anything is written, on the first run and on every rerun
    for force in (False, True):
        with pytest.raises(RunFolderError, match="holds files s2b did not write"): execute_stage("toy", home, {"value": 1}, force=force, progress=False)
    assert mine() == before and not (home/".s2b-stage").exists() and not (home/"metrics.json").exists()
    # a file the user puts into a finished run folder is not deleted by a rerun: the rerun is refused, naming it
    (out/"notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="notes.txt"): execute_stage("toy", out, {"value": 5}, force=True, progress=False)
    assert (out/"notes.txt").read_text() == "keep me"

def test_out_may_not_be_the_root_home_or_a_git_work_tree(tmp_path, monkeypatch):
    "`--out .` in a clone, `--out ~` and a link to / are refused with one line, and nothing is written."
    from s2b.stages import RunFolderError, check_out_dir
    clone = tmp_path/"clone"; (clone/".git").mkdir(parents=True)
    link = tmp_path/"to-root"; link.symlink_to("/")
    monkeypatch.setenv("HOME", str(tmp_path/"home")); (tmp_path/"home").mkdir()
    for out, said in ((clone, "a git work tree"), (link, "the file-system root"), (tmp_path/"home", "your home folder")):
        with pytest.raises(RunFolderError, match=said): check_out_dir("profile", out)
    assert sorted(p.name for p in clone.iterdir()) == [".git"] and not (tmp_path/"home"/".s2b-stage").exists()

@pytest.mark.slow
def test_a_stage_never_imports_from_its_run_folder(tmp_path, monkeypatch):
    from s2b.stages import check_out_dir
    _toy_stage(tmp_path, monkeypatch)
    out = check_out_dir("toy", tmp_path/"run")                                       # s2b's folder, a first run under way
    (out/"s2b_probe_module.py").write_text("raise SystemExit('code from the run folder ran')")
    execute_stage("toy", out, {"value": 1, "probe": True}, progress=False)
    assert json.loads((out/"metrics.json").read_text())["value"] == 1

def test_one_writer_per_run_folder(tmp_path):
    "A second command into a run folder that another one is writing is refused, naming it; nothing is replaced."
    import subprocess, sys, time
    from s2b.stages import RunFolderBusy, check_out_dir, execute_stage
    out = check_out_dir("toy", tmp_path/"run")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('s2b process 4242'); f.flush(); print('held', flush=True); time.sleep(30)",
                               str(out/".s2b-lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match="being written by s2b process 4242"): execute_stage("toy", out, {"value": 1}, progress=False)
    finally: holder.kill(); holder.wait()
    assert not (out/"metrics.json").exists()

@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_example_runs_in_a_stage_run(stage):
    "A stage run executes the library, the parameters and the run only: no example, which may write outside --out."
    from s2b.stages import stage_notebook
    nb = stage_copy(stage_notebook(stage))
    lib = [i for i, c in enumerate(nb.cells) if is_library_cell(c)]
    par = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i not in lib and i not in par]
    assert all(i > max(lib) and i > par[0] for i in code), [nb.cells[i].source[:60] for i in code]
    assert not any("mkdtemp" in nb.cells[i].source for i in code)
