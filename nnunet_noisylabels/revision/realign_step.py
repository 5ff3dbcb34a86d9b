"""Realignment of misplaced imperfect labels during a revision: move each class rigidly onto the first
prediction (:mod:`.realign`) and let the network predict the moved cases again.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from nnunet_noisylabels.common import raw_dataset
from nnunet_noisylabels.revision.auxiliary import AuxDataset, write_case_inputs
from nnunet_noisylabels.revision.base import REALIGN_DIR, progress_bar
from nnunet_noisylabels.revision.inputs import RevisionInputs
from nnunet_noisylabels.revision.model_step import ModelStep, NnUNetModelStep


def realign_imperfect_inputs(inputs: RevisionInputs, aux: AuxDataset, predictions: Path, min_gain: float = 0.05,
                             progress: bool = False, case_ids: Iterable[str] | None = None
                             ) -> tuple[AuxDataset | None, dict[str, dict]]:
    """Rigidly realign misplaced imperfect labels onto the latest predictions, as inputs for another pass.

    For each case to revise (or each of ``case_ids``), every class of the imperfect label is moved onto the class's
    prediction when that raises their Dice by at least ``min_gain`` (see :mod:`.realign`). The cases with a moved
    class get their image channels and the realigned label as the network's input channels in
    ``<aux>/realigned/imagesTs``.

    Returns:
        ``(auxiliary dataset of the realigned cases or None if none moved, {case: {class: realignment info}})`` for
        the moved cases.
    """
    from nnunet_noisylabels.revision.realign import realign_label_map

    fe, K = inputs.file_ending, inputs.num_classes
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    folder = aux.folder / REALIGN_DIR
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTs").mkdir(parents=True)
    moved: dict[str, dict] = {}
    ids = list(inputs.revise_ids if case_ids is None else case_ids)
    for case_id in progress_bar(ids, "Realigning misplaced labels", progress):
        seg, props = rw.read_seg(str(inputs.imperfect_label(case_id)))
        pred, _ = rw.read_seg(str(Path(predictions) / f"{case_id}{fe}"))
        imp, spacing = raw_dataset.spatial_view(seg, props["spacing"])
        new, info = realign_label_map(imp, raw_dataset.spatial_view(pred, props["spacing"])[0], range(1, K), spacing,
                                      min_gain)
        if not any(v["moved"] for v in info.values()):
            continue
        moved[case_id] = {c: v for c, v in info.items() if v["moved"]}
        write_case_inputs(inputs, rw, case_id, folder / "imagesTs", new.reshape(seg.shape[1:]))
    if not moved:
        shutil.rmtree(folder)
        return None, moved
    return AuxDataset(folder=folder, method=aux.method, dataset_json=aux.dataset_json, train_ids=aux.train_ids,
                      predict_ids=sorted(moved)), moved


def second_pass_step(step: ModelStep, first_pass_info: dict) -> ModelStep:
    """The model step of a second prediction pass: nnU-Net's step reuses the model the first pass trained."""
    if isinstance(step, NnUNetModelStep):
        return replace(step, model_folder=first_pass_info["model_folder"], save_noise_maps=False)
    return step


def realign_and_repredict(inputs: RevisionInputs, aux: AuxDataset, step: ModelStep, first_pass_info: dict,
                           min_gain: float, rounds: int, progress: bool, log: Callable[[str], None],
                           reference: Path | None = None, refresh: Callable[[list[str]], object] | None = None
                           ) -> dict[str, dict]:
    """Realign misplaced labels onto the latest predictions and predict those cases again, ``rounds`` times; the
    new predictions (with their ``.npz``/``.pkl`` when present) replace the earlier ones in ``predictionsTs``.

    The network follows a misplaced label part of the way, so its prediction lies between the label and the
    structure; each round moves the (original) label onto the latest prediction, closer to the structure, and the
    next prediction closer still. A round considers only the cases moved in the round before.

    ``reference``: the folder of the predictions the labels move onto (default: the network's ``predictionsTs``);
    ``refresh(case_ids)`` brings it up to date after the network predicted those cases again (the ensemble: the
    members' average, which the clean-only member, blind to the label, draws towards the image).
    """
    predictions = aux.folder / "predictionsTs"
    reference = predictions if reference is None else reference
    moved: dict[str, dict] = {}
    candidates = None
    fe = inputs.file_ending
    for r in range(1, rounds + 1):
        sub, now = realign_imperfect_inputs(inputs, aux, reference, min_gain, progress, candidates)
        considered = len(inputs.revise_ids if candidates is None else candidates)
        log(f"Realignment, round {r}/{rounds}: {len(now)} of {considered} case(s) have a misplaced label"
            + (", predicting them again from the realigned label" if now else ""))
        if sub is None:
            break
        out = sub.folder / "predictionsTs"
        out.mkdir()
        second_pass_step(step, first_pass_info)(sub, out)
        missing = [c for c in sub.predict_ids if not (out / f"{c}{fe}").is_file()]
        if missing:
            raise RuntimeError(f"The second pass produced no prediction for {len(missing)} realigned case(s), e.g. "
                               f"{missing[:5]}; labelsTr/ was left unchanged.")
        for c in sub.predict_ids:
            for f in (f"{c}{fe}", f"{c}.npz", f"{c}.pkl"):
                if (out / f).is_file():
                    shutil.copy2(out / f, predictions / f)
            moved[c] = {"rounds": r, "classes": now[c]}
        if refresh is not None:
            refresh(sub.predict_ids)
        candidates = sub.predict_ids
    return moved
