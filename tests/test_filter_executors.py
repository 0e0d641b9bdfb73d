"""``xgen filter --executor local|ray``: the license and language attribute items run on either executor and
commit the same bytes (sample corpus). Ray is the optional extra ``xgen[ray]``: the module is skipped without
it, unless ``XGEN_REQUIRE_RAY=1`` (CI)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.store.corpus import Corpus

if os.environ.get("XGEN_REQUIRE_RAY") != "1":
    pytest.importorskip("ray")
from xgen_data.execute import ray_executor  # noqa: E402  (after the optional-extra check)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray of 2 CPUs and a 128 MiB object store for the module; yields its GCS address."""
    import ray

    started = ray_executor.start_ray(2, object_store_bytes=128 << 20)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def _forget_attributes(corpus: str) -> None:
    """Unregister and delete the copy's attribute sets, so the filter computes them again."""
    c = Corpus(corpus)
    meta = c.read_meta()
    meta["attributes"] = {}
    c.write_meta(meta)
    shutil.rmtree(os.path.join(corpus, "attributes"))


def _attribute_files(corpus: str) -> dict[str, str]:
    """``<step>/<params hash>/<subset>/<part>`` -> sha256 of each committed attribute file (generation names
    are random: left out)."""
    out = {}
    for p in sorted(glob.glob(f"{corpus}/attributes/*/*/g-*/*/*.parquet")):
        step, params, _, subset, name = p.split(os.sep)[-5:]
        out[f"{step}/{params}/{subset}/{name}"] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_filter_same_attribute_files_on_local_processes_and_ray(ray_address, sample_corpus, tmp_path):
    runs = {}
    for name, args in (("in-process", []), ("local", ["--workers", "2"]),
                       ("ray", ["--executor", "ray", "--ray-address", ray_address])):
        corpus = str(tmp_path / name)
        shutil.copytree(sample_corpus, corpus)
        _forget_attributes(corpus)
        res = CliRunner().invoke(cli, ["filter", "--corpus", corpus, "--min-tokens", "50", *args])
        assert res.exit_code == 0, res.output
        runs[name] = _attribute_files(corpus)
    assert runs["in-process"] == runs["local"] == runs["ray"]
    assert {k.split("/")[0] for k in runs["ray"]} == {"license", "language"}
