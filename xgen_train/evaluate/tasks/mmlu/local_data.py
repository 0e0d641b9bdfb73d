"""lm-eval resolves `!function local_data.load` in this folder's YAMLs to this file."""
from xgen_train.evaluate.task_data import load  # noqa: F401
