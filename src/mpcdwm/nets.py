"""Networks shared by every part: one MLP, one ensemble wrapper.

Agents (actor, critics), world models (denoiser, reward, termination) and the
planners all build on these two modules, so that a change to initialisation or
normalisation happens in one place. Parameters are ordinary Flax pytrees and
``module.apply(params, x)`` is a pure function of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def uniform_init(bound: float) -> nn.initializers.Initializer:
    """Uniform in ``[-bound, bound]`` whatever the shape."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """PyTorch's ``nn.Linear`` weight init: uniform in ``+-1/sqrt(fan_in)``, kernel (in, out)."""
    return uniform_init(1.0 / math.sqrt(shape[0]))(key, shape, dtype)


class MLP(nn.Module):
    """Fully connected network ``(..., in) -> (..., out_dim)``.

    ``layer_norm`` adds a LayerNorm to every hidden layer: before the activation by
    default, after it with ``norm_after_activation`` (CORL's ReBRAC: Dense, ReLU,
    LayerNorm). ``final_scale`` shrinks the last layer's initial weights, which keeps
    fresh actors and denoisers close to zero output.

    ``torch_init`` initialises as CORL's JAX ReBRAC does (to match its published
    numbers): hidden kernels uniform in ``+-1/sqrt(fan_in)`` with biases 0.1, and the
    last layer's kernel and bias uniform in ``+-final_bound`` (``final_scale`` unused).
    Otherwise Flax's defaults (LeCun-normal kernels, zero biases).
    """

    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    activation: Activation = nn.relu
    final_scale: float = 1.0
    norm_after_activation: bool = False
    torch_init: bool = False
    final_bound: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.torch_init:
            hidden = {"kernel_init": torch_default_init, "bias_init": nn.initializers.constant(0.1)}
            bound = uniform_init(self.final_bound)
            final = {"kernel_init": bound, "bias_init": bound}
        else:
            scaled = nn.initializers.variance_scaling(self.final_scale, "fan_in", "uniform")
            hidden, final = {}, {"kernel_init": scaled}
        for width in self.hidden_dims:
            x = nn.Dense(width, **hidden)(x)
            if self.layer_norm and not self.norm_after_activation:
                x = nn.LayerNorm()(x)
            x = self.activation(x)
            if self.layer_norm and self.norm_after_activation:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.out_dim, **final)(x)


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
    torch_init: bool = False
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
            torch_init=self.torch_init,
            final_bound=self.final_bound,
        )
        return member(x)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Embed scalar times ``t`` of shape ``(...)`` as ``(..., dim)`` sin/cos features."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
