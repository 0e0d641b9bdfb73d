"""Dedup parameters, the ``dedup`` attribute set's key, its schemas, and the run's report."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from xgen_data.attributes import minhash
from xgen_data.attributes.licenses import default_allow_list
from xgen_data.errors import InputError, unknown_key

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
#: How LSH candidates become clusters: ``cliques`` (default) verifies every candidate pair on the signatures'
#: estimated Jaccard and splits each verified component into cliques, so every two members of a cluster are
#: verified-similar (see :func:`clique_clusters`); ``components`` is StarCoder's plain connected components of
#: the unverified candidate graph (kept for comparison).
CLUSTERINGS = ("cliques", "components")
#: In a bucket, every member is paired with the first this-many members (by document number): all pairs for
#: buckets up to this size, a bounded number for huge template families.
BUCKET_PAIR_CAP = 64

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


def is_int(v) -> bool:
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
    if not is_int(num_perm) or not 2 <= num_perm <= 8192:
        raise InputError(f"num_perm must be an integer in [2, 8192], got {num_perm!r}")
    if not is_int(ngram) or ngram < 1:
        raise InputError(f"ngram must be an integer >= 1, got {ngram!r}")
    if not is_int(seed) or not 0 <= seed < 1 << 32:
        raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if scheme not in minhash.SCHEMES:
        raise InputError(f"scheme must be one of {', '.join(minhash.SCHEMES)}, got {scheme!r}")
    if clustering not in CLUSTERINGS:
        raise InputError(f"clustering must be one of {', '.join(CLUSTERINGS)}, got {clustering!r}")
    for name, v in (("exact", exact), ("near", near)):
        if not isinstance(v, bool):
            raise InputError(f"{name} must be true or false, got {v!r}")
    for name, v in (("bands", bands), ("rows", rows)):
        if v is not None and (not is_int(v) or v < 1):
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
    steps: list = field(default_factory=list)  # StepReport of each phase, in run order

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
        d["steps"] = [dataclasses.asdict(s) for s in self.steps]
        return d


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
    allow = tuple(default_allow_list()) if license_allow is None else tuple(license_allow)
    return {**params.__dict__, "license_allow": sorted(allow)}


def dedup_attr_params(dedup_params: dict) -> dict:
    """Attribute parameters of the ``dedup`` step: a dedup parameter dict without the keep rule's allow-list."""
    return {k: v for k, v in dedup_params.items() if k != "license_allow"}


def sql_quote(s: str) -> str:
    """``s`` as a DuckDB string literal."""
    return "'" + s.replace("'", "''") + "'"


def sql_list(paths: list[str]) -> str:
    """``paths`` as a DuckDB list literal of strings."""
    return "[" + ", ".join(sql_quote(p) for p in paths) + "]"
