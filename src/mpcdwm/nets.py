"""Networks shared by every part: one MLP, one ensemble wrapper.

Agents (actor, critics), world models (denoiser, reward, termination) and the
planners all build on these two modules, so that a change to initialisation or
normalisation happens in one place. Parameters are ordinary Flax pytrees and
``module.apply(params, x)`` is a pure function of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


class MLP(nn.Module):
    """Fully connected network ``(..., in) -> (..., out_dim)``.

    ``layer_norm`` puts a LayerNorm after every hidden Dense (as ReBRAC's critic
    does); ``final_scale`` shrinks the last layer's initial weights, which keeps
    fresh actors and denoisers close to zero output.
    """

    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = False
    activation: Activation = nn.relu
    final_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = self.activation(x)
        init = nn.initializers.variance_scaling(self.final_scale, "fan_in", "uniform")
        return nn.Dense(self.out_dim, kernel_init=init)(x)


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
        return batched(self.hidden_dims, self.out_dim, self.layer_norm, self.activation)(x)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Embed scalar times ``t`` of shape ``(...)`` as ``(..., dim)`` sin/cos features."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
