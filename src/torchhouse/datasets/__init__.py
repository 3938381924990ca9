"""Small real data sets shipped with torchhouse, so nothing is downloaded.

``load_breast_cancer``: the UCI "Breast Cancer Wisconsin (Diagnostic)" table (569 rows,
30 features), CC BY 4.0. ``load_sunspots``: yearly sunspot numbers 1700-2008 (NOAA NGDC,
public domain). ``load_sentiment_words``: 7,217 words of the VADER sentiment lexicon with
their human ratings (MIT).

``load_digits``: the UCI "Optical Recognition of Handwritten Digits" test set (1,797
8x8 images of the digits 0-9, pixel values 0-16), by E. Alpaydin and C. Kaynak, 1998.
Licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); the same copy that
scikit-learn ships as ``sklearn.datasets.load_digits``. See LICENSES.md beside this file.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch


def load_digits(normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 handwritten digits as tensors: images ``(N, 1, 8, 8)`` and labels ``(N,)``.

    Images are float32 scaled to [0, 1] when ``normalize`` (else uint8 0-16); labels are
    int64. ``x.numpy()`` gives NumPy arrays.

    Example:
        >>> x, y = load_digits()
        >>> tuple(x.shape), tuple(y.shape), int(y.max())
        ((1797, 1, 8, 8), (1797,), 9)
    """
    with resources.files(__name__).joinpath("digits.npz").open("rb") as handle:
        data = np.load(handle)
        images, labels = data["images"], data["labels"]
    x: np.ndarray = images[:, None, :, :]
    x = x.astype(np.float32) / 16.0 if normalize else x.copy()
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """569 tumours: features ``(569, 30)`` float32, labels ``(569,)`` int64 (1 = benign), feature names.

    Example:
        >>> x, y, names = load_breast_cancer()
        >>> x.shape, int(y.sum()), names[0]
        ((569, 30), 357, 'mean_radius')
    """
    import csv

    with resources.files(__name__).joinpath("breast_cancer.csv").open("r") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    x = np.array([[float(v) for v in r[:-1]] for r in body], dtype=np.float32)
    y = np.array([int(r[-1]) for r in body], dtype=np.int64)
    return x, y, header[:-1]


def load_sunspots() -> tuple[np.ndarray, np.ndarray]:
    """Yearly sunspot numbers: years ``(309,)`` int64 (1700-2008) and values ``(309,)`` float32.

    Example:
        >>> years, values = load_sunspots()
        >>> int(years[0]), int(years[-1]), len(values)
        (1700, 2008, 309)
    """
    import csv

    with resources.files(__name__).joinpath("sunspots.csv").open("r") as handle:
        rows = list(csv.reader(handle))[1:]
    years = np.array([int(float(r[0])) for r in rows], dtype=np.int64)
    values = np.array([float(r[1]) for r in rows], dtype=np.float32)
    return years, values


def load_sentiment_words() -> tuple[list[str], np.ndarray, np.ndarray]:
    """7,217 English words rated for sentiment (VADER lexicon, MIT): words, labels, valence.

    ``labels`` is int64, 1 when the mean human rating is positive; ``valence`` the mean
    rating (-4 to +4) as float32.

    Example:
        >>> words, labels, valence = load_sentiment_words()
        >>> len(words), int(labels.sum()), words[0]
        (7217, 3190, 'aas')
    """
    import csv

    with resources.files(__name__).joinpath("sentiment_words.csv").open("r") as handle:
        rows = list(csv.reader(handle))[1:]
    words = [r[0] for r in rows]
    return (
        words,
        np.array([int(r[2]) for r in rows], dtype=np.int64),
        np.array([float(r[1]) for r in rows], dtype=np.float32),
    )


def train_test_split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded random split: ``x_train, x_test, y_train, y_test``.

    Example:
        >>> x, y = load_digits()
        >>> x_tr, x_te, y_tr, y_te = train_test_split(x, y, 0.2)
        >>> len(x_tr), len(x_te)
        (1438, 359)
    """
    n = len(x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], x[test], y[train], y[test]


__all__ = ["load_breast_cancer", "load_digits", "load_sentiment_words", "load_sunspots", "train_test_split"]
