"""``mpcdwm collect``: real MuJoCo envs, real Minari files read back, a real online TD3 that learns.

One online TD3 run on InvertedPendulum-v5 (module fixture) serves the learning, resume and
recipe tests, as one training serves every recipe in real use: it is trained to half its
budget, then resumed to the full budget, exactly the interrupted-collection path.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import minari
import numpy as np
import pytest

from mpcdwm import collect as collect_module
from mpcdwm import online_td3
from mpcdwm.agents.rebrac import dataset_key, td3_config
from mpcdwm.checkpoint import CheckpointError
from mpcdwm.collect import (
    EXPERT_CHOICE_NAME,
    CollectConfig,
    collect,
    command_line,
    default_dataset_id,
)
from mpcdwm.data import D4RL_REF_SCORES, load_dataset
from mpcdwm.files import UserFileError
from mpcdwm.online_td3 import CHECKPOINT_NAME, select_expert, train_online

HOPPER_LIMIT = 30  # short episodes so the random data holds both terminations and time limits


def _check_transitions(ds) -> None:
    """Shapes, dtypes and episode boundaries of a loaded dataset."""
    n = len(ds)
    assert ds.observations.shape == (n, ds.obs_dim) and ds.observations.dtype == np.float32
    assert ds.next_observations.shape == (n, ds.obs_dim)
    assert ds.actions.dtype == np.float32 and ds.rewards.shape == (n,)
    assert ds.terminals.dtype == bool and ds.timeouts.dtype == bool
    # Within an episode the next observation is the following row's observation.
    inside = ~ds.episode_ends[:-1]
    np.testing.assert_array_equal(ds.next_observations[:-1][inside], ds.observations[1:][inside])
    # An episode boundary is a real reset: the next row does not continue the trajectory.
    across = ds.episode_ends[:-1]
    assert (ds.next_observations[:-1][across] != ds.observations[1:][across]).any(axis=1).all()


@pytest.fixture(scope="module")
def hopper_random(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    cfg = CollectConfig(
        env="Hopper-v5",
        recipe="random",
        steps=3000,
        seed=3,
        max_episode_steps=HOPPER_LIMIT,
        progress=False,
    )
    return root, cfg


def test_random_hopper_by_id_roundtrip(hopper_random, monkeypatch):
    root, cfg = hopper_random
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    dataset_id = collect(cfg)
    # The default id says seed and size; the non-default time limit adds a settings hash.
    assert dataset_id == default_dataset_id(cfg)
    assert dataset_id.startswith("mpcdwm/hopper-random-s3-n3k-c") and dataset_id.endswith("-v0")
    assert dataset_id in minari.list_local_datasets()
    ds = load_dataset(dataset_id)
    assert len(ds) == 3000 and ds.obs_dim == 11 and ds.act_dim == 3 and ds.env_id == "Hopper-v5"
    _check_transitions(ds)
    assert np.abs(ds.actions).max() <= 1.0 and ds.actions.std() > 0.5  # uniform in [-1, 1]
    # Hopper terminates when it falls (height <= 0.7 or |angle| >= 0.2); otherwise only the
    # time limit ends an episode.
    z, angle = ds.next_observations[:, 0], ds.next_observations[:, 1]
    fallen = (z <= 0.7) | (np.abs(angle) >= 0.2)
    assert ds.terminals.sum() > 10 and ds.timeouts.sum() > 10
    np.testing.assert_array_equal(ds.terminals[:-1], fallen[:-1])
    ends = np.flatnonzero(ds.episode_ends)
    lengths = np.diff(np.r_[-1, ends])
    assert lengths.max() <= HOPPER_LIMIT
    timed_out = ds.timeouts[ends][:-1]  # the last episode is cut by the data's end
    assert (lengths[:-1][timed_out] == HOPPER_LIMIT).all()
    assert (lengths[:-1][~timed_out] < HOPPER_LIMIT).all()
    # D4RL reference scores for hopper, and how the data was made.
    assert (ds.ref_min_score, ds.ref_max_score) == pytest.approx(D4RL_REF_SCORES["hopper"])
    assert ds.metadata["mpcdwm_recipe"] == "random" and ds.metadata["mpcdwm_seed"] == 3
    assert ds.metadata["mpcdwm_command"] == command_line(cfg)
    assert "--max-episode-steps 30" in ds.metadata["mpcdwm_command"]
    # Same seed, same data; writing it again under the same id needs --overwrite.
    with pytest.raises(FileExistsError, match="--overwrite"):
        collect(cfg)
    out = root / "copy"
    again = load_dataset(collect(dataclasses.replace(cfg, out=out)))
    np.testing.assert_array_equal(again.observations, ds.observations)
    np.testing.assert_array_equal(again.actions, ds.actions)
    assert (out / "data" / "main_data.hdf5").is_file()


def test_default_dataset_ids_differ_when_the_data_differ():
    """Without --dataset-id every dataset used to be mpcdwm/<env>-<recipe>-v0, whatever its
    seed or size, so different data shared one id and reports pooled them."""
    base = CollectConfig(env="Hopper-v5", recipe="medium", steps=100_000, seed=0)
    assert default_dataset_id(base) == "mpcdwm/hopper-medium-s0-n100k-v0"
    variants = [
        base,
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, steps=50_000),
        dataclasses.replace(base, train_steps=1_000_000),  # the online TD3 budget
        dataclasses.replace(base, rollout_noise=0.3),
        dataclasses.replace(base, max_episode_steps=500),
        dataclasses.replace(base, recipe="expert"),
        dataclasses.replace(base, env="Walker2d-v5"),
    ]
    ids = [default_dataset_id(c) for c in variants]
    assert len(set(ids)) == len(ids), ids
    assert ids[3] == "mpcdwm/hopper-medium-s0-n100k-t1m-v0"
    # Settings that do not change the data do not change the id; the TD3 budget means
    # nothing to the random recipe; medium-replay's size is its replay buffer.
    same = dataclasses.replace(base, out=Path("x"), progress=False, checkpoint_minutes=1.0)
    assert default_dataset_id(same) == ids[0]
    rand = dataclasses.replace(base, recipe="random")
    assert default_dataset_id(dataclasses.replace(rand, train_steps=5)) == default_dataset_id(rand)
    replay = dataclasses.replace(base, recipe="medium-replay")
    assert default_dataset_id(replay) == "mpcdwm/hopper-medium-replay-s0-v0"
    # The agent presets still read the family and task from the new ids.
    assert dataset_key(ids[0]) == "hopper-medium" and dataset_key(ids[3]) == "hopper-medium"
    assert dataset_key(default_dataset_id(replay)) == "hopper-medium-replay"
    assert dataset_key(default_dataset_id(rand)) == "hopper-random"


# ------------------------------------------------------------------ online TD3


def _pendulum_cfg(tmp_path, **kw) -> CollectConfig:
    base = dict(
        env="InvertedPendulum-v5",
        steps=400,
        seed=0,
        train_steps=4000,
        start_steps=500,
        chunk=250,
        eval_every=1000,
        eval_episodes=3,
        max_episode_steps=200,
        batch_size=128,
        checkpoint_every=1000,
        agent_dir=tmp_path / "agent",
        progress=False,
    )
    base.update(kw)
    return CollectConfig(**base)


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    """(cfg, run after an 'interrupted' half budget, run resumed to the full budget)."""
    tmp = tmp_path_factory.mktemp("pendulum")
    cfg = _pendulum_cfg(tmp)
    half = train_online(dataclasses.replace(cfg, train_steps=2000))
    half_buffer = {k: v[: half.size].copy() for k, v in half.buffer.items()}
    half_evals = list(half.evals)
    full = train_online(cfg)
    return cfg, half_buffer, half_evals, full


def test_td3_online_beats_random(pendulum):
    cfg, _, _, run = pendulum
    final = run.evals[-1]["return"]
    # Random keeps the pole up for a handful of steps; TD3 balances it far longer.
    assert run.random_return < 15
    assert final > 8 * run.random_return, run.evals


def test_resume_continues_the_interrupted_run(pendulum):
    cfg, half_buffer, half_evals, run = pendulum
    assert run.env_steps == run.size == 4000
    assert [e["env_steps"] for e in run.evals] == [1000, 2000, 3000, 4000]
    assert run.evals[:2] == half_evals  # the first half is not redone
    for k, v in half_buffer.items():
        if k == "truncations":  # the episode cut by the interruption is marked truncated
            assert run.buffer[k][1999] and not v[1999]
            v = v.copy()
            v[1999] = True
        np.testing.assert_array_equal(run.buffer[k][:2000], v, err_msg=k)
    assert int(run.state.step) == 4000 - cfg.start_steps  # one update per env step
    # Asking again for the same budget trains nothing more.
    again = train_online(cfg)
    assert again.env_steps == 4000 and again.evals == run.evals
    # Another agent setting in the same folder is refused with the fix.
    with pytest.raises(
        CheckpointError, match=r"expl_noise 0\.1 -> 0\.3\)\. Pass another --agent-dir"
    ):
        train_online(dataclasses.replace(cfg, expl_noise=0.3))
    assert (cfg.agent_dir / CHECKPOINT_NAME).is_file()


def test_load_policy_acts_as_the_trained_online_agent(pendulum, tmp_path):
    """The policy read back from the checkpoint reproduces the run's last evaluation."""
    from mpcdwm.online_td3 import load_policy, to_env_action
    from mpcdwm.rollout import run_episodes

    cfg, _, _, run = pendulum
    policy, progress = load_policy(cfg.agent_dir)
    assert progress["env_steps"] == 4000 and progress["evals"] == run.evals
    low, high = np.array([-3.0]), np.array([3.0])  # InvertedPendulum-v5's action bounds
    stats = run_episodes(
        cfg.env,
        lambda obs: (to_env_action(policy(obs), low, high), {}),
        episodes=cfg.eval_episodes,
        seed=cfg.seed * 100_003 + 1_000_000,  # the online evaluation's episodes
        max_steps=cfg.max_episode_steps,
    )
    assert float(np.mean(stats.returns)) == pytest.approx(run.evals[-1]["return"], rel=1e-6)
    first, _ = load_policy(cfg.agent_dir, snapshot=0)  # the weights of the first evaluation
    obs = np.zeros(4, np.float32)
    assert not np.allclose(first(obs), policy(obs))
    with pytest.raises(CheckpointError, match="snapshots"):
        load_policy(cfg.agent_dir, snapshot=len(run.evals))
    with pytest.raises(CheckpointError, match="no online agent"):
        load_policy(tmp_path)


