"""DNABERT-2 in plain PyTorch: a ``transformers`` model with no remote code and no Triton.

Architecture (Zhou et al., "DNABERT-2", ICLR 2024, arXiv:2306.15006; a MosaicBERT encoder):

* embeddings: word + token-type embeddings (no position embeddings), LayerNorm, dropout;
* attention: one fused ``Wqkv`` linear (rows: q, k, v, each ``num_heads x head_dim``), scaled
  dot-product attention with an additive bias = ALiBi (Press et al., "Train Short, Test Long",
  ICLR 2022; symmetric, non-causal: ``-slope_h * |i - j|``) + key padding mask;
* attention output: dense, dropout, residual, LayerNorm (post-norm);
* FFN: gated linear unit: ``gated_layers`` (no bias) to ``2 x intermediate``, first half = gate,
  second half = up, ``GELU(gate) * up``, dropout, ``wo``, residual, LayerNorm (the dropout sits
  before ``wo`` as in the published code; eval mode does not see it);
* pooler (dense + tanh on the first real token: position 0, or the first unmasked position under
  left padding) and classifier as in Hugging Face BERT.

Parameter names are those of the published checkpoint ``zhihan1996/DNABERT-2-117M``
(``bert.embeddings.word_embeddings``, ``bert.encoder.layer.N.attention.self.Wqkv``,
``bert.encoder.layer.N.mlp.gated_layers``, ...), so its weights load by name.

This file imports only ``torch`` and ``transformers``: ``qft --export`` copies it next to the
exported weights as remote code, so a stock ``transformers`` loads an exported model without qft.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

MODEL_TYPE = "qft_dnabert2"


class DnaBert2Config(PretrainedConfig):
    """Config of a DNABERT-2 encoder. Defaults are those of ``zhihan1996/DNABERT-2-117M``
    (vocabulary 4096, hidden 768, 12 layers, 12 heads, intermediate 3072)."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 4096, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, intermediate_size: int = 3072, hidden_act: str = "gelu",
                 hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.0,
                 type_vocab_size: int = 2, layer_norm_eps: float = 1e-12, initializer_range: float = 0.02,
                 classifier_dropout: Optional[float] = None, alibi_starting_size: int = 512,
                 pad_token_id: Optional[int] = None, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.classifier_dropout = classifier_dropout
        self.alibi_starting_size = alibi_starting_size


# ----------------------------------------------------------------------------- ALiBi

def alibi_head_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes of ``num_heads`` heads (Press et al. 2022).

    For ``n`` a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``.
    Otherwise, with ``c`` the largest power of two below ``n``: the ``c`` slopes of ``c`` heads,
    then every other slope (0th, 2nd, ...) of ``2c`` heads, the first ``n - c`` of them.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_head_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(num_heads: int, seq_len: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Symmetric ALiBi bias ``-slope_h * |i - j|``, shape ``(num_heads, seq_len, seq_len)``
    (query ``i``, key ``j``), added to the attention logits before the softmax."""
    slopes = torch.tensor(alibi_head_slopes(num_heads), dtype=torch.float64, device=device)
    pos = torch.arange(seq_len, device=device, dtype=torch.float64)
    distance = (pos[None, :] - pos[:, None]).abs()
    return (-slopes[:, None, None] * distance).to(dtype)


# ----------------------------------------------------------------------------- modules

class DnaBert2Embeddings(nn.Module):
    """Word + token-type embeddings, LayerNorm, dropout (no position embeddings: ALiBi)."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        # no padding_idx, as published: id 0 is [UNK] and its row is trained like any other
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        hidden = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(hidden))


class DnaBert2SelfAttention(nn.Module):
    """Fused ``Wqkv`` projection and multi-head scaled dot-product attention with an additive bias.

    ``qkv_observer``: ``None``, or a function ``(module, q, k, v)`` called with the queries, keys
    and values (each (batch, heads, length, head_dim)) as they enter the dot product; set by
    ``qft norms attention`` (qft_cli.measure.attention), never saved.
    """

    applies_rotary = False

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.qkv_observer = None
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout_prob = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, length, head_dim)
        if self.qkv_observer is not None:
            self.qkv_observer(self, q, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout_prob if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, length, width)


class DnaBert2SelfOutput(nn.Module):
    """Attention output: dense, dropout, residual, LayerNorm (post-norm)."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class DnaBert2Attention(nn.Module):
    """Self-attention (``self``: fused Wqkv + SDPA) and its output block (``output``)."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.self = DnaBert2SelfAttention(config)
        self.output = DnaBert2SelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, bias), hidden)


