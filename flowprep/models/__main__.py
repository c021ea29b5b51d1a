"""``python -m flowprep.models``: fetch and convert the pretrained I3D weights (``make weights``)."""

from flowprep.models.weights import main

raise SystemExit(main())