def test_online_agent_also_checkpoints_by_wall_time(tmp_path, monkeypatch):
    """--checkpoint-minutes reaches the online TD3 loop: with 0 it saves after every chunk,
    though --checkpoint-every alone would save only at the end (a kill would lose it all)."""
    saved = []
    real_save = online_td3._save_run

    def counting_save(path, run, meta, done):
        saved.append(run.env_steps)
        real_save(path, run, meta, done)

    monkeypatch.setattr(online_td3, "_save_run", counting_save)
    cfg = _pendulum_cfg(tmp_path, train_steps=750, start_steps=250, eval_every=750, eval_episodes=1)
    train_online(dataclasses.replace(cfg, checkpoint_every=10**9, checkpoint_minutes=0.0))
    assert saved == [250, 500, 750]
    saved.clear()
    # The wall-time setting is no part of the agent's identity: a resume with another
    # value is accepted (and, with nothing left to train, saves nothing).
    train_online(dataclasses.replace(cfg, checkpoint_every=10**9, checkpoint_minutes=5.0))
    assert saved == []


def test_expert_is_the_snapshot_that_scores_best_under_the_recording_noise(pendulum):
    cfg, _, _, run = pendulum
    td3 = td3_config(batch_size=cfg.batch_size)
    every = dataclasses.replace(cfg, expert_candidates=len(run.snapshots), expert_select_episodes=3)
    key = jax.random.key(7)
    chosen, rows = select_expert(every, run, td3, noise=0.3, key=key)
    assert [r["snapshot"] for r in rows] == list(range(len(run.snapshots)))
    assert [r["train_eval"] for r in rows] == [e["return"] for e in run.evals]
    assert chosen == max(rows, key=lambda r: r["select_return"])["snapshot"]
    # The first snapshot (500 updates) drops the pole under noise; the chosen one balances it.
    assert rows[chosen]["select_return"] > 3 * rows[0]["select_return"], rows
    # One candidate = the best training evaluation, scored on the same seeds and noise.
    top = int(np.argmax([e["return"] for e in run.evals]))
    one = dataclasses.replace(every, expert_candidates=1)
    assert select_expert(one, run, td3, noise=0.3, key=key) == (top, [rows[top]])
    assert select_expert(
        dataclasses.replace(cfg, expert_candidates=0), run, td3, noise=0.3, key=key
    ) == (-1, [])


