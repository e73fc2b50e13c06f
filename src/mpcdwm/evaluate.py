"""Evaluation in the real environment: episodes, returns, normalised scores, latency.

``mpcdwm evaluate`` (:func:`evaluate`) runs the base policy and any planners of
:mod:`mpcdwm.mpc` from checkpoints and writes ``OUT/eval.json``::

    {"dataset", "env_id", "seed", "ref_scores": [min, max] | null, "config": EvaluateConfig,
     "mpc": the MPCConfig in effect (its preset applied),
     "agent": {"path", "kind", "steps", "done", "seed", "config", "digest"},
     "world_model": {"kind", "denoise_steps", "flow_steps", "path", "steps", "done",
                     "digest"} | null,
     "planners": {name: {"returns", "lengths", "normalized_scores",
                         "normalized_score": {"mean", "std"}, "latency_ms": {"median", "p95"},
                         "compile_s", "fallbacks", "diagnostics": {name: mean},
                         "config": {...}, "imagined_real_corr": [per episode],
                         "goal_distances": [per episode] (goal envs only),
                         "trace": {"real_return", "imagined_return_before",
                                   "imagined_return_after"}}}}

``agent`` and ``world_model`` say what was evaluated: each checkpoint's training step,
whether its run had finished, and the SHA-256 of its payload (``digest``), so a later
``mpcdwm run`` can tell that a stage trained further and re-evaluate.
``trace`` holds, per decision of episode 0, the cumulative real return before the
decision and the imagined returns before/after planning. ``imagined_real_corr`` is, per
episode, how well the planner's imagined return tracks the real one
(:func:`imagined_real_correlation`; null for the base policy). ``goal_distances`` (mazes):
how far from the goal each episode's last observation lies. The episodes themselves
run through :func:`mpcdwm.rollout.run_episodes`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from mpcdwm.agents import TrainedAgent, load_agent
from mpcdwm.checkpoint import checkpoint_digest, checkpoint_file, training_progress
from mpcdwm.data import return_to_go
from mpcdwm.envs import GoalRule, make_env, task_rule
from mpcdwm.files import ensure_writable_dir, write_json_atomic
from mpcdwm.mpc import PLANNERS, MPCConfig, check_ensemble, make_planner, resolve, validate_config
from mpcdwm.rollout import run_episodes
from mpcdwm.world import load_world_model


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a base agent and planners in the real environment (``mpcdwm evaluate``)."""

    agent: Path
    """Run directory of a trained agent (``mpcdwm train-agent --out``)."""
    world_model: Path | None = None
    """Run directory of a trained world model (needed by every planner except none)."""
    validation_world_model: Path | None = None
    """With ``--mpc.validate``: an independently trained world model (same settings, another
    seed) that judges the validated step instead of the planning model (mpc only)."""
    ensemble_world_models: tuple[Path, ...] = ()
    """With ``--mpc.ensemble-penalty``: independently trained world models (the planning
    model's settings, other seeds) whose disagreement with it is penalized along the imagined
    path (every planner but none)."""
    planner: tuple[str, ...] = ("none", "mpc")
    """Methods to evaluate: none (base policy), mpc (MPCwDWM), action-grad, mppi."""
    episodes: int = 10
    """Episodes per method (episode i resets with :func:`episode_seed`, the same for every
    method, so their returns pair episode by episode)."""
    seed: int = 0
    """Seed of the env resets and of the planners' noise."""
    out: Path = Path("runs/eval")
    """Output directory (eval.json)."""
    mpc: MPCConfig = MPCConfig()
    """Planner budget and options."""
    chosen_by: tuple[str, ...] = ()
    """``FIELD=RULE`` for each ``--mpc`` value that a rule chose for this run (e.g.
    ``ensemble_penalty=balanced``: a weight computed per seed by
    :func:`mpcdwm.mpc.balance_ensemble_penalty`). Recorded in eval.json ``chosen_by``;
    ``mpcdwm report`` then names the method by the rule, so runs whose rule gave each seed
    its own value pool into one method."""
    max_steps: int | None = None
    """Cut episodes after this many steps (None = the env's own limit)."""
    progress: bool = True
    """Show progress bars (the result table and the eval.json path are printed either way)."""


