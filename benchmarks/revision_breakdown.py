"""Where does a revision help and where does it hurt? Label Dice of the imperfect-only training cases, per kind of
noise each case got (from the corruption manifest: ``untouched``, or the concrete noise, e.g. ``dilate``, ``erode``,
``affine``, ``markov``) and per structure, before and after each revision of a benchmark work folder.

Reads ``nnUNet_raw/Dataset*/corruption_manifest.json`` and every ``labelsTr_revision_report/report.json`` written
with ``--truth`` in the work folder (the runner writes both); prints a Markdown table and writes it to
``WORK/revision_breakdown.md``.

Usage: python benchmarks/revision_breakdown.py WORK
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def noise_kinds(manifest: dict) -> dict[str, str]:
    """Case -> kind of noise it got: 'untouched', or the noise type the corruption applied to it."""
    return {case: (rec.get("noise") or "untouched") for case, rec in manifest["cases"].items()
            if not rec.get("clean_subset")}


def _dice(rec: dict, which: str, structure: str) -> float | None:
    """A report record's Dice of the ``which`` ('imperfect' or 'revised') label: of one structure, or 'mean'."""
    return rec[f"dice_{which}"] if structure == "mean" else rec[f"dice_{which}_per_class"].get(structure)


def breakdown(kinds: dict[str, str], reports: dict[str, dict]) -> list[dict]:
    """One row per (kind, structure): number of cases, imperfect Dice and each report's revised Dice (means; the
    imperfect Dice and the case count from the first report)."""
    first = next(iter(reports))
    rows = []
    for kind in sorted(set(kinds.values()), key=lambda k: (k != "untouched", k)):
        cases = [c for c, k in kinds.items() if k == kind]
        structures = sorted({s for c in cases if c in reports[first]["cases"]
                             for s in reports[first]["cases"][c].get("dice_imperfect_per_class", {})}, key=int)
        for s in structures + (["mean"] if len(structures) > 1 else []):
            values = defaultdict(list)
            for name, rep in reports.items():
                for rec in (rep["cases"].get(c) for c in cases):
                    if rec is None or "dice_revised" not in rec:
                        continue
                    imp, rev = _dice(rec, "imperfect", s), _dice(rec, "revised", s)
                    if imp is None or rev is None:
                        continue
                    values[name].append(rev)
                    if name == first:
                        values["imperfect"].append(imp)
            if values["imperfect"]:
                rows.append({"kind": kind, "structure": s, "cases": len(values["imperfect"]),
                             "imperfect": float(np.mean(values["imperfect"])),
                             **{name: float(np.mean(values[name])) if values[name] else float("nan")
                                for name in reports}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="benchmark work folder (run_benchmark.py --work)")
    a = p.parse_args(argv)
    raw = a.work / "nnUNet_raw"
    manifests = sorted(raw.glob("Dataset*/corruption_manifest.json"))
    if not manifests:
        raise SystemExit(f"{raw}: no corruption_manifest.json (run benchmarks/run_benchmark.py --work {a.work} first)")
    kinds = noise_kinds(json.loads(manifests[0].read_text()))
    reports = {}
    for path in sorted(raw.glob("Dataset*/labelsTr_revision_report/report.json")):
        rep = json.loads(path.read_text())
        if any("dice_revised" in c for c in rep["cases"].values()):
            reports[path.parent.parent.name] = rep
    if not reports:
        raise SystemExit(f"{raw}: no revision report with true labels (nnUNetv2_nl_revise --truth)")
    rows = breakdown(kinds, reports)
    md = ["| noise kind | structure | cases | imperfect | " + " | ".join(reports) + " |",
          "| --- | --- | --- | --- | " + " | ".join("---" for _ in reports) + " |"]
    md += [f"| {r['kind']} | {r['structure']} | {r['cases']} | {r['imperfect']:.4f} | "
           + " | ".join(f"{r[n]:.4f}" for n in reports) + " |" for r in rows]
    (a.work / "revision_breakdown.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
