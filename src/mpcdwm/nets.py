"""Networks shared by every part: one MLP, one ensemble wrapper.

Agents (actor, critics), world models (denoiser, reward, termination) and the
planners all build on these two modules, so that a change to initialisation or
normalisation happens in one place. Parameters are ordinary Flax pytrees and
``module.apply(params, x)`` is a pure function of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]
InitScheme = Literal["flax", "corl", "torch"]


def uniform_init(bound: float) -> nn.initializers.Initializer:
    """Uniform in ``[-bound, bound]`` whatever the shape."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """PyTorch's ``nn.Linear`` weight init: uniform in ``+-1/sqrt(fan_in)``, kernel (in, out)."""
    return uniform_init(1.0 / math.sqrt(shape[0]))(key, shape, dtype)


def _dense_inits(
    scheme: InitScheme, fan_in: int, last: bool, final_scale: float, final_bound: float
):
    """Kernel and bias initialisers of one Dense layer under ``scheme``."""
    if scheme == "torch":
        # nn.Linear's reset_parameters: kernel and bias both uniform in +-1/sqrt(fan_in).
        return {"kernel_init": torch_default_init, "bias_init": uniform_init(fan_in**-0.5)}
    if scheme == "corl":
        if last:
            return {
                "kernel_init": uniform_init(final_bound),
                "bias_init": uniform_init(final_bound),
            }
        return {"kernel_init": torch_default_init, "bias_init": nn.initializers.constant(0.1)}
    if scheme == "flax":
        if last:
            return {
                "kernel_init": nn.initializers.variance_scaling(final_scale, "fan_in", "uniform")
            }
        return {}
    raise ValueError(f"init_scheme must be 'flax', 'corl' or 'torch', got {scheme!r}.")


class MLP(nn.Module):
    """Fully connected network ``(..., in) -> (..., out_dim)``.

    ``layer_norm`` adds a LayerNorm to every hidden layer: before the activation by
    default, after it with ``norm_after_activation`` (CORL's ReBRAC: Dense, ReLU,
    LayerNorm).

    ``init_scheme``:

    * ``flax``: Flax's defaults (LeCun-normal kernels, zero biases); ``final_scale``
      shrinks the last layer's initial weights, which keeps fresh actors and denoisers
      close to zero output.
    * ``corl``: as CORL's JAX ReBRAC (to match its published numbers): hidden kernels
      uniform in ``+-1/sqrt(fan_in)`` with biases 0.1, the last layer's kernel and bias
      uniform in ``+-final_bound``.
    * ``torch``: PyTorch's ``nn.Linear`` default on every layer, kernel and bias uniform
      in ``+-1/sqrt(fan_in)`` (the reference TD3+BC's networks).
    """

    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    activation: Activation = nn.relu
    final_scale: float = 1.0
    norm_after_activation: bool = False
    init_scheme: InitScheme = "flax"
    final_bound: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(width: int, x: jax.Array, last: bool) -> jax.Array:
            inits = _dense_inits(
                self.init_scheme, x.shape[-1], last, self.final_scale, self.final_bound
            )
            return nn.Dense(width, **inits)(x)

        for width in self.hidden_dims:
            x = dense(width, x, last=False)
            if self.layer_norm and not self.norm_after_activation:
                x = nn.LayerNorm()(x)
            x = self.activation(x)
            if self.layer_norm and self.norm_after_activation:
                x = nn.LayerNorm()(x)
        return dense(self.out_dim, x, last=True)


class Ensemble(nn.Module):
    """``size`` independent copies of ``MLP`` evaluated on the same input.

    Output shape ``(size, ..., out_dim)``. Used for the twin critics and the
    reward/termination ensembles whose disagreement the planner can penalise.
    """

    size: int
    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    activation: Activation = nn.relu
    norm_after_activation: bool = False
    init_scheme: InitScheme = "flax"
    final_bound: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batched = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.size,
        )
        member = batched(
            self.hidden_dims,
            self.out_dim,
            self.layer_norm,
            self.activation,
            norm_after_activation=self.norm_after_activation,
            init_scheme=self.init_scheme,
            final_bound=self.final_bound,
        )
        return member(x)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Embed scalar times ``t`` of shape ``(...)`` as ``(..., dim)`` sin/cos features."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
