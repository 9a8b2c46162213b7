#!/usr/bin/env bash
# What a machine with an NVIDIA GPU can check of SfMoe, offline, in under 8 minutes (docs/gpu/README.md).
#
#   scripts/gpu-check.sh [--cpu-dry-run] [--budget SECONDS]
#
# Stages, each time-boxed within one overall budget (default 450 s), each recorded whether it passes, fails, times
# out or cannot run here:
#   env        nvidia-smi, nvcc, cmake, ninja, PyTorch (version, CUDA, C++ ABI, cmake prefix), dotnet
#   reference  scripts/gpu_reference.py --parts moe: the MoE reference of tests/fixtures/gen_moe_fixtures.py (14 layer
#              cases, tiny SF-MoE and GMoE models) on the GPU in fp32 and bf16 against float64 on the CPU
#   baseline   scripts/gpu_reference.py --parts bench: the authors' SF-MoE DeiT-S step (bench/authors_step.py) in
#              PyTorch on the GPU in fp32, tf32 and bf16 at batch 96, the figure `sfmoe bench step` is compared with
#   native     only with TORCHSHARP_SRC (a TorchSharp checkout at the tag of our TorchSharp, v0.107.0): builds its
#              src/Native LibTorchSharp against this PyTorch's libtorch with CMake (and ninja when present)
#   dotnet-*   only where `dotnet` runs: a 20-step tiny SF-MoE and GMoE training run on CPU and on CUDA, compared
#              record by record; the host tests' CudaParityTests (tiny and DeiT-S SF-MoE and GMoE: logits, aux,
#              routing, gradients, CPU vs CUDA); `sfmoe bench step --device cuda --precision fp32|tf32|bf16` where
#              this build has those flags
# Without .NET (the usual GPU machine here) the dotnet stages are reported as not run, with the reason.
#
# --cpu-dry-run runs the Python stages on the CPU with tiny sizes (to check the script anywhere) and the native and
# dotnet stages as on a GPU machine but with --device cpu.
#
# Environment: OUT (folder of the report; default .), PYTHON (a python with torch; default: the first of python3,
# /usr/bin/python3 that imports torch), TORCHSHARP_SRC, SFMOE_CLI (the command that runs sfmoe, e.g.
# "dotnet /opt/sfmoe/SfMoe.Cli.dll"; default: the repository's Release build, built here if dotnet is present),
# SFMOE_TORCH_BACKEND (the backend to build with when building here; default cuda), LIBTORCHSHARP (a libLibTorchSharp.so
# to run the app with instead of the package's; default: the one the native stage built).
# Writes $OUT/gpu-report.md (every stage's command, status, time and output) and $OUT/gpu-report.json.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
DRY=0
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --budget) shift; BUDGET=${1:?--budget needs seconds} ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu-check: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu-check: error: --budget must be whole seconds, got $BUDGET" >&2; exit 2 ;; esac

OUTDIR=${OUT:-.}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
REPORT="$OUTDIR/gpu-report.md"
JSON="$OUTDIR/gpu-report.json"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sfmoe-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
DEADLINE=$((START + BUDGET))
DEVICE=cuda
[ "$DRY" = 1 ] && DEVICE=cpu
STAGES="$WORK/stages.tsv"
NO_GPU=0
: > "$STAGES"

# The python that has torch.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for p in python3 /usr/bin/python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch, numpy" >/dev/null 2>&1; then PY=$p; break; fi
  done
fi

HEAD="$WORK/head.md"
{
  echo "# SfMoe GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname -s 2>/dev/null || echo '?')"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
  echo "- mode: $([ "$DRY" = 1 ] && echo 'CPU dry run (--cpu-dry-run): no GPU figures' || echo 'GPU')"
  echo "- budget: ${BUDGET} s; python: ${PY:-none with torch}"
} > "$HEAD"
: > "$REPORT.tmp"

