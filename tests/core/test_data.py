"""Stack checks at the entry of training and inference (core/data.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spatial_vae.cli import main
from napari_spatial_vae.core.data import stack_image_shape
from napari_spatial_vae.core.errors import DataError


def test_square_stacks_pass() -> None:
    assert stack_image_shape(np.zeros((2, 16, 16), np.float32)) == (1, 16, 16)
    assert stack_image_shape(np.zeros((2, 8, 8, 3), np.uint8)) == (3, 8, 8)


def test_non_square_stacks_are_refused_in_one_line() -> None:
    # theta would scale x and y differently on a -1..1 grid: not a rigid rotation
    with pytest.raises(DataError, match=r"images are 16x20 \(HxW\) pixels; .*square") as err:
        stack_image_shape(np.zeros((2, 16, 20), np.float32))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("command", ["train", "infer"])
def test_cli_refuses_non_square_stacks(tmp_path, capsys, command) -> None:
    stack = tmp_path / "wide.npy"
    np.save(stack, np.zeros((6, 16, 20), np.float32))
    if command == "train":
        args = ["train", stack, "-o", tmp_path / "run", "--epochs", "1", "--device", "cpu", "-q"]
    else:  # inference refuses before it looks at the run folder's model size
        run = tmp_path / "run"
        np.save(tmp_path / "square.npy", np.zeros((6, 16, 16), np.float32))
        assert (
            main(
                [
                    str(a)
                    for a in [
                        "train",
                        tmp_path / "square.npy",
                        "-o",
                        run,
                        "--epochs",
                        "1",
                        "--hidden-dim",
                        "8",
                        "--device",
                        "cpu",
                        "-q",
                    ]
                ]
            )
            == 0
        )
        capsys.readouterr()
        args = ["infer", run, stack, "-o", tmp_path / "p.csv", "-q"]
    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "square" in err, err
