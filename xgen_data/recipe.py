"""Recipe files (TOML): filters, dedup, and stages with sampling proportions and sub-stages (SPEC §2).

A recipe::

    name = "xgen-7b"
    seed = 1234                        # every random step derives its seed from this one
    [filters]
    min_tokens = 100
    license_subsets = ["code"]         # subsets held to the permissive license allow-list
    license_allow_extra = []           # identifiers added to the shipped allow-list (license_allow replaces it)
    [dedup]
    enabled = true                     # threshold, num_perm, ngram, seed, bands, rows: xgen_data.dedup
    [[stages]]
    name = "stage1"
    tokens = 1_500_000_000_000         # effective tokens of the stage (default: sum of sub-stage tokens)
    proportions = { natural = 0.9531, code = 0.0469 }   # sampling proportions by tokens; sum to 1
    [[stages.substages]]
    name = "2k"
    seq_len = 2048
    tokens = 800_000_000_000
    heldout_sequences = 0              # of its tokens // seq_len sequences, set aside as the validation split

Sub-stages take consecutive chunks of the stage's shuffled document stream, in order.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field

from xgen_data.corpus import check_name

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


class RecipeError(ValueError):
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
    name: str
    tokens: int
    proportions: dict[str, float]
    substages: tuple[SubStage, ...]


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    stages: tuple[Stage, ...]
    min_tokens: int = 100
    license_subsets: tuple[str, ...] = ("code",)
    license_allow: tuple[str, ...] | None = None  # None = shipped list
    license_allow_extra: tuple[str, ...] = ()
    dedup: dict = field(default_factory=lambda: {"enabled": True})
    path: str = ""

    def allow_list(self) -> tuple[str, ...]:
        """The effective license allow-list: ``license_allow`` (or the shipped list) plus the extras."""
        from xgen_data.licenses import default_allow_list

        base = default_allow_list() if self.license_allow is None else self.license_allow
        return tuple(base) + self.license_allow_extra

    def dedup_kwargs(self) -> dict:
        """The ``[dedup]`` parameters for :func:`xgen_data.dedup.run_dedup` (without ``enabled``)."""
        return {k: v for k, v in self.dedup.items() if k != "enabled"}

    def subsets(self) -> list[str]:
        """Every subset named by any stage, in first-seen order."""
        return list(dict.fromkeys(s for st in self.stages for s in st.proportions))


def resolve(name_or_path: str) -> str:
    """A recipe path from a path or a shipped recipe name (``xgen-7b``, ``demo``)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if os.path.isdir(name_or_path):
        raise RecipeError(f"{name_or_path}: is a directory, expected a recipe .toml file")
    shipped = os.path.join(RECIPES_DIR, f"{name_or_path}.toml")
    if os.path.exists(shipped):
        return shipped
    raise RecipeError(f"{name_or_path}: no such recipe file (shipped recipes: "
                      f"{', '.join(sorted(f[:-5] for f in os.listdir(RECIPES_DIR) if f.endswith('.toml')))})")


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
    path = resolve(name_or_path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text: {exc}") from None
    known = {"name", "seed", "filters", "dedup", "stages"}
    if set(raw) - known:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(sorted(set(raw) - known))}; known: {', '.join(sorted(known))}")
    stages_raw = _typed(path, "stages", raw.get("stages", []), list)
    stages = []
    names = set()
    for i, st in enumerate(stages_raw):
        where = f"{path}: stages[{i}]"
        _typed(path, f"stages[{i}]", st, dict)
        name = st.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise RecipeError(f"{where}.name: a unique non-empty string is required, got {name!r}")
        _name(where + ".name", name, "stage", dots=False)
        names.add(name)
        where = f"{path}: stage {name!r}"
        extra = set(st) - {"name", "tokens", "proportions", "substages"}
        if extra:
            raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        props = st.get("proportions")
        if not isinstance(props, dict) or not props:
            raise RecipeError(f"{where}: 'proportions' must be a table of subset = sampling proportion")
        for k, v in props.items():
            _name(f"{where}: proportions.{k}", k, "subset")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise RecipeError(f"{where}: proportions.{k} must be a finite number > 0, got {v!r}")
        total = sum(props.values())
        if abs(total - 1.0) > 1e-6:
            raise RecipeError(f"{where}: proportions sum to {total:.6f}, expected 1")
        subs = []
        for j, ss in enumerate(_typed(path, f"stage {name!r} substages", st.get("substages") or [], list)):
            sw = f"{where}: substages[{j}]"
            _typed(path, f"stage {name!r} substages[{j}]", ss, dict)
            if not isinstance(ss.get("name"), str):
                raise RecipeError(f"{sw}.name: a string is required")
            _name(sw + ".name", ss["name"], "sub-stage", dots=False)
            sub_keys = {"name", "seq_len", "tokens", "heldout_sequences"}
            if set(ss) - sub_keys:
                raise RecipeError(f"{sw}: unknown key(s) {', '.join(sorted(set(ss) - sub_keys))}")
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
            subs.append(SubStage(ss["name"], seq_len, tokens, heldout))
        if not subs:
            raise RecipeError(f"{where}: at least one [[stages.substages]] is required")
        if len({s.name for s in subs}) != len(subs):
            raise RecipeError(f"{where}: sub-stage names must be unique")
        budget = sum(s.tokens for s in subs)
        tokens = _int(f"{where}.tokens", st.get("tokens", budget))
        if budget > tokens:
            raise RecipeError(f"{where}: sub-stage budgets sum to {budget} tokens, more than the stage's {tokens}")
        stages.append(Stage(name, tokens, {k: float(v) for k, v in props.items()}, tuple(subs)))
    if not stages:
        raise RecipeError(f"{path}: at least one [[stages]] table is required")
    flt = _typed(path, "filters", raw.get("filters", {}), dict)
    extra = set(flt) - {"min_tokens", "license_subsets", "license_allow", "license_allow_extra"}
    if extra:
        raise RecipeError(f"{path}: filters: unknown key(s) {', '.join(sorted(extra))}")
    allow = flt.get("license_allow")
    dedup = dict(_typed(path, "dedup", raw.get("dedup", {"enabled": True}), dict))
    dedup.setdefault("enabled", True)
    if not isinstance(dedup["enabled"], bool):
        raise RecipeError(f"{path}: dedup.enabled must be true or false, got {dedup['enabled']!r}")
    try:
        from xgen_data.dedup import recorded_params

        recorded_params(**{k: v for k, v in dedup.items() if k != "enabled"})
    except ValueError as exc:
        raise RecipeError(f"{path}: dedup: {exc}") from None
    return Recipe(
        name=str(raw.get("name", os.path.basename(path)[:-5])),
        seed=_int(f"{path}: seed", raw.get("seed", 0), 0),
        stages=tuple(stages),
        min_tokens=_int(f"{path}: filters.min_tokens", flt.get("min_tokens", 100), 0),
        license_subsets=_strings(path, "filters.license_subsets", flt.get("license_subsets", ["code"])),
        license_allow=None if allow is None else _strings(path, "filters.license_allow", allow),
        license_allow_extra=_strings(path, "filters.license_allow_extra", flt.get("license_allow_extra", [])),
        dedup=dedup,
        path=os.path.abspath(path),
    )


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
    lines += ["", "[dedup]"] + [f"{k} = {value(v)}" for k, v in recipe.dedup.items()]
    for st in recipe.stages:
        props = ", ".join(f"{k} = {value(v)}" for k, v in st.proportions.items())
        lines += ["", "[[stages]]", f"name = {value(st.name)}", f"tokens = {st.tokens}", f"proportions = {{ {props} }}"]
        for ss in st.substages:
            lines += ["", "[[stages.substages]]", f"name = {value(ss.name)}", f"seq_len = {ss.seq_len}",
                      f"tokens = {ss.tokens}"]
            if ss.heldout_sequences:
                lines.append(f"heldout_sequences = {ss.heldout_sequences}")
    return "\n".join(lines) + "\n"
