"""xgen_train: the training half of xgen (SPEC §3 model, SPEC §4 pre-training).

Subpackages, in the order the data flows (docs/architecture.md):

``model/`` -- what is trained:

* :mod:`xgen_train.model.config` -- :class:`ModelConfig`, named configs, analytic parameter count.
* :mod:`xgen_train.model.model` -- the LLaMA forward pass in Haiku, with Hugging Face parameter names.
* :mod:`xgen_train.model.precision` -- precision policy: bf16 matmul operands with f32 accumulation (forward and
  backward) or f32 with HIGHEST precision.
* :mod:`xgen_train.model.attention` -- attention kernels (full, chunked online softmax,
  jax.nn.dot_product_attention).
* :mod:`xgen_train.model.loss` -- next-token cross-entropy: fused chunked LM head, z-loss, ``make_loss_fn``.
* :mod:`xgen_train.model.numerics` -- :class:`NumericsOptions`, the train step's numerics.

``loop/`` -- how it is trained:

* :mod:`xgen_train.loop.step` -- one update as a pure function (gradient accumulation, spike rule).
* :mod:`xgen_train.loop.optimizer` -- AdamW, gradient clipping, warm-up + cosine learning-rate schedule.
* :mod:`xgen_train.loop.data` -- deterministic, memory-mapped batches (train or validation split) of shards.
* :mod:`xgen_train.loop.curriculum` -- every stage and sub-stage on one step axis (plan, data position).
* :mod:`xgen_train.loop.checkpoint` -- orbax-checkpoint checkpoints with a sha256 sidecar; ``load_params``.
* :mod:`xgen_train.loop.trainer` -- the training loop (:func:`xgen_train.loop.trainer.train`).

``scale/`` -- over many chips and hosts:

* :mod:`xgen_train.scale.sharding` -- device mesh and partition rules for params, optimizer state, batches.
* :mod:`xgen_train.scale.distributed` -- ``jax.distributed.initialize`` when asked; process 0 writes.
* :mod:`xgen_train.scale.flops` -- training FLOPs per token, chip peaks, MFU.

``export/`` -- out to (and in from) Hugging Face:

* :mod:`xgen_train.export.hf` -- export / import of a ``LlamaForCausalLM`` folder.
* :mod:`xgen_train.export.hf_tokenizer` -- the XGen tokenizer as ``tokenizer.json``.

``evaluate/`` -- after training:

* :mod:`xgen_train.evaluate.evaluation` -- perplexity by position, pass@k, energy and CO2 (SPEC §6).
* :mod:`xgen_train.evaluate.generate` -- text generation with a key/value cache (greedy / top-p).
* :mod:`xgen_train.loop.lossplot` -- Figure 1 (loss over tokens seen, sub-stage boundaries).

Only :mod:`xgen_train.model.config` is imported here, so that ``import xgen_train`` does not import JAX.
"""
from xgen_train.model.config import CONFIGS, ModelConfig, count_parameters, get_config

__all__ = ["CONFIGS", "ModelConfig", "count_parameters", "get_config"]
