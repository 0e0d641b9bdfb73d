"""Recipe files (TOML): filters, dedup, and stages with sampling proportions and sub-stages (SPEC §2).

A recipe::

    name = "xgen-7b"
    seed = 1234                        # every random step derives its seed from this one
    [filters]
    min_tokens = 100
    license_subsets = ["code"]         # subsets held to the permissive license allow-list
    license_allow_extra = []           # identifiers added to the shipped allow-list (license_allow replaces it)
    policy_allow_extra = { strict = [] }   # identifiers added to another policy's shipped list (e.g. the demo's)
    [dedup]
    enabled = true                     # threshold, num_perm, ngram, seed, bands, rows, clustering: xgen_data.attributes.dedup.params
    [decontaminate]                    # optional: drop documents overlapping these evaluation sets (SPEC §5)
    eval_sets = ["evals/humaneval.jsonl"]   # JSONL files, relative to the recipe file
    [[stages]]
    name = "stage1"
    tokens = 1_500_000_000_000         # effective tokens of the stage (default: sum of sub-stage tokens)
    proportions = { natural = 0.9531, code = 0.0469 }   # sampling proportions by tokens; sum to 1
    # or, Table 2 style, effective tokens per subset (the stage's tokens are their sum, plus `replay`):
    # effective_tokens = { natural = 1_309_990_000_000, code = 64_530_000_000 }
    # replay = { stage = "stage1", tokens = 55_000_000_000 }   # an earlier stage's mixture, at its proportions
    # licenses = { starcoder = "strict" }   # license policy per subset (xgen_data.attributes.licenses.POLICIES)
    # languages = { starcoder = "original" }   # per-language weights in a subset ("original" or a table)
    [[stages.substages]]
    name = "2k"
    seq_len = 2048
    tokens = 800_000_000_000
    heldout_sequences = 0              # of its tokens // seq_len sequences, set aside as the validation split

Sub-stages take consecutive chunks of the stage's shuffled document stream, in order.

License policies: ``[filters] license_subsets`` are held to ``permissive`` (its allow-list is
``license_allow`` / ``license_allow_extra``, default the shipped list); a stage's ``licenses`` table names the
policy of any of its subsets (``permissive`` or ``strict``, SPEC §2); ``[filters] policy_allow_extra`` adds
identifiers to a policy other than ``permissive`` (whose extras are ``license_allow_extra``). Decisions are per document and subset,
so a subset has one policy in the whole recipe: two stages naming different policies for one subset is an
error (give the data two subset names instead).
"""
from __future__ import annotations

import importlib.resources
import math
import os
import tomllib
from dataclasses import dataclass, field

from xgen_data.attributes import licenses
from xgen_data.attributes.dedup.params import recorded_params
from xgen_data.attributes.licenses import default_allow_list
from xgen_data.errors import InputError, unknown_key
from xgen_data.store.corpus import check_name

#: The shipped recipes (``demo``, ``xgen-7b``): package data, found wherever xgen is installed.
RECIPES_DIR = str(importlib.resources.files("xgen_data") / "recipes")


class RecipeError(InputError):
    """The recipe file is missing, not TOML, or breaks a rule; the message names the file and key."""


@dataclass(frozen=True)
class SubStage:
    name: str
    seq_len: int  # tokens per sequence
    tokens: int  # token budget; packs tokens // seq_len sequences
    heldout_sequences: int = 0  # of those, set aside as the validation split (not trained on)

    @property
    def n_sequences(self) -> int:
        return self.tokens // self.seq_len


