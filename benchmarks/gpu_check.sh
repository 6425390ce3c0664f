#!/usr/bin/env bash
# benchmarks/gpu_check.sh: run crowdtk's CUDA paths on a machine with an NVIDIA GPU, and fail loudly on any error.
#
#   make gpu-check        (= benchmarks/gpu_check.sh; PARTB=DIR and GPU_CHECK_OUT=DIR override the defaults)
#
# What it runs, in order, each step announced on stderr as "== STEP":
#   1. bf16-autocast training steps (train --device cuda) of csrnet and lite, each without and with --cap, on real
#      ShanghaiTech Part B images (random 448-px crops, batch 1: the paper recipe's shape), printing s/step and images/s;
#   2. torchrun -m crowdtk train with NCCL (a one-process NCCL all_reduce, and crowdtk train under torchrun: with one GPU
#      crowdtk starts no process group for a single process, so its own NCCL path runs only where there are two GPUs);
#   3. strip-cap, crowdtk eval and crowdtk count on the GPU, checking that every count is finite;
#   4. bench --recipe paper on the same few images with a tiny schedule (the recipe's commands on CUDA);
#   5. the Part B 10% bench of full and mdc+cap on the GPU (one seed), printing its results.md table.
# csrnet starts from torchvision's cached ImageNet VGG16 weights when they are there, else from random weights
# (--no-pretrained); the script says which.
#
# Exit status:
#   0  every step passed
#   1  a step failed: the last line on stderr names it (its own error is just above)
#   3  no CUDA device here (no NVIDIA driver, or torch sees no device): nothing was run
#   4  no usable project venv (.venv/bin/python with torch) on a machine with an NVIDIA driver: run `make install`
#
# Everything is written under GPU_CHECK_OUT (default bench-out/gpu-check, ignored by git), emptied at the start.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

ME=benchmarks/gpu_check.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=.venv/bin/python
BIN=.venv/bin

# ------------------------------------------------------------------ is there a GPU? (before anything is written)
no_cuda() {
    echo "$ME: no CUDA device here; this script checks the GPU paths and runs nothing without one" >&2
    exit 3
}
# No NVIDIA driver (neither its tool nor its /proc entry, which containers given a GPU also have): no CUDA, and no
# need to wait for torch to say so.
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /proc/driver/nvidia/version ]]; then
    no_cuda
fi
if [[ ! -x $PY ]]; then
    echo "$ME: no project venv ($PY); run make install first" >&2
    exit 4
fi
cuda=0
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' || cuda=$?
if [[ $cuda == 3 ]]; then
    no_cuda
elif [[ $cuda != 0 ]]; then
    echo "$ME: $PY cannot import torch (exit $cuda); run make install" >&2
    exit 4
fi

PARTB=${PARTB:-../shared/data/ShanghaiTech/part_B}
OUT=${GPU_CHECK_OUT:-bench-out/gpu-check}
STEP="setting up"
trap 'echo "$ME: FAILED at step: $STEP (see the error above; files in $OUT)" >&2; exit 1' ERR
step() { STEP=$1; echo "== $STEP" >&2; }

for split in train_data test_data; do
    if [[ ! -d $PARTB/$split/images ]]; then
        echo "$ME: $PARTB/$split/images not found; point PARTB at ShanghaiTech part_B" >&2
        false
    fi
done
# Emptied only when it is this script's own folder (its marker is there), so a mistyped GPU_CHECK_OUT removes nothing.
if [[ -e $OUT && ! -e $OUT/.gpu-check && -n $(ls -A "$OUT" 2>/dev/null) ]]; then
    echo "$ME: $OUT exists and was not made by this script; choose another GPU_CHECK_OUT" >&2
    false
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/.gpu-check"
W=$OUT/work
mkdir -p "$W"

"$PY" - <<'EOF'
import torch
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s); torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}; bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

