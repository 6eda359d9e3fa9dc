"""The training step's fast paths (lmablate.train.loss_function, DeviceBatches) compute what the
plain step computes; CUDA graphs are chosen only where they are safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmablate.config import RunConfig, from_dict
from lmablate.model import LM
from lmablate.tokens import Batches
from lmablate.train import DeviceBatches, loss_function


def cfg(model: dict | None = None, **train) -> RunConfig:
    return from_dict(RunConfig, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2,
                                           "d_ff": 64, **(model or {})},
                                 "train": {"batch_size": 4, "seq_len": 16, **train}})


def test_device_batches_on_cpu_are_the_host_batches():
    tokens = np.random.default_rng(0).integers(0, 300, 5000).astype(np.uint16)
    batches = Batches(tokens, 16, 4, seed=3)
    dev = DeviceBatches(batches, torch.device("cpu"))
    assert not dev.on_device
    for i in (0, 1, 7):
        w = dev.get(i)
        assert w.dtype == torch.int64 and w.shape == (4, 17)
        np.testing.assert_array_equal(w.numpy(), batches.get(i))


def test_loss_function_is_the_plain_cross_entropy():
    c = cfg(grad_accum=2, compile="false")
    torch.manual_seed(0)
    model = LM(c.model, 320, max_seq_len=16)
    w = torch.randint(0, 320, (4, 17))
    fn, graphs = loss_function(model, c, torch.device("cpu"), None)
    loss, total = fn(w)
    logits = model(w[:, :-1])
    want = F.cross_entropy(logits.view(-1, 320), w[:, 1:].reshape(-1))
    assert not graphs
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(total, want / 2, rtol=0, atol=0)


@pytest.mark.parametrize(("model", "train", "graphs"), [
    pytest.param({}, {}, True, id="dense"),
    pytest.param({"num_experts": 4}, {}, False, id="moe"),
    pytest.param({}, {"grad_accum": 2}, False, id="grad-accum"),
])
def test_cuda_graphs_only_for_dense_models_without_accumulation(model, train, graphs):
    c = cfg(model, **train)
    lm = LM(c.model, 320, max_seq_len=16)
    # torch.compile is lazy: choosing the mode touches no device, so this runs without a GPU
    _, uses_graphs = loss_function(lm, c, torch.device("cuda"), torch.bfloat16)
    assert uses_graphs is graphs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cross_entropy_matches_torch_loss_and_gradient(dtype):
    """model.cross_entropy's CPU path (softmax - one_hot from saved log-probabilities) gives
    F.cross_entropy's loss and gradient; its in-place backward refuses to run twice."""
    from lmablate.model import cross_entropy

    torch.manual_seed(0)
    x = torch.randn(64, 320, dtype=dtype) * 3
    t = torch.randint(0, 320, (64,))
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    got = cross_entropy(a, t)
    want = F.cross_entropy(b.float(), t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (got * 2.5).backward(retain_graph=True)
    (want * 2.5).backward()
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(RuntimeError, match="runs once"):
        got.backward()
