#!/usr/bin/env bash
# Run the whole benchmark on a lent GPU in one call: bench kernels, bench loaders (device-resident) and
# bench throughput, results under bench/results/ named after the device.
#
#   tools/gpu_bench.sh fetch-wheels .whl     # here, once: py3.12 wheels the GPU image lacks (about 16 MB)
#   tools/gpu_bench.sh run [.whl] [-- bench throughput options]   # there, in the repository root
#
# The GPU image (python 3.12, torch 2.11+cu130, triton 3.6) has no diffusers, zarr, webdataset or DALI.
# bench, engine and kernels import without them (tests/test_gpu_image.py runs the benches so); zarr (whose
# donfig needs PyYAML) is needed by `bench loaders --formats zarr` and the real-input mode, diffusers (which
# needs requests, urllib3, idna, charset-normalizer, certifi) by the encode cost and the real-input mode,
# which report a skip without them. DALI is never needed. With $OUT set (the device tool's output folder)
# the results are also packed into $OUT/bench-results.tgz, since only a few files come back from there.
# The device tool gives one command 10 minutes; the parts fit about 8 (LIMIT_<PART> seconds: kernels 90,
# loaders 45, throughput 240, lean 120) and every part writes its rows as it measures them, so a part cut at its
# limit (SIGINT) still leaves a valid result marked incomplete. "lean" measures the paper's ConvNeXt-T FiLM and the
# smallest FiLM ConvNeXt at the paper's FLUX.2 shape with --memory lean (blocks recomputed, fused MLP) against the
# image ResNets recomputed alike, into throughput-<device>-lean.json beside the plain run. PARTS picks parts
# (default "kernels loaders throughput lean"); split a full throughput run over calls with its options
# (--latent-models, --shapes, --out).
set -uo pipefail

WHEELS=(diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        webdataset==1.0.2 braceexpand==0.1.7 importlib_metadata==10.2.0 PyYAML==6.0.3 requests==2.32.5
        urllib3==2.5.0 idna==3.10 charset-normalizer==3.4.3 certifi==2025.8.3 zipp==3.23.0 regex==2025.9.18)
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
    timeout --signal=INT --kill-after=10 "$limit" "$@"
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
    local parts=" ${PARTS:-kernels loaders throughput lean} "
    [[ $parts == *" kernels "* ]] && part kernels "${LIMIT_KERNELS:-90}" "$PY" -m bench.cli kernels
    [[ $parts == *" loaders "* ]] && part loaders "${LIMIT_LOADERS:-45}" \
        "$PY" -m bench.cli loaders --loaders resident --formats zarr --device cuda
    [[ $parts == *" throughput "* ]] && part throughput "${LIMIT_THROUGHPUT:-240}" \
        "$PY" -m bench.cli throughput --device cuda --no-predict --search-seconds 90 "$@"
    local lean_out
    lean_out=$("$PY" -c "import torch; from bench.environment import device_name, result_path; print(result_path('throughput', \
        device_name(torch.device('cuda'))).with_suffix('').as_posix() + '-lean.json')") || lean_out=bench/results/throughput-cuda-lean.json
    [[ $parts == *" lean "* ]] && part lean "${LIMIT_LEAN:-120}" \
        "$PY" -m bench.cli throughput --device cuda --no-predict --search-seconds 30 --memory lean \
        --latent-models convnext-t-film,convnext-atto-film --shapes flux2-512 --no-real-input \
        --out "$lean_out"
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