@dataclass(frozen=True)
class Stage:
    """One training stage. ``proportions``: sampling proportions by tokens (given, or derived from
    ``targets``); ``targets``: exact effective tokens per subset when the recipe gave ``effective_tokens``
    and/or ``replay`` (None: ``proportions × tokens``); ``replay``: ``(earlier stage, tokens, {subset: tokens})`` or None;
    ``licenses``: ``{subset: policy}`` named by this stage; ``languages``: ``{subset: "original" or
    {language: weight}}``, per-language weights inside a subset (:func:`xgen_data.mixing.mixture.language_targets`)."""

    name: str
    tokens: int
    proportions: dict[str, float]
    substages: tuple[SubStage, ...]
    targets: dict[str, int] | None = None
    replay: tuple[str, int, dict[str, int]] | None = None
    licenses: dict[str, str] = field(default_factory=dict)
    languages: dict[str, str | dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    stages: tuple[Stage, ...]
    min_tokens: int = 100
    license_subsets: tuple[str, ...] = ("code",)
    license_allow: tuple[str, ...] | None = None  # None = shipped list
    license_allow_extra: tuple[str, ...] = ()
    policy_allow_extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # policy -> extra identifiers
    dedup: dict = field(default_factory=lambda: {"enabled": True})
    path: str = ""
    decontaminate: tuple[str, ...] = ()  # evaluation set files (absolute), xgen_data.attributes.decontam

    def allow_list(self) -> tuple[str, ...]:
        """The effective license allow-list: ``license_allow`` (or the shipped list) plus the extras."""
        base = default_allow_list() if self.license_allow is None else self.license_allow
        return tuple(base) + self.license_allow_extra

    def dedup_kwargs(self) -> dict:
        """The ``[dedup]`` parameters for :func:`xgen_data.attributes.dedup.run.run_dedup` (without ``enabled``)."""
        return {k: v for k, v in self.dedup.items() if k != "enabled"}

    def license_policies(self) -> dict[str, str]:
        """``{subset: policy name}`` of every subset held to a license policy (``license_subsets`` →
        ``permissive``, overridden by the stages' ``licenses`` tables; :func:`load` checks they agree)."""
        out = {s: "permissive" for s in self.license_subsets}
        for st in self.stages:
            out.update(st.licenses)
        return dict(sorted(out.items()))

    def policy(self, name: str):
        """The :class:`xgen_data.attributes.licenses.LicensePolicy` called ``name``; ``permissive`` uses this recipe's
        allow-list (:meth:`allow_list`), the others their shipped configuration file plus this recipe's
        ``policy_allow_extra`` for them."""
        import dataclasses

        if name == "permissive":
            return licenses.LicensePolicy("permissive", tuple(self.allow_list()), False)
        pol = licenses.load_policy(name)
        extra = self.policy_allow_extra.get(name, ())
        return dataclasses.replace(pol, allow=pol.allow + tuple(extra)) if extra else pol

    def subsets(self) -> list[str]:
        """Every subset named by any stage, in first-seen order."""
        return list(dict.fromkeys(s for st in self.stages for s in st.proportions))


def resolve(name_or_path: str) -> str:
    """A recipe path from a path or a shipped recipe name (``xgen-7b``, ``demo``). A folder that is not a
    shards folder is never a recipe, so a bare shipped name means the shipped recipe even where the working
    folder holds a folder of that name (``xgen demo --workdir demo`` makes one)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = os.path.join(RECIPES_DIR, f"{name_or_path}.toml")
    bare = os.path.basename(name_or_path) == name_or_path and name_or_path not in (".", "..")
    if bare and os.path.isfile(shipped):
        return shipped
    if os.path.isdir(name_or_path):
        raise RecipeError(f"{name_or_path}: is a directory, expected a recipe .toml file or a shards folder "
                          "(with manifest.json)")
    raise RecipeError(f"{name_or_path}: no such recipe file (shipped recipes: "
                      f"{', '.join(sorted(f[:-5] for f in os.listdir(RECIPES_DIR) if f.endswith('.toml')))})")


def _known_keys(where: str, table: dict, known: set[str]) -> None:
    """Raise RecipeError naming each key of ``table`` not in ``known``, with the closest known key (a typo)."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise RecipeError(f"{where}: " + "; ".join(unknown_key(k, known) for k in unknown)
                          + f" (known: {', '.join(sorted(known))}; docs/recipes.md)")


