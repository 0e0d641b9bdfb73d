"""``xgen export shards``: a checked shards folder as datasets other trainers read, with mixture weights.

One dataset per (stage, sub-stage, split) (:mod:`xgen_data.interop.source`), written by the target's module
(:mod:`.megatron`, :mod:`.mds`, :mod:`.litdata`, :mod:`.hf`), and ``xgen_shards_export.json``: what was exported
(the shards manifest's checksum, recipe and seed), every file's sha256, and per stage the blend of its
sub-stages' train datasets in the target's own units:

=========  ============  ==================================================================================
target     unit          where the weights go
=========  ============  ==================================================================================
megatron   tokens        ``--data-path w1 prefix1 w2 prefix2 …`` (``<stage>.data-path.txt``); GPTDataset
                         samples are ``seq_length`` tokens each, so token shares are sample shares
mds        samples       ``streaming.Stream(local=…, proportion=p)``; a sample is one row of ``seq_len``
litdata    samples       ``CombinedStreamingDataset(datasets, weights=…)`` with ``TokensLoader(block_size=seq_len)``
hf         samples       ``datasets.interleave_datasets(…, probabilities=…)``; a sample is one row
=========  ============  ==================================================================================

Weighted this way, the blend's token shares per subset are those of the stage that was packed
(:func:`blend_token_shares`). The sub-stages of a stage are xgen's sequence-length curriculum: train on
them in order to keep it, or blend them with these weights to keep only the proportions.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from xgen_data.errors import InputError
from xgen_data.interop import hf, litdata, mds, megatron
from xgen_data.interop.files import write_bytes
from xgen_data.interop.outdir import new_folder
from xgen_data.interop.source import Dataset, check_shards, datasets
from xgen_data.store import fsutil

EXPORT_MANIFEST = "xgen_shards_export.json"
EXPORT_FORMAT = "xgen-export"
EXPORT_SHA256 = "export_sha256"
TARGETS = ("megatron", "mds", "litdata", "hf")
UNITS = {"megatron": "tokens", "mds": "samples", "litdata": "samples", "hf": "samples"}


def _writer(target: str, eos_id: int, unit: str) -> Callable[[str, Dataset, str], dict]:
    if target == "megatron":
        return lambda src, ds, out: megatron.write_dataset(src, ds, out, eos_id, unit)
    return {"mds": mds.write_dataset, "litdata": litdata.write_dataset, "hf": hf.write_dataset}[target]


def blends(target: str, written: list[dict]) -> list[dict]:
    """Per stage, the weights of its train datasets in the target's unit (normalised to sum to 1).

    ``written``: one dict per dataset with ``stage, split, path, seq_len, samples, tokens``.
    """
    unit = UNITS[target]
    out = []
    for stage in dict.fromkeys(d["stage"] for d in written):
        parts = [d for d in written if d["stage"] == stage and d["split"] == "train"]
        amount = [d["tokens"] if unit == "tokens" else d["samples"] for d in parts]
        total = sum(amount)
        out.append({"stage": stage, "unit": unit, "epoch_size": total,
                    "weights": [{"path": d["path"], "weight": a / total, unit: a, "seq_len": d["seq_len"]}
                                for d, a in zip(parts, amount)]})
    return out


def blend_token_shares(export_manifest: dict, stage: str) -> dict[str, float]:
    """The share of each subset's tokens in a stage's blend: weights → tokens per dataset → subsets.

    A dataset's tokens are split over subsets as its ``tokens_per_subset`` (EOS excluded) are.
    """
    blend = next(b for b in export_manifest["blends"] if b["stage"] == stage)
    by_path = {d["path"]: d for d in export_manifest["datasets"]}
    shares: dict[str, float] = {}
    weighted = [(w["weight"] * (1 if blend["unit"] == "tokens" else w["seq_len"]), by_path[w["path"]])
                for w in blend["weights"]]
    norm = sum(t for t, _ in weighted)
    for t, d in weighted:
        subset_total = sum(d["tokens_per_subset"].values())
        for s, n in d["tokens_per_subset"].items():
            shares[s] = shares.get(s, 0.0) + t / norm * n / subset_total
    return dict(sorted(shares.items()))


def export_files(folder: str) -> set[str] | None:
    """The files an earlier ``xgen export shards`` wrote in ``folder`` (``xgen_shards_export.json`` and the files
    it lists), or None when ``folder`` holds no readable export manifest of format ``xgen-export`` matching its
    ``export_sha256``: only then is the folder the export's own, to be replaced whole by a new export."""
    try:
        man = fsutil.read_json(os.path.join(folder, EXPORT_MANIFEST))
    except (OSError, ValueError):
        return None
    if (not isinstance(man, dict) or man.get("format") != EXPORT_FORMAT or not isinstance(man.get("files"), dict)
            or man.get(EXPORT_SHA256) != fsutil.self_checksum(man, EXPORT_SHA256)):
        return None
    return {EXPORT_MANIFEST, *man["files"]}


