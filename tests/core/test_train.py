import json
import os
import stat
import time

import numpy as np
import pytest
import torch

from napari_spatial_vae.core import train_checks
from napari_spatial_vae.core.checkpoint import load_model, read_history
from napari_spatial_vae.core.errors import CheckpointError, DataError
from napari_spatial_vae.core.infer import encode_stack
from napari_spatial_vae.core.losses import LossTerms
from napari_spatial_vae.core.train import train
from napari_spatial_vae.core.train_setup import split_train_test
from napari_spatial_vae.core.train_steps import training_objective


def elbos(history, split):
    return [row["elbo"] for row in history if row["split"] == split]


def test_training_lowers_the_test_negative_elbo(tmp_path, tiny_particles, make_config):
    config = make_config(epochs=6)
    result = train(config, tiny_particles.images, tmp_path / "run")
    test = elbos(result.history, "test")
    assert len(test) == 6
    assert test[-1] > test[0] + 1.0  # ELBO up == -ELBO down
    assert result.stop_reason == "completed" and result.epochs_completed == 6


def test_same_seed_gives_the_same_run_on_cpu(tmp_path, tiny_particles, make_config):
    first = train(make_config(), tiny_particles.images, tmp_path / "a")
    second = train(make_config(), tiny_particles.images, tmp_path / "b")
    assert elbos(first.history, "train") == elbos(second.history, "train")
    assert elbos(first.history, "test") == elbos(second.history, "test")
    for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    other = train(make_config(seed=1), tiny_particles.images, tmp_path / "c")
    assert elbos(other.history, "train") != elbos(first.history, "train")


