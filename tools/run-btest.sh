#!/usr/bin/env bash
# Runs the btest suite (tests/btest) and prints how many tests ran. Where a zeek is on PATH, a skipped
# test is a failure: the suite must run on the real Zeek, not pass by skipping.
set -uo pipefail
cd "$(dirname "$0")/../tests/btest" || exit 1
out=$(btest -d 2>&1); rc=$?
printf '%s\n' "$out"
summary=$(printf '%s\n' "$out" | tail -n 1)
echo "btest: $summary (zeek: $(command -v zeek || echo none))"
if command -v zeek >/dev/null 2>&1 && printf '%s\n' "$out" | grep -q 'skipped'; then
  echo "btest: tests were skipped although zeek is on PATH" >&2
  exit 1
fi
exit $rc
