"""Temporal-order probe and CAM heat maps (docs/method.md §5, last item).

``visualization.cam`` holds the pure functions (time-reversal pairs, class activation maps,
upsampling, normalisation, overlays, PNG/GIF writers); ``python -m visualization.main_temporal``
is the entry script.
"""
