"""The docs site builds without warnings (with and without demo results) and renders in a browser;
its notebook pages show what the executed notebooks print.

The site is built in a temporary copy of the docs sources (the code, notebooks, data and recipes are
symlinked), so the test never touches docs/, site/ or build/ of the checkout. To stay fast it
executes one small notebook (`EXECUTED`); `make docs` executes them all. The browser check needs
Debian's `chromium` (/usr/bin/chromium) and is skipped without it.
"""
from __future__ import annotations

import base64, html, importlib.util, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
GENERATED = ("nbs", "results")  # written by docs/build.py (git-ignored)
# A 1x1 PNG, standing in for a figure of `s2b report`.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
TABLE = "| value | target drop |\n|:--|--:|\n| Universalism_concern | 0.412 |\n"
EXECUTED = "00_values"  # the notebook the site tests execute: small, no model


def _mkdocs_available():
    for mod in ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers.python"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[docs]')")


def _skeleton(dest: Path) -> Path:
    "A checkout with only what the site needs: mkdocs.yml and docs/ copied, code and notebooks linked."
    dest.mkdir(parents=True)
    shutil.copy2(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", dest / "docs",
                    ignore=lambda d, names: [n for n in names if Path(d) == ROOT / "docs" and n in GENERATED])
    for name in ("nbs", "s2b", "recipes", "data", "pyproject.toml"):
        if (ROOT / name).exists():
            (dest / name).symlink_to(ROOT / name, target_is_directory=(ROOT / name).is_dir())
    (dest / "figures").mkdir()
    (dest / "papermill_runs").mkdir()
    return dest


def _build(root: Path, site: Path) -> str:
    "docs/build.py, then mkdocs build --strict; returns the log, fails on any warning."
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner
    bindir = Path(sys.executable).parent
    mkdocs = [str(bindir / "mkdocs")] if (bindir / "mkdocs").exists() else [sys.executable, "-m", "mkdocs"]
    steps = [[sys.executable, "docs/build.py", str(root), "--execute", EXECUTED],
             mkdocs + ["build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)]]
    log = ""
    for cmd in steps:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        log += r.stdout + r.stderr
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-6000:]}"
    bad = [l for l in log.splitlines() if re.match(r"^(WARNING|ERROR)\b", l.strip())]
    assert not bad, "\n".join(bad)
    return log


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    "The site built twice in one skeleton: before any demo run, then with a report's outputs."
    _mkdocs_available()
    root = _skeleton(tmp_path_factory.mktemp("docs") / "repo")
    plain = root / "site-plain"
    first = _build(root, plain)
    (root / "figures" / "profiles.png").write_bytes(PNG)
    (root / "figures" / "results.md").write_text(f"# s2b results\n\n## indomain\n\n{TABLE}")
    tables = root / "papermill_runs" / "report" / "tables"
    tables.mkdir(parents=True)
    (tables / "indomain.md").write_text(TABLE)  # also inside results.md: shown once
    (tables / "summary.md").write_text(f"# s2b results\n\n## indomain\n\n{TABLE}")
    with_results = root / "site-results"
    second = _build(root, with_results)
    return {"root": root, "plain": plain, "results": with_results, "logs": [first, second]}


