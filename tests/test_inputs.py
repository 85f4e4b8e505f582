"""Hidden-state norms against float64 norms of Hugging Face's own `output_hidden_states`."""

import pandas as pd
import pytest
import torch

from qft_cli.measure.inputs import (
    find_blocks,
    hidden_state_norms,
    masked_norms,
    parse_layers,
    summarize_inputs,
)
from qft_cli.models.loading import load_model
from qft_cli.models.names import build_tiny_model, load_tokenizer, resolve_model
from qft_cli.system.errors import QftInputError

TEXTS = ["The spectral norm of a matrix.", "Hello", "Quantum algorithms load matrices as block encodings, "
         "whose cost grows with a normalisation factor.", "a b c d e f g h i j k l m n o p", "DNA: ACGTACGT"]


def _reference(model, token_ids, layers):
    """Norms of each sample run alone, from output_hidden_states, with torch.linalg in float64."""
    out = {}
    with torch.no_grad():
        for i, ids in enumerate(token_ids):
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in layers:
                s = hs[layer][0].double()
                sv = torch.linalg.svdvals(s)
                out[(i, layer)] = (torch.linalg.matrix_norm(s, ord=2).item(), torch.linalg.matrix_norm(s).item(),
                                   torch.linalg.vector_norm(s, dim=1).max().item(), len(ids),
                                   ((sv ** 2).sum() / sv[0] ** 2).item())
    return out


def _compare(table, ref, rel):
    assert len(table) == len(ref)
    for _, row in table.iterrows():
        spec, frob, row_max, n, srank = ref[(row.sample_index, row.layer)]
        assert row.num_tokens == n
        assert row.spectral_norm == pytest.approx(spec, rel=rel)
        assert row.frobenius_norm == pytest.approx(frob, rel=rel)
        assert row.max_row_norm == pytest.approx(row_max, rel=rel)
        assert row.stable_rank == pytest.approx(srank, rel=10 * rel)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-bert", "tiny-llama"])
def test_tiny_models_against_output_hidden_states(name):
    source = resolve_model(name)
    model, tok = load_model(source), load_tokenizer(source)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    # the last hidden_states entry of pre-LN models has the final norm applied: compare layers 0..L-1,
    # and for post-LN BERT all of them
    layers = [0, 1, 2] if name == "tiny-bert" else [0, 1]
    result = hidden_state_norms(model, ids, layers, batch_size=2, pad_token_id=0)
    _compare(result.table, _reference(model, ids, layers), rel=1e-5)


