"""xgen_train: the training half of xgen (SPEC §3 model, SPEC §4 pre-training).

Modules:

* :mod:`xgen_train.config` -- :class:`ModelConfig`, named configs, analytic parameter count.
* :mod:`xgen_train.model` -- the LLaMA forward pass in Haiku, with Hugging Face parameter names.
* :mod:`xgen_train.precision` -- precision policy: bf16 matmul operands with f32 accumulation (forward and
  backward) or f32 with HIGHEST precision.
* :mod:`xgen_train.attention` -- attention kernels (full, chunked online softmax, jax.nn.dot_product_attention).
* :mod:`xgen_train.loss` -- next-token cross-entropy: fused chunked LM head, z-loss, ``make_loss_fn``.
* :mod:`xgen_train.numerics` -- :class:`NumericsOptions`, the train step's numerics.
* :mod:`xgen_train.step` -- one update as a pure function (gradient accumulation, spike rule).
* :mod:`xgen_train.optimizer` -- AdamW, gradient clipping, warm-up + cosine learning-rate schedule.
* :mod:`xgen_train.data` -- deterministic, memory-mapped batches (train or validation split) of shards.
* :mod:`xgen_train.curriculum` -- every stage and sub-stage on one step axis (plan, data position).
* :mod:`xgen_train.checkpoint` -- orbax-checkpoint checkpoints with a sha256 sidecar; ``load_params``.
* :mod:`xgen_train.trainer` -- the training loop (:func:`xgen_train.trainer.train`).
* :mod:`xgen_train.lossplot` -- Figure 1 (loss over tokens seen, sub-stage boundaries).

Only :mod:`xgen_train.config` is imported here, so that ``import xgen_train`` does not import JAX.
"""
from xgen_train.config import CONFIGS, ModelConfig, count_parameters, get_config

__all__ = ["CONFIGS", "ModelConfig", "count_parameters", "get_config"]
