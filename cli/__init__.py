"""The composition root: the ``cistern`` command, the local all-in-one
supervisor (``cistern up``), and the wiring of each process.

May import: every cistern package.
"""
