"""One writer per run folder: the lock file and what a second trainer is told."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from napari_spatial_vae.core.errors import CheckpointError
from napari_spatial_vae.core.runlock import LOCK_FILE, hold_run_lock
from napari_spatial_vae.core.train import train


def test_lock_names_its_owner_and_goes_away(tmp_path):
    run = tmp_path / "run"
    with hold_run_lock(run) as lock:
        owner = json.loads(lock.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        (run / "history.csv").write_text("epoch\n")
    assert not lock.exists() and run.is_dir()


def test_a_failed_start_leaves_no_empty_folder_behind(tmp_path):
    run = tmp_path / "new-run"
    with pytest.raises(RuntimeError), hold_run_lock(run):
        raise RuntimeError("bad data")
    assert not run.exists()


def test_a_second_trainer_is_refused_naming_the_first(tmp_path, make_config, tiny_particles):
    run = tmp_path / "run"
    # a live process of this host holds the folder: a child that sleeps
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / LOCK_FILE).write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": 0})
        )
        with pytest.raises(CheckpointError, match=rf"process {holder.pid} on .* is training"):
            train(make_config(epochs=1), tiny_particles.images, run)
        assert not (run / "history.csv").exists()  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (as after kill -9): its lock is stale and taken over
    train(make_config(epochs=1), tiny_particles.images, run)
    assert (run / "history.csv").exists() and not (run / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": 0}))
    with (
        pytest.raises(CheckpointError, match="process 1 on gpu-node-7") as info,
        hold_run_lock(run),
    ):
        pass
    assert "\n" not in str(info.value) and "delete" in str(info.value)
