"""The whole method as one resumable run: ``mpcdwm run``, ``mpcdwm demo``, ``mpcdwm report``.

A run directory holds one folder per stage::

    RUN/config.yaml          the effective config
    RUN/agent/               base offline agent       (mpcdwm train-agent)
    RUN/world_model/         transition/reward/termination models (mpcdwm train-world-model)
    RUN/eval/eval.json       base policy and planners in the real env (mpcdwm evaluate)
    RUN/report/              report.md, report.html, plots (mpcdwm report)

A stage whose output is complete is skipped, a stage that was interrupted
resumes from its last checkpoint, so re-running the same command finishes the job.
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from rich.console import Console
from rich.rule import Rule

from mpcdwm.agents import AgentName, TrainAgentConfig, train_agent
from mpcdwm.checkpoint import (
    CheckpointError,
    checkpoint_digest,
    checkpoint_file,
    load_checkpoint,
)
from mpcdwm.configs import check_config, read_mapping_file, same_setting
from mpcdwm.evaluate import EvaluateConfig, evaluate
from mpcdwm.files import ensure_writable_dir, write_text_atomic
from mpcdwm.mpc import MPCConfig, validate_config
from mpcdwm.report import ReportConfig, report
from mpcdwm.world import TrainWorldModelConfig, train_world_model

Planner = Literal["none", "mpc", "action-grad", "mppi", "dream-mpc"]


@dataclasses.dataclass(frozen=True)
class AgentStage:
    """The base agent of a run (flags ``--agent.*``; ``mpcdwm train-agent`` trains it)."""

    kind: AgentName = "rebrac"
    """Which agent: rebrac (the paper's base), iql, or td3bc."""
    steps: int = 100_000
    """Gradient steps for the base agent."""
    batch_size: int | None = None
    """Batch size (None: the agent's published preset, 1024 for ReBRAC on MuJoCo)."""
    set: tuple[str, ...] = ()
    """Any other agent config field as FIELD=VALUE, e.g. ``--agent.set actor_bc_coef=0.1``
    (train-agent's --agent-set)."""


@dataclasses.dataclass(frozen=True)
class WorldModelStage:
    """The world model of a run (flags ``--world-model.*``; ``mpcdwm train-world-model``)."""

    kind: Literal["diffusion", "flow", "meanflow", "mlp"] = "diffusion"
    """Transition model: conditional diffusion, flow matching, MeanFlow, or plain MLP."""
    steps: int = 50_000
    """Gradient steps for the world model."""
    denoise_steps: int = 5
    """Denoising steps of the diffusion model."""
    flow_steps: int = 2
    """Integration steps of the flow-matching model (1-4)."""


@dataclasses.dataclass(frozen=True)
class EvalStage:
    """The evaluation of a run in the real env (flags ``--eval.*``; ``mpcdwm evaluate``)."""

    planners: tuple[Planner, ...] = ("none", "mpc")
    """Methods: none (base policy), mpc (MPCwDWM), action-grad, mppi."""
    episodes: int = 10
    """Evaluation episodes per planner."""
    max_steps: int | None = None
    """Cut evaluation episodes at this many steps (None: the env's own limit)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Dataset -> base agent -> world model -> evaluation -> report, in one folder."""

    dataset: str
    """Minari dataset id or folder, or a D4RL .hdf5 file."""
    out: Path = Path("runs/run")
    """Run directory; re-running with the same folder resumes."""
    seed: int = 0
    checkpoint_every: int = 10_000
    """Checkpoint the agent and world model every this many updates (a killed run resumes)."""
    agent: AgentStage = dataclasses.field(default_factory=AgentStage)
    world_model: WorldModelStage = dataclasses.field(default_factory=WorldModelStage)
    eval: EvalStage = dataclasses.field(default_factory=EvalStage)
    mpc: MPCConfig = dataclasses.field(default_factory=MPCConfig)
    """Budget and options of the inference-time adaptation (and the comparison planners)."""
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The README's main job: the whole pipeline on the small Hopper dataset shipped inside
    the package, with budgets that finish in minutes on a laptop CPU."""

    out: Path = Path("runs/demo")
    seed: int = 0
    agent: AgentStage = dataclasses.field(
        default_factory=lambda: AgentStage(kind="td3bc", steps=10_000, batch_size=256)
    )
    """Base agent. TD3+BC (ReBRAC without its tricks) reaches the data's level within the
    demo's budget at its own batch of 256; ReBRAC, the paper's base, needs far more updates
    (normalized 4.5-8 after 10k here, its hopper falls at once). ``mpcdwm run`` defaults to
    ReBRAC."""
    world_model: WorldModelStage = dataclasses.field(
        default_factory=lambda: WorldModelStage(steps=10_000)
    )
    eval: EvalStage = dataclasses.field(default_factory=lambda: EvalStage(episodes=10))
    progress: bool = True


def shipped_dataset() -> Path:
    """Folder of the Minari dataset shipped inside the package (Hopper-v5, medium)."""
    path = Path(str(resources.files("mpcdwm") / "assets" / "hopper-medium-v0"))
    if not (path / "data").is_dir():
        raise FileNotFoundError(
            f"the shipped demo dataset is missing at {path}; reinstall mpcdwm or regenerate it "
            "(see src/mpcdwm/assets/README.md)"
        )
    return path


def _stage_done(ckpt_dir: Path, steps: int) -> bool:
    """A training stage is done when its checkpoint is final and has the requested steps
    (asking for more steps later continues from it)."""
    try:
        _, meta = load_checkpoint(checkpoint_file(ckpt_dir))
    except CheckpointError:
        return False
    return bool(meta.get("done")) and int(meta.get("step", 0)) >= steps


# Config fields (dotted paths into config.yaml) that decide what a trained stage *is*:
# changing one in an existing run directory would silently mix models, so it is refused.
# Step budgets may grow.
_STAGE_IDENTITY = {
    "agent": ("dataset", "seed", "agent.kind", "agent.batch_size", "agent.set"),
    "world_model": (
        "dataset",
        "seed",
        "world_model.kind",
        "world_model.denoise_steps",
        "world_model.flow_steps",
    ),
}

# config.yaml of runs made before the stages were nested: flat key -> dotted path.
_FLAT_KEYS = {
    "agent_steps": "agent.steps",
    "agent_batch_size": "agent.batch_size",
    "world_model_steps": "world_model.steps",
    "denoise_steps": "world_model.denoise_steps",
    "flow_steps": "world_model.flow_steps",
    "planners": "eval.planners",
    "episodes": "eval.episodes",
    "max_episode_steps": "eval.max_steps",
}


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping -> {dotted path: value}; a flat (older) config.yaml is read
    in today's paths, its agent having had no ``agent.set`` overrides."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and isinstance(value, str) and key in ("agent", "world_model"):
            out[f"{key}.kind"] = value  # flat layout: the stage's kind
            if key == "agent":
                out["agent.set"] = []
        elif not prefix and key in _FLAT_KEYS:
            out[_FLAT_KEYS[key]] = value
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_resumable(previous: dict[str, Any], effective: dict[str, Any], out: Path) -> None:
    """Refuse a config that changes a stage identity of a stage trained in ``out``
    (both arguments: flattened config mappings)."""
    for stage, keys in _STAGE_IDENTITY.items():
        if not checkpoint_file(out / stage).exists():
            continue
        changed = [
            k for k in keys if k in previous and not same_setting(k, previous[k], effective[k])
        ]
        if changed:
            was = ", ".join(f"{k}={previous[k]!r}" for k in changed)
            now = ", ".join(f"{k}={effective[k]!r}" for k in changed)
            raise ValueError(
                f"{out} already holds a {stage} trained with {was}; this run asks for {now}. "
                f"Use a new --out, or delete {out / stage} to retrain it."
            )


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _matches(stored: Any, current: Any, default: Any) -> bool:
    """``stored == current``, except that a key missing from a stored mapping matches when the
    current value is the field's default (a config written before that field existed)."""
    if not isinstance(current, dict):
        return stored == current
    if not isinstance(stored, dict) or not set(stored) <= set(current):
        return False
    default = default if isinstance(default, dict) else {}
    return all(
        _matches(stored[k], v, default.get(k))
        if k in stored
        else (k in default and default[k] == v)
        for k, v in current.items()
    )


def _same_checkpoint(record: dict[str, Any] | None, run_dir: Path | None) -> bool:
    """Whether an eval.json's record of a checkpoint (``evaluate.checkpoint_record``) is the
    checkpoint now in ``run_dir``: same digest (older files without one never match)."""
    if run_dir is None:
        return record is None
    if not record or "digest" not in record:
        return False
    try:
        return checkpoint_digest(checkpoint_file(run_dir)) == record["digest"]
    except (OSError, CheckpointError):
        return False


def _same_eval_config(eval_data: dict[str, Any], cfg: Any) -> bool:
    """Whether an existing eval.json was made with ``cfg`` (an EvaluateConfig) *and* the
    checkpoints now in its agent and world-model folders (a stage trained further since, with
    more ``--agent.steps`` or ``--world-model.steps``, makes the evaluation stale); display
    options (``progress``) do not count."""
    stored = dict(eval_data.get("config") or {})
    current = _to_plain(cfg)
    default = _to_plain(type(cfg)(agent=cfg.agent))
    stored.pop("progress", None)
    current.pop("progress", None)
    return _matches(stored, current, default) and same_checkpoints(eval_data, cfg)


def same_checkpoints(eval_data: dict[str, Any], cfg: EvaluateConfig) -> bool:
    """Whether the agent, world-model, validation-world-model and ensemble checkpoints an
    eval.json records are the ones now in ``cfg``'s folders (same payload digests)."""
    members = eval_data.get("ensemble_world_models") or []  # absent before ensembles existed
    return (
        all(
            _same_checkpoint(eval_data.get(field), getattr(cfg, field))
            for field in ("agent", "world_model", "validation_world_model")
        )
        and len(members) == len(cfg.ensemble_world_models)
        and all(map(_same_checkpoint, members, cfg.ensemble_world_models))
    )


def evaluation_is_current(eval_json: Path, cfg: EvaluateConfig) -> bool:
    """Whether ``eval_json`` holds an evaluation made with ``cfg`` of the checkpoints now in
    its agent and world-model folders: a run trained further since (its checkpoint's digest
    changed) or other settings make it stale. A missing or unreadable file is not current."""
    try:
        data = json.loads(Path(eval_json).read_text())
    except (OSError, ValueError):
        return False
    return _same_eval_config(data, cfg)


def run(cfg: RunConfig) -> Path:
    """Run (or resume) every stage; returns the run directory."""
    # Before any work: every stage's settings and --out, so nothing fails after training.
    check_config(cfg, skip=("mpc",))
    validate_config(cfg.mpc)
    ensure_writable_dir(cfg.out, "--out")
    console = Console(stderr=True, soft_wrap=True)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    effective = _to_plain(cfg)
    config_path = out / "config.yaml"
    if config_path.exists():
        fix = "delete it and re-run (it is written again from the flags)"
        previous = _flatten(read_mapping_file(config_path, "run config", "a mapping", fix))
        now = _flatten(effective)
        _check_resumable(previous, now, out)
        changed = sorted(k for k in now if not same_setting(k, previous.get(k), now[k]))
        if changed:
            console.print(
                f"[yellow]note:[/] {config_path} differs in {changed}; trained stages are kept "
                "(more steps continue them), evaluation uses the new config."
            )
    write_text_atomic(config_path, yaml.safe_dump(effective, sort_keys=False))

    stages = 4
    t_start = time.perf_counter()
    agent_dir, wm_dir, eval_dir = out / "agent", out / "world_model", out / "eval"

    agent, wm, ev = cfg.agent, cfg.world_model, cfg.eval
    console.print(Rule(f"[1/{stages}] base agent: {agent.kind}"))
    if _stage_done(agent_dir, agent.steps):
        console.print(f"done already ({agent_dir}); skipped")
    else:
        train_agent(
            TrainAgentConfig(
                dataset=cfg.dataset,
                agent=agent.kind,
                steps=agent.steps,
                batch_size=agent.batch_size,
                agent_set=agent.set,
                out=agent_dir,
                seed=cfg.seed,
                checkpoint_every=cfg.checkpoint_every,
                progress=cfg.progress,
            )
        )

    needs_world = any(p != "none" for p in ev.planners)
    console.print(Rule(f"[2/{stages}] world model: {wm.kind}"))
    if not needs_world:
        console.print("no planner needs it (--eval.planners none); skipped")
    elif _stage_done(wm_dir, wm.steps):
        console.print(f"done already ({wm_dir}); skipped")
    else:
        train_world_model(
            TrainWorldModelConfig(
                dataset=cfg.dataset,
                model=wm.kind,
                steps=wm.steps,
                out=wm_dir,
                seed=cfg.seed,
                denoise_steps=wm.denoise_steps,
                flow_steps=wm.flow_steps,
                checkpoint_every=cfg.checkpoint_every,
                progress=cfg.progress,
            )
        )

    console.print(Rule(f"[3/{stages}] evaluation: {', '.join(ev.planners)}"))
    eval_json = eval_dir / "eval.json"
    eval_cfg = EvaluateConfig(
        agent=agent_dir,
        world_model=wm_dir if needs_world else None,
        planner=ev.planners,
        episodes=ev.episodes,
        seed=cfg.seed,
        out=eval_dir,
        mpc=cfg.mpc,
        max_steps=ev.max_steps,
        progress=cfg.progress,
    )
    if evaluation_is_current(eval_json, eval_cfg):
        console.print(f"done already ({eval_json}); skipped")
    else:
        evaluate(eval_cfg)

    console.print(Rule(f"[4/{stages}] report"))
    report_md = report(ReportConfig(runs=(eval_dir,), out=out / "report"))
    console.print(
        f"finished in {time.perf_counter() - t_start:.0f} s. Report: {report_md} "
        f"(also {report_md.with_suffix('.html')})"
    )
    return out


def demo(cfg: DemoConfig) -> Path:
    """Run the pipeline on the shipped dataset with small budgets."""
    return run(
        RunConfig(
            dataset=str(shipped_dataset()),
            out=cfg.out,
            seed=cfg.seed,
            agent=cfg.agent,
            world_model=cfg.world_model,
            eval=cfg.eval,
            progress=cfg.progress,
        )
    )