# ------------------------------------------------------------------ a few real Part B images
step "a subset of Part B (100 train, 20 test images) with 10% random strips labeled"
subset() {  # subset SPLIT N: the first N images of a split (by name) and their ground truth, as symlinks
    local split=$1 n=$2 dest=$W/partB-small/$1 src img
    local -a images
    src=$(cd "$PARTB/$split" && pwd)
    mkdir -p "$dest/images" "$dest/ground-truth"
    mapfile -t images < <(ls "$src/images" | sort -V)
    for img in "${images[@]:0:n}"; do
        ln -s "$src/images/$img" "$dest/images/$img"
        ln -s "$src/ground-truth/GT_${img%.*}.mat" "$dest/ground-truth/GT_${img%.*}.mat"
    done
}
subset train_data 100
subset test_data 20
"$BIN/crowdtk" index "$W/partB-small/train_data" -o "$W/train.jsonl" -q
"$BIN/crowdtk" index "$W/partB-small/test_data" -o "$W/test.jsonl" -q
"$BIN/crowdtk" select "$W/train.jsonl" --budget 0.1 --strategy random --seed 0 -o "$W/regions.jsonl" -q
"$BIN/crowdtk" import "$W/regions.jsonl" --oracle "$W/train.jsonl" -o "$W/labels.jsonl" -q

VGG=$("$PY" -c 'from crowdtk.models.weights import torchvision_vgg16_cache_path as p; print(p())')
if [[ -f $VGG ]]; then
    CSRNET_START=()
    echo "csrnet: ImageNet VGG16 weights from $VGG"
else
    CSRNET_START=(--no-pretrained)
    echo "csrnet: no cached VGG16 weights ($VGG): random weights (--no-pretrained); the timings hold, the counts mean nothing"
fi

# ------------------------------------------------------------------ 1. training steps and their speed
# Three epochs of 100 one-crop steps; the speed is epoch 2's (from its log line to the previous one): no start-up,
# no validation (only after the last epoch), one checkpoint write per 100 steps (a 400-image bench epoch has one per 400).
EPOCH_STEPS=100
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
for model in csrnet lite; do
    for cap in no yes; do
        options=(--model "$model")
        name=$model
        if [[ $cap == yes ]]; then options+=(--cap); name=$model-cap; fi
        if [[ $model == csrnet ]]; then options+=(${CSRNET_START[@]+"${CSRNET_START[@]}"}); fi
        step "train $name: bf16 autocast on the GPU"
        "$BIN/crowdtk" train "$W/labels.jsonl" "${options[@]}" --epochs 3 --batch-size 1 --crop 448 \
            --val-frac 0 --val-every 3 --keep last --lr-schedule cosine --lr 1e-5 --device cuda -o "$W/$name.safetensors" 2>&1 \
            | stamp | tee "$W/$name.log"
        awk -v name="$name" -v n="$EPOCH_STEPS" '
            $2 == "epoch" && $3 ~ /^1\// { t1 = $1 }
            $2 == "epoch" && $3 ~ /^2\// { t2 = $1 }
            END { if (!t1 || !t2) exit 1
                  printf "speed %-11s %.4f s/step, %.1f images/s (448-px crops, batch 1)\n", name, (t2 - t1) / n, n / (t2 - t1) }' \
            "$W/$name.log" | tee -a "$W/speed.txt"
    done
done

# ------------------------------------------------------------------ 2. torchrun and NCCL
step "NCCL all_reduce under torchrun (one process on one GPU)"
cat > "$W/nccl_smoke.py" <<'EOF'
import os

import torch
import torch.distributed as dist

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
x = torch.full((1,), float(dist.get_rank() + 1), device="cuda")
dist.all_reduce(x)
world = dist.get_world_size()
assert x.item() == world * (world + 1) / 2, x.item()
dist.barrier()
print(f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}: all_reduce over {world} rank(s) ok")
dist.destroy_process_group()
EOF
"$BIN/torchrun" --standalone --nproc-per-node 1 "$W/nccl_smoke.py"

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
NPROC=$(( GPUS >= 2 ? 2 : 1 ))
step "torchrun --nproc-per-node $NPROC -m crowdtk train (lite, --cap)"
if (( NPROC == 1 )); then
    echo "one GPU: one process, so crowdtk starts no process group (its NCCL path needs two GPUs; the smoke test above ran NCCL)"
