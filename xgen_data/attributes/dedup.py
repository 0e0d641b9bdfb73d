"""Exact and near-duplicate removal over a whole corpus, StarCoder's way (SPEC §2).

What counts as a copy
    *Exact*: equal :func:`xgen_data.attributes.minhash.content_hash` (BLAKE2b-128 of the text after NFC, LF line ends,
    no trailing blanks per line, outer whitespace stripped). *Near*: MinHash over word ``ngram``-gram
    shingles (default 5 words, 256 permutations, datasketch-identical signatures, see
    :mod:`xgen_data.attributes.minhash`), LSH with ``bands × rows`` chosen for the Jaccard ``threshold`` (default 0.7 →
    25 bands of 10 rows, datasketch's ``MinHashLSH`` optimum; the S-curve's midpoint ``(1/25)^(1/10)`` is
    0.72); two documents are candidates when any band is equal. Exact copies and candidate pairs are edges
    of one graph; its connected components are the clusters. Dedup runs over all documents of all
    subsets, whatever the filters decided (ids are keyed by ``(subset, id)``).

Which copy is kept (SPEC §2 "Choice"), per recipe
    Clusters are attributes (computed once per parameter set); the kept copy is a *decision*, derived per
    recipe by SQL (:mod:`xgen_data.mixing.decisions`). Per cluster: a copy that the recipe's filters keep before one
    they drop, so a cluster's text is never lost to the length or license filter; then a copy in a subset the
    recipe packs; then the document with the
    most permissive license (:func:`license_rank`: public domain and
    permissive licenses on the license filter's allow-list first, then other permissive, weak copyleft,
    copyleft, other, unknown), then the smallest ``id`` (then the smallest subset name). Every other member is dropped with ``dup_of`` = the kept
    copy and ``drop_reason`` = ``exact_duplicate`` when its content hash equals the kept copy's, else
    ``near_duplicate``. (This is the same as exact dedup first, keeping the best copy of each exact group,
    then near dedup among the survivors, keeping the best of each near cluster: the policy is a total order.)

Outputs
    * ``attributes/dedup/<params-hash>/<generation>/<subset>/<part>.parquet`` for every docs part
      (:data:`ATTR_SCHEMA`, one generation committed atomically): ``id``, ``dup_cluster`` (int64, the smallest
      global document number in the cluster; null for documents in no cluster), ``exact_group`` (int64, the
      smallest global document number with the same content hash; null when unique), ``chash``. Global
      document numbers count documents in ``Corpus.parts()`` order. The ``documents`` view derives
      ``dup_reason``, ``dup_of``, ``dup_of_subset``, ``kept`` and ``drop_reason`` per recipe.
    * ``reports/license_conflicts.parquet``: a snapshot of the ``license_conflicts`` view for the decisions
      of the run (one row per document of each exact-duplicate group whose members carry different license
      labels; raw strings; null counts as a label).
    * ``work/dedup/``: per-part content hashes (``sig/*.parquet``), signature matrices (``sig/*.sig.npy``)
      and band-major band hashes (``bands/``), their SHA-256s (``sig/*.parquet.sha256.json``, written last),
      plus DuckDB's spill folder; safe to delete. Signatures are reused when the docs part, ``num_perm``,
      ``seed``, ``ngram`` and ``scheme`` are unchanged and every file matches its SHA-256 (only the banding
      is redone for a new threshold; a damaged file is recomputed).

How it scales
    Signatures are computed per part in ``workers`` processes (each holds one batch of documents and the
    part's band hashes). Exact groups are a DuckDB window over the content hashes (spilling to disk past
    ``memory_limit``). LSH candidates are formed band by band in NumPy (one band of the corpus in memory,
    :func:`bucket_pairs`), verified on signature rows read through memory maps (:class:`SigStore`), and
    clustered by a union-find over one int64 per document. The main process therefore holds O(documents)
    small integers and the rows being verified, never all signatures or text.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fnmatch
import functools
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data.attributes import minhash
from xgen_data.attributes.clusters import clique_clusters, compress, union_edges
from xgen_data.errors import DamagedDataError, InputError, unknown_key
from xgen_data.execute import executors
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus, CorpusError

REASON_EXACT = "exact_duplicate"
REASON_NEAR = "near_duplicate"
#: The ``dedup`` attributes of one document (``attributes/dedup/<params-hash>/<generation>/<subset>/<part>``).
ATTR_SCHEMA = pa.schema([("id", pa.string()), ("dup_cluster", pa.int64()), ("exact_group", pa.int64()),
                         ("chash", pa.binary(16))])
CONFLICT_SCHEMA = pa.schema([
    ("group_id", pa.int64()), ("subset", pa.string()), ("id", pa.string()), ("license", pa.string()),
    ("license_normalized", pa.string()), ("license_tier", pa.string()), ("source", pa.string()), ("path", pa.string()), ("group_size", pa.int64()),
    ("n_labels", pa.int64()), ("kept", pa.bool_()), ("drop_reason", pa.string()), ("dup_cluster", pa.int64()),
    ("dup_of", pa.string()), ("dup_of_subset", pa.string())])
#: Bumped when the work-file format or the signature computation changes (invalidates cached signatures).
WORK_VERSION = 2
#: Documents per batch inside a signature worker (bounds its memory: one batch of text at a time).
BATCH_DOCS = 256
#: Union-find edges fetched from DuckDB per batch.
EDGE_BATCH = 1 << 20
#: How LSH candidates become clusters: ``cliques`` (default) verifies every candidate pair on the signatures'
#: estimated Jaccard and splits each verified component into cliques, so every two members of a cluster are
#: verified-similar (see :func:`clique_clusters`); ``components`` is StarCoder's plain connected components of
#: the unverified candidate graph (kept for comparison).
CLUSTERINGS = ("cliques", "components")
#: In a bucket, every member is paired with the first this-many members (by document number): all pairs for
#: buckets up to this size, a bounded number for huge template families.
BUCKET_PAIR_CAP = 64

# --------------------------------------------------------------------------------------------------
# License policy: lower tier = more permissive = preferred copy
# --------------------------------------------------------------------------------------------------
#: Tiers of the keep policy, most permissive first (:func:`license_rank` gives the index). The first two
#: tiers are the expressions the license filter passes (:func:`xgen_data.attributes.licenses.license_passes` with the
#: same allow-list, SPEC §2), so a copy the filter keeps is never dropped for a copy the filter drops for its
#: license. Below them, every expression gets a *kind* from :data:`LICENSE_PATTERNS` (each identifier,
#: case-insensitive, takes the kind of the first fnmatch pattern it matches, else ``other``; ``A OR B`` takes
#: the better branch, since the user may choose it; ``A AND B`` the worse, since both apply; ``A WITH
#: exception`` the kind of ``A``; missing, ``NOASSERTION``/``NONE`` and unparsable labels are ``unknown``):
#:
#: 0 ``public-domain``: passes the allow-list, kind public-domain (CC0-1.0, Unlicense, 0BSD, …)
#: 1 ``permissive``: passes the allow-list otherwise (MIT, BSD-3-Clause, Apache-2.0, …)
#: 2 ``permissive-unlisted``: kind public-domain or permissive but not on the allow-list (PSF-2.0,
#:   PostgreSQL, Zlib, LicenseRef-BSD-unspecified, WTFPL, …)
#: 3 ``weak-copyleft`` (LGPL, MPL, EPL, CDDL, GFDL, CC-BY-SA, …), 4 ``copyleft`` (GPL, AGPL, …),
#: 5 ``other``, 6 ``unknown``.
LICENSE_TIERS = ("public-domain", "permissive", "permissive-unlisted", "weak-copyleft", "copyleft", "other",
                 "unknown")
_KINDS = ("public-domain", "permissive", "weak-copyleft", "copyleft", "other", "unknown")
LICENSE_PATTERNS: tuple[tuple[str, str], ...] = (
    # unknown / no usable statement
    ("noassertion", "unknown"), ("none", "unknown"), ("licenseref-no-license", "unknown"),
    ("licenseref-unknown*", "unknown"),
    # public domain and public-domain-like dedications
    ("cc0-1.0", "public-domain"), ("unlicense", "public-domain"), ("0bsd", "public-domain"),
    ("mit-0", "public-domain"), ("wtfpl", "public-domain"), ("pddl-1.0", "public-domain"),
    ("cc-pddc", "public-domain"), ("public-domain", "public-domain"), ("licenseref-public-domain*", "public-domain"),
    ("licenseref-pd*", "public-domain"), ("*-pd", "public-domain"), ("sax-pd*", "public-domain"),
    ("blessing", "public-domain"),
    # restricted Creative Commons variants before the generic CC-BY patterns
    ("cc-by-nc*", "other"), ("cc-by-nd*", "other"),
    ("cc-by-sa*", "weak-copyleft"),
    # permissive (SPEC §2's allow-list and its relatives)
    ("mit", "permissive"), ("mit-*", "permissive"), ("x11", "permissive"), ("isc", "permissive"),
    ("bsd-*", "permissive"), ("licenseref-bsd*", "permissive"), ("apache-*", "permissive"),
    ("artistic-2.0", "permissive"), ("ecl-2.0", "permissive"), ("shl-0.5*", "permissive"),
    ("psf-2.0", "permissive"), ("python-2.0*", "permissive"), ("postgresql", "permissive"),
    ("zlib", "permissive"), ("curl", "permissive"), ("bsl-1.0", "permissive"), ("ncsa", "permissive"),
    ("upl-1.0", "permissive"), ("afl-*", "permissive"), ("w3c*", "permissive"), ("libpng*", "permissive"),
    ("ijg", "permissive"), ("hpnd*", "permissive"), ("unicode-*", "permissive"), ("ofl-*", "permissive"),
    ("cc-by-[0-9]*", "permissive"), ("linux-openib", "permissive"), ("fsfap", "permissive"),
    ("fsfullr*", "permissive"), ("fsful", "permissive"), ("licenseref-fsful*", "permissive"),
    ("*-permissive", "permissive"), ("json", "permissive"), ("beerware", "permissive"),
    # weak copyleft (file- or library-scoped) and documentation copyleft
    ("lgpl-*", "weak-copyleft"), ("licenseref-lgpl*", "weak-copyleft"), ("mpl-*", "weak-copyleft"),
    ("epl-*", "weak-copyleft"), ("cddl-*", "weak-copyleft"), ("artistic-1.0*", "weak-copyleft"),
    ("gfdl-*", "weak-copyleft"), ("linux-man-pages-copyleft*", "weak-copyleft"),
    ("licenseref-opl*", "weak-copyleft"), ("opl-*", "weak-copyleft"),
    # strong copyleft
    ("gpl-*", "copyleft"), ("licenseref-gpl*", "copyleft"), ("agpl-*", "copyleft"), ("eupl-*", "copyleft"),
    ("osl-*", "copyleft"), ("sspl-*", "copyleft"),
)


@functools.lru_cache(maxsize=4096)
def _leaf_kind(key: str) -> int:
    k = key.strip().lower()
    for pattern, kind in LICENSE_PATTERNS:
        if fnmatch.fnmatchcase(k, pattern):
            return _KINDS.index(kind)
    return _KINDS.index("other")


def license_kind(expr: str | None) -> str:
    """The kind of an SPDX expression from :data:`LICENSE_PATTERNS` alone (no allow-list): one of
    ``public-domain, permissive, weak-copyleft, copyleft, other, unknown``."""
    return _KINDS[_kind_index(expr)]


@functools.lru_cache(maxsize=65536)
def _kind_index(expr: str | None) -> int:
    unknown = _KINDS.index("unknown")
    if expr is None or not expr.strip():
        return unknown
    import license_expression

    try:
        node = _licensing().parse(expr, validate=False, strict=False)
    except license_expression.ExpressionError:
        return unknown
    if node is None:
        return unknown

    def walk(n) -> int:
        if isinstance(n, license_expression.LicenseWithExceptionSymbol):
            return walk(n.license_symbol)
        if isinstance(n, license_expression.LicenseSymbol):
            return _leaf_kind(n.key)
        kinds = [walk(a) for a in n.args]
        return min(kinds) if isinstance(n, _licensing().OR) else max(kinds)

    return walk(node)


def _default_allow() -> tuple[str, ...]:
    try:
        from xgen_data.attributes import licenses
    except ImportError:  # the license filter is not installed: no allow-list tier
        return ()
    return tuple(licenses.default_allow_list())


def license_rank(expr: str | None, allow: tuple[str, ...] | None = None) -> int:
    """Keep-policy rank of an SPDX license expression: index into :data:`LICENSE_TIERS` (0 = best).

    Args:
        expr: an SPDX expression as found in the corpus (``"MIT"``, ``"GPL-2.0 OR BSD-3-Clause"``,
            ``"NOASSERTION"``, ``None`` …). Operators are case-insensitive.
        allow: the license filter's allow-list (SPDX ids); default the shipped list
            (``xgen_data/attributes/licenses.toml``, SPEC §2). Pass a recipe's ``allow_list()`` to stay consistent
            with that recipe's filter.
    Returns:
        0 (public-domain) … 6 (unknown); see :data:`LICENSE_TIERS` for the rules.
    """
    allow = _default_allow() if allow is None else tuple(allow)
    return _rank(expr, allow)


@functools.lru_cache(maxsize=65536)
def _rank(expr: str | None, allow: tuple[str, ...]) -> int:
    kind = _KINDS[_kind_index(expr)]
    passes = False
    if allow:
        from xgen_data.attributes import licenses

        passes = licenses.license_passes(expr, allow)
    if passes:
        return LICENSE_TIERS.index("public-domain" if kind == "public-domain" else "permissive")
    if kind in ("public-domain", "permissive"):
        return LICENSE_TIERS.index("permissive-unlisted")
    return LICENSE_TIERS.index(kind)


@functools.lru_cache(maxsize=1)
def _licensing():
    import license_expression

    return license_expression.Licensing()


# --------------------------------------------------------------------------------------------------
# Parameters and report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DedupParams:
    """Validated parameters of one run (see :func:`run_dedup`)."""

    threshold: float
    num_perm: int
    ngram: int
    seed: int
    bands: int
    rows: int
    scheme: str
    exact: bool
    near: bool
    clustering: str = "cliques"

    @property
    def lsh_threshold(self) -> float:
        """Jaccard similarity at which the LSH S-curve is steepest, ``(1/bands)^(1/rows)``."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def sig_key(self) -> dict:
        return {"version": WORK_VERSION, "near": self.near, "num_perm": self.num_perm, "seed": self.seed,
                "ngram": self.ngram, "scheme": self.scheme}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_params(threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 1,
                   bands: int | None = None, rows: int | None = None, scheme: str = minhash.DEFAULT_SCHEME,
                   exact: bool = True, near: bool = True, clustering: str = "cliques") -> DedupParams:
    """Check parameters and fill in ``bands``/``rows``.

    ``bands`` and ``rows`` both None: :func:`xgen_data.attributes.minhash.optimal_bands_rows` for ``threshold``
    (0.7, 256 → 25 × 10). Only one given: the other is ``num_perm // given``. Both: used as given.

    Raises:
        ValueError: threshold not in (0, 1); num_perm not in [2, 8192]; ngram < 1; seed not in [0, 2**32);
            bands or rows < 1; ``bands × rows > num_perm``; unknown scheme; exact/near not bool; clustering
            not one of :data:`CLUSTERINGS`.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be a number in (0, 1), got {threshold!r}")
    if not _is_int(num_perm) or not 2 <= num_perm <= 8192:
        raise InputError(f"num_perm must be an integer in [2, 8192], got {num_perm!r}")
    if not _is_int(ngram) or ngram < 1:
        raise InputError(f"ngram must be an integer >= 1, got {ngram!r}")
    if not _is_int(seed) or not 0 <= seed < 1 << 32:
        raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if scheme not in minhash.SCHEMES:
        raise InputError(f"scheme must be one of {', '.join(minhash.SCHEMES)}, got {scheme!r}")
    if clustering not in CLUSTERINGS:
        raise InputError(f"clustering must be one of {', '.join(CLUSTERINGS)}, got {clustering!r}")
    for name, v in (("exact", exact), ("near", near)):
        if not isinstance(v, bool):
            raise InputError(f"{name} must be true or false, got {v!r}")
    for name, v in (("bands", bands), ("rows", rows)):
        if v is not None and (not _is_int(v) or v < 1):
            raise InputError(f"{name} must be a positive integer, got {v!r}")
        if v is not None and v > num_perm:
            raise InputError(f"{name} = {v} exceeds num_perm = {num_perm}")
    if bands is None and rows is None:
        bands, rows = minhash.optimal_bands_rows(float(threshold), int(num_perm))
    elif bands is None:
        bands = num_perm // rows
    elif rows is None:
        rows = num_perm // bands
    if bands * rows > num_perm:
        raise InputError(f"bands × rows = {bands} × {rows} = {bands * rows} exceeds num_perm = {num_perm}")
    return DedupParams(float(threshold), int(num_perm), int(ngram), int(seed), int(bands), int(rows), scheme,
                       exact, near, clustering)


@dataclass
class ClusterInfo:
    """One duplicate cluster, for the report's largest-clusters table."""

    cluster: int
    size: int
    kept_subset: str
    kept_id: str
    kept_license: str | None
    exact: int  # members dropped as exact copies of the kept one
    near: int  # members dropped as near copies
    subsets: str  # "natural:20, code:1"
    sources: str  # most frequent sources, "debian:debian-handbook:25"


