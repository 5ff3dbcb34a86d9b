"""``--method ensemble``: the mean of the members' softmax probabilities (nnU-Net's own ensembling).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common import raw_dataset
from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.revision.base import LABELS_DIR, progress_bar
from nnunet_noisylabels.revision.inputs import RevisionInputs

# --method ensemble warns when its members' labels agree less than this (mean Dice per class between the two): well
# below their agreement on structures both learn, as low as where one member failed to learn one (BENCHMARKS.md)
ENSEMBLE_AGREEMENT_WARN = 0.8


def average_member_predictions(inputs: RevisionInputs, member_folders: list[Path], output_folder: Path,
                               progress: bool = False, case_ids: Iterable[str] | None = None,
                               keep_probabilities: bool = False, save_probabilities: bool = False
                               ) -> dict[str, float | None]:
    """The ensemble revision: per case to revise, the mean of the members' softmax probabilities, argmax, written to
    ``output_folder`` in the label geometry (nnU-Net's ``ensembling.merge_files``, as ``nnUNetv2_ensemble``).

    Every member folder must hold ``<case>.npz`` (nnU-Net's ``probabilities``, in the original geometry) and
    ``<case>.pkl`` (the image properties) for every case, as ``nnUNetPredictor`` writes with
    ``save_probabilities``, plus its own label file. Each member's ``.npz`` is deleted once merged (large for 3D
    data; ``keep_probabilities``: kept, for another merge); its label file stays. ``case_ids``: only these cases
    (default: every case to revise). ``save_probabilities``: also write the mean probabilities
    (``output_folder/<case>.npz``, for the uncertain band).

    Returns:
        per foreground class name, the mean over cases of the Dice between the first two members' own labels
        (None where neither has the class in any case): where it is low, one member cannot segment that class and
        the mean is worth less than the better member alone.
    """
    from nnunetv2.ensembling.ensemble import merge_files
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    labels = LabelManager(inputs.dataset_json["labels"], inputs.dataset_json.get("regions_class_order"))
    output_folder.mkdir(parents=True, exist_ok=True)
    classes = {name: int(k) for name, k in inputs.dataset_json["labels"].items() if int(k) != 0}
    agreement: dict[str, list[float]] = {name: [] for name in classes}
    case_ids = list(inputs.revise_ids if case_ids is None else case_ids)
    for case_id in progress_bar(case_ids, "Averaging the revision models", progress):
        files = [Path(f) / f"{case_id}.npz" for f in member_folders]
        missing = [str(f) for f in files if not f.is_file() or not f.with_suffix(".pkl").is_file()]
        if missing:
            raise RuntimeError(f"Probabilities of '{case_id}' missing ({', '.join(missing)}); {LABELS_DIR}/ was left "
                               "unchanged.")
        merge_files([str(f) for f in files], str(output_folder / case_id), fe, rw, labels,
                    save_probabilities=save_probabilities)
        a, b = (rw.read_seg(str(Path(f) / f"{case_id}{fe}"))[0] for f in member_folders[:2])
        for name, k in classes.items():
            if (a == k).any() or (b == k).any():
                agreement[name].append(dice(a == k, b == k))
    if not keep_probabilities:
        for case_id in case_ids:
            for f in member_folders:
                (Path(f) / f"{case_id}.npz").unlink(missing_ok=True)
    return {name: (float(np.mean(v)) if v else None) for name, v in agreement.items()}
