#!/usr/bin/env bash
# Every CUDA check of anyformer in one command, for a GPU machine (CI has none).
#
#   bash scripts/device_check.sh          # from the repository root
#
# Stages (each with its own time limit; a failing stage does not stop the later ones):
#   env        pydantic from .whl/ if the image lacks it; nvidia-smi, torch and CUDA versions
#   tests      python -m pytest -q -m cuda tests/cuda
#   benchmark  python benchmarks/gpu_throughput.py (GPT-2 small: tokens/s, FLOP/s, MFU)
#   cli-run    python -m anyformer run quickstart train.device=cuda (a short run)
# Logs go to $OUT (the device tool's result folder) or, when OUT is unset, to
# /tmp/anyformer-device-check; so do the new benchmark record, the CLI run's metrics.jsonl
# and report.md, and summary.txt (eight files at most: what the device tool brings back).
# The limits add up to 7 minutes 50 seconds. Exit status: 0 if every stage passed, else 1.
#
# The device image has torch, numpy, safetensors, rich, pyyaml, matplotlib and pytest but
# no pydantic: run scripts/fetch_device_wheels.sh on a machine with a package registry first
# and carry the .whl/ folder along.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT="$PWD"
LOGS="${OUT:-/tmp/anyformer-device-check}"
mkdir -p "$LOGS"
PY="${PYTHON:-python3}"
RUNS=/tmp/anyformer-device-runs
export PYTHONUNBUFFERED=1
export PYTHONPATH="/tmp/site:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PY ROOT LOGS RUNS

SUMMARY=()
FAILED=0

# stage NAME LIMIT_S FUNCTION: run FUNCTION under `timeout`, its output in $LOGS/NAME.log
stage() {
    local name=$1 limit=$2 fn=$3 log="$LOGS/$1.log" start rc seconds verdict
    echo "=== $name (limit ${limit}s, log $log)"
    start=$(date +%s)
    timeout --kill-after=15 "$limit" bash -c "$fn" >"$log" 2>&1
    rc=$?
    seconds=$(($(date +%s) - start))
    tail -n 40 "$log"
    if [[ $rc -eq 0 ]]; then
        verdict=PASS
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
        verdict="FAIL (timed out after ${limit}s)"
    else
        verdict="FAIL (exit $rc)"
    fi
    [[ $rc -eq 0 ]] || FAILED=1
    SUMMARY+=("$(printf '%-10s %-28s %4ss  %s' "$name" "$verdict" "$seconds" "$log")")
}

# ---------------------------------------------------------------- env
install_pydantic() {
    if "$PY" -c "import pydantic" 2>/dev/null; then
        echo "pydantic is installed: $("$PY" -c 'import pydantic; print(pydantic.VERSION)')"
        return 0
    fi
    if ! compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        echo "ERROR: pydantic is not installed and there is no .whl/ folder of wheels."
        echo "On a machine with a package registry run: bash scripts/fetch_device_wheels.sh"
        echo "and carry the .whl folder to this machine (device tool: carry [\".whl\"])."
        return 1
    fi
    local packages=(pydantic pydantic_core annotated-types typing-inspection)
    # pydantic 2.14 needs typing_extensions >= 4.16; install the carried one only if older
    if ! "$PY" -c "
import sys
from importlib.metadata import version
sys.exit(tuple(int(x) for x in version('typing_extensions').split('.')[:2]) < (4, 16))
" 2>/dev/null; then
        packages+=(typing_extensions)
    fi
    echo "installing ${packages[*]} from .whl/ into /tmp/site"
    # --find-links lets pip pick the wheel that fits this interpreter (.whl/ may hold
    # pydantic_core for several Python versions)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site --find-links "$ROOT/.whl" "${packages[@]}"
}
export -f install_pydantic

