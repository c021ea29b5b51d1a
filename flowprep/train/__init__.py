"""Training layer: datasets over stores (``data``), samplers (``sampling``: dense, TSN, two-stream,
SlowFast), models by name (``plugins``), the I3D stream classifier, ``train``, ``evaluate`` and
``predict``.  Reads stores; writes only its run folder.
"""
