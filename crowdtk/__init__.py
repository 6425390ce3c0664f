"""crowdtk: semi-supervised crowd counting with a small labeling budget.

Implements *Reducing Spatial Labeling Redundancy for Semi-supervised Crowd Counting*
as a library of stages (this package) under a thin command-line interface
(:mod:`crowdtk.cli`). The library never prints and never exits; it raises
:class:`crowdtk.errors.CrowdtkError` for anything a user can fix.
"""

__version__ = "0.1.0"
