"""The one training loop: fused jitted chunks, progress bar, logs, checkpoints, resume.

Agents and world models supply a pure ``update(state, batch, key)`` and call
:func:`fit`; everything about running it (how many updates go into one XLA
program, when to evaluate, where to log, how to survive a kill) lives here.

Determinism: the loop carries one PRNG key, split once per chunk; checkpoints
are written only at chunk boundaries and hold that key, so a run killed and
resumed ends bit-for-bit where an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mpcdwm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

Batch = dict[str, jax.Array]
UpdateFn = Callable[[Any, Batch, jax.Array], tuple[Any, dict[str, jax.Array]]]


def sample_batch(data: Batch, key: jax.Array, batch_size: int) -> Batch:
    """Uniformly sample ``batch_size`` rows (with replacement) of every array in ``data``."""
    n = next(iter(data.values())).shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree_util.tree_map(lambda x: x[idx], data)


def make_chunk(update: UpdateFn, batch_size: int, chunk: int) -> Callable:
    """Jit ``chunk`` consecutive sampled updates as one XLA program.

    Returns ``run(state, data, key) -> (state, metrics)``; ``metrics`` are means
    over the chunk. ``data`` stays on the device; Python is not in the loop.
    """

    def run(state: Any, data: Batch, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        def step(carry, k):
            batch_key, update_key = jax.random.split(k)
            return update(carry, sample_batch(data, batch_key, batch_size), update_key)

        state, metrics = jax.lax.scan(step, state, jax.random.split(key, chunk))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit(run, donate_argnums=0)


class RunLog:
    """Metrics as JSON lines in ``out_dir/metrics.jsonl`` (+ optional W&B / TensorBoard)."""

    def __init__(self, out_dir: Path, backends: tuple[str, ...] = (), config: dict | None = None):
        self.path = out_dir / "metrics.jsonl"
        self._wandb = self._tb = None
        if "wandb" in backends:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("--log wandb needs `pip install wandb`.") from err
            self._wandb = wandb.init(dir=str(out_dir), config=config or {}, resume="allow")
        if "tensorboard" in backends:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:
                raise RuntimeError("--log tensorboard needs `pip install tensorboardX`.") from err
            self._tb = SummaryWriter(str(out_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they belong to work a resume redoes)."""
        if not self.path.exists():
            return
        kept = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, step: int, record: Mapping[str, float]) -> None:
        line = {"step": step, **{k: float(v) for k, v in record.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        if self._wandb is not None:
            self._wandb.log(dict(record), step=step)
        if self._tb is not None:
            for k, v in record.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def fit(
    *,
    name: str,
    update: UpdateFn,
    state: Any,
    data: Batch,
    key: jax.Array,
    steps: int,
    batch_size: int,
    out_dir: str | Path,
    meta: dict[str, Any],
    chunk: int = 1000,
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int = 0,
    checkpoint_every: int = 10_000,
    log_backends: tuple[str, ...] = (),
    resume: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> tuple[Any, dict[str, float]]:
    """Run ``steps`` updates of ``update`` on batches from ``data``.

    ``state``: initial train state (a pytree). ``meta``: stored in the
    checkpoint ``out_dir/checkpoint.ckpt``; its ``config`` entry must match for
    a resume. Returns the final state and the last evaluation (or metrics).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.ckpt"
    console = console or Console(stderr=True)
    chunk = max(1, min(chunk, steps))
    # Evaluations and checkpoints happen on chunk boundaries only.
    eval_every = _round_up(eval_every, chunk) if eval_every else 0
    checkpoint_every = _round_up(max(checkpoint_every, chunk), chunk)

    step = 0
    last: dict[str, float] = {}
    if resume and ckpt_path.exists():
        template = {"train": state, "key": key, "step": np.int64(0)}
        saved, saved_meta = load_checkpoint(ckpt_path, template)
        if saved_meta.get("config") != meta.get("config"):
            raise CheckpointError(
                f"{ckpt_path} was made with a different config; use a new --out folder or "
                "pass --no-resume to start over."
            )
        state, key, step = saved["train"], saved["key"], int(saved["step"])
        last = dict(saved_meta.get("last", {}))
        console.print(f"[{name}] resuming from step {step} of {steps} ({ckpt_path})")
    log = RunLog(out_dir, log_backends, meta.get("config"))
    log.truncate_after(step)

    run_full = make_chunk(update, batch_size, chunk)
    tail = steps % chunk
    run_tail = make_chunk(update, batch_size, tail) if tail else None

    def save(final: bool = False) -> None:
        payload = {"train": state, "key": key, "step": np.int64(step)}
        save_checkpoint(ckpt_path, payload, {**meta, "step": step, "last": last, "done": final})

    columns = (
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7} upd/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(name, total=steps, completed=step, rate="-", info="")
        while step < steps:
            n = chunk if steps - step >= chunk else tail
            runner = run_full if n == chunk else run_tail
            key, sub = jax.random.split(key)
            t0 = time.perf_counter()
            state, metrics = runner(state, data, sub)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            step += n
            for k, v in metrics.items():
                if not np.isfinite(v):
                    save_path = out_dir / "diverged.ckpt"
                    save_checkpoint(save_path, state, {**meta, "step": step})
                    raise FloatingPointError(
                        f"[{name}] {k} became {v} at step {step}; state saved to {save_path}. "
                        "Lower the learning rate or check the data for outliers."
                    )
            last = {**last, **metrics}
            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
                last.update(eval_fn(state))
            log.write(step, last)
            if step % checkpoint_every == 0 or step == steps:
                save(final=step == steps)
            # Evaluation results first, so the bar always shows the latest score.
            shown = sorted(last.items(), key=lambda kv: not kv[0].startswith("eval"))[:6]
            info = "  ".join(f"{k}={v:.3g}" for k, v in shown)
            bar.update(task, completed=step, rate=f"{n / dt:.0f}", info=info)
    log.close()
    return state, last


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
