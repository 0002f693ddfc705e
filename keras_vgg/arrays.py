"""`to_numpy`: a tensor of any framework, or anything array-like, as a NumPy array.

The one conversion the package makes from tensors to NumPy: the views and crops of the data
package (TensorFlow tensors), the outputs of the compiled networks (the Keras backend's
tensors: TensorFlow, JAX or torch) and the tensors of a torchvision `.pth` file (torch
tensors, whatever Keras's backend). It needs NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (TensorFlow, torch, JAX) or array-like as a NumPy array.

    A torch tensor is detached from its graph and copied to the CPU first; bfloat16 stays
    bfloat16 (`ml_dtypes`, as Keras's `convert_to_numpy` gives it). A TensorFlow tensor
    gives its `.numpy()`; anything else `np.asarray` (a NumPy array as it is).

    Args:
        x: One tensor or array-like (not a structure of them).

    Returns:
        The NumPy array.
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            import ml_dtypes

            return x.float().numpy().astype(ml_dtypes.bfloat16)
        return x.numpy()
    if hasattr(x, "numpy"):  # TensorFlow
        return x.numpy()
    return np.asarray(x)
