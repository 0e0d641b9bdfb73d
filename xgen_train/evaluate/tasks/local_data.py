"""lm-eval resolves `!function local_data.NAME` in this folder's YAMLs to this file: the local-data loader and
lm-eval's own document functions for HellaSwag and Winogrande (imported, not copied)."""
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_docs  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_choice  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_target  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_text  # noqa: F401

from xgen_train.evaluate.task_data import load  # noqa: F401
