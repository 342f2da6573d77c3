#!/usr/bin/env bash
# Installs Suricata 7 from Debian's bookworm-backports suite, taken from the same Debian mirror the machine
# already uses (read from its apt sources, never hard-coded), with ethtool and iproute2 for the IPS test and
# the live Zeek sensor test, tcpreplay (tcpreplay, tcprewrite) for the sensor test's replays, and
# python3-broker (Debian's Broker 1.4 Python bindings: the fallback peer of the Broker fault tests where no
# Zeek with its own bindings is at hand), and chromium (the evaluation report's browser test renders the
# page headless). Does nothing if they are present.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && dpkg -s python3-broker >/dev/null 2>&1 && command -v ethtool >/dev/null 2>&1 && command -v tcpreplay >/dev/null 2>&1 && command -v suricata >/dev/null 2>&1 && suricata -V 2>/dev/null | grep -qE 'version ([7-9]|[1-9][0-9])\.'; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
list=/etc/apt/sources.list.d/dpack-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { echo "install-suricata: no Debian bookworm mirror in the apt sources" >&2; exit 1; }
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" | $SUDO tee "$list" >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports suricata ethtool iproute2 tcpreplay python3-broker >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
suricata -V
