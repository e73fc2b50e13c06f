"""mpcdwm: Model Predictive Control with Differentiable World Models for offline RL.

Parts (one module each, see DESIGN.md):

* :mod:`mpcdwm.data`      offline datasets (Minari, D4RL HDF5), normalisation, scores
* :mod:`mpcdwm.collect`   D4RL-style dataset recipes for any Gymnasium env
* :mod:`mpcdwm.agents`    offline base agents: ReBRAC, IQL, TD3+BC (and online TD3)
* :mod:`mpcdwm.world`     differentiable world models: diffusion, flow matching, MLP
* :mod:`mpcdwm.mpc`       inference-time policy adaptation and comparison planners
* :mod:`mpcdwm.evaluate`  episodes in the real environment, scores and latency
* :mod:`mpcdwm.cli`       the ``mpcdwm`` command

Shared plumbing: :mod:`mpcdwm.nets` (MLP), :mod:`mpcdwm.checkpoint`,
:mod:`mpcdwm.train` (the training loop), :mod:`mpcdwm.envs`.
"""

__version__ = "0.1.0"
