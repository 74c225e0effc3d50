"""Former home of the CelebA, NYUv2 and Cityscapes benchmark data, kept as re-exports.

The adapters now live next to their loaders: :mod:`mtlopt.benchmarks.data.celeba` (``CelebAData``,
``CELEBA_METRICS``) and :mod:`mtlopt.benchmarks.data.dense` (``DenseData``, ``DENSE_METRICS``).
"""

from .data.celeba import CELEBA_METRICS, CelebAData
from .data.dense import DENSE_METRICS, DenseData

__all__ = ["CELEBA_METRICS", "DENSE_METRICS", "CelebAData", "DenseData"]
