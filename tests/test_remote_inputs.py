"""Inputs anywhere: ingest reads fsspec URIs. A real S3-protocol server (moto's, on
127.0.0.1 at a free port) configured only through the standard ``AWS_ENDPOINT_URL`` / ``AWS_*`` variables
serves the sample files; the parts equal a local ingest of the same files.

s3fs and moto are the extra ``xgen[remote]``: the module is skipped without them, unless
``XGEN_REQUIRE_REMOTE=1`` (CI)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from xgen_data.errors import InputError
from xgen_data.sources import ingest, locations, readers
from xgen_data.store.corpus import Corpus

if os.environ.get("XGEN_REQUIRE_REMOTE") != "1":
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
import boto3  # noqa: E402  (after the optional-extra check)
from moto.server import ThreadedMotoServer  # noqa: E402

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED")


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory) -> str:
    """Inputs of every kind ingest reads: two sample JSONL files (one zstd-compressed) and a Parquet file
    in a sub-folder, plus a file of another type."""
    import zstandard

    root = tmp_path_factory.mktemp("raw")
    shutil.copy(os.path.join(SAMPLE, "instruct.jsonl"), root / "instruct.jsonl")
    with open(os.path.join(SAMPLE, "code.jsonl"), "rb") as f:
        (root / "code.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(f.read()))
    (root / "more").mkdir()
    rows = [{"id": f"p{i}", "text": f"parquet document number {i} with a few words"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), root / "more" / "extra.parquet")
    (root / "notes.csv").write_text("not,an,input\n")
    return str(root)


@pytest.fixture(scope="module")
def s3_bucket(raw_folder):
    """moto's S3 server on a free port of 127.0.0.1, with ``raw_folder`` uploaded to ``s3://raw/corpora/``;
    the ``AWS_*`` variables point every client at it for the module. Yields the prefix URI."""
    saved = {k: os.environ.get(k) for k in AWS_VARS}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    client = boto3.client("s3")
    client.create_bucket(Bucket="raw")
    for path in glob.glob(f"{raw_folder}/**/*", recursive=True):
        if os.path.isfile(path):
            client.upload_file(path, "raw", "corpora/" + os.path.relpath(path, raw_folder))
    yield "s3://raw/corpora/"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def part_hashes(corpus: str) -> dict[str, str]:
    out = {}
    for p in sorted(glob.glob(f"{corpus}/docs/*/*.parquet")):
        with open(p, "rb") as f:
            out[os.path.relpath(p, corpus)] = hashlib.sha256(f.read()).hexdigest()
    return out


def ingest_all(corpus: str, given: str) -> list:
    files, skipped = ingest.find_inputs([given], corpus)
    reports = ingest.ingest(corpus, [(f.path, None, f.folder) for f in files], workers=1, progress=False)
    return files, skipped, reports


def test_s3_prefix_ingest_equals_local_ingest(s3_bucket, raw_folder, tmp_path):
    local, remote = str(tmp_path / "local"), str(tmp_path / "s3")
    l_files, l_skipped, l_reports = ingest_all(local, raw_folder)
    r_files, r_skipped, r_reports = ingest_all(remote, s3_bucket)
    assert [f.rel for f in r_files] == [f.rel for f in l_files] == ["code.jsonl.zst", "instruct.jsonl",
                                                                    "more/extra.parquet"]
    assert [reason for _, reason in r_skipped] == [reason for _, reason in l_skipped] == ["unsupported extension .csv"]
    assert part_hashes(remote) == part_hashes(local) and len(part_hashes(local)) == 3
    assert [r.n_written for r in r_reports] == [r.n_written for r in l_reports]
    inputs = Corpus(remote).read_meta()["inputs"]
    assert sorted(v["path"] for v in inputs.values()) == [s3_bucket + r for r in ("code.jsonl.zst", "instruct.jsonl",
                                                                                  "more/extra.parquet")]
    again = ingest_all(remote, s3_bucket)[2]  # the same objects again: recognised by their SHA-256
    assert [r.status for r in again] == ["unchanged"] * 3


def test_cli_ingests_an_s3_object_and_a_file_uri(s3_bucket, raw_folder, tmp_path):
    from cli.main import cli

    corpus = str(tmp_path / "corpus")
    result = CliRunner().invoke(cli, ["ingest", "--corpus", corpus, "--quiet", s3_bucket + "instruct.jsonl",
                                      "file://" + os.path.join(raw_folder, "more", "extra.parquet")])
    assert result.exit_code == 0, result.output
    ref = str(tmp_path / "ref")
    ingest.ingest(ref, [(os.path.join(raw_folder, "instruct.jsonl"), None),
                        (os.path.join(raw_folder, "more", "extra.parquet"), None)], workers=1, progress=False)
    assert part_hashes(corpus) == part_hashes(ref)


def test_missing_objects_and_unknown_schemes_are_named(s3_bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="s3://raw/corpora/absent.jsonl: no such input file"):
        ingest.ingest(str(tmp_path / "c"), [(s3_bucket + "absent.jsonl", None)], workers=1, progress=False)
    with pytest.raises(InputError, match="nosuchscheme://x/y.jsonl: cannot read this kind of URI"):
        locations.input_identity("nosuchscheme://x/y.jsonl")
    opened = readers.open_input(s3_bucket + "instruct.jsonl")
    with open(os.path.join(SAMPLE, "instruct.jsonl"), "rb") as f:
        assert opened.sha256 == hashlib.sha256(f.read()).hexdigest()
    opened.check_unchanged()
    opened.close()


def test_an_object_replaced_while_it_is_read_is_refused(s3_bucket):
    uri = s3_bucket + "changing.jsonl"
    client = boto3.client("s3")
    client.put_object(Bucket="raw", Key="corpora/changing.jsonl", Body=b'{"text": "first version"}\n')
    opened = readers.open_input(uri)
    try:
        opened.check_unchanged()  # nothing changed yet
        client.put_object(Bucket="raw", Key="corpora/changing.jsonl", Body=b'{"text": "second version!"}\n')
        with pytest.raises(InputError, match="changing.jsonl: the file changed while it was being ingested"):
            opened.check_unchanged()
    finally:
        opened.close()
        client.delete_object(Bucket="raw", Key="corpora/changing.jsonl")
