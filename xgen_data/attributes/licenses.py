"""License labels: normalisation to SPDX and decisions under named policies (SPEC §2, "Code licenses" and
"Stage-2 license rule").

Normalisation (:func:`normalize`) turns what real metadata says into one SPDX expression: deprecated ids
(``GPL-2.0`` → ``GPL-2.0-only``, ``GPL-2.0+`` → ``GPL-2.0-or-later``) and case through the SPDX license list
of the ``license-expression`` library (strict grammar: a trailing ``OR`` is an error, not ignored); PyPI trove
classifiers (``License :: OSI Approved :: BSD License``) and common free text through
``license_aliases.toml``; ``LicenseRef-*`` kept as is; a list (a JSON array, or items separated by ``,`` /
``;`` that each normalise) means every license applies and becomes an ``AND``; empty, ``NOASSERTION`` and
``NONE`` have no expression.

Rules of a policy (:class:`LicensePolicy`): an identifier passes when it is on the allow-list
(case-insensitive); ``A OR B`` passes when one branch passes; ``A AND B`` when all pass; ``A WITH exception``
when ``A`` passes (an exception only adds permissions). With ``labels_must_agree`` (policy ``strict``) a file
whose SPDX header (``SPDX-License-Identifier:`` in its first lines) names another expression than its record
fails. Every decision comes with a reason a person can read (:func:`decide`).
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import json
import os
import re
import tomllib
from dataclasses import dataclass

import license_expression

from xgen_data.errors import InputError

#: The license tables: package data of ``xgen_data.attributes``, found wherever xgen is installed.
HERE = str(importlib.resources.files("xgen_data.attributes"))
DEFAULT_ALLOW_FILE = os.path.join(HERE, "licenses.toml")
ALIASES_FILE = os.path.join(HERE, "license_aliases.toml")
_licensing = license_expression.get_spdx_licensing()
HEADER_RE = re.compile(r"SPDX-License-Identifier:[ \t]*([^\r\n]*?)[ \t]*(?:\*/|-->|\"\"\"|'''|;;|#\}|$)",
                       re.MULTILINE)
HEADER_SCAN_CHARS = 4096  # an SPDX header is looked for in the first 4 KiB of a file


def default_allow_list() -> tuple[str, ...]:
    """The shipped allow-list of policy ``permissive`` (``xgen_data/attributes/licenses.toml``), as SPDX identifiers."""
    with open(DEFAULT_ALLOW_FILE, "rb") as f:
        return tuple(tomllib.load(f)["allow"])


@dataclass(frozen=True)
class LicensePolicy:
    """A named license policy (SPEC §2): ``allow`` (SPDX identifiers that pass, case-insensitive) and
    ``labels_must_agree`` (a file whose SPDX header disagrees with its record's license fails)."""

    name: str
    allow: tuple[str, ...]
    labels_must_agree: bool = False


#: Shipped policies: name -> configuration file (``permissive``: stage 1; ``strict``: stage 2).
POLICIES = {"permissive": DEFAULT_ALLOW_FILE, "strict": os.path.join(HERE, "licenses_strict.toml")}


def load_policy(name: str) -> LicensePolicy:
    """The shipped policy ``name`` from its configuration file (:data:`POLICIES`).

    Raises:
        ValueError: an unknown policy name, or a configuration file without an ``allow`` list.
    """
    if name not in POLICIES:
        raise InputError(f"unknown license policy {name!r}; known: {', '.join(POLICIES)}")
    with open(POLICIES[name], "rb") as f:
        raw = tomllib.load(f)
    if not isinstance(raw.get("allow"), list):
        raise InputError(f"{POLICIES[name]}: an 'allow' list of SPDX identifiers is required")
    return LicensePolicy(name, tuple(raw["allow"]), bool(raw.get("labels_must_agree", False)))


def _key(s: str) -> str:
    return " ".join(s.split()).lower()


@functools.lru_cache(maxsize=1)
def _aliases() -> tuple[dict[str, str], dict[str, str]]:
    with open(ALIASES_FILE, "rb") as f:
        raw = tomllib.load(f)
    classifiers = {}
    for k, v in raw["classifiers"].items():
        classifiers[_key(k)] = v
        if k.startswith("OSI Approved :: "):
            classifiers[_key(k[len("OSI Approved :: "):])] = v
    return classifiers, {_key(k): v for k, v in raw["text"].items()}


_TRAILING = re.compile(r"(?:^|\s)(AND|OR|WITH)\s*\)*\s*$", re.IGNORECASE)
_LEADING = re.compile(r"^\s*\(*\s*(AND|OR|WITH)(?:\s|$)", re.IGNORECASE)


def _parse_problem(expr: str, exc: Exception) -> str:
    m = _TRAILING.search(expr)
    if m:
        return f"unparsable (trailing {m.group(1).upper()})"
    m = _LEADING.search(expr)
    if m:
        return f"unparsable (leading {m.group(1).upper()})"
    m = re.search(r'token: "([^"]+)"', str(exc))
    if "cannot be used as an exception" in str(exc) and m:
        return f"unparsable ({m.group(1)[:50]} is not an SPDX exception)"
    if expr.count("(") != expr.count(")"):
        return "unparsable (unbalanced parentheses)"
    msg = str(exc).split(" for token:")[0].split(" as in:")[0].rstrip(".")
    return f"unparsable ({msg[:60]})"


@functools.lru_cache(maxsize=65536)
def _normalize_one(label: str) -> tuple[str | None, str | None]:
    s = label.strip()
    if not s:
        return None, "no license"
    if s.upper() in ("NOASSERTION", "NONE"):
        return None, s.upper()
    classifiers, text = _aliases()
    if s.lower().startswith("license ::"):
        rest = _key(s.split("::", 1)[1])
        if rest in classifiers:
            return classifiers[rest], None
        return None, f"unknown trove classifier ({s[:60]})"
    if _key(s) in text:
        return text[_key(s)], None
    try:
        node = _licensing.parse(s, validate=False, strict=True)
    except license_expression.ExpressionError as exc:
        return None, _parse_problem(s, exc)
    except Exception as exc:  # boolean.py raises its own ParseError subclasses  # noqa: BLE001
        return None, _parse_problem(s, exc)
    if node is None:
        return None, "no license"
    keys = [k for k in _leaves(node)]
    if any(" " in k for k in keys):
        return None, f"unrecognised free text ({s[:50]})"
    return str(node), None


def _as_list(label: str) -> list[str] | None:
    s = label.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            items = json.loads(s)
        except ValueError:
            return None
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            return items
        return None
    if _key(s) in _aliases()[1]:
        return None
    for sep in (";", ","):
        if sep in s:
            items = [x for x in s.split(sep) if x.strip()]
            if len(items) > 1 and all(_normalize_one(x)[1] is None and all(_known(k) for k in
                                      _leaves(_licensing.parse(_normalize_one(x)[0], validate=False)))
                                      for x in items):
                return items
    return None


def normalize(label: str | None) -> tuple[str | None, str | None]:
    """``(license_normalized, problem)`` for one raw license label (see the module docstring).

    ``license_normalized`` is an SPDX expression (SPDX list ids, ``LicenseRef-*`` kept) or None;
    ``problem`` is None or a short phrase: ``no license``, ``NOASSERTION``, ``unparsable (trailing OR)``,
    ``unknown trove classifier (…)``. A list of several licenses becomes ``A AND B`` (all apply).
    """
    if label is None:
        return None, "no license"
    items = _as_list(label)
    if items is None:
        return _normalize_one(label)
    norms = []
    for x in items:
        n, problem = _normalize_one(x)
        if problem is not None:
            return None, f"{problem} in list"
        norms.append(n if " " not in n else f"({n})")
    if not norms:
        return None, "no license"
    uniq = list(dict.fromkeys(norms))
    return " AND ".join(uniq), None


def header_license(text: str | None) -> str | None:
    """The raw value of the first ``SPDX-License-Identifier:`` line in the first 4 KiB of ``text``, or None."""
    if not text:
        return None
    m = HEADER_RE.search(text[:HEADER_SCAN_CHARS])
    return m.group(1).strip() or None if m else None


def _known(key: str) -> bool:
    return key.startswith("LicenseRef-") or not _licensing.unknown_license_keys(key)


def unknown_ids(ids) -> list[str]:
    """The entries of ``ids`` (allow-list additions) that are neither SPDX license ids (license-expression's
    SPDX list, deprecated ids included) nor ``LicenseRef-*``: likely typos such as ``MTI``. Order kept."""
    out = []
    for i in ids:
        try:
            ok = _known(i)
        except Exception:  # not even an expression
            ok = False
        if not ok:
            out.append(i)
    return out


def _evaluate(node, allow: frozenset[str]) -> tuple[bool, str]:
    """``(passes, why it fails or '')`` of a parsed expression."""
    if isinstance(node, license_expression.LicenseWithExceptionSymbol):
        return _evaluate(node.license_symbol, allow)
    if isinstance(node, license_expression.LicenseSymbol):
        if node.key.lower() in allow:
            return True, ""
        return False, (f"{node.key} not in allow-list" if _known(node.key) else f"unknown identifier {node.key}")
    results = [_evaluate(a, allow) for a in node.args]
    if isinstance(node, _licensing.OR):
        if any(ok for ok, _ in results):
            return True, ""
        leaves = list(dict.fromkeys(k for a in node.args for k in _leaves(a)))
        return False, f"no OR branch allowed ({', '.join(leaves[:4])}{', …' if len(leaves) > 4 else ''})"
    for a, (ok, why) in zip(node.args, results):  # AND
        if not ok:
            if isinstance(a, (license_expression.LicenseSymbol, license_expression.LicenseWithExceptionSymbol)):
                key = _leaves(a)[0]
                return False, f"{key} in AND" if _known(key) else f"unknown identifier {key} in AND"
            return False, f"{why} in AND"
    return True, ""


def _leaves(node) -> list[str]:
    if isinstance(node, license_expression.LicenseWithExceptionSymbol):
        return _leaves(node.license_symbol)
    if isinstance(node, license_expression.LicenseSymbol):
        return [node.key]
    return [k for a in getattr(node, "args", ()) for k in _leaves(a)]


@functools.lru_cache(maxsize=65536)
def _decide_normalized(norm: str, allow: frozenset[str]) -> tuple[bool, str]:
    ok, why = _evaluate(_licensing.parse(norm, validate=False, strict=True), allow)
    return ok, "pass: on the allow-list" if ok else f"fail: {why}"


def decide(label: str | None, policy: LicensePolicy, header: str | None = None) -> tuple[bool, str | None, str]:
    """``(passes, license_normalized, reason)`` of one document under ``policy``.

    Args:
        label: the record's raw license label (``documents.license``).
        header: the raw SPDX header of the file (:func:`header_license`); only read when the policy has
            ``labels_must_agree``.
    Returns:
        reasons such as ``pass: on the allow-list``, ``fail: no license``, ``fail: unparsable (trailing OR)``,
        ``fail: MPL-2.0 not in allow-list``, ``fail: GPL-3.0-only in AND``, ``fail: no OR branch allowed (…)``,
        ``fail: unknown identifier Foo``, ``fail: labels disagree (header Apache-2.0, package GPL-2.0)``.
    """
    norm, problem = normalize(label)
    if problem is not None:
        return False, norm, f"fail: {problem}"
    allow = frozenset(a.lower() for a in policy.allow)
    ok, reason = _decide_normalized(norm, allow)
    if ok and policy.labels_must_agree and header is not None:
        hnorm, _ = normalize(header)
        if hnorm != norm:
            return False, norm, f"fail: labels disagree (header {header[:60]}, package {label.strip()[:60]})"
    return ok, norm, reason


def license_passes(expr: str | None, allow: tuple[str, ...] | frozenset[str] | None = None) -> bool:
    """True when ``expr`` passes the allow-list ``allow`` (default: the shipped ``permissive`` list)."""
    return license_decision(expr, allow)[0]


def license_decision(expr: str | None, allow: tuple[str, ...] | frozenset[str] | None = None) -> tuple[bool, str]:
    """``(passes, reason)`` of one label under an allow-list without label checks (:func:`decide`)."""
    policy = LicensePolicy("allow-list", tuple(default_allow_list() if allow is None else allow), False)
    ok, _, reason = decide(expr, policy)
    return ok, reason


# --------------------------------------------------------------------------------------------------
# License policy: lower tier = more permissive = preferred copy
# --------------------------------------------------------------------------------------------------
#: Tiers of the keep policy, most permissive first (:func:`license_rank` gives the index). The first two
#: tiers are the expressions the license filter passes (:func:`license_passes` with the
#: same allow-list, SPEC §2), so a copy the filter keeps is never dropped for a copy the filter drops for its
#: license. Below them, every expression gets a *kind* from :data:`LICENSE_PATTERNS` (each identifier,
#: case-insensitive, takes the kind of the first fnmatch pattern it matches, else ``other``; ``A OR B`` takes
#: the better branch, since the user may choose it; ``A AND B`` the worse, since both apply; ``A WITH
#: exception`` the kind of ``A``; missing, ``NOASSERTION``/``NONE`` and unparsable labels are ``unknown``):
#:
#: 0 ``public-domain``: passes the allow-list, kind public-domain (CC0-1.0, Unlicense, 0BSD, …)
#: 1 ``permissive``: passes the allow-list otherwise (MIT, BSD-3-Clause, Apache-2.0, …)
#: 2 ``permissive-unlisted``: kind public-domain or permissive but not on the allow-list (PSF-2.0,
#:   PostgreSQL, Zlib, LicenseRef-BSD-unspecified, WTFPL, …)
#: 3 ``weak-copyleft`` (LGPL, MPL, EPL, CDDL, GFDL, CC-BY-SA, …), 4 ``copyleft`` (GPL, AGPL, …),
#: 5 ``other``, 6 ``unknown``.
LICENSE_TIERS = ("public-domain", "permissive", "permissive-unlisted", "weak-copyleft", "copyleft", "other",
                 "unknown")
_KINDS = ("public-domain", "permissive", "weak-copyleft", "copyleft", "other", "unknown")
LICENSE_PATTERNS: tuple[tuple[str, str], ...] = (
    # unknown / no usable statement
    ("noassertion", "unknown"), ("none", "unknown"), ("licenseref-no-license", "unknown"),
    ("licenseref-unknown*", "unknown"),
    # public domain and public-domain-like dedications
    ("cc0-1.0", "public-domain"), ("unlicense", "public-domain"), ("0bsd", "public-domain"),
    ("mit-0", "public-domain"), ("wtfpl", "public-domain"), ("pddl-1.0", "public-domain"),
    ("cc-pddc", "public-domain"), ("public-domain", "public-domain"), ("licenseref-public-domain*", "public-domain"),
    ("licenseref-pd*", "public-domain"), ("*-pd", "public-domain"), ("sax-pd*", "public-domain"),
    ("blessing", "public-domain"),
    # restricted Creative Commons variants before the generic CC-BY patterns
    ("cc-by-nc*", "other"), ("cc-by-nd*", "other"),
    ("cc-by-sa*", "weak-copyleft"),
    # permissive (SPEC §2's allow-list and its relatives)
    ("mit", "permissive"), ("mit-*", "permissive"), ("x11", "permissive"), ("isc", "permissive"),
    ("bsd-*", "permissive"), ("licenseref-bsd*", "permissive"), ("apache-*", "permissive"),
    ("artistic-2.0", "permissive"), ("ecl-2.0", "permissive"), ("shl-0.5*", "permissive"),
    ("psf-2.0", "permissive"), ("python-2.0*", "permissive"), ("postgresql", "permissive"),
    ("zlib", "permissive"), ("curl", "permissive"), ("bsl-1.0", "permissive"), ("ncsa", "permissive"),
    ("upl-1.0", "permissive"), ("afl-*", "permissive"), ("w3c*", "permissive"), ("libpng*", "permissive"),
    ("ijg", "permissive"), ("hpnd*", "permissive"), ("unicode-*", "permissive"), ("ofl-*", "permissive"),
    ("cc-by-[0-9]*", "permissive"), ("linux-openib", "permissive"), ("fsfap", "permissive"),
    ("fsfullr*", "permissive"), ("fsful", "permissive"), ("licenseref-fsful*", "permissive"),
    ("*-permissive", "permissive"), ("json", "permissive"), ("beerware", "permissive"),
    # weak copyleft (file- or library-scoped) and documentation copyleft
    ("lgpl-*", "weak-copyleft"), ("licenseref-lgpl*", "weak-copyleft"), ("mpl-*", "weak-copyleft"),
    ("epl-*", "weak-copyleft"), ("cddl-*", "weak-copyleft"), ("artistic-1.0*", "weak-copyleft"),
    ("gfdl-*", "weak-copyleft"), ("linux-man-pages-copyleft*", "weak-copyleft"),
    ("licenseref-opl*", "weak-copyleft"), ("opl-*", "weak-copyleft"),
    # strong copyleft
    ("gpl-*", "copyleft"), ("licenseref-gpl*", "copyleft"), ("agpl-*", "copyleft"), ("eupl-*", "copyleft"),
    ("osl-*", "copyleft"), ("sspl-*", "copyleft"),
)


@functools.lru_cache(maxsize=4096)
def _leaf_kind(key: str) -> int:
    k = key.strip().lower()
    for pattern, kind in LICENSE_PATTERNS:
        if fnmatch.fnmatchcase(k, pattern):
            return _KINDS.index(kind)
    return _KINDS.index("other")


def license_kind(expr: str | None) -> str:
    """The kind of an SPDX expression from :data:`LICENSE_PATTERNS` alone (no allow-list): one of
    ``public-domain, permissive, weak-copyleft, copyleft, other, unknown``."""
    return _KINDS[_kind_index(expr)]


@functools.lru_cache(maxsize=65536)
def _kind_index(expr: str | None) -> int:
    unknown = _KINDS.index("unknown")
    if expr is None or not expr.strip():
        return unknown
    try:
        node = _plain_licensing().parse(expr, validate=False, strict=False)
    except license_expression.ExpressionError:
        return unknown
    if node is None:
        return unknown

    def walk(n) -> int:
        if isinstance(n, license_expression.LicenseWithExceptionSymbol):
            return walk(n.license_symbol)
        if isinstance(n, license_expression.LicenseSymbol):
            return _leaf_kind(n.key)
        kinds = [walk(a) for a in n.args]
        return min(kinds) if isinstance(n, _plain_licensing().OR) else max(kinds)

    return walk(node)


def license_rank(expr: str | None, allow: tuple[str, ...] | None = None) -> int:
    """Keep-policy rank of an SPDX license expression: index into :data:`LICENSE_TIERS` (0 = best).

    Args:
        expr: an SPDX expression as found in the corpus (``"MIT"``, ``"GPL-2.0 OR BSD-3-Clause"``,
            ``"NOASSERTION"``, ``None`` …). Operators are case-insensitive.
        allow: the license filter's allow-list (SPDX ids); default the shipped list
            (``xgen_data/attributes/licenses.toml``, SPEC §2). Pass a recipe's ``allow_list()`` to stay consistent
            with that recipe's filter.
    Returns:
        0 (public-domain) … 6 (unknown); see :data:`LICENSE_TIERS` for the rules.
    """
    allow = default_allow_list() if allow is None else tuple(allow)
    return _rank(expr, allow)


@functools.lru_cache(maxsize=65536)
def _rank(expr: str | None, allow: tuple[str, ...]) -> int:
    kind = _KINDS[_kind_index(expr)]
    passes = False
    if allow:
        passes = license_passes(expr, allow)
    if passes:
        return LICENSE_TIERS.index("public-domain" if kind == "public-domain" else "permissive")
    if kind in ("public-domain", "permissive"):
        return LICENSE_TIERS.index("permissive-unlisted")
    return LICENSE_TIERS.index(kind)


@functools.lru_cache(maxsize=1)
def _plain_licensing():
    """The keep tiers parse with plain (not SPDX-aware) licensing, leniently: kinds come from the patterns."""
    return license_expression.Licensing()


# --------------------------------------------------------------------------------------------------
# The ``license`` attribute set's key
# --------------------------------------------------------------------------------------------------
LICENSE_SCHEMA_VERSION = 2  # 2: license_normalized column, policy reasons (decide)


def license_params(allow, labels_must_agree: bool = False) -> dict:
    """Attribute parameters of the ``license`` step for a policy: its allow-list (order and duplicates do not
    matter) and its label check; sets of the previous schema are recomputed."""
    return {"allow": sorted(set(allow)), "labels_must_agree": bool(labels_must_agree),
            "schema": LICENSE_SCHEMA_VERSION}