# stage NAME LIMIT_SECONDS COMMAND...: runs COMMAND time-boxed to min(LIMIT, what is left of the budget), appends its
# output to the report and a row to the stage table. Returns the command's exit code (124: timed out, 125: skipped).
stage() {
  local name=$1 limit=$2; shift 2
  local now left lim t0 rc secs status
  now=$(date +%s); left=$((DEADLINE - now - 5))
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped\t0\tthe %s s budget is spent\n' "$name" "$BUDGET" >> "$STAGES"
    { echo "## $name"; echo; echo "skipped: the ${BUDGET} s budget is spent"; echo; } >> "$REPORT.tmp"
    echo "gpu-check: $name: skipped (budget spent)"
    return 125
  fi
  lim=$limit; [ "$left" -lt "$lim" ] && lim=$left
  echo "gpu-check: $name (at most ${lim} s): $*"
  t0=$(date +%s)
  timeout -k 5 "$lim" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${lim} s" ;;
    *) status="failed (exit code $rc)" ;;
  esac
  tail -n 40 "$WORK/$name.log" | sed "s/^/  | /"
  echo "gpu-check: $name: $status in ${secs} s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$(printf '%q ' "$@")" >> "$STAGES"
  {
    echo "## $name"
    echo
    echo "\`$(printf '%q ' "$@")\`: **$status** in ${secs} s"
    echo
    echo '```'
    if [ "$(wc -l < "$WORK/$name.log")" -gt 300 ]; then
      head -n 100 "$WORK/$name.log"; echo "... ($(wc -l < "$WORK/$name.log") lines; the last 200:)"; tail -n 200 "$WORK/$name.log"
    else
      cat "$WORK/$name.log"
    fi
    echo '```'
    echo
  } >> "$REPORT.tmp"
  return $rc
}

# not_run NAME WHY: a stage that cannot run on this machine, recorded as such.
not_run() {
  printf '%s\tnot run\t0\t%s\n' "$1" "$2" >> "$STAGES"
  { echo "## $1"; echo; echo "not run: $2"; echo; } >> "$REPORT.tmp"
  echo "gpu-check: $1: not run: $2"
}

# dotnet is there and runs.
have_dotnet() { command -v dotnet >/dev/null 2>&1 && timeout 60 dotnet --version >/dev/null 2>&1; }
export -f have_dotnet

env_info() {
  echo "== uname"; uname -a
  echo "== CPUs: $(nproc), memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  echo "== nvidia-smi"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  else echo "nvidia-smi: not found"; fi
  echo "== nvcc"; if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
  echo "== cmake"; if command -v cmake >/dev/null 2>&1; then cmake --version | head -n 1; else echo "cmake: not found"; fi
  echo "== ninja"; if command -v ninja >/dev/null 2>&1; then ninja --version; else echo "ninja: not found"; fi
  echo "== c++"; if command -v c++ >/dev/null 2>&1; then c++ --version | head -n 1; else echo "c++: not found"; fi
  echo "== python: ${PY:-none with torch}"
  if [ -n "$PY" ]; then
    "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "| built with CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
print("C++11 ABI (_GLIBCXX_USE_CXX11_ABI):", torch._C._GLIBCXX_USE_CXX11_ABI)
print("cmake prefix (LIBTORCH_PATH):", torch.utils.cmake_prefix_path)
import os
print("libtorch libraries:", os.path.join(os.path.dirname(torch.__file__), "lib"))
EOF
  fi
  echo "== dotnet"; if have_dotnet; then dotnet --version; else echo "dotnet: not found (or does not run)"; fi
  return 0
}
export -f env_info
export PY

stage env 60 bash -c env_info

# ---- PyTorch: the MoE reference on the GPU, and the step-time baseline
if [ -z "$PY" ]; then
  not_run reference "no python with torch and numpy (set PYTHON)"
  not_run baseline "no python with torch and numpy (set PYTHON)"
