"""docs/api.md's example runs as printed, and a non-editable install finds its package data (recipes, license
and language tables) from any folder."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # > 7 s on 2 cores
def test_api_example_runs(capsys):
    from conftest import shared_path

    shared_path("corpus", "sample", "nl.jsonl")  # the example reads it from $XGEN_SHARED
    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    assert "{'stage1/s128': 156}" in out and "asks 20,000 tokens, packs 156 sequences of 128 = 19,968" in out
    assert "after 4 updates" in out and "model.safetensors" in out


#: Package data a wheel must carry (found through importlib.resources, never a path into the source tree).
PACKAGE_DATA = ("xgen_data/recipes/demo.toml", "xgen_data/recipes/xgen-7b.toml", "xgen_data/attributes/languages.toml",
                "xgen_data/attributes/licenses.toml", "xgen_data/attributes/licenses_strict.toml",
                "xgen_data/attributes/license_aliases.toml")


def _build_module():
    """``build`` (requirements-dev.lock); skipped without it unless ``XGEN_REQUIRE_BUILD=1`` (CI)."""
    import importlib

    if os.environ.get("XGEN_REQUIRE_BUILD") == "1":
        return importlib.import_module("build")
    return pytest.importorskip("build")


def test_pyproject_license_is_a_pep639_spdx_expression():
    """``project.license`` is an SPDX expression string (PEP 639; the TOML table form is deprecated by setuptools),
    and the build backend is one that reads it (setuptools >= 77)."""
    import tomllib

    from license_expression import get_spdx_licensing

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        doc = tomllib.load(fh)
    lic = doc["project"]["license"]
    assert isinstance(lic, str) and get_spdx_licensing().validate(lic).errors == []
    (req,) = [r for r in doc["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in req.split(">=")[1].split(".")[:2]) >= (77, 0)
    assert not any(c.startswith("License ::") for c in doc["project"].get("classifiers", []))  # PEP 639 forbids both


@pytest.mark.slow  # about a minute on 2 cores: a wheel build, an install and three fresh interpreters
def test_wheel_carries_package_data_and_runs_the_demo_recipe_from_any_folder(tmp_path):
    """`python -m build --wheel` makes a wheel holding the recipes and the language and license tables; that wheel,
    installed (not editable), finds `--recipe demo` from another folder and runs the demo's first steps."""
    import shutil
    import zipfile

    _build_module()
    target, src, tree, dist = tmp_path / "site", tmp_path / "nl.jsonl", tmp_path / "src", tmp_path / "dist"
    # a copy of the source: the build writes build/ and *.egg-info beside the sources, not into the checkout
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                              "__pycache__", ".pytest_cache", ".ci-artifacts"))
    # --no-isolation: this environment's setuptools and wheel (no index needed, the pins of requirements.lock)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                            str(tree)], timeout=600, cwd=tmp_path, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "deprecated" not in (built.stdout + built.stderr).lower()  # e.g. `project.license` as a TOML table
    (wheel,) = dist.glob("xgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    metadata = zipfile.ZipFile(wheel).read("xgen-0.1.0.dist-info/METADATA").decode()
    assert "\nLicense-Expression: Apache-2.0\n" in metadata and "\nLicense: " not in metadata  # PEP 639
    assert "\nLicense-File: LICENSE\n" in metadata and "xgen-0.1.0.dist-info/licenses/LICENSE" in names
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    assert any(n.startswith("xgen_train/evaluate/tasks/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith(("tests/", "recipes/")) for n in names)  # package data only, inside the packages
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, timeout=600, cwd=tmp_path)
    src.write_text("".join('{"id": "c%d", "text": "print(%d)  # a line of code ' % (i, i) + "x " * 120 + '"}\n'
                           for i in range(3)))
    env = dict(os.environ, PYTHONPATH=str(target))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def xgen(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import xgen_data.mixing.recipe as r, xgen_data.attributes.licenses "
                            "as l; print(r.load('demo').path, l.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(target)) for w in where), where  # the installed copy, not this source tree
    res = xgen("ingest", "--corpus", "c", "--quiet", "--workers", "1", "--subset", "code", str(src))
    assert res.returncode == 0, res.stderr
    res = xgen("mix", "plan", "--corpus", "c", "--recipe", "demo", "--workers", "1", "--format", "json")
    assert res.returncode == 0 and '"tables"' in res.stdout, res.stderr  # the demo recipe's filters, dedup, plan
