"""The held-out scores of stages.pretrain against models whose answers are known: a uniform model's masked NLL
is log V, an oracle fills every span exactly, an oracle wrong at one token per span gets no exact match and
the known token accuracy, and infilling never shows a model the gold text of the span it fills."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stages.pretrain.scores import infill_accuracy, masked_nll
from stages.pretrain.teacher_training import Encoded

VOCAB, MASK_ID, PAD_ID = 12, 11, 0


class FixedHead(nn.Module):
    """A model whose output embedding is the identity: the forward's 'hidden states' are its logits."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(VOCAB))

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def _samples(rows: int = 3, length: int = 10) -> list[Encoded]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(rows):
        ids = rng.integers(1, MASK_ID, length).astype(np.int64)
        response = np.zeros(length, dtype=bool)
        response[4:] = True
        out.append(Encoded(ids=ids, maskable=response.copy(), response=response, key=1000 + i, sample_id=f"s{i}"))
    return out


def test_a_uniform_model_scores_log_vocab():
    def uniform(noised, clean, valid):
        return torch.zeros(*noised.shape, VOCAB)

    nll = masked_nll(FixedHead(), uniform, _samples(), t=0.5, mask_token_id=MASK_ID, pad_id=PAD_ID)
    assert nll == pytest.approx(math.log(VOCAB), rel=1e-6)


@pytest.mark.parametrize("block_size", [10, 3])
@pytest.mark.parametrize("wrong_first", [False, True])
def test_infilling_scores_an_oracle_and_never_shows_the_span(wrong_first, block_size):
    samples = _samples()
    gold = torch.from_numpy(np.stack([s.ids for s in samples]))
    spans = [(4, 8), (5, 7), (6, 10)]
    inside = torch.zeros_like(gold, dtype=torch.bool)
    for row, (a, b) in enumerate(spans):
        inside[row, a:b] = True
    answer = gold.clone()
    if wrong_first:  # a confidently wrong first token of every span
        for row, (a, _) in enumerate(spans):
            answer[row, a] = (gold[row, a] % (MASK_ID - 1)) + 1
    calls = []

    def oracle(noised, clean, valid):
        # the clean stream is the text so far: inside a span it holds only mask ids and filled tokens
        hidden_gold = (clean == gold) & inside
        assert not bool(hidden_gold[noised == MASK_ID].any()), "infilling showed the model a gold token it fills"
        calls.append(int((noised == MASK_ID).sum()))
        block = torch.arange(gold.shape[1]) // block_size
        for row in range(gold.shape[0]):  # blocks fill left to right: nothing after a block still masked
            pending = block[(noised[row] == MASK_ID)]
            filled = block[inside[row] & (noised[row] != MASK_ID)]
            assert not pending.numel() or not filled.numel() or int(filled.max()) <= int(pending.min())
        # later positions are the most confident: only the block order keeps them from going first
        confidence = torch.where(inside, 5.0 + torch.arange(gold.shape[1]).float(), 1.0)
        return nn.functional.one_hot(answer, VOCAB).float() * confidence[..., None]

    exact, token, n = infill_accuracy(FixedHead(), oracle, samples, spans, mask_token_id=MASK_ID, pad_id=PAD_ID,
                                      block_size=block_size)
    assert n == 3 and calls[0] == 4 + 2 + 4 and calls == sorted(calls, reverse=True)
    if wrong_first:
        assert exact == 0.0 and token == pytest.approx((3 + 1 + 3) / 10)
    else:
        assert exact == 1.0 and token == 1.0
