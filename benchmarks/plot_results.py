"""Plot test Dice per arm against the strength of the label noise, from finished ``run_benchmark.py`` work folders.

Each work folder is one noise protocol (or strength); its x position is the mean Dice of the imperfect training labels
against the clean ones (``label_quality.csv``), so weaker noise sits to the right. One line per arm, one marker per
folder, annotated with the folder's protocol. The arms that are absent from a folder are skipped there. With
``--x clean_pairs`` the x position is the folder's number of clean pairs instead (one folder per --clean_fraction),
and a second panel shows the label Dice of each revision method. ``--arms`` draws only the arms named.

Examples:

    python benchmarks/plot_results.py bench_output/jsrt_lung_markov bench_output/jsrt_lung_alpha_beta \\
        bench_output/jsrt_lung_box -o benchmarks/results_jsrt_lung.png --title "JSRT lung, 10% clean, CPU budget"
    python benchmarks/plot_results.py bench_output/jsrt_lung_markov_clean0.* --x clean_pairs \\
        -o benchmarks/clean_pairs_jsrt_lung.png --title "JSRT lung, Markov noise: how many clean pairs"
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

# drawing order and style; arms not listed are drawn after these in grey
ARM_STYLE = {
    "nnunet_noisy": ("nnU-Net, imperfect labels", "tab:red", "o"),
    "nnunet_clean_subset": ("nnU-Net, clean subset only", "tab:orange", "s"),
    "nnunet_revised": ("nnU-Net, revised labels (phase 1)", "tab:blue", "^"),
    "robust_noisy": ("NoiseRobustTrainer, imperfect (phase 2)", "tab:purple", "v"),
    "robust_revised": ("NoiseRobustTrainer, revised (full method)", "tab:green", "D"),
    "gce_noisy": ("GCE, imperfect", "tab:brown", "x"),
    "coteaching_noisy": ("Co-teaching, imperfect", "tab:pink", "+"),
    "nnunet_clean_full": ("nnU-Net, all labels clean (ceiling)", "black", "*"),
    "nnunet_cleanonly_revised": ("nnU-Net, clean-only revision", "tab:olive", "<"),
    "nnunet_ensemble_revised": ("nnU-Net, ensemble revision", "tab:cyan", ">"),
}


def read_folder(work: Path) -> dict:
    """Protocol name, imperfect-label Dice and test Dice per arm of one benchmark work folder."""
    results = work / "results.csv"
    quality = work / "label_quality.csv"
    if not results.is_file() or not quality.is_file():
        raise SystemExit(f"{work}: no results.csv / label_quality.csv; run benchmarks/run_benchmark.py there first")
    with open(quality, newline="") as f:
        rows = list(csv.DictReader(f))
    imperfect = [float(r["dice_vs_clean_mean"]) for r in rows if r["labels"].startswith("imperfect")]
    if not imperfect:
        raise SystemExit(f"{quality}: no 'imperfect' row (was the benchmark run with --no_label_quality and no "
                         f"revision?)")
    with open(results, newline="") as f:
        arms = {r["arm"]: _mean_and_error(r) for r in csv.DictReader(f)}
    settings = work / "settings.json"
    protocol = json.loads(settings.read_text())["protocol"] if settings.is_file() else work.name
    revisions = {r["labels"]: float(r["dice_vs_clean_mean"]) for r in rows if r["labels"].startswith("revised")}
    folder = {"protocol": protocol, "imperfect_dice": imperfect[0], "arms": arms, "revisions": revisions}
    manifests = sorted(work.glob("nnUNet_raw/Dataset*/corruption_manifest.json"))
    if manifests:
        folder["clean_pairs"] = json.loads(manifests[0].read_text())["summary"]["num_clean_subset"]
    return folder


def _mean_and_error(row: dict) -> tuple[float, float | tuple[float, float]]:
    """(mean Dice, error bar): the bootstrap 95% CI of the mean as (below, above) where the table has it (runs with
    seeds), else the sd over cases."""
    mean = float(row["dice_mean"])
    if row.get("dice_ci_low") not in (None, ""):
        return mean, (mean - float(row["dice_ci_low"]), float(row["dice_ci_high"]) - mean)
    return mean, float(row["dice_sd"])


X_AXES = {"imperfect_dice": "Dice of the imperfect training labels vs clean (lower = stronger noise)",
          "clean_pairs": "number of clean pairs"}


def plot(folders: list[dict], output: Path, title: str, x_axis: str = "imperfect_dice",
         arms: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = [f["protocol"] for f in folders if x_axis not in f]
    if missing:
        raise SystemExit(f"no {x_axis} for {missing}: their work folders lack nnUNet_raw/*/corruption_manifest.json")
    folders = sorted(folders, key=lambda f: f[x_axis])
    names = list(ARM_STYLE) + sorted({a for f in folders for a in f["arms"]} - set(ARM_STYLE))
    if arms:
        names = [a for a in names if a in arms]
    with_labels = x_axis == "clean_pairs"
    fig, axes = plt.subplots(1, 2 if with_labels else 1, figsize=(13 if with_labels else 7.5, 5))
    ax = axes[1] if with_labels else axes
    if with_labels:
        _plot_label_dice(axes[0], folders, x_axis)
    for arm in names:
        pts = [(f[x_axis], *f["arms"][arm]) for f in folders if arm in f["arms"]]
        if not pts:
            continue
        label, color, marker = ARM_STYLE.get(arm, (arm, "grey", "."))
        x, y, err = zip(*pts)
        err = [[e[0] if isinstance(e, tuple) else e for e in err], [e[1] if isinstance(e, tuple) else e for e in err]]
        ax.errorbar(x, y, yerr=err, label=label, color=color, marker=marker, capsize=3, linewidth=1.2,
                    linestyle="-" if len(pts) > 1 else "none")
    for f in folders:
        ax.axvline(f[x_axis], color="0.85", linewidth=0.8, zorder=0)
        ax.annotate(f["protocol"], (f[x_axis], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -12), textcoords="offset points", fontsize=8, color="0.35")
    ax.set_xlabel(X_AXES[x_axis])
    ax.set_ylabel("test Dice (mean; bars: 95% CI over test cases, sd for 1 seed)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def _plot_label_dice(ax, folders: list[dict], x_axis: str) -> None:
    """Label Dice (revised vs clean, imperfect-only training cases) of each revision method, and of the imperfect
    labels, against the x axis."""
    methods = sorted({m for f in folders for m in f["revisions"]})
    series = [("imperfect labels", [(f[x_axis], f["imperfect_dice"]) for f in folders])]
    series += [(m, [(f[x_axis], f["revisions"][m]) for f in folders if m in f["revisions"]]) for m in methods]
    for name, pts in series:
        x, y = zip(*pts)
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel(X_AXES[x_axis])
    ax.set_ylabel("label Dice vs clean (imperfect-only training cases)")
    ax.set_title("pseudo masks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", nargs="+", help="run_benchmark.py work folders (one per protocol or strength)")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--title", default="Test Dice per arm across label-noise strengths")
    p.add_argument("--arms", nargs="+", default=None, help="draw only these arms")
    p.add_argument("--x", dest="x_axis", choices=sorted(X_AXES), default="imperfect_dice",
                   help="x axis: the imperfect labels' Dice (one folder per protocol) or the number of clean pairs "
                        "(one folder per --clean_fraction)")
    a = p.parse_args(argv)
    plot([read_folder(Path(w)) for w in a.work], Path(a.output), a.title, a.x_axis, a.arms)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
