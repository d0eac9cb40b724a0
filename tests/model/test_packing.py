"""Packed documents (GPT.forward's doc_ids): each document's logits as if it ran alone."""

import pytest
import torch

from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT, document_positions


@pytest.mark.parametrize(
    "switches",
    [dict(), dict(position="rope"), dict(position="rope", rotary_pct=0.5, parallel_residual=True)],
    ids=["learned", "rope", "partial-rope-parallel"],
)
@pytest.mark.parametrize("lengths", [[3, 5, 1], [9], [1, 1, 1, 2, 4]])
def test_packed_documents_equal_each_alone(switches, lengths):
    torch.manual_seed(len(lengths))
    config = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=24, **switches)
    model = GPT(config).eval()
    docs = [torch.randint(0, 37, (1, n)) for n in lengths]
    row = torch.cat(docs, dim=1)
    doc_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    with torch.no_grad():
        packed = model(row, doc_ids=doc_ids)
        alone = torch.cat([model(d) for d in docs], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_packed_loss_is_the_mean_over_documents_tokens():
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=37, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config).eval()
    idx = torch.randint(0, 37, (2, 8))
    targets = torch.randint(0, 37, (2, 8))
    targets[0, 3] = -100
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [5, 5, 5, 5, 5, 5, 6, 6]])
    with torch.no_grad():
        loss = model(idx, targets, doc_ids=doc_ids)
        logits = model(idx, doc_ids=doc_ids)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def test_document_positions_and_mask():
    pos, visible = document_positions(torch.tensor([[7, 7, 2, 2, 2, 7]]))
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0]]
    # the last token restarts document 7: it sees only itself, not the first two 7s
    assert visible[0, 0, 5].tolist() == [False, False, False, False, False, True]
    assert visible[0, 0, 4].tolist() == [False, False, True, True, True, False]
