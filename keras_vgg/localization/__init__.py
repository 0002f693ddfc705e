"""Localisation (Appendix A): box regression nets, their dense box maps, greedy merging.

Modules (each imports only those above it):

- `boxes`: the two box forms (image corners, crop-relative centres), IoU, boxes under a
  crop, a rescale and a flip (NumPy).
- `network`: the localisation net (`build_localizer`, `localizer_from_classifier`), SCR or
  PCR, recorded in its `ModelRecord`; `BoxLoss`; its dense twin is `to_fully_convolutional`.
- `annotations`: VOC XML and CSV manifests into a `BoxSet` (bad annotations skipped).
- `pipeline`: (crop, box target) batches for training and validation.
- `merge`: the greedy merge of box predictions (OverFeat).
- `evaluate`: protocols 1 and 2, top-5 localisation error, result tables, drawn guesses.

The localisation demo (`kvgg demo localize`) is `keras_vgg.demos.localization`.
"""
