#!/usr/bin/env bash
# The MoE layer benchmarks of the README: forward+backward of the MoE layer against a dense FFN with the same
# tokens and dims (ViT-S: D 384, H 1536, 32 images x 198 tokens), measured side by side in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
dotnet build src-fs/SfMoe.Cli -c Release -nologo -v quiet -clp:NoSummary >/dev/null
run() { dotnet run --no-build -c Release --project src-fs/SfMoe.Cli -- bench moe --threads "$threads" --repeats 7 "$@"; }
echo "== top-1, dropless (target ratio <= 1.15)";                 run --top-k 1 --capacity dropless
echo "== top-2, policy all, capacity 1.25 per image (<= 1.5)";   run --top-k 2 --policy all --capacity 1.25
echo "== top-2, dropless (<= 2.2)";                               run --top-k 2 --policy all --capacity dropless
