#!/usr/bin/env bash
# One call of the device tool on a lent CUDA GPU: latentgen's CUDA checks and figures, each stage under its own
# time limit, its full log under $OUT/<stage>.log, a summary last (the tool's reply carries the end of the output).
#
#   bash tests/benchmarks/gpu_session.sh                    # every stage, in this order:
#     checks    check_cuda.py --no-compile: graphs == eager, LoRAs in the graph, ControlNets graphed, the fp16 guard
#     lora      bench_lora.py --model sd15-cuda: it/s bare, one LoRA, two tags, switching; against eager (issue 36)
#     control   bench_controlnet.py --part cuda: a ControlNet's cost per step on the default backend (issue 38)
#     xl        check_cuda.py --xl --size 512 --no-compile: SDXL's graphed path == eager (issue 40)
#     compile   check_cuda.py: the default (torch.compile's kernels) against eager
#   bash tests/benchmarks/gpu_session.sh lora control       # only these
#
# The device image has torch, transformers, peft and accelerate but not diffusers: put its wheel (and any other
# missing pure-Python one) in ./wheels first, here: `pip download --no-deps -d wheels diffusers==0.42.1`; the
# folder travels with the working tree (untracked, not ignored). latentgen itself runs from the source tree.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
py=python3
if ls wheels/*.whl >/dev/null 2>&1; then
    $py -m pip install --quiet --no-deps --no-index wheels/*.whl >"$OUT/pip.log" 2>&1 || echo "pip: see $OUT/pip.log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(checks lora control xl compile)
declare -A cmd=(
    [checks]="tests/benchmarks/check_cuda.py --no-compile"
    [lora]="tests/benchmarks/bench_lora.py --model sd15-cuda --calls 5"
    [control]="tests/benchmarks/bench_controlnet.py --part cuda --repeats 5"
    [xl]="tests/benchmarks/check_cuda.py --xl --size 512 --no-compile"
    [compile]="tests/benchmarks/check_cuda.py"
)
declare -A limit=([checks]=150 [lora]=240 [control]=180 [xl]=180 [compile]=240)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
summary=()
for s in "${stages[@]}"; do
    [ -n "${cmd[$s]:-}" ] || { echo "unknown stage $s: use ${!cmd[*]}"; exit 2; }
    start=$(date +%s)
    # shellcheck disable=SC2086
    timeout "${limit[$s]}" $py ${cmd[$s]} >"$OUT/$s.log" 2>&1
    rc=$?
    summary+=("$s: exit $rc in $(( $(date +%s) - start )) s; $({ grep -E 'ALL CHECKS|FAIL|it/s|per step|difference' "$OUT/$s.log" || tail -1 "$OUT/$s.log"; } | tail -4 | tr '\n' '|')")
done
echo "---- logs in $OUT"
printf '%s\n' "${summary[@]}"
