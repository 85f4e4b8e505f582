"""The architectures qft measures completely, each as a tiny random configuration.

:data:`ARCHITECTURES` is the one list: ``tests/test_architectures.py`` builds every entry from
transformers' config class (random weights, no download), saves it with ``save_pretrained`` and
checks ``norms weights`` (against float64 ``torch.linalg`` on the stored tensors), ``norms inputs``
(against the model's own hidden states) and, for one model of each kind, ``norms attention``;
``qft models`` prints the same list. An architecture is added here together with its layout in
:mod:`qft_cli.models.layout`, and the test then checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One supported architecture.

    Attributes:
        name: a short name (the transformers ``model_type``, or a variant of it: ``t5_v1_1``).
        config_class: name of the transformers config class (``LlamaConfig``).
        kwargs: the tiny configuration (d = 32, 2 blocks, 4 heads, few experts).
        layout: what qft measures there, in words (shown by ``qft models``).
        attention: whether ``norms attention`` supports it (else it refuses it in one line: attention
            code outside transformers' ``AttentionInterface``, shared layers, latent attention).
    """

    name: str
    config_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    layout: str = ""
    attention: bool = True

    def config(self):
        """The transformers config object of the tiny model."""
        import transformers

        return getattr(transformers, self.config_class)(**self.kwargs)


_D = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128,
          max_position_embeddings=64)
_GQA = dict(_D, num_key_value_heads=2)
_GPT = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=128,
           relative_attention_num_buckets=8)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=64)
_DENSE = "q, k, v, o, FFN"
_GATED = "q, k, v, o (GQA), gated FFN"

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("bart", "BartConfig", _SEQ2SEQ, "encoder and decoder q, k, v, o, cross-attention, FFN"),
    Architecture("bert", "BertConfig", _D, _DENSE),
    Architecture("cohere", "CohereConfig", _GQA, _GATED),
    Architecture("distilbert", "DistilBertConfig", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=128,
                                                        max_position_embeddings=64), _DENSE),
    Architecture("electra", "ElectraConfig", dict(_D, embedding_size=16), _DENSE + ", embedding projection"),
    Architecture("gemma", "GemmaConfig", dict(_GQA, head_dim=8), _GATED),
    Architecture("gemma2", "Gemma2Config", dict(_GQA, head_dim=8), _GATED),
    Architecture("gemma3_text", "Gemma3TextConfig", dict(_GQA, head_dim=8), _GATED),
    Architecture("gpt_neox", "GPTNeoXConfig", _D, "fused query_key_value (per-head interleaved), o, FFN"),
    Architecture("gpt2", "GPT2Config", _GPT, "fused Conv1D c_attn (q | k | v), o, FFN"),
    Architecture("gptj", "GPTJConfig", dict(_GPT, rotary_dim=4), _DENSE),
    Architecture("granite", "GraniteConfig", _GQA, _GATED),
    Architecture("llama", "LlamaConfig", _GQA, _GATED),
    Architecture("mistral", "MistralConfig", _GQA, _GATED),
    Architecture("olmo2", "Olmo2Config", _GQA, _GATED),
    Architecture("openai-gpt", "OpenAIGPTConfig", _GPT, "fused Conv1D c_attn (q | k | v), o, FFN", attention=False),
    Architecture("opt", "OPTConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                          vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32),
                 _DENSE),
    Architecture("phi", "PhiConfig", _D, _DENSE),
    Architecture("qwen2", "Qwen2Config", _GQA, _GATED),
    Architecture("qwen3", "Qwen3Config", dict(_GQA, head_dim=8), _GATED),
    Architecture("roberta", "RobertaConfig", dict(_D, max_position_embeddings=70), _DENSE),
    Architecture("stablelm", "StableLmConfig", _GQA, _GATED),
    Architecture("starcoder2", "Starcoder2Config", _GQA, "q, k, v, o (GQA), FFN"),
    Architecture("qwen2_moe", "Qwen2MoeConfig", dict(_GQA, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=16, shared_expert_intermediate_size=32),
                 "q, k, v, o (GQA), router, each expert's gated FFN, the shared expert and its gate"),
    Architecture("deepseek_v3", "DeepseekV3Config",
                 dict(_D, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
                      qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1),
                 "latent attention factors q_a, q_b, kv_a, kv_b and the effective q, k, v; o; dense FFN, "
                 "then router, experts and the shared expert", attention=False),
    Architecture("falcon", "FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                num_kv_heads=2, new_decoder_architecture=True, vocab_size=128),
                 "fused GQA query_key_value (per key/value group), o, FFN"),
    Architecture("t5", "T5Config", _T5, "encoder, decoder, cross-attention q, k, v, o; FFN wi, wo", attention=False),
    Architecture("t5_v1_1", "T5Config", dict(_T5, feed_forward_proj="gated-gelu"),
                 "as t5 with the gated FFN wi_0, wi_1, wo (Flan-T5, mT5)", attention=False),
    Architecture("albert", "AlbertConfig", dict(_D, embedding_size=16),
                 "one shared layer (q, k, v, o, FFN) measured once, run by every block; embedding projection", attention=False),
    Architecture("mixtral", "MixtralConfig", dict(_GQA, num_local_experts=4, num_experts_per_tok=2),
                 "q, k, v, o (GQA), router, each expert's w1, w3, w2"),
    Architecture("deberta-v2", "DebertaV2Config", dict(_D, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                       position_buckets=16, share_att_key=True),
                 "query_proj, key_proj, value_proj, o, FFN", attention=False),
    Architecture("phi3", "Phi3Config", dict(_GQA, pad_token_id=0),
                 "fused GQA qkv_proj, o, fused gate_up_proj, down_proj"),
    Architecture("bloom", "BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=128),
                 "fused query_key_value (per-head interleaved), dense (o), FFN", attention=False),
)


def architecture(name: str) -> Architecture:
    """The entry of :data:`ARCHITECTURES` called ``name``.

    Raises:
        KeyError: no such entry.
    """
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise KeyError(name)
