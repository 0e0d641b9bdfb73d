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
    recipe by SQL (:mod:`xgen_data.query`). Per cluster: a copy that the recipe's filters keep before one
    they drop, so a cluster's text is never lost to the length or license filter; then a copy in a subset the
    recipe packs; then the document with the
    most permissive license (:func:`xgen_data.attributes.licenses.license_rank`: public domain and
    permissive licenses on the license filter's allow-list first, then other permissive, weak copyleft,
    copyleft, other, unknown), then the smallest ``id`` (then the smallest subset name). Every other member is dropped with ``dup_of`` = the kept
    copy and ``drop_reason`` = ``exact_duplicate`` when its content hash equals the kept copy's, else
    ``near_duplicate``. (This is the same as exact dedup first, keeping the best copy of each exact group,
    then near dedup among the survivors, keeping the best of each near cluster: the policy is a total order.)

Outputs
    * ``attributes/dedup/<params-hash>/<generation>/<subset>/<part>.parquet`` for every docs part
      (:data:`.params.ATTR_SCHEMA`, one generation committed atomically): ``id``, ``dup_cluster`` (int64, the smallest
      global document number in the cluster; null for documents in no cluster), ``exact_group`` (int64, the
      smallest global document number with the same content hash; null when unique), ``chash``. Global
      document numbers count documents in ``Corpus.parts()`` order. The ``documents`` view derives
      ``dup_reason``, ``dup_of``, ``dup_of_subset``, ``kept`` and ``drop_reason`` per recipe.
    * ``reports/license_conflicts.parquet``: a snapshot of the ``license_conflicts`` view for the decisions
      of the run (one row per document of each exact-duplicate group whose members carry different license
      labels; raw strings; null counts as a label).
    * ``work/dedup/``: per-part content hashes (``sig/*.parquet``), signature matrices (``sig/*.sig.npy``)
      and band-major band hashes (``bands/``), their SHA-256s (``sig/*.parquet.sha256.json``, written last),
      plus the later phases' files (``exact.npy``, ``pairs/``, ``cluster.npy``, …); safe to delete. Signatures are reused when the docs part, ``num_perm``,
      ``seed``, ``ngram`` and ``scheme`` are unchanged and every file matches its SHA-256 (only the banding
      is redone for a new threshold; a damaged file is recomputed).

How it scales
    Every phase is a step on the contract of :mod:`xgen_data.execute.contract`, run in order on one executor
    (local processes or Ray); items are independent, so any order, grouping or executor gives the same bytes.
    Signatures are computed per part (each item holds one batch of documents and the part's band hashes);
    exact groups per content-hash shard; LSH candidates per group of bands, band by band in NumPy (one band of
    the corpus in memory, :func:`.bands.bucket_pairs`); candidates verified per shard of connected components
    on signature rows read through memory maps (:class:`.cluster.SigStore`); clusters by a union-find over one
    int64 per document in that step's commit; attribute files per part. The driver holds O(documents) small
    integers, never all signatures or text.

Modules, one per phase: :mod:`.params` (parameters, the attribute set's key, schemas, report),
:mod:`.signatures` (per part: content hashes, MinHash signatures, band hashes), :mod:`.exact` (exact groups,
per hash shard), :mod:`.bands` (LSH candidate pairs, per group of bands), :mod:`.cluster` (verify per pair
shard, then the union-find), :mod:`.attribute_files` (one attribute file per part) and :mod:`.run` (the
steps in order on one executor; the last commits with one atomic registry write).
"""
