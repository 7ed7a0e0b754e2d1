#!/usr/bin/env bash
# The GPU checks that run without vLLM or Ray: on a machine with one CUDA device and PyTorch (the lent
# H100/H200 has torch and transformers but no vLLM, Ray or pydantic; pydantic travels as wheels in .whl/).
#
#   bash deploy/gpu_check.sh [OUT_DIR]
#
# 1. learner GPU tests (FSDP2 bf16 on CUDA vs the fp32 CPU step, resume, bf16 export, a pure NCCL group)
# 2. pretraining / SFT / DPO on CUDA (one process = a 1-rank NCCL FSDP2 group, bf16 compute)
# 3. learner throughput on a 252M-parameter Qwen3, and the learner step's memory with a 152k vocabulary
#    before/after chunked log-probs (bench/learner.py, docs/learner.md)
# 4. the default `flywheel pretrain` (configs/pretrain_tiny.yaml) on the GPU, timed
# 5. the collective weight transport's NCCL backend without vLLM or Ray: the sender's process group and
#    device buckets on one GPU; with two GPUs a receiver on the second gets every tensor bit-exact
# 6. when vLLM and Ray are installed: the rollout engine on the GPU, weight updates into it through the
#    object store and the collective transport (gloo; NCCL with two GPUs), and vLLM's NCCL weight-transfer path
# Logs go to OUT_DIR (default $OUT, else /tmp/gpu_check); a summary is printed last.
set -u
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, pydantic; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'pydantic', pydantic.__version__, torch.cuda.get_device_name())" || exit 1

declare -A rc
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log, keep the exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc[$name]=$?
  tail -n 8 "$out/$name.log"
  echo "=== $name: exit ${rc[$name]} in $((SECONDS - t0)) s"
}
PYTEST=(python3 -m pytest -p no:cacheprovider -o "addopts=-ra --strict-markers" -v)
step learner_tests 240 "${PYTEST[@]}" tests/integration/learner/test_learner_gpu.py
step pretraining_tests 300 "${PYTEST[@]}" tests/integration/pretraining/test_pretrain_gpu.py \
  tests/integration/pretraining/test_trainers.py
step throughput 180 python3 bench/learner.py throughput --device cuda --hidden 1024 --layers 16 --vocab 32768 \
  --seq 1024 --batch 32 --micro 8
step learner_memory 240 python3 bench/learner.py memory --device cuda --cases 1024x2 4096x2 16384x2 --timeout 100
step pretrain_default 240 python3 -m services.cli pretrain --out_dir /tmp/gpu_pretrain
step nccl_weight_group 180 "${PYTEST[@]}" tests/integration/rollout/test_gpu_collective.py
if python3 -c "import vllm, ray" 2>/dev/null; then
  step rollout_gpu_sync 600 "${PYTEST[@]}" -m gpu tests/integration/rollout/test_gpu_weight_sync.py
else
  echo "=== rollout_gpu_sync: skipped (no vLLM or Ray on this machine)"
fi

echo "=== summary"
grep -hE "passed|failed|error" "$out/learner_tests.log" "$out/pretraining_tests.log" "$out/nccl_weight_group.log" \
  | tail -n 6
grep -h "median tokens/s\|peak GPU" "$out/throughput.log"
grep -h "^| " "$out/learner_memory.log"
grep -h "pretraining done\|on cuda" "$out/pretrain_default.log"
for k in learner_tests pretraining_tests throughput learner_memory pretrain_default nccl_weight_group rollout_gpu_sync; do echo "$k: exit ${rc[$k]:-?}"; done