def test_minilm_all_layers(minilm_source):
    model, tok = load_model(minilm_source), load_tokenizer(minilm_source)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    result = hidden_state_norms(model, ids, list(range(7)), batch_size=3, pad_token_id=tok.pad_token_id)
    _compare(result.table, _reference(model, ids, range(7)), rel=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-dnabert"])
def test_batch_size_invariance(name):
    source = resolve_model(name)
    model, tok = load_model(source), load_tokenizer(source)
    ids = [tok(t * (1 + i % 3))["input_ids"] for i, t in enumerate(TEXTS * 3)]
    one = hidden_state_norms(model, ids, [0, 1, 2], batch_size=1).table
    seven = hidden_state_norms(model, ids, [0, 1, 2], batch_size=7, pad_token_id=5).table
    everything = hidden_state_norms(model, ids, [0, 1, 2], batch_size=-1).table
    for other in (seven, everything):
        for col in ("spectral_norm", "frobenius_norm", "max_row_norm"):
            assert other[col].tolist() == pytest.approx(one[col].tolist(), rel=1e-5)
        assert other["num_tokens"].tolist() == one["num_tokens"].tolist()


def test_blocks_after_the_deepest_layer_do_not_run():
    model = build_tiny_model("tiny-gpt2")
    calls = {0: 0, 1: 0}
    for i, block in enumerate(model.h):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    hidden_state_norms(model, [[1, 2, 3]], [0, 1])
    assert calls == {0: 1, 1: 0}
    calls.update({0: 0, 1: 0})
    hidden_state_norms(model, [[1, 2, 3]], [0])
    assert calls == {0: 0, 1: 0}


def test_half_and_bfloat16_models_match_float32():
    source = resolve_model("tiny-llama")
    tok = load_tokenizer(source)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    ref = hidden_state_norms(load_model(source), ids, [0, 1]).table
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        model = load_model(source, dtype=dtype)
        assert next(model.parameters()).dtype == dtype
        low = hidden_state_norms(model, ids, [0, 1]).table
        assert low["spectral_norm"].tolist() == pytest.approx(ref["spectral_norm"].tolist(), rel=tol)
        assert low["frobenius_norm"].tolist() == pytest.approx(ref["frobenius_norm"].tolist(), rel=tol)
        assert low["spectral_norm"].tolist() != ref["spectral_norm"].tolist()  # really computed in `dtype`


def test_nonfinite_hidden_state_is_reported_and_rest_kept():
    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[77] = float("inf")
    result = hidden_state_norms(model, [[2, 10, 11, 3], [2, 77, 3], [2, 12, 3]], [0, 1], batch_size=-1)
    assert result.nonfinite == [(1, 0), (1, 1)]
    good = result.table[result.table.sample_index != 1]
    assert good["finite"].all() and good["spectral_norm"].notna().all()
    assert result.table.loc[result.table.sample_index == 1, "spectral_norm"].isna().all()


def test_masked_norms_ignore_padding_rows():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = masked_norms(h, mask)
    assert out["spectral_norm"][0].item() == pytest.approx(torch.linalg.matrix_norm(h[0, :3].double(), 2).item(), rel=1e-12)
    assert out["frobenius_norm"][1].item() == pytest.approx(torch.linalg.matrix_norm(h[1].double()).item(), rel=1e-12)


def test_parse_layers():
    assert parse_layers("0,1", 6) == [0, 1]
    assert parse_layers("all", 2) == [0, 1, 2]
    assert parse_layers("1-3,0", 6) == [0, 1, 2, 3]
    with pytest.raises(QftInputError, match="the model has 6 blocks"):
        parse_layers("7", 6)
    with pytest.raises(QftInputError, match="not a list"):
        parse_layers("one", 6)
    with pytest.raises(QftInputError, match="selects no layer.*low-high"):
        parse_layers("3-1", 6)


def test_bad_batch_size():
    model = build_tiny_model("tiny-bert")
    for bad in (0, -2):
        with pytest.raises(QftInputError, match="--batch-size"):
            hidden_state_norms(model, [[1, 2]], [0], batch_size=bad)


def test_encoder_decoder_measures_the_encoder():
    from transformers import BartConfig, BartModel

    cfg = BartConfig(vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    torch.manual_seed(0)
    model = BartModel(cfg).eval()
    assert find_blocks(model) is model.encoder.layers
    ids = [[0, 5, 6, 7, 2], [0, 9, 2]]
    table = hidden_state_norms(model, ids, [0, 1, 2], batch_size=-1).table
    with torch.no_grad():
        hs = model.get_encoder()(input_ids=torch.tensor([ids[0]]), output_hidden_states=True).hidden_states
    row = table[(table.sample_index == 0) & (table.layer == 2)].iloc[0]
    assert row.spectral_norm == pytest.approx(torch.linalg.matrix_norm(hs[2][0].double(), 2).item(), rel=1e-5)


def test_summary_fits_exponent():
    n = list(range(1, 51))
    table = pd.DataFrame({"model_alias": "m", "dataset": "random", "layer": 0, "num_tokens": n,
                          "frobenius_norm": [3 * x ** 0.5 for x in n], "spectral_norm": [2 * x ** 0.25 for x in n]})
    row = summarize_inputs(table).iloc[0]
    assert row.frobenius_norm_exponent == pytest.approx(0.5) and row.spectral_norm_exponent == pytest.approx(0.25)
    assert row.frobenius_norm_max == pytest.approx(3 * 50 ** 0.5)


def test_summary_median_is_the_median_not_the_mean():
    table = pd.DataFrame({"model_alias": "m", "dataset": "d", "layer": 1, "num_tokens": [3, 5, 9],
                          "frobenius_norm": [1.0, 2.0, 10.0], "spectral_norm": [0.5, 4.0, 1.0]})
    row = summarize_inputs(table).iloc[0]
    assert row.frobenius_norm_median == 2.0  # the mean would be 4.33
    assert row.spectral_norm_median == 1.0
    assert (row.frobenius_norm_min, row.frobenius_norm_max) == (1.0, 10.0)


def test_samples_longer_than_the_position_table_are_bad_input():
    from transformers import BartConfig, BartModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    roberta = RobertaModel(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=10)).eval()  # 8 usable
    bart = BartModel(BartConfig(vocab_size=60, d_model=16, encoder_layers=1, decoder_layers=1,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                decoder_ffn_dim=32, max_position_embeddings=8)).eval()
    gpt2 = build_tiny_model("tiny-gpt2")  # n_positions 1024
    for model, limit in ((roberta, 8), (bart, 8), (gpt2, 1024)):
        ok = hidden_state_norms(model, [[5] * limit, [6, 7]], [0, 1], batch_size=-1).table
        assert ok["num_tokens"].max() == limit and ok["finite"].all()
        with pytest.raises(QftInputError, match=f"{limit} positions.*--max-tokens {limit}"):
            hidden_state_norms(model, [[5] * (limit + 1), [6, 7]], [0, 1])


class _UnpadBlock(torch.nn.Module):
    """A block that, like DNABERT-2 (MosaicBERT), works on unpadded (real tokens, d) hidden states."""

    def __init__(self, d):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, hidden_states, cu_seqlens):
        parts = [hidden_states[a:b] for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())]
        return torch.cat([torch.tanh(self.lin(x) + x.mean(0, keepdim=True)) for x in parts])


class _UnpadModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_hidden_layers=2, is_encoder_decoder=False)
        self.emb = torch.nn.Embedding(20, 8)
        self.layer = torch.nn.ModuleList([_UnpadBlock(8), _UnpadBlock(8)])

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids).flatten(0, 1)[attention_mask.flatten().nonzero().flatten()]
        cu = torch.nn.functional.pad(attention_mask.sum(1).cumsum(0), (1, 0))
        for block in self.layer:
            h = block(h, cu)
        return h


def test_models_that_unpad_hidden_states_between_blocks():
    torch.manual_seed(0)
    model = _UnpadModel().eval()
    ids = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    for batch_size in (1, -1):
        table = hidden_state_norms(model, ids, [0, 1, 2], batch_size=batch_size).table
        assert len(table) == 9
        with torch.no_grad():
            for i, x in enumerate(ids):
                h = model.emb(torch.tensor(x))
                for layer in range(3):
                    if layer:
                        h = model.layer[layer - 1](h, torch.tensor([0, len(x)]))
                    row = table[(table.sample_index == i) & (table.layer == layer)].iloc[0]
                    s = h.double()
                    assert row.num_tokens == len(x)
                    assert row.spectral_norm == pytest.approx(torch.linalg.matrix_norm(s, 2).item(), rel=1e-6)
                    assert row.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(s).item(), rel=1e-6)


def test_token_ids_without_an_embedding_row_are_bad_input():
    model = build_tiny_model("tiny-bert")  # 261 embedding rows
    with pytest.raises(QftInputError, match="token id 261.*261 rows"):
        hidden_state_norms(model, [[2, 5, 3], [2, 261, 3]], [0, 1])
