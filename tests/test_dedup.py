"""Exact and near dedup (SPEC §2): datasketch-identical MinHash, LSH banding, clusters, keep policy,
license conflicts, the step's output contract, and known real duplicates of the shared corpora."""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SAMPLE, shared_path

from xgen_data.attributes import clusters, licenses, minhash
from xgen_data.attributes.dedup import bands as dbands
from xgen_data.attributes.dedup import cluster as dcluster
from xgen_data.attributes.dedup import params as dparams
from xgen_data.attributes.dedup import signatures as dsig
from xgen_data.errors import DamagedDataError
from xgen_data.mixing import defaults
from xgen_data.store.corpus import Corpus, CorpusError


# --------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------
def sample_texts(n_per_file: int = 40) -> list[str]:
    out = []
    for name in ("nl.jsonl", "code.jsonl", "instruct.jsonl"):
        with open(os.path.join(SAMPLE, name), encoding="utf-8") as f:
            out += [json.loads(line)["text"] for _, line in zip(range(n_per_file), f)]
    return out


EDGE_TEXTS = ["", "   \n\t ", "word", "two words", "four words in here", "five words in here now",
              "!!! ??? ---", "中文版维护者 李阳", "हिन्दी भाषा एक है", "Привет, мир! Это тест.", "ไทยภาษาไทย",
              "e\u0301te\u0301 cafe\u0301 ete etre", "MiXeD CaSe Words Are Lowered Here"]


def decisions(corpus_dir: str) -> dict[tuple[str, str], dict]:
    """(subset, id) -> the dedup decision of every document under the corpus's default decisions (the last
    `xgen dedup`): ``drop_reason`` is dedup's own reason (``dup_reason``), whatever the filters decide."""
    from xgen_data.stats import sql

    con = sql.connect(corpus_dir, quiet=True)
    rows = con.execute("""SELECT subset, id, dup_reason AS drop_reason, dup_cluster, dup_of, dup_of_subset
                          FROM documents ORDER BY subset, part, row""").fetchall()
    return {(r[0], r[1]): dict(zip(("id", "drop_reason", "dup_cluster", "dup_of", "dup_of_subset"), r[1:]))
            for r in rows}


def step_tables(corpus_dir: str) -> dict[str, list]:
    """The committed dedup attribute tables (by subset/part) and the derived decisions, for determinism checks."""

    corpus = Corpus(corpus_dir)
    ded = corpus.default_decisions()["dedup"]
    out = {f"{p.subset}/{p.name}": pq.read_table(f).to_pylist()
           for p, f in corpus.attribute_files("dedup", dparams.dedup_attr_params(ded))}
    out["decisions"] = sorted(decisions(corpus_dir).items())
    return out


def write_jsonl(path: str, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def make_corpus(root: str, files: dict[str, list[dict]]) -> str:
    """Ingest hand-made or selected records; ``files`` maps a subset name to its records."""
    from xgen_data.sources import ingest

    os.makedirs(root, exist_ok=True)
    inputs = [(write_jsonl(os.path.join(root, f"{subset}.jsonl"), recs), subset) for subset, recs in files.items()]
    corpus = os.path.join(root, "corpus")
    ingest.ingest(corpus, inputs, workers=1, progress=False)
    return corpus


@pytest.fixture(scope="module")
def deduped_sample(sample_corpus, tmp_path_factory):
    """The sample corpus (real shared data), deduplicated with the defaults."""
    root = str(tmp_path_factory.mktemp("dedup_sample") / "corpus")
    shutil.copytree(sample_corpus, root)
    report = defaults.run_dedup(root, workers=2, progress=False)
    return root, report


# Real duplicates from the full shared corpora (not all kinds are in the sample slice).
REAL_IDS = {
    "code": [
        # vendored copies of requests under conflicting labels: pip says MIT, requests says Apache-2.0
        "deb:python3-requests:usr/lib/python3/dist-packages/requests/structures.py",
        "pypi:pip==23.2.1:pip/_vendor/requests/structures.py", "pypi:pip==24.2:pip/_vendor/requests/structures.py",
        "pypi:requests==2.31.0:requests/structures.py", "pypi:requests==2.32.3:requests/structures.py",
        # versions of the same file (near copies, Jaccard 0.97-0.997)
        "deb:python3-requests:usr/lib/python3/dist-packages/requests/models.py",
        "pypi:pip==23.2.1:pip/_vendor/requests/models.py", "pypi:pip==24.2:pip/_vendor/requests/models.py",
        "pypi:requests==2.31.0:requests/models.py", "pypi:requests==2.32.3:requests/models.py",
        "pypi:Unidecode==1.4.0:unidecode/__init__.py",  # no copy among these
    ],
    "natural": [
        # a dictionary entry borrowed between dictionaries (GFDL FOLDOC, public-domain Jargon File)
        "deb:dict-foldoc:cosmic rays", "deb:jargon-text:entry:cosmic rays",
        # one manual page shipped once per alias
        "deb:manpages-dev:usr/share/man/man3/isalnum.3.gz", "deb:manpages-dev:usr/share/man/man3/isalpha_l.3.gz",
        "deb:manpages-dev:usr/share/man/man3/isascii.3.gz",
        # an untranslated handbook page in several language folders
        "deb:debian-handbook:usr/share/doc/debian-handbook/html/ar-MA/sect.steamos.html",
        "deb:debian-handbook:usr/share/doc/debian-handbook/html/de-DE/sect.steamos.html",
        "deb:debian-handbook:usr/share/doc/debian-handbook/html/el-GR/sect.steamos.html",
        "deb:linux-doc-6.1:Documentation/arch.rst.gz",  # its html/_sources twin is left out: no copy here
    ],
}


def select_records(path: str, ids: set[str]) -> list[dict]:
    import zstandard

    out = []
    with open(path, "rb") as fh:
        for line in io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh)):
            head = line[:400]
            if any(i.encode() in head for i in ids):
                rec = json.loads(line)
                if rec["id"] in ids:
                    out.append(rec)
    return out


@pytest.fixture(scope="module")
def real_dups(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("real_dups"))
    files = {"code": select_records(shared_path("corpus", "code.jsonl.zst"), set(REAL_IDS["code"])),
             "natural": select_records(shared_path("corpus", "nl.jsonl.zst"), set(REAL_IDS["natural"]))}
    for subset, recs in files.items():
        assert sorted(r["id"] for r in recs) == sorted(REAL_IDS[subset]), "shared corpus changed"
    corpus = make_corpus(root, files)
    report = defaults.run_dedup(corpus, workers=1, progress=False)
    return corpus, report


