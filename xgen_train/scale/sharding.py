"""Device mesh and partition rules: how params, optimizer state and batches are laid out over the chips.

One code path for a laptop CPU, one GPU, a multi-GPU node and a TPU pod slice: a
:class:`jax.sharding.Mesh` with three named axes, and XLA's SPMD partitioner (GSPMD, ``jax.jit`` with
``in_shardings``/``out_shardings``) inserts the collectives. XGen-7B was trained with data and model
parallelism on TPU-v4 (JaxFormer); the axes here are the usual ones of MaxText/levanter:

* ``data``: plain data parallelism; params replicated over it, the batch split along B.
* ``fsdp``: fully-sharded data parallelism (ZeRO-3): the batch split along B *and* every matrix split
  along its model-width (``hidden``) dimension, all-gathered per layer inside the step.
* ``tensor``: Megatron-style tensor parallelism: attention heads, the MLP's inner width and the vocabulary
  split; activations stay sharded between the two matmuls of a block.

Mesh spec (``xgen train --mesh``): ``"data=2,fsdp=2,tensor=2"``; axes not named are 1, except ``data``,
which takes the devices left over (so the default, ``None`` or ``""``, puts every device on ``data``).
The product must equal the number of devices (``jax.device_count()``, over all hosts).

Partition rules (:data:`PARAM_RULES`): a regex on the flat parameter name (:func:`xgen_train.model.model.
flat_params`, e.g. ``model/layers_0/self_attn/q_proj/weight``) gives *logical* axes per dimension, and
:data:`LOGICAL_AXES` maps logical axes to mesh axes (the logical-axis scheme of MaxText/levanter/t5x).
Linear weights are PyTorch-layout ``[out, in]``:

============================  ===================  =========================
parameter                     logical axes         mesh axes
============================  ===================  =========================
embed_tokens ``[V, d]``       (vocab, embed)       (tensor, fsdp)
q/k/v_proj ``[d, d]``         (heads, embed)       (tensor, fsdp)
o_proj ``[d, d]``             (embed, heads)       (fsdp, tensor)
gate/up_proj ``[i, d]``       (mlp, embed)         (tensor, fsdp)
down_proj ``[d, i]``          (embed, mlp)         (fsdp, tensor)
norms ``[d]``                 (norm,)              replicated
lm_head ``[V, d]``            (vocab, embed)       (tensor, fsdp)
============================  ===================  =========================

The optimizer state (optax AdamW ``mu``/``nu``) has the params' tree inside it and takes the same specs
(:func:`state_shardings`); its scalars (``count``) are replicated. Batches ``int32 [B, L]`` are split
along B over ``(data, fsdp)`` (:func:`batch_sharding`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xgen_data.errors import InputError
from xgen_train.model.config import ModelConfig

__all__ = ["AXES", "LOGICAL_AXES", "PARAM_RULES", "MeshError", "batch_sharding", "check_batch", "check_divisible",
           "describe_mesh", "logical_axes", "make_mesh", "param_shardings", "param_specs", "parse_mesh",
           "put_global", "replicated", "state_shardings"]

#: Mesh axis names, outermost first (``data`` spans the slowest links, ``tensor`` the fastest).
AXES = ("data", "fsdp", "tensor")

#: Logical axis -> mesh axis (None: not split).
LOGICAL_AXES: dict[str, str | None] = {"vocab": "tensor", "embed": "fsdp", "heads": "tensor", "mlp": "tensor",
                                       "norm": None}

#: (regex on the flat param name, logical axes per dimension); the first match wins, every param must match.
PARAM_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"^model/embed_tokens/weight$", ("vocab", "embed")),
    (r"^model/layers_\d+/self_attn/(q|k|v)_proj/weight$", ("heads", "embed")),
    (r"^model/layers_\d+/self_attn/o_proj/weight$", ("embed", "heads")),
    (r"^model/layers_\d+/mlp/(gate|up)_proj/weight$", ("mlp", "embed")),
    (r"^model/layers_\d+/mlp/down_proj/weight$", ("embed", "mlp")),
    (r"^model/layers_\d+/(input|post_attention)_layernorm/weight$", ("norm",)),
    (r"^model/norm/weight$", ("norm",)),
    (r"^lm_head/weight$", ("vocab", "embed")),
)

# the ModelConfig field a logical axis is measured in (for error messages)
_LOGICAL_SIZE_NAME = {"vocab": "vocab_size", "embed": "hidden", "heads": "hidden", "mlp": "intermediate"}


class MeshError(InputError):
    """A bad mesh spec, a mesh that does not fit the devices, or a shape not divisible by its mesh axes."""


# ------------------------------------------------------------------------------------------------ mesh


def parse_mesh(spec: str | dict | None, n_devices: int) -> dict[str, int]:
    """Axis sizes ``{"data": a, "fsdp": b, "tensor": c}`` from a spec like ``"data=2,fsdp=2,tensor=2"``.

    Axes not named are 1, except ``data`` which, when not named, takes ``n_devices // (fsdp * tensor)``.
    Raises:
        MeshError: unknown axis, repeated axis, a size that is not a positive int, or a product that is not
            ``n_devices`` (message names the spec and the device count).
    """
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in (spec or "").replace(" ", "").split(","):
            if not part:
                continue
            name, eq, value = part.partition("=")
            if not eq:
                raise MeshError(f"mesh spec {spec!r}: {part!r} is not axis=size (axes: {', '.join(AXES)})")
            items.append((name, value))
    sizes: dict[str, int] = {}
    for name, value in items:
        if name not in AXES:
            raise MeshError(f"mesh spec {spec!r}: unknown axis {name!r} (axes: {', '.join(AXES)})")
        if name in sizes:
            raise MeshError(f"mesh spec {spec!r}: axis {name!r} given twice")
        n = value if isinstance(value, int) else int(value) if re.fullmatch(r"\d+", str(value)) else 0
        if n <= 0:
            raise MeshError(f"mesh spec {spec!r}: {name}={value!r} is not a positive integer")
        sizes[name] = n
    model = sizes.get("fsdp", 1) * sizes.get("tensor", 1)
    if "data" not in sizes:
        if n_devices % model:
            raise MeshError(f"mesh spec {spec!r}: fsdp*tensor = {model} does not divide the {n_devices} devices")
        sizes["data"] = n_devices // model
    out = {a: sizes.get(a, 1) for a in AXES}
    if math.prod(out.values()) != n_devices:
        raise MeshError(f"mesh spec {spec!r}: {describe_mesh(out)} uses {math.prod(out.values())} devices, but "
                        f"{n_devices} are present; the product of the axes must equal the device count")
    return out


def describe_mesh(sizes: dict[str, int] | Mesh) -> str:
    """``"data=2,fsdp=2,tensor=2"`` (the canonical spec; also what ``run.json`` records)."""
    if isinstance(sizes, Mesh):
        sizes = dict(sizes.shape)
    return ",".join(f"{a}={sizes.get(a, 1)}" for a in AXES)


def make_mesh(spec: str | dict | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A :class:`jax.sharding.Mesh` over ``devices`` (default: every device of every process), axes :data:`AXES`.

    Uses ``jax.make_mesh`` (device order chosen for the physical topology on TPU/GPU) with ``Auto`` axis
    types: only the step's inputs and outputs carry shardings, XLA's partitioner places the rest.
    Raises:
        MeshError: see :func:`parse_mesh`.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    auto = (AxisType.Auto,) * len(AXES)  # GSPMD propagation: shardings of the inputs/outputs only
    try:
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    except Exception:  # e.g. a device subset make_mesh cannot lay out: plain row-major order
        return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES, axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, the spike monitor, metrics)."""
    return NamedSharding(mesh, P())