@dataclass
class DedupReport:
    """What :func:`run_dedup` did. Counts are documents unless named otherwise."""

    corpus: str
    params: dict
    documents: int = 0
    documents_per_subset: dict = field(default_factory=dict)
    no_word_documents: int = 0  # no word, hence no shingle: exact dedup only
    exact_groups: int = 0  # content hashes shared by ≥ 2 documents
    exact_group_documents: int = 0
    near_buckets: int = 0  # (band, hash) buckets holding ≥ 2 documents
    near_edges: int = 0  # components: distinct (document, bucket minimum) edges; cliques: distinct candidate pairs
    verified_pairs: int = 0  # cliques: candidate pairs with estimated Jaccard >= threshold
    clusters: int = 0  # connected components of ≥ 2 documents
    clustered_documents: int = 0
    removed: int = 0
    removed_by_reason: dict = field(default_factory=dict)  # reason -> n
    removed_by_subset: dict = field(default_factory=dict)  # subset -> {reason: n}
    removed_by_source: list = field(default_factory=list)  # (subset, source, exact, near), most removed first
    largest_clusters: list = field(default_factory=list)  # ClusterInfo, largest first (≤ 10)
    license_conflict_groups: int = 0
    license_conflict_documents: int = 0
    license_conflicts_path: str | None = None
    signature_parts_reused: int = 0
    signature_cpu_seconds: float = 0.0  # CPU time of the signature workers, all together
    seconds: float = 0.0
    seconds_by_phase: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """A short plain-text summary (the CLI prints richer tables from the same fields)."""
        p = self.params
        out = [f"Dedup of {self.documents:,} documents in {self.seconds:.1f} s "
               f"(exact={'on' if p['exact'] else 'off'}, near={'on' if p['near'] else 'off'}: MinHash "
               f"{p['num_perm']} perms, {p['ngram']}-word shingles, seed {p['seed']}, scheme {p['scheme']}, "
               f"LSH {p['bands']} bands x {p['rows']} rows for threshold {p['threshold']} "
               f"[S-curve midpoint {p['lsh_threshold']:.3f}], clustering {p.get('clustering', 'components')})",
               f"  exact groups: {self.exact_groups:,} ({self.exact_group_documents:,} documents); "
               f"LSH buckets with >= 2 documents: {self.near_buckets:,}"
               + (f"; candidate pairs {self.near_edges:,}, verified (estimated Jaccard >= {p['threshold']}) "
                  f"{self.verified_pairs:,}" if p.get("clustering") == "cliques" and p["near"] else ""),
               f"  clusters: {self.clusters:,} ({self.clustered_documents:,} documents); removed: {self.removed:,} ("
               + ", ".join(f"{k} {v:,}" for k, v in sorted(self.removed_by_reason.items())) + ")",
               f"  license conflicts: {self.license_conflict_groups:,} exact groups, "
               f"{self.license_conflict_documents:,} documents"
               + (f" -> {self.license_conflicts_path}" if self.license_conflicts_path else "")]
        for subset in sorted(self.documents_per_subset):
            r = self.removed_by_subset.get(subset, {})
            out.append(f"  {subset}: {self.documents_per_subset[subset]:,} documents, removed "
                       f"{r.get(REASON_EXACT, 0):,} exact + {r.get(REASON_NEAR, 0):,} near")
        for c in self.largest_clusters:
            out.append(f"  cluster {c.cluster}: {c.size} documents, kept {c.kept_subset}/{c.kept_id} "
                       f"[{c.kept_license}] ({c.sources})")
        return out

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["largest_clusters"] = [c.__dict__ for c in self.largest_clusters]
        return d