# --------------------------------------------------------------------------------------------------
# MinHash = datasketch
# --------------------------------------------------------------------------------------------------
#: Texts that exercise the compiled word split and SHA-1: multi-block shingles (> 55 and > 119 bytes), case
#: mappings that change length, CJK outside the BMP, lone and stacked marks, emoji, a lone surrogate.
KERNEL_TEXTS = ["x" * 54 + " a b c d", "y" * 56 + " a b c d", "z" * 200 + " " + "é" * 70, "İSTANBUL ǅ ß ΣΑΣ",
                "𠀀𠀁𠀂 ext b 𪜀", "\u0301\u0302 alone marks ã\u0303", "emoji 😀 splits 🙂 words here now",
                "lone \ud800 surrogate between words of text", "中\u0301文字 ไทย\u0e31ภาษา Ελληνικά κείμενο"]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("scheme", minhash.SCHEMES)
@pytest.mark.parametrize("num_perm,seed,ngram", [(256, 1, 5), (64, 42, 3), (7, 0, 1), (128, 2**32 - 1, 5)])
def test_signatures_equal_datasketch(scheme, num_perm, seed, ngram, compiled):
    from datasketch import MinHash

    texts = sample_texts(15 if num_perm == 256 else 5) + EDGE_TEXTS + KERNEL_TEXTS
    sig, n_words = minhash.MinHasher(num_perm, seed, ngram, scheme, compiled=compiled).signatures(texts)
    assert sig.shape == (len(texts), num_perm) and sig.dtype == minhash.sig_dtype(scheme)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
        for s in minhash.shingles(text, ngram):
            m.update(s)
        assert np.array_equal(sig[i], m.hashvalues), (scheme, i, text[:60])
        assert n_words[i] == len(minhash.words(text))


def _shingle_kernels():
    """The scalar-SHA-1 kernel, and the SHA-NI one where this CPU has the extension."""
    from xgen_data.attributes import minhash_jit

    kernels = [minhash_jit._shingle_hashes_kernel]
    if minhash_jit.sha_ni_available():
        kernels.append(minhash_jit._shingle_hashes_kernel_ni)
    return kernels


@pytest.mark.parametrize("ngram", [1, 5, 9])
@pytest.mark.slow  # > 7 s on 2 cores
def test_compiled_shingle_hashes_equal_hashlib(ngram):
    from xgen_data.attributes import minhash_jit

    rng = np.random.default_rng(ngram)
    # one word of every length 1..200 bytes: every SHA-1 padding case (tail < 56, 56..63, several blocks)
    lengths = "".join(" " + "".join(chr(97 + int(c)) for c in rng.integers(0, 26, n)) for n in range(1, 201))
    texts = sample_texts(10) + EDGE_TEXTS + KERNEL_TEXTS + [lengths]
    for wide in (False, True):
        ref, ref_off = minhash.hash_shingle_lists([minhash.shingles(t, ngram) for t in texts],
                                                  scheme="affine64" if wide else "affine32")
        for kern in _shingle_kernels():
            cp, doc_off = minhash_jit.codepoints(texts)
            got, off, n_words = kern(cp, doc_off, minhash_jit.class_table(), ngram, wide)
            assert np.array_equal(off, ref_off) and np.array_equal(got, ref.astype(np.uint64)), kern
            assert n_words.tolist() == [len(minhash.words(t)) for t in texts]
        got, off, _ = minhash_jit.shingle_hashes(texts, ngram, wide=wide)  # the dispatching entry point
        assert np.array_equal(got, ref.astype(np.uint64))


def test_permutations_equal_datasketch():
    from datasketch import MinHash

    for scheme in minhash.SCHEMES:
        p = minhash.Permutations.make(256, 7, scheme)
        a, b = MinHash(num_perm=256, seed=7, scheme=scheme).permutations
        assert np.array_equal(p.a, a) and np.array_equal(p.b, b)


def test_signatures_independent_of_batching_and_chunking():
    texts = sample_texts(20) + EDGE_TEXTS
    h = minhash.MinHasher()
    whole = h.signatures(texts)[0]
    one_by_one = np.stack([h.signature(t) for t in texts])
    assert np.array_equal(whole, one_by_one)
    hashes, offsets = minhash.hash_shingle_lists([minhash.shingles(t) for t in texts])
    for chunk in (1, 3, 1000):
        assert np.array_equal(minhash.signatures_from_hashes(hashes, offsets, h.perms, chunk=chunk), whole)


def test_bands_rows_for_threshold_match_datasketch():
    from datasketch.lsh import _optimal_param

    assert minhash.optimal_bands_rows(0.7, 256) == (25, 10)  # StarCoder's setting
    for t in (0.5, 0.8, 0.85, 0.9):
        for n in (128, 256):
            assert minhash.optimal_bands_rows(t, n) == _optimal_param(t, n, 0.5, 0.5)
    p = dparams.resolve_params()
    assert (p.bands, p.rows) == (25, 10) and abs(p.lsh_threshold - 0.7248) < 1e-3
    assert minhash.collision_probability(0.9, 25, 10) > 0.999
    assert minhash.collision_probability(0.3, 25, 10) < 1e-3


def test_band_hashes():
    h = minhash.MinHasher()
    texts = sample_texts(5)
    sig = h.signatures(texts)[0]
    sig2 = sig.copy()
    sig2[0, 13] ^= 1  # changes band 1 (rows 10..19) only
    b1, b2 = minhash.band_hashes(sig, 25, 10), minhash.band_hashes(sig2, 25, 10)
    assert b1.shape == (len(texts), 25) and b1.dtype == np.uint64
    assert (b1[0] != b2[0]).tolist() == [i == 1 for i in range(25)]
    assert np.array_equal(b1[1:], b2[1:])
    assert len(np.unique(b1[:, 0])) == len({t for t in texts})  # distinct texts, distinct bands
    with pytest.raises(ValueError, match="num_perm"):
        minhash.band_hashes(sig, 26, 10)


# --------------------------------------------------------------------------------------------------
# words, shingles, normalisation (short, empty and non-Latin documents)
# --------------------------------------------------------------------------------------------------
def test_words_and_short_documents():
    assert minhash.words("") == [] and minhash.shingles("") == [] and minhash.shingles("  ,;  ") == []
    assert minhash.shingles("word") == [b"word"]  # one word: one shingle
    assert minhash.shingles("Four Words In Here") == [b"four words in here"]  # shorter than ngram: one shingle
    assert minhash.shingles("a b c d e f") == [b"a b c d e", b"b c d e f"]
    assert minhash.words("Привет, мир!") == ["привет", "мир"]
    assert minhash.words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs and virama stay inside words
    assert minhash.words("中文版 ab") == ["中", "文", "版", "ab"]  # ideographs: one word each
    assert minhash.words("ไทย") == ["ไ", "ท", "ย"]
    assert minhash.words("snake_case x2") == ["snake_case", "x2"]
    sig, n_words = minhash.MinHasher().signatures(["", "word", "other"])
    assert n_words.tolist() == [0, 1, 1]
    assert (sig[0] == minhash.empty_value("affine32")).all()  # no shingles: datasketch's empty MinHash
    assert not np.array_equal(sig[1], sig[2])


