"""D4RL-style datasets for any Gymnasium continuous-control env (``mpcdwm collect``).

This module owns the dataset recipes and the command; the online TD3 agent that
makes the non-random ones lives in :mod:`mpcdwm.online_td3`, writing Minari files in
:mod:`mpcdwm.minari_io`, and PointMaze ids go to :mod:`mpcdwm.maze`:

* ``random``: uniform random actions.
* ``medium``: the first policy (checked at every evaluation) whose deterministic
  evaluation return reaches ``medium_fraction`` of the expert's (D4RL: about 1/3),
  rolled out with a little Gaussian action noise (D4RL rolled out stochastic
  SAC policies; a deterministic policy would visit one narrow tube of states).
* ``medium-replay``: the online agent's replay buffer up to that medium point.
* ``expert``: the fully trained agent, rolled out the same way: of its last evaluation
  snapshots, the one that scores best over ``expert_select_episodes`` fresh episodes under
  the recording's noise (:func:`~mpcdwm.online_td3.select_expert`; which one is in the
  metadata, ``mpcdwm_expert_env_steps`` and ``mpcdwm_expert_selection``).
* ``medium-expert``: ``steps`` medium transitions followed by ``steps`` expert ones.

Reference scores written into the dataset metadata: the D4RL pair for the
families D4RL covers (hopper, halfcheetah, walker2d, ant; so normalised scores
are comparable with published D4RL numbers), otherwise the measured mean return
of the random policy and of the final trained agent. The measured returns are
stored too: ``mpcdwm_random_return``, and ``mpcdwm_expert_return`` (the recorded expert's
training evaluation; the final weights' is ``mpcdwm_agent_final_return`` when a snapshot
was chosen).

Shapes: an env observation is ``(obs_dim,)`` float32, an action ``(act_dim,)``;
the agent works in ``[-1, 1]`` and datasets hold actions in env units.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mpcdwm import maze
from mpcdwm.agents import rebrac
from mpcdwm.checkpoint import CheckpointError, load_checkpoint
from mpcdwm.configs import FIELD_RULES, NON_NEGATIVE, POSITIVE_INT, check_config
from mpcdwm.data import ref_scores_for
from mpcdwm.envs import limit_kwargs, make_env
from mpcdwm.files import (
    UserFileError,
    ensure_writable_dir,
    ensure_writable_parent,
    write_json_atomic,
)
from mpcdwm.minari_io import (
    TRANSITION_FIELDS,
    Transitions,
    check_target,
    dataset_target,
    write_minari,
)
from mpcdwm.online_td3 import (
    CHECKPOINT_NAME,
    OnlineRun,
    Params,
    agent_dir_of,
    episode_returns,
    export_policy,
    load_policy,
    load_policy_file,
    random_return,
    read_policy_file,
    record_rollout,
    select_expert,
    to_env_action,
    train_online,
)

Recipe = Literal["random", "medium", "medium-replay", "expert", "medium-expert", "play", "diverse"]
RECIPES: tuple[str, ...] = (
    "random",
    "medium",
    "medium-replay",
    "expert",
    "medium-expert",
    "play",
    "diverse",
)
ANT_GOAL_ENV = "mpcdwm/AntGoal-v1"
"""The low-level ant's task for AntMaze collection (:class:`mpcdwm.maze.AntGoalEnv`)."""
SHIPPED_ANT = "antgoal-v1-seed0.ckpt"
"""File name (in ``mpcdwm/assets``) of the goal-reaching ant shipped with the package."""


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Make a D4RL-style Minari dataset for a Gymnasium env (see :mod:`mpcdwm.collect`).

    PointMaze ids ignore ``recipe`` and the TD3 options: they record the BFS waypoint
    controller of :mod:`mpcdwm.maze` (D4RL maze2d style) for whole episodes until ``steps``
    transitions, through :func:`mpcdwm.maze.write_pointmaze_dataset` (the Python API, with
    the same defaults): action noise ``rollout_noise`` (default
    :data:`~mpcdwm.maze.POINTMAZE_NOISE` = 0.3) and ``max_episode_steps`` (default the env's
    registered limit).

    AntMaze ids take the recipes ``play`` and ``diverse``
    (:func:`mpcdwm.maze.write_antmaze_dataset`): the goal-reaching ant in ``agent_dir``
    (default: the online TD3 agent of ``mpcdwm/AntGoal-v1`` with this seed, trained by
    ``mpcdwm collect --env mpcdwm/AntGoal-v1 --recipe expert``) follows BFS waypoints, with
    action noise ``rollout_noise`` (default :data:`~mpcdwm.maze.ANTMAZE_NOISE`); an episode
    whose ant lies on its back ends after :data:`~mpcdwm.maze.ANTMAZE_FLIP_PATIENCE` steps.
    """

    env: str = "Hopper-v5"
    """Gymnasium environment id (continuous actions)."""
    recipe: Recipe = "medium"
    """Which D4RL recipe to record (AntMaze: play or diverse)."""
    steps: int = 100_000
    """Transitions to record for random/medium/expert (medium-expert: this many of each;
    medium-replay: ignored, it is the whole replay buffer up to the medium point)."""
    seed: int = 0
    """Seed of everything: agent init, exploration, env resets, rollouts."""
    dataset_id: str | None = None
    """Minari dataset id; default derived from what makes the data, so different data get
    different ids: ``mpcdwm/<env-family>-<recipe>-s<seed>-n<steps>-v0``
    (mpcdwm/hopper-medium-s0-n100k-v0; see :func:`default_dataset_id`)."""
    out: Path | None = None
    """Write the Minari dataset folder here instead of into the Minari root
    (``MINARI_DATASETS_PATH`` or ~/.minari/datasets)."""
    overwrite: bool = False
    """Replace an existing dataset with the same id / folder (only one that mpcdwm wrote:
    any other folder is refused, never deleted), and an existing ``save_policy`` file."""
    train_steps: int = 300_000
    """Env-step budget of the online TD3 agent (one update per env step)."""
    start_steps: int = 10_000
    """Uniform random actions for this many env steps before TD3 starts acting and learning."""
    expl_noise: float = 0.1
    """Std of the Gaussian exploration noise during training (actions in [-1, 1])."""
    rollout_noise: float | None = None
    """Std of the Gaussian action noise when recording (0: deterministic); None: 0.1 for the
    medium/expert rollouts of the TD3 recipes, 0.3 for PointMaze's BFS controller."""
    medium_fraction: float = 1.0 / 3.0
    """Medium = first policy whose evaluation return reaches this fraction of the expert's."""
    eval_every: int = 5_000
    """Evaluate (deterministic policy) and snapshot the actor every this many env steps."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    expert_candidates: int = 10
    """expert / medium-expert: the expert is the best, on ``expert_select_episodes`` fresh
    episodes with the recording's action noise, of this many evaluation snapshots (those with
    the highest training evaluations). A few deterministic episodes on fixed seeds overrate
    policies that fall under noise (Hopper's 1M-step TD3: ~100 normalized on its evaluations,
    55 recorded). 0: the last weights."""
    expert_select_episodes: int = 20
    """Episodes per expert candidate (same reset seeds and noise for every candidate)."""
    chunk: int = 500
    """Env steps between fused blocks of as many TD3 updates (one jitted scan)."""
    checkpoint_every: int = 20_000
    """Checkpoint the online agent, its buffer and progress every this many env steps."""
    checkpoint_minutes: float = 5.0
    """Also checkpoint the online agent every this many minutes of wall time (0 = every
    chunk)."""
    max_episode_steps: int | None = None
    """Episode time limit; None keeps the env's registered limit (1000 for MuJoCo)."""
    batch_size: int = 256
    """TD3 batch size (TD3 paper: 256)."""
    agent_dir: Path | None = None
    """Folder of the online agent's checkpoint; default a cache folder per env + seed
    (``$MPCDWM_CACHE`` or ~/.cache/mpcdwm, then collect/<env>-seed<seed>). AntMaze recipes:
    the goal-reaching ant's folder, or a policy file of it (``online_td3.export_policy``);
    default its cache folder when it holds a trained ant, else the ant shipped with the
    package (:func:`shipped_ant`)."""
    policy: tuple[Path, ...] = ()
    """Record these policy files (:func:`~mpcdwm.online_td3.export_policy`; what
    ``save_policy`` writes) instead of training TD3: one for the medium and expert recipes,
    two (medium, then expert) for medium-expert. Each must come from ``env``. Same seed and
    noise: the same transitions as the recipe that trained them recorded, in seconds per
    thousand steps instead of an online training (``benchmarks/make_datasets.py`` keeps its
    policies this way). Envs without D4RL reference scores need ``ref_max_score``."""
    save_policy: Path | None = None
    """medium / expert recipes: also write the policy they record (the medium-point
    snapshot, the chosen expert) to this policy file, for a later ``--policy``."""
    ref_max_score: float | None = None
    """Expert return for normalised scores of envs without D4RL references; default: the
    trained online agent's final evaluation return."""
    progress: bool = True
    """Show rich progress bars (the online TD3 logs one line per evaluation either way)."""