# --------------------------------------------------------------------------------------------------
# Phase 1: signatures and band hashes per part (worker processes)
# --------------------------------------------------------------------------------------------------
def _meta_key(path: str) -> str | None:
    try:
        md = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    v = md.get(b"xgen_dedup_key")
    return v.decode() if v is not None else None


def _sig_schema(key: str) -> pa.Schema:
    return pa.schema([("row", pa.int32()), ("chash", pa.binary(16)), ("n_words", pa.int32())],
                     metadata={"xgen_dedup_key": key})


BAND_SCHEMA_FIELDS = [("band", pa.int16()), ("bhash", pa.int64()), ("row", pa.int32())]


def sig_array_path(sig_path: str) -> str:
    """The signature matrix of a part's work file ``sig/<subset>/<part>.parquet``: ``….sig.npy`` beside it."""
    return sig_path[: -len(".parquet")] + ".sig.npy" if sig_path.endswith(".parquet") else sig_path + ".sig.npy"


def _write_bands(path: str, key: str, sig: np.ndarray, has: np.ndarray, bands: int, rows: int) -> None:
    """Band hashes of the part's documents with words, band-major: row group ``i`` holds band ``i``.

    ``sig`` is the part's whole signature matrix (a memory map): hashed in slices of 4,096 documents, so the
    worker holds ``n_docs × bands`` int64 (one part, at most :data:`xgen_data.sources.ingest.PART_DOCS` documents).
    """
    idx = np.flatnonzero(has).astype(np.int32)
    bh = np.empty((len(idx), bands), dtype=np.uint64)
    for s in range(0, len(idx), 4096):
        bh[s:s + 4096] = minhash.band_hashes(np.asarray(sig[idx[s:s + 4096]]), bands, rows)
    schema = pa.schema(BAND_SCHEMA_FIELDS, metadata={"xgen_dedup_key": key})
    with fsutil.atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for i in range(bands):
                w.write_table(pa.table([pa.array(np.full(len(idx), i, np.int16)),
                                        pa.array(np.ascontiguousarray(bh[:, i]).view(np.int64)), pa.array(idx)],
                                       schema=schema), row_group_size=max(1, len(idx)))


