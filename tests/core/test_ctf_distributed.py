"""CTF under data-parallel training: each rank's batch rows get their own particles' CTF."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles
from napari_spatial_vae.core.train import train

WORLD = 2


def _particles():
    return simulate_particles(
        60, 20, snr=1.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=11, ctf=CtfSimulation()
    )


def _worker(rank: int, port: int, folder: str, config_dict: dict) -> None:
    from napari_spatial_vae.core.config import TrainConfig

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    sim = _particles()
    config = TrainConfig.from_dict(config_dict)
    result = train(config, sim.images, Path(folder) / "run", ctf=sim.ctf)
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    torch.save(weights, Path(folder) / f"weights{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_with_the_ctf_match_one_process(tmp_path, make_config):
    # batch 13 over 45 training images: unequal rank shares and a short last batch; streamed
    # fp32: rank split vs one process compared at float32 rounding (`auto` is bf16 on CPUs
    # with native bf16, whose rounding differs with the split)
    config = make_config(epochs=2, batch_size=13, resident_gb=0.0, precision="fp32")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), config.to_dict()), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"weights{r}.pt") for r in range(WORLD)]
    sim = _particles()
    single = train(config, sim.images, tmp_path / "single", ctf=sim.ctf)
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-5)
    # and the CTF mattered: without it the same run ends elsewhere
    off = train(make_config(epochs=2, batch_size=13, ctf="off"), sim.images, tmp_path / "off")
    assert any(
        not torch.allclose(value, off.model.state_dict()[key])
        for key, value in single.model.state_dict().items()
    )
