"""Input pipelines, one job per module, each importing only those before it.

sources (where images come from; the `DataSource` interface) and transforms (pure per-image
ops) -> check (which files cannot be decoded and why) -> decoding (a source decoded in
parallel groups, bad files skipped and named) -> stats (mean RGB and PCA) -> pipelines (the
training and validation datasets).
"""
