"""The one training loop: fused jitted chunks, progress bar, logs, checkpoints, resume.

Agents and world models supply a pure ``update(state, batch, key)`` and call
:func:`fit`; everything about running it (how many updates go into one XLA
program, when to evaluate, where to log, how to survive a kill) lives here.

Determinism: the loop carries one PRNG key, split once per chunk; checkpoints
are written only at chunk boundaries and hold that key, so a run killed and
resumed ends bit-for-bit where an uninterrupted run with the same seed ends.

Never losing work: each chunk runs ``min(chunk, steps - step)`` updates, so a
run continued from any saved step to any larger target ends exactly there; the
checkpoint is written every ``checkpoint_every`` updates *and* every
``checkpoint_minutes`` of wall time, so a kill costs at most that plus a chunk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mpcdwm.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    config_differences,
    describe_differences,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from mpcdwm.files import writing

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


class RunLogError(RuntimeError):
    """``metrics.jsonl`` is damaged in a way a resume cannot repair by itself."""


class RunLog:
    """Metrics as JSON lines in ``out_dir/metrics.jsonl`` (+ optional W&B / TensorBoard)."""

    def __init__(
        self,
        out_dir: Path,
        backends: tuple[str, ...] = (),
        config: dict | None = None,
        console: Console | None = None,
    ):
        self.path = out_dir / "metrics.jsonl"
        self._console = console or Console(stderr=True, soft_wrap=True)
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
        """Drop lines logged after ``step`` (they belong to work a resume redoes).

        A cut last line (the process was killed while writing it) is dropped with
        a warning. An unreadable line before the last is real damage: raises
        :class:`RunLogError` naming the file and line.
        """
        if not self.path.exists():
            return
        text = self.path.read_text()
        kept, torn = _lines_up_to(self.path, text, step)
        if torn is not None:
            self._console.print(
                f"warning: {self.path}: dropped its cut last line (a write was killed): "
                f"{torn[:60]!r}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        new = "".join(ln + "\n" for ln in kept)
        if new != text:
            # Replace, not rewrite in place: a kill now must not cost the lines we keep.
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(new)
            os.replace(tmp, self.path)

    def write(self, step: int, record: Mapping[str, float]) -> None:
        line = {"step": step, **{k: float(v) for k, v in record.items()}}
        with writing(self.path), self.path.open("a") as f:
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


def _lines_up_to(path: Path, text: str, step: int) -> tuple[list[str], str | None]:
    """The lines of metrics file ``text`` with ``step`` <= ``step``, and the cut last line
    (or None)."""
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    kept: list[str] = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            record = json.loads(ln)
            line_step = int(record["step"])
        except (ValueError, KeyError, TypeError) as err:
            if i == last:
                # Each line is one append; a kill mid-append cuts only the last one.
                return kept, ln
            raise RunLogError(
                f"{path}, line {i + 1}: not a metrics record ({err}): {ln[:60]!r}. The file "
                "is damaged before its end; delete that line (or the whole file, which "
                "only holds logged metrics) and run again."
            ) from err
        if line_step <= step:
            kept.append(ln)
    return kept, None


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
    checkpoint_minutes: float = 5.0,
) -> tuple[Any, dict[str, float]]:
    """Run ``steps`` updates of ``update`` on batches from ``data``.

    ``state``: initial train state (a pytree). ``meta``: stored in the
    checkpoint ``out_dir/checkpoint.ckpt``; its ``config`` entry must match for
    a resume. Returns the final state and the latest value of every metric and
    evaluation result.

    Resume (``resume=True`` and a checkpoint in ``out_dir``): training continues
    from the saved step to ``steps``, whatever the step, ``steps`` or ``chunk``
    were before; each chunk runs ``min(chunk, steps - step)`` updates, so the run
    ends exactly at ``steps`` with a final checkpoint (``done: True``). Asking for
    no more steps than the checkpoint holds trains nothing and changes no file:
    it returns the saved state (which may be further along than ``steps``).

    Evaluations (every ``eval_every`` updates and at the end) and checkpoints
    (every ``checkpoint_every`` updates, every ``checkpoint_minutes`` of wall
    time, and at the end) happen at the first chunk boundary at or after they
    fall due. ``metrics.jsonl`` holds one line per chunk; evaluation results
    appear only on the lines where an evaluation ran.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_FILE
    console = console or Console(stderr=True, soft_wrap=True)
    chunk = max(1, min(chunk, steps))
    # Evaluations and checkpoints fall due on chunk multiples (as counted from step 0).
    eval_every = _round_up(eval_every, chunk) if eval_every else 0
    checkpoint_every = _round_up(max(checkpoint_every, chunk), chunk)

    def say(text: str) -> None:
        # No markup: names and paths may hold brackets; no wrapping: one line per message.
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    step = 0
    last: dict[str, float] = {}
    if resume and ckpt_path.exists():
        template = {"train": state, "key": key, "step": np.int64(0)}
        saved, saved_meta = load_checkpoint(ckpt_path, template)
        diff = config_differences(
            _identity_part(saved_meta.get("config"), meta.get("config")), meta.get("config")
        )
        if diff:
            raise CheckpointError(
                f"{ckpt_path} was made with a different config (saved -> now: "
                f"{describe_differences(diff)}); use a new --out folder or "
                "pass --no-resume to start over."
            )
        state, key, step = saved["train"], saved["key"], int(saved["step"])
        last = dict(saved_meta.get("last", {}))
        if step >= steps:
            say(
                f"[{name}] {ckpt_path} is already at step {step}; {steps} steps asked, "
                "nothing to train (pass more --steps to continue it)."
            )
            return state, last
        say(f"[{name}] resuming from step {step} of {steps} ({ckpt_path})")
    # This run owns the checkpoint: leftovers of a write killed earlier can go now.
    remove_stale_temporaries(ckpt_path)
    log = RunLog(out_dir, log_backends, meta.get("config"), console=console)
    log.truncate_after(step)

    # One jitted runner per chunk size, built on first use: a run from step 0 needs
    # at most two (full chunks and the remainder), and none when nothing is left.
    runners: dict[int, Callable] = {}

    def runner(n: int) -> Callable:
        if n not in runners:
            runners[n] = make_chunk(update, batch_size, n)
        return runners[n]

    def save(final: bool = False) -> None:
        payload = {"train": state, "key": key, "step": np.int64(step)}
        # target_steps: what this run was asked for, so a reader of an unfinished
        # checkpoint can say how far it got (not part of the config: a longer rerun resumes).
        info = {"step": step, "target_steps": steps, "last": last, "done": final}
        save_checkpoint(ckpt_path, payload, {**meta, **info})

    def due(every: int, before: int, after: int) -> bool:
        # Did (before, after] cross a multiple of ``every``? Robust to chunks that do
        # not start on a multiple (a run continued from an odd step).
        return bool(every) and after // every > before // every

    columns = (
        TextColumn(f"[bold]{escape(name)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7} upd/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    saved_at = time.monotonic()
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(name, total=steps, completed=step, rate="-", info="")
        while step < steps:
            n = min(chunk, steps - step)
            key, sub = jax.random.split(key)
            t0 = time.perf_counter()
            state, metrics = runner(n)(state, data, sub)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            before, step = step, step + n
            for k, v in metrics.items():
                if not np.isfinite(v):
                    save_path = out_dir / "diverged.ckpt"
                    save_checkpoint(save_path, state, {**meta, "step": step})
                    raise FloatingPointError(
                        f"[{name}] {k} became {v} at step {step}; state saved to {save_path}. "
                        "Lower the learning rate or check the data for outliers."
                    )
            record = dict(metrics)
            if eval_fn is not None and (
                due(eval_every, before, step) or (eval_every and step == steps)
            ):
                record.update(eval_fn(state))
            # The log line holds only what was measured now; the checkpoint keeps the latest
            # value of everything (the last evaluation included).
            last = {**last, **record}
            log.write(step, record)
            if (
                step == steps
                or due(checkpoint_every, before, step)
                or time.monotonic() - saved_at >= 60.0 * checkpoint_minutes
            ):
                save(final=step == steps)
                saved_at = time.monotonic()
            # Evaluation results first, so the bar always shows the latest score.
            shown = sorted(last.items(), key=lambda kv: not kv[0].startswith("eval"))[:6]
            info = "  ".join(f"{k}={v:.3g}" for k, v in shown)
            bar.update(task, completed=step, rate=f"{n / dt:.0f}", info=escape(info))
    log.close()
    return state, last


def _identity_part(saved: Any, now: Any) -> Any:
    """The part of a checkpoint's stored ``config`` that must match this run's ``now`` to resume.

    A top-level key that only the stored one has was dropped from the identity since it was
    written (train-agent's ``chunk``, a world model's ``steps`` and ``chunk``: any value
    resumes now), so it no longer decides anything; every other difference does.
    """
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        return {k: v for k, v in saved.items() if k in now}
    return saved


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
