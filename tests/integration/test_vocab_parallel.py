"""The tensor-parallel head with a padded vocabulary (GPT-2's case: 50,257 tokens in 50,304 rows): two gloo
processes hold half the vocabulary's rows each, and the loss (``loss_parallel``), the embedding's gradient and the
logits the task scoring reads equal one process's; the padding rows never count."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

VOCAB = 6350  # padded to 6400 rows (under 1% more), like GPT-2's


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    from conftest import compose_config

    from nanogpt_runner.config.schema import to_config
    from nanogpt_runner.distributed import parallelize, process_group
    from nanogpt_runner.model.gpt import GPT, padded_vocab_size

    cfg = to_config(compose_config(["model=tiny", "parallel=tp", "train.precision=fp32", "train.device=cpu"]))
    layout = process_group.setup(cfg.parallel, "cpu")
    try:
        assert padded_vocab_size(VOCAB) == 6400
        torch.manual_seed(0)
        par = parallelize.parallelize(GPT(cfg.model, VOCAB), layout, cfg, "fp32")
        torch.manual_seed(0)
        single = GPT(cfg.model, VOCAB)
        x, y = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
        dist.broadcast(x, 0)
        dist.broadcast(y, 0)
        off = torch.autocast("cpu", enabled=False)
        loss = par.forward_backward(x, y, 1.0, True, off, torch.amp.GradScaler("cpu", enabled=False))
        expected = single(x, y)[1]
        expected.backward()
        weight = par.module.lm_head.weight
        results.put((rank, list(weight.to_local().shape), loss.item() - expected.item(),
                     (par.eval_logits(x, off) - single(x)[0]).abs().max().item(),
                     (weight.grad.full_tensor() - single.lm_head.weight.grad).abs().max().item()))
    finally:
        dist.destroy_process_group()


def test_a_vocabulary_sharded_head_equals_one_process_with_padding_rows():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank, args=(port, results), nprocs=2)
    found = sorted(results.get() for _ in range(2))
    for rank, shape, loss_gap, logits_gap, grad_gap in found:
        assert shape == [3200, 32], (rank, shape)  # half the padded rows on each rank
        assert abs(loss_gap) < 1e-5 and logits_gap < 1e-5 and grad_gap < 1e-6, (rank, loss_gap, logits_gap, grad_gap)
