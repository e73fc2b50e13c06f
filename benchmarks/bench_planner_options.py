"""Planner options on one trained run: real-env score per MPC configuration.

Takes a run directory of ``mpcdwm run`` (its ``agent/`` and ``world_model/``) and
evaluates one planner under several ``MPCConfig`` variants, each given as
``key=value[,key=value...]`` (field names of :class:`mpcdwm.mpc.MPCConfig`), with the
same episode seeds, writing each variant's ``eval.json`` under ``OUT/<variant>`` and
printing one table: normalized score and the paired gain over the base agent on the same
episodes (both with bootstrap 95% CIs and n = seeds x episodes, computed by
:mod:`mpcdwm.report`), the planner's mean action change from the pretrained action, its
imagined-return gain, and the median decision latency.

    python benchmarks/bench_planner_options.py runs/scores_iql/hopper-medium-v0/seed0 \
        "lr=3e-4" "lr=3e-5" "optimizer=sgd,lr=1e-4" "adapt=last_layer" --episodes 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

from mpcdwm.evaluate import EvaluateConfig, evaluate
from mpcdwm.mpc import MPCConfig, resolve
from mpcdwm.report import load_results, summarize


def parse_variant(text: str) -> MPCConfig:
    """``"lr=3e-5,optimizer=sgd"`` -> MPCConfig with those fields (typed as the defaults)."""
    fields = {f.name: f for f in dataclasses.fields(MPCConfig)}
    changes = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise SystemExit(f"unknown MPCConfig field {key!r}; valid: {sorted(fields)}")
        default = getattr(resolve(MPCConfig()), key)  # None defaults filled in
        if isinstance(default, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float) or default is None:
            value = float(raw)
        else:
            value = raw
        changes[key] = value
    return dataclasses.replace(MPCConfig(), **changes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run directory with agent/ and world_model/")
    p.add_argument("variants", nargs="+", help="key=value[,key=value] MPCConfig changes")
    p.add_argument("--planner", default="mpc", choices=["mpc", "action-grad", "mppi"])
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default: RUN/planner_options")
    args = p.parse_args()
    out_root = args.out or args.run / "planner_options"

    rows = []  # (label, eval.json, planner)
    for i, text in enumerate(args.variants):
        cfg = parse_variant(text)
        planners = ("none", args.planner) if i == 0 else (args.planner,)
        path = evaluate(
            EvaluateConfig(
                agent=args.run / "agent",
                world_model=args.run / "world_model",
                planner=planners,
                episodes=args.episodes,
                seed=args.seed,
                out=out_root / f"{args.planner}_{text.replace('=', '-').replace(',', '_')}",
                mpc=cfg,
                progress=False,
            )
        )
        if i == 0:
            rows.append(("base (none)", path, "none"))
        rows.append((text, path, args.planner))

    # Scores and paired gains from mpcdwm.report (one implementation of the statistics): the
    # variants share the agent checkpoint and episode seeds, so each pairs with the base run.
    results = [r for p in dict.fromkeys(path for _, path, _ in rows) for r in load_results(p)]
    summary = summarize(results)
    print(f"# bench_planner_options ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(f"run {args.run}, planner {args.planner}, {args.episodes} episodes, seed {args.seed}\n")
    unit = "normalized score" if all(r.scores is not None for r in results) else "return"
    print(
        f"| variant | {unit} | gain over base | action change | imagined before -> after "
        "| latency ms |"
    )
    print("|---|---|---|---|---|---|")
    for label, path, planner in rows:
        (result,) = [r for r in results if r.source == path and r.method.planner == planner]
        entry = summary.entries[(result.dataset, result.method)]
        value = entry.score if entry.score is not None else entry.ret
        gain = "-" if entry.gain is None else entry.gain.text(signed=True)
        res = json.loads(path.read_text())["planners"][planner]
        d = res["diagnostics"]
        print(
            f"| {label} | {value.text()} | {gain} | {d['action_change']:.3f} | "
            f"{d['imagined_return_before']:.1f} -> {d['imagined_return_after']:.1f} | "
            f"{res['latency_ms']['median']:.1f} |"
        )


if __name__ == "__main__":
    main()