TD3_ROLLOUT_NOISE = 0.1
"""Action noise of the TD3 recipes' medium/expert rollouts when ``rollout_noise`` is None."""

# Settings that do not change the recorded data: left out of the default dataset id.
_NOT_DATA = frozenset(
    {
        "dataset_id",
        "out",
        "overwrite",
        "progress",
        "agent_dir",
        "checkpoint_every",
        "checkpoint_minutes",
        "save_policy",
    }
)
# Settings of the online TD3 agent: they do not apply to the random recipe and PointMaze.
_TD3_ONLY = frozenset(
    {
        "train_steps",
        "start_steps",
        "expl_noise",
        "medium_fraction",
        "eval_every",
        "eval_episodes",
        "expert_candidates",
        "expert_select_episodes",
        "chunk",
        "batch_size",
    }
)


def _count(n: int) -> str:
    """``100000`` -> ``100k``, ``1000000`` -> ``1m``, ``2500`` -> ``2500``."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _family(env_id: str) -> str:
    """``Hopper-v5`` -> ``hopper``, ``PointMaze_UMaze-v3`` -> ``pointmaze-umaze``."""
    base = env_id.split("/")[-1].split(":")[-1]
    family = base.rsplit("-v", 1)[0] if base.rsplit("-v", 1)[-1].isdigit() else base
    return family.lower().replace("_", "-")


def default_dataset_id(cfg: CollectConfig) -> str:
    """The dataset id ``collect`` gives ``cfg``'s data without ``--dataset-id``.

    ``mpcdwm/<family>-<recipe>-s<seed>-n<steps>[-t<train steps>][-c<hash>]-v0``, e.g.
    ``mpcdwm/hopper-medium-s0-n100k-v0``: seed and size always (medium-replay: no ``n``, its
    size is the replay buffer), the online TD3 budget when not the default, and a short hash
    of any other non-default setting that changes the data (noise, time limit, ...). So two
    datasets made differently never share an id, and the same command gives the same id.
    PointMaze: recipe ``bfs`` (its controller), no TD3 settings.
    """
    maze_env = "Maze" in cfg.env
    recipe = "bfs" if "PointMaze" in cfg.env else cfg.recipe
    parts = [_family(cfg.env), recipe, f"s{cfg.seed}"]
    if maze_env or cfg.recipe != "medium-replay":
        parts.append(f"n{_count(cfg.steps)}")
    defaults = CollectConfig()
    td3 = not maze_env and cfg.recipe != "random" and not cfg.policy
    if td3 and cfg.train_steps != defaults.train_steps:
        parts.append(f"t{_count(cfg.train_steps)}")
    named = {"env", "recipe", "seed", "steps", "train_steps"}
    other = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in _NOT_DATA | named
        and (td3 or f.name not in _TD3_ONLY)
        and getattr(cfg, f.name) != getattr(defaults, f.name)
    }
    if cfg.policy:  # the weights make the data, wherever their files are
        other["policy"] = [_sha256(p) for p in cfg.policy]
    if other:
        text = json.dumps(other, sort_keys=True, default=str)
        parts.append("c" + hashlib.sha256(text.encode()).hexdigest()[:6])
    return f"mpcdwm/{'-'.join(parts)}-v0"


def host_provenance() -> dict[str, str]:
    """Library versions and CPU of this host, kept in each dataset's metadata. Online TD3 is
    chaotic: on another instruction set (AVX-512 or not) or library version the same seed
    trains another agent (Walker2d's medium point: 440k env steps on an AVX-512 host, 225k on
    an AVX2 one), so a dataset is remade exactly only on a like host; its policy files
    (``policy``) give the same behaviour policy anywhere."""
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("jax", "jaxlib", "mujoco", "gymnasium")
    )
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the instruction set is not read
        flags = ""
    isa = "avx512f" if " avx512f" in flags else ("avx2" if " avx2" in flags else "unknown ISA")
    return {"mpcdwm_software": versions, "mpcdwm_cpu": f"{platform.machine()}, {isa}"}


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise ValueError(f"--policy {path}: cannot read it ({err.strerror}).") from err


def command_line(cfg: CollectConfig) -> str:
    """The ``mpcdwm collect`` command that reproduces ``cfg`` (non-default flags only)."""
    parts = ["mpcdwm collect"]
    always = {"env", "recipe", "steps", "seed"}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in always and value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif value is None:
            parts.append(f"{flag} None")
        elif isinstance(value, tuple):
            parts.append(" ".join([flag, *map(str, value)]))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


# collect evaluates its online agent to find the medium point: it needs evaluations.
COLLECT_RULES = {
    **FIELD_RULES,
    "eval_every": POSITIVE_INT,
    "eval_episodes": POSITIVE_INT,
    "expert_candidates": NON_NEGATIVE,
    "expert_select_episodes": POSITIVE_INT,
}


def _check_config(cfg: CollectConfig) -> None:
    """Every setting in its valid range (one error naming each bad flag), before any work."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}, got {cfg.recipe!r}.")
    antmaze = cfg.env.startswith("AntMaze")
    if antmaze != (cfg.recipe in maze.ANTMAZE_RECIPES):
        raise ValueError(
            f"--recipe {cfg.recipe} does not apply to {cfg.env}: AntMaze ids take "
            f"{' or '.join(maze.ANTMAZE_RECIPES)}, other envs the D4RL MuJoCo recipes."
        )
    check_config(cfg, COLLECT_RULES)
    _check_policy_files(cfg)


