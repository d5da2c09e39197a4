"""The training loss, computed only where there is something to learn.

SQuAD labels cover the answer and EOS: about 3% of the tokens of a prompt with its context. A causal LM's forward
would project every position onto the vocabulary (65,024 x tokens fp32 logits for Falcon: 4.2 GB for 16k tokens)
and throw 97% away. We run the transformer without its head, gather the hidden states of labelled positions, and
apply the head and cross-entropy to those alone: the same loss, a fraction of the memory and FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def answer_targets(labels: torch.Tensor, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the loss looks, from a micro-batch's labels on the host: the flat positions (into its [rows x length]
    hidden states) whose next token is labelled, and those tokens.

    Found here, on the CPU, so the GPU never selects by a mask (a boolean index makes the host wait for the GPU to
    count, and cannot be recorded in a CUDA graph). `size` pads both to a fixed length with ignored targets at
    position 0: the loss is the same, and the shapes are fixed for a recorded step (step_graphs.py).
    """
    length = labels.shape[1]
    row, column = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    positions, targets = row * length + column, labels[row, column + 1]
    if size is not None and size > len(positions):
        fill = size - len(positions)
        positions = torch.cat([positions, positions.new_zeros(fill)])
        targets = torch.cat([targets, targets.new_full((fill,), IGNORE_INDEX)])
    return positions, targets


def answer_loss_sum(backbone: nn.Module, head: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy at `positions` (`answer_targets`), so micro-batches add up exactly.

    No attention mask is passed: rows are right-padded and attention is causal, so no real token can see a pad
    token, and SDPA can take its flash kernel (a mask tensor would force a slower one). Pad positions carry no label.
    """
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    logits = head(hidden.flatten(0, 1)[positions]).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def count_label_tokens(labels: torch.Tensor) -> int:
    """Positions that contribute to the loss (the first token can never be a target)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