def _plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, paths -> str (JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _check_config(cfg: EvaluateConfig) -> None:
    if not cfg.planner:
        raise ValueError("--planner is empty; give at least one of " + ", ".join(PLANNERS))
    unknown = [p for p in cfg.planner if p not in PLANNERS]
    if unknown:
        raise ValueError(f"unknown planner(s) {unknown}; choose from {list(PLANNERS)}.")
    if len(set(cfg.planner)) != len(cfg.planner):
        raise ValueError(f"--planner lists a method twice: {list(cfg.planner)}.")
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {cfg.episodes}.")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1 or None, got {cfg.max_steps}.")
    chosen_by_fields(cfg.chosen_by)
    needs_world = [p for p in cfg.planner if p != "none"]
    if needs_world and cfg.world_model is None:
        raise ValueError(
            f"planner(s) {needs_world} need a world model: pass --world-model DIR "
            "(train one with `mpcdwm train-world-model`), or use --planner none."
        )


def chosen_by_fields(entries: tuple[str, ...]) -> dict[str, str]:
    """``("ensemble_penalty=balanced", ...)`` -> ``{"ensemble_penalty": "balanced"}``; a
    ValueError names an entry that is not ``FIELD=RULE`` over an MPCConfig field."""
    fields = {f.name for f in dataclasses.fields(MPCConfig)}
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, rule = entry.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not rule.strip() or name not in fields:
            raise ValueError(
                f"--chosen-by {entry!r}: expected FIELD=RULE with FIELD an --mpc option "
                "(e.g. ensemble_penalty=balanced)."
            )
        out[name] = rule.strip()
    return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def imagined_real_correlation(
    imagined: np.ndarray, rewards: np.ndarray, gamma: float
) -> float | None:
    """Pearson correlation, over one episode's decisions, of the imagined return before
    planning (``imagined (T,)``: H model rewards plus the discounted terminal critic, an
    estimate of the value of the state) and the real discounted return-to-go from that
    state, ``G_t = sum_k gamma^k r_{t+k}`` (``rewards (T,)``, truncated at the episode's end).

    None when undefined (fewer than 3 decisions, or either series constant or non-finite).
    """
    imagined = np.asarray(imagined, np.float64)
    rewards = np.asarray(rewards, np.float64)
    if imagined.shape != rewards.shape or imagined.ndim != 1:
        raise ValueError(
            f"imagined {imagined.shape} and rewards {rewards.shape} must be equal 1-D shapes."
        )
    to_go = return_to_go(rewards, gamma)
    if len(imagined) < 3 or not np.all(np.isfinite(imagined)):
        return None
    if np.std(imagined) == 0 or np.std(to_go) == 0:
        return None
    return float(np.corrcoef(imagined, to_go)[0, 1])


EPISODES_PER_SEED = 10_000
"""Episode seeds of different evaluation seeds never overlap below this many episodes."""


def episode_seed(seed: int, episode: int = 0) -> int:
    """Env reset seed of ``episode`` under evaluation seed ``seed``: ``seed * 10_000 +
    episode``, so seeds 0 and 1 do not share start states (``seed + episode`` did)."""
    return seed * EPISODES_PER_SEED + episode


