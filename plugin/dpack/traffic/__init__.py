"""From captured bytes to flows: capture files, packets, Zeek's connection rules, the prefix function."""
