"""Compiled MinHash kernels (Numba): words → shingles → SHA-1 → permutations, no Python per shingle.

The same math as :mod:`xgen_data.attributes.minhash` (which states the rules once and checks the result against
datasketch): the word split of :func:`xgen_data.attributes.minhash.word_regex` as a per-code-point class table, each
shingle the UTF-8 bytes of ``ngram`` consecutive words joined by one space, hashed with SHA-1 (FIPS 180-4)
and cut to datasketch's ``sha1_hash32`` (first 4 digest bytes, little-endian) or ``sha1_hash64`` (first 8),
then the permutations of the scheme and a running minimum per document.

What stays in Python per document is C-speed string work: ``unicodedata.normalize("NFC", text).lower()``
(exactly what :func:`xgen_data.attributes.minhash.words` does) and one UTF-32 encode of the batch. The kernels are
compiled lazily on first use and cached on disk (``cache=True``; Numba's cache directory, ``NUMBA_CACHE_DIR``
to move it): nothing is compiled at install time.
"""
from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from typing import Sequence

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Code point classes of the table (:func:`class_table`): bit flags.
WORD, CHAR, MARK = 1, 2, 4
_M32 = 0xFFFFFFFF


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """Class of every BMP code point for the word split, uint8 shape ``(65536,)``.

    Bit :data:`WORD`: in a word run (letters, digits, marks, ``_`` outside the one-character scripts);
    :data:`CHAR`: a one-character word (letter or digit of a script written without spaces); :data:`MARK`:
    a combining mark (joins the preceding one-character word). Built from the same ranges and
    :mod:`unicodedata` categories as :func:`xgen_data.attributes.minhash.word_regex`; outside the BMP, U+20000–U+3FFFF are
    one-character words and everything else separates (the kernel hard-codes that).
    """
    from xgen_data.attributes import minhash

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

# --- SHA-1 with the x86 SHA extensions (SHA-NI): the same compression, ~4x faster than the scalar rounds ---
_V4 = ir.VectorType(ir.IntType(32), 4)


def _x86(builder, name: str, imm: bool = False):
    args = [_V4, _V4] + ([ir.IntType(8)] if imm else [])
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V4, args), f"llvm.x86.{name}")


def _load_block(builder, ptr) -> list:
    """The 64 bytes at ``ptr`` (i8*) as four <16 x i8> (unaligned loads)."""
    i8, i64 = ir.IntType(8), ir.IntType(64)
    return [builder.load(builder.bitcast(builder.gep(ptr, [ir.Constant(i64, 16 * k)]),
                                         ir.VectorType(i8, 16).as_pointer()), align=1) for k in range(4)]