def test_normalisation_and_agreement_with_words():
    t = "Caf\u00e9 au lait  \r\nsecond line\t\r\n\r\n"
    assert minhash.normalize_text(t) == "Café au lait\nsecond line"
    assert minhash.content_hash("cafe\u0301\n") == minhash.content_hash("caf\u00e9")  # NFC
    assert minhash.content_hash("a b") != minhash.content_hash("a  b")  # inner whitespace is content
    assert minhash.content_hash("A") != minhash.content_hash("a")  # so is case
    for text in sample_texts(30) + EDGE_TEXTS:
        variant = unicodedata.normalize("NFD", text).replace("\n", "  \r\n") + " \n"
        assert minhash.content_hash(variant) == minhash.content_hash(text)
        assert minhash.words(variant) == minhash.words(text) == minhash.words(minhash.normalize_text(text))


# --------------------------------------------------------------------------------------------------
# union-find, license policy, parameters
# --------------------------------------------------------------------------------------------------
def test_union_find_matches_connected_components():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    n = 2000
    u, v = rng.integers(0, n, 1500), rng.integers(0, n, 1500)
    _, labels = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)
    results = []
    for perm in (np.arange(len(u)), rng.permutation(len(u))):
        parent = np.arange(n, dtype=np.int64)
        for chunk in np.array_split(perm, 7):
            clusters.union_edges(parent, u[chunk], v[chunk])
        results.append(clusters.compress(parent).copy())
    assert np.array_equal(results[0], results[1])  # order of edges does not matter
    root = results[0]
    for comp in np.unique(labels):
        members = np.nonzero(labels == comp)[0]
        assert (root[members] == members.min()).all()  # root = smallest document of the component


def test_license_rank_policy():
    r = licenses.license_rank
    tiers = licenses.LICENSE_TIERS
    for spdx in ("CC0-1.0", "LicenseRef-public-domain", "Unlicense", "0BSD", "CC0-1.0 OR GPL-3.0-only"):
        assert tiers[r(spdx)] == "public-domain", spdx
    for spdx in ("MIT", "Apache-2.0", "BSD-3-Clause", "(GPL-2.0 WITH Linux-syscall-note) or MIT", "ISC"):
        assert tiers[r(spdx)] == "permissive", spdx
    # permissive, but not on the filter's allow-list: ranked below it, so the filter's choice wins
    for spdx in ("PSF-2.0", "PostgreSQL", "LicenseRef-BSD-unspecified", "WTFPL", "BSD-3-Clause AND PSF-2.0"):
        assert tiers[r(spdx)] == "permissive-unlisted", spdx
    assert tiers[r("PSF-2.0", allow=("PSF-2.0",))] == "permissive"  # a recipe's own allow-list
    assert tiers[r("LGPL-2.1-or-later")] == tiers[r("GFDL-1.1-or-later")] == tiers[r("MPL-2.0")] == "weak-copyleft"
    assert tiers[r("GPL-2.0 WITH Linux-syscall-note")] == tiers[r("AGPL-3.0-only")] == "copyleft"
    assert tiers[r("CC-BY-NC-4.0")] == tiers[r("SomethingElse")] == "other"
    assert tiers[r(None)] == tiers[r("")] == tiers[r("NOASSERTION")] == tiers[r("MIT/X11 (")] == "unknown"
    assert r("GPL-2.0-only OR BSD-3-Clause") == r("BSD-3-Clause")  # OR: the better branch
    assert r("MIT AND GPL-3.0-only") == r("GPL-3.0-only")  # AND: the worse
    assert r("CC0-1.0") < r("MIT") < r("PSF-2.0") < r("LGPL-2.1") < r("GPL-3.0-only") < r("Foo-1.0") < r("NOASSERTION")
    assert licenses.license_kind("PSF-2.0") == "permissive" and licenses.license_kind("GPL-2.0+") == "copyleft"
    for expr in ("MIT", "PSF-2.0", "GPL-2.0 OR MIT", "NOASSERTION", "LGPL-2.1", "CC0-1.0", "BSD-3-Clause AND PSF-2.0"):
        # the top two tiers are exactly what the license filter passes
        assert (r(expr) <= tiers.index("permissive")) == licenses.license_passes(expr), expr


@pytest.mark.parametrize("kwargs,match", [
    ({"bands": 30, "rows": 10}, "exceeds num_perm"),
    ({"rows": 300}, "exceeds num_perm"),
    ({"threshold": 1.0}, "threshold"), ({"threshold": 0}, "threshold"),
    ({"num_perm": 1}, "num_perm"), ({"ngram": 0}, "ngram"), ({"seed": -1}, "seed"),
    ({"bands": 0}, "bands"), ({"scheme": "sha256"}, "scheme"), ({"near": "yes"}, "near"),
    ({"workers": 0}, "workers"),
])
def test_bad_parameters(sample_corpus, kwargs, match):
    with pytest.raises(ValueError, match=match):
        defaults.run_dedup(sample_corpus, progress=False, **kwargs)


def test_bad_corpus(tmp_path):
    with pytest.raises(CorpusError, match="no such corpus"):
        defaults.run_dedup(str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match="not an xgen corpus"):
        defaults.run_dedup(str(tmp_path))
    result = CliRunner().invoke(__import__("cli.main", fromlist=["cli"]).cli,
                                ["dedup", "--corpus", str(tmp_path / "missing")])
    assert result.exit_code == 3 and "no such corpus" in result.output
    result = CliRunner().invoke(__import__("cli.main", fromlist=["cli"]).cli,
                                ["dedup", "--corpus", str(tmp_path), "--bands", "40", "--rows", "10"])
    assert result.exit_code == 3 and "exceeds num_perm" in result.output


def test_resolve_bands_rows():
    assert (lambda p: (p.bands, p.rows))(dparams.resolve_params(bands=32)) == (32, 8)
    assert (lambda p: (p.bands, p.rows))(dparams.resolve_params(rows=8)) == (32, 8)
    assert (lambda p: (p.bands, p.rows))(dparams.resolve_params(bands=20, rows=5)) == (20, 5)
    assert (lambda p: (p.bands, p.rows))(dparams.resolve_params(threshold=0.9)) == minhash.optimal_bands_rows(0.9, 256)


