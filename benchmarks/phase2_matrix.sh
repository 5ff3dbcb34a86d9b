#!/usr/bin/env bash
# Does phase 2 earn its cost? NoiseRobustTrainer on the hard revised labels against nnU-Net on the same labels (the
# bar) and on the clean pairs alone, at one equal budget, 3 training seeds, on the four settings: JSRT lung (Markov,
# alpha/beta, boxes) and the JSRT 3-class map (Markov). Each setting is one resumable run_benchmark.py work folder;
# its results.md has the paired bootstrap CIs per test case and the peer-activity table; for pairs of arms not in
# it: python benchmarks/bench_stats.py WORK --arm A --bar B.
#
# Usage: bash benchmarks/phase2_matrix.sh WORK_ROOT [EPOCHS] [DEVICE]
#   EPOCHS: epochs of 25 iterations per arm (default 40); DEVICE: cpu (default) or cuda.
#   ARMS (environment) replaces the arms, e.g. add nnunet_revised_band robust_revised_band robust_revised_band_noPeer
#   for the uncertain-band designs (BENCHMARKS.md 3.1).
# Cost on the idle 2-core CPU machine at 40 x 25: an arm ~2.5-4.5 min for nnU-Net, ~7 min for the twins, phase 1
# ~6 min per seed (48 epochs), so about 1 h per setting and 4 h in all. Run one setting by picking its line.
set -eu -o pipefail
ROOT="$(mkdir -p "$1" && cd "$1" && pwd)"
EPOCHS="${2:-40}"
DEVICE="${3:-cpu}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
ARMS="${ARMS:-nnunet_clean_subset nnunet_revised robust_revised}"
run() {  # name source protocol revision_epochs
    "$PYTHON" "$HERE/run_benchmark.py" --source "$2" --size 64 --protocol "$3" --clean_fraction 0.1 --mode cpu \
        --device "$DEVICE" --epochs "$EPOCHS" --iterations 25 --revision_epochs "$4" --seeds 0 1 2 \
        --no_label_quality --work "$ROOT/$1" --arms $ARMS
}
run lung_markov jsrt-lung markov 24
run lung_alpha_beta jsrt-lung alpha_beta 48
run lung_box jsrt-lung box 48
run multi_markov jsrt-multi markov 48
