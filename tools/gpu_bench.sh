#!/usr/bin/env bash
# Run the whole benchmark on a lent GPU in one call: bench kernels, bench loaders (device-resident) and
# bench throughput, results under bench/results/ named after the device.
#
#   tools/gpu_bench.sh fetch-wheels .whl     # here, once: py3.12 wheels the GPU image lacks (about 16 MB)
#   tools/gpu_bench.sh run [.whl] [-- bench throughput options]   # there, in the repository root
#
# The GPU image (python 3.12, torch 2.11+cu130, triton 3.6) has no diffusers, zarr, webdataset or DALI.
# `engine` imports zarr when its store package loads, so the zarr wheels are needed for every part;
# diffusers only for the encode cost and the real-input mode of bench throughput, which report a skip
# without it. DALI is never needed. With $OUT set (the device tool's output folder) the results are
# also packed into $OUT/bench-results.tgz, since only a few files come back from there.
# The device tool gives one command 10 minutes: PARTS picks parts (default "kernels loaders throughput") and
# LIMIT_<PART> their seconds (defaults 150, 60, 360); split a full throughput run over calls with its options
# (e.g. one call per --latent-models, each with its own --out).
set -uo pipefail

WHEELS=(diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        webdataset==1.0.2 braceexpand==0.1.7 importlib_metadata==10.2.0)
PY=${PYTHON:-python3}

fetch_wheels() {
    local dir=${1:?usage: tools/gpu_bench.sh fetch-wheels DIR}
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" "${WHEELS[@]}"
}

part() {  # part NAME SECONDS CMD...: run one part under a time limit; a failure does not stop the others
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local start=$SECONDS
    timeout --signal=INT --kill-after=30 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" >&2
    STATUS+=("$name=$rc")
}

run_all() {
    local wheels=""
    if [[ $# -gt 0 && $1 != "--" ]]; then wheels=$1; shift; fi
    [[ ${1:-} == "--" ]] && shift
    if [[ -n $wheels ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$wheels"/*.whl || { echo "gpu_bench: installing the wheels in $wheels failed" >&2; exit 1; }
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu_bench: torch sees no CUDA device; this script is for a GPU machine" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
    STATUS=()
    local parts=" ${PARTS:-kernels loaders throughput} "
    [[ $parts == *" kernels "* ]] && part kernels "${LIMIT_KERNELS:-150}" "$PY" -m bench.cli kernels
    [[ $parts == *" loaders "* ]] && part loaders "${LIMIT_LOADERS:-60}" \
        "$PY" -m bench.cli loaders --loaders resident --formats zarr --device cuda
    [[ $parts == *" throughput "* ]] && part throughput "${LIMIT_THROUGHPUT:-360}" \
        "$PY" -m bench.cli throughput --device cuda "$@"
    echo "gpu_bench: ${STATUS[*]}" >&2
    if [[ -n ${OUT:-} ]]; then
        tar czf "$OUT/bench-results.tgz" bench/results && echo "packed bench/results into $OUT/bench-results.tgz" >&2
    fi
    [[ ! " ${STATUS[*]} " =~ =[1-9] ]]
}

case ${1:-} in
    fetch-wheels) shift; fetch_wheels "$@" ;;
    run) shift; run_all "$@" ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