def test_a_time_budget_that_is_not_spent_does_not_change_the_run(
    tmp_path, tiny_particles, make_config
):
    # the wall clock must not leak into a run whose epochs end first: same command, same
    # model. A slow start (here a callback that sleeps a second; in life, reading a big
    # stack) used to be a visible share of the budget and moved the first steps' rate.
    def slow_start(update):
        if update.kind == "started":
            time.sleep(1.0)

    plain = train(make_config(epochs=3), tiny_particles.images, tmp_path / "a")
    budget = train(
        make_config(epochs=3, max_minutes=0.5),
        tiny_particles.images,
        tmp_path / "b",
        on_update=slow_start,
    )
    assert budget.stop_reason == "completed"
    assert elbos(budget.history, "train") == elbos(plain.history, "train")
    for p, q in zip(plain.model.parameters(), budget.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path, tiny_particles, make_config):
    straight = train(make_config(epochs=4), tiny_particles.images, tmp_path / "straight")
    done = []
    stopped = train(
        make_config(epochs=4),
        tiny_particles.images,
        tmp_path / "resumed",
        on_update=lambda u: done.append(u.epoch) if u.kind == "epoch" else None,
        should_stop=lambda: len(done) == 2,
    )
    assert stopped.stop_reason == "stopped" and stopped.epochs_completed == 2
    resumed = train(make_config(epochs=4), tiny_particles.images, tmp_path / "resumed", resume=True)
    assert elbos(resumed.history, "train") == elbos(straight.history, "train")
    assert elbos(resumed.history, "test") == elbos(straight.history, "test")
    assert [r["epoch"] for r in read_history(tmp_path / "resumed")] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_stop_request_saves_a_usable_model_mid_epoch(tmp_path, tiny_particles, make_config):
    steps = []

    def on_update(update):
        if update.kind == "step":
            steps.append(update.step)

    result = train(
        make_config(epochs=5),
        tiny_particles.images,
        tmp_path / "run",
        on_update=on_update,
        should_stop=lambda: len(steps) >= 7,
    )
    assert result.stop_reason == "stopped"
    assert len(steps) == 7
    model, _, progress = load_model(tmp_path / "run")
    assert progress.epochs_completed == 1 and not progress.finished
    for p, q in zip(model.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(p, q.cpu())  # the saved model is the latest, not the epoch-1 one
    # and it reads z as a finished one does (z-dim 1: the training particles' z is kept)
    assert model.training_z is not None and model.training_z == result.model.training_z


def test_time_budget_stops_cleanly_and_saves(tmp_path, tiny_particles, make_config):
    # the process's first Adam imports torch._dynamo (1.2-2 s on the 2-core VM): run alone,
    # that would eat the whole budget before a step
    train(make_config(epochs=1), tiny_particles.images, tmp_path / "warm-up")
    # 3 s: a budget of 1.2 s left room for only two steps (too few to compress the schedule)
    # when two test suites shared the two cores (2026-12-07)
    result = train(
        make_config(epochs=1000, max_minutes=0.05), tiny_particles.images, tmp_path / "run"
    )
    assert result.stop_reason == "time budget"
    assert result.epochs_completed < 1000
    _, _, progress = load_model(tmp_path / "run")  # loadable
    # the schedule was compressed into the budget: counting steps alone, 1000 epochs of at
    # least 4 steps (72 training particles, batches of 16) would have left it at most at
    # global_step / 4000. How far it got depends on the machine's pace (0.99 idle, 0.76 with
    # four processes on two cores), so only the compression is asserted; the annealing
    # itself is tested with a synthetic clock in test_schedule.py
    counted = progress.global_step / (1000 * 4)
    assert progress.lr_progress > 5 * counted


def test_updates_follow_the_documented_sequence(tmp_path, tiny_particles, make_config):
    kinds = []
    train(
        make_config(epochs=2),
        tiny_particles.images,
        tmp_path / "run",
        on_update=lambda u: kinds.append(u.kind),
    )
    steps_per_epoch = int(np.ceil(72 / 16))
    assert kinds == (["started"] + (["step"] * steps_per_epoch + ["epoch"]) * 2 + ["finished"])


def test_a_run_folder_is_never_overwritten_without_resume(tmp_path, tiny_particles, make_config):
    train(make_config(epochs=1), tiny_particles.images, tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a trained model"):
        train(make_config(epochs=1), tiny_particles.images, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before


def test_resume_rejects_images_of_another_size(tmp_path, tiny_particles, make_config):
    train(make_config(epochs=1), tiny_particles.images, tmp_path / "run")
    with pytest.raises(CheckpointError, match="trained on"):
        train(
            make_config(epochs=2), np.zeros((10, 24, 24), np.float32), tmp_path / "run", resume=True
        )


def test_nan_pixels_are_reported_with_the_image_index(tmp_path, tiny_particles, make_config):
    images = tiny_particles.images.copy()
    images[5, 3, 3] = np.nan
    with pytest.raises(DataError, match="image 5 contains NaN"):
        train(make_config(), images, tmp_path / "run")


@pytest.mark.parametrize(
    "fields",
    [
        {"vanilla": True, "encoder": "mlp"},
        {"rotate": False, "translate": False, "encoder": "mlp"},
        {"encoder": "mlp", "augment_rotation": True, "theta_kl": "standard"},
        {"fit_noise": False, "circular_mask": False, "normalize": False, "z_dim": 0},
    ],
)
def test_every_model_variant_trains(tmp_path, tiny_particles, make_config, fields):
    result = train(make_config(epochs=1, **fields), tiny_particles.images, tmp_path / "run")
    assert np.isfinite(elbos(result.history, "train")).all()


def test_bernoulli_on_8_bit_images_is_scaled_to_unit_range(tmp_path, make_config):
    images = (np.random.default_rng(0).random((40, 12, 12)) > 0.5).astype(np.uint8) * 255
    config = make_config(likelihood="bernoulli", fit_noise=False, normalize=False, epochs=1)
    result = train(config, images, tmp_path / "run")
    assert np.isfinite(elbos(result.history, "train")).all()
    with pytest.raises(DataError, match=r"needs pixel values in 0\.\.1"):
        train(config, images.astype(np.float32), tmp_path / "other")


def test_split_is_seeded_disjoint_and_complete():
    train_idx, test_idx = split_train_test(50, 0.2, seed=4)
    assert len(test_idx) == 10 and len(train_idx) == 40
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(50))
    again = split_train_test(50, 0.2, seed=4)
    assert np.array_equal(again[1], test_idx)
    with pytest.raises(DataError, match="leave none for training"):
        split_train_test(1, 0.9, seed=0)


def test_run_files_are_readable_by_the_group_like_any_new_file(
    tmp_path, tiny_particles, make_config
):
    # colleagues on a shared cluster must be able to load a run; temp files start as 0600
    train(make_config(epochs=1), tiny_particles.images, tmp_path / "run")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.safetensors", "config.json", "history.csv"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_free_nats_stop_penalising_a_z_dimension_below_the_floor():
    kl = torch.tensor([[0.2, 3.0], [0.4, 2.0]], requires_grad=True)  # (B=2, Z=2)
    zeros = torch.zeros(2)
    terms = LossTerms(torch.tensor([10.0, 20.0]), zeros, zeros, kl.sum(1), kl)
    assert training_objective(terms, 0.0).item() == pytest.approx(30.0 + 5.6)
    objective = training_objective(terms, 1.0)
    # dimension 1 (mean 0.3 nats) costs the floor (2 x 1 nat); dimension 2 (2.5) its own KL
    assert objective.item() == pytest.approx(30.0 + 2.0 + 5.0)
    objective.backward()
    assert kl.grad[:, 0].abs().sum() == 0 and (kl.grad[:, 1] == 1).all()


def test_a_run_with_free_nats_trains(tmp_path, tiny_particles, make_config):
    result = train(make_config(epochs=1, z_free_nats=2.0), tiny_particles.images, tmp_path / "r")
    assert np.isfinite(result.history[0]["elbo"]) and result.epochs_completed == 1


def test_a_run_that_checks_half_turns_trains_and_infers(tmp_path, tiny_particles, make_config):
    # two epochs: the first compares binned images (the coarse phase), the second full-size
    config = make_config(epochs=2, half_turn_check="on")
    result = train(config, tiny_particles.images, tmp_path / "run")
    assert result.epochs_completed == 2
    assert all(np.isfinite(row["elbo"]) for row in result.history)
    model, loaded, _ = load_model(tmp_path / "run")
    assert loaded.model.half_turn_check == "on" and model.checks_half_turns
    poses = encode_stack(model, loaded, tiny_particles.images)
    assert np.isfinite(poses.theta).all() and (np.abs(poses.theta) <= np.pi).all()


@pytest.mark.parametrize(
    ("field", "before"),
    [("z_from_aligned", False), ("z_half_turn_invariant", False), ("refine_pose", False),
     ("z_every_layer", False), ("half_turn_check", "off")],
)  # fmt: skip
def test_a_run_folder_saved_before_a_model_field_loads_as_it_was_built(
    tmp_path, tiny_particles, make_config, field, before
):
    # run folders written before the setting existed were built without it: a config.json
    # without the key must rebuild that model (same weights, same outputs), not the new default
    result = train(
        make_config(epochs=1, **{field: before}), tiny_particles.images, tmp_path / "run"
    )
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["config"]["model"][field]
    path.write_text(json.dumps(saved))
    model, config, _ = load_model(tmp_path / "run")
    assert getattr(config.model, field) == before
    for p, q in zip(model.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("saved", "loaded"), [(True, "on"), (False, "off")])
def test_a_half_turn_check_saved_as_a_bool_loads_as_on_or_off(
    tmp_path, tiny_particles, make_config, saved, loaded
):
    # the setting was a bool on the morning of 2026-12-03, before "auto"
    train(make_config(epochs=1), tiny_particles.images, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    payload = json.loads(path.read_text())
    payload["config"]["model"]["half_turn_check"] = saved
    path.write_text(json.dumps(payload))
    model, config, _ = load_model(tmp_path / "run")
    assert config.model.half_turn_check == loaded
    assert model.checks_half_turns == saved


def test_auto_switches_the_half_turn_check_on_for_the_rest_of_the_run(
    tmp_path, tiny_particles, make_config, monkeypatch
):
    # the decision (tests/core/test_half_turn_signal.py) forced after the second epoch, to
    # follow what the run does with it
    decisions = []

    def after_epoch_two(shares, schedule_progress):
        decisions.append(schedule_progress)
        # the held-out shares of every epoch so far, this one last
        assert len(shares) == len(decisions) and all(0.0 <= s <= 1.0 for s in shares)
        return len(decisions) == 2

    monkeypatch.setattr(train_checks, "switches_half_turn_check", after_epoch_two)
    updates = []
    config = make_config(epochs=4)
    assert config.model.half_turn_check == "auto"
    result = train(config, tiny_particles.images, tmp_path / "run", on_update=updates.append)
    # asked after epochs 1 and 2, with the schedule's progress; never again once on
    assert len(decisions) == 2 and 0.0 < decisions[0] < decisions[1] < 0.5
    messages = [u.message for u in updates if u.kind == "epoch"]
    assert messages[1].startswith("half-turn check switched on after epoch 2: ")
    assert messages[0] == messages[2] == messages[3] == ""
    assert config.model.half_turn_check == "on" and result.model.checks_half_turns
    # the folder says so: inference and a resumed run check half turns too
    model, saved, _ = load_model(tmp_path / "run")
    assert saved.model.half_turn_check == "on" and model.checks_half_turns


def test_auto_leaves_the_run_as_it_was_when_nothing_calls_for_the_check(
    tmp_path, tiny_particles, make_config, monkeypatch
):
    monkeypatch.setattr(train_checks, "switches_half_turn_check", lambda shares, done: False)
    auto = train(make_config(epochs=2), tiny_particles.images, tmp_path / "auto")
    off = train(
        make_config(epochs=2, half_turn_check="off"), tiny_particles.images, tmp_path / "off"
    )
    # the same run, step for step
    for p, q in zip(auto.model.parameters(), off.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert load_model(tmp_path / "auto")[1].model.half_turn_check == "auto"
