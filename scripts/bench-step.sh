#!/usr/bin/env bash
# Training steps in SfMoe against independent PyTorch implementations, interleaved in one run so both sides see the
# same machine load; prints the medians and their ratios (ours / PyTorch; lower is better):
#  1. SF-MoE (sfmoe_small_patch16_224, batch 8, 224x224) against the authors' code (bench/authors_step.py: dense
#     one-hot dispatch), and SF-MoE against its dense twin;
#  2. DomainBed's ERM baselines (bench/domainbed_step.py): MNIST_CNN at batch 5 x 64 on 1x28x28 (RotatedMNIST,
#     Adam 1e-3) and ResNet-50 with frozen BatchNorm at batch 3 x 8 on 224x224 (7 classes, Adam 5e-5).
# Needs /usr/bin/python3 with python3-torch and python3-torchvision (apt-get install python3-torch
# python3-torchvision libopenblas0-pthread).
# Env: THREADS (2), ROUNDS (3), ONLY=sfmoe|cnn (both).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
only=${ONLY:-all}
dotnet build src-fs/SfMoe.Cli -c Release -nologo -v quiet -clp:NoSummary >/dev/null
ms() { python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])'; }
ours() { dotnet run --no-build -c Release --project src-fs/SfMoe.Cli -- bench step --threads "$threads" --repeats 3 --json "$@" | ms; }
authors() { /usr/bin/python3 bench/authors_step.py --threads "$threads" --repeats 3 --json | ms; }
domainbed() { /usr/bin/python3 bench/domainbed_step.py --threads "$threads" --repeats 3 --json "$@" | ms; }
o=(); t=(); d=(); mo=(); mt=(); ro=(); rt=()
for r in $(seq "$rounds"); do
  if [ "$only" != cnn ]; then
    o+=("$(ours --model sfmoe_small_patch16_224)")
    t+=("$(authors)")
    d+=("$(ours --model deit_small_distilled_patch16_224)")
    echo "round $r: SfMoe ${o[-1]} ms, authors' PyTorch ${t[-1]} ms, SfMoe dense twin ${d[-1]} ms"
  fi
  if [ "$only" != sfmoe ]; then
    mo+=("$(ours --model mnist_cnn --batch-size 320)")
    mt+=("$(domainbed --model mnist_cnn --batch 320)")
    ro+=("$(ours --model resnet50 --batch-size 24 --num-classes 7)")
    rt+=("$(domainbed --model resnet50 --batch 24 --classes 7)")
    echo "round $r: MNIST_CNN 5x64: SfMoe ${mo[-1]} ms, DomainBed PyTorch ${mt[-1]} ms; ResNet-50 3x8: SfMoe ${ro[-1]} ms, DomainBed PyTorch ${rt[-1]} ms"
  fi
done
python3 - "$threads" "${o[*]:-}" "${t[*]:-}" "${d[*]:-}" "${mo[*]:-}" "${mt[*]:-}" "${ro[*]:-}" "${rt[*]:-}" <<'PY'
import statistics, sys
threads = sys.argv[1]
o, t, d, mo, mt, ro, rt = ([float(x) for x in s.split()] for s in sys.argv[2:9])
med = statistics.median
if o:
    print(f"median step: SfMoe {med(o):.0f} ms, authors' PyTorch {med(t):.0f} ms -> ratio {med(o)/med(t):.2f} (target <= 0.5)")
    print(f"SF-MoE vs dense twin: {med(d)/med(o):.2f}x the dense twin's images/s (target >= 0.85)")
if mo:
    print(f"MNIST_CNN ERM step, batch 5x64, {threads} threads: SfMoe {med(mo):.0f} ms, DomainBed PyTorch {med(mt):.0f} ms "
          f"-> ratio {med(mo)/med(mt):.2f} (target <= 1.0)")
    print(f"ResNet-50 ERM step, batch 3x8 at 224, {threads} threads: SfMoe {med(ro):.0f} ms, DomainBed PyTorch {med(rt):.0f} ms "
          f"-> ratio {med(ro)/med(rt):.2f} (target <= 1.0)")
PY