def _int(where: str, value, minimum: int = 1, maximum: int = 2**53) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise RecipeError(f"{where}: expected an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def load(name_or_path: str) -> Recipe:
    """Parse and validate a recipe (see module docstring).

    Raises:
        RecipeError: unreadable TOML; missing or mistyped keys; proportions not positive or not summing
            to 1 (±1e-6); sub-stage budgets above the stage's tokens; a budget smaller than one sequence.
    """
    if os.path.isfile(os.path.join(name_or_path, "manifest.json")):
        return recorded(name_or_path)
    path = resolve(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text: {exc}") from None
    return _from_toml(raw, path)


def recorded(shards_dir: str) -> Recipe:
    """The recipe a shards folder was built with: its manifest (checksum verified) records the full TOML text.
    The recipe's ``path`` is ``shards_dir``, so ``--recipe SHARDS_DIR`` loads it again."""
    from xgen_data.shards import shard_format

    text = shard_format.read_manifest(shards_dir).get("recipe_toml")
    if not text:
        raise RecipeError(f"{shards_dir}/manifest.json: records no recipe text; give the recipe file")
    return loads(text, shards_dir)


def loads(text: str, where: str) -> Recipe:
    """Parse and validate recipe TOML ``text`` (e.g. the ``recipe_toml`` a shards manifest records); ``where``
    names it in errors and is the recipe's ``path``. Raises RecipeError as :func:`load` does."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{where}: not valid TOML: {exc}") from None
    return _from_toml(raw, where)


def _from_toml(raw: dict, path: str) -> Recipe:
    """The :class:`Recipe` of parsed TOML ``raw`` (see the module docstring); ``path`` names it in errors.

    The first failing check is raised (RecipeError, as :func:`load` documents), in this order: the top-level
    keys, ``[[stages]]``, the ``[filters]`` keys, ``[dedup]``, ``seed``, the ``[filters]`` values,
    ``[decontaminate]``."""
    _known_keys(path, raw, {"name", "seed", "filters", "dedup", "stages", "decontaminate"})
    stages = _stages(path, _typed(path, "stages", raw.get("stages", []), list))
    flt = _typed(path, "filters", raw.get("filters", {}), dict)
    _known_keys(f"{path}: filters", flt, {"min_tokens", "license_subsets", "license_allow", "license_allow_extra",
                                          "policy_allow_extra"})
    dedup = _dedup_table(path, raw.get("dedup", {"enabled": True}))
    return Recipe(
        name=str(raw.get("name", os.path.basename(path).removesuffix(".toml"))),
        seed=_int(f"{path}: seed", raw.get("seed", 0), 0),
        stages=stages,
        **_filter_settings(path, flt),
        dedup=dedup,
        path=os.path.abspath(path) if os.path.isfile(path) else path,
        decontaminate=_eval_sets(path, raw.get("decontaminate", {})),
    )


def _stages(path: str, stages_raw: list) -> tuple[Stage, ...]:
    """The ``[[stages]]`` tables, in order (each may replay an earlier one); at least one is required."""
    stages: list[Stage] = []
    for i, st in enumerate(stages_raw):
        stages.append(_stage(path, i, st, stages))
    if not stages:
        raise RecipeError(f"{path}: at least one [[stages]] table is required")
    return tuple(stages)


def _stage(path: str, i: int, st, earlier: list[Stage]) -> Stage:
    """Stage table ``i`` (``stages[i]``): a unique name, its mixture, sub-stages, tokens, licenses, languages."""
    where = f"{path}: stages[{i}]"
    _typed(path, f"stages[{i}]", st, dict)
    name = st.get("name")
    if not isinstance(name, str) or not name or name in {s.name for s in earlier}:
        raise RecipeError(f"{where}.name: a unique non-empty string is required, got {name!r}")
    _name(where + ".name", name, "stage", dots=False)
    where = f"{path}: stage {name!r}"
    _known_keys(where, st, {"name", "tokens", "proportions", "effective_tokens", "replay", "licenses",
                            "languages", "substages"})
    props, targets, replay = _mixture(where, st, earlier)
    subs = _substages(path, name, where, st.get("substages") or [])
    tokens = _stage_tokens(where, st, subs, targets)
    lic = _stage_licenses(where, _typed(path, f"stage {name!r} licenses", st.get("licenses", {}), dict), props,
                          earlier)
    langs = _languages(where, _typed(path, f"stage {name!r} languages", st.get("languages", {}), dict), props)
    return Stage(name, tokens, {k: float(v) for k, v in props.items()}, subs, targets, replay, dict(lic), langs)


def _substages(path: str, name: str, where: str, raw) -> tuple[SubStage, ...]:
    """The ``[[stages.substages]]`` of stage ``name``: at least one, names unique."""
    subs = tuple(_substage(path, name, j, f"{where}: substages[{j}]", ss)
                 for j, ss in enumerate(_typed(path, f"stage {name!r} substages", raw, list)))
    if not subs:
        raise RecipeError(f"{where}: at least one [[stages.substages]] is required")
    if len({s.name for s in subs}) != len(subs):
        raise RecipeError(f"{where}: sub-stage names must be unique")
    return subs


def _substage(path: str, stage: str, j: int, sw: str, ss) -> SubStage:
    """Sub-stage table ``j`` of ``stage`` (``sw`` names it in errors): a budget of at least one sequence of
    ``seq_len`` (2..65536), ``heldout_sequences`` leaving some training sequences."""
    _typed(path, f"stage {stage!r} substages[{j}]", ss, dict)
    if not isinstance(ss.get("name"), str):
        raise RecipeError(f"{sw}.name: a string is required")
    _name(sw + ".name", ss["name"], "sub-stage", dots=False)
    _known_keys(sw, ss, {"name", "seq_len", "tokens", "heldout_sequences"})
    seq_len = _int(f"{sw}.seq_len", ss.get("seq_len"), 2)
    if seq_len > 65536:
        raise RecipeError(f"{sw}.seq_len: {seq_len} is larger than 65536")
    tokens = _int(f"{sw}.tokens", ss.get("tokens"))
    if tokens < seq_len:
        raise RecipeError(f"{sw}.tokens: {tokens} is less than one sequence of {seq_len}")
    heldout = _int(f"{sw}.heldout_sequences", ss.get("heldout_sequences", 0), 0)
    if heldout >= tokens // seq_len:
        raise RecipeError(f"{sw}.heldout_sequences: {heldout} leaves no training sequences of the "
                          f"{tokens // seq_len} the budget packs")
    return SubStage(ss["name"], seq_len, tokens, heldout)


def _stage_tokens(where: str, st: dict, subs: tuple[SubStage, ...], targets: dict | None) -> int:
    """A stage's effective tokens: its ``tokens``, else the effective tokens given (``targets``), else the
    sub-stage budgets' sum; it must equal the targets' sum and hold the budgets."""
    budget = sum(s.tokens for s in subs)
    given = sum(targets.values()) if targets is not None else None
    tokens = _int(f"{where}.tokens", st.get("tokens", given if given is not None else budget))
    if given is not None and tokens != given:
        raise RecipeError(f"{where}.tokens: {tokens} differs from the effective tokens given "
                          f"(effective_tokens + replay = {given})")
    if budget > tokens:
        raise RecipeError(f"{where}: sub-stage budgets sum to {budget} tokens, more than the stage's {tokens}")
    return tokens


def _stage_licenses(where: str, lic: dict, props: dict, earlier: list[Stage]) -> dict:
    """A stage's ``licenses`` table: each key a subset of the stage, each value a known policy, the same one
    every ``earlier`` stage gives that subset (decisions are per document)."""
    for k, v in lic.items():
        if k not in props:
            raise RecipeError(f"{where}: licenses.{k}: not a subset of this stage ({', '.join(props)})")
        if not isinstance(v, str) or v not in known_policies():
            raise RecipeError(f"{where}: licenses.{k}: unknown license policy {v!r}; known: "
                              f"{', '.join(known_policies())}")
        for other in earlier:
            if other.licenses.get(k, v) != v:
                raise RecipeError(f"{where}: licenses.{k} = {v!r} but stage {other.name!r} uses "
                                  f"{other.licenses[k]!r}; a subset has one policy per recipe (decisions are "
                                  "per document): ingest the data under two subset names")
    return lic


def _dedup_table(path: str, raw) -> dict:
    """The ``[dedup]`` table with ``enabled`` (default true) checked and its parameters validated
    (:func:`xgen_data.attributes.dedup.params.recorded_params`)."""
    dedup = dict(_typed(path, "dedup", raw, dict))
    dedup.setdefault("enabled", True)
    if not isinstance(dedup["enabled"], bool):
        raise RecipeError(f"{path}: dedup.enabled must be true or false, got {dedup['enabled']!r}")
    try:
        recorded_params(**{k: v for k, v in dedup.items() if k != "enabled"})
    except ValueError as exc:
        raise RecipeError(f"{path}: dedup: {exc}") from None
    return dedup


def _filter_settings(path: str, flt: dict) -> dict:
    """The :class:`Recipe` fields of the ``[filters]`` table ``flt`` (keys already checked), validated."""
    allow = flt.get("license_allow")
    return {
        "min_tokens": _int(f"{path}: filters.min_tokens", flt.get("min_tokens", 100), 0),
        "license_subsets": _strings(path, "filters.license_subsets", flt.get("license_subsets", ["code"])),
        "license_allow": None if allow is None else _strings(path, "filters.license_allow", allow),
        "license_allow_extra": _strings(path, "filters.license_allow_extra", flt.get("license_allow_extra", [])),
        "policy_allow_extra": _policy_extra(path, flt.get("policy_allow_extra", {})),
    }


def _eval_sets(path: str, raw) -> tuple[str, ...]:
    """``[decontaminate] eval_sets``: evaluation set files, made absolute relative to the recipe's folder."""
    table = _typed(path, "decontaminate", raw, dict)
    _known_keys(f"{path}: decontaminate", table, {"eval_sets"})
    files = _strings(path, "decontaminate.eval_sets", table.get("eval_sets", []))
    return tuple(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), f)) for f in files)


