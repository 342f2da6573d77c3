"""dpack serve: the pipeline from Zeek's batches to verdicts, scoring in-process or in workers, metrics."""
