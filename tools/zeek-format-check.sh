#!/usr/bin/env bash
# Fails, showing the diff, when zeek-format would change one of the given Zeek scripts. (zeek-format has
# no check mode of its own: it writes to stdout or rewrites in place.)
set -uo pipefail
rc=0
for f in "$@"; do
  if ! out=$(zeek-format "$f"); then
    echo "zeek-format: cannot parse $f" >&2
    rc=1
  elif ! diff -u "$f" - <<<"$out" >&2; then
    echo "zeek-format would change $f (run: zeek-format -i $f)" >&2
    rc=1
  fi
done
exit $rc
