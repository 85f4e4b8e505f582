"""Samples for `norms inputs`: MMLU, random tokens, local files, and their errors."""

import pandas as pd
import pytest

from qft_cli.data.text_data import load_samples, random_token_ids, read_text_file
from qft_cli.measure.inputs import hidden_state_norms
from qft_cli.models.loading import load_model
from qft_cli.models.names import load_tokenizer, resolve_model
from qft_cli.system.errors import QftInputError


@pytest.fixture(scope="module")
def bert_tok():
    return load_tokenizer(resolve_model("tiny-bert"))


def test_random_tokens_lengths_no_specials_and_seed():
    ids = random_token_ids(20, {0, 1, 2}, 30, seed=7)
    assert [len(x) for x in ids] == list(range(1, 31))
    assert all(3 <= t < 20 for x in ids for t in x)
    assert ids == random_token_ids(20, {0, 1, 2}, 30, seed=7)
    assert ids != random_token_ids(20, {0, 1, 2}, 30, seed=8)
    # every allowed id shows up: the draw is over the whole vocabulary
    assert {t for x in ids for t in x} == set(range(3, 20))


def test_random_dataset_through_tokenizer(bert_tok):
    samples = load_samples("random", bert_tok, vocab_size=261, max_tokens=16, num_samples=5, seed=0)
    assert samples.dataset == "random" and [len(x) for x in samples.token_ids] == [1, 2, 3, 4, 5]
    assert not {t for x in samples.token_ids for t in x} & set(bert_tok.all_special_ids)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".tsv", ".parquet", ".fasta"])
def test_file_formats(tmp_path, suffix):
    texts = ["ACGTTGCA", "GGGCCCAT", "TTTT"]
    path = tmp_path / f"data{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(texts) + "\n\n")
    elif suffix == ".fasta":
        path.write_text(">a\nACGT\nTGCA\n>b\nGGGCCCAT\n>c\ntttt\n")
    elif suffix == ".parquet":
        pd.DataFrame({"label": [0, 1, 0], "seq": texts}).to_parquet(path)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text(f"sequence{sep}label\n" + "\n".join(f"{t}{sep}1" for t in texts) + "\n")
    assert read_text_file(path) == texts


def test_file_errors(tmp_path):
    with pytest.raises(QftInputError, match="does not exist"):
        read_text_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(QftInputError, match="is empty"):
        read_text_file(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(QftInputError, match="holds no text"):
        read_text_file(tmp_path / "blank.txt")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(QftInputError, match="no text column.*--text-column"):
        read_text_file(tmp_path / "t.csv")
    with pytest.raises(QftInputError, match="no column 'body'"):
        read_text_file(tmp_path / "t.csv", "body")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(QftInputError, match="unknown type"):
        read_text_file(tmp_path / "x.json")


def test_unknown_dataset_and_bad_numbers(bert_tok):
    with pytest.raises(QftInputError, match="unknown dataset 'mmlu2'"):
        load_samples("mmlu2", bert_tok, vocab_size=261, max_tokens=8)
    with pytest.raises(QftInputError, match="--max-tokens"):
        load_samples("random", bert_tok, vocab_size=261, max_tokens=0)


def test_mmlu_csv_parsing(shared_data, bert_tok):
    samples = load_samples("mmlu", bert_tok, vocab_size=261, max_tokens=64,
                           data_file=shared_data / "mmlu" / "validation.csv")
    assert len(samples.token_ids) == 1531  # 126 rows have newlines inside quoted fields
    assert max(len(x) for x in samples.token_ids) == 64


@pytest.mark.slow
def test_mmlu_validation_through_minilm(shared_data, minilm_source):
    """The 1,531 MMLU validation questions through the real MiniLM: 1,531 x 2 rows, all finite,
    num_tokens equal to the tokenizer's own count."""
    tok = load_tokenizer(minilm_source)
    model = load_model(minilm_source)
    csv = shared_data / "mmlu" / "validation.csv"
    samples = load_samples("mmlu", tok, vocab_size=model.config.vocab_size, max_tokens=512, data_file=csv)
    table = hidden_state_norms(model, samples.token_ids, [0, 1], batch_size=32,
                               pad_token_id=tok.pad_token_id).table
    assert len(table) == 1531 * 2 and table["finite"].all()
    assert table[["frobenius_norm", "spectral_norm", "max_row_norm"]].notna().all().all()
    questions = pd.read_csv(csv)["question"].tolist()
    expected = [len(tok(q, truncation=True, max_length=512)["input_ids"]) for q in questions]
    got = table[table.layer == 0].sort_values("sample_index")["num_tokens"].tolist()
    assert got == expected
    assert (table["spectral_norm"] <= table["frobenius_norm"] * (1 + 1e-12)).all()
    assert (table["max_row_norm"] <= table["spectral_norm"] * (1 + 1e-12)).all()


def test_parquet_null_texts_are_skipped_not_measured_as_nan(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["hello", None, "world", float("nan")]}).to_parquet(path)
    assert read_text_file(path) == ["hello", "world"]


