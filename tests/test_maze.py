"""Maze tasks on real gymnasium-robotics envs: BFS controller, Minari and D4RL round-trips."""

from __future__ import annotations

import dataclasses
import warnings

import h5py
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from mpcdwm.data import load_dataset  # noqa: E402
from mpcdwm.envs import goal_rule, make_env, remove_maze_model_file  # noqa: E402
from mpcdwm.maze import (  # noqa: E402
    ANT_OBS_DIM,
    D4RL_EVAL_CELLS,
    POINTMAZE_NOISE,
    ant_on_its_back,
    antmaze_cells,
    antmaze_eval_id,
    bfs_path,
    collect_antmaze,
    collect_pointmaze,
    play_cells,
    write_antmaze_dataset,
    write_pointmaze_dataset,
)


def test_bfs_path_goes_around_walls():
    maze = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    path = bfs_path(maze, (1, 1), (3, 1))
    assert path[0] == (1, 1) and path[-1] == (3, 1) and len(path) == 7
    assert all(maze[r][c] == 0 for r, c in path)
    with pytest.raises(ValueError, match="unreachable"):
        bfs_path([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]], (1, 1), (3, 1))


def test_env_observation_sizes():
    env = make_env("PointMaze_UMaze-v3")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8,)
    np.testing.assert_allclose(obs[0:2], obs[2:4], atol=1e-6)  # achieved_goal = (x, y)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (8,)
    ant = make_env("AntMaze_UMaze-v5")
    obs, _ = ant.reset(seed=0)
    assert obs.shape == (2 + 27 + 2,)  # D4RL's 29 (xy + 27) + goal 2 = 31


def test_maze_envs_leave_no_model_file_behind():
    """gymnasium-robotics writes each maze's MuJoCo model to a /tmp file it never removes:
    make_env (and the evaluation task's constructor, which probes call directly) removes it
    once the model is loaded, and the env still runs."""
    from pathlib import Path

    from mpcdwm.maze import make_eval_antmaze

    built = [make_env(env_id) for env_id in ("PointMaze_UMaze-v3", "AntMaze_UMaze-v5")]
    for env in [*built, make_eval_antmaze("UMaze")]:
        model_file = Path(env.unwrapped.tmp_xml_file_path)
        assert model_file.name.endswith(".xml") and not model_file.exists()
        env.reset(seed=0)
        for _ in range(3):
            env.step(env.action_space.sample())