def _emit_rounds(builder, m, sptr) -> None:
    """The 80 rounds on message vectors ``m`` (four <4 x i32>, see :func:`_block_vectors`) into the state at
    ``sptr`` (i32*, H0..H4)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    h = [builder.load(builder.gep(sptr, [ir.Constant(i64, j)])) for j in range(5)]
    abcd = ir.Constant(_V4, None)
    for lane, j in enumerate((3, 2, 1, 0)):
        abcd = builder.insert_element(abcd, h[j], ir.Constant(i32, lane))
    e_in = builder.insert_element(ir.Constant(_V4, [0, 0, 0, 0]), h[4], ir.Constant(i32, 3))
    abcd_in = abcd
    rnds4, nexte = _x86(builder, "sha1rnds4", imm=True), _x86(builder, "sha1nexte")
    msg1, msg2 = _x86(builder, "sha1msg1"), _x86(builder, "sha1msg2")
    m = list(m)
    e = [e_in, None]
    for g in range(20):  # rounds 4g .. 4g+3 use message words W[4g:4g+4], held in m[g % 4]
        j, cur = g % 4, g % 2
        e[cur] = builder.add(e[cur], m[0]) if g == 0 else builder.call(nexte, [e[cur], m[j]])
        e[1 - cur] = abcd
        if 3 <= g <= 18:
            m[(j + 1) % 4] = builder.call(msg2, [m[(j + 1) % 4], m[j]])
        abcd = builder.call(rnds4, [abcd, e[cur], ir.Constant(i8, g // 5)])
        if 1 <= g <= 16:
            m[(j + 3) % 4] = builder.call(msg1, [m[(j + 3) % 4], m[j]])
        if 2 <= g <= 17:
            m[(j + 2) % 4] = builder.xor(m[(j + 2) % 4], m[j])
    e_out = builder.call(nexte, [e[0], e_in])
    abcd = builder.add(abcd, abcd_in)
    for lane, j in enumerate((3, 2, 1, 0)):
        builder.store(builder.extract_element(abcd, ir.Constant(i32, lane)), builder.gep(sptr, [ir.Constant(i64, j)]))
    builder.store(builder.extract_element(e_out, ir.Constant(i32, 3)), builder.gep(sptr, [ir.Constant(i64, 4)]))


def _block_vectors(builder, base, keep=None, pad_at=None):
    """Message vectors of the 64 bytes at ``base`` (four <4 x i32> of big-endian words, W0 in lane 3); with ``keep``/``pad_at`` (i64 values) bytes at index
    ``>= keep`` read as 0 and the byte at ``pad_at`` as 0x80 (the FIPS 180-4 §5.1.1 padding, in registers)."""
    i8, i32 = ir.IntType(8), ir.IntType(32)
    v16 = ir.VectorType(i8, 16)
    rev = ir.Constant(ir.VectorType(i32, 16), list(range(15, -1, -1)))  # big-endian words, W0 in lane 3
    out = []
    for k, v in enumerate(_load_block(builder, base)):
        if keep is not None:
            # byte lanes (128-bit vectors): wider ones would leave the upper AVX state dirty, and the legacy-SSE
            # SHA instructions then pay a transition penalty each (measured: ~25x slower)
            idx = ir.Constant(v16, [16 * k + t for t in range(16)])
            kv = builder.insert_element(ir.Constant(v16, None), builder.trunc(keep, i8), ir.Constant(i32, 0))
            kv = builder.shuffle_vector(kv, kv, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            pv = builder.insert_element(ir.Constant(v16, None), builder.trunc(pad_at, i8), ir.Constant(i32, 0))
            pv = builder.shuffle_vector(pv, pv, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            v = builder.select(builder.icmp_signed("<", idx, kv), v, ir.Constant(v16, [0] * 16))
            v = builder.select(builder.icmp_signed("==", idx, pv), ir.Constant(v16, [0x80] * 16), v)
        out.append(builder.bitcast(builder.shuffle_vector(v, v, rev), _V4))
    return out


@intrinsic
def sha1_block_ni(typingctx, data, off, st):
    """SHA-1 compression (FIPS 180-4 §6.1.2) of the 64 bytes ``data[off:off + 64]`` (uint8 array) into the
    state ``st`` (uint32[5], H0..H4), with the SHA-NI instructions ``sha1rnds4/sha1nexte/sha1msg1/sha1msg2``.

    The schedule is Intel's (Gulley et al., "Intel SHA Extensions", 2013): four rounds per ``sha1rnds4``, the
    message schedule computed four words at a time, state kept as ``ABCD`` (A in the top lane) and ``E``.
    Generated as LLVM IR here; only compiled where the CPU has the extension (:func:`sha_ni_available`).
    """
    def codegen(context, builder, signature, args):
        darr = context.make_array(signature.args[0])(context, builder, args[0])
        sptr = context.make_array(signature.args[2])(context, builder, args[2]).data
        _emit_rounds(builder, _block_vectors(builder, builder.gep(darr.data, [args[1]])), sptr)
        return context.get_dummy_value()

    return types.void(data, off, st), codegen


@intrinsic
def sha1_last_ni(typingctx, data, off, keep, pad_at, bits, st):
    """A final block of a message: ``data[off:off + keep]``, 0x80 at ``pad_at`` (64: none), zeros, and when
    ``bits`` > 0 the message length ``bits`` in the last 8 bytes (big-endian), compressed into ``st``.

    Reads 64 bytes from ``off`` whatever ``keep`` is: ``data`` must extend at least 64 bytes past ``off``.
    """
    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        darr = context.make_array(signature.args[0])(context, builder, args[0])
        sptr = context.make_array(signature.args[5])(context, builder, args[5]).data
        keep = context.cast(builder, args[2], signature.args[2], types.int64)
        pad_at = context.cast(builder, args[3], signature.args[3], types.int64)
        bits = context.cast(builder, args[4], signature.args[4], types.uint64)
        m = _block_vectors(builder, builder.gep(darr.data, [args[1]]), keep, pad_at)
        has_len = builder.icmp_unsigned("!=", bits, ir.Constant(i64, 0))
        last = m[3]  # lane 0 = W15, lane 1 = W14
        with_len = builder.insert_element(last, builder.trunc(bits, i32), ir.Constant(i32, 0))
        with_len = builder.insert_element(with_len, builder.trunc(builder.lshr(bits, ir.Constant(i64, 32)), i32),
                                          ir.Constant(i32, 1))
        m[3] = builder.select(has_len, with_len, last)
        _emit_rounds(builder, m, sptr)
        return context.get_dummy_value()

    return types.void(data, off, keep, pad_at, bits, st), codegen

@inline
def sha1_prefix_ni(buf, s, e, st):
    """:func:`sha1_prefix` with SHA-NI (:func:`sha1_block_ni`, :func:`sha1_last_ni`); padding built in
    registers, so ``buf`` must extend 64 bytes past ``e``."""
    length = e - s
    st[0] = 0x67452301
    st[1] = 0xEFCDAB89
    st[2] = 0x98BADCFE
    st[3] = 0x10325476
    st[4] = 0xC3D2E1F0
    full = length // 64
    for bi in range(full):
        sha1_block_ni(buf, s + 64 * bi, st)
    rem = length - 64 * full
    base = s + 64 * full
    bits = np.uint64(length) * np.uint64(8)
    if rem < 56:
        sha1_last_ni(buf, base, rem, rem, bits, st)
    else:
        sha1_last_ni(buf, base, rem, rem, np.uint64(0), st)
        sha1_last_ni(buf, base, 0, 64, bits, st)
    return st[0], st[1]


@lru_cache(maxsize=1)
def sha_ni_available() -> bool:
    """Whether the kernels may use SHA-NI: the CPU Numba compiles for has the ``sha`` feature.

    Numba targets the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise (then their
    features decide). ``XGEN_MINHASH_SHA1=scalar`` forces the portable scalar rounds (same results).
    """
    if os.environ.get("XGEN_MINHASH_SHA1", "").strip().lower() == "scalar":
        return False
    if nb.config.CPU_FEATURES:
        return "+sha" in nb.config.CPU_FEATURES.split(",")
    if nb.config.CPU_NAME and nb.config.CPU_NAME != "host":
        return False
    import llvmlite.binding as llvm

    try:
        return bool(llvm.get_host_cpu_features().get("sha", False))
    except RuntimeError:  # features unknown on this platform
        return False

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

@inline
def split_words(cp, start, end, table, buf, ws, we):
    """Words of ``cp[start:end]`` (class table) as UTF-8 joined by single spaces into ``buf``; word ``k`` is
    ``buf[ws[k]:we[k]]``. Returns the number of words.

    One pass, one class look-up per code point: a code point continues the current word when it is
    :data:`WORD` inside a word run, or a :data:`MARK` after a one-character word; otherwise a :data:`WORD` or
    :data:`CHAR` code point starts a new word and anything else ends the run (same words as the regex).
    """
    q = 0
    nw = 0
    run = 0  # 0: between words, WORD: inside a word run, CHAR: after a one-character word (+ marks)
    for i in range(start, end):
        c = cp[i]
        k = cls_of(table, c)
        if (run == WORD and k & WORD) or (run == CHAR and k & MARK):
            pass
        elif k & (WORD | CHAR):
            if nw:
                we[nw - 1] = q
                buf[q] = 0x20
                q += 1
            ws[nw] = q
            nw += 1
            run = WORD if k & WORD else CHAR
        else:
            run = 0
            continue
        if c < 0x80:
            buf[q] = c
            q += 1
        else:
            q = put_utf8(buf, q, c)
    if nw:
        we[nw - 1] = q
    return nw

@inline
def prefix_value(h0, h1, wide):
    """datasketch's ``sha1_hash32`` (``sha1_hash64`` with ``wide``) from the first two big-endian digest words."""
    lo = bswap32(np.uint64(h0))
    return (lo | (bswap32(np.uint64(h1)) << np.uint64(32))) if wide else lo