# --------------------------------------------------------------------------------------------------
# the run on real data
# --------------------------------------------------------------------------------------------------
def test_output_contract(deduped_sample):
    root, report = deduped_sample
    corpus = Corpus(root)
    offsets = dbands.doc_offsets(corpus)
    rows = {}
    d = decisions(root)

    files = corpus.attribute_files("dedup", dparams.dedup_attr_params(corpus.default_decisions()["dedup"]))
    for k, (part, path) in enumerate(files):
        out = pq.read_table(path)
        assert out.schema.equals(dparams.ATTR_SCHEMA, check_metadata=False)
        assert out.column("id").to_pylist() == pq.read_table(part.path, columns=["id"]).column("id").to_pylist()
        for i, row in enumerate(out.to_pylist()):
            assert row["dup_cluster"] == d[(part.subset, row["id"])]["dup_cluster"]
            rows[(part.subset, row["id"])] = (int(offsets[k]) + i, d[(part.subset, row["id"])])
    assert len(rows) == report.documents
    members: dict[int, list[int]] = {}
    for (subset, doc_id), (num, row) in rows.items():
        assert row["drop_reason"] in (None, dparams.REASON_EXACT, dparams.REASON_NEAR)
        if row["drop_reason"] is None:
            assert row["dup_of"] is None and row["dup_of_subset"] is None
        else:
            kept_num, kept = rows[(row["dup_of_subset"], row["dup_of"])]
            assert (row["dup_of_subset"], row["dup_of"]) != (subset, doc_id)  # never a copy of itself
            assert kept["drop_reason"] is None and kept["dup_cluster"] == row["dup_cluster"]
        if row["dup_cluster"] is not None:
            members.setdefault(row["dup_cluster"], []).append(num)
    assert len(members) == report.clusters
    for cluster, nums in members.items():
        assert len(nums) >= 2 and cluster == min(nums)  # id = smallest global document number
    kept_per_cluster = {}
    for (_num, row) in rows.values():
        if row["dup_cluster"] is not None and row["drop_reason"] is None:
            kept_per_cluster[row["dup_cluster"]] = kept_per_cluster.get(row["dup_cluster"], 0) + 1
    assert set(kept_per_cluster.values()) == {1} and len(kept_per_cluster) == report.clusters
    n_dropped = sum(1 for _, r in rows.values() if r["drop_reason"])
    assert report.removed == n_dropped == report.clustered_documents - report.clusters
    assert os.path.exists(os.path.join(root, "reports", "license_conflicts.parquet"))
    assert glob.glob(os.path.join(root, "work", "dedup", "sig", "*", "*.parquet"))


def test_known_duplicates_in_sample(deduped_sample):
    root, report = deduped_sample
    d = decisions(root)
    hb = "deb:debian-handbook:usr/share/doc/debian-handbook/html/"
    cases = [  # (dropped, kept, reason)
        # kernel documentation shipped twice (rst sources and html/_sources)
        (("natural", "deb:linux-doc-6.1:html/_sources/PCI/index.rst.txt"),
         ("natural", "deb:linux-doc-6.1:Documentation/PCI/index.rst.gz"), dparams.REASON_EXACT),
        # a manual page shipped once per alias
        (("natural", "deb:manpages-dev:usr/share/man/man2/_exit.2.gz"),
         ("natural", "deb:manpages-dev:usr/share/man/man2/_Exit.2.gz"), dparams.REASON_EXACT),
        # forks of one dialogue collection
        (("instruct", "pypi:sugaroid-chatterbot-corpus==1.2.0:chatterbot_corpus/data/bengali/botprofile.yml#3"),
         ("instruct", "pypi:chatterbot-corpus-py==1.2.1:chatterbot_corpus_py/data/bengali/botprofile.yml#3"),
         dparams.REASON_EXACT),
        # handbook pages left untranslated in other language folders
        (("natural", hb + "de-DE/conclusion.html"), ("natural", hb + "ar-MA/conclusion.html"), dparams.REASON_NEAR),
        # versions of the same document
        (("natural", "deb:doc-debian:usr/share/doc/debian/constitution.1.1.txt.gz"),
         ("natural", "deb:doc-debian:usr/share/doc/debian/constitution.1.0.txt.gz"), dparams.REASON_NEAR),
    ]
    for dropped, kept, reason in cases:
        assert dropped in d and kept in d, "the sample slice changed"
        row = d[dropped]
        assert (row["drop_reason"], row["dup_of_subset"], row["dup_of"]) == (reason, kept[0], kept[1]), dropped
        assert d[kept]["drop_reason"] is None and d[kept]["dup_cluster"] == row["dup_cluster"]
    assert report.removed_by_subset["instruct"][dparams.REASON_EXACT] > 100


@pytest.mark.slow  # > 7 s on 2 cores
def test_known_duplicates_from_full_corpora(real_dups):
    corpus, report = real_dups
    d = decisions(corpus)
    deb_req = "deb:python3-requests:usr/lib/python3/dist-packages/requests/"
    for name, reason in (("structures.py", dparams.REASON_EXACT), ("models.py", dparams.REASON_NEAR)):
        group = [i for i in REAL_IDS["code"] if i.endswith("requests/" + name)]
        assert len({d[("code", i)]["dup_cluster"] for i in group}) == 1
        # same license tier (MIT / Apache-2.0 are both permissive): the smallest id is kept
        assert d[("code", deb_req + name)]["drop_reason"] is None
        for i in group[1:]:
            assert (d[("code", i)]["drop_reason"], d[("code", i)]["dup_of"]) == (reason, deb_req + name)
    # borrowed dictionary entry: the public-domain copy wins over the GFDL one despite its larger id
    assert d[("natural", "deb:jargon-text:entry:cosmic rays")]["drop_reason"] is None
    assert d[("natural", "deb:dict-foldoc:cosmic rays")]["dup_of"] == "deb:jargon-text:entry:cosmic rays"
    assert d[("natural", "deb:dict-foldoc:cosmic rays")]["drop_reason"] == dparams.REASON_NEAR
    man = [i for i in REAL_IDS["natural"] if "manpages" in i]
    assert [d[("natural", i)]["drop_reason"] for i in man] == [None, dparams.REASON_EXACT, dparams.REASON_EXACT]
    steam = [i for i in REAL_IDS["natural"] if "steamos" in i]
    assert [d[("natural", i)]["drop_reason"] for i in steam] == [None, dparams.REASON_EXACT, dparams.REASON_EXACT]
    for single in ("code", "pypi:Unidecode==1.4.0:unidecode/__init__.py"), \
                  ("natural", "deb:linux-doc-6.1:Documentation/arch.rst.gz"):
        assert d[single]["dup_cluster"] is None and d[single]["drop_reason"] is None
    # the vendored copies' conflicting labels are reported, not hidden
    conf = pq.read_table(report.license_conflicts_path).to_pylist()
    structures = [c for c in conf if c["id"].endswith("requests/structures.py")]
    assert len(structures) == 5 and len({c["group_id"] for c in structures}) == 1
    assert {c["license"] for c in structures} == {"MIT", "Apache-2.0"}
    assert [c["id"] for c in structures if c["kept"]] == [deb_req + "structures.py"]
    assert report.license_conflict_groups == len({c["group_id"] for c in conf})


