"""The model step of a revision: nnU-Net plan, preprocess, train (or reuse a trained model) and predict, through
nnU-Net's own Python API (:class:`NnUNetModelStep`), plus the early checks of the trainer, configuration and model.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nnunet_noisylabels.common import raw_dataset
from nnunet_noisylabels.common.cpu_plans import CPU_SUFFIX, add_cpu_configuration
from nnunet_noisylabels.revision.auxiliary import AuxDataset, aux_dataset_json
from nnunet_noisylabels.revision.base import (BRANCH_NOISE_DIR, DEFAULT_CHECKPOINT, DEFAULT_TRAINERS, NOISE_MAP_LABELS,
                                              NOISE_NONE, NOISE_OVER, NOISE_SWAP, NOISE_UNDER, RevisionError,
                                              sha256_file)
from nnunet_noisylabels.revision.inputs import RevisionInputs

ModelStep = Callable[[AuxDataset, Path], dict]
"""Trains (or loads) a model on an :class:`AuxDataset` and writes one label file per ``predict_ids`` case into the
given folder; returns provenance information for the manifest."""


def ensure_plugin_trainers_visible() -> None:
    """Add the plugin's trainer folder to ``nnUNet_extTrainer`` so nnU-Net finds our trainers by name."""
    from nnunet_noisylabels._autoenv import ext_trainer_dir

    folder = ext_trainer_dir()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [folder])


