"""From shards to device batches: the loaders of a plan's phases, the step's input layout, validation sets.

Pre-training (``xgen-shards``, :class:`xgen_train.loop.data.ShardLoader`): a batch is the token array int32
``[B, L]``. SFT (``xgen-sft-shards``, :class:`xgen_train.loop.sft_data.SFTLoader`): a batch is the dict
``{tokens, loss_mask, segment_ids}`` of int32 ``[B, L]``. Either way batch ``k`` of a phase is
``loader.batch_at(seed, k)``, a pure function of ``(seed, k)``, sent to the devices split along ``B``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from xgen_train.loop.curriculum import Phase
from xgen_train.loop.data import ShardLoader
from xgen_train.loop.sft_data import ARRAYS, SFTLoader
from xgen_train.scale.sharding import put_global

__all__ = ["Feed"]


class Feed:
    """Loaders (one per phase, opened on first use) and device batches for ``objective`` ``pretrain``/``sft``.

    ``b_sh``: the batch sharding (split along B); ``rep``: replicated; ``data_ways``: devices along B
    (a validation batch whose size does not divide by it is replicated instead).
    """

    def __init__(self, shards_dir: str | os.PathLike, objective: str, verify: bool | None, seed: int, b_sh, rep,
                 data_ways: int) -> None:
        self.shards_dir, self.objective, self.verify, self.seed = shards_dir, objective, verify, seed
        self.b_sh, self.rep, self.data_ways = b_sh, rep, data_ways
        self._loaders: dict[int, ShardLoader | SFTLoader] = {}

    def _open(self, ph: Phase, batch_size: int, split: str):
        if self.objective == "sft":
            return SFTLoader(self.shards_dir, batch_size, verify=self.verify, split=split)
        return ShardLoader(self.shards_dir, batch_size, stage=ph.stage, substage=ph.substage, verify=self.verify,
                           split=split)

    def loader(self, ph: Phase):
        """The train loader of ``ph`` (opening it checks its shards; cached)."""
        if ph.index not in self._loaders:
            self._loaders[ph.index] = self._open(ph, ph.batch_size, "train")
        return self._loaders[ph.index]

    def _host(self, rows: dict[str, np.ndarray] | np.ndarray):
        return {k: rows[k] for k in ARRAYS} if self.objective == "sft" else rows

    def _put(self, host, sharding):
        if self.objective == "sft":
            return put_global(host, {k: sharding for k in ARRAYS})
        return put_global(host, sharding)

    def device_batch(self, ph: Phase, k: int):
        """Batch ``k`` of phase ``ph`` on the devices (tokens array, or the SFT dict)."""
        b = self.loader(ph).batch_at(self.seed, k)
        return self._put(self._host(b) if self.objective == "sft" else b["tokens"], self.b_sh)

    def spec(self, ph: Phase):
        """``jax.ShapeDtypeStruct`` (pytree) of a batch of ``ph``, to compile the step ahead of the data."""
        one = jax.ShapeDtypeStruct((ph.batch_size, ph.seq_len), jnp.int32, sharding=self.b_sh)
        return {k: one for k in ARRAYS} if self.objective == "sft" else one

    def validation(self, ph: Phase, max_sequences: int) -> tuple[list, int] | None:
        """Fixed validation batches of ``ph`` (its first held-out sequences in index order) on the devices,
        and how many sequences they hold; None when ``ph`` has no validation split."""
        if not ph.validation_sequences:
            return None
        vl = self._open(ph, 1, "validation")
        n = min(vl.n_sequences, max_sequences)
        bs = min(ph.batch_size, n)
        n = n // bs * bs
        sharding = self.b_sh if bs % self.data_ways == 0 else self.rep
        if self.objective == "sft":
            rows = vl.rows(np.arange(n))
            batches = [{k: rows[k][i * bs:(i + 1) * bs] for k in ARRAYS} for i in range(n // bs)]
        else:
            batches = list(vl.sequences(np.arange(n)).astype(np.int32).reshape(n // bs, bs, ph.seq_len))
        return [self._put(b, sharding) for b in batches], n