def test_never_compared_with_itself(deduped_sample):
    root, _ = deduped_sample
    pairs = dbands.candidate_pairs(root)
    assert len(pairs) > 0
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs)


@pytest.mark.slow  # > 7 s on 2 cores
def test_deterministic_for_a_seed(deduped_sample, tmp_path):
    root, report = deduped_sample
    again = str(tmp_path / "again")
    shutil.copytree(root, again)
    shutil.rmtree(os.path.join(again, "work"))  # recompute signatures, in one process this time
    rep2 = defaults.run_dedup(again, workers=1, progress=False)
    assert rep2.signature_parts_reused == 0
    assert step_tables(again) == step_tables(root)
    assert pq.read_table(rep2.license_conflicts_path).equals(pq.read_table(report.license_conflicts_path))
    assert [c.__dict__ for c in rep2.largest_clusters] == [c.__dict__ for c in report.largest_clusters]
    # a rerun reuses the cached signatures and decides the same
    rep3 = defaults.run_dedup(again, workers=2, progress=False)
    assert rep3.signature_parts_reused == len(Corpus(again).parts())
    assert step_tables(again) == step_tables(root)


def test_a_damaged_work_file_is_recomputed_not_trusted(deduped_sample, tmp_path):
    """The signature cache is keyed by part name, size and mtime; its files' SHA-256s decide whether the bytes
    are still the ones written (a flipped signature matrix would otherwise make false near duplicates)."""
    root, _ = deduped_sample
    again = str(tmp_path / "again")
    shutil.copytree(root, again)  # copy2: mtimes kept, so the cache keys still match
    npys = sorted(glob.glob(os.path.join(again, "work", "dedup", "sig", "*", "*.sig.npy")))
    assert npys
    m = np.load(npys[0], mmap_mode="r+")
    m[: len(m) // 2] = m[0]  # half the documents now share one signature
    m.flush()
    del m
    rep = defaults.run_dedup(again, workers=1, progress=False)
    assert rep.signature_parts_reused == len(Corpus(again).parts()) - 1
    assert step_tables(again) == step_tables(root)


@pytest.mark.slow  # > 7 s on 2 cores
def test_parameters_change_the_run(deduped_sample, tmp_path):
    root, report = deduped_sample
    other = str(tmp_path / "other")
    shutil.copytree(root, other)
    exact_only = defaults.run_dedup(other, near=False, progress=False)
    # every exact group keeps one copy; with near dedup on, some exact copies are near copies of a better kept one
    assert exact_only.removed_by_reason == {dparams.REASON_EXACT: report.exact_group_documents - report.exact_groups}
    assert exact_only.removed_by_reason[dparams.REASON_EXACT] >= report.removed_by_reason[dparams.REASON_EXACT]
    assert exact_only.removed < report.removed
    strict = defaults.run_dedup(other, threshold=0.9, progress=False)  # re-bands the cached signatures
    assert (strict.params["bands"], strict.params["rows"]) == minhash.optimal_bands_rows(0.9, 256)
    assert strict.signature_parts_reused == len(Corpus(other).parts())
    assert strict.removed_by_reason[dparams.REASON_NEAR] < report.removed_by_reason[dparams.REASON_NEAR]
    nothing = defaults.run_dedup(other, exact=False, near=False, progress=False)
    assert nothing.removed == 0 and all(r["drop_reason"] is None for r in decisions(other).values())


def test_exact_and_near_agree_on_exact_copies(deduped_sample, tmp_path):
    root, _ = deduped_sample
    near_only = str(tmp_path / "near_only")
    shutil.copytree(root, near_only)
    rep = defaults.run_dedup(near_only, exact=False, progress=False)
    assert dparams.REASON_EXACT not in rep.removed_by_reason
    corpus = Corpus(near_only)
    clusters = decisions(near_only)
    by_hash: dict[bytes, list] = {}
    for part in corpus.parts():
        sig_path = os.path.join(near_only, "work", "dedup", "sig", part.subset, part.name)
        sig = pq.read_table(sig_path)
        mat = np.load(dsig.sig_array_path(sig_path))
        ids = pq.read_table(part.path, columns=["id"]).column("id").to_pylist()
        for doc_id, h, n_words, s in zip(ids, sig.column("chash").to_pylist(), sig.column("n_words").to_pylist(),
                                         mat.tolist()):
            by_hash.setdefault(h, []).append((part.subset, doc_id, n_words, tuple(s)))
    groups = [g for g in by_hash.values() if len(g) > 1]
    assert len(groups) > 100
    for g in groups:
        assert len({m[3] for m in g}) == 1  # equal content hash -> equal signature
        if g[0][2] > 0:  # near dedup alone puts every exact copy in one cluster
            assert len({clusters[(m[0], m[1])]["dup_cluster"] for m in g}) == 1


def test_keep_policy_and_license_conflicts_hand_made(tmp_path):
    text = ("The quick brown fox jumps over the lazy dog while the cat watches from the window sill "
            "and the bird sings a song about the morning sun rising over the quiet hills. Later that day "
            "the farmer walks along the river to the old mill, counts his sheep twice, repairs the fence "
            "near the barn and finally sits down on the wooden bench to read yesterday's newspaper.")
    near = text.replace("morning", "evening")  # one word of 74 changed: Jaccard 65/75 = 0.87
    other = "An unrelated document about compilers, linkers and loaders, with enough words to shingle."
    corpus = make_corpus(str(tmp_path), {
        "alpha": [
            {"id": "b", "text": text, "license": "GPL-2.0-only"},
            {"id": "a", "text": text + "  \r\n", "license": "NOASSERTION"},  # exact copy after normalisation
            {"id": "c", "text": text, "license": "MIT OR GPL-2.0-only"},  # most permissive: kept
            {"id": "z1", "text": other, "license": "MIT"},
            {"id": "z0", "text": other, "license": "MIT"},  # same label: smallest id kept, no conflict
            {"id": "e1", "text": ""}, {"id": "e2", "text": "  \n"},  # empty: exact copies of each other
            {"id": "w1", "text": "hello"}, {"id": "w2", "text": "hello"}, {"id": "w3", "text": "goodbye"},
            {"id": "zh1", "text": "中文版维护者李阳负责翻译内核文档"}, {"id": "zh2", "text": "中文版维护者李阳负责翻译内核文档。"},
        ],
        "beta": [{"id": "a", "text": near, "license": "CC0-1.0"},  # near copy, public domain: kept over "c"
                 {"id": "x", "text": text, "license": "Apache-2.0"}],  # exact copy in another subset
    })
    report = defaults.run_dedup(corpus, workers=1, progress=False)
    d = decisions(corpus)
    assert d[("beta", "a")]["drop_reason"] is None
    for key in (("alpha", "a"), ("alpha", "b"), ("alpha", "c"), ("beta", "x")):
        assert (d[key]["drop_reason"], d[key]["dup_of_subset"], d[key]["dup_of"]) == (dparams.REASON_NEAR, "beta", "a")
    assert d[("alpha", "z0")]["drop_reason"] is None
    assert (d[("alpha", "z1")]["drop_reason"], d[("alpha", "z1")]["dup_of"]) == (dparams.REASON_EXACT, "z0")
    assert (d[("alpha", "e2")]["drop_reason"], d[("alpha", "e2")]["dup_of"]) == (dparams.REASON_EXACT, "e1")
    assert (d[("alpha", "w2")]["drop_reason"], d[("alpha", "w2")]["dup_of"]) == (dparams.REASON_EXACT, "w1")
    assert d[("alpha", "w3")]["dup_cluster"] is None
    assert (d[("alpha", "zh2")]["drop_reason"], d[("alpha", "zh2")]["dup_of"]) == (dparams.REASON_NEAR, "zh1")
    assert report.no_word_documents == 2
    conf = pq.read_table(report.license_conflicts_path).to_pylist()
    assert sorted((c["subset"], c["id"], c["license"], c["kept"]) for c in conf) == [
        ("alpha", "a", "NOASSERTION", False), ("alpha", "b", "GPL-2.0-only", False),
        ("alpha", "c", "MIT OR GPL-2.0-only", False), ("beta", "x", "Apache-2.0", False)]
    assert {c["group_id"] for c in conf} == {min(c["group_id"] for c in conf)} and conf[0]["n_labels"] == 4
    assert report.license_conflict_groups == 1
    # exact dedup alone: the best copy of the exact group is "c" (permissive beats copyleft and unknown)
    rep2 = defaults.run_dedup(corpus, near=False, workers=1, progress=False)
    d2 = decisions(corpus)
    assert d2[("alpha", "c")]["drop_reason"] is None and d2[("beta", "a")]["dup_cluster"] is None
    assert {d2[k]["dup_of"] for k in (("alpha", "a"), ("alpha", "b"), ("beta", "x"))} == {"c"}
    assert rep2.removed_by_reason == {dparams.REASON_EXACT: 6}


@pytest.mark.slow  # > 6 s on 2 cores
def test_cli_and_sql_view(deduped_sample, tmp_path):
    from cli.main import cli

    root, _ = deduped_sample
    copy = str(tmp_path / "c")
    shutil.copytree(root, copy)
    result = CliRunner().invoke(cli, ["dedup", "--corpus", copy, "--quiet"])
    assert result.exit_code == 0, result.output
    for text in ("clusters:", "Removed per subset", "Removed per source", "Largest clusters", "instruct"):
        assert text in result.output
    result = CliRunner().invoke(cli, ["dedup", "--corpus", copy, "--format", "json", "--no-exact"])
    assert result.exit_code == 0 and json.loads(result.stdout)["params"]["exact"] is False
    from xgen_data.stats import sql

    con = sql.connect(copy)
    n = con.execute("""SELECT count(*) FROM documents
        WHERE drop_reason = 'near_duplicate' AND dup_of IS NOT NULL""").fetchall()
    assert n[0][0] > 0
    con.execute("SELECT * FROM license_conflicts").fetchall()


@pytest.mark.slow
def test_full_shared_corpus(tmp_path):
    """The whole shared corpus (~137k documents, ~310 MB of text) on 2 workers, well inside 10 minutes."""
    import resource
    import time

    from xgen_data.sources import ingest

    corpus = str(tmp_path / "corpus")
    files = ("nl.jsonl.zst", "code.jsonl.zst", "instruct.jsonl.zst")
    ingest.ingest(corpus, [(shared_path("corpus", f), None) for f in files], workers=2, progress=False)
    t0 = time.time()
    report = defaults.run_dedup(corpus, workers=2, progress=False)
    seconds = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n".join(report.summary_lines()), f"\n{seconds:.1f} s, peak RSS (main process) {rss:.0f} MB")
    assert seconds < 300
    assert report.documents > 130_000 and report.clusters > 5_000
    for subset in ("natural", "code", "instruct"):
        assert sum(report.removed_by_subset[subset].values()) > 100
    assert report.license_conflict_groups > 10
    d = decisions(corpus)
    assert d[("natural", "deb:dict-foldoc:interesting")]["dup_of"] == "deb:jargon-text:entry:interesting"
    assert d[("natural", "deb:linux-doc-6.1:html/_sources/process/howto.rst.txt")]["drop_reason"] == dparams.REASON_EXACT


# --------------------------------------------------------------------------------------------------
# Removal precision: verified candidates, clique clusters
# --------------------------------------------------------------------------------------------------
def _vocab_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pseudo-words (so every 5-gram of a text built from them is distinct)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = {"".join(rng.choice(letters, 7)) for _ in range(2 * n)}
    return sorted(out)[:n]


def true_jaccard(x: str, y: str) -> float:
    a, b = set(minhash.shingles(x)), set(minhash.shingles(y))
    return len(a & b) / len(a | b)


def _chain_texts() -> tuple[str, str, str]:
    """A ≈ B ≈ C (Jaccard ~0.8 each) with A and C apart (~0.64): windows of one word stream."""
    words = _vocab_words(600, seed=7)
    block, n, k = 20, 18, 2
    return tuple(" ".join(words[i * k * block:(i * k + n) * block]) for i in range(3))


def test_estimated_jaccard_and_cliques_unit():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 1 << 32, size=256, dtype=np.uint64).astype(np.uint32)

    def near(src, share, seed):
        r = np.random.default_rng(seed)
        out = src.copy()
        flip = r.random(256) >= share
        out[flip] = r.integers(0, 1 << 32, size=int(flip.sum()), dtype=np.uint64).astype(np.uint32)
        return out

    a = base
    b = near(a, 0.85, 1)
    c = near(b, 0.85, 2)  # ~0.72 to a
    d = rng.integers(0, 1 << 32, size=256, dtype=np.uint64).astype(np.uint32)
    sig = np.stack([a, b, c, d])
    est = clusters.estimated_jaccard(sig, np.array([0, 1, 0, 0]), np.array([1, 2, 2, 3]))
    assert est[3] < 0.05 and 0.78 < est[0] < 0.92 and 0.78 < est[1] < 0.92
    assert est[2] == np.count_nonzero(a == c) / 256
    # pairs a-b, b-c, a-d (a false candidate): d is never clustered; a, b, c form one clique iff est(a, c) >= t
    u, v = np.array([0, 1, 0]), np.array([1, 2, 3])
    for t in (0.6, 0.8):
        label, verified = clusters.clique_clusters(sig, u, v, t)
        assert label[3] == 3 and verified == 2
        members = {i for i in range(3) if label[i] == label[0] or label[i] == label[1]}
        for i in members:
            for j in members:
                assert clusters.estimated_jaccard(sig, np.array([i]), np.array([j]))[0] >= t
        if est[2] >= t:
            assert set(label[:3]) == {0}
        else:
            assert label[0] == label[1] or label[1] == label[2]
            assert len(set(label[:3])) == 2
        # order of the pairs does not matter
        label2, _ = clusters.clique_clusters(sig, v[::-1], u[::-1], t)
        assert np.array_equal(label, label2)
    label, verified = clusters.clique_clusters(sig, np.zeros(0, np.int64), np.zeros(0, np.int64), 0.7)
    assert np.array_equal(label, np.arange(4)) and verified == 0