def test_recipes_have_the_right_structure(pendulum, tmp_path, monkeypatch):
    cfg, _, _, run = pendulum
    cfg = dataclasses.replace(cfg, expert_candidates=2, expert_select_episodes=2)
    final = run.evals[-1]["return"]
    threshold = cfg.medium_fraction * final
    first = next(e for e in run.evals if e["return"] >= threshold)
    loaded = {}
    for recipe in ("medium", "medium-replay", "expert", "medium-expert"):
        out = tmp_path / recipe
        if recipe == "medium-expert":
            # The expert recipe's choice is saved with the agent: not replayed.
            monkeypatch.setattr(collect_module, "select_expert", _not_again)
        path = collect(dataclasses.replace(cfg, recipe=recipe, out=out))
        assert path == str(out)
        ds = load_dataset(path)
        _check_transitions(ds)
        assert ds.env_id == "InvertedPendulum-v5" and ds.metadata["mpcdwm_recipe"] == recipe
        # No D4RL reference for this env: random policy's and trained agent's returns.
        assert ds.ref_min_score == pytest.approx(run.random_return)
        assert ds.ref_max_score == pytest.approx(final)
        assert np.abs(ds.actions).max() <= 3.0  # env units: InvertedPendulum takes [-3, 3]
        loaded[recipe] = ds
    med, rep, exp, mix = (loaded[r] for r in ("medium", "medium-replay", "expert", "medium-expert"))
    assert len(med) == len(exp) == cfg.steps and len(mix) == 2 * cfg.steps
    # medium-replay is the replay buffer up to the medium point, in env action units.
    assert len(rep) == first["env_steps"]
    np.testing.assert_array_equal(rep.observations, run.buffer["observations"][: len(rep)])
    np.testing.assert_allclose(rep.actions, 3.0 * run.buffer["actions"][: len(rep)], atol=1e-5)
    # How the medium policy was chosen is in the Minari metadata.
    stored = minari.MinariDataset(tmp_path / "medium" / "data").storage.metadata
    assert stored["mpcdwm_medium_env_steps"] == first["env_steps"]
    assert stored["mpcdwm_expert_return"] == pytest.approx(final)
    # The expert is the better of the two best-evaluated snapshots, recorded in the metadata.
    stored = minari.MinariDataset(tmp_path / "expert" / "data").storage.metadata
    rows = json.loads(stored["mpcdwm_expert_selection"])
    top2 = sorted(np.argsort([e["return"] for e in run.evals], kind="stable")[-2:].tolist())
    assert [r["snapshot"] for r in rows] == top2
    best = max(rows, key=lambda r: r["select_return"])
    assert stored["mpcdwm_expert_env_steps"] == best["env_steps"]
    # ... and its return is that snapshot's training evaluation, beside the final weights'.
    assert stored["mpcdwm_expert_return"] == pytest.approx(best["train_eval"])
    assert stored["mpcdwm_agent_final_return"] == pytest.approx(final)
    # medium-expert = the medium dataset followed by the expert dataset.
    np.testing.assert_array_equal(mix.observations[: cfg.steps], med.observations)
    np.testing.assert_array_equal(mix.observations[cfg.steps :], exp.observations)
    # Both recorded policies are far better than random. (Expert vs medium is not compared:
    # with this tiny budget both balance most episodes, and their returns overlap.)
    for ds in (med, exp):
        assert ds.episode_returns()[:-1].mean() > 5 * run.random_return
    saved = json.loads((cfg.agent_dir / EXPERT_CHOICE_NAME).read_text())
    assert saved["rows"] == rows and saved["made_for"]["env_steps"] == run.env_steps
    # An unreadable saved choice is made again, the same, and saved again.
    monkeypatch.undo()
    (cfg.agent_dir / EXPERT_CHOICE_NAME).write_text("{")
    again = load_dataset(collect(dataclasses.replace(cfg, recipe="expert", out=tmp_path / "e2")))
    np.testing.assert_array_equal(again.observations, exp.observations)
    assert json.loads((cfg.agent_dir / EXPERT_CHOICE_NAME).read_text()) == saved


