"""``xgen card``: a Hugging Face dataset card (``README.md``), one self-contained ``index.html`` and, with
``--ai-act``, the draft public summary of training content (EU AI Act Art. 53(1)(d)) of a shards folder.

Every number comes from a :class:`~xgen_data.interop.facts.Fact` whose query (or manifest field) the
documents print next to it; ``card.json`` holds the same facts as data, and ``recipe.toml`` the recipe the
queries' decisions use. Sections follow "Datasheets for Datasets" (Gebru et al., 2021): motivation,
composition, collection, preprocessing, uses, distribution, maintenance. What xgen does not know (who
made the data set and why, how it was collected) is marked for the provider to fill in, never invented.
"""
from __future__ import annotations

import json
import os
import re
import tempfile

from xgen_data.interop import ai_act, card_html
from xgen_data.interop.facts import Fact, gather, recipe_bytes
from xgen_data.interop.files import write_bytes
from xgen_data.interop.outdir import new_folder
from xgen_data.interop.source import Dataset, check_shards
from xgen_data.store import fsutil

PROVIDER = "**[to be completed by the provider]**"
CARD_SHA256 = "card_sha256"
# Hugging Face's size_categories values (number of examples; here, packed sequences)
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
                   (1_000_000_000_000, "100B<n<1T"))
_ISO_639 = re.compile(r"^[a-z]{2,3}$")


def size_category(n: int) -> str:
    """Hugging Face's ``size_categories`` value for ``n`` examples."""
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T"


def _col(fact: Fact, name: str) -> list:
    i = fact.columns.index(name)
    return [r[i] for r in fact.rows]


def metadata(facts: dict[str, Fact], manifest: dict) -> dict:
    """The card's YAML metadata: license, language, size_categories, task_categories, pretty_name, tags.

    ``license`` is the one SPDX id of every kept document when they share one, else ``other`` (the table of
    licenses follows in the card); ``language`` lists the ISO 639 codes among the kept documents' languages.
    """
    sequences = sum(_col(facts["packed"], "sequences"))
    meta = {"pretty_name": f"xgen shards of recipe {manifest.get('recipe')}", "task_categories": ["text-generation"],
            "size_categories": [size_category(sequences)], "tags": ["xgen", "pretraining", "tokenized"]}
    licenses = _col(facts["kept_licenses"], "license") if "kept_licenses" in facts else []
    meta["license"] = licenses[0].lower() if len(licenses) == 1 and " " not in licenses[0] else "other"
    if "languages" in facts:
        langs = [lang for lang, code in zip(_col(facts["languages"], "language"), _col(facts["languages"], "is_code"))
                 if not code and _ISO_639.match(str(lang))]
        if langs:
            meta["language"] = sorted(langs)
    return meta


def _yaml(meta: dict, configs: list[dict] | None) -> str:
    """The card's YAML header (json.dumps quotes every scalar, which YAML reads as the same string)."""
    lines = ["---"]
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    if configs:
        lines.append("configs:")
        for c in configs:
            lines += [f"- config_name: {json.dumps(c['config_name'])}", "  data_files:"]
            lines += [f"  - split: {s}\n    path: {json.dumps(p)}" for s, p in c["data_files"]]
    return "\n".join(lines + ["---", ""])


def hf_configs(sets: list[Dataset]) -> list[dict]:
    """The ``configs`` of an hf export: one per (stage, sub-stage), its splits' Parquet files."""
    out: dict[str, dict] = {}
    for ds in sets:
        c = out.setdefault(f"{ds.stage}-{ds.substage}", {"config_name": f"{ds.stage}-{ds.substage}", "data_files": []})
        c["data_files"].append((ds.split, ds.name + ".parquet"))
    return list(out.values())


def hf_configs_yaml(sets: list[Dataset]) -> str:
    """A minimal README.md header naming an hf export's configs (no card text)."""
    return _yaml({}, hf_configs(sets))


def _cell(v) -> str:
    if isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v) if v is not None else ""
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def fact_markdown(fact: Fact) -> str:
    """A fact as a Markdown table followed by its query (or manifest field)."""
    head = f"**{fact.title}**\n\n"
    if fact.rows:
        table = "| " + " | ".join(fact.columns) + " |\n|" + "---|" * len(fact.columns) + "\n"
        table += "".join("| " + " | ".join(_cell(v) for v in r) + " |\n" for r in fact.rows)
    else:
        table = "(no rows)\n"
    src = (f"\nQuery (`xgen sql`):\n\n```sql\n{fact.source}\n```\n" if fact.kind == "sql"
           else f"\nSource: `{fact.source}`\n")
    return head + table + src + "\n"


def _section(facts: dict[str, Fact], keys: tuple[str, ...]) -> str:
    text = "".join(fact_markdown(facts[k]) for k in keys if k in facts)
    missing = [k for k in keys if k not in facts]
    if missing:
        text += f"Not shown without the corpus (`xgen card --corpus`): {', '.join(missing)}.\n\n"
    return text