def _reference_cliques(sig, u, v, t):
    """The greedy clique rule of :func:`clusters.clique_clusters`, written plainly in Python (the reference the
    compiled kernel must equal): seeds by most verified neighbours then smallest row, per component; members
    join most similar first when verified-similar to every member so far."""
    n, k = sig.shape
    label = np.arange(n)
    pairs = {(min(a, b), max(a, b)) for a, b in zip(u.tolist(), v.tolist())}
    est = {p: np.count_nonzero(sig[p[0]] == sig[p[1]]) / k for p in pairs}
    edges = [p for p in sorted(pairs) if est[p] >= t]
    nbr = {i: [] for i in range(n)}
    for a, b in edges:
        nbr[a].append((est[(a, b)], b))
        nbr[b].append((est[(a, b)], a))
    parent = np.arange(n)
    clusters.union_edges(parent, np.array([a for a, _ in edges], np.int64), np.array([b for _, b in edges], np.int64))
    clusters.compress(parent)
    assigned = np.zeros(n, bool)
    nodes = sorted((i for i in range(n) if nbr[i]), key=lambda i: (parent[i], -len(nbr[i]), i))
    for seed in nodes:
        if assigned[seed]:
            continue
        members, assigned[seed] = [seed], True
        for _, c in sorted(nbr[seed], key=lambda x: (-x[0], x[1])):
            if not assigned[c] and min(np.count_nonzero(sig[m] == sig[c]) / k for m in members) >= t:
                members.append(c)
                assigned[c] = True
        label[members] = min(members)
    return label, len(edges)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_cliques_equal_reference(seed, monkeypatch):
    # families of noisy copies (components of many sizes, chains and near-misses), batches of a few components
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(40):
        base = rng.integers(0, 1 << 32, size=64, dtype=np.uint64).astype(np.uint32)
        for _ in range(int(rng.integers(1, 9))):
            out = base.copy()
            flip = rng.random(64) >= rng.uniform(0.6, 0.95)
            out[flip] = rng.integers(0, 1 << 32, size=int(flip.sum()), dtype=np.uint64).astype(np.uint32)
            rows.append(out)
            base = out if rng.random() < 0.5 else base  # chains as well as stars
    sig = np.stack(rows)
    n = len(sig)
    u = rng.integers(0, n, size=6 * n)
    v = rng.integers(0, n, size=6 * n)
    near = np.abs(u - v) < 8  # candidates mostly inside a family, a few across
    u, v = u[near & (u != v)], v[near & (u != v)]
    monkeypatch.setattr(clusters, "CLIQUE_BATCH_ROWS", 16)
    for t in (0.6, 0.7, 0.8):
        label, verified = clusters.clique_clusters(sig, u, v, t)
        ref, ref_verified = _reference_cliques(sig, u, v, t)
        assert verified == ref_verified and np.array_equal(label, ref), t
        assert len(set(label.tolist())) < n  # the graph has real clusters


