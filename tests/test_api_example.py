"""docs/api.md's example runs as printed, and a non-editable install finds its package data (recipes, license
and language tables) from any folder."""
from __future__ import annotations

import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_api_example_runs(capsys):
    from conftest import shared_path

    shared_path("corpus", "sample", "nl.jsonl")  # the example reads it from $XGEN_SHARED
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    assert "{'stage1/s128': 156}" in out and "asks 20,000 tokens, packs 156 sequences of 128 = 19,968" in out
    assert "after 4 updates" in out and "model.safetensors" in out


def _build_isolation_args() -> list[str]:
    """Build with this environment's setuptools when it is recent enough (no index needed), else isolated."""
    try:
        import setuptools
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []


def test_non_editable_install_finds_package_data_from_any_folder(tmp_path):
    import shutil

    target, src, tree = tmp_path / "site", tmp_path / "nl.jsonl", tmp_path / "src"
    # a copy of the source: the build writes build/ and *.egg-info beside the sources, not into the checkout
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                              ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *_build_isolation_args(),
                    "--target", str(target), str(tree)], check=True, timeout=600, cwd=tmp_path)
    assert (target / "xgen_data" / "recipes" / "demo.toml").is_file()
    src.write_text("".join('{"id": "c%d", "text": "print(%d)  # a line of code ' % (i, i) + "x " * 120 + '"}\n'
                           for i in range(3)))
    env = dict(os.environ, PYTHONPATH=str(target))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def xgen(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import xgen_data.mixing.recipe as r; print(r.load('demo').path)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where  # the installed copy, not this source tree
    res = xgen("ingest", "--corpus", "c", "--quiet", "--workers", "1", "--subset", "code", str(src))
    assert res.returncode == 0, res.stderr
    res = xgen("filter", "--corpus", "c", "--recipe", "demo", "--format", "json")
    assert res.returncode == 0 and '"tables"' in res.stdout, res.stderr
