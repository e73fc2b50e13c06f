"""The shared MLP: CORL-style ReBRAC networks (LayerNorm after ReLU, PyTorch-style init) and
PyTorch's own nn.Linear init (TD3+BC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpcdwm.agents import rebrac
from mpcdwm.nets import MLP


def test_torch_init_matches_corl_bounds_and_biases():
    net = MLP((64, 64), 3, layer_norm=True, norm_after_activation=True, init_scheme="corl")
    params = net.init(jax.random.key(0), jnp.zeros((1, 17)))["params"]
    k0 = np.asarray(params["Dense_0"]["kernel"])
    # Uniform in +-1/sqrt(fan_in): the bound is respected and nearly reached.
    assert np.abs(k0).max() <= 1 / np.sqrt(17) and np.abs(k0).max() > 0.9 / np.sqrt(17)
    np.testing.assert_allclose(params["Dense_1"]["bias"], 0.1)
    assert np.abs(np.asarray(params["Dense_2"]["kernel"])).max() <= 1e-3
    assert np.abs(np.asarray(params["Dense_2"]["bias"])).max() <= 1e-3


def test_torch_scheme_is_nn_linear_default_on_every_layer():
    params = MLP((64, 32), 3, init_scheme="torch").init(jax.random.key(0), jnp.zeros((1, 17)))
    for name, fan_in in (("Dense_0", 17), ("Dense_1", 64), ("Dense_2", 32)):
        for part in ("kernel", "bias"):
            w = np.abs(np.asarray(params["params"][name][part]))
            # Uniform in +-1/sqrt(fan_in), kernels and biases alike, the last layer too.
            assert w.max() <= fan_in**-0.5 and w.max() > 0.8 * fan_in**-0.5, (name, part)
    with pytest.raises(ValueError, match="init_scheme must be"):
        MLP((4,), 1, init_scheme="lecun").init(jax.random.key(0), jnp.zeros((1, 2)))


def test_layer_norm_after_activation_changes_the_function():
    x = jax.random.normal(jax.random.key(1), (8, 5))
    before = MLP((16,), 2, layer_norm=True)
    after = MLP((16,), 2, layer_norm=True, norm_after_activation=True)
    params = before.init(jax.random.key(2), x)  # same parameter tree for both orders
    h = jax.nn.relu(x @ params["params"]["Dense_0"]["kernel"] + params["params"]["Dense_0"]["bias"])
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    ln = params["params"]["LayerNorm_0"]
    h = (h - mu) / jnp.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]
    expect = h @ params["params"]["Dense_1"]["kernel"] + params["params"]["Dense_1"]["bias"]
    np.testing.assert_allclose(after.apply(params, x), expect, rtol=1e-4, atol=1e-5)
    assert not np.allclose(before.apply(params, x), expect, atol=1e-3)


def test_rebrac_uses_corl_networks_td3bc_torch_and_td3_keeps_flax():
    obs_dim, act_dim = 11, 3
    state = rebrac.init(rebrac.rebrac_config(), jax.random.key(0), obs_dim, act_dim)
    critic = state.critic["params"]["VmapMLP_0"]
    np.testing.assert_allclose(critic["Dense_0"]["bias"], 0.1)
    assert np.abs(np.asarray(critic["Dense_3"]["kernel"])).max() <= 3e-3
    # A fresh ReBRAC actor outputs near-zero actions (last layer +-1e-3).
    a = rebrac.act(rebrac.rebrac_config(), state.actor, jnp.ones((4, obs_dim)))
    assert np.abs(np.asarray(a)).max() < 0.05
    td3 = rebrac.init(rebrac.td3_config(), jax.random.key(0), obs_dim, act_dim)
    np.testing.assert_allclose(td3.actor["params"]["Dense_0"]["bias"], 0.0)
    # TD3+BC: PyTorch's defaults, as its reference implementation (no LayerNorm).
    td3bc = rebrac.init(rebrac.td3bc_config(), jax.random.key(0), obs_dim, act_dim)
    bias = np.abs(np.asarray(td3bc.critic["params"]["VmapMLP_0"]["Dense_0"]["bias"]))
    assert 0 < bias.max() <= (obs_dim + act_dim) ** -0.5
    assert "LayerNorm_0" not in td3bc.critic["params"]["VmapMLP_0"]
