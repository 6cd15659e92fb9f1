#!/usr/bin/env bash
# One go on a lent NVIDIA GPU (H100/H200): install, check, conformance, benchmarks, logs in $OUT.
#
#   device tool:  bash tests/benchmarks/gpu_run.sh      (OUT is set by the tool; at most 9.5 minutes,
#                 run(timeout_s=600) once, then give_back)
#
# Each part has its own time limit, set against a 15-minute device budget that must leave room
# for one rerun; a part that fails or runs out is logged and the next one still runs. Every log
# and every results file lands in $OUT, which the device tool copies back.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPCOURSE_PROGRESS=0
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }
part() {  # part NAME SECONDS COMMAND...: run with a limit, keep its log and status
    local name=$1 limit=$2; shift 2
    log "start $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    log "end $name: rc=$rc"
    STATUS="$STATUS $name=$rc"
}

STATUS=""
log "machine: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
nvidia-smi >>"$OUT/run.log" 2>&1

# 1. The lent machine reaches no registry: its own python3 holds CUDA torch (2.11 when last
#    seen), numpy, ml-dtypes, scikit-learn, tqdm, psutil, pytest and hypothesis, which is all the
#    engine, the bench and the conformance suite need; mpcourse runs from this tree. MLX's CUDA
#    backend (mlx[cuda]) is not there: carry its wheels in .whl (see the device tool's README:
#    pip download --platform manylinux_2_35_x86_64 --python-version 3.12 ... mlx mlx-cuda) and
#    they are installed here; without them the mlx:gpu rows are skipped with that reason.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    part wheels 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name(0)); print('numpy', numpy.__version__)" >>"$OUT/run.log" 2>&1
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|ml.dtypes|mlx|scikit-learn|tqdm|psutil) " >>"$OUT/run.log"
# 2. What runs here, with two real training steps per backend:device x precision.
part doctor 60 python3 -m mpcourse doctor

# 3. The device conformance suite for every backend:device found (torch:cuda, mlx:gpu, the CPUs).
part conformance 150 python3 -m pytest tests/test_devices.py -q -p no:cacheprovider -rA

# 4. The recorded GPU results: large MLP (3x4096, batch 512/1024) and the transformers in fp32,
#    tf32, fp16, bf16 (and fp8 where the engine has it), side by side in one run.
# The preset's grid cut to fit: 2 models x 1 batch x 4-5 precisions, <= 8 s each (about 90 s).
part bench 240 python3 -m mpcourse bench --preset gpu --models mlp:large,transformer:large --batches 512 \
    --steps 30 --max-case-seconds 8 --no-progress --out "$OUT/results.jsonl"

# 5. Engine overhead against a hand-written AMP loop, alternated in one run.
part overhead 60 python3 tests/benchmarks/engine_overhead.py --device cuda --precisions fp32,fp16,bf16 --rounds 6

log "done:$STATUS"   # at most 8 files come back: run.log, one log per part, results.jsonl
