"""Text as model input: character trigrams and a vocabulary built on the training texts.

Small and dependency-free on purpose: enough for the gallery and for config-driven text
runs, whose vocabulary is saved in the run folder so predictions use the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["TrigramVocabulary", "trigrams"]

PAD, UNKNOWN = 0, 1


def trigrams(text: str) -> list[str]:
    """Character trigrams of each lower-cased word, with word boundaries marked.

    >>> trigrams("Good day")
    ['<go', 'goo', 'ood', 'od>', '<da', 'day', 'ay>']
    """
    grams: list[str] = []
    for word in text.lower().split():
        padded = f"<{word}>"
        grams += [padded[i : i + 3] for i in range(len(padded) - 2)]
    return grams


class TrigramVocabulary:
    """Trigram -> id (0 pads, 1 is an unknown trigram), built from training texts.

    >>> vocab = TrigramVocabulary.build(["good", "goods", "bad"], min_count=1)
    >>> vocab.encode(["good", "zzz"], length=5).tolist()
    [[3, 7, 10, 8, 0], [1, 1, 1, 0, 0]]
    """

    def __init__(self, grams: Sequence[str]) -> None:
        self.grams = list(grams)
        self.ids = {gram: i + 2 for i, gram in enumerate(self.grams)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2) -> TrigramVocabulary:
        counts: dict[str, int] = {}
        for text in texts:
            for gram in trigrams(text):
                counts[gram] = counts.get(gram, 0) + 1
        return cls(sorted(g for g, c in counts.items() if c >= min_count))

    def __len__(self) -> int:
        return len(self.grams) + 2

    def encode(self, texts: Sequence[str], length: int = 16) -> torch.Tensor:
        """Ids of each text's trigrams, cut or padded to ``length``: int64 ``(len(texts), length)``."""
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.ids.get(g, UNKNOWN) for g in trigrams(text)][:length]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids)
        return out