def test_planted_chain_does_not_remove_far_copy(tmp_path):
    a, b, c = _chain_texts()
    assert 0.75 < true_jaccard(a, b) < 0.85 and 0.75 < true_jaccard(b, c) < 0.85 and true_jaccard(a, c) < 0.66
    recs = [{"id": i, "text": t, "license": "MIT"} for i, t in (("a", a), ("b", b), ("c", c))]
    corpus = make_corpus(str(tmp_path), {"natural": recs})
    # StarCoder's components chain C into A's cluster and remove it for A ...
    defaults.run_dedup(corpus, workers=1, progress=False, clustering="components")
    d = decisions(corpus)
    assert d[("natural", "c")]["dup_of"] == "a" and d[("natural", "b")]["dup_of"] == "a"
    # ... verified cliques never remove C for A: B joins the clique of its more similar neighbour, one
    # document is removed, for a copy it is verified-similar to, and the third stays
    rep = defaults.run_dedup(corpus, workers=1, progress=False)
    assert rep.params["clustering"] == "cliques" and rep.verified_pairs == 2
    d = decisions(corpus)
    removed = {i: d[("natural", i)]["dup_of"] for i in "abc" if d[("natural", i)]["drop_reason"] is not None}
    assert removed in ({"b": "a"}, {"c": "b"}), removed
    assert d[("natural", "c")]["dup_of"] != "a" and d[("natural", "a")]["drop_reason"] is None
    # the two clusterings are two attribute sets (the clustering is part of the dedup parameters)

    ded = Corpus(corpus).default_decisions()["dedup"]
    assert ded["clustering"] == "cliques"
    other = {**dparams.dedup_attr_params(ded), "clustering": "components"}
    assert Corpus(corpus).attribute_files("dedup", other)


