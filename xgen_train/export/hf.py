"""Hugging Face hand-over: export a run as a ``LlamaForCausalLM`` folder, and import such a folder.

Export folder (:func:`export_hf`), loadable with ``AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)``::

    OUT/
      config.json              LlamaConfig: architectures ["LlamaForCausalLM"], model_type "llama", every
                               SPEC §3 value (see :func:`hf_config`)
      model.safetensors        float32 tensors under HF state-dict names (xgen_train.model.model.hf_param_names);
                               shapes are identical on both sides (``nn.Linear`` ``[out, in]``), so no transpose
      generation_config.json   bos = eos = pad = 50256 (SPEC §1: EOS = BOS; there is no pad token, so padding
                               uses EOS, as for GPT-2; padded positions are masked by the attention mask)
      tokenizer.json           the XGen tokenizer for the ``tokenizers`` library (xgen_train.export.hf_tokenizer)
      tokenizer_config.json, special_tokens_map.json
      xgen_export.json         provenance: source checkpoint, step, sha256 of every file (marks the folder
                               as an xgen export, which a later export may replace)

The folder is written under a temporary name beside ``OUT`` and swapped into place by the shared folder
publisher (:mod:`xgen_data.store.publish`; commit points ``export.before_swap``, ``export.after_backup``,
``export.after_swap``). Importing
(:func:`load_hf`) reads ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``), checks every key, shape and config value, and returns
``(ModelConfig, params)`` in the Haiku layout of :mod:`xgen_train.model.model`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xgen_data.errors import InputError, RefusedError
from xgen_data.store.publish import FolderPublisher, make_parent
from xgen_train.loop.checkpoint import (
    CheckpointStore,
    checkpoint_model_config,
    checkpoint_source,
    is_hf_folder,
    latest_checkpoint,
    load_params,
    make_meta,
)
from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer
from xgen_train.model.config import CONFIGS, ModelConfig

__all__ = ["EXPORT_MARKER", "HFFormatError", "config_from_hf", "config_name_of", "export_hf", "generation_config",
           "hf_config", "import_hf", "init_model_config", "load_hf", "load_init"]

EOS_ID = 50256  # SPEC §1: <|endoftext|>, also BOS
EXPORT_MARKER = "xgen_export.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class HFFormatError(InputError):
    """A Hugging Face folder is missing a file, or its config or tensors do not describe an xgen LLaMA."""


# --------------------------------------------------------------------------------------------------- export

def hf_config(cfg: ModelConfig) -> dict:
    """``config.json`` content for ``cfg`` as a Hugging Face ``LlamaConfig`` (SPEC §3).

    Values: ``vocab_size`` (51,200), ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads`` = heads (no grouped KV), ``head_dim`` = hidden/heads,
    ``max_position_embeddings`` = ``cfg.max_positions``, ``rms_norm_eps`` (1e-6), rotary theta (10,000)
    both as ``rope_theta`` (transformers 4) and ``rope_parameters`` (transformers 5), bos = eos = 50256,
    ``tie_word_embeddings`` false, ``hidden_act`` silu, no attention or MLP bias, ``torch_dtype`` float32.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": None,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }


def generation_config() -> dict:
    """``generation_config.json``: bos = eos = pad = 50256 (see the module doc for the pad choice)."""
    return {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID, "do_sample": False}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _export_files(folder: str) -> set[str] | None:
    """The files an export wrote (its marker's ``sha256`` list and the marker); None: not an xgen export."""
    try:
        with open(os.path.join(folder, EXPORT_MARKER), encoding="utf-8") as f:
            files = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {EXPORT_MARKER, *files} if isinstance(files, dict) else None


def _is_complete_export(folder: str) -> bool:
    """Whether ``folder`` holds every file its marker lists (the marker is written last)."""
    files = _export_files(folder)
    return files is not None and all(os.path.isfile(os.path.join(folder, f)) for f in files)


