"""The TV-L1 parameter table: ``DEFAULT_TVL1_PARAMS``, the one place the defaults live (re-exported
by ``flowprep.flow.api``; ``tvl1_torch.TVL1Params`` takes its field defaults from it).  Data only,
imports nothing from flowprep, so every solver module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# TV-L1 parameters, named after OpenCV's DualTVL1OpticalFlow setters.  All but two are OpenCV's
# defaults.  scale_step is 0.5 instead of 0.8: with 5 scales of 0.8 the coarsest level is only
# 0.8**4 = 0.41 of full size and the solver cannot follow motion over ~10 px (EPE 11.1 px vs
# 1.8 px with 0.5 on Middlebury's motorcycle pair at half size); with 5 scales of 0.5 the coarsest
# level is 1/16 of full size, so a 20 px motion (the storage bound) is ~1.3 px there.
DEFAULT_TVL1_PARAMS: Mapping[str, Any] = {
    "tau": 0.25,  # time step of the numerical scheme
    "lambda_": 0.15,  # data-term weight (smaller = smoother)
    "theta": 0.3,  # tightness of the u/v coupling
    "nscales": 5,  # pyramid levels
    "scale_step": 0.5,  # downscale factor between levels (see above)
    "warps": 5,  # warpings per level
    "epsilon": 0.01,  # stopping threshold
    "inner_iterations": 30,
    "outer_iterations": 10,
    "gamma": 0.0,  # illumination-variation term (0 = off, as in the original TV-L1)
    "median_filtering": 5,  # median filter size applied to the flow after each warp
}