def _sums_path(sig_path: str) -> str:
    """The SHA-256s of a part's work files (``sig``, ``npy``, ``bands``): ``<sig>.sha256.json``, written last."""
    return sig_path + ".sha256.json"


def _work_files(task: dict, near: bool) -> dict[str, str]:
    files = {"sig": task["sig"]}
    if near:
        files.update(npy=sig_array_path(task["sig"]), bands=task["bands"])
    return files


def _sums_match(task: dict, names: tuple[str, ...]) -> bool:
    """Whether the work files ``names`` of ``task`` exist and match the SHA-256s recorded when they were
    written (a damaged or edited cache file is recomputed, never trusted)."""
    try:
        sums = fsutil.read_json(_sums_path(task["sig"]))
    except (OSError, ValueError):
        return False
    files = _work_files(task, True)
    return all(os.path.exists(files[n]) and sums.get(n) == fsutil.sha256_file(files[n]) for n in names)


def _write_sums(task: dict, near: bool) -> None:
    files = _work_files(task, near)
    fsutil.write_json(_sums_path(task["sig"]), {n: fsutil.sha256_file(f) for n, f in files.items()
                                               if os.path.exists(f)})


def _cached(task: dict) -> tuple[bool, bool]:
    """``(signatures current, band hashes current)`` for a :func:`signature_part` task, from the work files'
    recorded keys (and the signature matrix's presence for a near run) and their recorded SHA-256s."""
    p = DedupParams(**task["params"])
    sig_key = json.dumps({**p.sig_key(), "part": task["part_key"]}, sort_keys=True)
    band_key = json.dumps({"sig": sig_key, "bands": p.bands, "rows": p.rows}, sort_keys=True)
    cached = _meta_key(task["sig"])
    if p.near or cached is None:
        sig_ok = cached == sig_key and (not p.near or os.path.exists(sig_array_path(task["sig"])))
    else:  # exact only needs content hashes, which any cached file of this part and work version has
        c = json.loads(cached)
        sig_ok = c.get("version") == WORK_VERSION and c.get("part") == task["part_key"]
    sig_ok = sig_ok and _sums_match(task, ("sig", "npy") if p.near else ("sig",))
    bands_ok = not p.near or (sig_ok and _meta_key(task["bands"]) == band_key and _sums_match(task, ("bands",)))
    return sig_ok, bands_ok


def signature_part(task: dict) -> dict:
    """Worker: content hashes, MinHash signatures and band hashes of one docs part, to the work files.

    Args:
        task: ``docs`` (docs part path), ``sig`` / ``bands`` (output paths), ``params`` (a
            :class:`DedupParams` as dict), ``part_key`` (identity of the docs part: name, size, mtime).
    Writes:
        ``sig`` (Parquet ``row, chash, n_words``, the cache key in its metadata, written last: it commits the
        part's work files), :func:`sig_array_path` (``.npy`` matrix ``(n_docs, num_perm)`` of the scheme's
        dtype, rows of documents without words all :func:`~xgen_data.attributes.minhash.empty_value`; near runs only) and
        ``bands`` (band-major, see :func:`_write_bands`; near runs only).
    Returns:
        ``{"docs": n, "bytes": text bytes, "reused": bool, "seconds": s, "cpu_seconds": s}``. Signatures are
        recomputed only when the part or a signature parameter changed; band hashes when those or
        ``bands``/``rows`` changed.
    """
    t0, c0 = time.time(), time.process_time()
    p = DedupParams(**task["params"])
    sig_key = json.dumps({**p.sig_key(), "part": task["part_key"]}, sort_keys=True)
    band_key = json.dumps({"sig": sig_key, "bands": p.bands, "rows": p.rows}, sort_keys=True)
    stats = {"docs": 0, "bytes": 0, "reused": False, "seconds": 0.0, "cpu_seconds": 0.0}
    sig_ok, bands_ok = _cached(task)
    stats["reused"] = sig_ok
    if not sig_ok:
        pf = pq.ParquetFile(task["docs"])
        n_rows = pf.metadata.num_rows
        schema = _sig_schema(sig_key)
        hasher = minhash.MinHasher(p.num_perm, p.seed, p.ngram, p.scheme) if p.near else None
        npy = sig_array_path(task["sig"])
        os.makedirs(os.path.dirname(npy), exist_ok=True)
        with contextlib.ExitStack() as stack:
            mat = None
            if p.near:
                mat = np.lib.format.open_memmap(stack.enter_context(fsutil.atomic_path(npy)), mode="w+",
                                                dtype=minhash.sig_dtype(p.scheme), shape=(n_rows, p.num_perm))
            with fsutil.atomic_path(task["sig"]) as sig_tmp:
                with pq.ParquetWriter(sig_tmp, schema, compression="zstd") as swriter:
                    row0 = 0
                    for batch in pf.iter_batches(batch_size=BATCH_DOCS, columns=["text", "n_bytes"]):
                        texts = [minhash.nfc(t) if t else "" for t in batch.column("text").to_pylist()]
                        n = len(texts)
                        chash = pa.array([minhash.content_hash_nfc(t) for t in texts], pa.binary(16))
                        if p.near:
                            sig, n_words = hasher.signatures(texts, nfc_done=True)  # NFC once, for both hashes
                            mat[row0:row0 + n] = sig
                            nw = pa.array(n_words)
                        else:
                            nw = pa.nulls(n, pa.int32())
                        swriter.write_batch(pa.RecordBatch.from_arrays(
                            [pa.array(np.arange(row0, row0 + n, dtype=np.int32)), chash, nw], schema=schema))
                        stats["docs"] += n
                        stats["bytes"] += int(pa.compute.sum(batch.column("n_bytes")).as_py() or 0)
                        row0 += n
                if mat is not None:
                    mat.flush()
                    stack.close()  # the matrix is in place before the Parquet file that commits it
        bands_ok = False
    else:
        stats["docs"] = pq.ParquetFile(task["sig"]).metadata.num_rows
    if p.near and not bands_ok:
        has = pq.read_table(task["sig"], columns=["n_words"]).column("n_words").to_numpy() > 0
        _write_bands(task["bands"], band_key, np.load(sig_array_path(task["sig"]), mmap_mode="r"), has,
                     p.bands, p.rows)
    if not (sig_ok and bands_ok):
        _write_sums(task, p.near)  # last: files written before a crash are not trusted without it
    stats["seconds"], stats["cpu_seconds"] = time.time() - t0, time.process_time() - c0
    return stats


def _warm_worker() -> None:
    """Import the kernels and load (or compile) them in a fresh worker, before its first part arrives."""
    minhash.MinHasher().signatures(["warm up the compiled kernels"])


def _tasks_left(tasks: list[dict]) -> list[int]:
    """Indices of the tasks whose work files are not current (:func:`_cached`), largest part first."""
    return sorted((i for i, t in enumerate(tasks) if not all(_cached(t))), key=lambda i: -tasks[i]["size"])