# ------------------------------------------------------------------------------------------------ rules


def logical_axes(name: str, ndim: int) -> tuple[str, ...]:
    """Logical axes of parameter ``name`` (first matching rule of :data:`PARAM_RULES`).

    Raises:
        MeshError: no rule matches (a new parameter needs a rule), or the rule's rank is not ``ndim``.
    """
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, name):
            if len(axes) != ndim:
                raise MeshError(f"partition rule {pattern!r} gives {len(axes)} axes for {name!r} of rank {ndim}")
            return axes
    raise MeshError(f"no partition rule for parameter {name!r}: add one to xgen_train.scale.sharding.PARAM_RULES")


def _flat_name(path) -> str:
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def param_specs(params) -> Any:
    """:class:`PartitionSpec` per parameter: a pytree like ``params`` (arrays or ShapeDtypeStructs)."""

    def spec(path, leaf):
        axes = logical_axes(_flat_name(path), len(leaf.shape))
        return P(*(LOGICAL_AXES[a] for a in axes))

    return jax.tree_util.tree_map_with_path(spec, params)


def check_divisible(params, mesh: Mesh | dict[str, int], cfg: ModelConfig | None = None) -> None:
    """Every sharded dimension divides by its mesh axis size; with ``cfg``, ``n_heads`` divides by ``tensor``.

    Raises:
        MeshError: e.g. ``"hidden 256 not divisible by fsdp=3 (model/layers_0/self_attn/q_proj/weight dim 1)"``.
    """
    sizes = dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)
    if cfg is not None and cfg.n_heads % sizes.get("tensor", 1):
        raise MeshError(f"n_heads {cfg.n_heads} not divisible by tensor={sizes['tensor']} (each chip holds whole "
                        "attention heads)")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _flat_name(path)
        for dim, (logical, size) in enumerate(zip(logical_axes(name, len(leaf.shape)), leaf.shape)):
            axis = LOGICAL_AXES[logical]
            if axis is not None and size % sizes.get(axis, 1):
                raise MeshError(f"{_LOGICAL_SIZE_NAME.get(logical, logical)} {size} not divisible by "
                                f"{axis}={sizes[axis]} ({name} dim {dim}); choose a mesh whose {axis} size divides it")


