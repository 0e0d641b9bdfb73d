"""Compiled MinHash kernels (Numba): words → shingles → SHA-1 → permutations, no Python per shingle.

The same math as :mod:`xgen_data.minhash` (which states the rules once and checks the result against
datasketch): the word split of :func:`xgen_data.minhash.word_regex` as a per-code-point class table, each
shingle the UTF-8 bytes of ``ngram`` consecutive words joined by one space, hashed with SHA-1 (FIPS 180-4)
and cut to datasketch's ``sha1_hash32`` (first 4 digest bytes, little-endian) or ``sha1_hash64`` (first 8),
then the permutations of the scheme and a running minimum per document.

What stays in Python per document is C-speed string work: ``unicodedata.normalize("NFC", text).lower()``
(exactly what :func:`xgen_data.minhash.words` does) and one UTF-32 encode of the batch. The kernels are
compiled lazily on first use and cached on disk (``cache=True``; Numba's cache directory, ``NUMBA_CACHE_DIR``
to move it): nothing is compiled at install time.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Sequence

import numba as nb
import numpy as np

#: Code point classes of the table (:func:`class_table`): bit flags.
WORD, CHAR, MARK = 1, 2, 4
_M32 = 0xFFFFFFFF


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """Class of every BMP code point for the word split, uint8 shape ``(65536,)``.

    Bit :data:`WORD`: in a word run (letters, digits, marks, ``_`` outside the one-character scripts);
    :data:`CHAR`: a one-character word (letter or digit of a script written without spaces); :data:`MARK`:
    a combining mark (joins the preceding one-character word). Built from the same ranges and
    :mod:`unicodedata` categories as :func:`xgen_data.minhash.word_regex`; outside the BMP, U+20000–U+3FFFF are
    one-character words and everything else separates (the kernel hard-codes that).
    """
    from xgen_data import minhash

    split = np.zeros(0x10000, dtype=bool)
    for a, b in minhash._CHAR_SCRIPTS:
        split[a:b + 1] = True
    t = np.zeros(0x10000, dtype=np.uint8)
    for c in range(0x10000):
        cat = unicodedata.category(chr(c))[0]
        if (cat in "LNM" or c == 0x5F) and not split[c]:
            t[c] |= WORD
        if cat in "LN" and split[c]:
            t[c] |= CHAR
        if cat == "M":
            t[c] |= MARK
    return t



jit = nb.njit(cache=True, nogil=True, boundscheck=False)
# helpers are inlined into the kernels at Numba IR level: a call that passes arrays would cost reference
# count updates per shingle (measured: ~3x slower SHA-1)
inline = nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")

@inline
def rotl(x, n):
    return np.uint32((x << np.uint32(n)) | (x >> np.uint32(32 - n)))

@inline
def compress(data, off, st, w):
    """One SHA-1 block (64 bytes of ``data`` from ``off``) into the state ``st`` (5 uint32, FIPS 180-4).

    uint32 throughout (every sum truncated with ``np.uint32``): ~30% faster than masked 64-bit words.
    """
    for t in range(16):
        q = off + 4 * t
        w[t] = np.uint32((np.uint32(data[q]) << np.uint32(24)) | (np.uint32(data[q + 1]) << np.uint32(16))
                         | (np.uint32(data[q + 2]) << np.uint32(8)) | np.uint32(data[q + 3]))
    compress_w(st, w)

@inline
def compress_w(st, w):
    """SHA-1 compression of the block whose 16 big-endian words are already in ``w[0:16]``."""
    for t in range(16, 80):
        w[t] = rotl(np.uint32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]), 1)
    a, b, c, d, e = st[0], st[1], st[2], st[3], st[4]
    for t in range(0, 20):
        tmp = np.uint32(rotl(a, 5) + np.uint32((b & c) | (~b & d)) + e + np.uint32(0x5A827999) + w[t])
        e, d, c, b, a = d, c, rotl(b, 30), a, tmp
    for t in range(20, 40):
        tmp = np.uint32(rotl(a, 5) + np.uint32(b ^ c ^ d) + e + np.uint32(0x6ED9EBA1) + w[t])
        e, d, c, b, a = d, c, rotl(b, 30), a, tmp
    for t in range(40, 60):
        tmp = np.uint32(rotl(a, 5) + np.uint32((b & c) | (b & d) | (c & d)) + e + np.uint32(0x8F1BBCDC) + w[t])
        e, d, c, b, a = d, c, rotl(b, 30), a, tmp
    for t in range(60, 80):
        tmp = np.uint32(rotl(a, 5) + np.uint32(b ^ c ^ d) + e + np.uint32(0xCA62C1D6) + w[t])
        e, d, c, b, a = d, c, rotl(b, 30), a, tmp
    st[0] = np.uint32(st[0] + a)
    st[1] = np.uint32(st[1] + b)
    st[2] = np.uint32(st[2] + c)
    st[3] = np.uint32(st[3] + d)
    st[4] = np.uint32(st[4] + e)

@inline
def sha1_prefix(buf, s, e, w, st):
    """First 8 digest bytes of SHA-1(buf[s:e]) as (H0, H1), big-endian uint32 words."""
    length = e - s
    st[0] = 0x67452301
    st[1] = 0xEFCDAB89
    st[2] = 0x98BADCFE
    st[3] = 0x10325476
    st[4] = 0xC3D2E1F0
    full = length // 64
    for bi in range(full):
        compress(buf, s + 64 * bi, st, w)
    rem = length - 64 * full
    nblk = 1 if rem < 56 else 2
    base = s + 64 * full
    bits = np.uint64(length) * np.uint64(8)
    # the padded tail (FIPS 180-4 §5.1.1) as words, straight from ``buf``: no scratch copy
    for bi in range(nblk):
        for t in range(16):
            j0 = 64 * bi + 4 * t
            if j0 + 4 <= rem:
                q = base + j0
                w[t] = np.uint32((np.uint32(buf[q]) << np.uint32(24)) | (np.uint32(buf[q + 1]) << np.uint32(16))
                                 | (np.uint32(buf[q + 2]) << np.uint32(8)) | np.uint32(buf[q + 3]))
            elif j0 > rem:
                w[t] = np.uint32(0)
            else:
                x = np.uint32(0)
                for k in range(4):
                    j = j0 + k
                    if j < rem:
                        byte = np.uint32(buf[base + j])
                    elif j == rem:
                        byte = np.uint32(0x80)
                    else:
                        byte = np.uint32(0)
                    x = np.uint32((x << np.uint32(8)) | byte)
                w[t] = x
        if bi == nblk - 1:
            w[14] = np.uint32(bits >> np.uint64(32))
            w[15] = np.uint32(bits & np.uint64(_M32))
        compress_w(st, w)
    return st[0], st[1]

@inline
def bswap32(x):
    return (((x & np.uint64(0xFF)) << np.uint64(24)) | ((x & np.uint64(0xFF00)) << np.uint64(8))
            | ((x >> np.uint64(8)) & np.uint64(0xFF00)) | ((x >> np.uint64(24)) & np.uint64(0xFF)))

@inline
def put_utf8(buf, q, c):
    if c < 0x80:
        buf[q] = c
        return q + 1
    if c < 0x800:
        buf[q] = 0xC0 | (c >> 6)
        buf[q + 1] = 0x80 | (c & 0x3F)
        return q + 2
    if c < 0x10000:
        buf[q] = 0xE0 | (c >> 12)
        buf[q + 1] = 0x80 | ((c >> 6) & 0x3F)
        buf[q + 2] = 0x80 | (c & 0x3F)
        return q + 3
    buf[q] = 0xF0 | (c >> 18)
    buf[q + 1] = 0x80 | ((c >> 12) & 0x3F)
    buf[q + 2] = 0x80 | ((c >> 6) & 0x3F)
    buf[q + 3] = 0x80 | (c & 0x3F)
    return q + 4

@inline
def cls_of(table, c):
    if c < 0x10000:
        return table[c]
    if 0x20000 <= c <= 0x3FFFF:
        return np.uint8(CHAR)
    return np.uint8(0)

@jit
def _shingle_hashes_kernel(cp, doc_off, table, ngram, wide):
    """Per document: words (class table), shingles, SHA-1 prefix. Returns (hashes u64, sh_off, n_words)."""
    n_docs = len(doc_off) - 1
    total = len(cp)
    longest = 0  # per-document scratch: sized by the longest document, reused
    for d in range(n_docs):
        longest = max(longest, doc_off[d + 1] - doc_off[d])
    buf = np.empty(5 * longest + 1, dtype=np.uint8)
    ws = np.empty(longest + 1, dtype=np.int64)
    we = np.empty(longest + 1, dtype=np.int64)
    hashes = np.empty(total + n_docs, dtype=np.uint64)
    sh_off = np.zeros(n_docs + 1, dtype=np.int64)
    n_words = np.zeros(n_docs, dtype=np.int32)
    w = np.empty(80, dtype=np.uint32)
    st = np.empty(5, dtype=np.uint32)
    nh = 0
    for d in range(n_docs):
        q = 0
        nw = 0
        i = doc_off[d]
        end = doc_off[d + 1]
        while i < end:
            k = cls_of(table, cp[i])
            if k & WORD:
                if nw:
                    buf[q] = 0x20
                    q += 1
                ws[nw] = q
                while i < end and (cls_of(table, cp[i]) & WORD):
                    q = put_utf8(buf, q, cp[i])
                    i += 1
                we[nw] = q
                nw += 1
            elif k & CHAR:
                if nw:
                    buf[q] = 0x20
                    q += 1
                ws[nw] = q
                q = put_utf8(buf, q, cp[i])
                i += 1
                while i < end and (cls_of(table, cp[i]) & MARK):
                    q = put_utf8(buf, q, cp[i])
                    i += 1
                we[nw] = q
                nw += 1
            else:
                i += 1
        n_words[d] = nw
        if nw == 0:
            sh_off[d + 1] = nh
            continue
        n_sh = nw - ngram + 1 if nw >= ngram else 1
        span = ngram if nw >= ngram else nw
        for j in range(n_sh):
            h0, h1 = sha1_prefix(buf, ws[j], we[j + span - 1], w, st)
            lo = bswap32(np.uint64(h0))
            hashes[nh] = (lo | (bswap32(np.uint64(h1)) << np.uint64(32))) if wide else lo
            nh += 1
        sh_off[d + 1] = nh
    return hashes[:nh], sh_off, n_words

@inline
def fmix32(h):
    M = np.uint64(_M32)
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & M
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & M
    return h ^ (h >> np.uint64(16))

@inline
def fmix64(h):
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))

@jit
def _sig_affine32(hashes, sh_off, a, b, sig):
    n_perm = len(a)
    for d in range(len(sh_off) - 1):
        row = sig[d]
        for k in range(sh_off[d], sh_off[d + 1]):
            hv = np.uint32(fmix32(hashes[k]))
            for p in range(n_perm):
                v = np.uint32(a[p] * hv + b[p])
                if v < row[p]:
                    row[p] = v

@jit
def _sig_affine64(hashes, sh_off, a, b, sig):
    n_perm = len(a)
    for d in range(len(sh_off) - 1):
        row = sig[d]
        for k in range(sh_off[d], sh_off[d + 1]):
            hv = fmix64(hashes[k])
            for p in range(n_perm):
                v = a[p] * hv + b[p]
                if v < row[p]:
                    row[p] = v

@jit
def _sig_legacy(hashes, sh_off, a, b, sig):
    n_perm = len(a)
    prime = np.uint64((1 << 61) - 1)
    for d in range(len(sh_off) - 1):
        row = sig[d]
        for k in range(sh_off[d], sh_off[d + 1]):
            hv = hashes[k]
            for p in range(n_perm):
                x = a[p] * hv + b[p]
                x = (x & prime) + (x >> np.uint64(61))
                if x >= prime:
                    x -= prime
                v = x & np.uint64(_M32)
                if v < row[p]:
                    row[p] = v



def _kernels():
    """``(shingle kernel, {scheme: signature kernel})``; each compiles on its first call (or loads Numba's cache)."""
    return _shingle_hashes_kernel, {"affine32": _sig_affine32, "affine64": _sig_affine64, "legacy": _sig_legacy}




def codepoints(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """NFC + lower-cased code points of a batch (what :func:`xgen_data.minhash.words` splits).

    Returns:
        ``(cp, offsets)``: uint32 shape ``(total code points,)`` and int64 shape ``(n + 1,)``.
    """
    nfc = unicodedata.normalize
    low = [(t.lower() if t.isascii() else nfc("NFC", t).lower()) if t else "" for t in texts]  # ASCII is NFC
    offsets = np.zeros(len(low) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in low], out=offsets[1:])
    cp = np.frombuffer("".join(low).encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint32, copy=False)
    return cp, offsets


def shingle_hashes(texts: Sequence[str | None], ngram: int, wide: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SHA-1 prefixes of every shingle of every text, compiled.

    Returns:
        ``(hashes, offsets, n_words)``: ``hashes`` uint64 (datasketch ``sha1_hash32`` values, or
        ``sha1_hash64`` with ``wide``), document ``i`` owning ``hashes[offsets[i]:offsets[i+1]]``;
        ``n_words`` int32 per text. Equal to :func:`xgen_data.minhash.hash_shingle_lists` of
        :func:`xgen_data.minhash.shingles` (tested).
    """
    kern, _ = _kernels()
    cp, off = codepoints(texts)
    return kern(cp, off, class_table(), int(ngram), bool(wide))


def signatures(texts: Sequence[str | None], perms, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of a batch of texts with the permutations ``perms`` (:class:`minhash.Permutations`).

    Returns:
        ``(sig, n_words)``: ``sig`` shape ``(len(texts), num_perm)``, uint32 for ``affine32`` else uint64,
        equal to :meth:`xgen_data.minhash.MinHasher.signatures` and datasketch; ``n_words`` int32.
    """
    from xgen_data import minhash

    _, sig_fns = _kernels()
    hashes, off, n_words = shingle_hashes(texts, ngram, wide=perms.scheme == "affine64")
    sig = np.full((len(texts), perms.num_perm), minhash.empty_value(perms.scheme), dtype=minhash.sig_dtype(perms.scheme))
    sig_fns[perms.scheme](hashes, off, perms.a, perms.b, sig)
    return sig, n_words
