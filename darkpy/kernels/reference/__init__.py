"""The loop-for-loop oracle: darknet's CPU kernels transliterated, one module per family.

Every fast kernel in ``darkpy.kernels`` is tested bit for bit against these.
"""
