"""Localisation (Appendix A): box regression nets, their dense box maps, greedy merging.

Modules (each imports only those above it):

- `boxes`: the two box forms (image corners, crop-relative centres), IoU, boxes under a
  crop, a rescale and a flip (NumPy).
"""
