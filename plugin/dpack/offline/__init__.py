"""Captures on disk: dpack score (sharded over processes) and dpack evaluate with its report."""