def test_policy_files_record_what_the_recipes_that_trained_them_recorded(pendulum, tmp_path):
    """--save-policy keeps the medium / expert policy; --policy records it again without the
    online agent, into the same transitions (so datasets can be remade without TD3)."""
    cfg, _, _, run = pendulum
    cfg = dataclasses.replace(
        cfg, expert_candidates=2, expert_select_episodes=2, ref_max_score=run.evals[-1]["return"]
    )
    files, trained = {}, {}
    for recipe in ("medium", "expert"):
        files[recipe] = tmp_path / f"{recipe}.ckpt"
        made = collect(
            dataclasses.replace(
                cfg, recipe=recipe, out=tmp_path / recipe, save_policy=files[recipe]
            )
        )
        trained[recipe] = load_dataset(made)
    no_agent = dataclasses.replace(cfg, agent_dir=tmp_path / "no-agent")
    for recipe, policy in (
        ("medium", (files["medium"],)),
        ("expert", (files["expert"],)),
        ("medium-expert", (files["medium"], files["expert"])),
    ):
        ds = load_dataset(
            collect(
                dataclasses.replace(
                    no_agent, recipe=recipe, out=tmp_path / f"{recipe}-again", policy=policy
                )
            )
        )
        parts = [trained[p] for p in recipe.split("-")]
        for field in ("observations", "actions", "rewards", "terminals", "timeouts"):
            want = np.concatenate([getattr(d, field) for d in parts])
            np.testing.assert_array_equal(getattr(ds, field), want, err_msg=f"{recipe} {field}")
        assert ds.ref_min_score == pytest.approx(parts[0].ref_min_score)
        assert ds.ref_max_score == pytest.approx(parts[0].ref_max_score)
        recorded = json.loads(ds.metadata["mpcdwm_policy_files"])
        assert [r["file"] for r in recorded] == [p.name for p in policy]
        assert "jax " in ds.metadata["mpcdwm_software"] and ds.metadata["mpcdwm_cpu"]
    assert not (tmp_path / "no-agent").exists()  # nothing trained, nothing cached
    # The expert file holds the snapshot the expert recipe chose, with its env steps.
    expert_steps = trained["expert"].metadata["mpcdwm_expert_env_steps"]
    assert recorded[1]["env_steps"] == expert_steps
    # ... and both files their training evaluation's return, as the trained recipes record it.
    assert ds.metadata["mpcdwm_medium_return"] == trained["medium"].metadata["mpcdwm_medium_return"]
    chosen = [e["return"] for e in run.evals if e["env_steps"] == expert_steps]
    assert ds.metadata["mpcdwm_expert_return"] == pytest.approx(chosen[-1])
    assert trained["expert"].metadata["mpcdwm_expert_return"] == pytest.approx(chosen[-1])
    # Bad input: a policy of another env, the wrong number of files, a policy to overwrite.
    with pytest.raises(CheckpointError, match="env='Hopper-v5'"):
        collect(
            CollectConfig(
                env="Hopper-v5",
                recipe="medium",
                steps=50,
                policy=(files["medium"],),
                out=tmp_path / "hopper",
                progress=False,
            )
        )
    with pytest.raises(ValueError, match="medium-expert"):
        collect(
            dataclasses.replace(
                no_agent,
                recipe="medium",
                out=tmp_path / "x",
                policy=(files["medium"], files["expert"]),
            )
        )
    with pytest.raises(UserFileError, match="--save-policy .* exists"):
        collect(
            dataclasses.replace(
                cfg, recipe="medium", out=tmp_path / "y", save_policy=files["medium"]
            )
        )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _not_again(*args, **kwargs):
    raise AssertionError("the expert was chosen again instead of reusing the saved choice")