def known_policies() -> tuple[str, ...]:
    """License policy names a recipe may use (:data:`xgen_data.attributes.licenses.POLICIES`)."""
    return tuple(licenses.POLICIES)


def split_tokens(total: int, weights: dict[str, int]) -> dict[str, int]:
    """``total`` split in proportion to integer ``weights`` exactly (largest remainder, ties by name).

    Integer arithmetic, so 55B split as 1,309.99B : 64.53B gives the same integers on every platform.
    """
    den = sum(weights.values())
    out = {k: total * w // den for k, w in weights.items()}
    rem = {k: total * w % den for k, w in weights.items()}
    for k in sorted(weights, key=lambda k: (-rem[k], k))[:total - sum(out.values())]:
        out[k] += 1
    return out


def _mixture(where: str, st: dict, earlier: list[Stage]):
    """``(proportions, targets or None, replay or None)`` of one stage table (see the module docstring)."""
    has_p, has_e, has_r = "proportions" in st, "effective_tokens" in st, "replay" in st
    if has_p and (has_e or has_r):
        raise RecipeError(f"{where}: give either 'proportions' or 'effective_tokens' (with an optional 'replay'), "
                          "not both")
    if has_p:
        props = st["proportions"]
        if not isinstance(props, dict) or not props:
            raise RecipeError(f"{where}: 'proportions' must be a table of subset = sampling proportion")
        for k, v in props.items():
            _name(f"{where}: proportions.{k}", k, "subset")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise RecipeError(f"{where}: proportions.{k} must be a finite number > 0, got {v!r}")
        total = sum(props.values())
        if abs(total - 1.0) > 1e-6:
            raise RecipeError(f"{where}: proportions sum to {total:.6f}, expected 1")
        return props, None, None
    if not has_e and not has_r:
        raise RecipeError(f"{where}: 'proportions' must be a table of subset = sampling proportion "
                          "(or give 'effective_tokens')")
    targets: dict[str, int] = {}
    replay = None
    if has_r:
        r = st["replay"]
        if not isinstance(r, dict) or set(r) != {"stage", "tokens"}:
            raise RecipeError(f"{where}: replay must be a table {{ stage = \"<earlier stage>\", tokens = N }}, "
                              f"got {r!r}")
        src = next((e for e in earlier if e.name == r["stage"]), None)
        if src is None:
            raise RecipeError(f"{where}: replay.stage {r['stage']!r} is not an earlier stage "
                              f"({', '.join(e.name for e in earlier) or 'none'})")
        n = _int(f"{where}: replay.tokens", r["tokens"])
        from xgen_data.mixing.mixture import effective_tokens

        targets = split_tokens(n, effective_tokens(src))
        replay = (src.name, n, dict(targets))
    if has_e:
        eff = st["effective_tokens"]
        if not isinstance(eff, dict) or not eff:
            raise RecipeError(f"{where}: 'effective_tokens' must be a table of subset = tokens")
        for k, v in eff.items():
            _name(f"{where}: effective_tokens.{k}", k, "subset")
            targets[k] = targets.get(k, 0) + _int(f"{where}: effective_tokens.{k}", v)
    total = sum(targets.values())
    return {k: v / total for k, v in targets.items()}, targets, replay


def _languages(where: str, raw: dict, props: dict) -> dict:
    """A stage's ``languages`` table: ``{subset: "original" | {language: weight > 0, summing to 1}}``."""
    out = {}
    for subset, v in raw.items():
        if subset not in props:
            raise RecipeError(f"{where}: languages.{subset}: not a subset of this stage ({', '.join(props)})")
        if v == "original":
            out[subset] = "original"
            continue
        if not isinstance(v, dict) or not v:
            raise RecipeError(f"{where}: languages.{subset} must be \"original\" or a table of language = weight, "
                              f"got {v!r}")
        for k, w in v.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
                raise RecipeError(f"{where}: languages.{subset}.{k} must be a finite number > 0, got {w!r}")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise RecipeError(f"{where}: languages.{subset} weights sum to {sum(v.values()):.6f}, expected 1")
        out[subset] = {k: float(w) for k, w in v.items()}
    return out


def _policy_extra(path: str, raw) -> dict[str, tuple[str, ...]]:
    """``[filters] policy_allow_extra``: ``{policy: [SPDX identifiers]}`` for shipped policies other than
    ``permissive`` (its extras are ``license_allow_extra``, which also feed dedup's keep tier)."""
    raw = _typed(path, "filters.policy_allow_extra", raw, dict)
    out = {}
    for name, ids in raw.items():
        if name == "permissive":
            raise RecipeError(f"{path}: filters.policy_allow_extra.permissive: use filters.license_allow_extra")
        if name not in known_policies():
            raise RecipeError(f"{path}: filters.policy_allow_extra.{name}: unknown license policy; known: "
                              f"{', '.join(known_policies())}")
        out[name] = _strings(path, f"filters.policy_allow_extra.{name}", ids)
    return out


def _typed(path: str, key: str, value, kind: type):
    if not isinstance(value, kind):
        what = "an array of tables" if kind is list else "a table"
        raise RecipeError(f"{path}: {key} must be {what}, got {type(value).__name__} {value!r}"[:300])
    return value


def _strings(path: str, key: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{path}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _name(where: str, value: str, what: str, dots: bool = True) -> None:
    try:
        check_name(value, what, dots)
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text that :func:`load` reads back to an equal recipe (``path`` aside).

    Used to save the exact recipe a run used (e.g. ``xgen demo`` writes ``<workdir>/recipe.toml``).
    """
    import json

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = [f"name = {value(recipe.name)}", f"seed = {recipe.seed}", "", "[filters]",
             f"min_tokens = {recipe.min_tokens}", f"license_subsets = {value(recipe.license_subsets)}"]
    if recipe.license_allow is not None:
        lines.append(f"license_allow = {value(recipe.license_allow)}")
    if recipe.license_allow_extra:
        lines.append(f"license_allow_extra = {value(recipe.license_allow_extra)}")
    if recipe.policy_allow_extra:
        lines.append("policy_allow_extra = { " + ", ".join(f"{k} = {value(v)}" for k, v in
                                                         recipe.policy_allow_extra.items()) + " }")
    lines += ["", "[dedup]"] + [f"{k} = {value(v)}" for k, v in recipe.dedup.items()]
    if recipe.decontaminate:
        lines += ["", "[decontaminate]", f"eval_sets = {value(recipe.decontaminate)}"]
    for st in recipe.stages:
        lines += ["", "[[stages]]", f"name = {value(st.name)}", f"tokens = {st.tokens}"]
        if st.targets is None:
            props = ", ".join(f"{k} = {value(v)}" for k, v in st.proportions.items())
            lines.append(f"proportions = {{ {props} }}")
        else:
            own = dict(st.targets)
            if st.replay is not None:
                for k, v in st.replay[2].items():
                    own[k] -= v
                lines.append(f"replay = {{ stage = {value(st.replay[0])}, tokens = {st.replay[1]} }}")
            own = {k: v for k, v in own.items() if v}
            if own:
                lines.append("effective_tokens = { " + ", ".join(f"{k} = {v}" for k, v in own.items()) + " }")
        if st.licenses:
            lines.append("licenses = { " + ", ".join(f"{k} = {value(v)}" for k, v in st.licenses.items()) + " }")
        if st.languages:
            def lang(v) -> str:
                return value(v) if isinstance(v, str) else \
                    "{ " + ", ".join(f"{json.dumps(k)} = {value(w)}" for k, w in v.items()) + " }"
            lines.append("languages = { " + ", ".join(f"{k} = {lang(v)}" for k, v in st.languages.items()) + " }")
        for ss in st.substages:
            lines += ["", "[[stages.substages]]", f"name = {value(ss.name)}", f"seq_len = {ss.seq_len}",
                      f"tokens = {ss.tokens}"]
            if ss.heldout_sequences:
                lines.append(f"heldout_sequences = {ss.heldout_sequences}")
    return "\n".join(lines) + "\n"
