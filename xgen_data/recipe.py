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

Sub-stages take consecutive chunks of the stage's shuffled document stream, in order.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


class RecipeError(ValueError):
    """The recipe file is missing, not TOML, or breaks a rule; the message names the file and key."""


@dataclass(frozen=True)
class SubStage:
    name: str
    seq_len: int  # tokens per sequence
    tokens: int  # token budget; packs tokens // seq_len sequences

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

        return tuple(self.license_allow or default_allow_list()) + self.license_allow_extra

    def subsets(self) -> list[str]:
        """Every subset named by any stage, in first-seen order."""
        return list(dict.fromkeys(s for st in self.stages for s in st.proportions))


def resolve(name_or_path: str) -> str:
    """A recipe path from a path or a shipped recipe name (``xgen-7b``, ``demo``)."""
    if os.path.exists(name_or_path):
        return name_or_path
    shipped = os.path.join(RECIPES_DIR, f"{name_or_path}.toml")
    if os.path.exists(shipped):
        return shipped
    raise RecipeError(f"{name_or_path}: no such recipe file (shipped recipes: "
                      f"{', '.join(sorted(f[:-5] for f in os.listdir(RECIPES_DIR) if f.endswith('.toml')))})")


def _int(where: str, value, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(f"{where}: expected an integer >= {minimum}, got {value!r}")
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
    stages = []
    names = set()
    for i, st in enumerate(raw.get("stages") or []):
        where = f"{path}: stages[{i}]"
        name = st.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise RecipeError(f"{where}.name: a unique non-empty string is required, got {name!r}")
        names.add(name)
        where = f"{path}: stage {name!r}"
        props = st.get("proportions")
        if not isinstance(props, dict) or not props:
            raise RecipeError(f"{where}: 'proportions' must be a table of subset = sampling proportion")
        for k, v in props.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise RecipeError(f"{where}: proportions.{k} must be a number > 0, got {v!r}")
        total = sum(props.values())
        if abs(total - 1.0) > 1e-6:
            raise RecipeError(f"{where}: proportions sum to {total:.6f}, expected 1")
        subs = []
        for j, ss in enumerate(st.get("substages") or []):
            sw = f"{where}: substages[{j}]"
            if not isinstance(ss.get("name"), str):
                raise RecipeError(f"{sw}.name: a string is required")
            seq_len = _int(f"{sw}.seq_len", ss.get("seq_len"), 2)
            if seq_len > 65536:
                raise RecipeError(f"{sw}.seq_len: {seq_len} is larger than 65536")
            tokens = _int(f"{sw}.tokens", ss.get("tokens"))
            if tokens < seq_len:
                raise RecipeError(f"{sw}.tokens: {tokens} is less than one sequence of {seq_len}")
            subs.append(SubStage(ss["name"], seq_len, tokens))
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
    flt = raw.get("filters", {})
    allow = flt.get("license_allow")
    dedup = dict(raw.get("dedup", {"enabled": True}))
    dedup.setdefault("enabled", True)
    return Recipe(
        name=str(raw.get("name", os.path.basename(path)[:-5])),
        seed=_int(f"{path}: seed", raw.get("seed", 0), 0),
        stages=tuple(stages),
        min_tokens=_int(f"{path}: filters.min_tokens", flt.get("min_tokens", 100), 0),
        license_subsets=tuple(flt.get("license_subsets", ["code"])),
        license_allow=tuple(allow) if allow is not None else None,
        license_allow_extra=tuple(flt.get("license_allow_extra", [])),
        dedup=dedup,
        path=os.path.abspath(path),
    )
