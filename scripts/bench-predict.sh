#!/usr/bin/env bash
# The ONNX speed benchmark of the README: sfmoe_small_patch16_224 (the registry's DeiT-S SF-MoE, seed-0 weights) exported
# to ONNX, then ONNX Runtime (CPU) against the TorchSharp eval forward pass on the same inputs, at batch 1 and 32, runs of
# the two interleaved in one process (sfmoe bench predict). Several rounds, so that a loaded machine shows its spread.
#   scripts/bench-predict.sh [ROUNDS] [THREADS]     (defaults: 3 rounds, all cores)
# Environment: MODEL (default sfmoe_small_patch16_224), BATCHES (default 1,32), REPEATS (default 5), WARMUP (default 2).
# Each round exports the model afresh (bench predict --model: seed-0 weights, dynamic batch, to a temporary file; the
# eval forward of an untrained model costs what a trained one costs) and times both sides on the same random images.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-$(nproc)}
model=${MODEL:-sfmoe_small_patch16_224}
batches=${BATCHES:-1,32}
repeats=${REPEATS:-5}
warmup=${WARMUP:-2}
dotnet build src-fs/SfMoe.Cli -c Release -nologo -v quiet -clp:NoSummary >/dev/null
sfmoe() { dotnet run --no-build -c Release --project src-fs/SfMoe.Cli -- "$@"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/sfmoe-bench-predict.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== $model: ONNX Runtime vs TorchSharp eval forward, batch sizes $batches, $threads threads, $rounds rounds"
echo "   $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
for r in $(seq 1 "$rounds"); do
  sfmoe bench predict --model "$model" --batch-sizes "$batches" --threads "$threads" --warmup "$warmup" --repeats "$repeats" --json \
    >"$work/round$r.json"
  echo "round $r (load average $(cut -d' ' -f1-3 /proc/loadavg) after it):"
  # One line per batch size: images/s of each side and their ratio.
  { tr -d '\n ' <"$work/round$r.json" | sed 's/},{/}\n{/g; s/^\[//; s/\]$//'; echo; } | while IFS= read -r row; do
    [ -n "$row" ] || continue
    get() { printf '%s' "$row" | sed -E "s/.*\"$1\":([^,}]*).*/\1/"; }
    printf '  batch %3s: onnx %8.1f img/s, torchsharp %8.1f img/s, onnx/torchsharp %5.2fx (max rel diff of the logits %s)\n' \
      "$(get batch)" "$(get onnx_images_per_s)" "$(get torchsharp_images_per_s)" "$(get ratio)" "$(get max_rel_diff)"
  done
done
# The ratio of each batch size over the rounds: every value (in increasing order) and the median.
echo "onnx/torchsharp over $rounds rounds:"
cat "$work"/round*.json | tr -d '\n ' | sed 's/},{/}\n{/g; s/\]\[/\n/g; s/^\[//; s/\]$//' \
  | sed -E 's/.*"batch":([0-9]+).*"ratio":([^,}]*).*/\1 \2/' | sort -n -k1,1 -k2,2g \
  | awk '{ r[$1] = r[$1] " " sprintf("%.2f", $2); v[$1, ++n[$1]] = $2 }
         END { for (b in n) { m = n[b] % 2 ? v[b, (n[b] + 1) / 2] : (v[b, n[b] / 2] + v[b, n[b] / 2 + 1]) / 2
                              printf "  batch %3s: %s  (median %.2fx)\n", b, r[b], m } }' | sort -n -k2,2