@pytest.mark.parametrize("size, limit", [("UMaze", 700), ("Large", 1000)])
def test_antmaze_eval_task_has_d4rls_fixed_start_and_goal(size, limit):
    """D4RL evaluates AntMaze from one start to one goal: every reset of the evaluation task
    starts in the same cell with the same goal cell (position noise apart), where the plain
    Gymnasium-Robotics id draws them at random; time limit and layout as D4RL's."""
    env_id = antmaze_eval_id(f"AntMaze_{size}_Diverse_GR-v5")
    assert env_id == f"mpcdwm/AntMaze_{size}_Eval-v5"
    env = make_env(env_id)
    assert env.spec.max_episode_steps == limit and not env.unwrapped.continuing_task
    maze = env.unwrapped.maze

    def cells(e, seed):
        obs, _ = e.reset(seed=seed)
        assert obs.shape == (31,)
        return tuple(
            tuple(int(v) for v in maze.cell_xy_to_rowcol(xy)) for xy in (obs[:2], obs[-2:])
        )

    assert {cells(env, s) for s in range(5)} == {D4RL_EVAL_CELLS[size]}
    plain = make_env(f"AntMaze_{size}-v5")
    assert len({cells(plain, s) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="not an AntMaze"):
        antmaze_eval_id("PointMaze_UMaze-v3")


def test_datasets_are_checked_against_the_packages_own_eval_task():
    """AntMaze datasets name the package's evaluation task as their env. Training checks a
    dataset against its env before any process has made that env: the check must run (a
    wrong observation size is an error naming it), not be skipped as an unknown id."""
    import gymnasium as gym

    from mpcdwm.data import DatasetError, make_dataset
    from mpcdwm.envs import check_dataset_against_env

    env_id = "mpcdwm/AntMaze_UMaze_Eval-v5"
    gym.registry.pop(env_id, None)  # as in a fresh process
    rng = np.random.default_rng(0)

    def dataset(obs_dim: int):
        obs = rng.standard_normal((8, obs_dim)).astype(np.float32)
        rows = {
            "observations": obs,
            "next_observations": obs + 0.1,
            "actions": rng.uniform(-1, 1, (8, 8)).astype(np.float32),
            "rewards": np.zeros(8, np.float32),
            "terminals": np.zeros(8, bool),
            "timeouts": np.eye(8, dtype=bool)[-1],
        }
        return make_dataset(rows, name=f"antmaze-obs{obs_dim}", env_id=env_id)

    with pytest.raises(DatasetError, match="29"):
        check_dataset_against_env(dataset(29))  # D4RL's size without the goal
    gym.registry.pop(env_id, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not registered, not checked" warning
        check_dataset_against_env(dataset(31))


def test_collection_reaches_goals_more_than_random():
    data = collect_pointmaze("PointMaze_UMaze-v3", episodes=6, seed=1)
    ends = data["terminals"] | data["truncations"]
    assert ends.sum() == 6
    assert data["rewards"].sum() >= 5  # the controller reaches (almost) every goal
    env = make_env("PointMaze_UMaze-v3", max_episode_steps=300)
    successes = 0
    for ep in range(6):
        env.reset(seed=100 + ep)
        env.action_space.seed(ep)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            successes += r
            done = term or trunc
    assert data["rewards"].sum() > successes


def test_minari_pointmaze_round_trip(tmp_path):
    out = write_pointmaze_dataset("PointMaze_UMaze-v3", episodes=3, seed=2, out=str(tmp_path / "d"))
    ds = load_dataset(out)
    assert ds.observations.shape[1] == 8
    assert float(ds.rewards.sum()) >= 2


def test_d4rl_antmaze_file_appends_goal(tmp_path):
    n = 20
    rng = np.random.default_rng(0)
    path = tmp_path / "antmaze-umaze-v2.hdf5"
    with h5py.File(path, "w") as f:
        f_obs = rng.standard_normal((n, 29)).astype(np.float32)
        f["observations"] = f_obs
        f["actions"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"] = np.zeros(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.r_[np.zeros(n - 1, bool), True]
        f["infos/goal"] = np.tile([0.5, 8.0], (n, 1)).astype(np.float32)
    ds = load_dataset(path)
    assert ds.observations.shape[1] == 31
    assert ds.env_id == "mpcdwm/AntMaze_UMaze_Eval-v5"  # evaluated on D4RL's task
    assert ds.observations.shape[1] == make_env(ds.env_id).observation_space.shape[0]
    goals = np.asarray(ds.observations)[:, -2:]
    np.testing.assert_allclose(goals, np.tile([0.5, 8.0], (len(goals), 1)))
    np.testing.assert_allclose(np.asarray(ds.observations)[:, :29], f_obs[: len(goals)], rtol=1e-6)


def test_collect_command_dispatches_pointmaze(tmp_path):
    """`collect --env PointMaze_...` is the Python API: same defaults (noise 0.3, the env's
    time limit), --max-episode-steps passed through, settings validated (issue 11 defect 5:
    the command used noise 0.1, ignored the time limit and skipped validation)."""
    from mpcdwm.collect import CollectConfig, collect
    from mpcdwm.configs import ConfigError

    cfg = CollectConfig(env="PointMaze_UMaze-v3", steps=200, seed=3, progress=False)
    ds = load_dataset(collect(dataclasses.replace(cfg, out=tmp_path / "c")))
    assert len(ds.observations) >= 200 and ds.observations.shape[1] == 8
    assert float(ds.rewards.sum()) >= 2  # the BFS controller, not a random policy
    api = load_dataset(
        write_pointmaze_dataset(env_id=cfg.env, steps=200, seed=3, out=str(tmp_path / "a"))
    )
    np.testing.assert_array_equal(ds.actions, api.actions)  # one path, one default noise
    assert ds.metadata["mpcdwm_noise"] == POINTMAZE_NOISE == 0.3

    short = load_dataset(
        collect(dataclasses.replace(cfg, out=tmp_path / "s", max_episode_steps=40))
    )
    lengths = np.diff(np.r_[-1, np.flatnonzero(short.episode_ends)])
    assert lengths.max() <= 40 and short.timeouts.any()  # the limit cut episodes
    for bad in ({"steps": 0}, {"rollout_noise": -0.1}, {"max_episode_steps": 0}):
        with pytest.raises(ConfigError, match="must be >= "):
            collect(dataclasses.replace(cfg, out=tmp_path / "bad", **bad))
    assert not (tmp_path / "bad").exists()


def test_rebrac_on_pointmaze_umaze_beats_random(tmp_path):
    """Offline ReBRAC on the BFS dataset reaches the goal more often than random actions."""
    import json

    from mpcdwm.agents import TrainAgentConfig, train_agent

    out = write_pointmaze_dataset(
        "PointMaze_UMaze-v3", episodes=60, seed=4, out=str(tmp_path / "d")
    )
    run = train_agent(
        TrainAgentConfig(
            dataset=out,
            # 10k updates at batch 64: 0.95-1.0 success over 20 episodes (training seeds 0,
            # 1; random 0.2), at a third of batch 256's time (which scores the same); at 5k
            # updates the success rate still swings (0.55-0.85).
            steps=10_000,
            actor_bc_coef=0.1,  # MuJoCo-default beta (0.001) gets 0 successes here
            out=tmp_path / "agent",
            eval_every=10_000,
            eval_episodes=20,
            chunk=1000,
            checkpoint_every=10_000,
            batch_size=64,
            progress=False,
        )
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "eval_return" in r][-1]
    success = last["eval_return"]
    env = make_env("PointMaze_UMaze-v3")
    rule = goal_rule(env)
    rand, rand_distance = 0.0, 0.0
    for ep in range(20):
        env.reset(seed=10_000 + ep)
        env.action_space.seed(ep)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(env.action_space.sample())
            rand += r / 20
            done = term or trunc
        rand_distance += float(rule.distance(obs)) / 20
    assert success > rand + 0.3, (success, rand)
    # The evaluations also say how close the policy ends to its goals (mean over episodes).
    assert last["eval_goal_distance"] < rand_distance, (last, rand_distance)


def test_pointmaze_dataset_relative_out_lands_in_the_working_directory(tmp_path, monkeypatch):
    """A relative folder is written below the cwd (Minari would join it to its own root)."""
    monkeypatch.chdir(tmp_path)
    path = write_pointmaze_dataset("PointMaze_UMaze-v3", episodes=2, seed=5, out="rel/d")
    assert path == str(tmp_path / "rel" / "d") and (tmp_path / "rel" / "d" / "data").is_dir()
    assert load_dataset(path).observations.shape[1] == 8


# --------------------------------------------------------------------------- AntMaze


@pytest.fixture(scope="module")
def ant_policy():
    """A real (untrained) TD3 actor over the goal-reaching ant's 29 inputs, jitted."""
    import jax

    from mpcdwm.agents import rebrac

    td3 = rebrac.td3_config()
    actor = rebrac.init(td3, jax.random.key(0), ANT_OBS_DIM + 2, 8).actor
    act = jax.jit(lambda obs: rebrac.act(td3, actor, obs))
    return lambda obs: np.asarray(act(obs))


def test_antmaze_episodes_end_at_the_goal_with_reward_1(ant_policy):
    """One free cell: start and goal share it (the env's position noise apart), so some
    episodes start within reach. Reward 1 exactly where the ant is within 0.45 of the goal,
    and there the episode ends; the others run to the time limit with reward 0."""
    one_cell = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    data = collect_antmaze(
        "AntMaze_UMaze-v5",
        ant_policy,
        recipe="diverse",
        steps=200,
        seed=0,
        max_episode_steps=5,
        env_kwargs={"maze_map": one_cell},
    )
    nxt = data["next_observations"]
    assert data["observations"].shape[1] == 2 + ANT_OBS_DIM + 2
    reached = np.linalg.norm(nxt[:, :2] - nxt[:, -2:], axis=1) <= 0.45
    np.testing.assert_array_equal(data["rewards"] == 1.0, reached)
    np.testing.assert_array_equal(data["terminals"], reached)
    assert reached.sum() >= 1 and set(np.unique(data["rewards"])) <= {0.0, 1.0}
    ends = data["terminals"] | data["truncations"]
    assert ends[-1] and not (data["terminals"] & data["truncations"]).any()
    assert np.all(np.abs(data["actions"]) <= 1.0)  # noisy actions clipped to Ant's bounds


def test_antmaze_collection_gives_up_on_an_ant_on_its_back():
    """Real MuJoCo: an ant turned onto its back lies there; the collector truncates its
    episode after `patience` steps, and leaves an upright ant to the time limit."""
    from mpcdwm.maze import _drive_episode
    from mpcdwm.minari_io import TRANSITION_FIELDS

    def still(obs, waypoint):
        return np.zeros(8, np.float32)

    env = make_env("AntMaze_UMaze-v5", max_episode_steps=30)
    obs, _ = env.reset(seed=0)
    rows = {k: [] for k in TRANSITION_FIELDS}
    _drive_episode(env, obs, [obs[-2:]], still, rows, ant_on_its_back, 5)
    assert len(rows["actions"]) == 30 and not any(map(ant_on_its_back, rows["observations"]))

    obs, _ = env.reset(seed=0)
    ant = env.unwrapped.ant_env
    qpos = ant.data.qpos.copy()
    qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # the torso turned 180 degrees about x
    ant.set_state(qpos, ant.data.qvel.copy())
    rows = {k: [] for k in TRANSITION_FIELDS}
    _drive_episode(env, obs, [obs[-2:]], still, rows, ant_on_its_back, 5)
    assert len(rows["actions"]) == 5 and rows["truncations"][-1] and not any(rows["terminals"])
    assert all(map(ant_on_its_back, rows["next_observations"]))
    # Batched, as datasets are tested: one row of each kind, the same answers.
    mixed = np.stack([rows["next_observations"][-1], obs])
    assert ant_on_its_back(mixed).tolist() == [True, False]


def test_antmaze_dataset_round_trip_and_play_cells(ant_policy, tmp_path):
    env_id = "AntMaze_UMaze-v5"
    assert play_cells(env_id) == [(1, 1), (3, 1)]
    maze_map = make_env(env_id).unwrapped.maze.maze_map
    assert antmaze_cells(maze_map, env_id, "play") == [(1, 1), (3, 1)]
    assert len(antmaze_cells(maze_map, env_id, "diverse")) == 7
    with pytest.raises(ValueError, match="recipes"):
        antmaze_cells(maze_map, env_id, "random")
    out = write_antmaze_dataset(
        env_id, ant_policy, recipe="play", steps=120, seed=1, max_episode_steps=40,
        out=str(tmp_path / "antmaze-umaze-play"),
    )  # fmt: skip
    ds = load_dataset(out)
    assert ds.observations.shape == (120, 31) and ds.actions.shape == (120, 8)
    assert (ds.ref_min_score, ds.ref_max_score) == (0.0, 1.0)
    assert ds.metadata["mpcdwm_recipe"] == "play"
    # Recorded in the maze's evaluation task (D4RL's fixed start and goal), made in the maze.
    assert ds.env_id == "mpcdwm/AntMaze_UMaze_Eval-v5"
    assert ds.metadata["mpcdwm_collect_env"] == env_id
    # Every episode starts in one of the play cells (within the env's position noise).
    maze = make_env(env_id).unwrapped.maze
    starts = ds.observations[np.r_[0, np.flatnonzero(ds.timeouts | ds.terminals)[:-1] + 1]]
    for xy in starts[:, :2]:
        assert tuple(int(v) for v in maze.cell_xy_to_rowcol(xy)) in [(1, 1), (3, 1)]


def test_collect_command_drives_the_trained_ant_through_antmaze(tmp_path):
    """`collect --env AntMaze_... --recipe play` loads the online TD3 agent of
    mpcdwm/AntGoal-v1 (here a few hundred steps of it) and records the maze with it."""
    from mpcdwm.checkpoint import CheckpointError
    from mpcdwm.collect import ANT_GOAL_ENV, CollectConfig, collect
    from mpcdwm.online_td3 import export_policy, load_policy_file, train_online

    ant = CollectConfig(
        env=ANT_GOAL_ENV, train_steps=300, start_steps=200, chunk=100, eval_every=300,
        eval_episodes=1, max_episode_steps=50, agent_dir=tmp_path / "ant", progress=False,
    )  # fmt: skip
    assert train_online(ant).env_steps == 300
    cfg = CollectConfig(
        env="AntMaze_UMaze-v5", recipe="play", steps=100, seed=2, max_episode_steps=40,
        agent_dir=tmp_path / "ant", out=tmp_path / "maze", progress=False,
    )  # fmt: skip
    ds = load_dataset(collect(cfg))
    assert ds.observations.shape == (120, 31)  # whole episodes of 40 steps
    assert ds.metadata["mpcdwm_low_level_env_steps"] == 300
    assert ds.metadata["mpcdwm_recipe"] == "play"
    # The ant's actor alone in a policy file drives the same episodes.
    policy_file = export_policy(tmp_path / "ant", tmp_path / "ant.ckpt")
    assert policy_file.stat().st_size < 1_000_000  # no replay buffer
    from_file = load_dataset(
        collect(dataclasses.replace(cfg, agent_dir=policy_file, out=tmp_path / "f"))
    )
    np.testing.assert_array_equal(from_file.actions, ds.actions)
    with pytest.raises(CheckpointError, match="env"):
        load_policy_file(policy_file, env="Hopper-v5")
    with pytest.raises(ValueError, match="does not apply"):
        collect(dataclasses.replace(cfg, recipe="medium", out=tmp_path / "bad"))
    with pytest.raises(CheckpointError, match="goal-reaching ant.*mpcdwm/AntGoal-v1"):
        collect(dataclasses.replace(cfg, agent_dir=tmp_path / "none", out=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def _minari_antmaze(name: str, env_id: str, eval_map: list) -> None:
    """A 2-episode Minari AntMaze dataset ``test/<name>-v0`` whose eval_env_spec is ``env_id``
    on ``eval_map``, written as Minari's D4RL AntMaze datasets are (collection + evaluation env)."""
    import copy

    import gymnasium as gym
    import gymnasium_robotics
    import minari
    from minari.data_collector import EpisodeBuffer

    gym.register_envs(gymnasium_robotics)
    # As Minari's D4RL files: 27 ant dims (no contact forces), episodes cut by the collector.
    env = gym.make(
        env_id, continuing_task=True, reset_target=False, include_cfrc_ext_in_observation=False
    )
    remove_maze_model_file(env)
    buffers = []
    for ep in range(2):
        obs, _ = env.reset(seed=ep)
        buf = EpisodeBuffer(observations=obs)
        for t in range(5):
            act = np.zeros(8, np.float32)
            obs, rew, term, _, _ = env.step(act)
            step = {"observation": obs, "action": act, "reward": rew, "terminated": term}
            buf = buf.add_step_data({**step, "truncated": t == 4, "info": {}})
        buffers.append(buf)
    eval_spec = copy.deepcopy(env.spec)
    eval_spec.kwargs["maze_map"] = eval_map
    minari.create_dataset_from_buffers(
        f"test/{name}-v0", buffers, env=env, eval_env=eval_spec, ref_min_score=0.0,
        ref_max_score=1.0, author="mpcdwm tests", author_email="n/a", algorithm_name="zeros",
        code_permalink="n/a", description="eval_env_spec test",
    )  # fmt: skip
    env.close()


def test_minari_antmaze_is_evaluated_on_its_eval_env_spec(tmp_path, monkeypatch):
    """D4RL AntMaze datasets from Minari name their evaluation env (fixed start and goal) apart
    from the collection env (random resets): D4RL's cells load as the package's evaluation task;
    an evaluation maze it cannot rebuild keeps the collection env, with a warning."""
    from gymnasium_robotics.envs.maze import maps

    from mpcdwm.maze import eval_maze_map

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    _minari_antmaze("large", "AntMaze_Large_Diverse_GR-v5", eval_maze_map("Large"))
    ds = load_dataset("test/large-v0")
    assert ds.env_id == "mpcdwm/AntMaze_Large_Eval-v5"
    assert ds.observations.shape[1] == make_env(ds.env_id).observation_space.shape[0]
    # Minari's U-maze evaluation map is mirrored (start and goal in column 3): not D4RL's cells.
    mirrored = [list(row) for row in maps.U_MAZE]
    mirrored[2] = [1, 0, 1, 1, 1]
    mirrored[1][3], mirrored[3][3] = maps.RESET, maps.GOAL
    _minari_antmaze("umaze", "AntMaze_UMaze-v5", mirrored)
    with pytest.warns(UserWarning, match="evaluation env .* AntMaze_UMaze-v5"):
        ds = load_dataset("test/umaze-v0")
    assert ds.env_id == "AntMaze_UMaze-v5" and "eval_env_note" in ds.metadata
    # An explicit env id is used as given, with no warning.
    assert load_dataset("test/umaze-v0", env_id="AntMaze_UMaze-v5").env_id == "AntMaze_UMaze-v5"


def test_antmaze_collection_drives_the_shipped_ant_when_none_was_trained(tmp_path, monkeypatch):
    from mpcdwm.collect import SHIPPED_ANT, CollectConfig, collect

    monkeypatch.setenv("MPCDWM_CACHE", str(tmp_path / "cache"))  # no ant trained here
    cfg = CollectConfig(
        env="AntMaze_UMaze-v5", recipe="play", steps=3000, seed=0, out=tmp_path / "m",
        progress=False,
    )  # fmt: skip
    ds = load_dataset(collect(cfg))
    assert ds.metadata["mpcdwm_low_level_agent"] == f"shipped {SHIPPED_ANT}"
    # It walks the U from one end to the other (a random ant never does; the 1M-step
    # datasets' rate is in BENCHMARKS.md) in many of its episodes.
    returns = ds.episode_returns()
    assert len(returns) >= 5 and returns.mean() >= 0.4, returns


def test_run_episodes_records_how_far_from_its_goal_each_episode_ends():
    """Real PointMaze: the distance recorded per episode is the env's own ball-to-goal
    distance after the last step; an env without a goal records none."""
    from mpcdwm.rollout import run_episodes

    def still(obs):
        return np.zeros(2, np.float32), {}

    stats = run_episodes("PointMaze_UMaze-v3", still, episodes=2, seed=7, max_steps=5)
    assert len(stats.goal_distances) == 2
    env = make_env("PointMaze_UMaze-v3")
    for i, recorded in enumerate(stats.goal_distances):
        env.reset(seed=7 + i)
        for _ in range(5):
            env.step(np.zeros(2))
        u = env.unwrapped
        assert recorded == pytest.approx(float(np.linalg.norm(u.data.qpos[:2] - u.goal)), abs=1e-6)
    env.close()
    hopper = run_episodes(
        "Hopper-v5", lambda obs: (np.zeros(3, np.float32), {}), episodes=1, seed=0, max_steps=3
    )
    assert hopper.goal_distances == [] and len(hopper.returns) == 1
