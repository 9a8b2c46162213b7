#!/usr/bin/env bash
# One SF-MoE training step (sfmoe_small_patch16_224, batch 8, 224x224) in SfMoe and in a PyTorch implementation
# of the authors' code (bench/authors_step.py: dense one-hot dispatch, Debian's PyTorch + OpenBLAS), interleaved
# in one run so both see the same machine load; prints both medians and their ratio. Also SF-MoE vs its dense
# twin. Needs /usr/bin/python3 with python3-torch (apt-get install python3-torch libopenblas0-pthread).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
dotnet build src-fs/SfMoe.Cli -c Release -nologo -v quiet -clp:NoSummary >/dev/null
ours() { dotnet run --no-build -c Release --project src-fs/SfMoe.Cli -- bench step --threads "$threads" --repeats 3 --json "$@"; }
theirs() { /usr/bin/python3 bench/authors_step.py --threads "$threads" --repeats 3 --json; }
o=(); t=(); d=()
for r in $(seq "$rounds"); do
  o+=("$(ours --model sfmoe_small_patch16_224 | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')")
  t+=("$(theirs | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')")
  d+=("$(ours --model deit_small_distilled_patch16_224 | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')")
  echo "round $r: SfMoe ${o[-1]} ms, authors' PyTorch ${t[-1]} ms, SfMoe dense twin ${d[-1]} ms"
done
python3 - "${o[*]}" "${t[*]}" "${d[*]}" <<'PY'
import statistics, sys
o, t, d = ([float(x) for x in s.split()] for s in sys.argv[1:4])
mo, mt, md = statistics.median(o), statistics.median(t), statistics.median(d)
print(f"median step: SfMoe {mo:.0f} ms, authors' PyTorch {mt:.0f} ms -> ratio {mo/mt:.2f} (target <= 0.5)")
print(f"SF-MoE vs dense twin: {md/mo:.2f}x the dense twin's images/s (target >= 0.85)")
PY