fi
"$BIN/torchrun" --standalone --nproc-per-node "$NPROC" -m crowdtk train "$W/labels.jsonl" --cap --model lite --epochs 1 \
    --batch-size 2 --crop 448 --val-frac 0 --device cuda -o "$W/torchrun.safetensors" -q
test -s "$W/torchrun.safetensors"

# ------------------------------------------------------------------ 3. strip-cap, eval and count on the GPU
finite_eval() {  # finite_eval FILE: eval --json's MAE is a number and no prediction was NaN or infinite
    "$PY" - "$1" <<'EOF'
import json, math, sys
m = json.load(open(sys.argv[1]))
assert math.isfinite(m["mae"]) and not m.get("non_finite"), m
print(f"  {sys.argv[1]}: MAE {m['mae']:.2f}, RMSE {m['rmse']:.2f} on {m['n_images']} images")
EOF
}
for name in csrnet csrnet-cap lite lite-cap torchrun; do
    model=$W/$name.safetensors
    if [[ $name == *cap || $name == torchrun ]]; then
        step "strip-cap $name"
        "$BIN/crowdtk" strip-cap "$model" -o "$W/$name.infer.safetensors" -q
        model=$W/$name.infer.safetensors
    fi
    step "eval $name on the GPU"
    "$BIN/crowdtk" eval "$model" "$W/test.jsonl" --json --device cuda -q > "$W/$name.eval.json"
    finite_eval "$W/$name.eval.json"
done
step "count on the GPU (csrnet and lite, with an overlay)"
for name in csrnet lite; do
    "$BIN/crowdtk" count "$W/$name.safetensors" "$W/partB-small/test_data/images" --device cuda --overlay "$W/$name-overlay" -q \
        > "$W/$name.counts.jsonl"
    "$PY" - "$W/$name.counts.jsonl" <<'EOF'
import json, math, sys
counts = [json.loads(line)["count"] for line in open(sys.argv[1]) if line.strip()]
assert len(counts) == 20 and all(c is not None and math.isfinite(c) for c in counts), counts
print(f"  {sys.argv[1]}: {len(counts)} finite counts")
EOF
done

# ------------------------------------------------------------------ 4. the paper recipe's commands on the GPU
step "bench --recipe paper on the subset (50 steps, one seed, mdc+cap)"
"$BIN/crowdtk" bench --recipe paper --train "$W/train.jsonl" --test "$W/test.jsonl" -o "$W/recipe-paper" --methods mdc+cap \
    --seeds 1 --steps 50 --warmup-steps 20 ${CSRNET_START[@]+"${CSRNET_START[@]}"} -q > /dev/null
test -s "$W/recipe-paper/results.json"

# ------------------------------------------------------------------ 5. Part B at 10%: full and mdc+cap on the GPU
# The default recipe's whole schedule (3000 steps, 1500 for the warm-up counter). Estimate: on the 2-core CPU this is
# 3.4 min (full) + 4.6 min (mdc+cap with its warm-up) per seed (README, Benchmarks) plus ~2 min of indexing and
# feature caching at half resolution, about 10 min; it fits in 8 min once the GPU is 1.25x faster than two CPU
# cores. On an H100/H200 the frozen lite front end's 1,100 maps and the 4,500 small back-end steps are
# launch-bound (~10 ms a step): about 2-3 min in all. The numbers compare with the README's CPU table.
step "bench: Part B, 10%, full and mdc+cap, one seed, on the GPU"
started=$SECONDS
"$BIN/crowdtk" bench --train "$PARTB/train_data" --test "$PARTB/test_data" -o "$OUT/bench-partB" --methods full,mdc+cap --seeds 1 \
    --device cuda -q > /dev/null
echo "bench: $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s (sized for under 8 min)"
cat "$OUT/bench-partB/results.md"
echo "README's CPU tier (3 seeds): full 15.53 ± 0.13, mdc+cap 19.31 ± 0.30 MAE"

STEP="done"
echo
cat "$W/speed.txt"
echo "$ME: every step passed; files in $OUT"