def _start_pool(n_tasks: int, workers: int, executor: str = "local", ray_address: str | None = None
                ) -> cf.Executor | None:
    """``min(workers, n_tasks)`` spawned worker processes, already importing and loading the kernels (so their
    start overlaps the main process's own set-up); None when one process or fewer is needed. With
    ``executor="ray"``: Ray tasks (:func:`xgen_data.execute.executors.step_pool`; None when no task is left,
    so a run whose signatures are all current starts no Ray); ``shutdown()`` releases Ray's workers."""
    n = min(workers, n_tasks)
    if executor == "ray" and n_tasks:
        pool = executors.ray_pool(workers, ray_address)
        for _ in range(pool._max_workers):
            pool.submit(_warm_worker)
        return pool
    if n <= 1:
        return None
    pool = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=fsutil.exit_with_parent)
    for _ in range(n):
        pool.submit(_warm_worker)
    return pool


def _run_tasks(tasks: list[dict], workers: int, progress: bool, pool: cf.ProcessPoolExecutor | None = None
               ) -> list[dict]:
    """Run :func:`signature_part` over the tasks whose work files are not current (largest first), in ``pool``
    (default: :func:`_start_pool`) or in this process; current ones are reported as reused."""
    from tqdm.auto import tqdm

    order = _tasks_left(tasks)
    results: list[dict | None] = [None] * len(tasks)
    for i, task in enumerate(tasks):
        if i not in order:
            results[i] = {"docs": pq.ParquetFile(task["sig"]).metadata.num_rows, "bytes": 0, "reused": True,
                          "seconds": 0.0, "cpu_seconds": 0.0}
    bar = tqdm(total=sum(tasks[i]["size"] for i in order), unit="B", unit_scale=True, desc="dedup signatures",
               disable=None if progress else True, leave=False)
    own = pool is None and len(order) > 1 and workers > 1
    if own:
        pool = _start_pool(len(order), workers)
    try:
        if pool is None or len(order) <= 1:
            for i in order:
                results[i] = signature_part(tasks[i])
                bar.update(tasks[i]["size"])
        else:
            futs = {pool.submit(signature_part, tasks[i]): i for i in order}
            for fut in cf.as_completed(futs):
                i = futs[fut]
                results[i] = fut.result()
                bar.update(tasks[i]["size"])
    finally:
        bar.close()
        if own and pool is not None:
            pool.shutdown()
    return results  # type: ignore[return-value]


class SigStore:
    """Signature rows of any documents, read from the parts' signature matrices (:func:`sig_array_path`).

    Each read maps the matrices (``np.load(mmap_mode="r")``), copies the requested rows and unmaps them, so the
    process holds only the rows asked for, never all signatures.

    Args:
        paths: the parts' ``.sig.npy`` files, in document-number order.
        offsets: int64 ``(n_parts + 1,)``: document ``d`` is row ``d - offsets[k]`` of part ``k``.
    """

    def __init__(self, paths: list[str], offsets: np.ndarray, num_perm: int, dtype: np.dtype):
        self.paths, self.offsets, self.num_perm, self.dtype = list(paths), np.asarray(offsets), num_perm, dtype

    def rows(self, docs: np.ndarray) -> np.ndarray:
        """Signatures of global document numbers ``docs`` (int64 ``(m,)``): shape ``(m, num_perm)``."""
        docs = np.asarray(docs, dtype=np.int64)
        out = np.empty((len(docs), self.num_perm), dtype=self.dtype)
        part = np.searchsorted(self.offsets, docs, side="right") - 1
        for k in np.unique(part).tolist():
            sel = np.flatnonzero(part == k)
            mat = np.load(self.paths[k], mmap_mode="r")
            if mat.shape != (self.offsets[k + 1] - self.offsets[k], self.num_perm):
                raise DamagedDataError(f"{self.paths[k]}: signature matrix of shape {mat.shape} does not match its part; "
                                       "delete work/dedup and re-run")
            out[sel] = mat[docs[sel] - self.offsets[k]]
            del mat
        return out


class _RowsOf:
    """``sig[i]`` = the signatures of ``nodes[i]`` from a :class:`SigStore` (what :func:`clique_clusters` reads)."""

    def __init__(self, store: SigStore, nodes: np.ndarray):
        self.store, self.nodes = store, nodes
        self.shape = (len(nodes), store.num_perm)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, idx):
        return self.store.rows(self.nodes[np.asarray(idx, dtype=np.int64)])


def bucket_pairs(bhash: np.ndarray, doc: np.ndarray, cap: int = BUCKET_PAIR_CAP) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate pairs of one band: documents with equal band hash.

    Args:
        bhash: int64 ``(m,)`` band hashes; doc: int64 ``(m,)`` the document (exact-group representative) of each.
        cap: in a bucket every member is paired with the first ``cap`` members by document number.
    Returns:
        ``(a, b, buckets)``: int64 pairs with ``a < b`` (both members of one bucket, ``a`` among its first
        ``cap`` distinct documents; a pair sharing two buckets appears twice), and the number of buckets
        holding ≥ 2 rows (before distinct documents).
    """
    order = np.lexsort((doc, bhash))
    h, d = bhash[order], doc[order]
    if len(h) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    new_h = np.concatenate([[True], h[1:] != h[:-1]])
    run_start = np.flatnonzero(new_h)
    run_len = np.diff(np.append(run_start, len(h)))
    buckets = int(np.count_nonzero(run_len > 1))
    keep = new_h | np.concatenate([[True], d[1:] != d[:-1]])  # distinct (bucket, document)
    multi = np.repeat(run_len > 1, run_len)
    keep &= multi
    h, d = h[keep], d[keep]
    if not len(h):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), buckets
    new_h = np.concatenate([[True], h[1:] != h[:-1]])
    start = np.flatnonzero(new_h)
    size = np.diff(np.append(start, len(h)))
    rank = np.arange(len(h)) - np.repeat(start, size)  # position of each member in its bucket
    n_pair = np.minimum(rank, cap)  # member of rank r pairs with ranks 0 .. min(r, cap) - 1
    total = int(n_pair.sum())
    x = np.repeat(np.arange(len(h)), n_pair)
    first = np.repeat(np.cumsum(n_pair) - n_pair, n_pair)
    y = np.repeat(np.repeat(start, size), n_pair) + (np.arange(total) - first)
    return d[y], d[x], buckets


def _candidate_pairs_np(band_paths: list[str], offsets: np.ndarray, rep: np.ndarray, bands: int
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """Distinct candidate pairs ``(a, b)``, ``a < b`` (exact-group representatives), over all bands, band by band.

    Reads band ``i`` of every part (row group ``i`` of the band-major work files), so memory holds one band of
    the corpus (about 16 bytes per document) plus the distinct pairs so far (8 bytes each, merged per band).
    ``rep``: int64 per document, its exact-group representative, -1 for documents without words (they have
    no band rows).
    """
    files = [pq.ParquetFile(f) for f in band_paths]
    key, buckets = np.zeros(0, np.int64), 0
    n = len(rep)
    for band in range(bands):
        hs, ds = [], []
        for k, f in enumerate(files):
            if f.metadata.num_rows == 0:
                continue
            t = f.read_row_group(band, columns=["bhash", "row"])
            hs.append(t.column("bhash").to_numpy())
            ds.append(offsets[k] + t.column("row").to_numpy().astype(np.int64))
        if not hs:
            continue
        a, b, nb = bucket_pairs(np.concatenate(hs), rep[np.concatenate(ds)])
        buckets += nb
        key = _merge_distinct(key, a * n + b)  # distinct pairs so far: memory does not grow with the band count
    return key // n, key % n, buckets


def _merge_distinct(key: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``key`` (sorted, distinct) and ``new`` (any order), int64.

    A stable sort of the concatenation (timsort merges the two sorted runs in linear time), then adjacent
    duplicates dropped; ``np.union1d`` hashes every value again on each call (6.2 of the 9.9 s of the 4×
    growth corpus's candidate pairs, 25 bands).
    """
    new = np.sort(new)
    out = np.concatenate([key, new])
    out.sort(kind="stable")
    if len(out) < 2:
        return out
    return out[np.concatenate([[True], out[1:] != out[:-1]])]


