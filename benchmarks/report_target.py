"""The issue-13 target check in one command: MPCwDWM over its base across datasets (issue 13).

Gathers the eval.json files that ``benchmarks/bench_adaptation.py`` left under ``--results``
(``<results>/<dataset>/<agent>/seed<k>/<method folder>/eval.json``) and writes one
``mpcdwm report`` per fixed planner configuration (the base, the configuration and its
placebo, on every dataset that has all three on every seed) and one over all configurations
together, whose "A planner chosen per dataset on real returns" table is the paper's protocol
(the step chosen per dataset on evaluation returns), in-sample and cross-fitted.

The target (issue 13): a mean gain over the base >= +3 normalized points over the datasets,
with the CI of the mean above 0 and above the placebo's gain, and no dataset below the base by
more than 2. This script prints, per configuration, the mean gain, the mean over the placebo
and the worst dataset, and whether each part holds.

    python benchmarks/report_target.py --agent rebrac \\
        --datasets halfcheetah-medium hopper-medium walker2d-medium \\
        halfcheetah-medium-replay hopper-medium-replay walker2d-medium-replay
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpcdwm.report import ReportConfig, report

ROOT = Path(__file__).resolve().parent.parent
# configuration name -> (method folder, its placebo's folder), as bench_adaptation names them
CONFIGURATIONS = {
    "carried-5e-7": ("paper-lr5e-07-M16", "placebo-lr5e-07-M16"),
    "carried-5e-6": ("paper-lr5e-06-M16", "placebo-lr5e-06-M16"),
    "no-carry-5e-5": ("paper-lr5e-05-M16-cold", "placebo-lr5e-05-M16-cold"),
}
TARGET_GAIN = 3.0
WORST_ALLOWED = -2.0


def runs_for(results: Path, dataset: str, agent: str, folders: tuple[str, ...]) -> list[Path]:
    """The eval.json files of ``folders`` on every seed of ``dataset``, or [] when a seed lacks
    one of them (a configuration is compared on the seeds where all of it ran)."""
    seeds = sorted((results / dataset / agent).glob("seed*"))
    files = [s / f / "eval.json" for s in seeds for f in ("base", *folders)]
    return files if seeds and all(f.is_file() for f in files) else []


def verdict(summary: dict, name: str) -> str:
    """One line: the mean gain, over the placebo, the worst dataset, and the target's parts."""
    (a,) = [a for a in summary["aggregates"] if a["over_placebo_mean"] is not None]
    g, p = a["gain_mean"], a["over_placebo_mean"]
    worst = min(m["gain"]["mean"] for m in summary["methods"] if m["method"] == a["method"])
    parts = {
        f"mean >= +{TARGET_GAIN:g}": g["mean"] >= TARGET_GAIN,
        "CI above 0": g["ci_low"] > 0,
        "above the placebo": p["ci_low"] > 0,
        f"no dataset below {WORST_ALLOWED:g}": worst >= WORST_ALLOWED,
    }
    met = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in parts.items())
    return (
        f"{name}: mean gain {g['mean']:+.1f} [{g['ci_low']:+.1f}, {g['ci_high']:+.1f}] over "
        f"{len(a['datasets'])} datasets, over the placebo {p['mean']:+.1f} [{p['ci_low']:+.1f}, "
        f"{p['ci_high']:+.1f}], worst dataset {worst:+.1f}; {met}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", required=True, help="dataset folder names")
    p.add_argument("--agent", default="rebrac")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/adaptation")
    p.add_argument("--out", type=Path, default=None, help="default: <results>/target-<agent>")
    args = p.parse_args()
    out = args.out or args.results / f"target-{args.agent}"
    everything: list[Path] = []
    lines = []
    for name, folders in CONFIGURATIONS.items():
        files = [f for d in args.datasets for f in runs_for(args.results, d, args.agent, folders)]
        have = sorted({f.parents[3].name for f in files})
        missing = [d for d in args.datasets if d not in have]
        if len(have) < 2:
            print(f"{name}: on {have or 'no dataset'}; skipped (needs two)")
            continue
        report(ReportConfig(runs=tuple(files), out=out / name, quiet=True))
        summary = json.loads((out / name / "summary.json").read_text())
        line = verdict(summary, name)
        lines.append(line + (f" (missing: {', '.join(missing)})" if missing else ""))
        everything += files
    if everything:
        report(ReportConfig(runs=tuple(dict.fromkeys(everything)), out=out / "all", quiet=True))
        summary = json.loads((out / "all" / "summary.json").read_text())
        for c in summary["choices"]:
            g, p_ = c["gain_mean"], c["over_placebo_mean"]
            plc = f", over the placebos {p_['mean']:+.1f}" if p_ else ""
            worst = min(v["gain"]["mean"] for v in c["per_dataset"].values())
            lines.append(
                f"chosen per dataset on real returns ({c['rule']}): mean gain {g['mean']:+.1f} "
                f"[{g['ci_low']:+.1f}, {g['ci_high']:+.1f}]{plc}, worst dataset {worst:+.1f}"
            )
    print("\n".join(["", *lines]))


if __name__ == "__main__":
    main()
