"""The class-wise calibration of the final layer, as training uses it (`cwr_fast.train --calibrate`
fits one on the held-out validation images before the final report: Trainer.calibrate).

The fitting, its settings and its theory live in the evaluation layer,
cwr_fast.classwise.calibration, because `cwr_fast.evaluate --calibrate-split` fits one too and
evaluating a model imports no defense; the wrapper is cwr_fast.models.calibration. This module
names them for the defenses' side.
"""

from __future__ import annotations

from cwr_fast.classwise.calibration import (OPTIONS_GROUP, PARAMS, CalibrationConfig, calibrate,
                                            fit_calibration)
from cwr_fast.models.calibration import ClasswiseCalibration

__all__ = ["OPTIONS_GROUP", "PARAMS", "CalibrationConfig", "ClasswiseCalibration", "calibrate",
           "fit_calibration"]
