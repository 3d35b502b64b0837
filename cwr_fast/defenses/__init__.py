"""Class-wise defenses: training policies that favour the vulnerable classes (`--defense NAME` in
`python -m cwr_fast.train`), and the inference-time per-class calibration of the final layer.

    base         the contract: ClasswisePolicy (hooks with no-op defaults, and the identity
                 policy "none"), RunContext (what a defense may read of the run),
                 register_defense, build_defense, parse_options
    reweight     "cwr": class-wise loss weights and eps budgets from the validation robustness
                 (our formulation of Tian et al., KDD 2021)
    frl          "frl": Fair Robust Learning (Xu et al., ICML 2021), reweight / remargin on TRADES
    cfa          "cfa": CFA, class-wise calibrated margin, regularisation and FAWA (Wei et al., CVPR 2023)
    wat          "wat": WAT, Hedge weights on the worst-class losses (Li and Liu, AAAI 2023)
    calibration  the class-wise calibration logits' = s*z + b as training uses it: its fitting
                 (fit_calibration, calibrate, CalibrationConfig) is in the evaluation layer,
                 cwr_fast.classwise.calibration; the module itself is cwr_fast.models.calibration
"""

from cwr_fast.defenses.base import (DEFENSES, ClasswisePolicy, RunContext, build_defense,
                                    parse_options, register_defense)
from cwr_fast.defenses.calibration import fit_calibration
from cwr_fast.models.calibration import ClasswiseCalibration
from cwr_fast.defenses.cfa import CFA
from cwr_fast.defenses.frl import FairRobustLearning
from cwr_fast.defenses.reweight import ClasswiseReweight
from cwr_fast.defenses.wat import WAT

__all__ = ["CFA", "DEFENSES", "FairRobustLearning", "WAT", "ClasswiseCalibration", "ClasswisePolicy",
           "ClasswiseReweight", "RunContext", "build_defense", "fit_calibration", "parse_options",
           "register_defense"]
