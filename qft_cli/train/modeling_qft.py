"""The research's small transformer as a Hugging Face ``PreTrainedModel`` with its own config.

Architecture (per block ``l``, input ``x`` of shape ``(batch, seq, d_model)``)::

    x = x + o_proj(SDPA(rope(q_proj(x)), rope(k_proj(x)), v_proj(x)))   # multi-head self-attention
    x = x + down_proj(Dropout(ReLU(up_proj(x))))                         # FFN

with rotary position embeddings on queries and keys (Su et al., "RoFormer", 2021; the
``rotate_half`` form of GPT-NeoX/Llama), ``F.scaled_dot_product_attention`` with the padding
masked and attention dropout only in training, and no LayerNorm unless ``config.layer_norm`` is
set (then pre-norm). Heads: sequence classification reads the first token (``[CLS]``), token
classification every token.

Parameter names are the ones :mod:`qft_cli.models.layout` classifies: ``model.embed_tokens`` (layer 0,
embedding), ``model.layers.<i>.attn.{q,k,v,o}_proj`` (layer ``i + 1``, q/k/v/o) and
``model.layers.<i>.ffn.{up,down}_proj`` (ffn_up/ffn_down), so :mod:`qft_cli.train.normalization` and
``qft norms weights`` work on it unchanged. When ``config.qft_normalization`` is set (by
:func:`qft_cli.train.normalization.apply_normalization`), the model re-applies it on construction, so
``save_pretrained``/``from_pretrained`` round-trip a normalised model.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from qft_cli.system.errors import QftInputError

TASKS = ("sequence_classification", "token_classification")


class QftConfig(PretrainedConfig):
    """Config of the qft transformer.

    Args:
        vocab_size: rows of the token embedding.
        d_model: hidden width; ``num_heads`` must divide it.
        num_heads: attention heads.
        d_ff: FFN inner width.
        num_layers: transformer blocks.
        dropout: dropout in the FFN and before the classifier.
        attention_dropout: dropout of attention probabilities (training only).
        rope_theta: base of the rotary frequencies.
        layer_norm: pre-norm LayerNorm in each block (the research's model has none).
        task: ``sequence_classification`` or ``token_classification``.
        qft_normalization: settings of :func:`qft_cli.train.normalization.apply_normalization`, or None.
    """

    model_type = "qft-transformer"

    def __init__(self, vocab_size: int = 4096, d_model: int = 768, num_heads: int = 12, d_ff: int = 3072,
                 num_layers: int = 1, dropout: float = 0.1, attention_dropout: float = 0.1,
                 rope_theta: float = 10000.0, layer_norm: bool = False, task: str = "sequence_classification",
                 qft_normalization: Optional[dict] = None, initializer_range: float = 0.02, pad_token_id: int = 0,
                 **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_ff = d_ff
        self.num_layers = num_layers
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.rope_theta = rope_theta
        self.layer_norm = layer_norm
        self.task = task
        self.qft_normalization = qft_normalization
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        # names other tools look for (hidden_size for heads/pooling, num_attention_heads for layout)
        self.hidden_size = d_model
        self.num_attention_heads = num_heads
        self.num_hidden_layers = num_layers

    def validate(self) -> None:
        """Raises :class:`QftInputError` for shapes that cannot work (one line each)."""
        for name in ("d_model", "num_heads", "d_ff", "num_layers", "vocab_size"):
            if getattr(self, name) < 1:
                raise QftInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.d_model % self.num_heads:
            raise QftInputError(f"--d-model {self.d_model} is not divisible by --num-heads {self.num_heads}: "
                                "pick a multiple")
        if (self.d_model // self.num_heads) % 2:
            raise QftInputError(f"head width {self.d_model // self.num_heads} is odd: rotary embeddings need an even "
                                "--d-model / --num-heads")
        if self.task not in TASKS:
            raise QftInputError(f"unknown task '{self.task}': use {' or '.join(TASKS)}")


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, shape ``(seq_len, head_dim)`` each.

    Angle of position ``p`` and frequency ``i``: ``p * theta**(-2i/head_dim)``, ``i < head_dim/2``,
    repeated for both halves (the ``rotate_half`` layout).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, head_dim) by the angles of ``cos``/``sin`` (seq, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class QftAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections and rotary embeddings.

    ``qkv_observer``: ``None``, or a function ``(module, q, k, v)`` called with the queries and
    keys after the rotary embeddings and the values (each (batch, heads, seq, head_dim)), as they
    enter the dot product; set by ``qft norms attention`` (qft_cli.measure.attention).
    """

    applies_rotary = True

    def __init__(self, config: QftConfig):
        super().__init__()
        self.qkv_observer = None
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.theta = config.rope_theta
        self.attention_dropout = config.attention_dropout
        d = config.d_model
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, t, d = x.shape

        def heads(z):
            return z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        cos, sin = rotary_cos_sin(t, self.head_dim, self.theta, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.qkv_observer is not None:
            self.qkv_observer(self, q, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class QftFeedForward(nn.Module):
    """Linear - ReLU - Dropout - Linear."""

    def __init__(self, config: QftConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.d_ff)
        self.dropout = nn.Dropout(config.dropout)
        self.down_proj = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(F.relu(self.up_proj(x))))


class QftBlock(nn.Module):
    """Attention and FFN, each with a residual connection (optional pre-norm LayerNorm)."""

    def __init__(self, config: QftConfig):
        super().__init__()
        self.attn = QftAttention(config)
        self.ffn = QftFeedForward(config)
        self.attn_norm = nn.LayerNorm(config.d_model) if config.layer_norm else nn.Identity()
        self.ffn_norm = nn.LayerNorm(config.d_model) if config.layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.ffn(self.ffn_norm(x))


class QftPreTrainedModel(PreTrainedModel):
    """Weight initialisation (normal, std ``initializer_range``; zero biases) and the normalisation hook."""

    config_class = QftConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _reapply_normalization(self) -> None:
        settings = getattr(self.config, "qft_normalization", None)
        if settings:
            from qft_cli.train.normalization import apply_normalization

            apply_normalization(self, **dict(settings))


class QftModel(QftPreTrainedModel):
    """Token embedding and ``num_layers`` blocks; returns the last hidden states ``(batch, seq, d_model)``."""

    def __init__(self, config: QftConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=None)
        self.layers = nn.ModuleList(QftBlock(config) for _ in range(config.num_layers))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **_) -> BaseModelOutput:
        x = self.embed_tokens(input_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq): True = attend
        for block in self.layers:
            x = block(x, mask)
        return BaseModelOutput(last_hidden_state=x)


class _QftClassifier(QftPreTrainedModel):
    """The body and head both classifiers share: :class:`QftModel` as ``model``, dropout, a linear
    ``classifier`` (d_model -> num_labels), and the normalisation of ``config.qft_normalization``
    re-applied after initialisation (so that a saved normalised model reloads as it was trained)."""

    def __init__(self, config: QftConfig):
        super().__init__(config)
        self.model = QftModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()
        self._reapply_normalization()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens


class QftForSequenceClassification(_QftClassifier):
    """Classifier on the first token's final hidden state; cross-entropy loss with ``labels`` (batch,)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **_) -> SequenceClassifierOutput:
        hidden = self.model(input_ids, attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(hidden[:, 0]))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class QftForTokenClassification(_QftClassifier):
    """Classifier on every token; cross-entropy over labels != -100 (first sub-token of each word)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **_) -> TokenClassifierOutput:
        hidden = self.model(input_ids, attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


def model_class(task: str):
    """The head class for ``task`` (``sequence_classification`` or ``token_classification``)."""
    return QftForSequenceClassification if task == "sequence_classification" else QftForTokenClassification


def pretrained_embedding(name: str, trust_remote_code: bool = False) -> torch.Tensor:
    """The token-embedding matrix ``(vocab_size, d)`` (float32, CPU) of model alias/id/dir ``name``.

    Reads only the embedding: for DNABERT-2 (``dnabert``) the 4096 x 768 ``word_embeddings``.

    Raises:
        QftInputError: unknown model, hub unreachable, or no token embedding found.
    """
    from qft_cli.models.layout import classify
    from qft_cli.models.loading import load_model
    from qft_cli.models.names import resolve_model

    source = resolve_model(name)
    if not trust_remote_code:  # every kind (hub, local, tiny, GGUF): one tensor from the streaming reader
        weights = _embedding_from_files(source)
        if weights is None:
            raise QftInputError(f"model {name} has no token embedding qft recognises: pick another --embedding-from")
        return weights
    model = load_model(source, trust_remote_code=trust_remote_code)
    specs = [s for s in classify((n, tuple(p.shape)) for n, p in model.named_parameters()) if s.matrix == "embedding"]
    if not specs:
        raise QftInputError(f"model {name} has no token embedding qft recognises: pick another --embedding-from")
    return dict(model.named_parameters())[specs[0].parameter].detach().float().cpu().clone()


def _embedding_from_files(source) -> Optional[torch.Tensor]:
    """Read the token embedding straight from the checkpoint through the streaming reader of
    :func:`qft_cli.models.loading.open_weights` (works for DNABERT-2 without its remote code); ``None``
    when no tensor is a token embedding (:func:`qft_cli.models.layout.classify`)."""
    from qft_cli.models.layout import classify
    from qft_cli.models.loading import open_weights

    store = open_weights(source)
    try:
        specs = [s for s in classify(store.shapes.items(), store.config) if s.matrix == "embedding"]
        return store.read(specs[0].parameter).float().clone() if specs else None
    finally:
        store.close()


def build_model(config: QftConfig, *, embedding: Optional[torch.Tensor] = None, freeze_embedding: bool = False,
                seed: int = 42) -> QftPreTrainedModel:
    """Build a qft model with weights drawn from ``seed`` (the global RNG is restored afterwards).

    Args:
        embedding: ``(vocab_size, d_model)`` initial token embedding (e.g. :func:`pretrained_embedding`);
            its shape must match the config (``d_model`` is never projected silently).
        freeze_embedding: do not train the embedding (``requires_grad = False``).

    Raises:
        QftInputError: invalid config, or an embedding whose shape does not fit.
    """
    config.validate()
    if embedding is not None:
        rows, width = embedding.shape
        if width != config.d_model:
            raise QftInputError(f"--d-model {config.d_model} differs from the pretrained embedding width {width}: "
                                f"pass --d-model {width} (qft does not project embeddings)")
        if rows != config.vocab_size:
            raise QftInputError(f"the pretrained embedding has {rows} rows but the vocabulary has {config.vocab_size}: "
                                "use the embedding model's own tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config.task)(config)
    if embedding is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(embedding)
    if freeze_embedding:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def register_auto_classes() -> None:
    """Register the config and models with ``AutoConfig``/``AutoModel*`` (idempotent)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    try:
        AutoConfig.register(QftConfig.model_type, QftConfig)
        AutoModel.register(QftConfig, QftModel)
        AutoModelForSequenceClassification.register(QftConfig, QftForSequenceClassification)
        AutoModelForTokenClassification.register(QftConfig, QftForTokenClassification)
    except ValueError:  # already registered
        pass


register_auto_classes()