def markdown(facts: dict[str, Fact], manifest: dict, configs: list[dict] | None = None) -> str:
    """The dataset card: YAML metadata, then the Datasheets sections filled from ``facts``."""
    m = manifest
    recipe_cmd = ("xgen sql --corpus CORPUS --recipe recipe.toml --shards SHARDS \"<query>\"")
    parts = [
        _yaml(metadata(facts, m), configs),
        f"# {metadata(facts, m)['pretty_name']}\n\n",
        f"Tokenized, packed pre-training sequences built by xgen (`xgen mix build`) with recipe `{m.get('recipe')}` "
        f"(SHA-256 `{m.get('recipe_sha256')}`), seed {m.get('seed')}; tokenizer `{m.get('tokenizer', 'xgen')}`, "
        f"vocabulary {m['vocab_size']:,} (EOS {m['eos_id']}), tokens stored as {m['dtype']}. Each table below "
        f"names the query it came from; re-run one with `{recipe_cmd}`.\n\n",
        "## Motivation\n\n",
        f"Pre-training data for a LLaMA-style language model following the XGen-7B recipe. Who created the data "
        f"set, for whom, and who funded it: {PROVIDER}\n\n",
        "## Composition\n\n",
        _section(facts, ("packed", "packed_subsets", "plan", "plan_vs_packed", "packed_sources", "sources",
                         "languages", "lengths")),
        "## Collection process\n\n",
        f"xgen ingests the files it is given and records each document's source, license label and path; how "
        f"and when those files were collected, and with whose consent: {PROVIDER}\n\n",
        "## Preprocessing\n\n",
        f"Filters, license policies and deduplication are those of the recipe (`recipe.toml`); documents shorter "
        f"than the recipe's `min_tokens` are dropped; documents that overlap the evaluation sets named by the "
        f"recipe's `decontaminate` (none named: none dropped) are dropped as `eval_overlap`. {PROVIDER} for any "
        f"processing done before xgen.\n\n",
        _section(facts, ("funnel", "licenses", "duplicates", "duplicate_examples", "decontamination")),
        "## Uses\n\n",
        "Pre-training of causal language models. The sequences are exported for other trainers with `xgen export "
        f"shards` (Megatron-LM, MosaicML streaming, litdata, Hugging Face datasets). Uses to avoid: {PROVIDER}\n\n",
        "## Distribution\n\n",
        "Each document keeps its own license; the licenses of the kept documents:\n\n",
        _section(facts, ("kept_licenses",)),
        "## Maintenance\n\n",
        "The shards are checked against these SHA-256 sums by every xgen reader (`xgen verify`):\n\n",
        _section(facts, ("checksums",)),
        f"Maintainer and contact: {PROVIDER}\n\n",
        "### Recipe\n\nSource: `manifest.json: recipe_toml`\n\n```toml\n",
        m.get("recipe_toml", "").rstrip() + "\n```\n",
    ]
    return "".join(parts)


def card_files(folder: str) -> set[str] | None:
    """The files an earlier ``xgen card`` wrote in ``folder`` (``card.json`` and the files it lists), or None when
    ``folder`` holds no readable ``card.json`` of format ``xgen-card`` matching its ``card_sha256``: only then is
    the folder the card's own, to be replaced by a new card."""
    try:
        with open(os.path.join(folder, "card.json"), encoding="utf-8") as fh:
            card = json.load(fh)
    except (OSError, ValueError):
        return None
    if (not isinstance(card, dict) or card.get("format") != "xgen-card" or not isinstance(card.get("files"), dict)
            or card.get(CARD_SHA256) != fsutil.self_checksum(card, CARD_SHA256)):
        return None
    return {"card.json", *card["files"]}


def write_card(shard_dir: str, out_dir: str, corpus_dir: str | None = None, ai_act_summary: bool = False) -> dict:
    """Write the card folder ``out_dir``: README.md, index.html, card.json, recipe.toml (and, with
    ``ai_act_summary``, ai_act_summary.md); built in a temporary sibling and renamed into place.

    Returns:
        ``card.json``'s content: the facts, the files' sha256 and the shards manifest's checksum.

    Raises:
        DamagedDataError: a shard or index file does not match the manifest (nothing is written).
        RefusedError: ``out_dir`` is a file or a non-empty folder other than an earlier card (:func:`card_files`),
            which is replaced whole.
    """
    manifest = check_shards(shard_dir)
    with new_folder(out_dir, "data card", "card", inputs=[shard_dir] + ([corpus_dir] if corpus_dir else []),
                    listed_files=card_files) as tmp:
        files = dict([write_bytes(tmp, "recipe.toml", recipe_bytes(manifest))])
        facts = gather(shard_dir, manifest, corpus_dir, os.path.join(tmp, "recipe.toml"))
        docs = {"README.md": markdown(facts, manifest), "index.html": card_html.page(facts, manifest)}
        if ai_act_summary:
            docs["ai_act_summary.md"] = ai_act.summary(facts, manifest)
        for name, text in docs.items():
            files.update([write_bytes(tmp, name, text.encode("utf-8"))])
        card = {"format": "xgen-card", "format_version": 1, "shards_manifest_sha256": manifest.get("manifest_sha256"),
                "corpus": corpus_dir is not None, "facts": [f.to_json() for f in facts.values()],
                "files": dict(sorted(files.items()))}
        card[CARD_SHA256] = fsutil.self_checksum(card, CARD_SHA256)
        fsutil.write_json(os.path.join(tmp, "card.json"), card)
    return card


def hf_readme(shard_dir: str, manifest: dict, sets: list[Dataset], corpus_dir: str | None) -> str:
    """The README.md of an hf export: the data card with the export's ``configs`` in its YAML header.

    The corpus queries need a recipe file: it is written to a temporary folder (the hf export does not keep it).
    """
    with tempfile.TemporaryDirectory() as tmp:
        write_bytes(tmp, "recipe.toml", recipe_bytes(manifest))
        facts = gather(shard_dir, manifest, corpus_dir, os.path.join(tmp, "recipe.toml"))
        return markdown(facts, manifest, hf_configs(sets))
