"""Moving tensors between torch and the wire's numpy arrays."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous CPU numpy array of ``tensor`` (no copy when it already is one)."""
    array = tensor.detach().cpu().numpy()
    # Not np.ascontiguousarray: it turns zero-dim arrays (BatchNorm's counters) into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (possibly read-only) wire array.

    Frames decode to read-only views of the payload; torch warns about those because writing
    through them would be undefined. Callers only read them (inputs, or sources copied by
    ``load_state_dict``), so the warning is noise here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: to_numpy(value) for name, value in state.items()}


def arrays_to_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: from_numpy(value) for name, value in arrays.items()}


def warm_up_torch() -> None:
    """Pay torch's one-time costs (lazy imports on the first optimiser step: seconds) now.

    Otherwise the first round's first batch would carry them and look like a straggler.
    """
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    torch.autograd.backward((weight * 2).sum())
    optimizer.step()
