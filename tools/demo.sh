#!/usr/bin/env bash
# The method end to end on generated data, as the shell pipeline a user would write
# (Algorithm 1 of the paper, lite model, 10% budget), next to the None-or-All baseline.
# Usage: tools/demo.sh [OUT_DIR]   (make demo runs it with .venv/bin on PATH)
set -euo pipefail
out=${1:-demo-out}
EPOCHS=${EPOCHS:-12}
rm -rf "$out" && mkdir -p "$out" && cd "$out"
run() { echo "+ $*" >&2; "$@"; }
common=(--model lite --crop 128 --batch-size 4 -q)

run crowdtk synth -o data -q
pool=data/train/manifest.jsonl test=data/test/manifest.jsonl
# Round 1: warm-up strips on 20% of the images, labeled by the oracle (ground truth).
run crowdtk select "$pool" --budget 0.1 --warmup-frac 0.2 --strategy random -o warmup.regions.jsonl
run crowdtk import warmup.regions.jsonl --oracle "$pool" -o warmup.labels.jsonl
run crowdtk warmup warmup.labels.jsonl "${common[@]}" --epochs "$EPOCHS" -o warmup.safetensors
# Round 2: MDC on the remaining images with the rest of the budget.
run crowdtk vectors warmup.safetensors "$pool" --exclude warmup.regions.jsonl -o vectors.npz -q
run crowdtk select "$pool" --budget 0.1 --strategy mdc --vectors vectors.npz --exclude warmup.regions.jsonl -o mdc.regions.jsonl
run crowdtk import mdc.regions.jsonl --oracle "$pool" --merge warmup.labels.jsonl -o labels.jsonl
run crowdtk train labels.jsonl --cap --init warmup.safetensors "${common[@]}" --epochs "$EPOCHS" -o mdc_cap.safetensors
run crowdtk strip-cap mdc_cap.safetensors -o mdc_cap.infer.safetensors
run crowdtk eval mdc_cap.infer.safetensors "$test" --json -q > mdc_cap.eval.json
# Baseline: None-or-All (random whole images, same budget, no CAP).
run crowdtk select "$pool" --budget 0.1 --strategy none-or-all -o noa.regions.jsonl
run crowdtk import noa.regions.jsonl --oracle "$pool" -o noa.labels.jsonl
run crowdtk train noa.labels.jsonl "${common[@]}" --epochs "$((EPOCHS * 2))" -o noa.safetensors
run crowdtk eval noa.safetensors "$test" --json -q > noa.eval.json
python3 - <<'PY'
import json
for name, path in (("none-or-all", "noa.eval.json"), ("mdc+cap", "mdc_cap.eval.json")):
    r = json.load(open(path))
    print(f"{name:<12} MAE {r['mae']:7.2f}  RMSE {r['rmse']:7.2f}  ({r['n_images']} test images)")
PY
