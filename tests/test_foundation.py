"""Installation, version checks and trainer discovery through nnU-Net's own lookup."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nnunet_noisylabels import check_nnunet_version
from nnunet_noisylabels._autoenv import DISABLE_VAR, ext_trainer_dir, register
from nnunet_noisylabels.trainers import all_trainer_classes


@pytest.mark.parametrize("version", ["2.8.1", "2.8.5", "2.8.10.post1"])
def test_supported_nnunet_versions_pass(version):
    assert check_nnunet_version(version) == version


@pytest.mark.parametrize("version", ["2.5.1", "2.7.9", "2.8.0", "2.9.0", "3.0"])
def test_unsupported_nnunet_versions_raise_with_fix(version):
    with pytest.raises(RuntimeError, match="pip install 'nnunetv2>=2.8.1,<2.9'"):
        check_nnunet_version(version)


def test_installed_nnunet_is_supported():
    check_nnunet_version()


def test_register_appends_once_and_keeps_user_paths():
    env = {"nnUNet_extTrainer": "/somewhere/else"}
    assert register(env)
    assert register(env)
    parts = env["nnUNet_extTrainer"].split(os.pathsep)
    assert parts == ["/somewhere/else", ext_trainer_dir()]


def test_register_can_be_disabled():
    env = {DISABLE_VAR: "1"}
    assert not register(env)
    assert "nnUNet_extTrainer" not in env


def test_ext_folder_is_a_plain_module_folder():
    # nnU-Net imports the folder's modules as top-level modules; an __init__.py would hide them
    files = os.listdir(ext_trainer_dir())
    assert "__init__.py" not in files
    assert "nnunet_noisylabels_trainers.py" in files


def test_trainer_registry_lists_plugin_trainers():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainers = all_trainer_classes()
    assert "nnUNetTrainer_debug" in trainers and "nnUNetTrainer_budget" in trainers
    assert all(issubclass(t, nnUNetTrainer) for t in trainers.values())


def _lookup_in_fresh_process(name: str, env: dict, cwd: str | None = None) -> subprocess.CompletedProcess:
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            f"c = f({name!r}); print('FOUND', c.__module__, c.__name__)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_nnunet_lookup_finds_plugin_trainer_in_fresh_process(nnunet_env):
    proc = _lookup_in_fresh_process("nnUNetTrainer_debug", nnunet_env)
    assert proc.returncode == 0, proc.stderr
    assert "FOUND nnunet_noisylabels.trainers.variants nnUNetTrainer_debug" in proc.stdout


def test_nnunet_lookup_fails_for_unknown_trainer(nnunet_env):
    proc = _lookup_in_fresh_process("NoSuchTrainer_xyz", nnunet_env)
    assert proc.returncode != 0
    assert "Could not find requested nnunet trainer NoSuchTrainer_xyz" in proc.stderr


def test_installed_startup_hook_registers_trainers():
    """After `pip install .`, every Python process of the environment has the trainer folder registered."""
    import site

    pth_installed = any(os.path.isfile(os.path.join(d, "nnunet_noisylabels.pth")) for d in site.getsitepackages())
    if not pth_installed:
        pytest.skip("package not installed with its start-up hook (e.g. running from a checkout or editable install)")
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", DISABLE_VAR, "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env=env,
                          capture_output=True, text=True, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(os.path.join("nnunet_noisylabels", "nnunet_ext"))
    # and nnU-Net's own lookup finds the trainers with no nnUNet_extTrainer exported by the user
    found = _lookup_in_fresh_process("nnUNetTrainer_debug", env, cwd="/")
    assert found.returncode == 0, found.stderr
    assert "FOUND nnunet_noisylabels.trainers.variants nnUNetTrainer_debug" in found.stdout


def test_env_command_reports_registration(nnunet_env, capsys):
    from nnunet_noisylabels.cli.env import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "registered in nnUNet_extTrainer: yes" in out and "nnUNetTrainer_debug" in out
    assert main(["--export"]) == 0
    assert ext_trainer_dir() in capsys.readouterr().out


def test_budget_from_environment_must_be_positive(monkeypatch):
    from nnunet_noisylabels.trainers.budget import _positive_int

    assert _positive_int("x", "7") == 7
    for bad in ("0", "-3", "abc"):
        with pytest.raises(ValueError, match="must be a positive integer"):
            _positive_int("nnUNet_nl_epochs", bad)


@pytest.mark.parametrize("env_value,fold,budget_from_env,validates", [
    ("1", "all", True, False),   # benchmark: fold all would only re-predict its training cases
    ("1", 0, True, True),        # a real fold keeps its validation (find_issues needs its --npz outputs)
    ("", "all", True, True),     # not requested
    ("1", "all", False, True),   # fixed-budget variants ignore the environment
])
def test_final_validation_skipped_only_for_fold_all_when_requested(monkeypatch, env_value, fold, budget_from_env,
                                                                    validates):
    from nnunet_noisylabels.trainers.budget import SKIP_FINAL_VALIDATION_ENV, BudgetMixin

    class Base:
        validated = False

        def perform_actual_validation(self, save_probabilities=False):
            self.validated = True

    class Trainer(BudgetMixin, Base):
        pass

    Trainer.budget_from_env = budget_from_env
    t = Trainer.__new__(Trainer)
    t.fold = fold
    logged = []
    t.print_to_log_file = lambda *args, **kwargs: logged.append(args)
    monkeypatch.setenv(SKIP_FINAL_VALIDATION_ENV, env_value)
    t.perform_actual_validation()
    assert t.validated is validates
    assert bool(logged) is not validates
