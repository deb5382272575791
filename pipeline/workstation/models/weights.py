"""Loading published or earlier weights into a freshly built network.

Files are read with ``weights_only=True``: a weights file from the internet must not be
able to run code when unpickled. The only mismatch tolerated is the classifier head's
class count, which is what fine-tuning from ImageNet weights to a new dataset means;
the model keeps its fresh head and the caller is told which keys it did not take.
Anything else (other architecture, other width, a corrupt file) is a
:class:`~pipeline.errors.CheckpointError` naming the file, never a partial load.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import CheckpointError

HEAD_KEYS: tuple[str, ...] = ("fc.weight", "fc.bias")
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model")
SHOW = 3  # how many offending keys an error message names


def load_weights(model: nn.Module, path: Path | str, fresh_head: bool = True) -> list[str]:
    """Load a torchvision-format state dict into ``model``; return head keys left fresh
    (never with ``fresh_head`` False: an imported classifier is taken whole or refused)."""
    path = Path(path)
    state = _unwrap(path, _read(path))
    expected = model.state_dict()
    state, replaced = _keep_fresh_head(state, expected) if fresh_head else (state, [])
    _fill_bn_counters(state, expected)
    _check_keys(path, state, expected)
    _check_shapes(path, state, expected)
    model.load_state_dict(state, strict=True)
    return replaced


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # also raised for plain garbage, not only code
        raise CheckpointError(f"{path}: not a state dict loadable with weights_only "
                              f"({_pickle_reason(exc)})") from None
    except Exception as exc:  # corrupt files raise KeyError, EOFError, RuntimeError, ...
        detail = ": ".join(filter(None, [type(exc).__name__, _first_sentence(str(exc))]))
        raise CheckpointError(f"{path}: not loadable as a weights file ({detail})") from None


def _pickle_reason(exc: pickle.UnpicklingError) -> str:
    """The informative line of torch's multi-paragraph weights_only refusal."""
    lines = [line.strip() for line in str(exc).splitlines()]
    reasons = [line[line.index("Unsupported"):] for line in lines if "Unsupported" in line]
    return _first_sentence(reasons[0]) if reasons else "refused by the weights-only unpickler"


def _first_sentence(text: str) -> str:
    """torch's messages run to paragraphs; an error line keeps their first sentence."""
    return text.split(". ")[0].splitlines()[0] if text else ""


def _unwrap(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The state dict itself, or the one a checkpoint holds under a wrapper key."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise CheckpointError(f"{path}: not a state dict; expected a mapping of names to "
                              f"tensors (or one under {' or '.join(WRAPPER_KEYS)}), "
                              f"got {_describe(obj)}")
    return dict(obj)


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"{type(obj).__name__} with keys {_first(list(map(str, obj)))}"
    return type(obj).__name__


def _first(keys: list[str]) -> str:
    """The first few keys, and how many more, for a one-line message."""
    shown = ", ".join(keys[:SHOW])
    return shown + (f" and {len(keys) - SHOW} more" if len(keys) > SHOW else "")


def _keep_fresh_head(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Swap in the model's own head when only the class count differs (fine-tuning)."""
    if not _only_class_count_differs(state, expected):
        return state, []
    replaced = [key for key in HEAD_KEYS if key in state]
    return {**state, **{key: expected[key] for key in replaced}}, replaced


def _only_class_count_differs(state: Mapping[str, torch.Tensor],
                              expected: Mapping[str, torch.Tensor]) -> bool:
    weight = HEAD_KEYS[0]
    if weight not in state or weight not in expected:
        return False
    ours, theirs = expected[weight].shape, state[weight].shape
    # Same feature width, other row count: a head for another dataset, not another net.
    return ours != theirs and len(ours) == len(theirs) == 2 and ours[1] == theirs[1]


def _fill_bn_counters(state: dict[str, torch.Tensor],
                      expected: Mapping[str, torch.Tensor]) -> None:
    """Take BN's ``num_batches_tracked`` from the model where the file predates it.

    torchvision's original ImageNet files (2017) have no such keys; they count batches,
    not weights, so their absence is no mismatch.
    """
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = expected[key]


def _check_keys(path: Path, state: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{path}: does not fit this model; {len(missing)} missing "
                              f"key(s): {_first(missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: does not fit this model; {len(unexpected)} "
                              f"unexpected key(s): {_first(unexpected)}")


def _check_shapes(path: Path, state: Mapping[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> None:
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: does not fit this model; {len(wrong)} shape "
                              f"mismatch(es): {_first(wrong)}")