def _check_policy_files(cfg: CollectConfig) -> None:
    """--policy and --save-policy: MuJoCo envs' medium / expert recipes only."""
    mujoco = "Maze" not in cfg.env
    wanted = {"medium": 1, "expert": 1, "medium-expert": 2}.get(cfg.recipe) if mujoco else None
    if cfg.policy and len(cfg.policy) != wanted:
        raise ValueError(
            f"--policy records the medium and expert recipes (one file each) and medium-expert "
            f"(two: medium, then expert) of MuJoCo envs; got {len(cfg.policy)} file(s) for "
            f"--env {cfg.env} --recipe {cfg.recipe}."
        )
    missing = [str(p) for p in cfg.policy if not Path(p).is_file()]
    if missing:
        raise ValueError(
            f"--policy: no file {', '.join(missing)} (write one with --save-policy or "
            "mpcdwm.online_td3.export_policy)."
        )
    if cfg.save_policy is not None and (wanted != 1 or cfg.policy):
        raise ValueError(
            "--save-policy keeps the policy that a MuJoCo env's medium or expert recipe trains "
            f"and records, not --env {cfg.env} --recipe {cfg.recipe}"
            + (" --policy (that file exists already)." if cfg.policy else ".")
        )


# ------------------------------------------------------------------------ the command


