"""Dedup phase 5, one attribute file per part: ``id, dup_cluster, exact_group, chash`` in the part's row order.

A :class:`~xgen_data.attributes.part_step.PartAttributeStep` (one work item per part, files written into the
uncommitted generation, one atomic registry write): :func:`attribute_file` reads the part's ids, its content
hashes (``sig`` work file) and its rows of the committed ``exact.npy`` and ``cluster.npy`` (memory maps: a
part's slice only).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.attributes.dedup.params import ATTR_SCHEMA
from xgen_data.errors import DamagedDataError
from xgen_data.execute.contract import ItemResult
from xgen_data.store import fsutil


def _nullable(values: np.ndarray) -> pa.Array:
    """int64 with -1 as null."""
    return pa.array(values, pa.int64(), mask=values < 0)


def attribute_file(part_path: str, out_path: str, crash_point: str | None, exact_path: str, cluster_path: str,
                   sig_path: str, offset: int) -> ItemResult:
    """The ``dedup`` attribute file of one part (:data:`ATTR_SCHEMA`), written atomically to ``out_path``.

    Args:
        exact_path, cluster_path: int64 per document, -1 for none (the exact and cluster phases' results).
        sig_path: the part's content hashes (``row, chash``); offset: the global number of the part's row 0.
    Returns:
        ``documents`` = the part's rows; ``bytes`` = the attribute table's bytes.
    Raises:
        DamagedDataError: the work files do not match the part.
    """
    t0 = time.time()
    ids = pq.read_table(part_path, columns=["id"]).column("id")
    n = len(ids)
    sig = pq.read_table(sig_path, columns=["row", "chash"])
    chash = sig.column("chash").take(pa.array(np.argsort(sig.column("row").to_numpy(), kind="stable")))
    if len(chash) != n:
        raise DamagedDataError(f"{sig_path}: {len(chash)} content hashes for {n} documents of {part_path}; "
                               "delete work/dedup and re-run")
    rows = slice(offset, offset + n)
    exact = np.asarray(np.load(exact_path, mmap_mode="r")[rows])
    cluster = np.asarray(np.load(cluster_path, mmap_mode="r")[rows])
    table = pa.table([ids, _nullable(cluster), _nullable(exact), chash], schema=ATTR_SCHEMA)
    with fsutil.atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    if crash_point:
        fsutil.crash_point(crash_point)
    return ItemResult(out_path, documents=n, bytes=int(table.nbytes), seconds=time.time() - t0)