class DnaBert2GatedMLP(nn.Module):
    """GLU FFN: ``LayerNorm(x + wo(dropout(GELU(gate(x)) * up(x))))`` with ``[gate; up] = gated_layers``."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.GELU(approximate="none")
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(self.dropout(self.act(gate) * up)) + hidden)


class DnaBert2Layer(nn.Module):
    """One encoder block: attention then the gated FFN, both post-norm."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.attention = DnaBert2Attention(config)
        self.mlp = DnaBert2GatedMLP(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(hidden, bias))


class DnaBert2Encoder(nn.Module):
    """The blocks; builds the additive bias (ALiBi + key padding mask, shape (batch, heads, L, L)) once per forward."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.layer = nn.ModuleList([DnaBert2Layer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, ...]]]:
        length = hidden.shape[1]
        bias = alibi_bias(self.num_heads, length, device=hidden.device, dtype=hidden.dtype)[None]
        masked = torch.finfo(hidden.dtype).min
        key_mask = (attention_mask[:, None, None, :] == 0).to(hidden.dtype) * masked  # (B, 1, 1, L)
        bias = bias + key_mask  # (B, H, L, L)
        states = (hidden,) if output_hidden_states else None
        for layer in self.layer:
            hidden = layer(hidden, bias)
            if output_hidden_states:
                states = states + (hidden,)
        return hidden, states


class DnaBert2Pooler(nn.Module):
    """Dense + tanh on the first *real* token (``[CLS]``), as in Hugging Face BERT.

    With right padding (or none) that is position 0; with left padding it is the first position
    whose ``attention_mask`` is 1, so a left-padded sequence is classified as it is alone (position
    0 would be a padding state: masked keys make it meaningless)."""

    def __init__(self, config: DnaBert2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is None:
            first = hidden[:, 0]
        else:  # argmax gives the first 1 of each row (0 for a row without padding in front)
            start = (attention_mask != 0).to(torch.int8).argmax(dim=1)
            first = hidden[torch.arange(hidden.shape[0], device=hidden.device), start]
        return self.activation(self.dense(first))


# ----------------------------------------------------------------------------- models

class DnaBert2PreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation (normal(0, initializer_range)) and the
    ``bert`` prefix of the published checkpoint."""

    config_class = DnaBert2Config
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class DnaBert2Model(DnaBert2PreTrainedModel):
    """The DNABERT-2 encoder (``bert.*`` of the checkpoint), optionally with the pooler.

    Inputs: ``input_ids`` (batch, length) int64, ``attention_mask`` (batch, length) 1 = token,
    0 = padding. Output: ``last_hidden_state`` (batch, length, hidden) and ``pooler_output``
    (batch, hidden) or ``None``; ``hidden_states`` (embedding output + one per layer) on request.
    Hidden states at padding positions are not meaningful (keys there are masked).
    """

    def __init__(self, config: DnaBert2Config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = DnaBert2Embeddings(config)
        self.encoder = DnaBert2Encoder(config)
        self.pooler = DnaBert2Pooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        hidden = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        hidden, states = self.encoder(hidden, attention_mask, output_hidden_states)
        pooled = self.pooler(hidden, attention_mask) if self.pooler is not None else None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(x for x in (hidden, pooled, states) if x is not None)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=states)


def _classification_loss(config: PretrainedConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class _DnaBert2Classifier(DnaBert2PreTrainedModel):
    """What both heads share: the encoder ``bert`` (with the pooler where :attr:`pooled`), dropout
    (``classifier_dropout``, else ``hidden_dropout_prob``) and a linear ``classifier``
    (hidden_size -> num_labels), as HF BERT."""

    pooled = True

    def __init__(self, config: DnaBert2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = DnaBert2Model(config, add_pooling_layer=self.pooled)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @staticmethod
    def _as_tuple(loss, logits, out) -> tuple:
        """The ``return_dict=False`` output: ``(loss?, logits, hidden_states?)``."""
        rest = (logits,) + ((out.hidden_states,) if out.hidden_states is not None else ())
        return ((loss,) + rest) if loss is not None else rest


class DnaBert2ForSequenceClassification(_DnaBert2Classifier):
    """Encoder + pooler + dropout + linear classifier (``classifier``), as HF BERT.

    ``logits``: (batch, num_labels). Loss as HF: cross-entropy for integer labels, MSE for one
    label, BCE for float multi-labels.
    """

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return self._as_tuple(loss, logits, out)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class DnaBert2ForTokenClassification(_DnaBert2Classifier):
    """Encoder (no pooler) + dropout + linear classifier on every token; ``logits``
    (batch, length, num_labels); cross-entropy loss ignoring label -100."""

    pooled = False

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return self._as_tuple(loss, logits, out)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