def collect(cfg: CollectConfig) -> str:
    """Run ``mpcdwm collect``: record ``cfg.recipe`` for ``cfg.env`` and write it with Minari.

    Returns the Minari dataset id (or the folder ``cfg.out``), loadable with
    :func:`mpcdwm.data.load_dataset`.
    """
    _check_config(cfg)
    dataset_id = cfg.dataset_id or default_dataset_id(cfg)
    # Before any work (training the online agent can take hours): where the dataset goes
    # must be free (or an mpcdwm dataset to --overwrite) and writable, and so must the
    # online agent's folder.
    if cfg.out is not None:
        ensure_writable_parent(cfg.out, "--out")  # named as given (the target is absolute)
    flag = f"--out {cfg.out}" if cfg.out is not None else f"--dataset-id {dataset_id}"
    check_target(dataset_target(dataset_id, cfg.out), overwrite=cfg.overwrite, flag=flag)
    if "PointMaze" in cfg.env:  # the maze controller replaces the online TD3 recipes
        return maze.write_pointmaze_dataset(
            cfg.env,
            steps=cfg.steps,
            seed=cfg.seed,
            noise=maze.POINTMAZE_NOISE if cfg.rollout_noise is None else cfg.rollout_noise,
            max_episode_steps=cfg.max_episode_steps,
            out=None if cfg.out is None else str(cfg.out),
            dataset_id=dataset_id,
            overwrite=cfg.overwrite,
        )
    console = Console(stderr=True, soft_wrap=True)
    if cfg.env.startswith("AntMaze"):
        return _collect_antmaze(cfg, dataset_id, console)
    if cfg.recipe != "random" and not cfg.policy:
        ensure_writable_dir(agent_dir_of(cfg), "--agent-dir")
    if cfg.save_policy is not None:
        ensure_writable_parent(cfg.save_policy, "--save-policy")
        if Path(cfg.save_policy).exists() and not cfg.overwrite:
            raise UserFileError(
                f"--save-policy {cfg.save_policy} exists; pass another path, or --overwrite to "
                "replace it (and the dataset)."
            )
    noise = TD3_ROLLOUT_NOISE if cfg.rollout_noise is None else cfg.rollout_noise
    td3 = rebrac.td3_config(batch_size=cfg.batch_size)
    d4rl = ref_scores_for(cfg.env)
    root_key = jax.random.key(cfg.seed)

    def rollout_key(recipe: str) -> jax.Array:
        # One key per recipe, so medium-expert is exactly the medium and expert datasets.
        return jax.random.fold_in(root_key, 100 + RECIPES.index(recipe))

    meta: dict[str, Any] = {
        "mpcdwm_command": command_line(cfg),
        **host_provenance(),
        "mpcdwm_seed": int(cfg.seed),
        "mpcdwm_recipe": cfg.recipe,
    }
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )

    def record(
        actor: Params | None, key: jax.Array, label: str, net: rebrac.ReBRACConfig = td3
    ) -> Transitions:
        with Progress(*columns, console=console, disable=not cfg.progress) as bar:
            return record_rollout(
                cfg.env,
                actor,
                net,
                steps=cfg.steps,
                key=key,
                noise=noise,
                max_episode_steps=cfg.max_episode_steps,
                progress=bar,
                label=label,
            )

    expert_return = cfg.ref_max_score
    if cfg.policy or cfg.recipe == "random":
        if cfg.policy:
            data = _record_policy_files(cfg, record, rollout_key, meta)
        else:
            data = record(None, rollout_key("random"), "random")
            if d4rl is None and expert_return is None:
                expert_return = _trained_return(cfg)
        rand = random_return(
            cfg.env, episodes=10, seed=cfg.seed, max_episode_steps=cfg.max_episode_steps
        )
    else:
        # With a known expert return the medium recipes only need training up to the
        # medium point; otherwise the expert's return is the fully trained agent's.
        medium_only = cfg.recipe in ("medium", "medium-replay") and d4rl is not None
        until = cfg.medium_fraction * d4rl[1] if medium_only else None
        run = train_online(cfg, until_medium=until, console=console)
        if not run.evals:
            raise RuntimeError("the online agent has no evaluation yet; raise --train-steps.")
        rand = run.random_return
        if until is None:
            meta["mpcdwm_expert_return"] = float(run.evals[-1]["return"])
            if expert_return is None:
                expert_return = run.evals[-1]["return"]
        expert_ref = d4rl[1] if d4rl is not None else expert_return
        idx, reached = run.medium_index(expert_ref, cfg.medium_fraction)
        medium = run.evals[idx]
        if not reached:
            console.print(
                f"[yellow]warning:[/] no evaluation reached {cfg.medium_fraction:.2f} x expert "
                f"return {expert_ref:.1f} within {run.env_steps} env steps; using the best "
                f"policy (return {medium['return']:.1f} at step {medium['env_steps']}). "
                "Raise --train-steps for a true medium policy."
            )
        meta.update(
            mpcdwm_medium_return=float(medium["return"]),
            mpcdwm_medium_env_steps=int(medium["env_steps"]),
            mpcdwm_medium_reached=bool(reached),
            mpcdwm_agent_env_steps=int(run.env_steps),
        )
        agent_dir = agent_dir_of(cfg)
        if cfg.recipe == "medium":
            data = record(run.snapshots[idx], rollout_key("medium"), "medium rollouts")
            if cfg.save_policy is not None:
                export_policy(agent_dir, cfg.save_policy, idx)
        elif cfg.recipe == "medium-replay":
            n = int(medium["env_steps"])
            data = {k: v[:n].copy() for k, v in run.buffer.items()}
            low, high = _action_bounds(cfg)
            data["actions"] = to_env_action(data["actions"], low, high)
        else:
            expert = _expert_actor(cfg, run, td3, noise, rollout_key("expert"), meta, console)
            data = record(expert, rollout_key("expert"), "expert rollouts")
            if cfg.save_policy is not None:
                export_expert(agent_dir, cfg.save_policy)
            if cfg.recipe == "medium-expert":
                med = record(run.snapshots[idx], rollout_key("medium"), "medium rollouts")
                data = {k: np.concatenate([med[k], data[k]]) for k in TRANSITION_FIELDS}
    meta["mpcdwm_random_return"] = float(rand)
    meta["mpcdwm_dataset_mean_return"] = float(np.mean(episode_returns(data)))
    if d4rl is not None:
        ref_min, ref_max = d4rl
    elif expert_return is None:
        raise RuntimeError(
            f"{cfg.env} has no D4RL reference scores and no trained agent in "
            f"{agent_dir_of(cfg)}: pass --ref-max-score, or collect a "
            "medium/expert recipe first so the random dataset can use the agent's return."
        )
    else:
        ref_min, ref_max = rand, float(expert_return)
    if not ref_max > ref_min:
        raise RuntimeError(
            f"the expert return ({ref_max:.2f}) does not exceed the random return "
            f"({ref_min:.2f}); the online agent did not learn. Raise --train-steps."
        )
    result = write_minari(
        data,
        dataset_id=dataset_id,
        env_id=cfg.env,
        max_episode_steps=cfg.max_episode_steps,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        extra_metadata=meta,
        out=cfg.out,
        overwrite=cfg.overwrite,
    )
    console.print(
        f"[collect] wrote {len(data['rewards'])} transitions "
        f"({int((data['terminals'] | data['truncations']).sum())} episodes, mean return "
        f"{meta['mpcdwm_dataset_mean_return']:.1f}) to {result}",
        markup=False,
    )
    return result


