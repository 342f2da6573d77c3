"""Live verdicts on connection summaries (``DPack::connections``): the flow-record autoencoder and the
CNN-BiLSTM classifier, as ``dpack serve`` runs them (``detectors:`` in the config)."""

from __future__ import annotations

import numpy as np

from ..traffic import handshake
from ..traffic.conn import ConnRecord
from ..verdict import Verdict
from .classifier import RecordClassifier, load_record_classifier
from .features import SEGMENT_NUMERIC, SegmentState, record_table
from .recordae import RecordDetector, load_record_model
from .tables import Table, TableEncoder


def uses_segments(encoder: TableEncoder) -> bool:
    """Whether a record model was trained with the segment features (its encoder knows their columns)."""
    return SEGMENT_NUMERIC[0] in encoder.numeric_names


class RecordScorer:
    """Live verdicts on connection summaries: the record autoencoder decides ``anomalous`` when it is
    configured (else the classifier: any category but benign), the classifier names the category.
    Segment features come from one tracker that persists across batches (they are causal)."""

    def __init__(self, ae: RecordDetector | None, clf: RecordClassifier | None) -> None:
        assert ae is not None or clf is not None, "a record scorer needs a detector"
        self.ae, self.clf = ae, clf
        self.seg = SegmentState()
        self.name = "+".join(m.name for m in (ae, clf) if m is not None)

    @classmethod
    def load(cls, records_model: str, classifier_model: str) -> RecordScorer | None:
        """Both paths optional (""); raises ``ModelError`` for a file that is there but unusable."""
        if not records_model and not classifier_model:
            return None
        ae = load_record_model(records_model) if records_model else None
        clf = load_record_classifier(classifier_model) if classifier_model else None
        return cls(ae, clf)

    @staticmethod
    def _view(t: Table, encoder: TableEncoder) -> Table:
        return t if uses_segments(encoder) else t.without(SEGMENT_NUMERIC)

    def verdicts(self, records: list[ConnRecord]) -> list[Verdict]:
        if not records:
            return []
        t = record_table(records, seg=self.seg)
        cats: list[str] = [""] * len(records)
        conf = np.zeros(len(records))
        if self.clf is not None:
            cats, conf = self.clf.categories(self._view(t, self.clf.encoder))
        if self.ae is not None:
            scores = self.ae.scores(self._view(t, self.ae.encoder))
            thr, detector = self.ae.threshold, "records"
            flags = scores > thr
        else:
            assert self.clf is not None
            benign = self.clf.class_names[0]
            scores = np.asarray([1.0 - c if k == benign else c for k, c in zip(cats, conf, strict=True)])
            thr, detector = 0.5, "classifier"
            flags = np.asarray([k != benign for k in cats])
        return [
            Verdict(
                r.ts,
                r.proto,
                r.src,
                r.sport,
                r.dst,
                r.dport,
                r.community_id,
                float(s),
                float(thr),
                bool(f),
                self.name,
                uid=r.uid,
                handshake=handshake.from_history(r.history),
                detector=detector,
                category=c,
                confidence=float(p),
            )
            for r, s, f, c, p in zip(records, scores, flags, cats, conf, strict=True)
        ]
