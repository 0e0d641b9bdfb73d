"""Draft of the public summary of training content (EU AI Act Art. 53(1)(d)) in the sections of the AI
Office's template (Explanatory Notice and Template, 24 July 2025): 1 general information, 2 list of data
sources, 3 data processing aspects.

xgen fills what its corpus and shards know (modality, size, languages, sources with their shares, the
processing it applied) and names the fact each answer came from; what only the provider can answer (who
they are, the model, how the data were obtained, opt-outs honoured, illegal content removed) is marked
:data:`PROVIDER`. The document says it is a draft for a person to complete.
"""
from __future__ import annotations

from xgen_data.interop.facts import Fact

PROVIDER = "**[PROVIDER: to complete]**"
# the template's ranges of training data size for text (tokens)
TEXT_SIZE_RANGES = ((1_000_000_000, "less than 1 billion tokens"),
                    (10_000_000_000_000, "1 billion to 10 trillion tokens"))


def size_range(tokens: int) -> str:
    """The template's size range for ``tokens`` text tokens."""
    for bound, name in TEXT_SIZE_RANGES:
        if tokens < bound:
            return name
    return "more than 10 trillion tokens"


def _cite(fact: Fact) -> str:
    return f"(fact `{fact.key}`: {'query in card.json / README.md' if fact.kind == 'sql' else fact.source})"


def _rows(fact: Fact, *cols: str) -> list[tuple]:
    idx = [fact.columns.index(c) for c in cols]
    return [tuple(r[i] for i in idx) for r in fact.rows]


def _general(facts: dict[str, Fact]) -> str:
    packed = facts["packed"]
    tokens = sum(t for (t,) in _rows(packed, "tokens"))
    langs = ", ".join(str(lang) for (lang,) in _rows(facts["languages"], "language")) if "languages" in facts \
        else f"{PROVIDER} (card made without the corpus)"
    return (
        "## 1. General information\n\n"
        f"### 1.1 Provider identification\n\nProvider name and contact details: {PROVIDER}\n"
        f"Authorised representative (if any): {PROVIDER}\n\n"
        f"### 1.2 Model identification\n\nVersioned model name(s): {PROVIDER}\n"
        f"Model dependencies (if the model is a modification or fine-tuning of another model): {PROVIDER}\n"
        f"Date of placement of the model on the Union market: {PROVIDER}\n\n"
        "### 1.3 Modalities, overall training data size and other characteristics\n\n"
        "Modality: text (natural language and source code, tokenized).\n"
        f"Training data size: {tokens:,} tokens packed, i.e. {size_range(tokens)} {_cite(packed)}. "
        f"Tokens actually trained on depend on the training run: {PROVIDER}\n"
        f"Types of content: {PROVIDER} (the sources below say where the documents came from)\n"
        f"Latest date of data acquisition or collection: {PROVIDER} (xgen does not record collection dates)\n"
        f"Linguistic characteristics (languages of the kept documents): {langs}"
        f"{' ' + _cite(facts['languages']) if 'languages' in facts else ''}\n\n")


def _sources(facts: dict[str, Fact]) -> str:
    fact = facts["packed_sources"]
    rows = _rows(fact, "source", "tokens")
    total = sum(t for _, t in rows) or 1
    table = "| source | packed tokens | share | kind (template section 2.x) |\n|---|---|---|---|\n" + "".join(
        f"| {s} | {t:,} | {t / total:.2%} | {PROVIDER} |\n" for s, t in rows)
    return (
        "## 2. List of data sources\n\n"
        f"Every source of the packed tokens, with its share {_cite(fact)}. xgen records the source name each "
        "document was ingested with, not how the source was obtained; the provider assigns each source to its "
        "kind in the template: 2.1 publicly available datasets, 2.2 private non-publicly available datasets "
        "obtained from third parties (licensed data, other private datasets), 2.3 data crawled and scraped from "
        "online sources (crawlers, period, main domain names), 2.4 user data, 2.5 synthetic data, 2.6 other "
        "sources.\n\n" + table + "\n"
        f"2.1 Publicly available datasets (names, links): {PROVIDER}\n"
        f"2.2 Private non-publicly available datasets obtained from third parties: {PROVIDER}\n"
        f"2.3 Data crawled and scraped from online sources: {PROVIDER} (xgen crawls nothing)\n"
        f"2.4 User data: {PROVIDER}\n2.5 Synthetic data: {PROVIDER}\n2.6 Other sources of data: {PROVIDER}\n\n")


def _processing(facts: dict[str, Fact]) -> str:
    lines = ["## 3. Data processing aspects\n\n",
             "### 3.1 Respect of reservation of rights from the text and data mining exception or limitation\n\n",
             "xgen does not read or honour machine-readable opt-outs (robots.txt, TDM reservation protocols, "
             "metadata): it processes the files it is given. The measures taken to respect reservations of rights "
             f"before the data reached xgen: {PROVIDER}\n\n",
             "What xgen applied: each document's license label is normalised to SPDX and checked against the "
             "recipe's license policy per subset; the decisions with their reasons are in the card"
             f"{' ' + _cite(facts['licenses']) if 'licenses' in facts else ''}.\n\n",
             "### 3.2 Removal of illegal content\n\n",
             f"xgen applies no filter for illegal content. Measures taken: {PROVIDER}\n\n",
             "### 3.3 Other information\n\n"]
    if "funnel" in facts:
        fun = ", ".join(f"{o}: {d:,} documents" for o, d in _rows(facts["funnel"], "outcome", "documents"))
        dup = facts["duplicates"].rows[0]
        decon = sum(d for (d,) in _rows(facts["decontamination"], "documents"))
        lines.append(f"Documents kept and dropped by reason: {fun} {_cite(facts['funnel'])}. Duplicates removed: "
                     f"{dup[0]:,} documents, {dup[1]:,} tokens in {dup[2]:,} clusters {_cite(facts['duplicates'])}. "
                     f"Documents dropped for overlap with evaluation sets: {decon:,} "
                     f"{_cite(facts['decontamination'])}.\n")
    else:
        lines.append(f"Filtering and deduplication counts need the corpus (`xgen card --corpus`). {PROVIDER}\n")
    return "".join(lines)


def summary(facts: dict[str, Fact], manifest: dict) -> str:
    """The draft summary as Markdown (sections 1–3 of the template)."""
    return (
        "# Public summary of training content — DRAFT\n\n"
        "> Draft generated by `xgen card --ai-act` for a person to complete and check; it is not the summary "
        "itself until the provider has filled every field marked **[PROVIDER: to complete]** and reviewed the "
        "rest. It follows the sections of the AI Office's template for Article 53(1)(d) of Regulation (EU) "
        f"2024/1689. Facts come from the shards of recipe `{manifest.get('recipe')}` (shards manifest SHA-256 "
        f"`{manifest.get('manifest_sha256')}`); each names the fact in `card.json` it was taken from.\n\n"
        + _general(facts) + _sources(facts) + _processing(facts))