def _record_policy_files(
    cfg: CollectConfig,
    record: Callable[..., Transitions],
    rollout_key: Callable[[str], jax.Array],
    meta: dict[str, Any],
) -> Transitions:
    """``--policy``: record the policy files with the keys and noise of the recipe that
    trained them (so the same transitions)."""
    parts = ["medium", "expert"] if cfg.recipe == "medium-expert" else [cfg.recipe]
    blocks, files = [], []
    for part, path in zip(parts, map(Path, cfg.policy), strict=True):
        actor, net, policy_meta = read_policy_file(path, env=cfg.env)
        blocks.append(record(actor, rollout_key(part), f"{part} rollouts ({path.name})", net))
        steps = int(policy_meta["env_steps"])
        files.append({"part": part, "file": path.name, "sha256": _sha256(path), "env_steps": steps})
        meta[f"mpcdwm_{part}_env_steps"] = steps
        if policy_meta.get("eval_return") is not None:  # files written before it was kept lack it
            meta[f"mpcdwm_{part}_return"] = float(policy_meta["eval_return"])
    meta["mpcdwm_policy_files"] = json.dumps(files)  # HDF5 metadata holds no lists of records
    return {k: np.concatenate([b[k] for b in blocks]) for k in TRANSITION_FIELDS}


