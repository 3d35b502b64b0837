"""cwr_fast: fast class-wise robustness of adversarially trained image classifiers.

    import cwr_fast
    report = cwr_fast.evaluate_model(model, (x, y), attacks="pgd-20,aa", eps=8/255)  # cwr_fast.api
"""

from cwr_fast import ops

__version__ = "0.1.0"
__all__ = ["ClasswiseReport", "evaluate_model", "ops", "__version__"]


def __getattr__(name: str):
    if name in ("evaluate_model", "ClasswiseReport"):  # imported on first use: `import cwr_fast` stays light
        from cwr_fast import api
        return getattr(api, name)
    raise AttributeError(f"module 'cwr_fast' has no attribute {name!r}")
