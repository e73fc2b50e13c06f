"""AntMaze probes for ReBRAC (issue 15): which reward; what the critic knows; does it walk.

Our AntMaze datasets are goal-conditioned, as Minari's are: every episode has its own goal (in
the observation's last two columns) and reward 1 there. D4RL's files instead score every
transition against the one evaluation goal. Two subcommands help decide whether that matters:

``relabel SRC OUT.hdf5``: a D4RL-style copy of a dataset, written as a D4RL HDF5 file that
``mpcdwm`` loads like any other: the goal columns set to the evaluation goal (the centre of
D4RL's goal cell), reward 1 and terminal where the ant ends a step within ``--radius`` m of it
(D4RL: 0.5), the old episode ends kept as timeouts. Train on it with ``mpcdwm train-agent``.

``critic RUN DATASET``: a trained agent's Q on dataset states, binned by the distance between
the ant and its goal, with the dataset's actions, the policy's and uniform random ones: does the
critic know where the goal is, and do actions matter to it?

    python benchmarks/antmaze_reward_probe.py relabel data/antmaze-umaze-diverse-v0 \\
        /tmp/antmaze-umaze-diverse-relabel.hdf5
    mpcdwm train-agent --dataset /tmp/antmaze-umaze-diverse-relabel.hdf5 --agent rebrac \\
        --steps 100000 --eval-every 25000 --out runs/probe/umaze-diverse-relabel/seed0
    mpcdwm train-agent --dataset data/antmaze-umaze-diverse-v0 --agent rebrac \\
        --steps 100000 --eval-every 25000 --out runs/probe/umaze-diverse-goalcond/seed0
    python benchmarks/antmaze_reward_probe.py critic runs/agents_antmaze/antmaze-large-diverse/\\
rebrac/seed0 data/antmaze-large-diverse-v0

``walk RUN [RUN ...] --data DATASET``: how far each agent's ant walks (path length, net
displacement, final distance to the goal) in ``--episodes`` evaluation episodes, beside the
path the dataset's ant walks per 1000 steps. An agent that scores 0 may still walk and get lost,
or not walk at all; the goal distance alone cannot tell the two apart in a maze.

    python benchmarks/antmaze_reward_probe.py walk runs/agents_antmaze/antmaze-large-diverse/\\
rebrac/seed0 --data data/antmaze-large-diverse-v0

``gait``: the ant that collects the data (the shipped goal-reaching ant, or ``--ant FILE``),
driven along BFS waypoints through ``--env`` as collection does (diverse starts and goals, the
same seeds for every setting), with each ``--noise`` std on its actions, and with the mean of
the clipped noisy action (``--mean-of-noise``: what a perfect deterministic behaviour cloner of
the noisy data outputs). Per setting: the pace (path per 1000 steps, mean over episodes with a
bootstrap 95% CI), the goals reached, and how often the greedy action is saturated. A
deterministic offline actor can at best walk like the noise-free or mean-of-noise ant, not like
the noisy data.

    python benchmarks/antmaze_reward_probe.py gait --env AntMaze_Large-v5 --noise 0 0.2 \\
        --mean-of-noise 0.2 --steps 10000

``oracle``: the collecting ant itself on the evaluation task (D4RL's start and goal, its time
limit, no flip rule), steered along the BFS waypoints as collection steers it, greedy and with
each ``--noise``: the success rate the data's own behaviour reaches on the task the agents are
scored on. An offline agent that has to infer the route from the final goal should not be
expected to beat it.

    python benchmarks/antmaze_reward_probe.py oracle --maze Large --noise 0 0.2 --episodes 50

``falls``: how often the goal-reaching ant falls (on its back, or out of Ant-v5's height
range) while it walks on and on in the open (``mpcdwm/AntGoal-v1`` with a new goal 2-5 m away
whenever it reaches one, 500-step episodes that a fall ends), per policy file: falls and goals
per 1000 steps. A maze route of ~650 steps survives a per-step hazard ``h`` with probability
about ``exp(-650 h)``. ``--env mpcdwm/AntRoute-v1``: routes between random cells of the large
maze instead (:class:`mpcdwm.maze.AntRouteEnv`), with the share that reach their goal.

    python benchmarks/antmaze_reward_probe.py falls --ants src/mpcdwm/assets/antgoal-v1-seed0.ckpt
    python benchmarks/antmaze_reward_probe.py falls --agent-dir \\
        ~/.cache/mpcdwm/collect/mpcdwm_AntGoal-v1-seed0 --last 16 --episodes 20

``fit DATASET``: can an actor-sized MLP fit the data's actions at all, and from which inputs?
Supervised regression only (no critic, no env): the same 3x256 MLP with a tanh output learns
the actions from (a) the offline observation, (b) what the collecting ant saw (its 27 entries
and the BFS waypoint in its heading's frame, recomputed from the position and the goal), (c)
both; held-out episodes give the validation error, beside the floor (the collecting ant's own
mean-of-noise action on the same inputs, what no deterministic actor can beat).

    python benchmarks/antmaze_reward_probe.py fit data/antmaze-large-diverse-v0 --updates 20000

``clone DATASET``: does a good fit walk? The same MLP regressed on the collecting ant's own
inputs (b above), then driven in its place through the maze as ``gait`` drives the ant (no
noise, the same seeds), at each of ``--updates``: the clone's validation error beside its pace
and goals. Compare with ``gait``'s greedy and mean-of-noise ant: if the clone walks, the gait is
learnable from the data and the offline actors' trouble is their inputs and training; if it
does not, errors of this size break the gait in closed loop. ``--inputs offline``: regressed on
the offline observation (a above) instead, and walked as ``walk`` walks an agent (the
evaluation task, ``--episodes`` episodes): plain imitation from what the offline agent sees.

    python benchmarks/antmaze_reward_probe.py clone data/antmaze-large-diverse-v0 \\
        --updates 20000 60000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mpcdwm.data import D4RL_EVAL_CELLS, Dataset, antmaze_eval_size, load_dataset
from mpcdwm.envs import make_env

DISTANCE_BINS = (0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 40.0)


def relabel(src: str, out: Path, radius: float) -> None:
    import h5py

    from mpcdwm.maze import make_eval_antmaze

    ds = load_dataset(src)
    size = antmaze_eval_size(ds.env_id)
    if size is None:
        raise SystemExit(f"{src}: {ds.env_id} is not an AntMaze UMaze/Medium/Large task.")
    env = make_eval_antmaze(size)
    goal_cell = np.array(D4RL_EVAL_CELLS[size][1])
    goal = np.asarray(env.unwrapped.maze.cell_rowcol_to_xy(goal_cell), np.float32)
    env.close()
    obs, next_obs = ds.observations.copy(), ds.next_observations.copy()
    obs[:, -2:] = goal
    next_obs[:, -2:] = goal
    hit = np.linalg.norm(ds.next_observations[:, :2] - goal, axis=1) <= radius
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out, "w") as f:
        f["observations"], f["next_observations"] = obs, next_obs
        f["actions"] = ds.actions
        f["rewards"] = hit.astype(np.float32)
        f["terminals"] = hit
        f["timeouts"] = (ds.terminals | ds.timeouts) & ~hit
        f.attrs["env_id"] = ds.env_id
    print(
        f"{out}: {len(hit):,} transitions, evaluation goal {goal.tolist()} ({size}), "
        f"{int(hit.sum()):,} rewarded ({hit.mean():.4%}); "
        f"the source rewarded {ds.rewards.mean():.4%}"
    )


def critic(run: str, data: str, samples: int) -> None:
    import jax
    import jax.numpy as jnp

    from mpcdwm.agents import load_agent

    agent = load_agent(run)
    ds = load_dataset(data)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds.observations), min(samples, len(ds.observations)), replace=False)
    obs, act = jnp.asarray(ds.observations[idx]), jnp.asarray(ds.actions[idx])
    q_fn, act_fn = jax.jit(agent.critic), jax.jit(agent.act)
    uniform = jnp.asarray(rng.uniform(-1.0, 1.0, act.shape), jnp.float32)
    q = {
        "data": np.asarray(q_fn(agent.critic_params, obs, act)),
        "policy": np.asarray(q_fn(agent.critic_params, obs, act_fn(agent.actor_params, obs))),
        "random": np.asarray(q_fn(agent.critic_params, obs, uniform)),
    }
    dist = np.linalg.norm(ds.observations[idx, :2] - ds.observations[idx, -2:], axis=1)
    print(f"{run} on {data}: Q in raw reward units (gamma {agent.gamma}), {len(idx):,} states")
    print("distance to goal (m) |     n | Q(s, a_data)  | Q(s, pi(s)) | Q(s, uniform a)")
    for lo, hi in zip(DISTANCE_BINS[:-1], DISTANCE_BINS[1:], strict=True):
        m = (dist >= lo) & (dist < hi)
        if m.any():
            print(
                f"{lo:>8.1f} - {hi:<10.1f} | {m.sum():5d} | {q['data'][m].mean():.4f} +- "
                f"{q['data'][m].std():.3f} | {q['policy'][m].mean():.4f}      | "
                f"{q['random'][m].mean():.4f}"
            )
    print("all                  | " + " | ".join(f"{k} {v.mean():.4f}" for k, v in q.items()))


def walk(runs: list[str], data: str | None, episodes: int) -> None:
    from mpcdwm.agents import load_agent
    from mpcdwm.rollout import policy_decider

    if data is not None:
        ds = load_dataset(data)
        xy, nxt = ds.observations[:, :2], ds.next_observations[:, :2]
        step = np.linalg.norm(nxt - xy, axis=1)  # a row's own step: never across episodes
        print(f"{data}: the data's ant walks {1000 * step.mean():.1f} m per 1000 steps")
    for run in runs:
        agent = load_agent(run)
        walk_policy(run, agent.env_id, policy_decider(agent.act, agent.actor_params), episodes)


def walk_policy(
    label: str,
    env_id: str,
    decide: Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]],
    episodes: int,
) -> None:
    """Run ``decide`` (a :mod:`mpcdwm.rollout` decider: observation -> (action, diagnostics))
    for ``episodes`` evaluation episodes of ``env_id`` (the evaluation's episode seeds) and
    print each episode's path, net displacement and final distance to the goal."""
    from mpcdwm.evaluate import episode_seed
    from mpcdwm.rollout import run_episodes

    tracks: list[list[np.ndarray]] = []  # per episode, the (x, y) of every decision

    def tracked(obs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        tracks[-1].append(obs[:2].copy())
        return decide(obs)

    stats = run_episodes(
        env_id,
        tracked,
        episodes=episodes,
        seed=episode_seed(0),
        on_episode_start=lambda _: tracks.append([]),
    )
    for episode, (track, steps, left) in enumerate(
        zip(tracks, stats.lengths, stats.goal_distances, strict=True)
    ):
        xy = np.asarray(track)  # the final step's position is not decided on: left out
        path = float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum())
        net = float(np.linalg.norm(xy[-1] - xy[0]))
        print(
            f"{label} episode {episode}: {steps} steps, path {path:.1f} m, net {net:.1f} m, "
            f"ends {left:.1f} m from the goal"
        )


def expected_clip(mean: np.ndarray, std: float, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """``E[clip(mean + std * Z, low, high)]`` for ``Z ~ N(0, 1)``, elementwise (closed form)."""
    from scipy.stats import norm

    if std == 0:
        return np.clip(mean, low, high)
    a, b = (low - mean) / std, (high - mean) / std
    inside = mean * (norm.cdf(b) - norm.cdf(a)) + std * (norm.pdf(a) - norm.pdf(b))
    return low * norm.cdf(a) + high * norm.sf(b) + inside


def gait(
    env_id: str,
    ant: Path | None,
    noises: list[float],
    means_of_noise: list[float],
    steps: int,
    seed: int,
) -> None:
    from mpcdwm.collect import shipped_ant
    from mpcdwm.online_td3 import load_policy_file

    policy, _ = load_policy_file(ant or shipped_ant())  # an ant of any AntGoal version
    saturated: list[float] = []

    def greedy(x: np.ndarray) -> np.ndarray:
        action = np.asarray(policy(x))
        saturated.append(float(np.mean(np.abs(action) >= 0.99)))
        return action

    settings = [(f"greedy + N(0, {s}) clipped" if s else "greedy", greedy, s) for s in noises]

    def mean_of_noise(std: float):
        return lambda x: expected_clip(np.asarray(policy(x)), std).astype(np.float32)

    settings += [(f"E[clip(greedy + N(0, {s}))]", mean_of_noise(s), 0.0) for s in means_of_noise]
    print(f"{env_id}, diverse starts and goals, seed {seed}, >= {steps} transitions per setting")
    for name, pol, noise in settings:
        print(drive(name, env_id, pol, steps, seed, noise), flush=True)
    print(f"greedy action entries with |a| >= 0.99: {np.mean(saturated):.3f}")


def drive(
    name: str,
    env_id: str,
    policy: Callable[[np.ndarray], np.ndarray],
    steps: int,
    seed: int,
    noise: float = 0.0,
) -> str:
    """Drive ``policy`` (the collecting ant's inputs -> action) along BFS waypoints through
    ``env_id`` as collection does (diverse starts and goals), at least ``steps`` transitions;
    one line: its pace (path per 1000 steps, mean over episodes, bootstrap 95% CI), the goals
    reached, the mean action magnitude and the spread of the episodes' paces."""
    from mpcdwm.maze import collect_antmaze
    from mpcdwm.report import mean_estimate

    d = collect_antmaze(env_id, policy, recipe="diverse", steps=steps, seed=seed, noise=noise)
    step = np.linalg.norm(d["next_observations"][:, :2] - d["observations"][:, :2], axis=1)
    ends = np.flatnonzero(d["terminals"] | d["truncations"])
    starts = np.r_[0, ends[:-1] + 1]
    paces = [1000 * step[a : b + 1].mean() for a, b in zip(starts, ends, strict=True)]
    pace = mean_estimate({0: paces})
    reached, magnitude = int(d["terminals"].sum()), np.abs(d["actions"]).mean()
    return (
        f"{name:30s} pace {pace.text()} m per 1000 steps; {reached} of {len(ends)} "
        f"episodes reach their goal; mean |action| {magnitude:.3f}; episode paces "
        f"min / median / max {np.min(paces):.0f} / {np.median(paces):.0f} / {np.max(paces):.0f}"
    )


def oracle(maze_size: str, ant: Path | None, noises: list[float], episodes: int) -> None:
    """The collecting ant, waypoint-steered, on ``mpcdwm/AntMaze_{maze_size}_Eval-v5``: per
    action noise, success rate (bootstrap 95% CI), steps to the goal and episodes that end
    with the ant on its back, on the evaluation's episode seeds."""
    from mpcdwm.collect import shipped_ant
    from mpcdwm.evaluate import episode_seed
    from mpcdwm.maze import _drive_episode, ant_on_its_back, route_waypoints, waypoint_steering
    from mpcdwm.online_td3 import load_policy_file
    from mpcdwm.report import mean_estimate

    policy, _ = load_policy_file(ant or shipped_ant())  # an ant of any AntGoal version
    env_id = f"mpcdwm/AntMaze_{maze_size}_Eval-v5"
    start, goal = D4RL_EVAL_CELLS[maze_size]
    print(f"{env_id}: the collecting ant steered along BFS waypoints, {episodes} episodes")
    for noise in noises:
        env = make_env(env_id)
        act = waypoint_steering(policy, noise, np.random.default_rng(0))  # collection's own
        success, lengths, left, flips_at_wall = [], [], [], []
        for i in range(episodes):
            obs, _ = env.reset(seed=episode_seed(0, i))
            rows: dict[str, list] = {k: [] for k in ("o", "a", "r", "n", "term", "trunc")}
            maze = env.unwrapped.maze
            route = route_waypoints(maze, start, goal, obs[-2:])
            _drive_episode(env, obs, route, act, rows)
            reached = bool(rows["term"][-1])
            success.append(float(reached))
            lengths += [len(rows["a"])] if reached else []
            last = rows["n"][-1]
            left.append(float(np.linalg.norm(last[:2] - last[-2:])))
            back = ant_on_its_back(np.asarray(rows["n"]))
            if back[-1]:  # where it turned over: the torso's distance to the nearest wall
                flipped_at = rows["n"][int(np.flatnonzero(~back)[-1]) + 1]
                flips_at_wall.append(wall_distance(maze, flipped_at[:2]))
        env.close()
        # In percent, as scores are reported: text() keeps one decimal, too coarse for a rate.
        rate = mean_estimate({0: [100.0 * s for s in success]})
        print(
            f"noise {noise}: success x 100 {rate.text()} ({int(sum(success))} of {episodes}); "
            f"steps to the goal median {np.median(lengths) if lengths else float('nan'):.0f} (max "
            f"{max(lengths, default=0)}); {len(flips_at_wall)} of {episodes} end on the ant's "
            f"back, turned over {np.round(sorted(flips_at_wall), 1).tolist()} m from a wall; "
            f"episodes end {mean_estimate({0: left}).text()} m from the goal",
            flush=True,
        )


def falls(
    ants: list[Path],
    episodes: int,
    agent_dir: Path | None,
    last: int,
    at: list[int],
    env_id: str = "mpcdwm/AntGoal-v1",
) -> None:
    """Per policy file (and per one of the ``last`` evaluation snapshots of the online ant in
    ``agent_dir``, or those taken at the env steps ``at``): falls and goals per 1000 steps of
    walking on in the open (``mpcdwm/AntGoal-v1``), or of routes through the large maze
    (``mpcdwm/AntRoute-v1``, with the share of routes that reach their goal)."""
    from mpcdwm.maze import ant_goal_episodes
    from mpcdwm.online_td3 import load_policies, load_policy_file

    named = [(str(path), load_policy_file(path)[0]) for path in ants]  # any AntGoal version
    if agent_dir is not None:
        policies, progress = load_policies(agent_dir)  # one per evaluation, one read
        evals = progress["evals"]
        steps_of = [int(e["env_steps"]) for e in evals]
        missing = sorted(set(at) - set(steps_of))
        if missing:
            raise SystemExit(
                f"{agent_dir} has no snapshot at env steps {missing}; it has "
                f"{steps_of[0]}..{steps_of[-1]} every {steps_of[1] - steps_of[0]}."
            )
        chosen = [steps_of.index(n) for n in at] if at else list(range(len(evals)))[-last:]
        for i in chosen:
            label = f"snapshot at {steps_of[i]} (training eval {evals[i]['return']:.1f})"
            named.append((label, policies[i]))
    for label, policy in named:
        in_open = env_id == "mpcdwm/AntGoal-v1"
        played = ant_goal_episodes(
            policy, episodes, seed=20_000, resample_goal=in_open, env_id=env_id
        )
        steps, fell = int(played["steps"].sum()), int(played["fell"].sum())
        on_back = int((played["fell"] & played["flipped"]).sum())
        per_1000 = 1000 * fell / steps
        routes = "" if in_open else f"routes reaching the goal {played['success'].mean():.2f}; "
        print(
            f"{label} on {env_id}: {routes}{fell} falls ({on_back} on its back, the rest out of "
            f"Ant-v5's heights) in {steps} steps ({episodes} episodes): "
            f"{per_1000:.2f} per 1000 steps (exp(-0.65 x that) = {np.exp(-0.65 * per_1000):.2f}"
            f" of 650-step routes without one); "
            f"{1000 * played['goals'].sum() / steps:.1f} goals per 1000 steps",
            flush=True,
        )


def wall_distance(maze: Any, xy: np.ndarray) -> float:
    """Distance (m) from ``xy`` to the nearest wall block of a gymnasium-robotics maze."""
    half = 0.5 * maze.maze_size_scaling
    best = np.inf
    for r, row in enumerate(maze.maze_map):
        for c, cell in enumerate(row):
            if cell == 1:
                centre = np.asarray(maze.cell_rowcol_to_xy(np.array([r, c])))
                gap = np.maximum(np.abs(xy - centre) - half, 0.0)
                best = min(best, float(np.linalg.norm(gap)))
    return best


def collector_inputs(env_id: str, obs: np.ndarray) -> np.ndarray:
    """``(rows, 29)``: the collecting ant's inputs for AntMaze observations ``(rows, 31)``: its
    27 entries and the BFS waypoint it steered by, in its heading's frame (recomputed from the
    position and the goal as collection picks it: the first waypoint not within half a cell)."""
    from mpcdwm.maze import ANT_OBS_DIM, goal_in_heading_frame, next_waypoint, route_waypoints

    env = make_env(env_id)
    maze = env.unwrapped.maze
    env.close()
    paths: dict[tuple[tuple[int, int], tuple[int, int]], list[np.ndarray]] = {}
    out = np.empty((len(obs), ANT_OBS_DIM + 2), np.float32)
    for i, row in enumerate(obs):
        pos, goal, ant = row[:2], row[-2:], row[2 : 2 + ANT_OBS_DIM]
        cells = tuple(tuple(int(v) for v in maze.cell_xy_to_rowcol(xy)) for xy in (pos, goal))
        if cells not in paths:  # a few thousand (cell, goal cell) pairs for a million rows
            paths[cells] = route_waypoints(maze, *cells, np.zeros(2))[:-1]
        route = [*paths[cells], goal]
        waypoint = route[next_waypoint(maze, route, pos)]
        out[i] = np.r_[ant, goal_in_heading_frame(ant, waypoint - pos)]
    return out


def train_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    checkpoints: list[int],
) -> Iterator[tuple[int, float, Callable[[np.ndarray], np.ndarray]]]:
    """Fit a 3x256 MLP with a tanh output to ``y`` by mean squared error (Adam 3e-4, batch 256,
    standardised inputs). At each of ``checkpoints`` (updates, multiples of 1000) yields
    (updates, validation error, the fitted function: ``(in_dim,) -> (out_dim,)`` array)."""
    import jax
    import jax.numpy as jnp
    import optax

    from mpcdwm.nets import MLP

    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    xt, xv = jnp.asarray((x_train - mean) / std), jnp.asarray((x_val - mean) / std)
    yt = jnp.asarray(y_train)
    net = MLP((256, 256, 256), y_val.shape[1])
    opt = optax.adam(3e-4)

    def loss(params, idx):
        return jnp.mean((jnp.tanh(net.apply(params, xt[idx])) - yt[idx]) ** 2)

    @jax.jit
    def chunk(params, opt_state, key):  # 1000 updates in one compiled call
        def one(carry, k):
            params, opt_state = carry
            grads = jax.grad(loss)(params, jax.random.randint(k, (256,), 0, len(yt)))
            step, opt_state = opt.update(grads, opt_state)
            return (optax.apply_updates(params, step), opt_state), None

        keys = jax.random.split(key, 1000)
        return jax.lax.scan(one, (params, opt_state), keys)[0]

    @jax.jit
    def act(params, x):
        return jnp.tanh(net.apply(params, (x - mean) / std))

    params = net.init(jax.random.key(0), xt[:1])
    opt_state = opt.init(params)
    keys = jax.random.split(jax.random.key(1), max(checkpoints) // 1000)
    for i, key in enumerate(keys, start=1):
        params, opt_state = chunk(params, opt_state, key)
        if i * 1000 in checkpoints:
            error = float(jnp.mean((jnp.tanh(net.apply(params, xv)) - y_val) ** 2))
            fitted = params
            yield i * 1000, error, lambda x, p=fitted: np.asarray(act(p, x), np.float32)


def regression_errors(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, updates: int
) -> list[str]:
    """:func:`train_mlp`'s validation error at four points of ``updates``."""
    points = [updates * k // 4 // 1000 * 1000 for k in range(1, 5)]
    return [
        f"{n // 1000}k {error:.4f}"
        for n, error, _ in train_mlp(x_train, y_train, x_val, y_val, sorted(set(points) - {0}))
    ]


def split_rows(data: str, rows: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The dataset, ``rows`` training rows and ``rows // 10`` validation rows, sampled from
    disjoint episodes (a tenth of the episodes held out)."""
    ds = load_dataset(data)
    rng = np.random.default_rng(0)
    starts, ends = ds.episode_bounds()
    episodes = rng.permutation(len(starts))
    held_out = len(starts) // 10

    def rows_of(eps: np.ndarray, n: int) -> np.ndarray:
        all_rows = np.concatenate([np.arange(starts[e], ends[e] + 1) for e in eps])
        return rng.choice(all_rows, min(n, len(all_rows)), replace=False)

    return ds, rows_of(episodes[held_out:], rows), rows_of(episodes[:held_out], rows // 10)


def fit(data: str, updates: int, rows: int) -> None:
    from mpcdwm.collect import shipped_ant
    from mpcdwm.online_td3 import load_policy_file

    ds, train, val = split_rows(data, rows)
    obs_t, obs_v = ds.observations[train], ds.observations[val]
    ant_t, ant_v = collector_inputs(ds.env_id, obs_t), collector_inputs(ds.env_id, obs_v)
    inputs = {
        "offline observation": (obs_t, obs_v),
        "collector's (ant + waypoint)": (ant_t, ant_v),
        "both": (np.c_[obs_t, ant_t], np.c_[obs_v, ant_v]),
    }
    y_train, y_val = ds.actions[train], ds.actions[val]
    print(
        f"{data}: {len(train)} training rows, {len(val)} validation rows (held-out episodes); "
        f"validation action error (MSE per action dimension) by updates, batch 256"
    )
    policy, _ = load_policy_file(shipped_ant(), env="mpcdwm/AntGoal-v1")
    floor = expected_clip(np.stack([np.asarray(policy(x)) for x in ant_v]), 0.2)
    print(
        f"  floor (the collecting ant's mean-of-noise action): {np.mean((floor - y_val) ** 2):.4f}"
    )
    for name, (x_train, x_val) in inputs.items():
        errors = regression_errors(x_train, y_train, x_val, y_val, updates)
        print(f"  {name:30s} " + ", ".join(errors), flush=True)


def clone(
    data: str, inputs: str, checkpoints: list[int], rows: int, steps: int, seed: int, episodes: int
) -> None:
    """Clone the data's ant from ``inputs`` ("collector": its own inputs, ant + waypoint,
    driven like the ant; "offline": the offline observation, walked in the evaluation task)."""
    # Before the data and the waypoints (minutes on 1M rows): train_mlp stops every 1000.
    if not checkpoints or any(n < 1000 or n % 1000 for n in checkpoints):
        raise ValueError(f"clone --updates must be positive multiples of 1000, got {checkpoints}")
    ds, train, val = split_rows(data, rows)
    if inputs == "collector":
        x_train = collector_inputs(ds.env_id, ds.observations[train])
        x_val = collector_inputs(ds.env_id, ds.observations[val])
    else:
        x_train, x_val = ds.observations[train], ds.observations[val]
    maze = f"AntMaze_{antmaze_eval_size(ds.env_id)}-v5"  # the maze, not its evaluation task
    print(
        f"{data}: an MLP cloned from {len(train)} rows of the {inputs} inputs, "
        + (
            f"driven through {maze} (diverse starts and goals, seed {seed}, >= {steps} "
            "transitions, no noise)"
            if inputs == "collector"
            else f"walked in {ds.env_id} ({episodes} evaluation episodes)"
        )
    )
    fits = train_mlp(x_train, ds.actions[train], x_val, ds.actions[val], checkpoints)
    for n, error, policy in fits:
        label = f"clone at {n // 1000}k (val MSE {error:.4f})"
        if inputs == "collector":
            print(drive(label, maze, policy, steps, seed), flush=True)
        else:
            walk_policy(label, ds.env_id, lambda obs, p=policy: (p(obs), {}), episodes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("relabel", help="write a D4RL-style copy rewarded at the evaluation goal")
    r.add_argument("src")
    r.add_argument("out", type=Path)
    r.add_argument("--radius", type=float, default=0.5, help="D4RL's goal radius (m)")
    c = sub.add_parser("critic", help="a trained agent's Q by distance to the goal")
    c.add_argument("run")
    c.add_argument("data")
    c.add_argument("--samples", type=int, default=20_000)
    w = sub.add_parser("walk", help="how far agents' ants walk, beside the dataset's ant")
    w.add_argument("runs", nargs="+")
    w.add_argument("--data", help="a dataset folder: its ant's path per 1000 steps")
    w.add_argument("--episodes", type=int, default=3)
    g = sub.add_parser("gait", help="the collecting ant's pace with and without action noise")
    g.add_argument("--env", default="AntMaze_Large-v5")
    g.add_argument("--ant", type=Path, help="a policy file (default: the shipped ant)")
    g.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.2])
    g.add_argument("--mean-of-noise", type=float, nargs="*", default=[0.2])
    g.add_argument("--steps", type=int, default=6000, help="transitions per setting")
    g.add_argument("--seed", type=int, default=7)
    fa = sub.add_parser("falls", help="how often the goal-reaching ant falls as it walks on")
    fa.add_argument("--ants", type=Path, nargs="*", default=[], help="policy files")
    fa.add_argument("--agent-dir", type=Path, help="an online ant's folder: its snapshots")
    fa.add_argument("--last", type=int, default=10, help="how many of its last snapshots")
    fa.add_argument(
        "--at", type=int, nargs="*", default=[], help="or the snapshots at these env steps"
    )
    fa.add_argument("--episodes", type=int, default=40)
    fa.add_argument(
        "--env",
        choices=["mpcdwm/AntGoal-v1", "mpcdwm/AntRoute-v1"],
        default="mpcdwm/AntGoal-v1",
        help="walk on in the open, or routes through the large maze",
    )
    o = sub.add_parser("oracle", help="the collecting ant itself on the evaluation task")
    o.add_argument("--maze", choices=sorted(D4RL_EVAL_CELLS), default="Large")
    o.add_argument("--ant", type=Path, help="a policy file (default: the shipped ant)")
    o.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.2])
    o.add_argument("--episodes", type=int, default=50)
    f = sub.add_parser("fit", help="how well an MLP fits the data's actions, by inputs")
    f.add_argument("data")
    f.add_argument("--updates", type=int, default=20_000)
    f.add_argument("--rows", type=int, default=300_000, help="training rows sampled")
    k = sub.add_parser("clone", help="clone the data's ant from its own inputs; drive the clone")
    k.add_argument("data")
    k.add_argument("--inputs", choices=["collector", "offline"], default="collector")
    k.add_argument("--episodes", type=int, default=5, help="evaluation episodes (offline)")
    k.add_argument("--updates", type=int, nargs="+", default=[20_000, 60_000])
    k.add_argument("--rows", type=int, default=300_000, help="training rows sampled")
    k.add_argument("--steps", type=int, default=10_000, help="transitions driven per clone")
    k.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.command == "clone":
        clone(args.data, args.inputs, args.updates, args.rows, args.steps, args.seed, args.episodes)
    elif args.command == "falls":
        falls(args.ants, args.episodes, args.agent_dir, args.last, args.at, args.env)
    elif args.command == "oracle":
        oracle(args.maze, args.ant, args.noise, args.episodes)
    elif args.command == "fit":
        fit(args.data, args.updates, args.rows)
    elif args.command == "gait":
        gait(args.env, args.ant, args.noise, args.mean_of_noise, args.steps, args.seed)
    elif args.command == "relabel":
        relabel(args.src, args.out, args.radius)
    elif args.command == "critic":
        critic(args.run, args.data, args.samples)
    else:
        walk(args.runs, args.data, args.episodes)


if __name__ == "__main__":
    main()