EXPERT_CHOICE_NAME = "expert_choice.json"
"""The expert snapshot :func:`select_expert` chose, kept beside the online agent's checkpoint
for the run it was made on: the expert and medium-expert recipes and AntMaze collection
reuse it instead of replaying every candidate (minutes)."""


def _saved_expert_choice(agent_dir: Path) -> dict[str, Any] | None:
    """The choice saved in ``agent_dir``, or None (none saved, or unreadable: choose again)."""
    try:
        saved = json.loads((agent_dir / EXPERT_CHOICE_NAME).read_text())
        return saved if {"made_for", "chosen", "rows"} <= set(saved) else None
    except (OSError, ValueError, TypeError):
        return None


def chosen_expert(agent_dir: Path) -> int | None:
    """The evaluation snapshot the expert recipe chose for the online agent in ``agent_dir``
    as it is now, or None (no choice saved, or made before the agent trained on; the latest
    weights then stand for the expert)."""
    saved = _saved_expert_choice(agent_dir)
    if saved is None or saved["chosen"] < 0:
        return None
    _, meta = load_checkpoint(agent_dir / CHECKPOINT_NAME, expect={"kind": "collect-online-td3"})
    same_run = saved["made_for"]["env_steps"] == meta["progress"]["env_steps"]
    return int(saved["chosen"]) if same_run else None


