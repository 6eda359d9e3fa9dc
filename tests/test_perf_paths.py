"""The training step's fast paths (lmablate.engine.step.loss_function, DeviceBatches) compute
what the plain step computes; CUDA graphs are chosen only where they are safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmablate.data.tokens import Batches
from lmablate.engine.model import LM
from lmablate.engine.step import DeviceBatches, loss_function
from lmablate.study.config import RunConfig, from_dict


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
    total.backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(w[:, :-1])
    want = F.cross_entropy(logits.view(-1, 320), w[:, 1:].reshape(-1))
    (want / 2).backward()
    assert not graphs
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(total, want / 2, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():  # the tied embedding / head included
        torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("grads", ["both", "h", "weight"])
def test_linear_cross_entropy_matches_linear_then_cross_entropy(monkeypatch, chunk, grads):
    """The CPU head + loss in chunks (gradients made in the forward, scaled in the backward)
    equals ``F.cross_entropy(F.linear(h, w), t)``: loss, both gradients, any chunk size (the
    last chunk short), an upstream gradient other than 1, either input without gradient."""
    from lmablate.engine import losses
    monkeypatch.setattr(losses, "LINEAR_CE_CHUNK", chunk)
    torch.manual_seed(0)
    h0, w0 = torch.randn(150, 24), torch.randn(333, 24) * 0.5
    t = torch.randint(0, 333, (150,))
    h1, w1 = h0.clone().requires_grad_(grads != "weight"), w0.clone().requires_grad_(grads != "h")
    h2, w2 = h0.clone().requires_grad_(grads != "weight"), w0.clone().requires_grad_(grads != "h")
    got = losses.linear_cross_entropy(h1, w1, t)
    want = F.cross_entropy(F.linear(h2, w2), t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (got * -0.3).backward()
    (want * -0.3).backward()
    for a, b in ((h1, h2), (w1, w2)):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


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
    """losses.cross_entropy's CPU path (softmax - one_hot from saved log-probabilities) gives
    F.cross_entropy's loss and gradient; its in-place backward refuses to run twice."""
    from lmablate.engine.losses import cross_entropy

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
