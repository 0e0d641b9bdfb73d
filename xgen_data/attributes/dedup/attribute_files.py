"""The last dedup phase, one file per part: ``id, dup_cluster, exact_group, chash`` in the part's row order."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from xgen_data.attributes.dedup.params import ATTR_SCHEMA, sql_quote
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus


def write_attribute_files(con, corpus: Corpus, gen: str, parts: list, sig_paths: list[str],
                          offsets: np.ndarray) -> None:
    """Write the ``dedup`` attribute file of every part into generation ``gen`` (not yet committed).

    ``con`` holds the run's ``_clustered`` (``doc, cluster``) and ``exact_members`` (``doc, gid``) tables;
    document ``row`` of part ``k`` is ``offsets[k] + row``; ``sig_paths[k]`` is part ``k``'s content hashes.
    Each file holds one row per document of its part, in the part's order (:data:`ATTR_SCHEMA`), written
    atomically (crash point ``dedup.part_written`` after the first).
    """
    for i, p in enumerate(parts):
        tbl = con.sql(f"""SELECT d.id, c.cluster AS dup_cluster, e.gid AS exact_group, s.chash
            FROM read_parquet({sql_quote(p.path)}, file_row_number=true) d
            LEFT JOIN _clustered c ON c.doc = {int(offsets[i])} + d.file_row_number
            LEFT JOIN exact_members e ON e.doc = {int(offsets[i])} + d.file_row_number
            LEFT JOIN read_parquet({sql_quote(sig_paths[i])}) s ON s.row = d.file_row_number
            ORDER BY d.file_row_number""").to_arrow_table().cast(ATTR_SCHEMA)
        with fsutil.atomic_path(corpus.attribute_path(gen, p)) as tmp:
            pq.write_table(tbl, tmp, compression="zstd")
        if i == 0:
            fsutil.crash_point("dedup.part_written")