def _build_module():
    spec = importlib.util.spec_from_file_location("s2b_docs_build", ROOT / "docs" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_clean_notebook():
    "nbdev directives go, hidden and default_exp cells go, stderr goes, other outputs and cells stay."
    b = _build_module()
    code = lambda src, **kw: {"cell_type": "code", "source": src, "metadata": kw.get("metadata", {}),
                              "outputs": kw.get("outputs", []), "execution_count": None}
    out = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    err = [{"output_type": "stream", "name": "stderr", "text": "\rLoading: 100%\n"}]
    nb = {"cells": [{"cell_type": "markdown", "source": "# profile\n\n> A summary.", "metadata": {}},
                    code("#| default_exp profile"), code("#| hide\nimport secret"),
                    code("#| export\ndef f(): return 1", outputs=out + err),
                    code("x = 1", metadata={"tags": ["injected-parameters"]}),
                    code("#| echo: false\nprint(2)"), code("#|export\n"),
                    code("y = 2", metadata={"tags": ["parameters"], "papermill": {"duration": 1}})],
          "metadata": {"kernelspec": {"name": "python3"}, "papermill": {"x": 1}}, "nbformat": 4, "nbformat_minor": 5}
    clean = b.clean_notebook(nb)
    srcs = [c["source"] for c in clean["cells"]]
    assert srcs == ["# profile\n\n> A summary.", "def f(): return 1", "print(2)", "y = 2"]
    assert clean["cells"][1]["outputs"] == out and "remove_input" in clean["cells"][2]["metadata"]["tags"]
    assert clean["cells"][3]["metadata"] == {"tags": ["parameters"]} and "papermill" not in clean["metadata"]
    assert b.notebook_info(nb, "02_profile") == ("profile", "A summary.")


def test_report_tables_deduplicated(tmp_path):
    b = _build_module()
    (tmp_path / "figures").mkdir(); (tmp_path / "figures" / "README.md").write_text("# figures/\n")
    (tmp_path / "figures" / "results.md").write_text(f"# s2b results\n\n## indomain\n\n{TABLE}")
    t = tmp_path / "papermill_runs" / "report" / "tables"; t.mkdir(parents=True)
    (t / "summary.md").write_text(f"# s2b results\n\n## indomain\n\n{TABLE}")
    (t / "indomain.md").write_text(TABLE)
    (t / "aita.md").write_text("| value | gain |\n|--|--|\n| Hedonism | 0.1 |\n")
    assert [p.relative_to(tmp_path).as_posix() for p in b._report_tables(tmp_path)] == [
        "figures/results.md", "papermill_runs/report/tables/aita.md"]


def _nb(*sources, tags=None) -> dict:
    cells = [{"id": f"c{i}", "cell_type": "code", "source": src, "metadata": {"tags": tags} if tags and i == 0 else {},
              "outputs": [], "execution_count": None} for i, src in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_execution_sandbox_cache_and_failure(tmp_path):
    "Notebooks run in build/docs/run (a stage's '../papermill_runs' lands there), once per content; a failure names its notebook."
    b = _build_module()
    root = tmp_path / "repo"
    (root / "nbs").mkdir(parents=True)
    (root / "s2b").mkdir()
    (root / "s2b" / "__init__.py").write_text("from pathlib import Path\nHOME = Path(__file__).resolve().parent.parent\n")
    (root / "nbs" / "00_run.ipynb").write_text(json.dumps(_nb(
        'out = "../papermill_runs/embedded/x-default"',
        "import s2b\nfrom pathlib import Path\nPath(out).mkdir(parents=True)\n(Path(out)/'m.json').write_text('{}')\n"
        "print('home', s2b.HOME)\nprint('run', (Path(out)/'m.json').resolve())",
        "#| eval: false\nraise SystemExit('an eval: false cell ran')", tags=["parameters"])))
    logs = []
    out = b.executed_notebooks(root, None, log=logs.append)
    assert not (root / "papermill_runs").exists()                       # nothing written into the checkout
    box = root / "build" / "docs" / "run"
    assert (box / "papermill_runs" / "embedded" / "x-default" / "m.json").is_file()
    printed = "".join("".join(o.get("text", "")) for c in out["00_run.ipynb"]["cells"] for o in c.get("outputs", []))
    assert "run papermill_runs/embedded/x-default/m.json" in printed     # sandbox paths shown relative to the checkout
    assert f"home {box.resolve()}\n" in printed                         # the kernel imported the sandbox's s2b
    assert logs == ["docs/build.py: nbs/00_run.ipynb: executed" + logs[0].split("executed")[1]]
    logs.clear()
    assert b.executed_notebooks(root, None, log=logs.append) == out and logs == ["docs/build.py: nbs/00_run.ipynb: cached"]
    assert b.executed_notebooks(root, [], log=logs.append) == {}         # --execute none
    nb = json.loads((root / "nbs" / "00_run.ipynb").read_text())         # edited: executed again, on a fresh run folder
    nb["cells"].append({**_nb("print('edited')")["cells"][0], "id": "c9"})
    (root / "nbs" / "00_run.ipynb").write_text(json.dumps(nb))
    again = b.executed_notebooks(root, None, log=logs.append)["00_run.ipynb"]
    assert "".join(again["cells"][-1]["outputs"][0]["text"]) == "edited\n" and len(list((root / "build" / "docs" / "executed").iterdir())) == 1
    (root / "nbs" / "01_broken.ipynb").write_text(json.dumps(_nb("raise ValueError('boom')")))
    with pytest.raises(SystemExit, match=r"nbs/01_broken\.ipynb failed to execute: .*ValueError: boom"):
        b.executed_notebooks(root, ["01_*"], log=logs.append)
    assert (root / "build" / "docs" / "failed" / "01_broken.ipynb").is_file()


def _notebook_pages(site: Path) -> list[Path]:
    return sorted((site / "nbs").glob("*.html"))


@pytest.mark.slow  # the site builds take 30-90 s on 2 cores (notebook conversion)
def test_site_pages(sites):
    site = sites["plain"]
    assert (site / "index.html").is_file() and (site / "reproduce.html").is_file()
    n_nbs = len(list((ROOT / "nbs").glob("*.ipynb")))
    assert len(_notebook_pages(site)) == n_nbs > 0
    mods = [p.stem for p in (ROOT / "s2b").glob("*.py") if p.stem not in ("__init__", "_modidx")]
    assert sorted(p.stem for p in (site / "api").glob("*.html")) == sorted(mods)
    for nb in (sites["root"] / "docs" / "nbs").glob("*.ipynb"):  # nbdev directives are gone
        text = nb.read_text()
        assert "#| export" not in text and "#| default_exp" not in text and "#| hide" not in text, nb.name
    if (ROOT / "recipes" / "paper.yaml").is_file():  # the recipe is included verbatim
        assert "Falcon3-7B-Instruct" in (site / "reproduce.html").read_text()


def _text_outputs(nb: dict) -> list[str]:
    "The non-empty lines that the code cells of a notebook print (stream outputs and plain-text results)."
    lines = []
    for c in nb["cells"]:
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            t = o.get("text") or (o.get("data") or {}).get("text/plain") or ""
            lines += [l.strip() for l in ("".join(t) if isinstance(t, list) else t).splitlines() if l.strip()]
    return lines


@pytest.mark.slow
def test_executed_notebook_page_shows_its_outputs(sites):
    "The executed notebook's page holds what it printed; the committed notebook has no outputs; a rebuild uses the cache."
    committed = json.loads((ROOT / "nbs" / f"{EXECUTED}.ipynb").read_text())
    assert not _text_outputs(committed), "notebooks are committed without outputs"
    executed = json.loads((sites["root"] / "docs" / "nbs" / f"{EXECUTED}.ipynb").read_text())
    printed = _text_outputs(executed)
    assert printed, f"{EXECUTED} printed nothing when executed"
    page = html.unescape((sites["plain"] / "nbs" / f"{EXECUTED}.html").read_text())
    assert "jp-OutputArea-output" in page and all(line in page for line in printed[:5])
    assert f"nbs/{EXECUTED}.ipynb: executed" in sites["logs"][0]
    assert f"nbs/{EXECUTED}.ipynb: cached" in sites["logs"][1]          # the second build did not execute it again
    other = next(p for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.stem != EXECUTED)   # not selected: as committed
    assert not _text_outputs(json.loads((sites["root"] / "docs" / "nbs" / other.name).read_text()))


@pytest.mark.slow
def test_results_page(sites):
    empty = (sites["plain"] / "results" / "index.html").read_text()
    assert "No results yet" in empty and "demo" in empty and "<img" not in empty
    full = (sites["results"] / "results" / "index.html").read_text()
    assert 'src="profiles.png"' in full and (sites["results"] / "results" / "profiles.png").is_file()
    assert full.count("Universalism_concern") == 1 and "<table" in full


def _dom(url: str, tmp: Path) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp}", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-3000:]
    return html.unescape(r.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")
def test_pages_render_in_chromium(sites, tmp_path):
    site = sites["plain"]
    home = _dom((site / "index.html").as_uri(), tmp_path / "profile-home")
    assert re.search(r"<title>\s*s2b\s*</title>", home), "home page title"
    assert "s2b — Survey-to-Behavior" in home and "The two commands" in home
    assert "Reproduce the paper" in home and "API reference" in home  # the nav
    pages = _notebook_pages(site)
    page = next((p for p in pages if p.stem.endswith("_profile")), pages[0])
    dom = _dom(page.as_uri(), tmp_path / "profile-nb")
    b = _build_module()
    heading, _ = b.notebook_info(json.loads((ROOT / "nbs" / f"{page.stem}.ipynb").read_text()), page.stem)
    title = re.search(r"<title>\s*(.*?)\s*</title>", dom)
    assert title and title.group(1) == f"{b._label(heading)} - s2b", title and title.group(1)
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", dom, re.S)
    assert h1 and heading in re.sub(r"<[^>]+>", "", h1.group(1)), "the notebook's first heading"
    assert "jupyter-wrapper" in dom  # rendered by mkdocs-jupyter
