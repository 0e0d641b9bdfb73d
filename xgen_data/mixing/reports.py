"""Reports of what a set of decisions drops, derived through the query layer (nothing but the
``license_conflicts`` snapshot is written): the filters' drops and dedup's removals, largest clusters and license
conflicts."""
from __future__ import annotations

import collections
import dataclasses
import os
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from xgen_data import query
from xgen_data.attributes.dedup.params import CONFLICT_SCHEMA, ClusterInfo, DedupReport
from xgen_data.query import REASON_EXACT, REASON_LICENSE, REASON_NEAR, REASON_SHORT
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus


@dataclass
class FilterReport:
    """Documents seen and dropped per ``(subset, reason)``."""

    n_docs: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    missing_license_subsets: tuple[str, ...] = ()  # license_subsets with no documents (a typo?)
    # (subset, license, policy's reason) -> documents
    dropped_licenses: collections.Counter = field(default_factory=collections.Counter)
    steps: list = field(default_factory=list)  # StepReport of each attribute step run now (xgen filter)

    def to_dict(self) -> dict:
        """A JSON-ready dict (``--format json``): drops as lists of rows, steps as dicts."""
        return {"n_docs": self.n_docs,
                "dropped": [{"subset": s, "drop_reason": r, "documents": n} for (s, r), n in sorted(self.dropped.items())],
                "dropped_licenses": [{"subset": s, "license": lic, "reason": why, "documents": n}
                                     for (s, lic, why), n in self.dropped_licenses.most_common()],
                "missing_license_subsets": list(self.missing_license_subsets),
                "steps": [dataclasses.asdict(x) for x in self.steps]}


def filter_report(corpus_dir: str, dec) -> FilterReport:
    """Documents and filter drops per ``(subset, reason)`` under decisions ``dec`` (derived, nothing written)."""
    con = query.connect(corpus_dir, dec, quiet=True)
    rep = FilterReport(n_docs=con.execute("SELECT count(*) FROM documents").fetchone()[0])
    for subset, reason, n in con.execute(f"""SELECT subset, drop_reason, count(*) FROM documents
            WHERE drop_reason IN ('{REASON_SHORT}', '{REASON_LICENSE}') GROUP BY ALL""").fetchall():
        rep.dropped[(subset, reason)] = n
    for subset, lic, why, n in con.execute(f"""SELECT subset, license, license_reason, count(*) FROM documents
            WHERE drop_reason = '{REASON_LICENSE}' GROUP BY ALL""").fetchall():
        rep.dropped_licenses[(subset, lic, why)] = n
    subsets = set(Corpus(corpus_dir).subsets())
    rep.missing_license_subsets = tuple(sorted(set(dec.filter["license_subsets"]) - subsets)) if dec.filter else ()
    return rep


def dedup_report(report: DedupReport, corpus_dir: str, dec) -> DedupReport:
    """Fill ``report``'s removals, largest clusters and license conflicts from the decisions ``dec`` (derived by
    :mod:`xgen_data.mixing.decisions`); writes ``reports/license_conflicts.parquet`` (a snapshot of the
    ``license_conflicts`` view for ``dec``). Counts every dedup removal, also of documents the filters drop."""
    con = query.connect(corpus_dir, dec, quiet=True)
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
