"""The GPT: nanoGPT's architecture (GPT-2 style, pre-LayerNorm), written for this project.

Attention uses separate query/key/value projections instead of one fused ``c_attn`` so that a
column-wise tensor-parallel split gives every rank whole heads of q, k and v alike. The MLP's GELU is
exact (``model.activation=gelu``, nanoGPT's) or the tanh approximation GPT-2 was trained with
(``gelu_tanh``), so GPT-2's weights give GPT-2's logits. nanogpt_runner.weights.gpt2_layouts converts the
state dicts to and from GPT-2's and nanoGPT's names.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanogpt_runner.config.schema import ModelConfig

VOCAB_PAD_MULTIPLE = 64
VOCAB_PAD_MAX_FRACTION = 0.01


def padded_vocab_size(vocab_size: int) -> int:
    """Rows of the embedding and lm-head matrices for ``vocab_size`` tokens.

    Rounded up to a multiple of 64 (GPT-2's 50,257 to nanoGPT's 50,304: matmuls with that shape are
    faster on GPUs) when that adds at most 1% rows; a small vocabulary (65 characters) keeps its size,
    where padding would double the head's work. The extra rows are never a token: their logits are
    masked out of the loss and cropped from the logits the model returns."""
    padded = -(-vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    return padded if padded - vocab_size <= VOCAB_PAD_MAX_FRACTION * vocab_size else vocab_size


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (torch's only allows both or neither)."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.n_embd // cfg.n_head
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.attention = cfg.attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads, not n_head: under tensor parallelism each rank holds only its share of heads.
        q, k, v = (
            proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            weights = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            y = F.dropout(weights, dropout_p, self.training) @ v
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        # gelu: exact (erf); gelu_tanh: GPT-2's approximation, 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).
        self.gelu_approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, final LayerNorm, lm head.

    The embedding and head matrices have ``padded_vocab_size(vocab_size)`` rows; the logits returned
    have ``vocab_size`` columns. ``blocks`` is a ModuleDict keyed by layer index so that a pipeline stage
    that keeps only some layers (and drops the embeddings or the head, set to None) keeps the same
    parameter names.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.block_size = vocab_size, cfg.block_size
        self.recompute = False
        rows = padded_vocab_size(vocab_size)
        self.tok_emb: nn.Embedding | None = nn.Embedding(rows, cfg.n_embd)
        self.pos_emb: nn.Embedding | None = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layer)})
        self.ln_f: LayerNorm | None = LayerNorm(cfg.n_embd, cfg.bias)
        self.lm_head: nn.Linear | None = nn.Linear(cfg.n_embd, rows, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled so the residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits, mean cross-entropy loss or None).

        On a pipeline stage without embeddings ``idx`` is the hidden state from the previous stage;
        on a stage without the head the hidden state is returned in place of logits.
        """
        if self.tok_emb is not None:
            T = idx.shape[1]
            if T > self.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size {self.block_size}")
            positions = torch.arange(T, device=idx.device)
            x = self.emb_dropout(self.tok_emb(idx) + self.pos_emb(positions))
        else:
            x = idx
        for block in self.blocks.values():
            if self.recompute and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.lm_head is None:
            return x, None
        return self.head_and_loss(x, targets)

    def head_and_loss(self, x: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The final norm, the head's logits and the loss: one function, which train.compile compiles beside the
        blocks (nanogpt_runner.distributed.parallelize), so the norm, the padding mask and the fp32 cross-entropy
        fuse around the head's matmul, as in nanoGPT's whole-model compile."""
        logits = self.lm_head(self.ln_f(x))
        if logits.size(-1) > self.vocab_size:
            # Padding rows are not tokens: -inf keeps them out of the softmax (and their gradient zero)
            # at the cost of writing those few columns, not of copying the logits.
            logits[..., self.vocab_size :] = float("-inf")
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits[..., : self.vocab_size], loss

    def num_params(self, exclude_position_embeddings: bool = True) -> int:
        """Parameter count as nanoGPT reports it: tied weights once, position embeddings excluded,
        vocabulary padding rows excluded (they hold no token)."""
        params = {id(p): p for p in self.parameters()}
        padding_rows = padded_vocab_size(self.vocab_size) - self.vocab_size
        vocab_matrices = {id(m.weight) for m in (self.tok_emb, self.lm_head) if m is not None}
        total = sum(p.numel() - padding_rows * self.cfg.n_embd * (key in vocab_matrices) for key, p in params.items())
        if exclude_position_embeddings and self.pos_emb is not None:
            total -= self.pos_emb.weight.numel()
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention's 12·L·d·T (PaLM appendix B)."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Autoregressive sampling; the context is cropped to the last block_size tokens."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.block_size :]
            logits, _ = self(context)
            logits = logits[:, -1, :].float() / max(temperature, 1e-8)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, next_token), dim=1)
        return idx