@inline
def scratch(cp, doc_off):
    """Per-batch scratch sized by the longest document: UTF-8 buffer (64 bytes of slack for the SHA-NI tail
    read) and word start/end offsets."""
    longest = 0
    for d in range(len(doc_off) - 1):
        longest = max(longest, doc_off[d + 1] - doc_off[d])
    return (np.empty(5 * longest + 65, dtype=np.uint8), np.empty(longest + 1, dtype=np.int64),
            np.empty(longest + 1, dtype=np.int64))

@jit
def _shingle_hashes_kernel(cp, doc_off, table, ngram, wide):
    """Per document: words (class table), shingles, SHA-1 prefix (scalar SHA-1). Returns
    (hashes u64, sh_off, n_words)."""
    n_docs = len(doc_off) - 1
    buf, ws, we = scratch(cp, doc_off)
    hashes = np.empty(len(cp) + n_docs, dtype=np.uint64)
    sh_off = np.zeros(n_docs + 1, dtype=np.int64)
    n_words = np.zeros(n_docs, dtype=np.int32)
    w = np.empty(80, dtype=np.uint32)
    st = np.empty(5, dtype=np.uint32)
    nh = 0
    for d in range(n_docs):
        nw = split_words(cp, doc_off[d], doc_off[d + 1], table, buf, ws, we)
        n_words[d] = nw
        if nw:
            span = ngram if nw >= ngram else nw
            for j in range(nw - span + 1):
                h0, h1 = sha1_prefix(buf, ws[j], we[j + span - 1], w, st)
                hashes[nh] = prefix_value(h0, h1, wide)
                nh += 1
        sh_off[d + 1] = nh
    return hashes[:nh], sh_off, n_words

