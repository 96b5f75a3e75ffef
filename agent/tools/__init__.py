"""A model's way to the fleet, offline: export, quantize, prune, compare, distill, pack and inspect.

These tools run on a workstation or in CI, not in the daemon. They sit above
``models/`` and ``vision/`` because they feed models the way the agent does:
frames through the agent's own ``Preprocessor`` and outputs through its heads.
"""
