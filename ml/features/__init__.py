"""The 49-feature set used by training and by the live/backtest strategy (see definition.py).

compute_features evaluates a whole history at once; OnlineFeatures evaluates bar by bar across many
symbols. Both read the same formulas, and tests/test_features.py proves they agree.
"""

from ml.features.batch import compute_features
from ml.features.definition import FEATURE_NAMES, FEATURE_SET_HASH, FEATURE_VERSION, N_FEATURES, WARMUP_BARS
from ml.features.online import OnlineFeatures, bar_columns

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SET_HASH",
    "FEATURE_VERSION",
    "N_FEATURES",
    "WARMUP_BARS",
    "OnlineFeatures",
    "bar_columns",
    "compute_features",
]