def checkpoint_record(run_dir_or_ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint was evaluated: its path, training step, whether its run finished,
    and the digest of its payload (see :func:`mpcdwm.checkpoint.checkpoint_digest`)."""
    path = checkpoint_file(run_dir_or_ckpt)
    return {
        "path": str(path.resolve()),
        "steps": meta.get("step"),
        "done": bool(meta.get("done", False)),
        "digest": checkpoint_digest(path),
    }


def evaluate(cfg: EvaluateConfig) -> Path:
    """Run every planner of ``cfg`` for ``cfg.episodes`` episodes; returns ``out/eval.json``."""
    _check_config(cfg)
    validate_config(cfg.mpc)
    ensure_writable_dir(cfg.out, "--out")  # before the episodes: a bad --out costs nothing
    agent = load_agent(cfg.agent)
    world = None
    if cfg.world_model is not None and any(p != "none" for p in cfg.planner):
        world = load_world_model(cfg.world_model)
        if world.env_id != agent.env_id or (world.obs_dim, world.act_dim) != (
            agent.obs_dim,
            agent.act_dim,
        ):
            raise ValueError(
                f"the agent ({cfg.agent}) is for {agent.env_id} (obs {agent.obs_dim}, act "
                f"{agent.act_dim}) but the world model ({cfg.world_model}) is for "
                f"{world.env_id} (obs {world.obs_dim}, act {world.act_dim}); train both on "
                "the same dataset."
            )
    validation_world = None
    if cfg.validation_world_model is not None:
        if world is None or "mpc" not in cfg.planner or not cfg.mpc.validate:
            raise ValueError(
                "--validation-world-model judges the validated step: it needs --planner mpc, "
                "--mpc.validate and --world-model."
            )
        validation_world = load_world_model(cfg.validation_world_model, env_id=agent.env_id)
    if cfg.ensemble_world_models and world is None:
        raise ValueError("--ensemble-world-models needs --world-model (the planning model).")
    ensemble = [load_world_model(d, env_id=agent.env_id) for d in cfg.ensemble_world_models]
    console = Console(stderr=True, soft_wrap=True)
    agent_record = {
        "kind": agent.meta.get("agent"),
        "seed": (agent.meta.get("config") or {}).get("seed"),
        "config": agent.meta.get("agent_config"),
        **checkpoint_record(cfg.agent, agent.meta),
    }
    if not agent_record["done"]:
        console.print(
            f"[yellow]warning:[/] the agent in {cfg.agent} is from an unfinished run "
            f"({training_progress(agent.meta)}); its scores are not the trained agent's. "
            "Re-run its training command to finish it."
        )
    mpc_cfg = resolve(cfg.mpc)
    for name in cfg.planner:  # before any episode runs
        check_ensemble(mpc_cfg, name, world, ensemble)
    rule = None
    wants_rule = mpc_cfg.termination != "learned" or mpc_cfg.reward != "learned"
    if wants_rule and any(p != "none" for p in cfg.planner):
        env = make_env(agent.env_id)
        rule = task_rule(env)
        env.close()
        if rule is None and mpc_cfg.termination != "learned":
            console.print(
                f"[yellow]note:[/] {agent.env_id} has no known health rule or goal; imagined "
                "episodes end by the learned termination model (--mpc.termination "
                f"{mpc_cfg.termination} applies to Hopper, Walker2d, Ant and the mazes)."
            )
        if not isinstance(rule, GoalRule) and mpc_cfg.reward != "learned":
            console.print(
                f"[yellow]note:[/] {agent.env_id} has no goal rule; imagined rewards come from "
                f"the learned reward model (--mpc.reward {mpc_cfg.reward} applies to PointMaze "
                "and AntMaze)."
            )
    ref_min, ref_max = agent.meta.get("ref_min_score"), agent.meta.get("ref_max_score")
    has_ref = ref_min is not None and ref_max is not None and ref_max != ref_min

    def normalized(returns: list[float]) -> np.ndarray:
        if not has_ref:
            return np.full(len(returns), np.nan)
        return 100.0 * (np.asarray(returns, np.float64) - ref_min) / (ref_max - ref_min)

    results: dict[str, Any] = {}
    wm_info = None
    if world is not None:
        wm_info = {
            "kind": world.kind,
            "denoise_steps": int(world.config.denoise_steps),
            "flow_steps": int(world.config.flow_steps),
            **checkpoint_record(cfg.world_model, world.meta),
        }
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not cfg.progress,
    )
    with progress:
        for name in cfg.planner:
            planner = make_planner(
                name,
                cfg.mpc,
                agent,
                world,
                seed=cfg.seed,
                rule=rule,
                validation_world=validation_world if name == "mpc" else None,
                ensemble=ensemble,
            )
            task = progress.add_task(f"{name:>11}", total=cfg.episodes, info="compiling")
            trace: dict[str, list[float]] = {
                "real_return": [],
                "imagined_return_before": [],
                "imagined_return_after": [],
            }
            episode = {"i": 0, "ret": 0.0, "imagined": [], "rewards": []}
            latencies: list[float] = []
            correlations: list[float | None] = []

            def decide(obs, planner=planner, trace=trace, episode=episode, latencies=latencies):
                planner.compile(obs)  # once; compile time is reported apart from latency
                t0 = time.perf_counter()
                action, diag = planner(obs)
                latencies.append(1e3 * (time.perf_counter() - t0))
                episode["imagined"].append(diag["imagined_return_before"])
                if episode["i"] == 0:
                    trace["real_return"].append(episode["ret"])
                    trace["imagined_return_before"].append(diag["imagined_return_before"])
                    trace["imagined_return_after"].append(diag["imagined_return_after"])
                return action, diag

            def on_step(reward, episode=episode):
                episode["ret"] += reward
                episode["rewards"].append(reward)

            def on_start(i, planner=planner, episode=episode):
                planner.reset(i)
                episode.update(i=i, ret=0.0, imagined=[], rewards=[])

            def on_episode(
                i, ret, task=task, lat=latencies, episode=episode, name=name, out=correlations
            ):
                corr = None
                if name != "none":
                    corr = imagined_real_correlation(
                        episode["imagined"], episode["rewards"], float(agent.gamma)
                    )
                out.append(corr)
                info = f"return {ret:8.1f}  {np.median(lat):6.2f} ms/decision"
                progress.update(task, advance=1, info=info)

            stats = run_episodes(
                agent.env_id,
                decide,
                episodes=cfg.episodes,
                seed=episode_seed(cfg.seed),
                on_episode_start=on_start,
                progress=on_episode,
                max_steps=cfg.max_steps,
                on_step=on_step,
            )
            scores = normalized(stats.returns)
            diag_names = sorted({k for d in stats.diagnostics for k in d})
            diag_means = {
                k: _finite_or_none(np.mean([d[k] for d in stats.diagnostics if k in d]))
                for k in diag_names
            }
            lat = np.asarray(latencies if latencies else [np.nan])
            results[name] = {
                "returns": [float(r) for r in stats.returns],
                "lengths": [int(n) for n in stats.lengths],
                "normalized_scores": [_finite_or_none(x) for x in scores],
                "normalized_score": {
                    "mean": _finite_or_none(np.mean(scores)),
                    "std": _finite_or_none(np.std(scores)),
                },
                "latency_ms": {
                    "median": float(np.median(lat)),
                    "p95": float(np.percentile(lat, 95)),
                },
                "compile_s": float(planner.compile_s),
                "fallbacks": int(sum(d.get("fallback", 0.0) > 0 for d in stats.diagnostics)),
                "diagnostics": diag_means,
                "config": _planner_config(name, mpc_cfg, agent, wm_info),
                "imagined_real_corr": correlations,
                "trace": {k: [_finite_or_none(x) for x in v] for k, v in trace.items()},
            }
            if stats.goal_distances:
                results[name]["goal_distances"] = [float(d) for d in stats.goal_distances]
    data = {
        "dataset": agent.meta.get("dataset"),
        "dataset_path": agent.meta.get("dataset_path"),  # two datasets may share an id
        "env_id": agent.env_id,
        "seed": cfg.seed,
        "ref_scores": [ref_min, ref_max] if has_ref else None,
        "config": _plain(cfg),
        "agent": agent_record,
        # The planner settings in effect (a --mpc.preset applied), which the report groups by.
        "mpc": _plain(mpc_cfg),
        "chosen_by": chosen_by_fields(cfg.chosen_by),
        "world_model": wm_info,
        "validation_world_model": None
        if validation_world is None
        else checkpoint_record(cfg.validation_world_model, validation_world.meta),
        "ensemble_world_models": [
            checkpoint_record(d, m.meta)
            for d, m in zip(cfg.ensemble_world_models, ensemble, strict=True)
        ],
        "planners": results,
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / "eval.json"
    write_json_atomic(path, data)
    table = Table(title=f"{data['dataset']} ({agent.env_id}), seed {cfg.seed}")
    goal = any("goal_distances" in res for res in results.values())
    columns = ["method", "return", "normalized", "latency ms (med/p95)", "fallbacks"]
    for col in columns + ["final goal distance"] * goal:
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, res in results.items():
        rets = np.asarray(res["returns"])
        ns = res["normalized_score"]
        norm = "n/a" if ns["mean"] is None else f"{ns['mean']:.1f} ± {ns['std']:.1f}"
        row = [
            name,
            f"{rets.mean():.1f} ± {rets.std():.1f}",
            norm,
            f"{res['latency_ms']['median']:.2f} / {res['latency_ms']['p95']:.2f}",
            str(res["fallbacks"]),
        ]
        if goal:
            dist = np.asarray(res.get("goal_distances", [np.nan]))
            row.append(f"{dist.mean():.2f} ± {dist.std():.2f}")
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {path}")
    return path


def _planner_config(name: str, mpc: MPCConfig, agent: TrainedAgent, wm_info: dict | None) -> dict:
    """The budget that defines method ``name`` (what report.py labels rows with)."""
    if name == "none":
        return {"world_model": None, "denoise_steps": None}
    keys = ["adapt_steps", "num_rollouts", "horizon", "gamma"]
    keys += {
        "mpc": [
            "lr",
            "optimizer",
            "warm_start",
            "trust_region",
            "uncertainty_penalty",
            "adapt",
            "max_grad_norm",
        ],
        "action-grad": ["action_lr", "uncertainty_penalty"],
        "dream-mpc": ["action_lr", "dream_candidates", "uncertainty_penalty"],
        "mppi": [
            "mppi_iterations",
            "mppi_samples",
            "mppi_policy_samples",
            "mppi_elites",
            "mppi_temperature",
            "mppi_min_std",
            "mppi_max_std",
            "uncertainty_penalty",
        ],
    }[name]
    conf = {k: getattr(mpc, k) for k in keys}
    if conf["gamma"] is None:
        conf["gamma"] = float(agent.gamma)
    conf["world_model"] = None if wm_info is None else wm_info["kind"]
    conf["denoise_steps"] = None if wm_info is None else wm_info["denoise_steps"]
    return conf
