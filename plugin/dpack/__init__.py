"""dpack: early detection of malicious network flows from their first packets (D-PACK) for Zeek/Suricata."""

__version__ = "0.1.0"
