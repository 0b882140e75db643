"""The GPT: nanoGPT's architecture and parameter counts, tied weights, sampling, and activation
recomputation that changes memory but not results."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from nanogpt_runner.model.gpt import GPT


def build(preset: str = "tiny", vocab_size: int = 65, **changes) -> GPT:
    cfg = compose_config([f"model={preset}"] + [f"model.{k}={v}" for k, v in changes.items()]).model
    torch.manual_seed(0)
    return GPT(cfg, vocab_size)


def test_logits_and_loss_shapes():
    model = build()
    idx = torch.randint(0, 65, (3, 32))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 32, 65)
    assert loss.shape == () and 3.5 < loss.item() < 4.8  # about ln(65) at initialisation


def test_lm_head_is_tied_to_the_token_embedding():
    model = build()
    assert model.lm_head.weight is model.tok_emb.weight
    untied = build(tie_weights=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() == model.num_params() + 65 * 32


@pytest.mark.parametrize("preset, vocab, millions", [
    ("baby", 65, 0.80),          # nanoGPT's baby GPT reports 0.80M
    ("shakespeare", 65, 10.65),  # nanoGPT's shakespeare-char reports 10.65M
    ("gpt2", 50257, 123.65),     # GPT-2 small: 124M with position embeddings, 123.65M without
])
def test_parameter_counts_match_nanogpt(preset, vocab, millions):
    with torch.device("meta"):
        model = build(preset, vocab)
    assert round(model.num_params() / 1e6, 2) == millions


def test_flops_per_token_is_6n_plus_attention():
    model = build()
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 32 * 32


def test_residual_projections_get_the_scaled_init():
    with torch.no_grad():
        model = build("baby")
    proj_std = model.blocks["0"].attn.proj.weight.std().item()
    fc_std = model.blocks["0"].mlp.fc.weight.std().item()
    assert fc_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.05)


def test_generate_extends_the_prompt_deterministically_for_a_seed():
    model = build().eval()
    prompt = torch.zeros((1, 5), dtype=torch.long)
    runs = [model.generate(prompt, 40, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert runs[0].shape == (1, 45)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :5], prompt)


def test_top_k_one_is_greedy():
    model = build().eval()
    prompt = torch.zeros((1, 3), dtype=torch.long)
    out = model.generate(prompt, 1, top_k=1)
    logits, _ = model(prompt)
    assert out[0, -1].item() == logits[0, -1].argmax().item()


def test_sequences_longer_than_the_block_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        build()(torch.zeros((1, 33), dtype=torch.long))


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_recomputation_gives_the_same_loss_and_gradients(attention):
    idx = torch.randint(0, 65, (4, 32), generator=torch.Generator().manual_seed(1))
    results = []
    for recompute in (False, True):
        model = build(attention=attention)
        model.recompute = recompute
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_math_and_sdpa_attention_agree():
    idx = torch.randint(0, 65, (2, 32))
    sdpa, _ = build(attention="sdpa")(idx)
    explicit, _ = build(attention="math")(idx)
    torch.testing.assert_close(sdpa, explicit, atol=1e-5, rtol=1e-5)
