"""Where verdicts go besides Zeek: the ECS alert feed and Suricata rules (torch-free)."""
