"""The goal-reaching ant (mpcdwm.maze.AntGoalEnv) on real MuJoCo: the low-level task that
AntMaze collection needs."""

from __future__ import annotations

import numpy as np
import pytest

from mpcdwm.envs import make_env
from mpcdwm.maze import (
    ANT_GOAL_REWARD,
    ANT_OBS_DIM,
    AntGoalEnv,
    AntRouteEnv,
    ant_goal_episodes,
    bfs_path,
)


def _moving(env, velocity_x: float) -> tuple[float, dict]:
    """One zero-torque step after giving the torso an x-velocity; (reward, info)."""
    ant = env.unwrapped.ant
    qpos, qvel = ant.data.qpos.copy(), ant.data.qvel.copy()
    qvel[0] = velocity_x
    ant.set_state(qpos, qvel)
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    return reward, info


def _set_yaw(env, yaw: float) -> None:
    """Turn the torso to ``yaw`` (radians about z), everything else kept."""
    ant = env.unwrapped.ant
    qpos = ant.data.qpos.copy()
    qpos[3:7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
    ant.set_state(qpos, ant.data.qvel.copy())


def test_observation_is_the_ants_then_the_goal_relative_to_it():
    env = make_env("mpcdwm/AntGoal-v1")
    assert env.spec.max_episode_steps == 500
    obs, info = env.reset(seed=3)
    ant = env.unwrapped.ant
    assert obs.shape == (ANT_OBS_DIM + 2,) and obs.dtype == np.float32
    # AntMaze-v5's ant layout: qpos without x/y, then qvel.
    np.testing.assert_allclose(obs[:13], ant.data.qpos[2:], atol=1e-6)
    np.testing.assert_allclose(obs[13:ANT_OBS_DIM], ant.data.qvel, atol=1e-6)
    offset = info["goal"] - ant.data.qpos[:2]
    # The goal in the torso's heading frame: same distance, rotated by the ant's yaw.
    assert np.linalg.norm(obs[ANT_OBS_DIM:]) == pytest.approx(np.linalg.norm(offset), rel=1e-5)
    assert 2.0 <= np.linalg.norm(obs[ANT_OBS_DIM:]) <= 5.0
    again, _ = make_env("mpcdwm/AntGoal-v1").reset(seed=3)
    np.testing.assert_array_equal(obs, again)  # one seed fixes the start and the goal
    other, _ = env.reset(seed=4)
    assert not np.allclose(other[ANT_OBS_DIM:], obs[ANT_OBS_DIM:])


def test_goal_is_given_in_the_frame_of_the_ants_heading():
    env = make_env("mpcdwm/AntGoal-v1")
    env.reset(seed=0)
    ahead_in_world_x = env.unwrapped.xy() + np.array([3.0, 0.0])
    observed = {}
    for yaw in (0.0, np.pi / 2, np.pi):
        env.reset(seed=0)
        _set_yaw(env, yaw)
        env.unwrapped.goal = ahead_in_world_x.copy()
        obs, *_ = env.step(np.zeros(8, np.float32))
        observed[yaw] = obs[ANT_OBS_DIM:]
    # Facing +x the goal is ahead; facing +y it is to the right; facing -x, behind.
    np.testing.assert_allclose(observed[0.0], [3.0, 0.0], atol=0.1)
    np.testing.assert_allclose(observed[np.pi / 2], [0.0, -3.0], atol=0.1)
    np.testing.assert_allclose(observed[np.pi], [-3.0, 0.0], atol=0.1)


def test_reward_pays_velocity_toward_the_goal():
    env = make_env("mpcdwm/AntGoal-v1")
    env.reset(seed=0)
    goal_ahead = env.unwrapped.xy() + np.array([3.0, 0.0])
    rewards = {}
    for v in (2.0, -2.0):
        env.reset(seed=0)
        env.unwrapped.goal = goal_ahead.copy()
        rewards[v], info = _moving(env, v)
        assert not info["success"]
    # Walking toward the goal at 2 m/s earns about 4 per step more than walking away.
    assert rewards[2.0] - rewards[-2.0] == pytest.approx(4.0, abs=1.0)
    assert rewards[2.0] > 1.0 > rewards[-2.0]
    # Standing still earns at most the survive bonus, a quarter of walking at 1 m/s.
    env.reset(seed=0)
    env.unwrapped.goal = goal_ahead.copy()
    _, still, *_ = env.step(np.zeros(8, np.float32))
    assert still <= ANT_GOAL_REWARD["healthy_reward"] + 0.05


def test_reaching_the_goal_draws_a_new_one_or_ends_the_episode():
    env = make_env("mpcdwm/AntGoal-v1")
    env.reset(seed=1)
    near = env.unwrapped.xy() + np.array([0.1, 0.0])
    env.unwrapped.goal = near.copy()
    obs, reward, terminated, _, info = env.step(np.zeros(8, np.float32))
    assert info["success"] and info["goals_reached"] == 1 and not terminated
    assert reward >= env.unwrapped.goal_bonus  # the bonus on the step that reaches it
    assert 1.5 <= np.linalg.norm(obs[ANT_OBS_DIM:]) <= 5.5  # a new goal 2-5 m from the ant
    evaluation = make_env("mpcdwm/AntGoal-v1", resample_goal=False)
    evaluation.reset(seed=1)
    evaluation.unwrapped.goal = evaluation.unwrapped.xy() + np.array([0.1, 0.0])
    _, _, terminated, _, info = evaluation.step(np.zeros(8, np.float32))
    assert info["success"] and terminated


def test_an_ant_on_its_back_ends_the_episode():
    env = make_env("mpcdwm/AntGoal-v1")
    env.reset(seed=2)
    _, _, terminated, _, info = env.step(np.zeros(8, np.float32))
    assert not terminated and not info["flipped"]
    ant = env.unwrapped.ant
    qpos = ant.data.qpos.copy()
    qpos[2] = 0.5  # within Ant-v5's healthy heights: only the orientation is wrong
    qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # half a turn about x: on its back
    ant.set_state(qpos, np.zeros_like(ant.data.qvel))
    _, _, terminated, _, info = env.step(np.zeros(8, np.float32))
    assert terminated and info["flipped"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="goal_distance"):
        AntGoalEnv(goal_distance=(5.0, 2.0))
    with pytest.raises(ValueError, match="27-entry observation"):
        AntGoalEnv(include_cfrc_ext_in_observation=True)


def test_the_shipped_ant_walks_to_its_goals_where_a_random_policy_does_not():
    """The policy file shipped with the package (trained by `make_datasets.py --antmaze
    --train-ant`) is a real goal-reaching ant: it drives AntMaze collection on machines
    where no ant was trained."""
    from mpcdwm.collect import ANT_GOAL_ENV, shipped_ant
    from mpcdwm.online_td3 import load_policy_file

    assert shipped_ant().is_file(), "the goal-reaching ant is missing from mpcdwm/assets"
    policy, meta = load_policy_file(shipped_ant(), env=ANT_GOAL_ENV)
    assert meta["obs_dim"] == ANT_OBS_DIM + 2 and meta["act_dim"] == 8
    rng = np.random.default_rng(0)
    random_ant = ant_goal_episodes(
        lambda obs: rng.uniform(-1, 1, 8).astype(np.float32), 5, seed=50_000
    )
    assert random_ant["success"].mean() == 0.0
    assert ant_goal_episodes(policy, 10, seed=50_000)["success"].mean() >= 0.8


# ------------------------------------------------------------------ the ant inside a maze


def _place(env, xy: np.ndarray, velocity: np.ndarray | None = None) -> None:
    """Put the route env's torso at ``xy`` (2,), upright, with planar ``velocity``."""
    ant = env.unwrapped.maze_env.ant_env
    qpos, qvel = ant.data.qpos.copy(), np.zeros_like(ant.data.qvel)
    qpos[:2] = xy
    if velocity is not None:
        qvel[:2] = velocity
    ant.set_state(qpos, qvel)


def test_the_route_env_hands_the_ant_its_next_waypoint_as_collection_does():
    env = make_env("mpcdwm/AntRoute-v1")
    assert env.spec.max_episode_steps == 1000  # D4RL's large-maze limit
    obs, info = env.reset(seed=5)
    route_env = env.unwrapped
    ant = route_env.maze_env.ant_env
    assert obs.shape == (ANT_OBS_DIM + 2,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:13], ant.data.qpos[2:], atol=1e-6)
    np.testing.assert_allclose(obs[13:ANT_OBS_DIM], ant.data.qvel, atol=1e-6)
    maze = route_env.maze
    start = tuple(maze.cell_xy_to_rowcol(route_env.xy()))
    goal = tuple(maze.cell_xy_to_rowcol(info["goal"]))
    assert start != goal and len(route_env.route) == len(bfs_path(maze.maze_map, start, goal)) - 1
    offset = info["waypoint"] - route_env.xy()
    assert np.linalg.norm(obs[ANT_OBS_DIM:]) == pytest.approx(np.linalg.norm(offset), rel=1e-5)
    # Within half a cell of a waypoint, the ant is handed the next one.
    first = route_env.k
    _place(env, route_env.route[first])
    _, _, _, _, info = env.step(np.zeros(8, np.float32))
    assert route_env.k == first + 1
    np.testing.assert_array_equal(info["waypoint"], route_env.route[first + 1])
    again, _ = make_env("mpcdwm/AntRoute-v1").reset(seed=5)
    np.testing.assert_array_equal(obs, again)  # one seed fixes the cells and the ant