@jit
def _shingle_hashes_kernel_ni(cp, doc_off, table, ngram, wide):
    """:func:`_shingle_hashes_kernel` with the SHA-NI compression (:func:`sha1_prefix_ni`); same results.

    A separate kernel on purpose, not a branch inside one: a kernel that names the SHA intrinsics can only be
    compiled on a CPU that has them, so this one is compiled (lazily) only when :func:`sha_ni_available`."""
    n_docs = len(doc_off) - 1
    buf, ws, we = scratch(cp, doc_off)
    hashes = np.empty(len(cp) + n_docs, dtype=np.uint64)
    sh_off = np.zeros(n_docs + 1, dtype=np.int64)
    n_words = np.zeros(n_docs, dtype=np.int32)
    st = np.empty(5, dtype=np.uint32)
    nh = 0
    for d in range(n_docs):
        nw = split_words(cp, doc_off[d], doc_off[d + 1], table, buf, ws, we)
        n_words[d] = nw
        if nw:
            span = ngram if nw >= ngram else nw
            for j in range(nw - span + 1):
                h0, h1 = sha1_prefix_ni(buf, ws[j], we[j + span - 1], st)
                hashes[nh] = prefix_value(h0, h1, wide)
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
    kern = _shingle_hashes_kernel_ni if sha_ni_available() else _shingle_hashes_kernel
    return kern, {"affine32": _sig_affine32, "affine64": _sig_affine64, "legacy": _sig_legacy}




def codepoints(texts: Sequence[str | None], nfc_done: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """NFC + lower-cased code points of a batch (what :func:`xgen_data.attributes.minhash.words` splits).

    ``nfc_done``: the texts are already NFC (:func:`xgen_data.attributes.minhash.nfc`), only lower-case them.

    Returns:
        ``(cp, offsets)``: uint32 shape ``(total code points,)`` and int64 shape ``(n + 1,)``.
    """
    nfc = unicodedata.normalize
    if nfc_done:
        low = [t.lower() if t else "" for t in texts]
    else:
        low = [(t.lower() if t.isascii() else nfc("NFC", t).lower()) if t else "" for t in texts]  # ASCII is NFC
    offsets = np.zeros(len(low) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in low], out=offsets[1:])
    cp = np.frombuffer("".join(low).encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint32, copy=False)
    return cp, offsets


def shingle_hashes(texts: Sequence[str | None], ngram: int, wide: bool = False, nfc_done: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SHA-1 prefixes of every shingle of every text, compiled.

    Returns:
        ``(hashes, offsets, n_words)``: ``hashes`` uint64 (datasketch ``sha1_hash32`` values, or
        ``sha1_hash64`` with ``wide``), document ``i`` owning ``hashes[offsets[i]:offsets[i+1]]``;
        ``n_words`` int32 per text. Equal to :func:`xgen_data.attributes.minhash.hash_shingle_lists` of
        :func:`xgen_data.attributes.minhash.shingles` (tested).
    """
    kern, _ = _kernels()
    cp, off = codepoints(texts, nfc_done)
    return kern(cp, off, class_table(), int(ngram), bool(wide))


def signatures(texts: Sequence[str | None], perms, ngram: int, nfc_done: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of a batch of texts with the permutations ``perms`` (:class:`minhash.Permutations`).

    Returns:
        ``(sig, n_words)``: ``sig`` shape ``(len(texts), num_perm)``, uint32 for ``affine32`` else uint64,
        equal to :meth:`xgen_data.attributes.minhash.MinHasher.signatures` and datasketch; ``n_words`` int32.
    """
    from xgen_data.attributes import minhash

    _, sig_fns = _kernels()
    hashes, off, n_words = shingle_hashes(texts, ngram, wide=perms.scheme == "affine64", nfc_done=nfc_done)
    sig = np.full((len(texts), perms.num_perm), minhash.empty_value(perms.scheme), dtype=minhash.sig_dtype(perms.scheme))
    sig_fns[perms.scheme](hashes, off, perms.a, perms.b, sig)
    return sig, n_words
