"""mpcdwm: Model Predictive Control with Differentiable World Models for offline RL.

Parts (see DESIGN.md), top layer first; a module imports only from layers below it
(the ``[tool.importlinter]`` contracts in pyproject.toml):

* :mod:`mpcdwm.cli`       the ``mpcdwm`` command and its subcommand registry
* :mod:`mpcdwm.sweep`     many runs on Ray, gathered into one report
* :mod:`mpcdwm.pipeline`  ``mpcdwm run``/``demo``: every stage in one resumable folder
* :mod:`mpcdwm.evaluate`  base policy and planners in the real env: scores, latency
  :mod:`mpcdwm.collect`   D4RL-style dataset recipes for any Gymnasium env
  :mod:`mpcdwm.report`    tables and plots from eval.json files
* :mod:`mpcdwm.mpc`       inference-time policy adaptation and comparison planners
  :mod:`mpcdwm.online_td3` the online TD3 agent ``collect`` trains
  :mod:`mpcdwm.maze`      PointMaze collection (and the AntMaze gap)
* :mod:`mpcdwm.agents`    offline base agents: ReBRAC, IQL, TD3+BC
  :mod:`mpcdwm.world`     differentiable world models: diffusion, flow matching, MeanFlow, MLP
* :mod:`mpcdwm.rollout` (episodes of a decider), :mod:`mpcdwm.minari_io` (writing
  Minari datasets), :mod:`mpcdwm.world_quality`, :mod:`mpcdwm.train` (the training loop)
* :mod:`mpcdwm.envs` (making envs, checking data against them), :mod:`mpcdwm.checkpoint`,
  :mod:`mpcdwm.nets` (MLP), :mod:`mpcdwm.configs` (config files)
* :mod:`mpcdwm.data`      offline datasets (Minari, D4RL HDF5), normalisation, scores
"""

__version__ = "0.1.0"
