#!/usr/bin/env bash
# The two MNIST sweeps of docs/results.md, as `sfmoe sweep launch` commands (resumable: run it again to go on).
#
#   scripts/mnist-sweeps.sh OUT [DATA_DIR] [erm|vit|all]
#
# erm: DomainBed's ERM rows with DomainBed's protocol: MNIST_CNN, default hyperparameters (hparams seed 0), trial 0,
#      5001 steps, evaluation and checkpoint every 100 steps, training-domain validation at collect time;
#      ColoredMNIST with test envs 0, 1, 2 (+90%, +80%, -90%) in OUT/erm/ColoredMNIST and RotatedMNIST with test
#      envs 0 and 5 (0 and 75 degrees) in OUT/erm/RotatedMNIST (a sweep's test envs apply to all its datasets, so
#      one sweep per dataset).
# vit: RotatedMNIST with the 75-degree domain held out (test env 5), a tiny dense ViT (ERM), SF-MoE and GMoE of the
#      same width and depth (scripts/mnist-models/*.json: D 192, 6 blocks, 3 heads, 4x4 patches on 28x28, from
#      scratch), trial seeds 0, 1, 2, the same steps; one sweep per model in OUT/vit/{vit,sfmoe,gmoe}.
#
# DATA_DIR holds MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (default ./data). Tables afterwards:
#   sfmoe collect --input-dir OUT/erm --selection iid      sfmoe collect --input-dir OUT/vit --selection iid
# Env: STEPS (5001), CHECKPOINT_FREQ (100) for smoke runs (they change the jobs: use another OUT);
#      DRY_RUN=1 lists the jobs' commands and runs nothing; SFMOE (the sfmoe command; default: this checkout's build);
#      SWEEP_ARGS (more `sweep launch` options, e.g. "--launcher parallel --jobs 2").
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
  echo "usage: $0 OUT [DATA_DIR] [erm|vit|all]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
data=${2:-data}
which=${3:-all}
case "$which" in erm|vit|all) ;; *) echo "$0: the third argument must be erm, vit or all, got $which" >&2; exit 2 ;; esac
steps=${STEPS:-5001}
freq=${CHECKPOINT_FREQ:-100}
if [ -z "${SFMOE:-}" ]; then
  dotnet build "$root/src-fs/SfMoe.Cli" -c Release -nologo -v quiet -clp:NoSummary >/dev/null
  sfmoe=(dotnet run --no-build -c Release --project "$root/src-fs/SfMoe.Cli" --)
else
  read -r -a sfmoe <<<"$SFMOE"
fi
dry=()
[ -n "${DRY_RUN:-}" ] && dry=(--dry-run)
read -r -a extra_launch <<<"${SWEEP_ARGS:-}"
protocol=(--n-hparams-from 0 --n-hparams 1 --single-test-envs --data-dir "$data")

sweep() { # OUTDIR SWEEP-OPTIONS... -- TRAIN-OPTIONS...
  local dir=$1; shift
  echo "== $dir"
  "${sfmoe[@]}" sweep launch --output-dir "$dir" "${protocol[@]}" "${dry[@]}" "${extra_launch[@]}" "$@"
}

if [ "$which" != vit ]; then
  sweep "$out/erm/ColoredMNIST" --datasets ColoredMNIST --algorithms ERM --test-envs 0 1 2 --n-trials 1 \
    -- --model mnist_cnn --steps "$steps" --checkpoint-freq "$freq"
  sweep "$out/erm/RotatedMNIST" --datasets RotatedMNIST --algorithms ERM --test-envs 0 5 --n-trials 1 \
    -- --model mnist_cnn --steps "$steps" --checkpoint-freq "$freq"
fi
if [ "$which" != erm ]; then
  for m in vit:ERM sfmoe:SFMoE gmoe:GMoE; do
    name=${m%%:*}
    sweep "$out/vit/$name" --datasets RotatedMNIST --algorithms "${m#*:}" --test-envs 5 --n-trials 3 \
      -- --model-config "$root/scripts/mnist-models/${name}_tiny_patch4_28.json" --steps "$steps" --checkpoint-freq "$freq"
  done
fi
if [ -z "${DRY_RUN:-}" ]; then
  echo "tables: ${sfmoe[*]} collect --input-dir $out/erm --selection iid; ${sfmoe[*]} collect --input-dir $out/vit --selection iid"
fi
