"""Reports: one table and a few plots from any number of run directories.

``mpcdwm report RUN_DIR... --out DIR`` reads every ``eval.json`` below the given
folders (one per ``mpcdwm evaluate`` or ``mpcdwm run``) and writes

* ``report.md`` and ``report.html``: normalised score per dataset and method
  (mean and std over seeds; with one seed, std over episodes), the D4RL-style
  average per method, and decision latency;
* ``scores.png``: score per method and dataset;
* ``score_vs_latency.png``: what thinking longer buys (one point per method and
  configuration);
* ``trace.png``: imagined vs real return along one episode, when the run
  recorded a trace.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import tyro


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Build a report from run directories."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (or eval.json files) to gather."""
    out: Path = Path("report")
    """Folder for report.md, report.html and the PNG plots."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One method evaluated on one dataset with one seed."""

    dataset: str
    seed: int
    method: str
    label: str  # method plus the budget knobs that distinguish configurations
    scores: tuple[float, ...]  # normalised score per episode
    latency_median_ms: float
    latency_p95_ms: float
    source: Path


def find_eval_files(paths: tuple[Path, ...]) -> list[Path]:
    """Every eval.json at or below ``paths`` (sorted, unique)."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            found.update(p.resolve() for p in path.rglob("eval.json"))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not found:
        raise FileNotFoundError(
            f"no eval.json under {[str(p) for p in paths]}; "
            "run `mpcdwm evaluate` or `mpcdwm run` first"
        )
    return sorted(found)


def _budget_label(method: str, config: dict[str, Any]) -> str:
    if method in ("none", "base"):
        return "base"
    knobs = []
    mpc = config.get("mpc", config)
    for key, short in (("adapt_steps", "E"), ("horizon", "H"), ("num_rollouts", "M")):
        if key in mpc:
            knobs.append(f"{short}={mpc[key]}")
    wm = config.get("world_model_kind") or config.get("world_model_info", {}).get("kind")
    steps = config.get("denoise_steps") or config.get("world_model_info", {}).get("denoise_steps")
    if wm:
        knobs.append(f"{wm}{'-' + str(steps) if steps else ''}")
    return f"{method} ({', '.join(knobs)})" if knobs else method


def load_rows(eval_file: Path) -> list[Row]:
    """Rows of one eval.json (see ``mpcdwm.evaluate`` for its layout)."""
    data = json.loads(eval_file.read_text())
    methods = data.get("planners", data)
    top_config = data.get("config", {})
    dataset = str(data.get("dataset") or top_config.get("dataset") or eval_file.parent.name)
    seed = int(data.get("seed", top_config.get("seed", 0)))
    rows = []
    for method, res in methods.items():
        if not isinstance(res, dict) or "returns" not in res:
            continue
        scores = res.get("normalized_scores")
        if scores is None:
            ref = data.get("ref_scores") or res.get("ref_scores")
            if ref is None:
                raise ValueError(f"{eval_file}: {method} has no normalized scores or ref_scores")
            lo, hi = ref
            scores = [100.0 * (r - lo) / (hi - lo) for r in res["returns"]]
        lat = res.get("latency_ms", {})
        rows.append(
            Row(
                dataset=dataset,
                seed=seed,
                method=method,
                label=_budget_label(method, {**top_config, **res.get("config", {})}),
                scores=tuple(float(s) for s in scores),
                latency_median_ms=float(lat.get("median", np.nan)),
                latency_p95_ms=float(lat.get("p95", np.nan)),
                source=eval_file,
            )
        )
    return rows


def summarize(rows: list[Row]) -> dict[tuple[str, str], dict[str, float]]:
    """(dataset, label) -> mean/std score, seeds, latency. Std is over seeds when there are
    several, else over episodes."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.dataset, row.label)].append(row)
    table = {}
    for key, group in groups.items():
        seed_means = np.array([np.mean(r.scores) for r in group])
        std = seed_means.std() if len(group) > 1 else float(np.std(group[0].scores))
        table[key] = {
            "mean": float(seed_means.mean()),
            "std": float(std),
            "seeds": len(group),
            "episodes": sum(len(r.scores) for r in group),
            "latency_ms": float(np.nanmedian([r.latency_median_ms for r in group])),
        }
    return table


