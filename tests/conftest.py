"""Shared fixtures: a tiny Fashion-MNIST-like idx dataset, tiny random VAE backbones, an isolated cache."""

from __future__ import annotations

import gzip
import importlib.util
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# no test may reach the network: huggingface_hub reads this when first imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
# this user's gendistill state (the folders of local backbones loaded before): a throw-away one for the whole session
os.environ["GENDISTILL_HOME"] = tempfile.mkdtemp(prefix="gendistill-home-")

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
TRAIN_PER_CLASS = 20
TEST_PER_CLASS = 5


def write_idx(path, array) -> Path:
    """Write ``array`` (uint8) as an idx file; gzipped when ``path`` ends in ``.gz``.

    Magic 0x00000803 for 3-d image arrays, 0x00000801 for 1-d label arrays (the third byte 0x08 = unsigned byte,
    the fourth the number of dimensions); the dimensions follow as big-endian uint32.
    """
    path = Path(path)
    a = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    data = header + a.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_images(per_class: int, seed: int, num_classes: int = NUM_CLASSES, size: int = 28):
    """Class-dependent patterns: class c is a bright horizontal band at a class-specific row plus light noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            img = rng.integers(0, 40, size=(size, size), dtype=np.int64)
            top = 1 + c * 2 + int(rng.integers(0, 2))
            img[top : top + 4, 3 : size - 3] += 180 + 5 * c
            if c % 2:
                img[:, 10:14] += 60
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(labels))  # interleave classes like the real files
    return np.stack(images)[order], np.asarray(labels, dtype=np.uint8)[order]


def write_fashion_dir(d: Path, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS, gz=True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        x, y = make_images(n, seed)
        write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", y)
    return d


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST-like dataset (10 classes, 20 train / 5 test per class, 28x28) as gzipped idx files."""
    return write_fashion_dir(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory, tiny_idx_dir):
    """No test writes to ~/.cache; ``get_dataset("fashion-mnist")`` reads the tiny data."""
    monkeypatch.setenv("GENDISTILL_CACHE", str(tmp_path_factory.mktemp("latent-cache")))
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))


@pytest.fixture
def no_system_fashion(monkeypatch):
    """Hide a system-wide Fashion-MNIST (Debian's dataset-fashion-mnist may be installed on this machine)."""
    import gendistill.data as data

    class HiddenPath(type(Path())):
        def exists(self, *a, **k):
            return False if str(self).startswith("/usr/share/datasets") else super().exists(*a, **k)

    monkeypatch.setattr(data.shutil, "which", lambda name, *a, **k: None)
    monkeypatch.setattr(data, "Path", HiddenPath)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest and does not fight other jobs (or the other xdist worker) for cores. Set
    here rather than at import so that the xdist controller, which runs no test, never imports torch (~3 s)."""
    import torch

    torch.set_num_threads(1)


def tiny_vae(in_channels: int = 1, sample_size: int = 28, seed: int = 0, scaling_factor: float | None = None):
    import torch
    from diffusers import AutoencoderKL

    kwargs = dict(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(4, 8), layers_per_block=1, latent_channels=2, norm_num_groups=2,
        sample_size=sample_size, mid_block_add_attention=False,
    )
    if scaling_factor is not None:
        kwargs["scaling_factor"] = scaling_factor
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return AutoencoderKL(**kwargs).eval()


def save_tiny_vae(directory: Path, in_channels=1, sample_size=28, seed=0, image_shape=(1, 28, 28),
                  scaling_factor=None) -> Path:
    from gendistill.backbones import VAEBackbone

    vae = tiny_vae(in_channels, sample_size, seed, scaling_factor)
    VAEBackbone(vae, image_shape=image_shape, source=str(directory)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A tiny random 1-channel 28x28 AutoencoderKL saved as a VAE backbone directory (latents (2, 14, 14))."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae1"))


@pytest.fixture(scope="session")
def tiny_vae_dir_other(tmp_path_factory) -> Path:
    """The same architecture as ``tiny_vae_dir`` with different random weights (a different hash)."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae1b"), seed=1)


@pytest.fixture(scope="session")
def tiny_vae3_dir(tmp_path_factory) -> Path:
    """A tiny random 3-channel 32x32 AutoencoderKL, used with 1x28x28 images (channel and size adaptation)."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae3"), in_channels=3, sample_size=32, image_shape=(1, 28, 28))


def launch(args, env_extra=None, num_processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``accelerate launch`` of a recipe with ``args`` on the CPU, run from the repository root.

    One process: ``--cpu``. Several: ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``, which starts them with torchrun on
    the gloo backend (``--cpu --num_processes N`` alone starts one process unless mpirun is set up). On a timeout the
    launcher and every process it started are killed (their own session) and ``subprocess.TimeoutExpired`` is raised.
    """
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if num_processes == 1:
        mode = ["--cpu", "--num_processes", "1"]
    else:
        mode = ["--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(_free_port())]
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_machines", "1", "--dynamo_backend", "no",
           *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_recipe(path: Path):
    """Import a recipe file as a module (its ``main(argv)`` runs the recipe in-process)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the recipe is imported
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; every test starts from a clean one."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def measured_facts(name: str) -> dict:
    """What was measured on a shipped backbone (hash, quality figures, commands): its gendistill.json's ``measured``."""
    import json

    return json.loads((ROOT / "gendistill" / "assets" / "backbones" / name / "gendistill.json").read_text())["measured"]


def cli(capsys, *argv):
    """Run ``gendistill ARGV`` in process; return (exit code, stdout, stderr)."""
    from gendistill.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def ok(result) -> str:
    """The stdout of a ``cli`` result that exited 0 (else fail with its stderr)."""
    code, out, err = result
    assert code == 0, err
    return out


def fast_first(values) -> list:
    """``parametrize`` values of which ``make test-fast`` runs the first; the others are marked slow (CI runs them all).

    For the heavy end-to-end cases: the edit loop still runs one of them. A tuple is one case of several arguments."""
    slow = [pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow) for v in values[1:]]
    return [values[0], *slow]
