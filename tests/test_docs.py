"""The docs site: every Python block of its pages runs, and the site builds in strict mode."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = []
    for entry in config["nav"]:
        pages += list(entry.values()) if isinstance(entry, dict) else [entry]
    return pages


def python_blocks(page):
    return re.findall(r"^```python\n(.*?)^```$", (DOCS / page).read_text(), flags=re.S | re.M)


def test_every_nav_page_exists_and_the_site_has_python_to_run():
    pages = nav_pages()
    assert all((DOCS / page).is_file() for page in pages), pages
    assert sum(len(python_blocks(page)) for page in pages) >= 5


@pytest.mark.parametrize("page", [p for p in nav_pages() if python_blocks(p)])
def test_every_python_block_of_a_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": f"docs_{page}"}
    for number, block in enumerate(python_blocks(page), 1):
        try:
            exec(compile(block, f"{page} block {number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{page}, Python block {number} fails: {type(exc).__name__}: {exc}")


def build(config_file, site_dir):
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file), "-d", str(site_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.mark.slow
def test_the_site_builds_in_strict_mode_and_a_broken_link_fails_it(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count(
        "fit"
    ) > 5  # from the docstrings
    # the same site with one broken link must fail
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    config = (ROOT / "mkdocs.yml").read_text().replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    (copy / "mkdocs.yml").write_text(config)
    page = copy / "docs" / "tutorial.md"
    page.write_text(page.read_text() + "\nSee [a page that is not there](missing.md).\n")
    broken = build(copy / "mkdocs.yml", tmp_path / "broken")
    assert broken.returncode != 0 and "missing.md" in broken.stderr


def test_the_api_page_documents_every_public_callback_and_the_light_model():
    import torchhouse as th

    page = (DOCS / "api.md").read_text()
    for name in th.callbacks.__all__:
        assert f"`torchhouse.callbacks.{name}(" in page, name
    for name in ("torchhouse.LightModel(", "Model.load_best(", "torchhouse.runs.plot_run("):
        assert f"`{name}" in page, name