def export_expert(agent_dir: Path, path: Path) -> Path:
    """Write the online agent's expert (:func:`chosen_expert`, else its latest weights) to a
    policy file (:func:`~mpcdwm.online_td3.export_policy`), e.g. the ant the package ships."""
    return export_policy(agent_dir, path, chosen_expert(agent_dir))


def _expert_actor(
    cfg: CollectConfig,
    run: OnlineRun,
    td3: rebrac.ReBRACConfig,
    noise: float,
    key: jax.Array,
    meta: dict[str, Any],
    console: Console,
) -> Params:
    """The expert's weights (:func:`select_expert`, or its choice saved for this run in the
    agent folder); how they were chosen goes into ``meta``."""
    agent_dir = agent_dir_of(cfg)
    made_for = {
        "env_steps": int(run.env_steps),
        "expert_candidates": cfg.expert_candidates,
        "expert_select_episodes": cfg.expert_select_episodes,
        "noise": float(noise),
    }
    saved = _saved_expert_choice(agent_dir)
    if saved is not None and saved["made_for"] == made_for:
        chosen, rows = int(saved["chosen"]), saved["rows"]
        console.print(
            f"[collect] expert: the choice saved in {agent_dir / EXPERT_CHOICE_NAME}", markup=False
        )
    else:
        chosen, rows = select_expert(
            cfg, run, td3, noise=noise, key=jax.random.fold_in(key, 1), console=console
        )
        write_json_atomic(
            agent_dir / EXPERT_CHOICE_NAME, {"made_for": made_for, "chosen": chosen, "rows": rows}
        )
    if chosen < 0:
        meta["mpcdwm_expert_env_steps"] = int(run.env_steps)
        return run.state.actor
    # The return and the step describe the same weights: the recorded snapshot's.
    meta["mpcdwm_expert_env_steps"] = int(run.evals[chosen]["env_steps"])
    meta["mpcdwm_expert_return"] = float(run.evals[chosen]["return"])
    meta["mpcdwm_agent_final_return"] = float(run.evals[-1]["return"])
    # A JSON string: Minari's HDF5 metadata holds no lists of records.
    meta["mpcdwm_expert_selection"] = json.dumps(rows)
    best = next(r for r in rows if r["snapshot"] == chosen)
    console.print(
        f"[collect] expert: snapshot at env step {best['env_steps']} "
        f"({best['select_return']:.1f} over {cfg.expert_select_episodes} noisy episodes; "
        f"training evaluation {best['train_eval']:.1f})",
        markup=False,
    )
    return run.snapshots[chosen]


