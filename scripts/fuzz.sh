#!/usr/bin/env bash
# Runs every fuzz target of the module for $FUZZTIME each (default 3s).
# A longer run of one target: go test -run '^$' -fuzz '^FuzzBody$' -fuzztime 10m ./ingest/
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-3s}
status=0
passed=0
failed=0
log=$(mktemp)
while IFS= read -r file; do
  dir=$(dirname "$file")
  for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$file" | awk '{print $2}'); do
    echo "fuzz ${dir}: ${target} (${FUZZTIME})"
    if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "./${dir}" > "$log" 2>&1; then
      passed=$((passed + 1))
    else
      cat "$log"
      failed=$((failed + 1))
      status=1
    fi
  done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | sort)
rm -f "$log"
echo "fuzz: ${passed} passed, ${failed} failed"
exit $status
