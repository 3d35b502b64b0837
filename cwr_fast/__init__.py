"""cwr_fast: fast class-wise robustness of adversarially trained image classifiers."""

from cwr_fast import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