def test_random_dataset_skips_added_special_tokens():
    # chat tokenizers add control tokens as special AddedTokens that all_special_ids does not list
    from tokenizers import AddedToken

    from qft_cli.models.names import tiny_tokenizer

    tok = tiny_tokenizer(with_bert_specials=False)
    tok.add_tokens([AddedToken("<|im_start|>", special=True)])
    control = tok.convert_tokens_to_ids("<|im_start|>")
    samples = load_samples("random", tok, vocab_size=len(tok), max_tokens=60, seed=0)
    drawn = {t for x in samples.token_ids for t in x}
    assert control not in drawn and tok.eos_token_id not in drawn
    assert len(drawn) == len(tok) - 2  # every other id can be drawn


def test_mmlu_csv_honours_text_column_as_its_error_advises(tmp_path, bert_tok):
    csv = tmp_path / "mmlu.csv"
    csv.write_text("subject,prompt,A,B,C,D,answer\nmath,What is 1+1?,1,2,3,4,B\n")
    with pytest.raises(QftInputError, match="no column 'question'.*--text-column"):
        load_samples("mmlu", bert_tok, vocab_size=261, max_tokens=64, data_file=csv)
    samples = load_samples("mmlu", bert_tok, vocab_size=261, max_tokens=64, data_file=csv, text_column="prompt")
    assert samples.dataset == "mmlu" and samples.token_ids == [bert_tok("What is 1+1?")["input_ids"]]


def test_txt_splits_on_newlines_only(tmp_path):
    # str.splitlines would also split on form feeds, U+2028, U+0085 ... inside a text
    path = tmp_path / "t.txt"
    path.write_bytes("page one\x0cpage two\r\nline\u2028sep\x85end\n".encode("utf-8"))
    assert read_text_file(path) == ["page one\x0cpage two", "line\u2028sep\x85end"]


@pytest.mark.parametrize("suffix", [".txt", ".fasta", ".csv"])
def test_utf8_byte_order_mark_is_not_text(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    body = {".txt": "ACGT\nTTGA\n", ".fasta": ">a\nACGT\n>b\nTTGA\n", ".csv": "text\nACGT\nTTGA\n"}[suffix]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert read_text_file(path) == ["ACGT", "TTGA"]


@pytest.mark.parametrize("name,content", [("bad.parquet", b"text\nnot parquet\n"), ("latin1.txt", "caf\xe9\n".encode("latin-1")),
                                          ("ragged.csv", b"text,label\na,1\nb,2,3,4\n"), ("bad.fasta", b">a\n\xff\xfe\n")])
def test_unreadable_data_file_is_bad_input(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(QftInputError, match=f"{name} could not be read"):
        read_text_file(path)


def test_max_tokens_below_the_special_tokens_still_truncates(tmp_path, bert_tok):
    # the tokenizer gives up truncating (and returns everything) when max_length cannot hold [CLS] ... [SEP]
    path = tmp_path / "t.txt"
    path.write_text("a longer text of many bytes\nxy\n")
    for max_tokens in (1, 2, 3):
        samples = load_samples(str(path), bert_tok, vocab_size=261, max_tokens=max_tokens)
        assert [len(x) for x in samples.token_ids] == [max_tokens, max_tokens]
        assert samples.token_ids[0][0] == bert_tok.cls_token_id


@pytest.mark.parametrize("edit, needle", [
    (lambda f: f.__setitem__("answer", f["answer"].where(f.index != 2, "E")), "row 3 answer 'E'"),
    (lambda f: f.__setitem__("C", f["C"].where(f.index != 4, " ")), "row 5 empty choice C"),
    (lambda f: f.drop(columns=["D"], inplace=True), "not D"),
])
def test_mmlu_csv_with_a_bad_answer_or_an_empty_choice_is_refused(edit, needle, shared_data, tmp_path):
    """Issue 21, item 5: the real MMLU validation CSV passes; with one answer outside A-D, one empty
    choice or a choice column missing it is refused naming the row, by the CLI too (exit 2, no run)."""
    from typer.testing import CliRunner

    from qft_cli.cli.app import app
    from qft_cli.data.text_data import check_mmlu_choices, mmlu_questions

    real = shared_data / "mmlu" / "validation.csv"
    assert len(mmlu_questions(real)) == 1531
    frame = pd.read_csv(real, dtype=str, keep_default_na=False)
    edit(frame)
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(QftInputError, match=needle):
        check_mmlu_choices(bad)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["norms", "inputs", "tiny-bert", "--dataset", "mmlu", "--data-file", str(bad),
                                      "--num-samples", "4", "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(bad) in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_question_only_csv_is_not_checked_for_choices(tmp_path):
    from qft_cli.data.text_data import mmlu_questions

    (tmp_path / "q.csv").write_text("question\nWhat is 2+2?\n")
    assert list(mmlu_questions(tmp_path / "q.csv")) == ["What is 2+2?"]
