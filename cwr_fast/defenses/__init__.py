"""Class-wise defenses: training policies that favour the vulnerable classes (`--defense NAME` in
`python -m cwr_fast.train`), and the inference-time per-class calibration of the final layer.

    base         ClasswisePolicy (the extension point, and the identity policy "none"),
                 register_defense, build_defense, parse_options
    reweight     "cwr": class-wise loss weights and eps budgets from the validation robustness
                 (our formulation of Tian et al., KDD 2021)
    frl          "frl": Fair Robust Learning (Xu et al., ICML 2021), reweight / remargin on TRADES
    cfa          "cfa": CFA, class-wise calibrated margin, regularisation and FAWA (Wei et al., CVPR 2023)
    wat          "wat": WAT, Hedge weights on the worst-class losses (Li and Liu, AAAI 2023)
    calibration  ClasswiseCalibration (logits' = s*z + b, part of the model), fit_calibration
"""

from cwr_fast.defenses.base import (DEFENSES, ClasswisePolicy, build_defense, parse_options,
                                    register_defense)
from cwr_fast.defenses.calibration import ClasswiseCalibration, fit_calibration
from cwr_fast.defenses.cfa import CFA
from cwr_fast.defenses.frl import FairRobustLearning
from cwr_fast.defenses.reweight import ClasswiseReweight
from cwr_fast.defenses.wat import WAT

__all__ = ["CFA", "DEFENSES", "FairRobustLearning", "WAT", "ClasswiseCalibration", "ClasswisePolicy",
           "ClasswiseReweight", "build_defense", "fit_calibration", "parse_options",
           "register_defense"]
