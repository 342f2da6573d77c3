#!/usr/bin/env bash
# Prints the directory of a working `zeek` for the test command, or nothing (then the Zeek tests skip,
# visibly). In order: a zeek already on PATH; ../shared/zeek/bin beside the repository (the relocatable
# Zeek 8.0.10 of development and CI machines); a copy of that tree in <venv>/zeek, made when the shared
# tree does not run as it lies - a copy of it can have lost its symlinks (libbroker.so.4 -> 2.8 become
# small text files naming their target), which this restores. Usage: find-zeek.sh [VENV]
set -euo pipefail
venv=${1:-.venv}
works() { "$1/zeek" --version >/dev/null 2>&1; }
if command -v zeek >/dev/null 2>&1 && works "$(dirname "$(command -v zeek)")"; then
  dirname "$(command -v zeek)"; exit 0
fi
top=$(cd "$(dirname "$0")/.." && pwd)
shared="$top/../shared/zeek"
[ -x "$shared/bin/zeek" ] || exit 0
if works "$shared/bin"; then
  (cd "$shared/bin" && pwd); exit 0
fi
copy="$venv/zeek"
if [ ! -x "$copy/bin/zeek" ] || ! works "$copy/bin"; then
  rm -rf "$copy"
  mkdir -p "$(dirname "$copy")"
  cp -R "$shared" "$copy"
  chmod -R u+w "$copy"
  # a file of a few bytes in lib/ whose whole content names another file there was a symlink
  for f in "$copy"/lib/*; do
    [ -f "$f" ] && [ ! -L "$f" ] && [ "$(stat -c %s "$f")" -lt 128 ] || continue
    target=$(tr -d '\n' < "$f")
    case "$target" in */*|"") continue ;; esac
    [ -e "$copy/lib/$target" ] && ln -sfn "$target" "$f"
  done
fi
works "$copy/bin" && (cd "$copy/bin" && pwd)
exit 0
