#!/usr/bin/env bash
# Cost of NoiseRobustTrainer against nnUNetTrainer on a CUDA GPU, side by side in one process per setting
# (benchmarks/cost_twin.py): training time per iteration, peak GPU memory and inference time per patch, with AMP as
# nnU-Net uses it on CUDA, without and with torch.compile, for nnU-Net's default 3d_fullres and 2d plans of a
# synthetic dataset. Writes gpu_check.md (one table per setting) and a JSON file and a log per setting to OUT_DIR.
#
# Usage:   bash benchmarks/gpu_check.sh [OUT_DIR]             (needs a CUDA GPU; about 5-8 minutes)
#          bash benchmarks/gpu_check.sh --dry-run [OUT_DIR]   (CPU, tiny 2D plans, one iteration: checks the plumbing)
# Every setting gets at most STEP_TIMEOUT seconds (default 150); the whole script stays under 8 minutes.
set -u -o pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
OUT_DIR="${1:-gpu_check_output}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
STEP_TIMEOUT="${STEP_TIMEOUT:-150}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"

MODE_FLAG=""
if [ "$DRY_RUN" = 1 ]; then
    MODE_FLAG=" --dry-run"
    COMMON=(--device cpu --warmup 0 --iters 1 --inference_iters 1)
    SETTINGS=("2d_dry_run|--synthetic_shape 32 32")
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA GPU visible to torch; use --dry-run on a CPU machine" >&2
        exit 2
    fi
    COMMON=(--device cuda --warmup 5 --iters 20 --inference_iters 20)
    SETTINGS=("3d_fullres_amp|--synthetic_shape 128 128 128 -c 3d_fullres"
              "3d_fullres_amp_compile|--synthetic_shape 128 128 128 -c 3d_fullres --compile"
              "2d_amp|--synthetic_shape 512 512 -c 2d"
              "2d_amp_compile|--synthetic_shape 512 512 -c 2d --compile")
fi

{
    echo "# NoiseRobustTrainer vs nnUNetTrainer: cost on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "Command: \`bash benchmarks/gpu_check.sh$MODE_FLAG $OUT_DIR\`"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>/dev/null
} > "$REPORT"

failed=0
for setting in "${SETTINGS[@]}"; do
    name="${setting%%|*}"
    read -r -a extra <<< "${setting#*|}"
    echo "== $name" >&2
    {
        echo
        echo "## $name"
        echo
    } >> "$REPORT"
    # nnU-Net's planning output goes to the setting's log; the report gets the table rendered from the JSON
    if timeout "$STEP_TIMEOUT" "$PYTHON" "$HERE/cost_twin.py" "${COMMON[@]}" "${extra[@]}" \
            --json "$OUT_DIR/$name.json" > "$OUT_DIR/$name.log" 2>&1; then
        "$PYTHON" -c "import json, sys; sys.path.insert(0, sys.argv[1]); from cost_twin import markdown
d = json.load(open(sys.argv[2])); print(markdown(d['results'], d['header']))" "$HERE" "$OUT_DIR/$name.json" \
            >> "$REPORT"
    else
        echo "(failed or timed out after ${STEP_TIMEOUT} s: exit $?; see $name.log)" >> "$REPORT"
        failed=1
    fi
done
echo "wrote $REPORT" >&2
exit $failed
