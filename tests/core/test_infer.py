import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_spatial_vae.core import infer
from napari_spatial_vae.core.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, load_model
from napari_spatial_vae.core.errors import CheckpointError, DataError
from napari_spatial_vae.core.infer import (
    encode_stack,
    iter_inference,
    latent_grid,
    latent_traversal,
    traversal_values,
)
from napari_spatial_vae.core.performance import release_large_blocks
from napari_spatial_vae.core.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_particles, make_config):
    run = tmp_path_factory.mktemp("run")
    train(make_config(epochs=2, z_dim=2), tiny_particles.images, run)
    return run


def test_encode_returns_one_row_per_image_in_order(trained, tiny_particles):
    model, config, _ = load_model(trained)
    poses = encode_stack(model, config, tiny_particles.images, batch_size=7)
    assert poses.theta.shape == (96,) and poses.z.shape == (96, 2)
    assert (poses.theta_std > 0).all() and (poses.z_std > 0).all()
    # batching does not change the answer
    again = encode_stack(model, config, tiny_particles.images[::-1].copy(), batch_size=50)
    np.testing.assert_allclose(again.z[::-1], poses.z, rtol=1e-4, atol=1e-5)
    assert list(poses.columns()) == [
        "theta",
        "dx",
        "dy",
        "z1",
        "z2",
        "theta_std",
        "dx_std",
        "dy_std",
        "z1_std",
        "z2_std",
    ]


def test_aligned_and_reconstructions_have_the_stack_shape(trained, tiny_particles):
    model, config, _ = load_model(trained)
    batches = list(
        iter_inference(
            model, config, tiny_particles.images, batch_size=40, aligned=True, reconstructions=True
        )
    )
    assert [b.start for b in batches] == [0, 40, 80]
    aligned = np.concatenate([b.aligned for b in batches])
    recon = np.concatenate([b.reconstructions for b in batches])
    assert aligned.shape == recon.shape == tiny_particles.images.shape
    # reconstructions come back in the input's intensity units
    assert abs(recon.mean() - tiny_particles.images.mean()) < 0.5 * tiny_particles.images.std()


def test_large_boxes_are_computed_in_parts_with_the_same_results(
    trained, tiny_particles, monkeypatch
):
    """A batch of large images is encoded and rendered a few at a time (bounded memory)."""
    model, config, _ = load_model(trained)
    images = tiny_particles.images[:24]

    def run() -> list:
        return list(iter_inference(
            model, config, images, batch_size=10, aligned=True, reconstructions=True
        ))  # fmt: skip

    whole = run()
    seen: list[int] = []
    encode = model.encode_with_turns
    monkeypatch.setattr(
        model, "encode_with_turns", lambda x, *a: seen.append(len(x)) or encode(x, *a)
    )
    # parts of three images: as a batch of 10 would be split at 4x the pixels of COMPUTE_PIXELS
    monkeypatch.setattr(infer, "COMPUTE_PIXELS", 3 * images.shape[1] * images.shape[2] + 5)
    parted = run()
    assert seen == [3, 3, 3, 1, 3, 3, 3, 1, 3, 1]
    assert [b.start for b in parted] == [b.start for b in whole] == [0, 10, 20]
    for a, b in zip(whole, parted, strict=True):
        for name, column in a.poses.columns().items():
            np.testing.assert_allclose(b.poses.columns()[name], column, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.aligned, a.aligned, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.reconstructions, a.reconstructions, rtol=1e-4, atol=1e-4)


def test_aligned_particles_undo_the_true_pose(tiny_particles):
    """Aligning with the true pose through the same code path recovers the clean projection."""
    from napari_spatial_vae.core.coords import align_images, rotation_matrices

    sim = tiny_particles
    half = (20 - 1) / 2
    t = torch.from_numpy(sim.shift_px / half).float()
    theta = torch.from_numpy(sim.theta).float()
    d = -torch.bmm(t[:, None, :], rotation_matrices(theta))[:, 0]
    aligned = align_images(torch.from_numpy(sim.clean)[:, None], theta, d)[:, 0].numpy()
    # all aligned particles of similar conformation look alike: compare to the mean of the set
    close = np.abs(sim.conformation - 0.5) < 0.1
    spread_aligned = aligned[close].std(axis=0).mean()
    spread_raw = sim.clean[close].std(axis=0).mean()
    assert spread_aligned < 0.5 * spread_raw


def test_traversal_and_grid_shapes(trained):
    model, _, _ = load_model(trained)
    assert latent_traversal(model, 5).shape == (2, 5, 20, 20)
    grid = latent_grid(model, 4)
    assert grid.shape == (4, 4, 20, 20)
    values = traversal_values(5)
    np.testing.assert_allclose(values, -values[::-1], atol=1e-12)  # symmetric about 0
    assert values[0] == pytest.approx(-1.6449, abs=1e-3)  # 5 % quantile of N(0, 1)


def test_inference_rejects_another_image_size(trained):
    model, config, _ = load_model(trained)
    with pytest.raises(DataError, match="trained on"):
        encode_stack(model, config, np.zeros((3, 16, 16), np.float32))


def test_corrupt_or_foreign_run_folders_fail_cleanly(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / CHECKPOINT_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_model(broken)
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    payload = json.loads((other / CONFIG_FILE).read_text())
    payload["config"]["model"]["hidden_dim"] = 64
    (other / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"do not match config\.json"):
        load_model(other)
    payload["config"]["model"]["colour"] = "red"
    (other / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="unknown model field"):
        load_model(other)
    (other / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(other)
    with pytest.raises(CheckpointError, match="run folder not found"):
        load_model(tmp_path / "nowhere")


def test_inference_restores_the_callers_training_mode(trained, tiny_particles):
    model, config, _ = load_model(trained)
    model.train()
    list(iter_inference(model, config, tiny_particles.images[:8], batch_size=4))
    assert model.training
    model.eval()
    encode_stack(model, config, tiny_particles.images[:8])
    assert not model.training


def test_poses_own_their_memory(trained, tiny_particles):
    # callers keep the poses of every batch: views would pin each batch's buffers
    model, config, _ = load_model(trained)
    batches = list(iter_inference(model, config, tiny_particles.images, batch_size=8))
    for batch in batches:
        for name in batch.poses.__dataclass_fields__:
            assert getattr(batch.poses, name).base is None, name


def test_inference_memory_does_not_grow_with_the_number_of_batches(trained):
    # glibc's dynamic mmap threshold would let kept poses pin freed batch buffers (4.2 GB
    # over 300,000 images before); measured as anonymous resident memory (Linux only)
    status = Path("/proc/self/status")
    if not status.exists() or not release_large_blocks():
        pytest.skip("needs Linux with glibc")

    def anonymous_mb() -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith("RssAnon"))
        return int(line.split()[1]) / 1024

    model, config, _ = load_model(trained)
    stack = np.random.default_rng(0).normal(size=(40 * 64, *model.image_shape[1:]))
    kept, sizes = [], []
    for i, batch in enumerate(
        iter_inference(model, config, stack.astype(np.float32), 64, True, True)
    ):
        kept.append(batch.poses)
        if i in (10, 39):
            sizes.append(anonymous_mb())
    assert sizes[1] - sizes[0] < 40, sizes