def test_edited_copies_still_removed(tmp_path):
    """Edited copies at true Jaccard 0.8–0.95 of a base text are removed as near duplicates of it."""
    words = _vocab_words(3000, seed=11)
    rng = np.random.default_rng(5)
    recs, expect = [], {}
    for k in range(6):
        base = words[k * 400:(k + 1) * 400]
        recs.append({"id": f"b{k}", "text": " ".join(base), "license": "MIT"})
        for e, n_edit in enumerate((2, 5, 8)):  # ~5 shingles change per edited word
            ws = list(base)
            for pos in rng.choice(400, n_edit, replace=False):
                ws[pos] = words[2400 + int(rng.integers(0, 600))]
            recs.append({"id": f"e{k}-{e}", "text": " ".join(ws), "license": "GPL-3.0"})
            expect[f"e{k}-{e}"] = f"b{k}"
    texts = {r["id"]: r["text"] for r in recs}
    js = [true_jaccard(texts[i], texts[b]) for i, b in expect.items()]
    assert min(js) >= 0.8 and max(js) <= 0.97
    corpus = make_corpus(str(tmp_path), {"code": recs})
    defaults.run_dedup(corpus, workers=1, progress=False)
    d = decisions(corpus)
    for i in expect:
        assert d[("code", i)]["drop_reason"] == dparams.REASON_NEAR, i
    for k in range(6):
        assert d[("code", f"b{k}")]["drop_reason"] is None


def _sample_signatures(root: str) -> tuple[dict, dict]:
    """(subset, id) -> text and (subset, id) -> dedup decision of a deduplicated corpus."""
    from xgen_data.stats import sql

    con = sql.connect(root, quiet=True)
    texts = {(r[0], r[1]): r[2] for r in con.execute("SELECT subset, id, text FROM documents").fetchall()}
    con.close()
    return texts, decisions(root)


def test_removed_documents_verified_against_kept_copy(deduped_sample):
    """Every near-removed document of the sample has estimated Jaccard >= threshold with its kept copy, and a
    true Jaccard of at least 0.6 (verified cliques: no chain A≈B≈C removes C for a far A)."""
    root, report = deduped_sample
    texts, d = _sample_signatures(root)
    hasher = minhash.MinHasher()
    near = [(k, (v["dup_of_subset"], v["dup_of"])) for k, v in d.items() if v["drop_reason"] == dparams.REASON_NEAR]
    assert len(near) > 50
    sig_r, _ = hasher.signatures([texts[k] for k, _ in near])
    sig_k, _ = hasher.signatures([texts[kk] for _, kk in near])
    est = (sig_r == sig_k).mean(axis=1)
    assert est.min() >= report.params["threshold"]
    assert min(true_jaccard(texts[k], texts[kk]) for k, kk in near) >= 0.6


def test_verification_keeps_high_similarity_pairs(deduped_sample, tmp_path):
    """Every candidate pair at true Jaccard >= 0.9 that plain components would join is verified, and its two
    documents end in one cluster with verification on."""
    root, _ = deduped_sample
    copy = str(tmp_path / "c")
    shutil.copytree(root, copy)
    defaults.run_dedup(copy, workers=1, progress=False, clustering="components")
    pairs = dbands.candidate_pairs(copy)
    corpus = Corpus(copy)
    offsets = dbands.doc_offsets(corpus)
    ids, texts = [], []
    for p in corpus.parts():
        t = pq.read_table(p.path, columns=["id", "text"])
        ids += [(p.subset, i) for i in t.column("id").to_pylist()]
        texts += t.column("text").to_pylist()
    assert len(ids) == offsets[-1]
    high = [(a, b) for a, b in pairs.tolist() if true_jaccard(texts[a], texts[b]) >= 0.9]
    assert len(high) > 100
    hasher = minhash.MinHasher()
    sig, _ = hasher.signatures(texts)
    h = np.array(high)
    assert clusters.estimated_jaccard(sig, h[:, 0], h[:, 1]).min() >= 0.7
    d = decisions(root)  # the fixture's run: cliques (the default)
    for a, b in high:
        assert d[ids[a]]["dup_cluster"] is not None and d[ids[a]]["dup_cluster"] == d[ids[b]]["dup_cluster"]


def test_clustering_parameter_checked():
    with pytest.raises(ValueError, match="clustering must be one of"):
        dparams.resolve_params(clustering="stars")
    assert dparams.resolve_params().clustering == "cliques"


def test_normalize_text_fast_path_equals_regex():
    import re

    rx = re.compile(r"[ \t\f\v]+(?=\n)")
    texts = sample_texts(10) + EDGE_TEXTS + ["a \nb\t\nc\f\n d\v\n e  ", "no blanks\nat ends\n", "x\u00a0\ny",
                                             "tab\t\t\nend", "  lead\n\n  "]
    for t in texts:
        ref = rx.sub("", unicodedata.normalize("NFC", t).replace("\r\n", "\n").replace("\r", "\n")).strip()
        assert minhash.normalize_text(t) == ref


def test_bucket_pairs_equal_brute_force():
    """Pairs of one band: members of a bucket paired with its first ``cap`` distinct documents, as DuckDB did."""
    rng = np.random.default_rng(3)
    for cap in (1, 3, 64):
        h = rng.integers(0, 40, 600).astype(np.int64) * 7919
        d = rng.integers(0, 300, 600).astype(np.int64)
        a, b, buckets = dbands.bucket_pairs(h, d, cap)
        want, n_buckets = set(), 0
        for hv in np.unique(h):
            n_buckets += int(np.count_nonzero(h == hv) > 1)
            members = sorted(set(d[h == hv].tolist()))
            for i, x in enumerate(members):
                want |= {(y, x) for y in members[:min(i, cap)]}
        assert set(zip(a.tolist(), b.tolist())) == want and buckets == n_buckets
        assert (a < b).all()
    a, b, buckets = dbands.bucket_pairs(np.zeros(1, np.int64), np.zeros(1, np.int64))
    assert len(a) == 0 and buckets == 0


def test_sig_store_reads_rows_across_parts(tmp_path):
    mats = [np.arange(k * 5 * 8, (k + 1) * 5 * 8, dtype=np.uint32).reshape(5, 8) for k in range(3)]
    paths = []
    for k, m in enumerate(mats):
        paths.append(str(tmp_path / f"p{k}.sig.npy"))
        np.save(paths[-1], m)
    store = dcluster.SigStore(paths, np.array([0, 5, 10, 15]), 8, np.dtype(np.uint32))
    docs = np.array([14, 0, 7, 7, 5, 4])
    assert np.array_equal(store.rows(docs), np.concatenate(mats)[docs])
    np.save(paths[1], mats[1][:4])  # a matrix that does not match its part is an error, not wrong rows
    with pytest.raises(DamagedDataError, match="does not match its part"):
        store.rows(np.array([6]))


def test_merge_distinct_equals_union1d():
    rng = np.random.default_rng(3)
    for _ in range(100):
        key = np.unique(rng.integers(0, 500, size=int(rng.integers(0, 60)))).astype(np.int64)
        new = rng.integers(0, 500, size=int(rng.integers(0, 60))).astype(np.int64)
        assert np.array_equal(dbands.merge_distinct(key, new), np.union1d(key, new))
