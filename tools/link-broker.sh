#!/usr/bin/env bash
# Exposes Broker's Python bindings to the venv, for `zeek.transport: broker` and the Broker tests:
# `zeek-config --python_dir` where a Zeek is on PATH (Broker only peers within one version, so the
# bindings must come from the Zeek that dpack peers with), else the system Python's `broker` module
# (Debian: python3-broker, Broker 1.4; the fault tests' peer where no Zeek is at hand). Only the `broker`
# package is linked into <venv>/zeek-broker (a .pth file puts that directory after the venv's own
# packages), so no other system package leaks into the venv. Re-links when the choice changes.
set -euo pipefail
venv=${1:-.venv}
py="$venv/bin/python"
dir=""
if command -v zeek-config >/dev/null 2>&1; then
  dir=$(zeek-config --python_dir 2>/dev/null || true)
fi
if [ -z "$dir" ] || [ ! -d "$dir/broker" ]; then
  dir=$(/usr/bin/python3 -c 'import broker, os; print(os.path.dirname(os.path.dirname(broker.__file__)))' 2>/dev/null \
        || true)
fi
if [ -z "$dir" ] || [ ! -d "$dir/broker" ]; then
  echo "link-broker: no Broker Python bindings found; native Broker tests will be skipped"
  exit 0
fi
mkdir -p "$venv/zeek-broker"
ln -sfn "$dir/broker" "$venv/zeek-broker/broker"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
(cd "$venv/zeek-broker" && pwd) > "$site/zeek-broker.pth"
if "$py" -c "import broker" 2>/dev/null; then
  echo "link-broker: Broker $("$py" -c 'import broker; print(broker.Version.string())') bindings from $dir"
else
  rm -f "$site/zeek-broker.pth"
  echo "link-broker: the bindings in $dir do not load in this Python; native Broker tests will be skipped"
fi
