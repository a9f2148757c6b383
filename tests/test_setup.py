"""What deploy/setup.sh --test made: torch's CPU build and nothing of CUDA's (a CPU machine must not get
the multi-GB CUDA build), and scripts that bash can read. A GPU node that asked for a CUDA build
(FARM_TORCH_INDEX) has one: there these checks are skipped."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_build(version: str) -> bool:
    """Whether the installed torch is a CPU build: its local label says so, else it was built without CUDA."""
    if version.endswith("+cpu"):
        return True
    import torch

    return torch.version.cuda is None


def _skip_on_a_gpu_node(version: str) -> None:
    if (shutil.which("nvidia-smi") or Path("/dev/nvidiactl").exists()) and not _cpu_build(version):
        pytest.skip(f"torch {version} on a GPU machine: the CUDA build a GPU node asks for (FARM_TORCH_INDEX)")


def test_torch_is_the_cpu_build():
    version = _version("torch")
    need(None if version else "torch is not installed (bash deploy/setup.sh --test installs its CPU build)")
    assert version is not None
    _skip_on_a_gpu_node(version)
    assert _cpu_build(version), f"torch {version} is a CUDA build; deploy/setup.sh --test installs torch==X+cpu"


def test_no_cuda_distributions():
    version = _version("torch")
    if version is not None:
        _skip_on_a_gpu_node(version)
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "cuda-")))
    assert not cuda, f"CUDA packages in {sys.prefix} (a CUDA build of torch brought them): {cuda}"


@pytest.mark.parametrize("script", ["deploy/setup.sh", ".ci/run"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
