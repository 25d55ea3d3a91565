"""Loss weighting strategies behind one interface (DESIGN.md, 'Weighting strategies'),
one module per strategy, registered in `WEIGHTING` (name -> class); the trainer never
branches on a name. Each class documents its paper and how its weights are normalised.
"""

from __future__ import annotations

from recsys_mtl.objectives.weighting.base import Losses, Weighting
from recsys_mtl.objectives.weighting.dwa import DynamicWeightAverage
from recsys_mtl.objectives.weighting.famo import FamoWeighting
from recsys_mtl.objectives.weighting.gradnorm import GradNormWeighting
from recsys_mtl.objectives.weighting.inverse_loss import InverseLossWeighting
from recsys_mtl.objectives.weighting.pcgrad import PCGradWeighting
from recsys_mtl.objectives.weighting.static import StaticWeighting
from recsys_mtl.objectives.weighting.uncertainty import UncertaintyWeighting

WeightingStrategy = Weighting

WEIGHTING: dict[str, type[Weighting]] = {
    "static": StaticWeighting,
    "inverse_loss": InverseLossWeighting,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNormWeighting,
    "dwa": DynamicWeightAverage,
    "pcgrad": PCGradWeighting,
    "famo": FamoWeighting,
}

__all__ = ["WEIGHTING", "Losses", "Weighting", "WeightingStrategy"]
