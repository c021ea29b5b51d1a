"""Training layer: datasets over stores (``data``), the I3D stream classifier, ``train``,
``evaluate`` and ``predict``.  Reads stores; writes only its run folder.
"""
