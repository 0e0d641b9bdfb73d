"""Decisions per recipe: the :class:`xgen_data.query.Decisions` value of a recipe or of the corpus's defaults.

A recipe's decisions are its filters (``min_tokens``, the license policy of each subset it packs), its dedup
parameters with the keep rule's allow-list, and the subsets it packs; the corpus's defaults are the settings of
the last stand-alone ``xgen filter`` / ``xgen dedup`` (:mod:`xgen_data.mixing.defaults`). The query layer
(:mod:`xgen_data.query`) derives ``kept`` and ``drop_reason`` from them by SQL.
"""
from __future__ import annotations

import os

from xgen_data.attributes.dedup.params import dedup_attr_params, recorded_params
from xgen_data.attributes.licenses import license_params
from xgen_data.query import Decisions
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus, params_hash


def from_recipe(recipe) -> Decisions:
    """The decisions of a :class:`xgen_data.mixing.recipe.Recipe` (its filters, dedup and the subsets it packs)."""
    allow = recipe.allow_list()
    ded = recorded_params(license_allow=allow, **recipe.dedup_kwargs()) if recipe.dedup.get("enabled", True) \
        else None
    sha = fsutil.sha256_file(recipe.path) if os.path.isfile(recipe.path) else None  # a file, not a shards folder
    policies = {}
    for subset, name in recipe.license_policies().items():
        pol = recipe.policy(name)
        policies[subset] = {"name": name, "allow": sorted(set(pol.allow)), "labels_must_agree": pol.labels_must_agree}
    return Decisions(label=f"recipe {recipe.name!r} ({recipe.path or 'in memory'}, sha256 {sha or '-'})",
                     filter={"min_tokens": recipe.min_tokens, "license_subsets": sorted(policies),
                             "allow": sorted(allow), "policies": policies},
                     dedup=ded, packed=tuple(recipe.subsets()), recipe_name=recipe.name, recipe_sha256=sha,
                     recipe_ref=recipe.path if os.path.exists(recipe.path) else recipe.name,
                     decontam=tuple(recipe.decontaminate))


def from_defaults(corpus: Corpus) -> Decisions:
    """The corpus's default decisions: the last stand-alone ``xgen filter`` / ``xgen dedup`` settings."""
    d = corpus.default_decisions()
    flt, ded = d.get("filter"), d.get("dedup")
    if flt is None and ded is None:
        return Decisions(label="no recipe and no `xgen filter` / `xgen dedup` run: attributes only, kept = NULL "
                               "(pass --recipe R for a recipe's decisions, e.g. the demo's WORKDIR/recipe.toml)")
    parts = []
    if flt is not None:
        parts.append(f"xgen filter (min_tokens {flt['min_tokens']}, license_subsets {','.join(flt['license_subsets'])},"
                     f" allow-list {params_hash(license_params(flt['allow']))})")
    if ded is not None:
        parts.append(f"xgen dedup (threshold {ded['threshold']}, exact {ded['exact']}, near {ded['near']}, "
                     f"params {params_hash(dedup_attr_params(ded))})")
    return Decisions(label="no recipe: the corpus defaults from the last " + " and ".join(parts)
                     + "; every subset filtered", filter=flt, dedup=ded)


def for_corpus(corpus: Corpus, recipe=None) -> Decisions:
    """:func:`from_recipe` when a recipe is given, else :func:`from_defaults`."""
    return from_recipe(recipe) if recipe is not None else from_defaults(corpus)
