#!/usr/bin/env bash
# Runs every test suite of SfMoe and ends with one line "N passed, N failed, N skipped".
# Exit code: 0 when nothing failed, 1 otherwise. Usage: scripts/test.sh [extra Expecto args, e.g. --filter pattern]
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
config=${SFMOE_TEST_CONFIGURATION:-Release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0; failed=0; skipped=0
add() { passed=$((passed + $1)); failed=$((failed + $2)); skipped=$((skipped + $3)); }

echo "== build ($config)"
if ! dotnet build SfMoe.sln -c "$config" -nologo -v quiet -clp:NoSummary; then
  echo "build failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

echo "== F# core (Expecto)"
dotnet run --no-build -c "$config" --project tests/SfMoe.Core.Tests -- \
  --colours 0 --no-spinner --junit-summary "$work/core.xml" "$@" 2>&1 | tee "$work/core.log"
core_rc=${PIPESTATUS[0]}
if [ -f "$work/core.xml" ]; then
  # JUnit summary: one <testcase> per test, with a <failure>, <error> or <skipped> child when not passed.
  count() { grep -o "$1" "$work/core.xml" | wc -l; }
  t=$(count '<testcase '); f=$(count '<failure'); e=$(count '<error'); s=$(count '<skipped')
  add $((t - f - e - s)) $((f + e)) "$s"
  if [ "$core_rc" -ne 0 ] && [ $((f + e)) -eq 0 ]; then add 0 1 0; fi
else
  echo "Expecto produced no summary (exit code $core_rc)"
  add 0 1 0
fi

echo "== C# host (xunit)"
dotnet test tests/SfMoe.Host.Tests --no-build -c "$config" -nologo \
  --logger "trx;LogFileName=host.trx" --results-directory "$work" 2>&1 | tee "$work/host.log"
host_rc=${PIPESTATUS[0]}
trx=$(ls "$work"/host.trx 2>/dev/null | head -1)
if [ -n "$trx" ]; then
  counters=$(grep -o '<Counters [^>]*' "$trx")
  get() { echo "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*'; }
  t=$(get total); p=$(get passed); f=$(get failed); e=$(get error); to=$(get timeout); a=$(get aborted)
  add "${p:-0}" $(( ${f:-0} + ${e:-0} + ${to:-0} + ${a:-0} )) $(( ${t:-0} - ${p:-0} - ${f:-0} - ${e:-0} - ${to:-0} - ${a:-0} ))
  if [ "$host_rc" -ne 0 ] && [ $(( ${f:-0} + ${e:-0} + ${to:-0} + ${a:-0} )) -eq 0 ]; then add 0 1 0; fi
else
  echo "xunit produced no results (exit code $host_rc)"
  add 0 1 0
fi

echo "== notebooks (dotnet repl, headless)"
# One test per notebook (it passes when every cell ran without error: dotnet-repl exits 2 on a failing cell and keeps
# running the later ones) and one that the committed notebooks carry no outputs. They load the Release build.
notebooks=(notebooks/*.ipynb)
stripped=1
for nb in "${notebooks[@]}"; do
  if grep -q '"execution_count": [0-9]' "$nb" || grep -q '"output_type"' "$nb"; then
    echo "FAILED: $nb is committed with outputs (clear them before committing)"
    stripped=0
  fi
done
if [ "$stripped" -eq 1 ]; then add 1 0 0; else add 0 1 0; fi
if [ "$config" != "Release" ]; then
  echo "notebooks load the Release build: skipped with SFMOE_TEST_CONFIGURATION=$config"
  add 0 0 "${#notebooks[@]}"
elif ! dotnet tool restore >"$work/tool-restore.log" 2>&1; then
  cat "$work/tool-restore.log"
  echo "FAILED: dotnet tool restore (dotnet-repl, see .config/dotnet-tools.json)"
  add 0 "${#notebooks[@]}" 0
else
  for nb in "${notebooks[@]}"; do
    name=$(basename "$nb" .ipynb)
    trx="$work/nb-$name.trx"
    start=$(date +%s)
    (cd notebooks && timeout 900 dotnet repl --run "$name.ipynb" --exit-after-run --output-format trx --output-path "$trx" \
      < /dev/null > "$work/nb-$name.log" 2>&1)
    rc=$?
    secs=$(( $(date +%s) - start ))
    cells=0; bad=0
    if [ -f "$trx" ]; then
      cells=$(grep -o '<UnitTestResult ' "$trx" | wc -l)
      bad=$(grep -o 'outcome="Failed"' "$trx" | wc -l)
    fi
    if [ "$rc" -eq 0 ] && [ -f "$trx" ] && [ "$bad" -eq 0 ]; then
      echo "passed: $nb ($cells cells, ${secs}s)"
      add 1 0 0
    else
      echo "FAILED: $nb (exit code $rc, $bad of $cells cells failed, ${secs}s)"
      if [ -f "$trx" ]; then
        # the failing cells' first lines, then their errors (the TRX lacks F# errors: run again writing a notebook)
        tr -d '\r' < "$trx" | grep -o 'testName="[^"]*"[^>]*outcome="Failed"' | sed 's/" .*//; s/testName="/  /' | head -20
        (cd notebooks && timeout 900 dotnet repl --run "$name.ipynb" --exit-after-run --output-format ipynb \
          --output-path "$work/nb-$name.out.ipynb" < /dev/null > /dev/null 2>&1)
        grep -h '"evalue"' "$work/nb-$name.out.ipynb" 2>/dev/null | cut -c1-600 | head -20
      else
        tail -40 "$work/nb-$name.log"
      fi
      add 0 1 0
    fi
  done
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