def test_the_route_env_pays_progress_toward_the_waypoint_and_ends_at_the_goal_or_a_fall():
    env = make_env("mpcdwm/AntRoute-v1")
    rewards = {}
    for sign in (1.0, -1.0):
        env.reset(seed=0)
        route_env = env.unwrapped
        here = route_env.xy()
        toward = route_env.route[route_env.k] - here
        _place(env, here, sign * 2.0 * toward / np.linalg.norm(toward))
        _, rewards[sign], terminated, _, info = env.step(np.zeros(8, np.float32))
        assert not terminated and not info["success"]
    # 2 m/s toward the waypoint earns about 4 per step more than 2 m/s away from it.
    assert rewards[1.0] - rewards[-1.0] == pytest.approx(4.0, abs=1.0)
    env.reset(seed=0)
    _place(env, env.unwrapped.route[-1])  # at the goal
    _, reward, terminated, _, info = env.step(np.zeros(8, np.float32))
    assert info["success"] and terminated and reward >= env.unwrapped.goal_bonus
    env.reset(seed=0)
    ant = env.unwrapped.maze_env.ant_env
    qpos = ant.data.qpos.copy()
    qpos[2], qpos[3:7] = 0.5, [0.0, 1.0, 0.0, 0.0]  # on its back, at a healthy height
    ant.set_state(qpos, np.zeros_like(ant.data.qvel))
    _, _, terminated, _, info = env.step(np.zeros(8, np.float32))
    assert terminated and info["flipped"] and not info["success"]
    with pytest.raises(ValueError, match="mazes are"):
        AntRouteEnv(maze="Open")


def test_the_shipped_ant_walks_maze_routes_where_a_random_policy_falls():
    """The shipped ant, handed the route's waypoints, walks between random cells of the large
    maze (0.83 of 60 routes in BENCHMARKS); random torques fall within a few dozen steps."""
    from mpcdwm.collect import shipped_ant
    from mpcdwm.online_td3 import load_policy_file

    policy, _ = load_policy_file(shipped_ant())
    walked = ant_goal_episodes(policy, 6, seed=60_000, env_id="mpcdwm/AntRoute-v1")
    assert walked["success"].sum() >= 5, walked
    rng = np.random.default_rng(0)
    random_ant = ant_goal_episodes(
        lambda obs: rng.uniform(-1, 1, 8).astype(np.float32),
        3,
        seed=60_000,
        env_id="mpcdwm/AntRoute-v1",
    )
    assert not random_ant["success"].any() and random_ant["fell"].all()
    with pytest.raises(ValueError, match="resample_goal"):
        ant_goal_episodes(policy, 1, seed=0, resample_goal=True, env_id="mpcdwm/AntRoute-v1")
