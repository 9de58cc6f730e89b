#!/usr/bin/env bash
# GPU check of the 8B path, one GPU, no network, no weights, under 8 minutes: a random LLaDA of LLaDA-8B's width
# (d_model 4096, 32 heads, mlp 12288, vocab 126464) and 4 layers; sampler tokens/s and MFU at gen 256 / 128 steps,
# one FSDP2 bf16 training step (full fine-tuning and LoRA) with wall time and peak memory; prints a table and
# writes it to bench/results/gpu_check-<gpu>.md (GPU only). Extra arguments go to bench/gpu_check.py (--cpu: tiny, on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ " $* " == *" --cpu "* ]] || ! command -v nvidia-smi >/dev/null; then
    exec timeout 470 "$PY" bench/gpu_check.py "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
mkdir -p bench/results
timeout 470 "$PY" bench/gpu_check.py "$@" | tee "bench/results/gpu_check-$GPU.md"
