"""Host context: each flow seen with its originator's recent past, at the moment of its prefix verdict.

``state`` keeps bounded per-host histories and turns them into causal features; ``stage`` is the second
stage fitted on benign host histories only, which combines the prefix score with those features. The
same ``ContextScorer`` runs offline (``dpack score``/``evaluate``, on the merged stream of verdicts)
and live (``dpack serve``, per scoring process; workers are dealt flows by host)."""