@dataclass
class NnUNetModelStep:
    """The revision model trained and applied through nnU-Net's own Python API.

    Args:
        configuration: nnU-Net configuration ('2d' or '3d_fullres'); ``None`` = by the dataset's dimensionality.
        trainer: trainer class name (``-tr``).
        fold: 'all' (default: few clean pairs) or a fold index.
        plans_identifier: plans name (``-p``).
        device: 'cuda', 'cpu' or 'mps'.
        num_processes: worker processes for fingerprinting/preprocessing and prediction (0/1 = sequential).
        model_folder: a trained model folder (``.../Trainer__Plans__config``) to reuse instead of training.
        checkpoint: checkpoint file name used for prediction.
        progress: nnU-Net's progress bars.
        use_mirroring: nnU-Net's test-time mirroring when predicting (off: 4x (2D) to 8x (3D) faster on CPU).
        save_probabilities: also write nnU-Net's ``.npz`` probabilities and ``.pkl`` properties per case (needed
            by :func:`average_member_predictions`).
        cpu_plans: train the configuration ``<configuration>_cpu`` (narrower, smaller batch; see
            :mod:`nnunet_noisylabels.common.cpu_plans`) added to the plans, on the same preprocessed data.
    """

    configuration: str | None = None
    trainer: str = DEFAULT_TRAINERS["nin"]
    fold: str = "all"
    plans_identifier: str = "nnUNetPlans"
    device: str = "cuda"
    num_processes: int = 1
    model_folder: str | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    progress: bool = True
    dimensionality: int = 3
    save_noise_maps: bool = True
    use_mirroring: bool = True
    save_probabilities: bool = False
    cpu_plans: bool = False

    def _config(self) -> str:
        """The configuration nnU-Net plans and preprocesses."""
        return self.configuration or ("2d" if self.dimensionality == 2 else "3d_fullres")

    def _train_config(self) -> str:
        """The configuration trained: the planned one, or its CPU variant."""
        return self._config() + (CPU_SUFFIX if self.cpu_plans else "")

    def train(self, aux: AuxDataset) -> Path:
        """Plan, preprocess and train on the auxiliary dataset; returns the model folder."""
        import torch
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                          plan_experiment_dataset, preprocess_dataset)
        from nnunetv2.run.run_training import get_trainer_from_args
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        ensure_plugin_trainers_visible()
        aux_id = int(aux.name[len("Dataset"):len("Dataset") + 3])
        np_ = max(1, int(self.num_processes))
        extract_fingerprint_dataset(aux_id, num_processes=np_, check_dataset_integrity=True, clean=True,
                                    verbose=False, show_progress_bar=self.progress)
        with _planning_thread_env():
            _, plans_identifier = plan_experiment_dataset(aux_id)
        if plans_identifier != self.plans_identifier:
            raise RevisionError(f"Planner wrote plans '{plans_identifier}', expected '{self.plans_identifier}'.")
        preprocess_dataset(aux_id, plans_identifier, [self._config()], [np_], verbose=False,
                           show_progress_bar=self.progress)
        if self.cpu_plans:
            add_cpu_configuration(Path(os.environ["nnUNet_preprocessed"]) / aux.name, self._config(),
                                  plans_identifier)
        fold = self.fold if self.fold == "all" else int(self.fold)
        trainer = get_trainer_from_args(str(aux_id), self._train_config(), fold, self.trainer, plans_identifier,
                                        device=torch.device(self.device))
        # No final validation: with fold 'all' it would only re-predict the training cases.
        trainer.run_training()
        del trainer
        return Path(get_output_folder(aux_id, self.trainer, plans_identifier, self._train_config()))

    def predictor(self, model_folder: Path):
        """An ``nnUNetPredictor`` loaded from ``model_folder`` (fold and checkpoint of this step)."""
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        ensure_plugin_trainers_visible()
        predictor = nnUNetPredictor(device=torch.device(self.device), use_mirroring=self.use_mirroring,
                                    allow_tqdm=self.progress, verbose=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), (self.fold,), self.checkpoint)
        return predictor

    def predict(self, predictor, input_folder: Path, output_folder: Path) -> None:
        if self.num_processes <= 1:
            predictor.predict_from_files_sequential(str(input_folder), str(output_folder), self.save_probabilities,
                                                    True)
        else:
            predictor.predict_from_files(str(input_folder), str(output_folder), self.save_probabilities, True,
                                         self.num_processes, self.num_processes)

    def predict_branch_noise_maps(self, predictor, aux: AuxDataset) -> Path | None:
        """Noise maps from the network's over/under-annotation branches (``eval_output='branches'``), in one pass.

        Both branches are run together through nnU-Net's predictor as a 4-class segmentation whose classes are the
        noise-map codes (see :func:`_branches_as_noise_code`), so sliding window, mirroring and resampling back to the
        original geometry are nnU-Net's own. Returns the folder of per-case maps (codes as :data:`NOISE_MAP_LABELS`),
        or None for networks without branches. ``predictor`` is left as it was given.
        """
        network, label_manager, dataset_json = predictor.network, predictor.label_manager, predictor.dataset_json
        if not hasattr(network, "eval_output"):
            return None
        root = aux.folder / BRANCH_NOISE_DIR
        if root.exists():
            shutil.rmtree(root)
        (root / "combined").mkdir(parents=True)
        # the exporter builds its label manager from the dataset.json: present the noise codes as the classes
        codes = {("background" if v == NOISE_NONE else k): v for k, v in NOISE_MAP_LABELS.items()}
        predictor.dataset_json = {**dataset_json, "labels": codes}
        predictor.label_manager = predictor.plans_manager.get_label_manager(predictor.dataset_json)
        predictor.network = _branches_as_noise_code(network, label_manager.num_segmentation_heads)
        try:
            predictor.predict_from_files_sequential(str(aux.images_ts), str(root / "combined"), False, True)
        finally:
            predictor.network, predictor.label_manager, predictor.dataset_json = network, label_manager, dataset_json
        return root / "combined"

    def __call__(self, aux: AuxDataset, output_folder: Path) -> dict:
        if self.model_folder is not None:
            model = Path(self.model_folder)
            check_reusable_model(model, aux.dataset_json, self.fold, self.checkpoint)
            trained = False
        else:
            model = self.train(aux)
            trained = True
        predictor = self.predictor(model)  # one checkpoint load for the revisions and the noise maps
        self.predict(predictor, aux.images_ts, output_folder)
        branch_maps = self.predict_branch_noise_maps(predictor, aux) if self.save_noise_maps else None
        ckpt = model / f"fold_{self.fold}" / self.checkpoint
        return {"model_folder": str(model), "trained_here": trained, "fold": self.fold,
                "branch_noise_maps": str(branch_maps) if branch_maps is not None else None,
                "checkpoint": self.checkpoint, "checkpoint_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
                "trainer": _load_checkpoint_trainer_name(ckpt) or self.trainer, "configuration": self._train_config(),
                "plans_identifier": self.plans_identifier, "device": self.device, "use_mirroring": self.use_mirroring}