def shipped_ant() -> Path:
    """The goal-reaching ant shipped inside the package (:data:`SHIPPED_ANT`; a policy file
    of :func:`~mpcdwm.online_td3.export_policy`), which AntMaze collection drives when no
    ant of one's own was trained."""
    return Path(str(resources.files("mpcdwm") / "assets" / SHIPPED_ANT))


def _ant_driver(cfg: CollectConfig, ant_dir: Path) -> tuple[Callable, int, str]:
    """(policy, env steps it was trained for, where it came from) of the ant that drives the
    maze: ``cfg.agent_dir`` (an online agent's folder, or a policy file), else the online
    agent in the cache folder, else the shipped ant."""
    if ant_dir.is_file():
        policy, meta = load_policy_file(ant_dir, env=ANT_GOAL_ENV)
        return policy, int(meta["env_steps"]), str(ant_dir)
    if not (ant_dir / CHECKPOINT_NAME).exists():
        if cfg.agent_dir is None and shipped_ant().is_file():
            policy, meta = load_policy_file(shipped_ant(), env=ANT_GOAL_ENV)
            return policy, int(meta["env_steps"]), f"shipped {SHIPPED_ANT}"
        raise CheckpointError(
            f"AntMaze collection drives a goal-reaching ant: no online agent at {ant_dir}. "
            f"Train it first with `mpcdwm collect --env {ANT_GOAL_ENV} --recipe expert "
            f"--seed {cfg.seed} --train-steps 800000 --start-steps 25000` (resumable; how the "
            "shipped ant was trained), or pass --agent-dir."
        )
    snapshot = chosen_expert(ant_dir)
    policy, progress = load_policy(ant_dir, snapshot)
    steps = progress["env_steps"] if snapshot is None else progress["evals"][snapshot]["env_steps"]
    return policy, int(steps), str(ant_dir)


def _collect_antmaze(cfg: CollectConfig, dataset_id: str, console: Console) -> str:
    """AntMaze: drive the trained goal-reaching ant along BFS waypoints (``play``/``diverse``)."""
    ant_dir = agent_dir_of(dataclasses.replace(cfg, env=ANT_GOAL_ENV))
    policy, driver_steps, driver = _ant_driver(cfg, ant_dir)
    # An ant trained on this machine outranks the shipped one: say which drives, since a newer
    # package's ant is not used while an older cached one exists.
    console.print(
        f"[collect] AntMaze: driving the goal-reaching ant {driver} ({driver_steps} env steps "
        "of TD3; --agent-dir picks another)",
        markup=False,
    )
    return maze.write_antmaze_dataset(
        cfg.env,
        policy,
        recipe=cfg.recipe,
        steps=cfg.steps,
        seed=cfg.seed,
        noise=maze.ANTMAZE_NOISE if cfg.rollout_noise is None else cfg.rollout_noise,
        max_episode_steps=cfg.max_episode_steps,
        out=None if cfg.out is None else str(cfg.out),
        dataset_id=dataset_id,
        overwrite=cfg.overwrite,
        extra_metadata={
            "mpcdwm_command": command_line(cfg),
            **host_provenance(),
            "mpcdwm_low_level_agent": driver,
            "mpcdwm_low_level_env_steps": driver_steps,
        },
    )


def _trained_return(cfg: CollectConfig) -> float | None:
    """Final evaluation return of a fully trained online agent in the agent folder, if any."""
    path = agent_dir_of(cfg) / CHECKPOINT_NAME
    if not path.exists():
        return None
    _, meta = load_checkpoint(path, expect={"kind": "collect-online-td3"})
    prog = meta["progress"]
    return float(prog["evals"][-1]["return"]) if prog["done"] and prog["evals"] else None


def _action_bounds(cfg: CollectConfig) -> tuple[np.ndarray, np.ndarray]:
    env = make_env(cfg.env, **limit_kwargs(cfg.max_episode_steps))
    low, high = env.action_space.low, env.action_space.high
    env.close()
    return low, high


__all__ = [
    "EXPERT_CHOICE_NAME",
    "RECIPES",
    "SHIPPED_ANT",
    "CollectConfig",
    "chosen_expert",
    "collect",
    "command_line",
    "default_dataset_id",
    "export_expert",
    "shipped_ant",
]
