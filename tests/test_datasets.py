"""Loading offline data: D4RL HDF5 files and Minari datasets written here, and every bad input."""

from __future__ import annotations

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from mpcdwm.data import (
    D4RL_REF_SCORES,
    DatasetError,
    flatten_observation,
    load_dataset,
    make_dataset,
)
from mpcdwm.envs import check_dataset_against_env


def _random_hopper_rows(steps: int, max_episode_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-style rows from a real Hopper-v5 with random actions.

    Like D4RL, a time limit is marked on the last row of an episode (``timeouts``) and that
    row's true next observation is not stored (the next row starts a new episode).
    """
    env = gym.make("Hopper-v5", max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    rows: dict[str, list] = {
        k: []
        for k in (
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "next_observations",
        )
    }
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, rew, term, trunc, _ = env.step(act)
        for k, v in zip(rows, (obs, act, rew, term, trunc, nxt), strict=True):
            rows[k].append(v)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def hopper_rows() -> dict[str, np.ndarray]:
    return _random_hopper_rows(3000, max_episode_steps=40)


def _write_d4rl(path, rows, with_next: bool) -> None:
    with h5py.File(path, "w") as f:
        for k, v in rows.items():
            if k == "next_observations" and not with_next:
                continue
            f.create_dataset(k, data=v)


def test_d4rl_file_with_next_observations(tmp_path, hopper_rows):
    path = tmp_path / "hopper-random-v2.hdf5"
    _write_d4rl(path, hopper_rows, with_next=True)
    ds = load_dataset(path)
    assert len(ds) == len(hopper_rows["observations"])
    assert ds.env_id == "Hopper-v5" and (ds.obs_dim, ds.act_dim) == (11, 3)
    assert ds.observations.dtype == np.float32 and ds.terminals.dtype == bool
    np.testing.assert_array_equal(
        ds.next_observations, hopper_rows["next_observations"].astype(np.float32)
    )
    assert (ds.ref_min_score, ds.ref_max_score) == D4RL_REF_SCORES["hopper"]
    # Normalised score follows the D4RL formula with Hopper's constants.
    np.testing.assert_allclose(
        ds.normalized_score([-20.272305, 3234.3, 1607.0]),
        [0.0, 100.0, 100 * (1607.0 + 20.272305) / (3234.3 + 20.272305)],
    )
    # Episode returns add up to the total reward; ends sit on terminals/timeouts.
    assert np.isclose(ds.episode_returns().sum(), hopper_rows["rewards"].sum(), rtol=1e-5)
    ends = hopper_rows["terminals"] | hopper_rows["timeouts"]
    ends[-1] = True  # the data stops mid-episode: that cut ends the last episode
    np.testing.assert_array_equal(ds.episode_ends, ends)


def test_d4rl_file_without_next_observations_matches_qlearning_dataset(tmp_path, hopper_rows):
    path = tmp_path / "hopper-random-v2.hdf5"
    _write_d4rl(path, hopper_rows, with_next=False)
    ds = load_dataset(path)
    # Timeout rows have no recorded next observation and are dropped, as is the last row.
    keep = ~hopper_rows["timeouts"].astype(bool)
    keep[-1] = False
    assert len(ds) == keep.sum()
    np.testing.assert_array_equal(
        ds.observations, hopper_rows["observations"][keep].astype(np.float32)
    )
    # Within episodes the rebuilt next observation is the true one (after a terminal it is the
    # next episode's start, as in d4rl.qlearning_dataset; the terminal masks it out).
    live = ~ds.terminals
    np.testing.assert_allclose(
        ds.next_observations[live], hopper_rows["next_observations"][keep][live], rtol=1e-6
    )
    # Terminals survive; the row before each dropped timeout now ends its episode.
    assert ds.terminals.sum() == hopper_rows["terminals"][keep].sum()
    assert ds.episode_ends.sum() >= hopper_rows["timeouts"].sum()


def test_next_actions_follow_episodes(tmp_path, hopper_rows):
    path = tmp_path / "hopper-random-v2.hdf5"
    _write_d4rl(path, hopper_rows, with_next=True)
    ds = load_dataset(path)
    inner = ~ds.episode_ends
    np.testing.assert_array_equal(ds.next_actions[:-1][inner[:-1]], ds.actions[1:][inner[:-1]])
    assert np.all(ds.next_actions[ds.episode_ends] == 0)


def test_split_by_episode(tmp_path, hopper_rows):
    path = tmp_path / "hopper-random-v2.hdf5"
    _write_d4rl(path, hopper_rows, with_next=True)
    ds = load_dataset(path)
    train, val = ds.split(0.2, seed=0)
    assert len(train) + len(val) == len(ds) and len(val) > 0
    n_eps = ds.episode_ends.sum()
    assert train.episode_ends.sum() + val.episode_ends.sum() == n_eps


def test_segments_are_consecutive_states_within_one_episode(tmp_path, hopper_rows):
    path = tmp_path / "hopper-random-v2.hdf5"
    _write_d4rl(path, hopper_rows, with_next=True)
    ds = load_dataset(path)
    segments = ds.segments(count=50, length=6, seed=1)
    assert segments.shape == (50, 6, 11)
    index = {row.tobytes(): i for i, row in enumerate(ds.observations)}
    ends = ds.episode_ends
    for segment in segments:
        rows = np.asarray([index[s.tobytes()] for s in segment])
        np.testing.assert_array_equal(np.diff(rows), 1)  # consecutive rows of the data
        assert not ends[rows[:-1]].any()  # no episode ends inside a segment
    np.testing.assert_array_equal(segments, ds.segments(count=50, length=6, seed=1))
    longest = int(np.diff(np.r_[-1, np.flatnonzero(ends)]).max())
    with pytest.raises(DatasetError, match="shorter segments"):
        ds.segments(count=1, length=longest + 1)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda r: r.pop("rewards"), "lacks key"),
        (lambda r: r.__setitem__("rewards", r["rewards"][:-5]), "has 2995 rows"),
        (
            lambda r: r["observations"].__setitem__((7, 3), np.nan),
            "'observations' has NaN/inf in 1 row",
        ),
        (lambda r: r["actions"].__setitem__((11, 0), 3.0), "outside the action space"),
        (
            lambda r: r.__setitem__("observations", r["observations"][:, :9]),
            "observations have 9 columns",
        ),
    ],
    ids=["missing-key", "length-mismatch", "nan", "action-out-of-bounds", "obs-size"],
)
def test_d4rl_bad_input_names_dataset_field_and_fix(tmp_path, hopper_rows, corrupt, match):
    rows = {k: v.copy() for k, v in hopper_rows.items()}
    corrupt(rows)
    if rows["observations"].shape[1] != 11:
        rows["next_observations"] = rows["next_observations"][:, :9]
    path = tmp_path / "hopper-bad-v2.hdf5"
    _write_d4rl(path, rows, with_next=True)
    with pytest.raises(DatasetError, match=match) as err:
        # The last two cases fit the data alone but not Hopper-v5.
        check_dataset_against_env(load_dataset(path))
    assert "hopper-bad-v2" in str(err.value)


def test_env_check_raises_when_a_registered_env_cannot_be_made(hopper_rows):
    """A registered id whose construction fails (here: a typo in its kwargs; a broken
    MuJoCo install is the same) is an error, not a silently skipped check."""
    env_id = "MpcdwmTypoHopper-v0"
    gym.register(
        id=env_id,
        entry_point="gymnasium.envs.mujoco.hopper_v5:HopperEnv",
        kwargs={"frame_skipp": 4},
    )
    try:
        ds = make_dataset(hopper_rows, name="hopper-typo", env_id=env_id)
        with pytest.raises(TypeError, match="frame_skipp"):
            check_dataset_against_env(ds)
    finally:
        del gym.registry[env_id]


def test_env_check_skips_an_unregistered_env_with_one_warning(hopper_rows):
    ds = make_dataset(hopper_rows, name="hopper-elsewhere", env_id="MpcdwmNoSuchEnv-v0")
    with pytest.warns(UserWarning, match="'MpcdwmNoSuchEnv-v0' is not registered") as seen:
        check_dataset_against_env(ds)
        check_dataset_against_env(ds)
    assert sum("MpcdwmNoSuchEnv-v0" in str(w.message) for w in seen) == 1


def test_missing_file_and_unknown_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.hdf5")
    with pytest.raises(DatasetError, match="mpcdwm collect"):
        load_dataset("mpcdwm/nothing-here-v0")


def test_nan_rows_dropped_on_request_and_counted(tmp_path, hopper_rows):
    rows = {k: v.copy() for k, v in hopper_rows.items()}
    rows["rewards"][[5, 100, 101]] = np.inf
    path = tmp_path / "hopper-nan-v2.hdf5"
    _write_d4rl(path, rows, with_next=True)
    ds = load_dataset(path, drop_invalid=True)
    assert ds.dropped_rows == 3 and len(ds) == len(rows["rewards"]) - 3
    assert np.isfinite(ds.rewards).all()
    # The row before a dropped one ends its episode, so nothing bootstraps across the gap.
    assert ds.episode_ends[4] and ds.episode_ends[98]


def test_minari_dataset_roundtrip_with_metadata_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("InvertedPendulum-v5", max_episode_steps=30)
    env.action_space.seed(0)
    buffers, lengths = [], []
    for ep in range(4):
        obs, _ = env.reset(seed=ep)
        b = EpisodeBuffer(observations=obs)
        done = False
        while not done:
            act = env.action_space.sample()
            obs, rew, term, trunc, info = env.step(act)
            b = b.add_step_data(
                {
                    "observation": obs,
                    "action": act,
                    "reward": rew,
                    "terminated": term,
                    "truncated": trunc,
                    "info": {},
                }
            )
            done = term or trunc
        buffers.append(b)
        lengths.append(len(b))
    minari.create_dataset_from_buffers(
        "test/pendulum-random-v0", buffers, env=env, ref_min_score=1.0, ref_max_score=30.0
    )
    ds = load_dataset("test/pendulum-random-v0")
    assert len(ds) == sum(lengths) and ds.env_id.startswith("InvertedPendulum")
    assert (ds.ref_min_score, ds.ref_max_score) == (1.0, 30.0)
    inner = ~ds.episode_ends[:-1]
    np.testing.assert_array_equal(ds.next_observations[:-1][inner], ds.observations[1:][inner])
    assert ds.episode_ends.sum() == 4
    # The same dataset loads from its folder path.
    folder = tmp_path / "test" / "pendulum-random-v0"
    assert len(load_dataset(folder)) == len(ds)


def test_dict_observations_flatten_in_documented_order():
    obs = {
        "desired_goal": np.array([7.0, 8.0]),
        "observation": np.array([3.0, 4.0, 5.0]),
        "achieved_goal": np.array([1.0, 2.0]),
    }
    np.testing.assert_array_equal(flatten_observation(obs), [1, 2, 3, 4, 5, 7, 8])
    stacked = {k: np.stack([v, v + 10]) for k, v in obs.items()}
    flat = flatten_observation(stacked)
    assert flat.shape == (2, 7) and flat[1, 0] == 11.0


def test_reference_scores_bad_or_missing():
    n = 10
    arrays = dict(
        observations=np.zeros((n, 2)),
        actions=np.zeros((n, 1)),
        rewards=np.zeros(n),
        next_observations=np.zeros((n, 2)),
        terminals=np.zeros(n),
        timeouts=np.zeros(n),
    )
    with pytest.raises(DatasetError, match="ref_max_score"):
        make_dataset(arrays, name="x", env_id="X-v0", ref_min_score=5.0, ref_max_score=1.0)
    # Without reference returns there is no normalized score, not 100 x the return.
    unknown = make_dataset(arrays, name="x", env_id="X-v0")
    assert unknown.ref_min_score is None and unknown.ref_max_score is None
    assert np.isnan(unknown.normalized_score([3.0, 4.0])).all()
    known = make_dataset(arrays, name="hopper-medium", env_id="Hopper-v5")
    assert np.isfinite(known.normalized_score([1000.0])).all()