def _branches_as_noise_code_class():
    import torch
    from torch import nn

    class BranchesAsNoiseCode(nn.Module):
        """Presents the over/under branches of a noise identification network to nnU-Net's predictor as 4-class
        logits, one class per noise-map code (none, over, under, both = class swap).

        A voxel is flagged by a branch where the branch's largest foreground logit ``o`` is positive (sigmoid > 0.5).
        The class logits are the joint log-probabilities of the two independent flags, e.g. ``log s(o) + log s(-u)``
        for "over only". Since ``log s(o) - log s(-o) = o``, averaging over windows and mirrors and linear resampling
        of these logits, followed by argmax, flags exactly where the averaged or resampled ``o`` is positive: the same
        decision as predicting each branch alone, in one network pass.
        """

        def __init__(self, network: nn.Module, num_classes: int):
            super().__init__()
            self.network, self.num_classes = network, num_classes

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

        def forward(self, x):
            previous = self.network.eval_output
            self.network.eval_output = "branches"
            try:
                out = self.network(x)
            finally:
                self.network.eval_output = previous
            if isinstance(out, (list, tuple)):
                out = out[0]
            K = self.num_classes
            o = out[:, K + 1:2 * K].amax(dim=1, keepdim=True).float()
            u = out[:, 2 * K + 1:3 * K].amax(dim=1, keepdim=True).float()
            lo1, lo0 = nn.functional.logsigmoid(o), nn.functional.logsigmoid(-o)
            lu1, lu0 = nn.functional.logsigmoid(u), nn.functional.logsigmoid(-u)
            codes = {NOISE_NONE: lo0 + lu0, NOISE_OVER: lo1 + lu0, NOISE_UNDER: lo0 + lu1, NOISE_SWAP: lo1 + lu1}
            return torch.cat([codes[c] for c in sorted(codes)], dim=1).to(out.dtype)

    return BranchesAsNoiseCode


def _branches_as_noise_code(network, num_classes: int):
    return _branches_as_noise_code_class()(network, num_classes)


@contextlib.contextmanager
def _planning_thread_env():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for the value 0 that CPU
    users set to keep data augmentation in-process; plan with 1 in that case."""
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def _load_checkpoint_trainer_name(ckpt: Path) -> str | None:
    if not ckpt.is_file():
        return None
    import torch

    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False).get("trainer_name")
    except Exception:  # provenance only; prediction already read the checkpoint
        return None


def check_reusable_model(model_folder: Path, aux_json: dict, fold: str, checkpoint: str) -> None:
    """Check that a trained model folder fits an auxiliary dataset (its dataset.json: channels, labels, method)."""
    model_folder = Path(model_folder)
    method = aux_json["nl_revision_method"]
    for f in ("dataset.json", "plans.json", f"fold_{fold}/{checkpoint}"):
        if not (model_folder / f).is_file():
            raise FileNotFoundError(f"{model_folder / f} not found: --model must be a trained nnU-Net model folder "
                                    f"(.../Trainer__Plans__configuration) with fold '{fold}'.")
    mj = raw_dataset.load_json(model_folder / "dataset.json")
    if len(mj.get("channel_names", {})) != len(aux_json["channel_names"]) or mj.get("labels") != aux_json["labels"]:
        raise RevisionError(
            f"The model in {model_folder} was trained with {len(mj.get('channel_names', {}))} input channels and "
            f"labels {mj.get('labels')}, but this dataset needs {len(aux_json['channel_names'])} channels and labels "
            f"{aux_json['labels']} (method '{method}').")
    if mj.get("nl_revision_method", method) != method:
        raise RevisionError(f"The model in {model_folder} was trained for method '{mj['nl_revision_method']}', "
                            f"not '{method}'.")


def check_model_choice(inputs: RevisionInputs, method: str, configuration: str | None, trainer: str,
                       model_folder: str | None, fold: str, checkpoint: str = DEFAULT_CHECKPOINT) -> None:
    """Check what nnU-Net's model step will need (configuration, trainer class, a reused model folder) before
    anything is written, instead of after minutes of planning and training."""
    configurations = ("2d",) if inputs.dimensionality == 2 else ("2d", "3d_fullres", "3d_lowres")
    if configuration is not None and configuration not in configurations:
        raise RevisionError(f"Configuration '{configuration}' (-c) is not one nnU-Net plans for this "
                            f"{inputs.dimensionality}D dataset; choose one of {configurations}.")
    if model_folder is not None:
        check_reusable_model(Path(model_folder), aux_dataset_json(inputs, method, "check"), fold, checkpoint)
        return
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    ensure_plugin_trainers_visible()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name(trainer)
    except (RuntimeError, AssertionError, ImportError):
        raise RevisionError(f"Unknown trainer '{trainer}' (-tr / --clean_only_tr): it is neither one of nnU-Net's "
                            f"trainers nor one of this plugin's (nnUNetv2_nl_env lists those), nor in a folder of "
                            f"nnUNet_extTrainer. Check the spelling.") from None