def _data_path_lines(blend: dict) -> str:
    """Megatron's ``--data-path`` value for a blend: ``weight prefix`` pairs, prefixes relative to the export."""
    return " ".join(f"{w['weight']!r} {w['path']}" for w in blend["weights"]) + "\n"


def export_shards(shard_dir: str, out_dir: str, target: str, unit: str = "sequence",
                  readme: Callable[[dict, list[Dataset]], str] | None = None, reads: Sequence[str] = ()) -> dict:
    """Export the shards folder ``shard_dir`` to ``out_dir`` for ``target`` (one of :data:`TARGETS`).

    Every shard and index file is checked against the manifest first; then each dataset is streamed (memory
    holds one block of rows) into a temporary sibling of
    ``out_dir`` that is renamed into place (:func:`xgen_data.interop.outdir.new_folder`), replacing an earlier
    export there (:func:`export_files`) whole: a kill at any point leaves the old export or the new one. The
    same shards give the same bytes.

    Args:
        unit: Megatron only: ``sequence`` (one per packed row) or ``document`` (cut after each EOS).
        readme: for ``hf``: builds the README.md (the data card) from the shards manifest and datasets.
        reads: other folders the export reads (the corpus ``readme`` queries): like ``shard_dir``, ``out_dir``
            may not be one of them, inside one or contain one.

    Returns:
        the export manifest written to ``<out_dir>/xgen_shards_export.json``.

    Raises:
        DamagedDataError: a shard or index file does not match the manifest (nothing is written).
        RefusedError: ``out_dir`` is a file, a non-empty folder other than an earlier export, or an earlier
            export holding files its manifest does not list (names them), or is, is inside or contains
            ``shard_dir`` or one of ``reads``.
        InputError: an unknown target or unit.
    """
    if target not in TARGETS:
        raise InputError(f"unknown export target {target!r}; one of {', '.join(TARGETS)}")
    if unit not in megatron.UNITS or (unit != "sequence" and target != "megatron"):
        raise InputError(f"--unit {unit!r}: 'document' is for megatron only; one of {megatron.UNITS}")
    manifest = check_shards(shard_dir)
    sets = datasets(manifest)
    write = _writer(target, int(manifest["eos_id"]), unit)
    with new_folder(out_dir, "shards export", "export_shards", inputs=[shard_dir, *reads],
                    listed_files=export_files) as tmp:
        written, files = [], {}
        for ds in sets:
            r = write(shard_dir, ds, tmp)
            files.update(r.pop("files"))
            written.append({"stage": ds.stage, "substage": ds.substage, "split": ds.split, "seq_len": ds.seq_len,
                            **r, "tokens_per_subset": ds.tokens_per_subset()})
        plan = blends(target, written)
        if target == "megatron":
            for b in plan:
                files.update([write_bytes(tmp, f"{b['stage']}.data-path.txt", _data_path_lines(b).encode())])
        if target == "hf" and readme is not None:
            files.update([write_bytes(tmp, "README.md", readme(manifest, sets).encode("utf-8"))])
        out = {"format": EXPORT_FORMAT, "format_version": 1, "target": target,
               "unit": unit if target == "megatron" else "sequence",
               "shards": {"manifest_sha256": manifest.get("manifest_sha256"), "recipe": manifest.get("recipe"),
                          "recipe_sha256": manifest.get("recipe_sha256"), "seed": manifest.get("seed"),
                          "vocab_size": manifest["vocab_size"], "eos_id": manifest["eos_id"]},
               "datasets": written, "blends": plan, "files": dict(sorted(files.items()))}
        out[EXPORT_SHA256] = fsutil.self_checksum(out, EXPORT_SHA256)
        fsutil.write_json(os.path.join(tmp, EXPORT_MANIFEST), out)
    return out


def verify_export(out_dir: str) -> list[str]:
    """Check an export's manifest checksum and every file's sha256; return the problems (empty when none)."""
    path = os.path.join(out_dir, EXPORT_MANIFEST)
    manifest = fsutil.read_json(path)
    problems = []
    if manifest.get(EXPORT_SHA256) != fsutil.self_checksum(manifest, EXPORT_SHA256):
        problems.append(f"{path}: content does not match its {EXPORT_SHA256}")
    for rel, want in manifest.get("files", {}).items():
        full = os.path.join(out_dir, rel)
        if not os.path.isfile(full):
            problems.append(f"{full}: missing")
        elif fsutil.sha256_file(full) != want:
            problems.append(f"{full}: sha256 does not match {EXPORT_MANIFEST}")
    return problems
