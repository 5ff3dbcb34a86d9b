#!/usr/bin/env bash
# Seconds per training iteration of nnU-Net's planned 3d_fullres and of 3d_fullres_cpu (nnUNetv2_nl_plan_cpu) on the
# MSD hippocampus, nnUNetTrainer and NoiseRobustTrainer, with nnU-Net's real data loading and augmentation
# (nnUNet_n_proc_DA=1). One short epoch per run; the epoch time comes from nnU-Net's training log.
#
# Usage: bash benchmarks/time_cpu_plans.sh WORK_DIR [DATA_DIR]   (DATA_DIR default ../shared/data; ~6 min on 2 cores)
set -eu -o pipefail
WORK="$(mkdir -p "$1" && cd "$1" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${2:-$HERE/../../shared/data}"
PYTHON="${PYTHON:-python}"
BIN="$(dirname "$(command -v "$PYTHON")")"
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/pre" nnUNet_results="$WORK/res"
export nnUNet_compile=0 nnUNet_def_n_proc=2 nnUNet_n_proc_DA=1
export nnUNet_nl_epochs=1 nnUNet_nl_val_iterations=1 nnUNet_nl_skip_final_validation=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
[ -d "$nnUNet_raw/Dataset504_Hippocampus" ] || "$PYTHON" "$HERE/convert_hippocampus.py" -d 504 --num_test 50 --data "$DATA"
[ -f "$nnUNet_preprocessed/Dataset504_Hippocampus/nnUNetPlans.json" ] || \
    "$BIN/nnUNetv2_plan_and_preprocess" -d 504 -c 3d_fullres -np 2 > "$WORK/plan.log" 2>&1
"$BIN/nnUNetv2_nl_plan_cpu" -d 504
echo "| configuration | trainer | iterations | epoch time (s) | s/iteration |"
echo "| --- | --- | --- | --- | --- |"
for cfg in 3d_fullres_cpu 3d_fullres; do
    iters=30; [ "$cfg" = 3d_fullres ] && iters=10
    for tr in nnUNetTrainer_budget NoiseRobustTrainer_budget; do
        out="$nnUNet_results/Dataset504_Hippocampus/${tr}__nnUNetPlans__$cfg"
        rm -rf "$out"
        nnUNet_nl_iterations=$iters "$BIN/nnUNetv2_train" 504 "$cfg" all -tr "$tr" -device cpu > "$WORK/train_${cfg}_${tr}.log" 2>&1
        t=$(grep -o "Epoch time: [0-9.]*" "$out"/fold_all/training_log_*.txt | head -1 | grep -o "[0-9.]*$")
        echo "| $cfg | $tr | $iters | $t | $("$PYTHON" -c "print(f'{$t / $iters:.3f}')") |"
    done
done
