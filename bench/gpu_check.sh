#!/usr/bin/env bash
# GPU readiness check (docs/scaling.md, "GPU check"): one script, about 10 minutes on one H100/H200-class GPU.
#
#   bench/gpu_check.sh [--dry-run] [OUT_DIR]        (OUT_DIR default: bench/gpu_check; $OUT on the device machine)
#
# 1. env:        nvidia-smi, Python and package versions.
# 2. methods:    bf16 training + evaluation of smollm2-135m on the `small` preset (standard order 1) for seqlora,
#                inclora, amlora, sapt-lora, seqlora+migu (bench/reproduce.py, runs under OUT_DIR/runs).
# 3. engines:    `accelerate launch` on one GPU with the shipped DeepSpeed ZeRO-2/3 and FSDP2 configs
#                (continual_lm/accelerate_configs/), a demo stream of seqlora each.
# 4. throughput: training and generation tokens/s of seqlora vs a plain peft + transformers loop, per attention
#                kernel (eager, sdpa, flash_attention_2 where installed): bench/gpu_check.py.
# Step limits (120 + 5 x 120 + 3 x 80 + 120 s) cap it at 18 minutes; an H100 ran a small-preset seqlora run in
# under a minute (bench/GPU_CHECK.md). Every step runs under `timeout`, logs to OUT_DIR/<step>.log and appends
# "step rc seconds" to OUT_DIR/summary.tsv; a failed step does not stop the others (exit status 1 if any failed).
#
# --dry-run: the same steps sized for a CPU in seconds (tiny-random-llama, demo stream, seqlora only, no engines):
# what tests/test_gpu_check.py runs. Needs: the data (--data-dir / $CONTINUAL_LM_DATA, default ../shared/data) and,
# for a real run, smollm2-135m in the cache ($CONTINUAL_LM_CACHE/models/smollm2-135m, or its GGUF to convert).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-$HERE/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
SUMMARY="$OUT_DIR/summary.tsv"
printf 'step\trc\tseconds\n' > "$SUMMARY"
FAILED=0

step() {  # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2" start rc
    shift 2
    echo "== $name: $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        echo "   failed (rc $rc): tail of $OUT_DIR/$name.log"
        tail -5 "$OUT_DIR/$name.log"
    fi
}

step env 120 bash -c "(nvidia-smi || echo 'no nvidia-smi') && \"$PY\" \"$HERE/gpu_check.py\" --versions"

if [ "$DRY" -eq 1 ]; then
    step method-seqlora 300 "$PY" -m continual_lm run --benchmark demo --method seqlora --model tiny-random-llama \
        --max-train-per-task 4 --max-test-per-task 2 --batch-size 2 --no-progress --output-dir "$OUT_DIR/runs/seqlora"
    step throughput 300 "$PY" "$HERE/gpu_check.py" --model tiny-random-llama --device cpu --dtype no \
        --kernels eager sdpa --batch 2 --seq-len 32 --reps 2 --out "$OUT_DIR"
else
    for method in seqlora inclora amlora sapt-lora seqlora+migu; do
        step "method-$method" 120 "$PY" "$HERE/reproduce.py" --preset small --benchmarks standard --methods "$method" \
            --mixed-precision bf16 --runs-dir "$OUT_DIR/runs" --output "$OUT_DIR/RESULTS.md"
    done
    for engine in deepspeed_zero2 deepspeed_zero3 fsdp; do
        step "engine-$engine" 80 "$PY" -m accelerate.commands.launch \
            --config_file "continual_lm/accelerate_configs/$engine.yaml" --num_processes 1 \
            -m continual_lm run --benchmark demo --method seqlora --model smollm2-135m --no-progress \
            --output-dir "$OUT_DIR/engines/$engine"
    done
    step throughput 120 "$PY" "$HERE/gpu_check.py" --out "$OUT_DIR"
fi
cat "$SUMMARY"
exit "$FAILED"
