"""Activation layout constraints the forward pass applies when traced under a mesh context.

Both are identities outside a mesh (``jax.set_mesh``, entered by :func:`xgen_train.loop.trainer.jit_step`) or on
a mesh without the axes they name, so the model runs unchanged on one chip. The mesh axes (``data``, ``fsdp``,
``tensor``) and the parameters' partition rules are :mod:`xgen_train.scale.sharding`'s.
"""
from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P


def _mesh_axes() -> set[str]:
    mesh = jax.sharding.get_abstract_mesh()
    return set() if mesh.empty else set(mesh.axis_names)


def gather_table(table: jax.Array) -> jax.Array:
    """The embedding table ``[V, d]`` as a lookup reads it: its ``fsdp`` shards of ``d`` gathered first (as FSDP
    gathers every weight before use), ``V`` still over ``tensor``; unchanged outside a mesh context. Without
    it the lookup's output keeps ``d`` split over ``fsdp`` (see :func:`constrain_batch`)."""
    if not {"tensor", "fsdp"} <= _mesh_axes():
        return table
    return jax.lax.with_sharding_constraint(table, P("tensor", None))


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin an activation ``[B, ...]`` to the batch layout (B over ``(data, fsdp)``, the rest whole) when traced
    under a mesh context (``jax.set_mesh``, entered by :func:`xgen_train.loop.trainer.jit_step`); unchanged otherwise.

    Used on the embedding output: its gather from ``embed_tokens [V, d]`` (sharded ``(tensor, fsdp)``) would
    otherwise leave ``d`` split over ``fsdp``, and under mixed fsdp/tensor meshes XLA could only reach the
    residual stream's batch layout by replicating the array first ("involuntary full rematerialization").
    """
    if not {"data", "fsdp"} <= _mesh_axes():
        return x
    return jax.lax.with_sharding_constraint(x, P(("data", "fsdp"), *([None] * (x.ndim - 1))))
