"""Model names, tiny models and the offline behaviour of hub loading."""

import time

import pytest
import torch

from qft_cli.models.names import (
    ALIASES,
    build_tiny_model,
    load_config,
    resolve_model,
    tiny_tokenizer,
)
from qft_cli.system.errors import QftInputError


def test_aliases_resolve_to_hub_ids():
    assert resolve_model("gpt2").location == "openai-community/gpt2"
    assert resolve_model("dnabert").location == "zhihan1996/DNABERT-2-117M"
    assert resolve_model("mistralai/Mistral-7B-v0.1").kind == "hub"
    assert len(ALIASES) == 10


def test_unknown_alias_suggests_nearest():
    with pytest.raises(QftInputError, match="unknown model 'robreta'.*did you mean 'roberta'"):
        resolve_model("robreta")


def test_local_directory(tmp_path):
    assert resolve_model(str(tmp_path)).kind == "local"


def test_tiny_models_are_deterministic():
    a = build_tiny_model("tiny-llama")
    b = build_tiny_model("tiny-llama")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert a.config.num_key_value_heads == 2 and a.config.num_attention_heads == 4


def test_tiny_tokenizers():
    bert = tiny_tokenizer(with_bert_specials=True)
    ids = bert("hé")["input_ids"]
    assert ids[0] == bert.cls_token_id and ids[-1] == bert.sep_token_id and len(ids) == 2 + 3  # é is 2 bytes
    gpt = tiny_tokenizer(with_bert_specials=False)
    assert gpt.pad_token is None and gpt.decode(gpt("qft ok")["input_ids"]) == "qft ok"


def test_hub_offline_is_one_clear_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.time()
    with pytest.raises(QftInputError) as err:
        load_config(resolve_model("bert"))
    message = str(err.value)
    assert "\n" not in message
    assert "bert-base-uncased" in message and "HF_HUB_OFFLINE" in message and "minilm" in message
    assert time.time() - start < 10  # no network retries when offline


def test_custom_code_error_says_trust_remote_code():
    from qft_cli.models.names import hub_error

    err = ValueError("The repository zhihan1996/DNABERT-2-117M contains custom code which must be executed to "
                     "correctly load the model.\nPlease pass the argument `trust_remote_code=True` to allow custom "
                     "code to be run.")
    message = str(hub_error(resolve_model("dnabert"), err))
    assert "--trust-remote-code" in message and "\n" not in message and "not reachable" not in message


def test_hub_datasets_offline_are_one_line_naming_the_local_fix(monkeypatch):
    """MMLU and GUE go through the one load_hub_dataset: offline and not cached, one line each with
    its own fix, no traceback; first_line quotes only the first line of a library error."""
    import datasets

    from qft_cli.data import tasks, text_data
    from qft_cli.system.errors import first_line

    def fail(repo, **kwargs):
        raise ConnectionError(f"\n  {repo}\n  second line")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(QftInputError) as mmlu:
        text_data.load_texts("mmlu")
    assert str(mmlu.value) == ("could not load MMLU from the Hugging Face Hub (hub not reachable or HF_HUB_OFFLINE "
                               "set, and not cached): pass a local CSV with --data-file (columns "
                               "subject,question,A,B,C,D,answer)")
    with pytest.raises(QftInputError) as gue:
        tasks.load_task("gue", task="prom_core_tata")
    assert str(gue.value).startswith("could not load dataset leannmlindsey/GUE from the Hugging Face Hub (")
    assert str(gue.value).endswith("): check the network, or pass --data-dir with local files")
    assert first_line(ConnectionError("\n  a  b\t c \nsecond")) == "a b c" and first_line(ValueError()) == ""


@pytest.mark.parametrize("name, near", [("gtp2", "gpt2"), ("tiny-brt", "tiny-bert"), ("openai/gtp2", "gpt2"),
                                        ("openai-community/gtp2", "gpt2"), ("zhihan1996/DNABERT2-117M", "dnabert")])
def test_a_missing_model_names_the_aliases_and_the_nearest(name, near, monkeypatch):
    """Issue 21, item 10: an unknown alias and a hub id that is not cached (offline) both name the
    alias list and the nearest alias, in one line."""
    from qft_cli.models.names import TINY_MODELS, load_config, nearest_alias

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert nearest_alias(name) == near
    with pytest.raises(QftInputError) as err:
        load_config(resolve_model(name))
    message = str(err.value)
    assert "\n" not in message and f"did you mean '{near}'" in message
    listed = message.split("aliases: ", 1)[1]
    for alias in (*ALIASES, *TINY_MODELS):
        assert alias in listed


def test_no_nearest_alias_for_an_unrelated_name(monkeypatch):
    from qft_cli.models.names import nearest_alias

    assert nearest_alias("someone/xyzzy-qqq") is None
    with pytest.raises(QftInputError, match="aliases: minilm") as err:
        resolve_model("xyzzy-qqq")
    assert "did you mean" not in str(err.value)
