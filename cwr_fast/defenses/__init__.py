"""Class-wise defenses: training policies that favour the vulnerable classes (`--defense NAME` in
`python -m cwr_fast.train`), and the inference-time per-class calibration of the final layer.

    base         ClasswisePolicy (the extension point, and the identity policy "none"),
                 register_defense, build_defense, parse_options
"""

from cwr_fast.defenses.base import (DEFENSES, ClasswisePolicy, build_defense, parse_options,
                                    register_defense)

__all__ = ["DEFENSES", "ClasswisePolicy", "build_defense", "parse_options", "register_defense"]
