"""xgen_train: the training half of xgen (SPEC §3 model, SPEC §4 pre-training).

Modules:

* :mod:`xgen_train.config` -- :class:`ModelConfig`, named configs, analytic parameter count.
* :mod:`xgen_train.model` -- the LLaMA forward pass in Haiku, with Hugging Face parameter names.
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
