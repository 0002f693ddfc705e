"""Input pipelines: sources, pure tf transforms, datasets, dataset statistics."""