def param_shardings(params, mesh: Mesh, cfg: ModelConfig | None = None) -> Any:
    """:class:`NamedSharding` per parameter (after :func:`check_divisible`)."""
    check_divisible(params, mesh, cfg)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params))


def state_shardings(state, params, mesh: Mesh) -> Any:
    """Shardings for an optimizer state (or any tree holding copies of the params' tree).

    A leaf whose dict-key path names a parameter (``mu['model/norm']['weight']``) and has its shape takes
    that parameter's spec; a scalar is replicated.
    Raises:
        MeshError: a non-scalar leaf that is no parameter's copy (no rule to place it).
    """
    flat = {_flat_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    specs = {_flat_name(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        param_specs(params), is_leaf=lambda x: isinstance(x, P))[0]}

    def one(path, leaf):
        name = _flat_name(path)
        if name in flat and tuple(flat[name].shape) == tuple(leaf.shape):
            return NamedSharding(mesh, specs[name])
        if len(leaf.shape) == 0:
            return NamedSharding(mesh, P())
        raise MeshError(f"optimizer state leaf {jax.tree_util.keystr(path)} of shape {tuple(leaf.shape)} matches "
                        "no parameter; cannot place it on the mesh")

    return jax.tree_util.tree_map_with_path(one, state)


def check_batch(batch_size: int, mesh: Mesh | dict[str, int], what: str = "batch") -> None:
    """Raise :class:`MeshError` unless ``batch_size`` divides by ``data * fsdp`` (of a mesh or axis sizes)."""
    sizes = dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)
    n = sizes.get("data", 1) * sizes.get("fsdp", 1)
    if batch_size % n:
        raise MeshError(f"{what} size {batch_size} not divisible by data*fsdp = {n} (mesh {describe_mesh(mesh)}); "
                        "choose --batch-size/--batch-tokens so every data-parallel rank gets whole sequences")


def batch_sharding(mesh: Mesh, batch_size: int | None = None) -> NamedSharding:
    """Sharding of ``tokens [B, L]``: B split over ``(data, fsdp)``, L whole (checked when ``batch_size``)."""
    if batch_size is not None:
        check_batch(batch_size, mesh)
    return NamedSharding(mesh, P(("data", "fsdp"), None))


def put_global(tree, shardings) -> Any:
    """Host numpy arrays (the same full value on every process) -> global ``jax.Array``s with ``shardings``.

    Each process transfers only the shards its own devices hold (``jax.make_array_from_callback``), so it
    works unchanged on one host and on many.
    """

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)