elif [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  NO_GPU=1
  not_run reference "torch.cuda.is_available() is False (no GPU, or a CPU build of PyTorch); --cpu-dry-run runs it on the CPU"
  not_run baseline "torch.cuda.is_available() is False"
else
  stage reference 150 "$PY" scripts/gpu_reference.py --device "$DEVICE" --parts moe --budget 140 --json "$WORK/reference.json"
  if [ "$DRY" = 1 ]; then
    stage baseline 150 "$PY" scripts/gpu_reference.py --device cpu --parts bench --batch 2 --warmup 0 --repeats 1 --budget 140 --json "$WORK/baseline.json"
  else
    stage baseline 150 "$PY" scripts/gpu_reference.py --device cuda --parts bench --batch 96 --warmup 3 --repeats 10 --budget 140 --json "$WORK/baseline.json"
  fi
fi

# ---- TorchSharp's native glue against this PyTorch
NATIVE_SO=""
native_build() {
  set -e
  local src=$1 build=$2 prefix gen=()
  [ -f "$src/src/Native/CMakeLists.txt" ] || { echo "TORCHSHARP_SRC=$src has no src/Native/CMakeLists.txt"; return 2; }
  grep -h -o '<MinorVersion>[0-9]*</MinorVersion>' "$src/build/BranchInfo.props" 2>/dev/null | sed 's/^/TorchSharp source: /' || true
  prefix=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
  if [ ! -f "$prefix/Torch/TorchConfig.cmake" ]; then
    echo "this PyTorch has no $prefix/Torch/TorchConfig.cmake, which find_package(Torch) needs (pip and conda PyTorch ship it; Debian's python3-torch does not: its libtorch-dev does)"
    return 3
  fi
  "$PY" -c "import torch, sys; abi = torch._C._GLIBCXX_USE_CXX11_ABI; print('PyTorch C++11 ABI:', abi); print('warning: TorchSharp 0.107 compiles with -D_GLIBCXX_USE_CXX11_ABI=1; this libtorch does not use it, so the build will not link or load' if not abi else '')"
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  mkdir -p "$build"
  # TorchSharp's build.sh writes a version stub next to its output; with a build folder of our own, no version file.
  cmake -S "$src/src/Native" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLIBTORCH_PATH="$prefix"
  cmake --build "$build" --target LibTorchSharp --parallel "$(nproc)"
  local so; so=$(find "$build" -name 'libLibTorchSharp.so' -print -quit)
  [ -n "$so" ] || { echo "no libLibTorchSharp.so under $build"; return 1; }
  echo "built: $so ($(du -h "$so" | cut -f1))"
  echo "exported THS* functions: $(nm -D --defined-only "$so" | grep -c ' T THS')"
  echo "== ldd (libtorch should come from $(dirname "$prefix")/../lib):"
  ldd "$so" | grep -E 'torch|c10|cuda|not found' || true
}
export -f native_build
if [ -z "${TORCHSHARP_SRC:-}" ]; then
  not_run native "TORCHSHARP_SRC is not set (a TorchSharp checkout at v0.107.0; see docs/gpu/README.md)"
elif ! command -v cmake >/dev/null 2>&1; then
  not_run native "cmake is not installed"
elif [ -z "$PY" ]; then
  not_run native "no python with torch (its libtorch is what the glue links against)"
elif [ ! -f "$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)" 2>/dev/null)/Torch/TorchConfig.cmake" ]; then
  not_run native "this PyTorch has no share/cmake/Torch/TorchConfig.cmake for find_package(Torch) (pip and conda PyTorch ship it; Debian's python3-torch does not)"
else
  if stage native 240 bash -c 'native_build "$1" "$2"' _ "$TORCHSHARP_SRC" "$WORK/libtorchsharp"; then
    NATIVE_SO=$(find "$WORK/libtorchsharp" -name 'libLibTorchSharp.so' -print -quit)
  fi
fi

# ---- .NET: SfMoe itself on the GPU
if ! have_dotnet; then
  for s in dotnet-train-parity dotnet-parity dotnet-bench-step; do
    not_run "$s" "dotnet is not installed here (or does not run), so SfMoe cannot be built or run; the PyTorch stages above are what this machine can check"
  done
else
  SFMOE=()
  if [ -n "${SFMOE_CLI:-}" ]; then
    read -r -a SFMOE <<< "$SFMOE_CLI"
  else
    DLL="$ROOT/src-fs/SfMoe.Cli/bin/Release/net10.0/SfMoe.Cli.dll"
    if [ ! -f "$DLL" ]; then
      stage dotnet-build 240 dotnet build "$ROOT/src-fs/SfMoe.Cli" -c Release -nologo -v quiet \
        -p:SfMoeTorchBackend="${SFMOE_TORCH_BACKEND:-$([ "$DRY" = 1 ] && echo cpu || echo cuda)}"
    fi
    [ -f "$DLL" ] && SFMOE=(dotnet "$DLL")
  fi
  # A self-built glue: run a copy of the app whose glue is that one and whose libtorch is PyTorch's (LD_LIBRARY_PATH).
  SO=${LIBTORCHSHARP:-$NATIVE_SO}
  if [ -n "$SO" ] && [ "${#SFMOE[@]}" -gt 0 ] && [ "${SFMOE[0]}" = dotnet ] && [ -n "$PY" ]; then
    APP="$WORK/app"; NATIVE_DIR="$APP/runtimes/linux-x64/native"
    # A copy of the app without any libtorch of a package (two libtorch copies in one process do not work).
    mkdir -p "$APP"
    tar -C "$(dirname "${SFMOE[1]}")" --exclude='libtorch*.so*' --exclude='libc10*.so*' --exclude='libLibTorchSharp.so' -cf - . \
      | tar -C "$APP" -xf -
    mkdir -p "$NATIVE_DIR"
    cp "$SO" "$NATIVE_DIR/libLibTorchSharp.so"
    TORCH_LIB=$("$PY" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    SFMOE=(dotnet "$APP/$(basename "${SFMOE[1]}")")
    echo "gpu-check: running sfmoe with $SO and PyTorch's libtorch ($TORCH_LIB)"
  fi
  if [ "${#SFMOE[@]}" -eq 0 ]; then
    not_run dotnet-train-parity "no SfMoe build (set SFMOE_CLI, or let dotnet build it: see dotnet-build)"
    not_run dotnet-parity "no SfMoe build"
    not_run dotnet-bench-step "no SfMoe build"
  else
    train_parity() {
      set -e
      local dev=$1; shift
      for algo in SFMoE GMoE; do
        for side in cpu dev; do
          local d=cpu; [ "$side" = dev ] && d=$dev
          "$@" train --dataset Synthetic --algorithm "$algo" --model "$( [ "$algo" = GMoE ] && echo gmoe_test_patch8_32 || echo sfmoe_test_patch8_32 )" \
            --steps 20 --checkpoint-freq 10 --synthetic-size 60 --seed 1 --no-timings --quiet --device "$d" \
            --output-dir "$WORK/train-$algo-$side" || { echo "train $algo on $d failed"; return 1; }
        done
        "$PY" - "$WORK/train-$algo-cpu/results.jsonl" "$WORK/train-$algo-dev/results.jsonl" "$algo" "$dev" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
b = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
print(f"{sys.argv[3]}: {len(a)} records on cpu, {len(b)} on {sys.argv[4]}")
worst = 0.0
for ra, rb in zip(a, b):
    for k, v in ra.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k in rb and "time" not in k and "mem" not in k:
            d = abs(float(v) - float(rb[k]))
            worst = max(worst, d / max(abs(float(v)), 1e-8))
            print(f"  step {ra.get('step', '?')} {k}: cpu {v} {sys.argv[4]} {rb[k]}")
print(f"{sys.argv[3]}: largest relative difference cpu vs {sys.argv[4]}: {worst:.3g}")
EOF
      done
    }
    export -f train_parity
    export WORK
    if [ -z "$PY" ]; then
      not_run dotnet-train-parity "no python to compare the records"
    else
      stage dotnet-train-parity 180 bash -c 'train_parity "$@"' _ "$DEVICE" "${SFMOE[@]}"
    fi
    bench_step() {
      local dev=$1; shift
      local batch=96 model=sfmoe_small_patch16_224 reps=(--warmup 3 --repeats 10) rc=0
      [ "$dev" = cpu ] && batch=2 && model=sfmoe_test_patch8_32 && reps=(--warmup 0 --repeats 1)
      for p in fp32 tf32 bf16; do
        echo "== precision $p"
        "$@" bench step --device "$dev" --precision "$p" --model "$model" --batch-size "$batch" "${reps[@]}" --json || { echo "bench step $p failed"; rc=1; }
      done
      return $rc
    }
    export -f bench_step
    # The parity test of the host tests (tests/SfMoe.Host.Tests/CudaParityTests.cs): tiny and DeiT-S SF-MoE and GMoE,
    # logits, aux loss, routing and gradients, CPU against the device. It needs the repository's test build.
    if [ -n "${SFMOE_CLI:-}" ] || [ -n "$SO" ]; then
      not_run dotnet-parity "runs with the repository's own build only (not with SFMOE_CLI or a self-built glue)"
    else
      export SFMOE_PARITY_DEVICE=$DEVICE
      stage dotnet-parity 240 dotnet test "$ROOT/tests/SfMoe.Host.Tests" -c Release -nologo \
        -p:SfMoeTorchBackend="${SFMOE_TORCH_BACKEND:-$([ "$DRY" = 1 ] && echo cpu || echo cuda)}" \
        --filter "FullyQualifiedName~CudaParityTests" --logger "console;verbosity=detailed"
    fi
    STEP_HELP=$(timeout 120 "${SFMOE[@]}" bench step --help 2>&1)
    if grep -q -- '--device' <<< "$STEP_HELP" && grep -q -- '--precision' <<< "$STEP_HELP"; then
      stage dotnet-bench-step 150 bash -c 'bench_step "$@"' _ "$DEVICE" "${SFMOE[@]}"
    else
      not_run dotnet-bench-step "this build's 'sfmoe bench step' has no --device/--precision flags (issue 12, item 6), so it cannot measure the GPU"
    fi
  fi
fi

# ---- the report: a stage table first, then each stage's output; the JSON holds the table and the reference figures
TOTAL=$(($(date +%s) - START))
{
  cat "$HEAD"
  echo "- total: ${TOTAL} s"
  echo
  echo "| stage | status | seconds |"
  echo "|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$STAGES"
  echo
  cat "$REPORT.tmp"
} > "$REPORT.new" && mv "$REPORT.new" "$REPORT"
rm -f "$REPORT.tmp"
if [ -n "$PY" ]; then
  "$PY" - "$STAGES" "$WORK" "$JSON" "$DRY" "$TOTAL" <<'EOF'
import json, os, sys
stages, work, out, dry, total = sys.argv[1:6]
rows = [l.rstrip("\n").split("\t") for l in open(stages) if l.strip()]
r = {"dry_run": dry == "1", "seconds": int(total),
     "stages": [{"stage": s[0], "status": s[1], "seconds": int(s[2]), "detail": s[3] if len(s) > 3 else ""} for s in rows]}
for part in ("reference", "baseline"):
    p = os.path.join(work, part + ".json")
    if os.path.exists(p):
        r[part] = json.load(open(p))
with open(out + ".tmp", "w") as f:
    json.dump(r, f, indent=1)
os.replace(out + ".tmp", out)
EOF
fi
echo "gpu-check: done in ${TOTAL} s: $REPORT${PY:+ and $JSON}"
awk -F'\t' '{ printf "  %-22s %s\n", $1, $2 }' "$STAGES"
# Exit code: 1 when a stage that ran failed or timed out (stages that could not run here do not count); 3 when, not
# in a dry run, PyTorch sees no GPU, so nothing was checked on one.
if awk -F'\t' '$2 ~ /^(failed|timed out)/ { bad = 1 } END { exit bad ? 0 : 1 }' "$STAGES"; then exit 1; fi
if [ "$NO_GPU" = 1 ]; then echo "gpu-check: PyTorch sees no GPU here: nothing was checked on one (exit code 3)"; exit 3; fi
exit 0