env_stage() {
    install_pydantic || return 1
    nvidia-smi || echo "(nvidia-smi failed)"
    "$PY" - <<'EOF'
import platform
import torch
import pydantic
import anyformer
from anyformer.training.throughput import peak_flops

print(f"python {platform.python_version()}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
      f"cuDNN {torch.backends.cudnn.version()}; pydantic {pydantic.VERSION}")
print(f"anyformer from {anyformer.__file__}")
assert torch.cuda.is_available(), "torch sees no CUDA device"
dev = torch.device("cuda")
print(f"device: {torch.cuda.get_device_name(dev)}; capability {torch.cuda.get_device_capability(dev)}; "
      f"bf16 {torch.cuda.is_bf16_supported()}; devices {torch.cuda.device_count()}")
peaks = {p: peak_flops(dev, p) for p in ("bf16", "fp16", "fp32")}
print(f"peak FLOP/s in anyformer's table: {peaks}")
assert peaks["bf16"], "the GPU is not in anyformer.training.throughput.PEAKS: MFU will be missing"
EOF
}
export -f env_stage

# ---------------------------------------------------------------- tests
tests_stage() {
    local out rc
    out=$(mktemp)
    "$PY" -m pytest -q -m cuda tests/cuda --durations=15 | tee "$out"
    rc=${PIPESTATUS[0]}
    # on a GPU machine nothing may be skipped: a skip means torch saw no CUDA device
    if [[ $rc -eq 0 ]] && tail -n 1 "$out" | grep -q skipped; then
        echo "ERROR: CUDA tests were skipped on the device machine"
        rc=1
    fi
    rm -f "$out"
    return "$rc"
}
export -f tests_stage

# ---------------------------------------------------------------- benchmark
benchmark_stage() {
    local marker
    marker=$(mktemp)
    "$PY" benchmarks/gpu_throughput.py
    local rc=$?
    # the record is benchmarks/results/gpu_throughput-<date>.json: bring back what it wrote
    find benchmarks/results -name 'gpu_throughput-*.json' -newer "$marker" \
        -exec cp -v {} "$LOGS/" \;
    rm -f "$marker"
    return $rc
}
export -f benchmark_stage

# ---------------------------------------------------------------- CLI run
cli_stage() {
    rm -rf "$RUNS"
    "$PY" -m anyformer run quickstart train.device=cuda train.steps=300 train.eval_every=300 \
        train.checkpoint_every=300 train.eval_size=256 train.progress=false --out "$RUNS"
    local rc=$? folder
    folder=$(find "$RUNS" -mindepth 1 -maxdepth 1 -type d -name 'quickstart-*' | head -n 1)
    if [[ -z "$folder" ]]; then
        echo "no run folder under $RUNS"
        return 1
    fi
    echo "run folder: $folder"
    for name in metrics.jsonl report.md; do
        [[ -f "$folder/$name" ]] && cp -v "$folder/$name" "$LOGS/cli-run-$name"
    done
    if [[ ! -f "$folder/metrics.jsonl" ]]; then
        echo "the run wrote no metrics.jsonl"
        return 1
    fi
    "$PY" - "$folder/metrics.jsonl" <<'EOF' || rc=1
import json
import sys

lines = [json.loads(x) for x in open(sys.argv[1])]
train = [r for r in lines if "split" not in r]
missing = [k for k in ("tokens_per_s", "flops_per_s", "mfu") if k not in train[-1]]
last = train[-1]
print(f"first loss {train[0]['loss']:.3f}, last loss {last['loss']:.3f} (step {last['step']}); "
      f"tokens/s {last.get('tokens_per_s', 0):,.0f}; MFU {last.get('mfu')}")
if missing:
    sys.exit(f"the last training line lacks {missing}")
EOF
    return $rc
}
export -f cli_stage

stage env 60 env_stage
stage tests 200 tests_stage
stage benchmark 150 benchmark_stage
stage cli-run 60 cli_stage

echo
echo "=== summary (logs in $LOGS)"
printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.txt"
exit $FAILED
