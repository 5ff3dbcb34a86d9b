"""Cost of NoiseRobustTrainer vs nnUNetTrainer built from the same plans, measured side by side in one process.

Per training iteration (``train_step`` on synthetic batches of the plans' patch and batch size, with nnU-Net's
deep-supervision targets): median wall time and peak GPU memory. Per inference patch (eval mode, deep supervision
off, batch 1, as nnU-Net's sliding window): median wall time. Prints a Markdown table with ratios to nnUNetTrainer.
Targets from the issue: training time ratio <= 2.0, memory ratio <= 2.1.

Plans come from an existing preprocessed dataset (``-d``), a folder holding plans.json and dataset.json
(``--plans_dir``, e.g. a trained model folder), or, by default, nnU-Net's own planner run on a synthetic raw
dataset written to a temporary folder (``--synthetic_shape``; no preprocessing needed).

Examples:
    python benchmarks/cost_twin.py --device cpu --synthetic_shape 64 64 --iters 5
    python benchmarks/cost_twin.py --device cuda --compile --synthetic_shape 128 128 128 --iters 30
    python benchmarks/cost_twin.py --device cuda --compile -d 4 -c 3d_fullres

GPU memory is torch's peak allocated memory (``torch.cuda.max_memory_allocated``); on CPU memory is not measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("-d", dest="dataset", help="dataset name or id with plans in nnUNet_preprocessed")
    src.add_argument("--plans_dir", help="folder with plans.json (or PLANS.json) and dataset.json")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-c", dest="configuration", default=None,
                   help="configuration (default: 3d_fullres if planned, else 2d)")
    p.add_argument("--synthetic_shape", type=int, nargs="+", default=[128, 128, 128],
                   help="image shape of the synthetic dataset planned when neither -d nor --plans_dir is given; "
                        "2 numbers plan a 2d dataset (default 128 128 128)")
    p.add_argument("--planner", default="ExperimentPlanner",
                   help="nnU-Net planner for the synthetic dataset (e.g. nnUNetPlannerResEncM)")
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "NoiseRobustTrainer"],
                   help="trainer classes to compare; the first one is the reference")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--compile", action="store_true", help="torch.compile as nnU-Net does (nnUNet_compile=1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (compilation happens here)")
    p.add_argument("--iters", type=int, default=20, help="timed training iterations per trainer")
    p.add_argument("--inference_iters", type=int, default=20, help="timed inference passes per trainer")
    p.add_argument("--softening_active", action="store_true", default=True,
                   help="time NoiseRobustTrainer with the peer term active (past the ramp-up); default on")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON here")
    return p.parse_args(argv)


def _plan_synthetic(workdir: Path, shape: list[int], planner: str) -> tuple[dict, dict]:
    from nnunet_noisylabels.common.synthetic import write_synthetic_dataset

    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    write_synthetic_dataset(os.environ["nnUNet_raw"], 999, name="CostBench", dim=len(shape), num_classes=3,
                            num_cases=4, num_clean=0, shape=tuple(shape), noise="none")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    extract_fingerprints([999], num_processes=1, show_progress_bar=False)
    plans_id = plan_experiments([999], planner)
    folder = Path(os.environ["nnUNet_preprocessed"]) / "Dataset999_CostBench"
    plans = json.loads((folder / f"{plans_id}.json").read_text())
    dataset_json = json.loads((Path(os.environ["nnUNet_raw"]) / "Dataset999_CostBench" / "dataset.json").read_text())
    return plans, dataset_json


def _load_plans(args) -> tuple[dict, dict, str]:
    if args.plans_dir:
        folder = Path(args.plans_dir)
        candidates = [folder / "plans.json", folder / f"{args.plans}.json"]
        plans_file = next((c for c in candidates if c.is_file()), None)
        if plans_file is None or not (folder / "dataset.json").is_file():
            raise FileNotFoundError(f"{folder} needs plans.json (or {args.plans}.json) and dataset.json")
        return json.loads(plans_file.read_text()), json.loads((folder / "dataset.json").read_text()), str(plans_file)
    if args.dataset:
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        folder = Path(nnUNet_preprocessed.require()) / maybe_convert_to_dataset_name(args.dataset)
        return (json.loads((folder / f"{args.plans}.json").read_text()),
                json.loads((folder / "dataset.json").read_text()), str(folder))
    plans, dj = _plan_synthetic(Path(os.environ["nnUNet_raw"]), args.synthetic_shape, args.planner)
    return plans, dj, f"synthetic {'x'.join(map(str, args.synthetic_shape))} ({args.planner})"


def _trainer_class(name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_noisylabels.trainers import all_trainer_classes

    if name == "nnUNetTrainer":
        return nnUNetTrainer
    classes = all_trainer_classes()
    if name not in classes:
        raise ValueError(f"unknown trainer {name}; plugin trainers: {sorted(classes)}")
    return classes[name]


def _batch(trainer, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ps = [int(i) for i in trainer.configuration_manager.patch_size]
    bs = trainer.batch_size if hasattr(trainer, "batch_size") else trainer.configuration_manager.batch_size
    n_cls = trainer.label_manager.num_segmentation_heads
    # blobby labels: random classes on a coarse grid, upsampled
    coarse = torch.randint(0, n_cls, (bs, 1, *[max(1, s // 16) for s in ps]), generator=g).float()
    seg = torch.nn.functional.interpolate(coarse, size=ps, mode="nearest")
    data = torch.randn(bs, trainer.num_input_channels, *ps, generator=g) + seg
    scales = trainer._get_deep_supervision_scales()
    targets = [torch.nn.functional.interpolate(seg, size=[max(1, round(f * s)) for f, s in zip(sc, ps)],
                                               mode="nearest").to(torch.int16) for sc in scales]
    return {"data": data.to(device), "target": [t.to(device) for t in targets]}


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, plans: dict, dataset_json: dict, configuration: str, args) -> dict:
    import torch
    from torch import autocast
    from nnunetv2.utilities.helpers import dummy_context

    device = torch.device(args.device)
    cls = _trainer_class(name)
    plans = json.loads(json.dumps(plans))
    plans["continue_training"] = False
    trainer = cls(plans, configuration, 0, dataset_json, device)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    if args.softening_active and hasattr(trainer, "current_peer_weight"):
        trainer.current_epoch = trainer.num_epochs - 1  # past the ramp-up: the peer term is computed
    trainer.network.train()
    batch = _batch(trainer, device)

    for _ in range(args.warmup):
        trainer.train_step(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None

    # inference: one patch, deep supervision off, eval mode (what nnU-Net's sliding window runs)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    x = batch["data"][:1]
    ctx = (lambda: autocast(device.type, enabled=True)) if device.type == "cuda" else dummy_context
    inf_times = []
    with torch.no_grad():
        for i in range(args.warmup + args.inference_iters):
            t0 = time.perf_counter()
            with ctx():
                out = trainer.network(x)
            _sync(device)
            if i >= args.warmup:
                inf_times.append(time.perf_counter() - t0)
    assert isinstance(out, torch.Tensor), "eval-mode network must return one tensor"
    n_params = sum(p.numel() for p in trainer.network.parameters())
    result = {"trainer": name, "train_s_per_iter": statistics.median(times), "peak_mem_mib": peak,
              "infer_s_per_patch": statistics.median(inf_times), "params": n_params,
              "patch_size": list(trainer.configuration_manager.patch_size), "batch_size": batch["data"].shape[0]}
    del trainer, batch, out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def markdown(results: list[dict], header: dict) -> str:
    ref = results[0]
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| trainer | train s/iter | ratio | peak train mem (MiB) | ratio | inference s/patch | ratio | params |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] is not None else "n/a"
        mem_ratio = f"{r['peak_mem_mib'] / ref['peak_mem_mib']:.2f}" if r["peak_mem_mib"] is not None else "n/a"
        lines.append(f"| {r['trainer']} | {r['train_s_per_iter']:.4f} | "
                     f"{r['train_s_per_iter'] / ref['train_s_per_iter']:.2f} | {mem} | {mem_ratio} | "
                     f"{r['infer_s_per_patch']:.4f} | {r['infer_s_per_patch'] / ref['infer_s_per_patch']:.2f} | "
                     f"{r['params'] / 1e6:.1f}M |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="cost_twin_")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if args.dataset and k == "nnUNet_preprocessed":
            continue
        os.environ[k] = str(Path(tmp.name) / k)
        Path(os.environ[k]).mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_compile"] = "1" if args.compile else "0"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 1
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    # no preprocessed data is needed to time synthetic batches
    trainer_module.infer_dataset_class = lambda folder: None

    plans, dataset_json, source = _load_plans(args)
    configuration = args.configuration or ("3d_fullres" if "3d_fullres" in plans["configurations"] else "2d")
    results = []
    for name in args.trainers:
        print(f"measuring {name} ...", file=sys.stderr)
        results.append(measure(name, plans, dataset_json, configuration, args))
    header = {"plans": source, "configuration": configuration, "patch size": results[0]["patch_size"],
              "batch size": results[0]["batch_size"],
              "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "AMP": args.device == "cuda", "torch.compile": args.compile, "torch": torch.__version__,
              "timed iterations": f"{args.iters} train / {args.inference_iters} inference after {args.warmup} warm-up"}
    print(markdown(results, header))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"header": header, "results": results}, indent=2, default=str))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