def _markdown(table: dict[tuple[str, str], dict[str, float]]) -> tuple[str, list[str], list[str]]:
    datasets = sorted({d for d, _ in table})
    labels = sorted({m for _, m in table}, key=lambda m: (m != "base", m))
    lines = [
        "| method | " + " | ".join(datasets) + " | average | latency (ms) |",
        "|---" * (len(datasets) + 3) + "|",
    ]
    for label in labels:
        cells, means, lats = [], [], []
        for d in datasets:
            cell = table.get((d, label))
            if cell is None:
                cells.append("-")
                continue
            cells.append(f"{cell['mean']:.1f} ± {cell['std']:.1f} (n={cell['seeds']})")
            means.append(cell["mean"])
            lats.append(cell["latency_ms"])
        avg = f"{np.mean(means):.1f}" if len(means) == len(datasets) else "-"
        lat = f"{np.nanmedian(lats):.2f}" if lats else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg} | {lat} |")
    return "\n".join(lines), datasets, labels


def _plots(out: Path, table, rows: list[Row], datasets: list[str], labels: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(datasets) * max(1, len(labels)) / 2), 4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j, d in enumerate(datasets) if (d, label) in table]
        ys = [table[(d, label)]["mean"] for d in datasets if (d, label) in table]
        es = [table[(d, label)]["std"] for d in datasets if (d, label) in table]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=15)
    ax.set_ylabel("normalised score")
    ax.legend(fontsize=7)
    ax.set_title("Score per method and dataset")
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=120)
    plt.close(fig)
    made.append("scores.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for (d, label), cell in sorted(table.items()):
        ax.errorbar(max(cell["latency_ms"], 1e-3), cell["mean"], yerr=cell["std"], fmt="o")
        ax.annotate(f"{label}\n{d}", (max(cell["latency_ms"], 1e-3), cell["mean"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("decision latency, median (ms)")
    ax.set_ylabel("normalised score")
    ax.set_title("Score vs decision latency")
    fig.tight_layout()
    fig.savefig(out / "score_vs_latency.png", dpi=120)
    plt.close(fig)
    made.append("score_vs_latency.png")

    for row in rows:
        trace = (
            json.loads(row.source.read_text()).get("planners", {}).get(row.method, {}).get("trace")
        )
        if not trace:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, values in trace.items():
            if isinstance(values, list) and values:
                ax.plot(values, label=key, lw=1)
        ax.set_xlabel("environment step")
        ax.set_title(f"{row.method} on {row.dataset}: imagined vs real (one episode)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "trace.png", dpi=120)
        plt.close(fig)
        made.append("trace.png")
        break
    return made


def report(cfg: ReportConfig) -> Path:
    """Write report.md, report.html and PNG plots into ``cfg.out``; returns report.md's path."""
    from rich.console import Console
    from rich.markdown import Markdown

    files = find_eval_files(cfg.runs)
    rows = [row for f in files for row in load_rows(f)]
    if not rows:
        raise ValueError(f"the eval.json files {[str(f) for f in files]} hold no results")
    table = summarize(rows)
    md_table, datasets, labels = _markdown(table)
    cfg.out.mkdir(parents=True, exist_ok=True)
    plots = _plots(cfg.out, table, rows, datasets, labels)
    sources = "\n".join(f"- `{f}`" for f in files)
    md = (
        "# mpcdwm report\n\nNormalised score (100 = the dataset's reference expert, 0 = random), "
        "mean ± std over seeds (over episodes when n=1), and median decision latency.\n\n"
        f"{md_table}\n\n" + "".join(f"![{p}]({p})\n\n" for p in plots) + f"Sources:\n{sources}\n"
    )
    (cfg.out / "report.md").write_text(md)
    (cfg.out / "report.html").write_text(_html(md_table, plots, files))
    (cfg.out / "summary.json").write_text(
        json.dumps(
            [{"dataset": d, "method": m, **v} for (d, m), v in sorted(table.items())], indent=1
        )
    )
    Console().print(Markdown(md_table))
    return cfg.out / "report.md"


def _html(md_table: str, plots: list[str], files: list[Path]) -> str:
    rows = [line.strip("|").split("|") for line in md_table.splitlines()]
    head, body = rows[0], rows[2:]
    cells = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body
    )
    imgs = "".join(f'<p><img src="{p}" alt="{p}"></p>' for p in plots)
    srcs = "".join(f"<li><code>{html.escape(str(f))}</code></li>" for f in files)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mpcdwm report</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
        f"<h1>mpcdwm report</h1><table><tr>{cells}</tr>{trs}</table>{imgs}<ul>{srcs}</ul>"
        "</body></html>"
    )
