"""Detectors over connection summaries (conn.log fields): features, tables, autoencoder, classifier."""
