"""I3D for flowprep: the network (``i3d``) and its pretrained weights (``weights``)."""

from flowprep.models.i3d import ENDPOINTS, I3D, I3DConfig
from flowprep.models.weights import kinetics400_labels, load_i3d

__all__ = ["ENDPOINTS", "I3D", "I3DConfig", "kinetics400_labels", "load_i3d"]
