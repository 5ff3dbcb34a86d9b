"""Label revision as a preprocessing stage: turn imperfect labels into pseudo masks with a noise identification net.

This module only orchestrates (:func:`revise_dataset`, options in one :class:`RevisionOptions`); each step is a
function of its own module and can be tested on its own:

1. :func:`.inputs.validate_inputs` reads the raw dataset and checks everything before anything is written.
2. :func:`.inputs.preserve_originals` keeps the imperfect labels in ``labelsTr_imperfect/`` (never overwritten once
   there; a re-run reads its inputs from there).
3. :func:`.auxiliary.build_aux_dataset` writes the auxiliary nnU-Net dataset: image channels plus the imperfect label
   as K-1 binary ``noNorm`` channels (``method='nin'``) or the image channels only (``method='clean_only'``); the
   clean pairs go to ``imagesTr``/``labelsTr``, the cases to revise to ``imagesTs``.
4. a model step (:class:`.model_step.NnUNetModelStep`: nnU-Net plan + preprocess + train, then predict) writes one
   label file per case to revise; :mod:`.realign_step` and :mod:`.ensemble` refine those predictions.
5. :func:`.output.write_revised_labels` assembles the new label folder (clean label for clean cases, prediction for
   the others, the imperfect label where the consistency gate keeps it) plus per-case noise maps in temporary
   folders and swaps them in with renames.
6. a provenance manifest ``labelsTr_revision.json`` records what was revised and how; :mod:`.report` writes the
   report.

``method='clean_only'`` is the baseline that every benchmark must carry (nnU-Net trained on the clean pairs alone,
predicting the rest) through the same code path. ``method='ensemble'`` trains both models and revises with the mean
of their softmax probabilities (nnU-Net's own ensembling): the network that reads the imperfect label and the one
that reads the image alone make different errors, so their mean can beat either member, at twice the training cost
of phase 1 (BENCHMARKS.md says where it does).

The idea of learning the annotators' noise pattern from a few clean/imperfect pairs and revising every imperfect
label with it comes from Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust
medical image segmentation", Neural Networks 181 (2024) 106850.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common import raw_dataset, safe_fs
from nnunet_noisylabels.revision.auxiliary import AuxDataset, build_aux_dataset, choose_aux_dataset_name
from nnunet_noisylabels.revision.band import uncertain_band
from nnunet_noisylabels.revision.base import (AUX_SUFFIX, CLEAN_DIR, DATASET_JSON_KEY, DEFAULT_TRAINERS, HARD_DIR,
                                              LABELS_DIR, MANIFEST_NAME, MEMBERS, METHODS, NOISE_MAP_LABELS,
                                              NOISE_MAPS_DIR, ORIGINALS_DIR, REPORT_DIR, RevisionError,
                                              RevisionReportError)
from nnunet_noisylabels.revision.ensemble import ENSEMBLE_AGREEMENT_WARN, average_member_predictions
from nnunet_noisylabels.revision.inputs import (RevisionInputs, check_in_place_layout, check_options,
                                                finish_pending_manifest, pending_manifest_path, preserve_originals,
                                                recover_interrupted_swap, resolve_dataset_folder, validate_inputs)
from nnunet_noisylabels.revision.model_step import ModelStep, NnUNetModelStep, check_model_choice
from nnunet_noisylabels.revision.output import (consistency_gate, make_output_dataset, nnunet_version,
                                                plugin_version, populate_output_dataset, write_revised_labels)
from nnunet_noisylabels.revision.realign_step import realign_and_repredict


@dataclasses.dataclass(frozen=True)
class RevisionOptions:
    """Everything a revision can be told (``nnUNetv2_nl_revise`` builds one from its arguments).

    Attributes:
        method: 'nin' (noise identification network: image + imperfect label in), 'clean_only' (plain nnU-Net on
            the image channels of the clean pairs; the benchmark baseline) or 'ensemble' (both, softmax averaged).
        output_dataset: write a new dataset (``DatasetXXX_Name`` in nnUNet_raw, or a path) instead of in place.
        aux_id: dataset id of the auxiliary dataset (default: free id chosen automatically); with 'ensemble' the
            noise identification network's, the clean-only one takes the next free id.
        aux_folder: build the auxiliary dataset here instead of in nnUNet_raw (only with a custom model step or
            ``model_folder``, since nnU-Net training needs it in nnUNet_raw); with 'ensemble' one sub-folder per
            member.
        trainer, configuration, fold, device, num_processes, model_folder: see :class:`.NnUNetModelStep`; with
            'ensemble', ``trainer``/``model_folder`` are the noise identification network's.
        clean_only_trainer, clean_only_model_folder: trainer / trained model of the clean-only member of 'ensemble'
            (``trainer``/``model_folder`` serve for ``method='clean_only'`` alone).
        save_noise_maps: write per-case noise maps.
        truth_folder: true labels (e.g. of the clean dataset a corrupted copy came from) for the report's Dice/HD95.
        report: write the revision report (JSON, CSV, Markdown, PNG overlays).
        keep_aux: keep the auxiliary dataset after the run (it holds the trained model's inputs).
        keep_consistent: keep the imperfect label of the cases the model agrees with (case-level gate, see
            :mod:`nnunet_noisylabels.revision.consistency`); it acts only when such a group stands apart.
        consistency_ratio: the gate's ``min_ratio``.
        use_mirroring: test-time mirroring of the revision model's predictions (nnU-Net's default: on).
        realign: misplaced labels (method 'nin', and the network of 'ensemble'): move each class of the imperfect
            label rigidly onto the revision's first prediction (the network's; for 'ensemble' the members' average)
            where that raises their Dice by ``realign_min_gain``, and let the network predict those cases again from
            the realigned label (see :mod:`.realign`).
        realign_min_gain: see ``realign``.
        realign_rounds: realign-and-predict rounds (each one moves the label onto the latest prediction; a round
            costs one prediction of the realigned cases).
        cpu_plans: train the phase-1 models with the CPU variant of the configuration (``<configuration>_cpu``:
            narrower features, batch 2; :mod:`nnunet_noisylabels.common.cpu_plans`), e.g. 3D on a laptop.
        uncertain_band: mark the voxels of the revised cases whose revision is uncertain (margin of the revision
            probabilities below this; with 'ensemble' also where the two models disagree) with nnU-Net's ignore
            label, declared in the new dataset's dataset.json; the hard revision goes to ``labelsTr_hard/``
            (:mod:`.band`). Needs ``output_dataset``. None: no band.
        progress: progress bars.
    """

    method: str = "nin"
    output_dataset: str | None = None
    aux_id: int | None = None
    aux_folder: str | None = None
    trainer: str | None = None
    configuration: str | None = None
    fold: str = "all"
    device: str | None = None
    num_processes: int = 1
    model_folder: str | None = None
    clean_only_trainer: str | None = None
    clean_only_model_folder: str | None = None
    save_noise_maps: bool = True
    truth_folder: str | None = None
    report: bool = True
    keep_aux: bool = True
    keep_consistent: bool = True
    consistency_ratio: float = 3.0
    use_mirroring: bool = True
    realign: bool = False
    realign_min_gain: float = 0.05
    realign_rounds: int = 3
    cpu_plans: bool = False
    uncertain_band: float | None = None
    progress: bool = True

    @property
    def members(self) -> tuple[str, ...]:
        """The models this method trains: ('nin',), ('clean_only',) or both for 'ensemble'."""
        return MEMBERS[self.method]

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1

    def check(self) -> None:
        """Raise :class:`RevisionError` for options that cannot work together, before anything is read."""
        if self.method not in METHODS:
            raise RevisionError(f"Unknown method '{self.method}'; choose one of {METHODS}.")
        check_options(self.consistency_ratio, self.realign_min_gain, self.realign_rounds)
        if self.uncertain_band is not None:
            if not 0.0 <= self.uncertain_band <= 1.0:
                raise RevisionError(f"--uncertain_band must lie in [0, 1] (a probability margin), got "
                                    f"{self.uncertain_band}.")
            if self.output_dataset is None:
                raise RevisionError("--uncertain_band adds an ignore label to dataset.json, which is only done in a "
                                    "new dataset: add -o DatasetXXX_Name.")

    def trainer_and_model(self, member: str) -> tuple[str, str | None]:
        """(trainer, model folder or None) of one member."""
        if self.ensemble and member == "clean_only":
            return self.clean_only_trainer or DEFAULT_TRAINERS[member], self.clean_only_model_folder
        return self.trainer or DEFAULT_TRAINERS[member], self.model_folder


def revise_dataset(dataset: str | int | os.PathLike, options: RevisionOptions | None = None,
                   model_step: ModelStep | Mapping[str, ModelStep] | None = None,
                   log: Callable[[str], None] = print, **overrides) -> dict:
    """Revise the imperfect labels of a raw nnU-Net dataset with a model trained on its clean pairs.

    In place (default): the imperfect labels are preserved in ``labelsTr_imperfect/``, ``labelsTr/`` is replaced
    atomically by the pseudo masks (clean cases get their clean label), noise maps go to ``noise_maps/`` and the
    manifest to ``labelsTr_revision.json``. With ``output_dataset`` the source is left untouched and a new raw dataset
    (images linked, ``labelsTr_clean``/``labelsTr_imperfect`` copied) is written instead.

    Args:
        dataset: dataset id, name or folder.
        options: see :class:`RevisionOptions` (default: its defaults).
        model_step: replaces the nnU-Net train/predict step (tests); default :class:`.NnUNetModelStep`. For
            'ensemble' a mapping member method -> step, whose steps must also write nnU-Net's ``.npz``/``.pkl``.
        log: where progress messages go.
        **overrides: fields of :class:`RevisionOptions` to change, e.g. ``method='ensemble'``.

    Returns:
        the manifest (also written to ``labelsTr_revision.json``).
    """
    opts = dataclasses.replace(options or RevisionOptions(), **overrides)
    opts.check()
    raw = resolve_dataset_folder(dataset)
    if opts.output_dataset is None:
        check_in_place_layout(raw, opts.save_noise_maps, opts.report)
        for line in recover_interrupted_swap(raw):
            log(f"Recovered from an interrupted run: {line}")
    inputs = validate_inputs(raw, progress=opts.progress)
    log(f"{raw.name}: {len(inputs.clean_ids)} clean pair(s), {len(inputs.revise_ids)} case(s) to revise, "
        f"{inputs.num_classes} classes, {inputs.dimensionality}D; imperfect labels read from "
        f"{inputs.originals_folder.name}/")
    out_final = make_output_dataset(inputs, opts.output_dataset) if opts.output_dataset is not None else None
    _check_run(inputs, opts)
    steps = _model_steps(inputs, opts, model_step)
    aux_folders = _first_aux_folder(raw, opts)

    target_root = _prepare_target(inputs, out_final, log)
    auxes: dict[str, AuxDataset] = {}
    try:
        pred_dir, model_info, realigned, branch_maps = _predict(inputs, opts, steps, aux_folders, auxes, log)
        ignore_label = _ignore_label(inputs) if opts.uncertain_band is not None else None
        if out_final is not None:
            populate_output_dataset(inputs, target_root, opts.progress)
            _declare_in_dataset_json(target_root, inputs, opts, ignore_label)
        keep, gate = {}, {"applied": False, "reason": "disabled (--no_keep_consistent)"}
        if opts.keep_consistent:
            keep, gate = consistency_gate(inputs, pred_dir, opts.consistency_ratio, opts.progress)
            log(f"Consistency gate: {gate['num_kept']} case(s) keep their imperfect label"
                + ("" if gate["applied"] else f" ({gate.get('reason')})"))
        manifest = _manifest(inputs, opts, out_final, auxes, model_info, gate, realigned, branch_maps, ignore_label)

        def write_pending_manifest(records: dict[str, dict]) -> None:
            # written before the labels are swapped in, renamed into place after (see finish_pending_manifest)
            manifest["cases"] = records
            raw_dataset.write_json_atomic(manifest, pending_manifest_path(target_root))

        write_revised_labels(inputs, pred_dir, target_root, progress=opts.progress,
                             save_noise_maps=opts.save_noise_maps,
                             branch_noise_maps=Path(branch_maps) if branch_maps else None,
                             before_swap=write_pending_manifest, keep_imperfect=keep, realigned=realigned,
                             band_of=None if ignore_label is None else _band_reader(inputs, opts, pred_dir, auxes),
                             ignore_label=ignore_label)
        os.replace(pending_manifest_path(target_root), target_root / MANIFEST_NAME)
        if out_final is not None:
            os.rename(target_root, out_final)
            target_root = out_final
    except BaseException:
        if out_final is not None:
            shutil.rmtree(target_root, ignore_errors=True)
        else:
            finish_pending_manifest(target_root)
        raise
    finally:
        if not opts.keep_aux:  # only what this run built: a folder it refused to replace is not ours
            for folder in (a.folder for a in auxes.values()):
                shutil.rmtree(folder, ignore_errors=True)
    log(f"Revised {len(inputs.revise_ids)} label(s) in {target_root / LABELS_DIR}; originals in "
        f"{target_root / ORIGINALS_DIR}; manifest {target_root / MANIFEST_NAME}.")
    if opts.report:
        _write_report(target_root, opts, log)
    log("Next: nnUNetv2_plan_and_preprocess / nnUNetv2_train on this dataset use the pseudo masks "
        "(re-run preprocessing if the dataset was preprocessed before).")
    return manifest


def _check_run(inputs: RevisionInputs, opts: RevisionOptions) -> None:
    """Checks of the options against the dataset, before anything is written."""
    if opts.truth_folder is not None and not Path(opts.truth_folder).is_dir():
        raise FileNotFoundError(f"--truth folder {opts.truth_folder} not found.")
    if str(opts.fold) != "all" and len(inputs.clean_ids) < 5:
        raise RevisionError(f"Fold {opts.fold} needs nnU-Net's 5-fold split of the clean pairs, but there are only "
                            f"{len(inputs.clean_ids)}; use -f all.")
    if opts.realign and "nin" not in opts.members:
        raise RevisionError("--realign moves the imperfect label that the noise identification network reads; "
                            "method 'clean_only' does not read it. Use --method nin or ensemble.")


def _model_steps(inputs: RevisionInputs, opts: RevisionOptions,
                 model_step: ModelStep | Mapping[str, ModelStep] | None) -> dict[str, ModelStep]:
    """One model step per member: the given one(s), or nnU-Net's, whose trainer and model are checked now rather
    than after minutes of planning and training."""
    members = opts.members
    if model_step is None:
        device = opts.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        chosen = {m: opts.trainer_and_model(m) for m in members}
        for m in members:
            check_model_choice(inputs, m, opts.configuration, *chosen[m], str(opts.fold))
        return {m: NnUNetModelStep(configuration=opts.configuration, trainer=chosen[m][0],
                                   fold=str(opts.fold), device=device, num_processes=opts.num_processes,
                                   model_folder=chosen[m][1], progress=opts.progress,
                                   dimensionality=inputs.dimensionality, save_noise_maps=opts.save_noise_maps,
                                   use_mirroring=opts.use_mirroring,
                                   save_probabilities=opts.ensemble or opts.uncertain_band is not None,
                                   cpu_plans=opts.cpu_plans)
                for m in members}
    steps = dict(model_step) if isinstance(model_step, Mapping) else {m: model_step for m in members}
    if set(steps) != set(members):
        raise RevisionError(f"model_step must give a step for each of {members}, got {sorted(steps)}.")
    return steps


def _first_aux_folder(raw: Path, opts: RevisionOptions) -> dict[str, Path]:
    """Auxiliary dataset folders known before anything is written: all of them with ``aux_folder``, else the first
    member's (a bad --aux_id stops here); an ensemble's second name is chosen once the first folder exists, so that
    the two never get the same free id."""
    members = opts.members
    if opts.aux_folder is not None:
        return {m: Path(opts.aux_folder) / AUX_SUFFIX[m] if opts.ensemble else Path(opts.aux_folder)
                for m in members}
    if not os.environ.get("nnUNet_raw"):
        raise RevisionError("nnUNet_raw is not set: the auxiliary dataset is built there.")
    return {members[0]: Path(os.environ["nnUNet_raw"]) / choose_aux_dataset_name(raw, members[0], opts.aux_id)}


def _prepare_target(inputs: RevisionInputs, out_final: Path | None, log: Callable[[str], None]) -> Path:
    """Where the revised dataset is assembled: the dataset itself (originals preserved first), or a temporary
    sibling of the output dataset (left-overs of an interrupted run removed)."""
    if out_final is None:
        preserve_originals(inputs)
        return inputs.raw_folder
    out_final.parent.mkdir(parents=True, exist_ok=True)
    for stale in safe_fs.stale_siblings(out_final.parent, f".{out_final.name}", "tmp"):
        shutil.rmtree(stale)
        log(f"Removed {stale}, left by an interrupted run")
    return safe_fs.temp_sibling(out_final.parent, f".{out_final.name}")


def _predict(inputs: RevisionInputs, opts: RevisionOptions, steps: dict[str, ModelStep],
             aux_folders: dict[str, Path], auxes: dict[str, AuxDataset], log: Callable[[str], None]
             ) -> tuple[Path, dict, dict, str | None]:
    """Build each member's auxiliary dataset (into ``auxes``, so the caller can clean up), train and predict,
    realign, average an ensemble. Returns (folder of the predictions to revise with, model info for the manifest,
    realigned cases, folder of the network's branch noise maps or None)."""
    members, infos, realigned = opts.members, {}, {}
    for m in members:
        if m not in aux_folders:
            aux_folders[m] = Path(os.environ["nnUNet_raw"]) / choose_aux_dataset_name(inputs.raw_folder, m)
        auxes[m] = build_aux_dataset(inputs, aux_folders[m], m, progress=opts.progress)
        log(f"Auxiliary dataset: {auxes[m].folder}")
        (auxes[m].folder / "predictionsTs").mkdir()
        infos[m] = steps[m](auxes[m], auxes[m].folder / "predictionsTs") or {}
        if opts.realign and m == "nin" and not opts.ensemble:
            realigned = realign_and_repredict(inputs, auxes[m], steps[m], infos[m], opts.realign_min_gain,
                                              opts.realign_rounds, opts.progress, log)
    branch_maps = infos.get("nin", {}).get("branch_noise_maps")  # only the network has over/under branches
    if not opts.ensemble:
        return auxes[members[0]].folder / "predictionsTs", infos[members[0]], realigned, branch_maps
    pred_dir = auxes[members[0]].folder / "predictionsTs_ensemble"
    folders = [auxes[m].folder / "predictionsTs" for m in members]
    if opts.realign:
        # the labels move onto the ensemble's own prediction; the moved cases are averaged again each round
        average_member_predictions(inputs, folders, pred_dir, opts.progress, keep_probabilities=True)
        realigned = realign_and_repredict(
            inputs, auxes["nin"], steps["nin"], infos["nin"], opts.realign_min_gain, opts.realign_rounds,
            opts.progress, log, reference=pred_dir, refresh=lambda ids: average_member_predictions(
                inputs, folders, pred_dir, case_ids=ids, keep_probabilities=True))
    agreement = average_member_predictions(inputs, folders, pred_dir, opts.progress,
                                           save_probabilities=opts.uncertain_band is not None)
    low = {k: round(v, 3) for k, v in agreement.items() if v is not None and v < ENSEMBLE_AGREEMENT_WARN}
    if low:
        log(f"Warning: the two revision models disagree on {low} (mean Dice between them < "
            f"{ENSEMBLE_AGREEMENT_WARN}); one of them cannot segment these classes from the clean pairs "
            f"and their mean may be worse than --method nin alone. Compare the two before training on it.")
    model_info = {"members": infos, "fusion": "mean of the members' softmax probabilities, argmax",
                  "member_agreement_dice": agreement}
    return pred_dir, model_info, realigned, branch_maps


def _manifest(inputs: RevisionInputs, opts: RevisionOptions, out_final: Path | None, auxes: dict[str, AuxDataset],
              model_info: dict, gate: dict, realigned: dict, branch_maps: str | None,
              ignore_label: int | None) -> dict:
    """The provenance manifest ``labelsTr_revision.json`` (its per-case records are added when they are written)."""
    raw = inputs.raw_folder
    return {
        "format": "nnunet_noisylabels.revision/1",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_dataset": raw.name,
        "mode": "in_place" if out_final is None else "new_dataset",
        "dataset": (out_final or raw).name,
        "method": opts.method,
        "aux_dataset": auxes[opts.members[0]].name if not opts.ensemble else [auxes[m].name for m in opts.members],
        "model": model_info,
        "labels_folder": LABELS_DIR,
        "originals_folder": ORIGINALS_DIR,
        "clean_folder": CLEAN_DIR,
        "noise_maps_folder": NOISE_MAPS_DIR if opts.save_noise_maps else None,
        "noise_map_codes": NOISE_MAP_LABELS,
        "noise_maps_from": "network over/under branches (revised cases), difference imperfect vs clean (clean "
                           "cases)" if branch_maps else "difference imperfect vs revised/clean",
        "num_clean": len(inputs.clean_ids),
        "num_revised": len(inputs.revise_ids),
        "consistency_gate": gate,
        "realignment": {"enabled": True, "min_gain": opts.realign_min_gain, "rounds": opts.realign_rounds,
                        "num_cases": len(realigned)} if opts.realign else {"enabled": False},
        "uncertain_band": {"enabled": False} if ignore_label is None else {
            "enabled": True, "margin": opts.uncertain_band, "ignore_label": ignore_label,
            "hard_labels_folder": HARD_DIR,
            "marks": "revised cases: top-1 minus top-2 revision probability below the margin"
                     + (", or the two models predict different classes" if opts.ensemble else "")
                     + "; clean pairs and kept imperfect labels never"},
        "versions": {"nnunet_noisylabels": plugin_version(), "nnunetv2": nnunet_version()},
    }


def _ignore_label(inputs: RevisionInputs) -> int:
    """The ignore label a band is written with: one above the highest label (nnU-Net requires the highest)."""
    return max(int(v) for v in inputs.dataset_json["labels"].values()) + 1


def _declare_in_dataset_json(root: Path, inputs: RevisionInputs, opts: RevisionOptions,
                             ignore_label: int | None) -> None:
    """A new dataset's dataset.json names its clean pairs (``NoiseRobustTrainer`` keeps hard targets there) and, with
    a band, declares the ignore label."""
    djson = raw_dataset.load_json(root / "dataset.json")
    extra = {"clean_cases": sorted(inputs.clean_ids)}
    if ignore_label is not None:
        djson["labels"] = {**djson["labels"], "ignore": ignore_label}
        extra["uncertain_band"] = {"margin": opts.uncertain_band, "ignore_label": ignore_label}
    djson[DATASET_JSON_KEY] = extra
    raw_dataset.write_json_atomic(djson, root / "dataset.json")


def _band_reader(inputs: RevisionInputs, opts: RevisionOptions, pred_dir: Path,
                 auxes: dict[str, AuxDataset]) -> Callable[[str], np.ndarray]:
    """case id -> its uncertain band, from the revision's probabilities (``<case>.npz`` beside its prediction) and,
    for an ensemble, its members' labels."""
    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    members = [auxes[m].folder / "predictionsTs" for m in opts.members] if opts.ensemble else []

    def band_of(case_id: str) -> np.ndarray:
        npz = pred_dir / f"{case_id}.npz"
        if not npz.is_file():
            raise RuntimeError(f"The revision's probabilities of '{case_id}' ({npz}) are missing; {LABELS_DIR}/ was "
                               f"left unchanged.")
        with np.load(npz) as f:
            probs = f["probabilities"]
        labels = [rw.read_seg(str(m / f"{case_id}{fe}"))[0][0] for m in members]
        return uncertain_band(probs, opts.uncertain_band, labels)[None]

    return band_of


def _write_report(target_root: Path, opts: RevisionOptions, log: Callable[[str], None]) -> None:
    """The revision report; its failure is a :class:`RevisionReportError` that says the labels are written."""
    from nnunet_noisylabels.revision.report import write_revision_report  # matplotlib etc. only when reporting

    try:
        summary = write_revision_report(target_root, truth_folder=opts.truth_folder, progress=opts.progress)
    except Exception as e:
        again = f"nnUNetv2_nl_revise -d {target_root} --report_only" + (
            f" --truth {opts.truth_folder}" if opts.truth_folder is not None else "")
        raise RevisionReportError(
            f"The labels were revised ({target_root / LABELS_DIR}, manifest {target_root / MANIFEST_NAME}), but "
            f"the report failed ({type(e).__name__}: {e}). Write it again with: {again}") from e
    log(f"Report: {target_root / REPORT_DIR}" + (
        f" (mean Dice imperfect {summary['mean']['dice_imperfect']:.4f} -> revised "
        f"{summary['mean']['dice_revised']:.4f})" if summary.get("mean", {}).get("dice_revised") is not None
        else ""))


__all__ = ["RevisionOptions", "revise_dataset"]
