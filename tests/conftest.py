"""Shared fixtures: nnU-Net environment in a temporary folder and tiny synthetic raw datasets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_noisylabels._autoenv import ext_trainer_dir
from nnunet_noisylabels.common.synthetic import write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """Path of a console script of the running environment (nnUNetv2_train, ...)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} not found beside {sys.executable}; is the environment installed?")
    return str(path)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict:
    """nnU-Net folders in tmp_path and CPU-friendly settings, set in os.environ and returned for subprocesses."""
    env = {
        "nnUNet_raw": str(tmp_path / "nnUNet_raw"),
        "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"),
        "nnUNet_results": str(tmp_path / "nnUNet_results"),
        "nnUNet_compile": "0",
        "nnUNet_def_n_proc": "1",
        "nnUNet_n_proc_DA": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "nnUNet_extTrainer": ext_trainer_dir(),
        # the checkout, so subprocesses import this code also when it is not installed
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p),
    }
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


@pytest.fixture
def make_dataset(nnunet_env):
    """Factory: ``make_dataset(dataset_id, dim=2, num_classes=2, ...)`` writes a synthetic raw dataset (see
    :func:`nnunet_noisylabels.common.synthetic.write_synthetic_dataset`) into nnUNet_raw and returns its folder."""

    def make(dataset_id: int = 1, **kwargs) -> Path:
        return write_synthetic_dataset(nnunet_env["nnUNet_raw"], dataset_id, **kwargs)

    return make


@pytest.fixture
def dataset_2d(make_dataset) -> Path:
    """2D PNG, binary, 12 training cases (labelsTr dilated by 2 px), 3 clean, 4 test cases."""
    return make_dataset(1, name="Synth2D", dim=2, num_classes=2, num_cases=12, num_clean=3, num_test=4)


@pytest.fixture
def dataset_2d_multiclass(make_dataset) -> Path:
    return make_dataset(2, name="Synth2DMulti", dim=2, num_classes=3, num_cases=12, num_clean=3, num_test=4)


@pytest.fixture
def dataset_3d(make_dataset) -> Path:
    """3D NIfTI, binary, 24x32x32."""
    return make_dataset(3, name="Synth3D", dim=3, num_classes=2, num_cases=8, num_clean=2, num_test=2)


@pytest.fixture
def dataset_3d_multiclass(make_dataset) -> Path:
    return make_dataset(4, name="Synth3DMulti", dim=3, num_classes=3, num_cases=8, num_clean=2, num_test=2)


def run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with its output."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
                    f"\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def shared_data() -> Path:
    """The real research data beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def load_benchmark(name: str):
    """Import a script of benchmarks/ (not a package) by file path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree_state(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (relative path -> sha256 of a file, 'dir' or 'link:TARGET', plus its mode), for
    checking that a command created, changed or deleted nothing: compare the state before and after."""
    import hashlib

    state: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                key = str(p.relative_to(root.parent))
                mode = oct(p.lstat().st_mode)
                if p.is_symlink():
                    state[key] = f"link:{os.readlink(p)} {mode}"
                elif p.is_dir():
                    state[key] = f"dir {mode}"
                else:
                    state[key] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {mode}"
    return state


@pytest.fixture
def toy2d(tmp_path, monkeypatch):
    """A 2D revision dataset (imperfect labels, clean subset) in tmp_path/raw, and its true labels."""
    from revision_support import make_dataset

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "raw").mkdir()
    ds, truth = make_dataset(tmp_path / "raw")
    return ds, truth