def test_relative_out_folder_is_written_where_asked(tmp_path, monkeypatch):
    """A relative --out lands below the working directory (Minari used to join it to its root)."""
    monkeypatch.chdir(tmp_path)
    cfg = CollectConfig(
        env="Hopper-v5", recipe="random", steps=300, out=Path("rel"), progress=False
    )
    path = collect(cfg)
    assert Path(path) == tmp_path / "rel" and (tmp_path / "rel" / "data").is_dir()
    assert len(load_dataset(path).observations) == 300


def test_staging_folders_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    """A kill during the Minari write leaves a ``.collect-XXXXXXXX`` staging folder beside the
    target; the next write removes it, and nothing else (a user's look-alike, newer folders)."""
    import os
    import time

    stale = tmp_path / ".collect-ab12cd34"
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "main_data.hdf5").write_bytes(b"half a dataset")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    mine = tmp_path / ".collect-notes"  # not the staging shape: a user's folder
    mine.mkdir()
    os.utime(mine, (old, old))
    out = collect(
        CollectConfig(
            env="Hopper-v5", recipe="random", steps=200, out=tmp_path / "d", progress=False
        )
    )
    assert not stale.exists() and mine.is_dir()
    assert len(load_dataset(out).rewards) == 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".collect-") and p != mine]
