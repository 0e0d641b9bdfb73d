"""MinHash signatures of word n-gram shingles, vectorised with NumPy, bit-identical to datasketch 2.0.

This module holds the math of near-duplicate detection (SPEC §2, StarCoder's setting: word 5-grams,
256 permutations, Jaccard threshold 0.7); :mod:`xgen_data.attributes.dedup` runs it over a corpus.

Text → words → shingles (stated here once, used by signatures, the evaluation and the tests):

* **Exact-dedup normalisation** (:func:`normalize_text`): Unicode NFC; ``\\r\\n`` and ``\\r`` → ``\\n``;
  trailing spaces/tabs at the end of every line removed; leading and trailing whitespace of the document
  removed. Only differences that do not change what a reader sees are erased; case, punctuation and
  inner whitespace are kept. :func:`content_hash` is BLAKE2b-128 of the UTF-8 bytes of that text.
* **Words** (:func:`words`): the NFC text, lower-cased, cut into maximal runs of letters, digits, combining
  marks and ``_`` (any script in the Basic Multilingual Plane, so Cyrillic, Greek, Arabic, Devanagari with
  its vowel signs, Hangul … are words as written). Scripts written without spaces between words (Han,
  Hiragana, Katakana, Bopomofo, Thai, Lao, Khmer, Myanmar; CJK ideographs outside the BMP too) give one
  word per character (with its combining marks), so Chinese and Japanese text is shingled by character
  n-grams. Everything else (punctuation, symbols, emoji, whitespace) separates words. Because every
  change :func:`normalize_text` makes is invisible to this tokenisation, texts with equal content hashes
  have equal word sequences, hence equal signatures: exact and near dedup agree on exact copies.
* **Shingles** (:func:`shingles`): every run of ``ngram`` consecutive words joined by one space, as UTF-8
  bytes. A document with 1 to ``ngram - 1`` words has exactly one shingle, all its words (so two short
  documents match only when their words are equal); a document with no word has no shingle and no
  signature (it takes part in exact dedup only).

Signatures follow datasketch's ``MinHash(num_perm, seed, scheme=...)`` updated with those shingle bytes:
each shingle is hashed with ``sha1_hash32`` (first 4 bytes of SHA-1, little-endian; ``sha1_hash64`` for
``affine64``), the permutation parameters are drawn from ``np.random.RandomState(seed)`` exactly as
datasketch draws them, and

* ``affine32`` (datasketch 2.0's default): ``h' = fmix32(h)`` (MurmurHash3 finalizer), value
  ``a·h' + b mod 2^32`` per permutation, stored as uint32;
* ``affine64``: the same over 64 bits with ``sha1_hash64`` and ``fmix64``, stored as uint64;
* ``legacy`` (datasketch before 2.0): ``((a·h + b) mod 2^64) mod (2^61 − 1)``, low 32 bits, stored as uint64.

A signature is the element-wise minimum over the document's shingles; a document without shingles keeps
datasketch's empty value (all ``max_hash``). Here the hashing loop runs once per shingle in C (hashlib),
and the permutations run as one ``(shingles × num_perm)`` NumPy product per chunk, reduced per document
with ``np.minimum.reduceat``.

LSH banding (:func:`optimal_bands_rows`, :func:`band_hashes`) follows datasketch's ``MinHashLSH``: band
``i`` is signature rows ``[i·r, (i+1)·r)``; two documents are candidates when any band is equal.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

SCHEMES = ("affine32", "affine64", "legacy")
DEFAULT_SCHEME = "affine32"
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint64((1 << 32) - 1)
#: Shingles per NumPy chunk of the permutation product (chunk × num_perm values, 8 MiB at 256 uint32).
CHUNK_SHINGLES = 8192

# --------------------------------------------------------------------------------------------------
# Text normalisation and words
# --------------------------------------------------------------------------------------------------

#: Scripts tokenised one character per word (written without spaces between words), as BMP ranges.
_CHAR_SCRIPTS = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007), (0x3021, 0x3029), (0x3038, 0x303B),  # ideographic iteration marks and numerals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F), (0x31A0, 0x31FF),  # Bopomofo, Katakana phonetic extensions
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),  # CJK ideographs (ext. A, unified, compatibility)
    (0xFF66, 0xFF9F),  # half-width Katakana
)


def _class(ranges: list[tuple[int, int]]) -> str:
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def _ranges(pred) -> list[tuple[int, int]]:
    out, start = [], None
    for cp in range(0x10000):
        if pred(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0xFFFF))
    return out


@lru_cache(maxsize=1)
def word_regex() -> re.Pattern:
    """The compiled word pattern (see module docstring), built once from :mod:`unicodedata`.

    BMP-only character classes compile to bitmaps in :mod:`re`, so matching costs O(1) per character.
    """
    split = np.zeros(0x10000, dtype=bool)
    for a, b in _CHAR_SCRIPTS:
        split[a:b + 1] = True
    cat = [unicodedata.category(chr(c))[0] for c in range(0x10000)]
    word = _ranges(lambda c: (cat[c] in "LNM" or c == 0x5F) and not split[c])
    char = _ranges(lambda c: cat[c] in "LN" and split[c])
    mark = _ranges(lambda c: cat[c] == "M")
    return re.compile(f"[{_class(word)}]+|[{_class(char)}\U00020000-\U0003FFFF][{_class(mark)}]*")


def normalize_text(text: str) -> str:
    """The text that exact dedup hashes: NFC, LF line ends, no trailing blanks per line, stripped.

    Args:
        text: a document (``str``; ``None`` is treated as empty).
    Returns:
        The normalised ``str`` (see the module docstring for the rules and why they are safe).
    """
    if not text:
        return ""
    return normalize_nfc(nfc(text))


def nfc(text: str) -> str:
    """``unicodedata.normalize("NFC", text)``, skipped for ASCII text (NFC leaves ASCII unchanged)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def normalize_nfc(text: str) -> str:
    """:func:`normalize_text` of a text that is already NFC (the steps after NFC)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # only blank runs right before "\n" go: skip the work when there is none; per line, rstrip of the four
    # blanks equals the regex ``[ \t\f\v]+(?=\n)`` (the last line's tail goes with ``strip`` anyway) at ~10x
    # the regex's speed
    if " \n" in text or "\t\n" in text or "\f\n" in text or "\v\n" in text:
        text = "\n".join([line.rstrip(" \t\f\v") for line in text.split("\n")])
    return text.strip()


def content_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of ``normalize_text(text)`` in UTF-8: the exact-dedup key."""
    return hashlib.blake2b(normalize_text(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def content_hash_nfc(text: str) -> bytes:
    """:func:`content_hash` of a text that is already NFC (:func:`nfc`): no second normalisation pass."""
    return hashlib.blake2b(normalize_nfc(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` after NFC (see module docstring), in order; ``[]`` when none."""
    if not text:
        return []
    return word_regex().findall(unicodedata.normalize("NFC", text).lower())


def _grams(ws: list[str], ngram: int):
    if len(ws) >= ngram:
        if ngram == 5:  # the default, spelled out: zip of 5 shifted lists is the fastest pure-Python way
            return map(" ".join, zip(ws, ws[1:], ws[2:], ws[3:], ws[4:]))
        return map(" ".join, zip(*(ws[i:] for i in range(ngram))))
    return iter((" ".join(ws),) if ws else ())


def shingles(text: str, ngram: int = 5) -> list[bytes]:
    """Word ``ngram``-gram shingles of ``text`` as UTF-8 bytes, in document order (repeats kept).

    MinHash uses the set of these; order and repeats do not change a signature. A text with fewer than
    ``ngram`` words (but at least one) gives one shingle of all its words; a text with none gives ``[]``.
    """
    return [g.encode("utf-8", "surrogatepass") for g in _grams(words(text), ngram)]


# --------------------------------------------------------------------------------------------------
# Permutations and signatures
# --------------------------------------------------------------------------------------------------
def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def sig_dtype(scheme: str) -> np.dtype:
    """Storage dtype of signature values: uint32 for ``affine32``, uint64 otherwise (as datasketch)."""
    _check_scheme(scheme)
    return np.dtype(np.uint32) if scheme == "affine32" else np.dtype(np.uint64)


def empty_value(scheme: str) -> int:
    """Signature value of a document without shingles (datasketch's initial ``hashvalues``)."""
    _check_scheme(scheme)
    return (1 << 64) - 1 if scheme == "affine64" else (1 << 32) - 1


@dataclass(frozen=True)
class Permutations:
    """Permutation parameters ``a``, ``b`` (each shape ``(num_perm,)``), drawn as datasketch draws them.

    ``Permutations.make(num_perm, seed, scheme)`` equals ``datasketch.MinHash(num_perm, seed,
    scheme=scheme).permutations`` element for element.
    """

    a: np.ndarray
    b: np.ndarray
    scheme: str
    seed: int

    @property
    def num_perm(self) -> int:
        return len(self.a)

    @classmethod
    def make(cls, num_perm: int, seed: int, scheme: str = DEFAULT_SCHEME) -> "Permutations":
        """Draw the parameters from ``np.random.RandomState(seed)`` (datasketch 2.0 ``_init_permutations``).

        Raises:
            ValueError: ``num_perm < 1``, a seed outside ``[0, 2**32)``, or an unknown scheme.
        """
        _check_scheme(scheme)
        if not isinstance(num_perm, (int, np.integer)) or num_perm < 1:
            raise ValueError(f"num_perm must be a positive integer, got {num_perm!r}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 1 << 32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        gen = np.random.RandomState(seed)
        if scheme == "legacy":
            ab = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                            gen.randint(0, MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                          dtype=np.uint64).T
            return cls(ab[0].copy(), ab[1].copy(), scheme, int(seed))
        width = 32 if scheme == "affine32" else 64
        dt = np.uint32 if width == 32 else np.uint64
        a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dt) * dt(2) + dt(1)
        b = gen.randint(0, 1 << width, num_perm, dtype=dt)
        return cls(a, b, scheme, int(seed))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def hash_shingle_lists(shingle_lists: Sequence[Sequence[bytes]], scheme: str = DEFAULT_SCHEME
                       ) -> tuple[np.ndarray, np.ndarray]:
    """SHA-1 hash every shingle of every document (datasketch's ``sha1_hash32`` / ``sha1_hash64``).

    Returns:
        ``(hashes, offsets)``: ``hashes`` uint32 (uint64 for ``affine64``) of shape ``(total shingles,)``;
        ``offsets`` int64 of shape ``(n_docs + 1,)``, document ``i`` owning ``hashes[offsets[i]:offsets[i+1]]``.
    """
    nbytes = 8 if scheme == "affine64" else 4
    sha1 = hashlib.sha1
    blobs = [b"".join([sha1(s).digest()[:nbytes] for s in doc]) for doc in shingle_lists]
    return _pack(blobs, nbytes)


def _pack(blobs: list[bytes], nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) // nbytes for b in blobs], out=offsets[1:])
    hashes = np.frombuffer(b"".join(blobs), dtype="<u4" if nbytes == 4 else "<u8")
    return hashes.astype(np.uint32 if nbytes == 4 else np.uint64, copy=False), offsets


def _text_hashes(texts: Sequence[str | None], ngram: int, nbytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words → shingles → SHA-1 prefixes for a batch of texts, in one tight loop (the hot path)."""
    sha1 = hashlib.sha1
    rx = word_regex()
    nfc = unicodedata.normalize
    blobs, n_words = [], np.zeros(len(texts), dtype=np.int32)
    for i, text in enumerate(texts):
        ws = rx.findall(nfc("NFC", text).lower()) if text else []
        n_words[i] = len(ws)
        blobs.append(b"".join([sha1(g.encode("utf-8", "surrogatepass")).digest()[:nbytes]
                               for g in _grams(ws, ngram)]))
    hashes, offsets = _pack(blobs, nbytes)
    return hashes, offsets, n_words


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, perms: Permutations,
                           chunk: int = CHUNK_SHINGLES) -> np.ndarray:
    """MinHash signatures from shingle hashes grouped by document.

    Args:
        hashes: shape ``(total,)``, uint32 (uint64 for ``affine64``): the shingles' SHA-1 hashes.
        offsets: int64 shape ``(n_docs + 1,)``, non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == total``.
        perms: the permutations (their scheme decides the arithmetic, see module docstring).
        chunk: shingles per NumPy product (memory ``chunk × num_perm`` values).
    Returns:
        shape ``(n_docs, num_perm)``, dtype :func:`sig_dtype`; documents without shingles are all
        :func:`empty_value`. Equal to datasketch's ``MinHash.hashvalues`` for the same shingles.
    """
    n_docs = len(offsets) - 1
    dt = sig_dtype(perms.scheme)
    sig = np.full((n_docs, perms.num_perm), empty_value(perms.scheme), dtype=dt)
    total = int(offsets[-1]) if n_docs else 0
    if total == 0:
        return sig
    if perms.scheme == "affine32":
        hv = _fmix32(hashes.astype(np.uint32, copy=False))
    elif perms.scheme == "affine64":
        hv = _fmix64(hashes.astype(np.uint64, copy=False))
    else:
        hv = hashes.astype(np.uint64, copy=False)
    # Layout (num_perm, chunk): each permutation row is one contiguous SIMD loop over the chunk's shingles,
    # and np.minimum.reduceat along the last axis reduces contiguous runs (the (chunk, num_perm) layout is
    # several times slower in NumPy).
    a, b = perms.a[:, None], perms.b[:, None]
    buf = np.empty((perms.num_perm, min(chunk, total)), dtype=dt)
    hi_buf = np.empty_like(buf) if perms.scheme == "legacy" else None
    starts_all, ends_all = offsets[:-1], offsets[1:]
    with np.errstate(over="ignore"):
        for s in range(0, total, chunk):
            e = min(s + chunk, total)
            out = buf[:, : e - s]
            np.multiply(a, hv[None, s:e], out=out)
            np.add(out, b, out=out)
            if perms.scheme == "legacy":
                # x mod (2^61 - 1) without division: 2^61 ≡ 1, so x ≡ (x & p) + (x >> 61) < p + 8
                hi = hi_buf[:, : e - s]
                np.right_shift(out, np.uint64(61), out=hi)
                np.bitwise_and(out, MERSENNE_PRIME, out=out)
                np.add(out, hi, out=out)
                np.subtract(out, MERSENNE_PRIME, out=out, where=out >= MERSENNE_PRIME)
                np.bitwise_and(out, MAX_HASH32, out=out)
            # documents overlapping [s, e): each is one contiguous segment of the chunk
            d0 = int(np.searchsorted(ends_all, s, side="right"))
            d1 = int(np.searchsorted(starts_all, e, side="left"))
            lo = np.maximum(starts_all[d0:d1], s)
            hi = np.minimum(ends_all[d0:d1], e)
            has = hi > lo
            docs = np.nonzero(has)[0] + d0
            mins = np.minimum.reduceat(out, lo[has] - s, axis=1).T
            sig[docs] = np.minimum(sig[docs], mins)
    return sig


class MinHasher:
    """Text → MinHash signatures with fixed parameters (SPEC §2 defaults; datasketch-compatible).

    Args:
        num_perm: permutations (signature length), ≥ 1. Default 256 (StarCoder).
        seed: permutation seed in ``[0, 2**32)``, as datasketch's ``seed``. Default 1.
        ngram: words per shingle, ≥ 1. Default 5 (StarCoder).
        scheme: ``affine32`` (datasketch 2.0 default), ``affine64`` or ``legacy``.
        compiled: use the Numba kernels of :mod:`xgen_data.attributes.minhash_jit` (default; words, shingles, SHA-1 and
            permutations compiled, no Python per shingle); False = the NumPy path of this module (hashlib per
            shingle, one NumPy product per chunk). Both give identical signatures (tested).
    Raises:
        ValueError: a parameter out of range.
    """

    def __init__(self, num_perm: int = 256, seed: int = 1, ngram: int = 5, scheme: str = DEFAULT_SCHEME,
                 compiled: bool = True):
        if not isinstance(ngram, (int, np.integer)) or ngram < 1:
            raise ValueError(f"ngram must be a positive integer, got {ngram!r}")
        self.perms = Permutations.make(num_perm, seed, scheme)
        self.num_perm, self.seed, self.ngram, self.scheme = int(num_perm), int(seed), int(ngram), scheme
        self._nbytes = 8 if scheme == "affine64" else 4
        self.compiled = bool(compiled)

    def signatures(self, texts: Sequence[str | None], nfc_done: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Signatures of a batch of texts (``nfc_done``: they are already NFC, see :func:`nfc`; saves a pass).

        Returns:
            ``(sig, n_words)``: ``sig`` shape ``(len(texts), num_perm)`` (dtype :func:`sig_dtype`);
            ``n_words`` int32 shape ``(len(texts),)``, 0 for a document without words (its row is empty).
        """
        if self.compiled:
            from xgen_data.attributes import minhash_jit

            return minhash_jit.signatures(texts, self.perms, self.ngram, nfc_done)
        hashes, offsets, n_words = _text_hashes(texts, self.ngram, self._nbytes)
        return signatures_from_hashes(hashes, offsets, self.perms), n_words

    def signature(self, text: str) -> np.ndarray:
        """Signature of one text, shape ``(num_perm,)``."""
        return self.signatures([text])[0][0]


# --------------------------------------------------------------------------------------------------
# LSH banding
# --------------------------------------------------------------------------------------------------
def collision_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents of Jaccard similarity ``s`` share ≥ 1 band) = ``1 − (1 − s^rows)^bands``."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def optimal_bands_rows(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)
                       ) -> tuple[int, int]:
    """Bands and rows minimising weighted false-positive + false-negative area (datasketch ``MinHashLSH``).

    Same search as datasketch's ``_optimal_param``: every ``b`` in ``1..num_perm`` and ``r`` in
    ``1..num_perm // b``; error = ``w_fp·∫_0^t P(s) ds + w_fn·∫_t^1 (1 − P(s)) ds`` with
    ``P = collision_probability``; the first minimum in ``(b, r)`` order wins. The integrands are
    polynomials of degree ``b·r ≤ num_perm``, so Gauss–Legendre quadrature with ``num_perm // 2 + 1``
    nodes is exact (datasketch uses ``scipy.integrate.quad``; the choice agrees, see the tests).

    Args:
        threshold: Jaccard threshold in (0, 1). num_perm: ≥ 2. weights: (false positive, false negative).
    Returns:
        ``(bands, rows)`` with ``bands · rows ≤ num_perm``. For ``(0.7, 256)``: ``(25, 10)``.
    Raises:
        ValueError: threshold or num_perm out of range.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be >= 2 for LSH, got {num_perm!r}")
    x, w = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    # nodes on [0, t] and [t, 1]
    s_lo = (x + 1) * threshold / 2
    s_hi = threshold + (x + 1) * (1 - threshold) / 2
    best, opt = np.inf, (0, 0)
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]
        fp = (1 - (1 - s_lo[None, :] ** r) ** b) @ w * threshold / 2
        fn = ((1 - s_hi[None, :] ** r) ** b) @ w * (1 - threshold) / 2
        err = fp * weights[0] + fn * weights[1]
        i = int(np.argmin(err))
        if err[i] < best:
            best, opt = float(err[i]), (b, i + 1)
    return opt


_BAND_SEED = np.uint64(0x9E3779B97F4A7C15)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit hash of each band of each signature.

    Args:
        sig: shape ``(n, num_perm)``, uint32 or uint64, with ``bands · rows ≤ num_perm``.
    Returns:
        uint64 shape ``(n, bands)``: column ``i`` hashes rows ``[i·rows, (i+1)·rows)`` by chaining the
        MurmurHash3 64-bit finalizer (equal bands → equal hashes; unequal bands collide with probability
        about 2^-64 per pair, negligible next to LSH's own false-positive rate).
    Raises:
        ValueError: the bands do not fit in the signature.
    """
    n, num_perm = sig.shape
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(f"bands × rows must be ≤ num_perm ({num_perm}), got {bands} × {rows}")
    v = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.broadcast_to((np.arange(1, bands + 1, dtype=np.uint64) * _BAND_SEED)[None, :], (n, bands)).copy()
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = _fmix64(h ^ v[:, :, j]) + _BAND_SEED
    return h
