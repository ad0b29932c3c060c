"""Exact resume: a run stopped at any step (SIGTERM, ``max_steps``) and resumed ends with bit-identical weights.

Each case trains tiny settings three ways -- uninterrupted; stopped at a step; resumed from the stopped run's
``last.ckpt`` -- and compares the final weights with ``torch.equal``. SIGTERM is sent to this process by a callback
after a chosen step, so it goes through Lightning's own signal handling; one slow test kills a real ``train.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra_helpers import ROOT, compose_cfg

from tests.test_reid_data import write_market
from tests.test_reid_task import _tiny_overrides
from visionzoo.train import run

DIGITS = [
    "trainer=cpu",
    "logger=csv",
    "test=false",
    "data.image_size=16",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
]  # the default BiFormer on the digits with their random shift; 4 steps per epoch
SHAPES = [
    "trainer=cpu",
    "logger=csv",
    "test=false",
    "data=shapes",
    "data.image_size=32",
    "data.num_samples=16",
    "data.num_val_samples=3",
    "data.batch_size=4",
    "data.train_transform=[{name:HorizontalFlip,p:0.5},{name:VerticalFlip,p:0.5},{name:RandomBrightnessContrast,p:0.5}]",
    "model.kwargs.embed_dims=[16,32,64,128]",
    "model.kwargs.depths=[1,1,1,1]",
    "+model.kwargs.head_dim=16",
    "+model.kwargs.mhsa_heads=2",
    "model.dense_kwargs.n_win=2",
    "model.head_kwargs.channels=16",
    "model.aux_head.channels=8",
    "trainer.num_sanity_val_steps=0",
    "callbacks.segmentation_overlays=null",
]  # BiFormer + UPerNet on albumentations-augmented shapes; 4 steps per epoch


def reid(root: Path) -> list[str]:
    """The tiny Market layout of test_reid_task with its PK sampler (P=4 ids x K=2), at 32x16: 2 steps per epoch."""
    own = ("trainer.max_epochs=", "data.num_workers=", "data.image_size=")
    base = [o for o in _tiny_overrides(root) if not o.startswith(own)]
    return [*base, "test=false", "data.image_size=[32,16]", "trainer.num_sanity_val_steps=0"]


class SigtermAfter(L.Callback):
    """Send SIGTERM to this process at the end of training step ``step`` (Lightning stops after that batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def last_ckpt(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    wa, wb = a["state_dict"], b["state_dict"]
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"


def stop_and_resume(
    tmp_path: Path, common: list[str], stop: list[str], resume: list[str] | None = None
) -> dict:
    """Run uninterrupted, stopped (``stop`` overrides) and resumed; assert equal final weights; return the stop's ckpt."""
    run(compose_cfg(common, tmp_path / "straight"))
    stopped = compose_cfg([*common, *stop], tmp_path / "stopped")
    try:
        run(stopped)
    except SystemExit:  # SIGTERM: Lightning raises SIGTERMException (a SystemExit) after saving
        pass
    at_stop = last_ckpt(tmp_path / "stopped")
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    run(compose_cfg([*common, *(resume or []), f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    assert_same_weights(last_ckpt(tmp_path / "straight"), last_ckpt(tmp_path / "resumed"))
    return at_stop


def sigterm_at(step: int) -> list[str]:
    return ["+callbacks.kill._target_=test_resume_exact.SigtermAfter", f"+callbacks.kill.step={step}"]


def test_sigterm_mid_epoch_digits_resumes_bit_identical(tmp_path: Path) -> None:
    at_stop = stop_and_resume(tmp_path, [*DIGITS, "trainer.max_epochs=2"], sigterm_at(6))
    assert at_stop["global_step"] == 6 and at_stop["DigitsDataModule"]["train_position"] == [1, 2]


def test_max_steps_stop_then_more_epochs_continues_at_the_next_step(tmp_path: Path) -> None:
    """A ``max_steps`` stop one step into epoch 2 leaves a mid-epoch last.ckpt; resuming without it trains on."""
    common = [*DIGITS, "trainer.max_epochs=2", "data.num_workers=2"]
    at_stop = stop_and_resume(tmp_path, common, ["trainer.max_steps=5"])
    assert at_stop["global_step"] == 5 and at_stop["DigitsDataModule"]["train_position"] == [1, 1]
    assert last_ckpt(tmp_path / "resumed")["global_step"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("task", ["digits", "shapes", "reid"])
def test_sigterm_at_any_step_resumes_bit_identical(tmp_path: Path, task: str, workers: int) -> None:
    """Every task x workers 0/2: stopped by SIGTERM mid-epoch, by max_steps mid-epoch and at an epoch's end."""
    if task == "digits":
        common, steps = [*DIGITS, "trainer.max_epochs=3"], (5, 10, 4)
    elif task == "shapes":
        common, steps = [*SHAPES, "trainer.max_epochs=3"], (5, 10, 4)
    else:
        write_market(tmp_path / "data")
        common, steps = [*reid(tmp_path / "data"), "trainer.max_epochs=3"], (3, 5, 2)
    common = [*common, f"data.num_workers={workers}"]
    stop_and_resume(tmp_path / "sigterm", common, sigterm_at(steps[0]))
    stop_and_resume(tmp_path / "max_steps", common, [f"trainer.max_steps={steps[1]}"])
    at_end = stop_and_resume(tmp_path / "epoch_end", common, [f"trainer.max_steps={steps[2]}"])
    assert next(v for k, v in at_end.items() if k.endswith("DataModule"))["train_position"] == [1, 0]


@pytest.mark.slow
def test_killed_train_py_resumes_bit_identical(tmp_path: Path) -> None:
    """A real ``python train.py`` sent SIGTERM once its first last.ckpt exists, resumed from last.ckpt."""
    common = [*DIGITS, "trainer.max_epochs=3", "+trainer.limit_train_batches=8", "data.num_workers=2"]
    common = [c for c in common if c != "+trainer.limit_train_batches=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def cli(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(ROOT / "train.py"), *common, f"paths.output_dir={out}", *extra]

    subprocess.run(cli(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=900)
    proc = subprocess.Popen(
        cli(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # somewhere in epoch 2
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    stopped_at = last_ckpt(tmp_path / "killed")["global_step"]
    assert 0 < stopped_at < 24, stopped_at
    subprocess.run(
        cli(tmp_path / "resumed", f"ckpt_path={ckpt}"), env=env, check=True, capture_output=True, timeout=900
    )
    assert_same_weights(last_ckpt(tmp_path / "straight"), last_ckpt(tmp_path / "resumed"))
