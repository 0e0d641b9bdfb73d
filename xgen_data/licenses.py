"""SPDX license expressions against a permissive allow-list (SPEC §2, "Code licenses").

Rules: a license identifier passes when it is on the allow-list (case-insensitive); ``A OR B`` passes when
one branch passes; ``A AND B`` when all pass; ``A WITH exception`` when ``A`` passes (an exception only
adds permissions). A missing, empty, ``NOASSERTION``/``NONE`` or unparsable expression does not pass.
Parsing uses the ``license-expression`` library (SPDX expression grammar, operators case-insensitive).
"""
from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass

import license_expression

DEFAULT_ALLOW_FILE = os.path.join(os.path.dirname(__file__), "licenses.toml")
_licensing = license_expression.Licensing()


def default_allow_list() -> tuple[str, ...]:
    """The shipped allow-list (``xgen_data/licenses.toml``), as SPDX identifiers."""
    with open(DEFAULT_ALLOW_FILE, "rb") as f:
        return tuple(tomllib.load(f)["allow"])


def _passes(node, allow: frozenset[str]) -> bool:
    if isinstance(node, license_expression.LicenseWithExceptionSymbol):
        return _passes(node.license_symbol, allow)
    if isinstance(node, license_expression.LicenseSymbol):
        return node.key.lower() in allow
    if isinstance(node, _licensing.OR):
        return any(_passes(a, allow) for a in node.args)
    if isinstance(node, _licensing.AND):
        return all(_passes(a, allow) for a in node.args)
    return False


@functools.lru_cache(maxsize=65536)
def _cached(expr: str, allow: frozenset[str]) -> bool:
    try:
        node = _licensing.parse(expr, validate=False, strict=False)
    except license_expression.ExpressionError:
        return False
    return node is not None and _passes(node, allow)


def license_passes(expr: str | None, allow: tuple[str, ...] | frozenset[str] | None = None) -> bool:
    """True when the SPDX expression ``expr`` is permissive under ``allow`` (default: the shipped list).

    Args:
        expr: an SPDX license expression such as ``"MIT"``, ``"(GPL-2.0 WITH Linux-syscall-note) OR MIT"``.
        allow: SPDX identifiers that pass, compared case-insensitively.
    """
    if expr is None or not expr.strip() or expr.strip().upper() in ("NOASSERTION", "NONE"):
        return False
    allowed = frozenset(a.lower() for a in (default_allow_list() if allow is None else allow))
    return _cached(expr.strip(), allowed)


def _leaves(node) -> list[str]:
    if isinstance(node, license_expression.LicenseWithExceptionSymbol):
        return _leaves(node.license_symbol)
    if isinstance(node, license_expression.LicenseSymbol):
        return [node.key]
    return [k for a in getattr(node, "args", ()) for k in _leaves(a)]


def license_decision(expr: str | None, allow: tuple[str, ...] | frozenset[str] | None = None) -> tuple[bool, str]:
    """``(passes, reason)`` for one SPDX expression under ``allow`` (default: the shipped list).

    ``passes`` equals :func:`license_passes`. ``reason`` is a short sentence a person can read:
    ``pass: on the allow-list``, ``fail: no license``, ``fail: NOASSERTION``, ``fail: unparsable``, or
    ``fail: GPL-2.0-only not on the allow-list`` (the identifiers that are not on it, at most three).
    """
    if expr is None or not expr.strip():
        return False, "fail: no license"
    if expr.strip().upper() in ("NOASSERTION", "NONE"):
        return False, f"fail: {expr.strip().upper()}"
    if license_passes(expr, allow):
        return True, "pass: on the allow-list"
    allowed = frozenset(a.lower() for a in (default_allow_list() if allow is None else allow))
    try:
        node = _licensing.parse(expr.strip(), validate=False, strict=False)
    except license_expression.ExpressionError:
        return False, "fail: unparsable"
    if node is None:
        return False, "fail: unparsable"
    bad = sorted(dict.fromkeys(k for k in _leaves(node) if k.lower() not in allowed))
    if not bad:  # every identifier is listed but the expression still fails (cannot happen with AND/OR/WITH)
        return False, "fail: not permissive"
    return False, f"fail: {', '.join(bad[:3])}{', …' if len(bad) > 3 else ''} not on the allow-list"


@dataclass(frozen=True)
class LicensePolicy:
    """A named license policy (SPEC §2): ``allow`` (SPDX identifiers that pass, case-insensitive) and
    ``labels_must_agree`` (a file whose SPDX header disagrees with its record's license fails)."""

    name: str
    allow: tuple[str, ...]
    labels_must_agree: bool = False


#: Shipped policies: name -> configuration file (``permissive``: stage 1; ``strict``: stage 2).
POLICIES = {"permissive": DEFAULT_ALLOW_FILE,
            "strict": os.path.join(os.path.dirname(__file__), "licenses_strict.toml")}


def load_policy(name: str) -> LicensePolicy:
    """The shipped policy ``name`` from its configuration file (:data:`POLICIES`).

    Raises:
        ValueError: an unknown policy name, or a configuration file without an ``allow`` list.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown license policy {name!r}; known: {', '.join(POLICIES)}")
    with open(POLICIES[name], "rb") as f:
        raw = tomllib.load(f)
    if not isinstance(raw.get("allow"), list):
        raise ValueError(f"{POLICIES[name]}: an 'allow' list of SPDX identifiers is required")
    return LicensePolicy(name, tuple(raw["allow"]), bool(raw.get("labels_must_agree", False)))