def export_publisher(out: str | os.PathLike) -> FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of an export folder (commit points ``export.*``)."""
    return FolderPublisher(str(out), listed_files=_export_files, is_complete=_is_complete_export,
                           what="Hugging Face export", crash_prefix="export")


def export_hf(run: str | os.PathLike, out: str | os.PathLike, *, params=None, model_config: ModelConfig | None = None,
              tokenizer: bool = True) -> Path:
    """Write ``out`` as a Hugging Face ``LlamaForCausalLM`` folder from a run's latest checkpoint.

    Written through the shared folder publisher (:class:`xgen_data.store.publish.FolderPublisher`): into a
    temporary sibling, swapped in atomically, the previous export restored if a killed swap left none, leftovers
    of killed exports removed, one writer at a time.

    Args:
        run: run folder (``xgen train --out``) or checkpoint folder; ignored when ``params`` is given.
        out: destination folder. It may be absent, empty, or an earlier xgen export holding only the files it
            wrote (it is replaced); any other existing folder is refused.
        params, model_config: export these instead of reading ``run`` (Haiku layout, float32).
        tokenizer: also write the tokenizer files (needs the GPT-2 ranks, see xgen_data.tokenizer).
    Returns:
        ``Path(out)``.
    Raises:
        RefusedError: ``out`` is a non-export folder, an export holding files it did not write (a README, an
            adapter folder), or another process is writing it.
        InputError: ``out`` or a folder above it is a file.
        ValueError: no checkpoint in ``run``; a parameter is missing or misshapen.
    """
    out = Path(out)
    make_parent(str(out))
    with export_publisher(out) as pub:
        pub.check_foreign(hint="move them away or choose another output folder",
                          not_ours=f"is not an xgen export (no {EXPORT_MARKER})")
        tensors, cfg, source, step = _export_tensors(run, params, model_config)
        _write_export(Path(pub.begin()), tensors, cfg, source, step, tokenizer)
        pub.commit()
    return out


def _export_tensors(run, params, model_config: ModelConfig | None) -> tuple[dict, ModelConfig, object, object]:
    """``(HF name -> float32 array, config, source checkpoint, step)`` of what :func:`export_hf` writes."""
    from xgen_train.model.model import flat_params, hf_param_names

    if params is None:
        model_config, params = load_params(run)
        source, step = checkpoint_source(run)
    else:
        if model_config is None:
            raise ValueError("export_hf: model_config is required with params")
        source, step = None, None
    names = hf_param_names(model_config)
    flat = flat_params(params)
    _check_params(flat, model_config, names)
    tensors = {names[k]: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flat.items()}
    return tensors, model_config, source, step


def _write_export(tmp: Path, tensors: dict, cfg: ModelConfig, source, step, tokenizer: bool) -> None:
    """Write every export file into the empty folder ``tmp``, the marker (with each file's sha256) last."""
    import safetensors.numpy

    from xgen_data.store.fsutil import sha256_file

    _write_json(tmp / CONFIG_FILE, hf_config(cfg))
    safetensors.numpy.save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    _write_json(tmp / "generation_config.json", generation_config())
    if tokenizer:
        from xgen_train.export import hf_tokenizer

        (tmp / "tokenizer.json").write_text(json.dumps(hf_tokenizer.tokenizer_json(), ensure_ascii=False),
                                            encoding="utf-8")
        _write_json(tmp / "tokenizer_config.json", hf_tokenizer.tokenizer_config(cfg.max_positions))
        _write_json(tmp / "special_tokens_map.json", hf_tokenizer.special_tokens_map())
    files = sorted(p.name for p in tmp.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    for f in files:  # safetensors may create private files; an export is meant to be shared
        os.chmod(tmp / f, 0o666 & ~umask)
    _write_json(tmp / EXPORT_MARKER, {
        "format": "xgen-hf-export", "format_version": 1,
        "source_checkpoint": str(source) if source else None, "step": step,
        "model_config": cfg.to_dict(), "sha256": {f: sha256_file(str(tmp / f)) for f in files},
    })
    os.chmod(tmp / EXPORT_MARKER, 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)


def _check_params(flat: dict, cfg: ModelConfig, names: dict[str, str]) -> None:
    import jax

    from xgen_train.model.model import flat_params, init_params

    shapes = flat_params(jax.eval_shape(lambda: init_params(cfg, 0)))
    missing = sorted(set(names) - set(flat))
    if missing:
        raise HFFormatError(f"parameter {missing[0]!r} missing ({len(missing)} missing in all)")
    extra = sorted(set(flat) - set(names))
    if extra:
        raise HFFormatError(f"unexpected parameter {extra[0]!r} for config {cfg}")
    for k, v in flat.items():
        if tuple(v.shape) != tuple(shapes[k].shape):
            raise HFFormatError(f"parameter {k!r} has shape {list(v.shape)}, expected {list(shapes[k].shape)}")


# --------------------------------------------------------------------------------------------------- import

def _cfg_value(conf: dict, key: str, where: Path, kind=int, default=None):
    if key not in conf:
        if default is not None:
            return default
        raise HFFormatError(f"{where}: key {key!r} missing")
    value = conf[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise HFFormatError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise HFFormatError(f"{where}: {key!r} must be a positive number, got {value!r}")
    return kind(value)


def config_from_hf(conf: dict, where: str | os.PathLike = CONFIG_FILE) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face ``config.json`` dict, refusing what xgen cannot run.

    Accepted: ``LlamaForCausalLM`` / ``model_type`` llama with silu MLP, no biases, untied embeddings,
    ``num_key_value_heads`` = heads, ``head_dim`` = hidden/heads, default (unscaled) rotary with
    ``rope_theta`` at the top level or in ``rope_parameters``.

    Raises:
        HFFormatError: naming the file and the key that is missing or has an unsupported value.
    """
    where = Path(where)
    if not isinstance(conf, dict):
        raise HFFormatError(f"{where}: expected a JSON object")
    archs = conf.get("architectures") or []
    if "LlamaForCausalLM" not in archs:
        raise HFFormatError(f"{where}: 'architectures' is {archs!r}; xgen imports LlamaForCausalLM only")
    if conf.get("model_type") != "llama":
        raise HFFormatError(f"{where}: 'model_type' is {conf.get('model_type')!r}, expected 'llama'")
    fixed = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
             "pretraining_tp": 1}
    for key, want in fixed.items():
        if key in conf and conf[key] != want:
            raise HFFormatError(f"{where}: {key!r} is {conf[key]!r}; xgen's model needs {want!r} (SPEC §3)")
    if "tie_word_embeddings" not in conf:
        raise HFFormatError(f"{where}: key 'tie_word_embeddings' missing (transformers' default is tied; xgen "
                            "needs untied embeddings, SPEC §3)")
    heads = _cfg_value(conf, "num_attention_heads", where)
    hidden = _cfg_value(conf, "hidden_size", where)
    kv = conf.get("num_key_value_heads", heads)
    if kv != heads:
        raise HFFormatError(f"{where}: 'num_key_value_heads' is {kv!r} but num_attention_heads is {heads}; "
                            "xgen has no grouped-KV attention (SPEC §3)")
    if conf.get("head_dim") not in (None, hidden // heads):
        raise HFFormatError(f"{where}: 'head_dim' is {conf['head_dim']!r}, xgen needs hidden_size / "
                            f"num_attention_heads = {hidden // heads}")
    if conf.get("rope_scaling") not in (None, {}):
        raise HFFormatError(f"{where}: 'rope_scaling' is {conf['rope_scaling']!r}; xgen supports plain rotary only")
    theta = conf.get("rope_theta")
    rp = conf.get("rope_parameters")
    if rp is not None:
        if not isinstance(rp, dict) or rp.get("rope_type", "default") != "default":
            raise HFFormatError(f"{where}: 'rope_parameters' is {rp!r}; xgen supports rope_type 'default' only")
        if theta is not None and "rope_theta" in rp and float(rp["rope_theta"]) != float(theta):
            raise HFFormatError(f"{where}: 'rope_theta' {theta} differs from rope_parameters.rope_theta "
                                f"{rp['rope_theta']}")
        theta = rp.get("rope_theta", theta)
    conf2 = {"rope_theta": theta if theta is not None else 10000.0,
             "rms_norm_eps": conf.get("rms_norm_eps", 1e-6)}
    try:
        return ModelConfig(
            vocab_size=_cfg_value(conf, "vocab_size", where), hidden=hidden,
            intermediate=_cfg_value(conf, "intermediate_size", where),
            n_layers=_cfg_value(conf, "num_hidden_layers", where), n_heads=heads,
            max_positions=_cfg_value(conf, "max_position_embeddings", where),
            rope_theta=_cfg_value(conf2, "rope_theta", where, float),
            rms_eps=_cfg_value(conf2, "rms_norm_eps", where, float))
    except ValueError as exc:
        if isinstance(exc, HFFormatError):
            raise
        raise HFFormatError(f"{where}: {exc}") from None


def _read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or of the shards named by ``model.safetensors.index.json``,
    as float32 numpy arrays (float16 / bfloat16 are widened exactly)."""
    from safetensors import safe_open

    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [folder / f for f in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HFFormatError(f"{index}: not a safetensors index ({exc!r})") from None
    else:
        raise HFFormatError(f"{folder}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX} found")
    out: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise HFFormatError(f"{f}: missing (named in {WEIGHTS_INDEX})")
        try:
            with safe_open(str(f), framework="flax") as fh:  # jax arrays: bfloat16 supported
                for key in fh.keys():
                    if key in out:
                        raise HFFormatError(f"{f}: tensor {key!r} appears in two files")
                    out[key] = np.asarray(fh.get_tensor(key).astype("float32"))
        except HFFormatError:
            raise
        except Exception as exc:  # safetensors' own error types for truncated / corrupt files
            raise HFFormatError(f"{f}: cannot read safetensors ({exc})") from None
    return out


def load_hf(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """Read a Hugging Face ``LlamaForCausalLM`` folder (e.g. one written by :func:`export_hf`).

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` (or a sharded index).
    Returns:
        ``(ModelConfig, params)``; ``params`` is ``{module: {name: np.ndarray float32}}`` in the Haiku
        layout of :mod:`xgen_train.model.model` (ready for ``build_model(cfg).apply``). Rotary ``inv_freq``
        buffers some older exports carry are ignored (xgen recomputes them from ``rope_theta``).
    Raises:
        HFFormatError: a file is missing; a config value is missing or unsupported (names the key);
            a tensor is missing, unexpected, non-finite or misshapen (names the tensor and both shapes).
    """
    import jax

    from xgen_train.model.model import flat_params, hf_param_names, init_params, unflat_params

    folder = Path(path)
    conf_path = folder / CONFIG_FILE
    if not conf_path.is_file():
        raise HFFormatError(f"{conf_path}: missing (not a Hugging Face model folder)")
    try:
        conf = json.loads(conf_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HFFormatError(f"{conf_path}: not valid JSON: {exc}") from None
    cfg = config_from_hf(conf, conf_path)
    tensors = {k: v for k, v in _read_tensors(folder).items() if not k.endswith("rotary_emb.inv_freq")}
    names = hf_param_names(cfg)
    shapes = flat_params(jax.eval_shape(lambda: init_params(cfg, 0)))
    flat = {}
    for hk_name, hf_name in names.items():
        if hf_name not in tensors:
            raise HFFormatError(f"{folder}: tensor {hf_name!r} missing from the safetensors files")
        arr = tensors.pop(hf_name)
        want = tuple(shapes[hk_name].shape)
        if tuple(arr.shape) != want:
            raise HFFormatError(f"{folder}: tensor {hf_name!r} has shape {list(arr.shape)}, expected {list(want)} "
                                f"from {CONFIG_FILE}")
        if not np.all(np.isfinite(arr)):
            raise HFFormatError(f"{folder}: tensor {hf_name!r} holds NaN or infinite values")
        flat[hk_name] = arr
    if tensors:
        extra = sorted(tensors)
        raise HFFormatError(f"{folder}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all) for a "
                            f"{cfg.n_layers}-layer LlamaForCausalLM")
    return cfg, unflat_params(flat)


def load_init(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, dict[str, np.ndarray]]]:
    """Initial params for ``xgen train --init PATH``: a Hugging Face folder or an xgen run/checkpoint dir.

    A folder holding ``config.json`` + ``model.safetensors`` (:func:`xgen_train.loop.checkpoint.is_hf_folder`)
    goes to :func:`load_hf`; anything else to :func:`xgen_train.loop.checkpoint.load_params`.

    Returns:
        ``(ModelConfig, params)``, params in the Haiku layout (float32 NumPy arrays).
    Raises:
        HFFormatError: as :func:`load_hf`; CheckpointError: as :func:`xgen_train.loop.checkpoint.load_params`.
    """
    return load_hf(path) if is_hf_folder(path) else load_params(path)


def init_model_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of ``--init PATH`` without loading its weights (``xgen train --config init``): a Hugging
    Face folder's ``config.json`` checked by :func:`config_from_hf`, else the latest checkpoint's meta
    (:func:`xgen_train.loop.checkpoint.checkpoint_model_config`).

    Raises:
        CheckpointError: no checkpoint, or its meta holds no model config. HFFormatError: a config xgen cannot run.
    """
    if is_hf_folder(path):
        conf_path = Path(path) / CONFIG_FILE
        return config_from_hf(json.loads(conf_path.read_text(encoding="utf-8")), conf_path)
    return checkpoint_model_config(path)


def config_name_of(cfg: ModelConfig) -> str | None:
    """The name in :data:`xgen_train.model.config.CONFIGS` equal to ``cfg``, or None."""
    return next((name for name, c in CONFIGS.items() if c == cfg), None)


def import_hf(path: str | os.PathLike, run: str | os.PathLike) -> Path:
    """Make a run folder from a Hugging Face folder: ``run/checkpoints/step_00000000`` holds its params.

    The checkpoint is an ordinary verified :mod:`xgen_train.loop.checkpoint` directory (orbax + sha256 sidecar) at
    step 0 with a fresh (zero) AdamW state of SPEC §4's optimizer; its ``run`` metadata holds the model config
    and ``imported_from``. Train from it with ``xgen train --init RUN`` (a new run with its own settings), which
    reads it through :func:`xgen_train.loop.checkpoint.load_params`. Refuses a ``run`` folder that already holds
    checkpoints.

    Returns:
        the checkpoint folder.
    Raises:
        HFFormatError: see :func:`load_hf`; ValueError: ``run`` already holds checkpoints.
    """
    import jax.numpy as jnp


    run = Path(run)
    if (earlier := latest_checkpoint(run / "checkpoints")) is not None:
        raise RefusedError(f"{run}: already holds checkpoints (latest {earlier.name}); choose another --out folder")
    cfg, params = load_hf(path)
    params = {m: {n: jnp.asarray(v) for n, v in d.items()} for m, d in params.items()}
    opt_state = make_optimizer(OptimizerConfig()).init(params)
    source = str(Path(path).resolve())
    meta = make_meta(0, position={}, run={"config_name": config_name_of(cfg), "model_config": cfg.to_dict(),
                                          "imported_from": source}, extra={"imported_from": source})
    with CheckpointStore(run / "checkpoints", keep=1) as store:
        return store.save(0, params, opt_state, meta)