def _verified_cliques(con, report: DedupReport, params: DedupParams, band_paths: list[str], sig_paths: list[str],
                      offsets: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs among exact-group representatives, verified into cliques (NumPy over the work files).

    Each exact group (documents with words) enters as its smallest document, so a bucket holds distinct texts;
    in a bucket every member is paired with the first :data:`BUCKET_PAIR_CAP` members (all pairs in buckets up
    to that size; :func:`bucket_pairs`). Signatures are read only for the pairs being verified
    (:class:`SigStore`, in chunks).

    Returns:
        ``(doc, label)`` int64 arrays of equal shape: each candidate document and the smallest document of its
        clique (:func:`clique_clusters`); fills ``report.near_buckets``, ``report.near_edges`` (distinct
        candidate pairs) and ``report.verified_pairs``.
    """
    rep = np.arange(n_docs, dtype=np.int64)
    ex = con.execute("SELECT doc, gid FROM exact_members WHERE doc <> gid").fetchnumpy()
    rep[np.asarray(ex["doc"], dtype=np.int64)] = np.asarray(ex["gid"], dtype=np.int64)
    a, b, report.near_buckets = _candidate_pairs_np(band_paths, offsets, rep, params.bands)
    report.near_edges = int(len(a))
    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        report.verified_pairs = 0
        return nodes, nodes.copy()
    store = SigStore([sig_array_path(p) for p in sig_paths], offsets, params.num_perm,
                     minhash.sig_dtype(params.scheme))
    label, verified = clique_clusters(_RowsOf(store, nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b),
                                      params.threshold)
    report.verified_pairs = verified
    return nodes, nodes[label]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _qlist(paths: list[str]) -> str:
    return "[" + ", ".join(_q(p) for p in paths) + "]"


def doc_offsets(corpus: Corpus) -> np.ndarray:
    """Global numbering: int64 shape ``(n_parts + 1,)``; document ``row`` of part ``k`` is ``offsets[k] + row``."""
    counts = [pq.ParquetFile(p.path).metadata.num_rows for p in corpus.parts()]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def candidate_pairs(corpus_dir: str, docs: np.ndarray | None = None) -> np.ndarray:
    """Every LSH candidate pair of the last near-dedup run: documents sharing ≥ 1 ``(band, hash)`` bucket.

    A diagnostic (the run itself only forms star edges per bucket): reads ``work/dedup/bands``, so call it
    after :func:`run_dedup` with ``near=True`` on the same parts.

    Args:
        docs: optional int64 global document numbers to restrict both ends of the pairs to.
    Returns:
        int64 shape ``(m, 2)``, rows ``(a, b)`` with ``a < b`` (a document is never paired with itself),
        distinct, sorted.
    Raises:
        CorpusError: not a corpus; FileNotFoundError: no band files for some part (run dedup first).
    """
    import duckdb

    corpus = Corpus(corpus_dir)
    parts = corpus.parts()
    offsets = doc_offsets(corpus)
    files = [os.path.join(corpus.root, "work", "dedup", "bands", p.subset, p.name) for p in parts]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: no band hashes; run dedup with near=True first")
    if not files:
        return np.zeros((0, 2), dtype=np.int64)
    con = duckdb.connect()
    try:
        con.register("_pofs", pa.table({"f": files, "doff": pa.array(offsets[:-1], pa.int64())}))
        where = ""
        if docs is not None:
            con.register("_only", pa.table({"doc": pa.array(np.asarray(docs, dtype=np.int64))}))
            where = "WHERE doc IN (SELECT doc FROM _only)"
        rows = con.sql(f"""WITH b AS (SELECT * FROM (SELECT r.band, r.bhash, o.doff + r.row AS doc
                FROM read_parquet({_qlist(files)}, filename=true) r JOIN _pofs o ON r.filename = o.f) {where})
            SELECT DISTINCT x.doc AS a, y.doc AS b FROM b x JOIN b y
                ON x.band = y.band AND x.bhash = y.bhash AND x.doc < y.doc ORDER BY a, b""").fetchnumpy()
    finally:
        con.close()
    return np.stack([rows["a"].astype(np.int64), rows["b"].astype(np.int64)], axis=1)


#: Keys a recipe's ``[dedup]`` table may hold (besides ``enabled``).
RECIPE_KEYS = ("threshold", "num_perm", "ngram", "seed", "bands", "rows", "scheme", "exact", "near", "clustering")


def recorded_params(license_allow=None, **kw) -> dict:
    """The parameters a dedup run records in ``corpus.json`` for these arguments (validated, defaults filled).

    Raises:
        ValueError: an unknown key (not in :data:`RECIPE_KEYS`) or a bad value (:func:`resolve_params`).
    """
    unknown = sorted(set(kw) - set(RECIPE_KEYS))
    if unknown:
        raise InputError("; ".join(unknown_key(k, RECIPE_KEYS) for k in unknown)
                         + f" (dedup parameters: {', '.join(RECIPE_KEYS)})")
    if isinstance(license_allow, str):
        raise InputError("license_allow must be a list of SPDX identifiers, not a string")
    params = resolve_params(**kw)
    allow = _default_allow() if license_allow is None else tuple(license_allow)
    return {**params.__dict__, "license_allow": sorted(allow)}


def _feed(con, parent: np.ndarray, sql: str) -> int:
    """Union the edges ``(u, v)`` that ``sql`` returns (streamed in batches of :data:`EDGE_BATCH`) into
    ``parent``; returns the number of edges."""
    n_edges = 0
    for batch in con.sql(sql).to_arrow_reader(EDGE_BATCH):
        u = batch.column(0).to_numpy()
        union_edges(parent, u, batch.column(1).to_numpy())
        n_edges += len(u)
    compress(parent)
    return n_edges


def _task(part, work: str, params: DedupParams) -> dict:
    """The :func:`signature_part` task of one docs part (work file paths, parameters, the part's identity)."""
    st = os.stat(part.path)
    return {"docs": part.path, "size": st.st_size, "sig": os.path.join(work, "sig", part.subset, part.name),
            "bands": os.path.join(work, "bands", part.subset, part.name), "params": params.__dict__,
            "part_key": {"subset": part.subset, "name": part.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}}


def _clusters(con, report: DedupReport, params: DedupParams, tasks: list[dict], offsets: np.ndarray,
              n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of the run: exact groups (when on) and near duplicates (verified cliques, or StarCoder's
    components), joined by a union-find over one int64 per document.

    Returns:
        ``(doc, cluster)`` int64 arrays: every document in a cluster of ≥ 2 and its cluster's smallest document.
        Fills ``report.clusters``, ``report.clustered_documents`` and the near-duplicate counts.
    """
    parent = np.arange(n_docs, dtype=np.int64)
    cliques = params.near and params.clustering == "cliques"
    if params.exact:
        _feed(con, parent, "SELECT doc, gid FROM exact_members WHERE doc <> gid")
    elif cliques:  # exact copies with words have identical signatures: near copies of each other
        _feed(con, parent, "SELECT e.doc, e.gid FROM exact_members e JOIN sig s USING (doc) WHERE e.doc <> e.gid "
                           "AND s.n_words > 0")
    band_paths = [tk["bands"] for tk in tasks]
    if cliques:
        rep_doc, rep_label = _verified_cliques(con, report, params, band_paths, [tk["sig"] for tk in tasks],
                                               offsets, n_docs)
        moved = rep_label != rep_doc
        union_edges(parent, rep_doc[moved], rep_label[moved])
        compress(parent)
    elif params.near:
        con.execute(f"""CREATE TEMP VIEW band_rows AS SELECT b.band, b.bhash, p.doff + b.row AS doc
            FROM read_parquet({_qlist(band_paths)}, filename=true) b JOIN parts p ON b.filename = p.band_path""")
        report.near_buckets = con.execute("""SELECT count(*) FROM
            (SELECT 1 FROM band_rows GROUP BY band, bhash HAVING count(*) > 1)""").fetchall()[0][0]
        con.execute("""CREATE TEMP TABLE near_edges AS SELECT DISTINCT doc, rep FROM (
            SELECT doc, min(doc) OVER (PARTITION BY band, bhash) AS rep,
                   count(*) OVER (PARTITION BY band, bhash) AS k FROM band_rows) WHERE k > 1 AND doc <> rep""")
        report.near_edges = _feed(con, parent, "SELECT doc, rep FROM near_edges")
    sizes = np.bincount(parent, minlength=n_docs)
    member = np.nonzero(sizes[parent] > 1)[0]
    report.clusters = int(np.count_nonzero(sizes > 1))
    report.clustered_documents = int(len(member))
    return member, parent[member]


def run_dedup(corpus_dir: str, *, threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 1,
              bands: int | None = None, rows: int | None = None, exact: bool = True, near: bool = True,
              workers: int = 2, progress: bool = True, scheme: str = minhash.DEFAULT_SCHEME,
              memory_limit: str | None = None, license_allow: tuple[str, ...] | list[str] | None = None,
              set_default: bool = True, dec=None, clustering: str = "cliques", executor: str = "local",
              ray_address: str | None = None) -> DedupReport:
    """Find exact and near duplicates across all subsets and commit the ``dedup`` attributes (module docstring).

    Stand-alone (``xgen dedup``, ``set_default=True``) it also records these parameters with ``license_allow``
    as the corpus's default dedup decisions (``default_decisions.dedup``) in the same atomic registry write,
    and computes the ``license`` attributes of ``license_allow`` if needed. The recipe flow passes
    ``set_default=False`` and its :class:`xgen_data.mixing.decisions.Decisions` as ``dec``; the report's removals,
    largest clusters and license conflicts describe ``dec`` (default: the corpus defaults after the run).

    Args:
        corpus_dir: a corpus made by ``xgen ingest``.
        threshold: Jaccard threshold the LSH banding is tuned for (SPEC §2: 0.7).
        num_perm: MinHash permutations (SPEC §2: 256). ngram: words per shingle (SPEC §2: 5).
        seed: permutation seed (datasketch's ``seed``).
        bands, rows: LSH banding; default from ``threshold`` (see :func:`resolve_params`).
        exact, near: run exact (content hash) and/or near (MinHash LSH) detection. With both off every
            document is written as kept (old decisions are replaced).
        workers: signature worker processes and DuckDB threads.
        progress: show a progress bar for the signature phase.
        scheme: datasketch permutation scheme (``affine32`` = datasketch 2.0's default).
        memory_limit: DuckDB's memory limit (default :func:`xgen_data.stats.sql.memory_limit`); beyond it DuckDB
            spills to ``work/dedup/duckdb.tmp``.
        license_allow: the license filter's allow-list, which makes the top tiers of the keep policy
            (:func:`license_rank`); default the shipped list. Pass the recipe's ``allow_list()``.
        clustering: ``cliques`` (verified candidates, every two members of a cluster within ``threshold``:
            :func:`clique_clusters`) or ``components`` (StarCoder's connected components, unverified).
        executor: where the signature phase runs: ``"local"`` (``workers`` processes) or ``"ray"`` (Ray tasks
            on a local Ray of ``workers`` CPUs, or the cluster at ``ray_address``; the corpus must be on a
            filesystem every worker sees). The attribute files are the same bytes on both.
    Returns:
        A :class:`DedupReport`.
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part. ValueError: a bad
        parameter (see :func:`resolve_params`) or ``workers < 1``.
    """
    import duckdb

    from xgen_data.attributes import filters
    from xgen_data.mixing import decisions

    t_start = time.time()
    params = resolve_params(threshold, num_perm, ngram, seed, bands, rows, scheme, exact, near, clustering)
    if isinstance(license_allow, str):
        raise InputError("license_allow must be a list of SPDX identifiers, not a string")
    allow = _default_allow() if license_allow is None else tuple(license_allow)
    if not _is_int(workers) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not os.path.isdir(corpus_dir):
        raise CorpusError(f"{corpus_dir}: no such corpus directory")
    executors.check_executor(executor, ray_address)
    corpus = Corpus(corpus_dir)
    attr_key = {k: getattr(params, k) for k in RECIPE_KEYS}
    recorded = recorded_params(license_allow=allow, **attr_key)

    def update(meta: dict) -> None:
        if set_default:
            meta.setdefault("default_decisions", {})["dedup"] = recorded

    with corpus.lock(), contextlib.ExitStack() as stack:
        corpus.remove_unregistered()
        parts = corpus.parts()
        work = os.path.join(corpus.root, "work", "dedup")
        tasks = [_task(p, work, params) for p in parts]
        # workers start while this process sets up
        pool = _start_pool(len(_tasks_left(tasks)), workers, executor, ray_address)
        if pool is not None:
            stack.callback(pool.shutdown)
        corpus.verify_parts(parts)
        fingerprint = corpus.parts_fingerprint()
        filters.compute_license_attributes(corpus, allow, verify=False)  # the keep rule's tiers
        report = DedupReport(corpus=corpus.root, params={**params.__dict__, "lsh_threshold": params.lsh_threshold,
                                                         "license_allow": list(allow)})
        phase: dict[str, float] = {}

        # -- numbering: document d of part k is offsets[k] + row ------------------------------------------
        offsets = doc_offsets(corpus)
        counts = np.diff(offsets).tolist()
        n_docs = int(offsets[-1])
        report.documents = n_docs
        for p, c in zip(parts, counts):
            report.documents_per_subset[p.subset] = report.documents_per_subset.get(p.subset, 0) + c
        if not parts:
            report.seconds = time.time() - t_start
            corpus.commit_attributes("dedup", attr_key, corpus.new_generation("dedup", attr_key), fingerprint, update)
            return report

        # -- phase 1: signatures ---------------------------------------------------------------------------
        t = time.time()
        stats = _run_tasks(tasks, workers, progress, pool)
        if pool is not None:
            pool.shutdown()  # the workers' memory goes before the main phases
        report.signature_parts_reused = sum(s["reused"] for s in stats)
        report.signature_cpu_seconds = sum(s["cpu_seconds"] for s in stats)
        phase["signatures"] = time.time() - t

        # -- phase 2: DuckDB over the work files -------------------------------------------------------------
        t = time.time()
        tmp_dir = os.path.join(work, "duckdb.tmp")
        os.makedirs(tmp_dir, exist_ok=True)
        from xgen_data.stats import query_guard, sql

        con = duckdb.connect(config={**sql.duckdb_config(tmp_dir, memory_limit), "threads": workers,
                                     "preserve_insertion_order": False})
        try:
            with query_guard.guard(con, spill_folder=tmp_dir, spill_cap=sql.spill_cap(tmp_dir),
                                   what="dedup's DuckDB phase"):  # Ctrl-C and the spill cap stop it
                con.register("_parts", pa.table({
                    "pidx": pa.array(range(len(parts)), pa.int32()),
                    "subset": [p.subset for p in parts], "name": [p.name for p in parts],
                    "docs_path": [p.path for p in parts], "sig_path": [tk["sig"] for tk in tasks],
                    "band_path": [tk["bands"] for tk in tasks], "doff": pa.array(offsets[:-1], pa.int64())}))
                con.execute("CREATE TEMP TABLE parts AS SELECT * FROM _parts")
                con.execute(f"""CREATE TEMP VIEW sig AS SELECT p.doff + s.row AS doc, s.chash, s.n_words
                    FROM read_parquet({_qlist([tk['sig'] for tk in tasks])}, filename=true) s
                    JOIN parts p ON s.filename = p.sig_path""")
                con.execute(f"""CREATE TEMP VIEW docs AS SELECT p.doff + d.file_row_number AS doc, p.subset, d.id,
                        d.license, d.source, d.path
                    FROM read_parquet({_qlist([p.path for p in parts])}, filename=true, file_row_number=true) d
                    JOIN parts p ON d.filename = p.docs_path""")
                # exact groups (always counted: the license-conflict report needs them)
                con.execute("""CREATE TEMP TABLE exact_members AS SELECT doc, chash, min(doc) OVER w AS gid,
                        count(*) OVER w AS gsize FROM sig WINDOW w AS (PARTITION BY chash) QUALIFY gsize > 1""")
                report.exact_groups, report.exact_group_documents = con.execute(
                    "SELECT count(DISTINCT gid), count(*) FROM exact_members").fetchall()[0]
                if params.near:
                    report.no_word_documents = con.execute(
                        "SELECT count(*) FROM sig WHERE n_words = 0").fetchall()[0][0]
                phase["exact"] = time.time() - t

                # -- union-find over exact and near edges ------------------------------------------------------
                t = time.time()
                member, cluster = _clusters(con, report, params, tasks, offsets, n_docs)
                con.register("_clustered", pa.table({"doc": pa.array(member, pa.int64()),
                                                     "cluster": pa.array(cluster, pa.int64())}))
                del member, cluster
                phase["clusters"] = time.time() - t

                # -- attributes per part: cluster, exact group, content hash (no recipe threshold involved) ------
                t = time.time()
                gen = corpus.new_generation("dedup", attr_key)
                for i, p in enumerate(parts):
                    tbl = con.sql(f"""SELECT d.id, c.cluster AS dup_cluster, e.gid AS exact_group, s.chash
                        FROM read_parquet({_q(p.path)}, file_row_number=true) d
                        LEFT JOIN _clustered c ON c.doc = {int(offsets[i])} + d.file_row_number
                        LEFT JOIN exact_members e ON e.doc = {int(offsets[i])} + d.file_row_number
                        LEFT JOIN read_parquet({_q(tasks[i]['sig'])}) s ON s.row = d.file_row_number
                        ORDER BY d.file_row_number""").to_arrow_table().cast(ATTR_SCHEMA)
                    with fsutil.atomic_path(corpus.attribute_path(gen, p)) as tmp:
                        pq.write_table(tbl, tmp, compression="zstd")
                    if i == 0:
                        fsutil.crash_point("dedup.part_written")
                phase["write"] = time.time() - t
        finally:
            con.close()
        corpus.commit_attributes("dedup", attr_key, gen, fingerprint, update)
        t = time.time()
        decision_report(report, corpus_dir, decisions.from_defaults(corpus) if dec is None else dec)
        phase["report"] = time.time() - t
        report.seconds_by_phase = phase
        report.seconds = time.time() - t_start
    return report


def decision_report(report: DedupReport, corpus_dir: str, dec) -> DedupReport:
    """Fill ``report``'s removals, largest clusters and license conflicts from the decisions ``dec`` (derived by
    :mod:`xgen_data.mixing.decisions`); writes ``reports/license_conflicts.parquet`` (a snapshot of the
    ``license_conflicts`` view for ``dec``). Counts every dedup removal, also of documents the filters drop."""
    from xgen_data.stats import sql

    con = sql.connect(corpus_dir, dec=dec, quiet=True)
    con.execute("""CREATE TEMP TABLE res AS SELECT dup_cluster AS cluster, subset, id, source, license,
            dup_reason AS reason, part, row FROM documents WHERE dup_cluster IS NOT NULL""")
    report.removed_by_reason, report.removed_by_subset = {}, {}
    for reason, n in con.execute("SELECT reason, count(*) FROM res WHERE reason IS NOT NULL GROUP BY 1").fetchall():
        report.removed_by_reason[reason] = n
    report.removed = sum(report.removed_by_reason.values())
    for subset, reason, n in con.execute("""SELECT subset, reason, count(*) FROM res
            WHERE reason IS NOT NULL GROUP BY ALL ORDER BY ALL""").fetchall():
        report.removed_by_subset.setdefault(subset, {})[reason] = n
    report.removed_by_source = [tuple(r) for r in con.execute(f"""SELECT subset, source,
            count(*) FILTER (reason = '{REASON_EXACT}') AS exact, count(*) FILTER (reason = '{REASON_NEAR}') AS near
        FROM res WHERE reason IS NOT NULL GROUP BY ALL ORDER BY exact + near DESC, subset, source""").fetchall()]
    rows_ = con.execute(f"""WITH top AS (SELECT cluster, count(*) AS size FROM res GROUP BY cluster
                ORDER BY size DESC, cluster LIMIT 10),
            subs AS (SELECT cluster, string_agg(subset || ':' || n, ', ' ORDER BY n DESC, subset) AS s FROM
                (SELECT cluster, subset, count(*) AS n FROM res JOIN top USING (cluster) GROUP BY ALL)
                GROUP BY cluster),
            srcs AS (SELECT cluster, string_agg(source || ':' || n, ', ' ORDER BY n DESC, source) AS s FROM
                (SELECT cluster, coalesce(source, '?') AS source, count(*) AS n,
                        row_number() OVER (PARTITION BY cluster ORDER BY count(*) DESC, coalesce(source, '?')) AS rk
                 FROM res JOIN top USING (cluster) GROUP BY cluster, source) WHERE rk <= 3 GROUP BY cluster)
        SELECT t.cluster, t.size, k.subset, k.id, k.license,
            (SELECT count(*) FROM res r WHERE r.cluster = t.cluster AND r.reason = '{REASON_EXACT}'),
            (SELECT count(*) FROM res r WHERE r.cluster = t.cluster AND r.reason = '{REASON_NEAR}'),
            subs.s, srcs.s
        FROM top t JOIN res k ON k.cluster = t.cluster AND k.reason IS NULL JOIN subs ON subs.cluster = t.cluster
        JOIN srcs ON srcs.cluster = t.cluster ORDER BY t.size DESC, t.cluster""").fetchall()
    report.largest_clusters = [ClusterInfo(*r) for r in rows_]
    conflicts = con.sql("SELECT * FROM license_conflicts").to_arrow_table().cast(CONFLICT_SCHEMA)
    corpus = Corpus(corpus_dir)
    report.license_conflicts_path = os.path.join(corpus.root, "reports", "license_conflicts.parquet")
    with fsutil.atomic_path(report.license_conflicts_path) as tmp:
        pq.write_table(conflicts, tmp, compression="zstd")
    report.license_conflict_documents = conflicts.num_rows
    report.license_conflict_groups = len(set(conflicts.column("group_id").to_pylist()))
    con.close()
    return report
