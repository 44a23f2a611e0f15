"""Tests of lora_edu.encoder on the real all-MiniLM-L6-v2 files: the tokenizer against
transformers' tokenizers (from tokenizer.json and, independently, from vocab.txt alone), the
encoder against transformers' ``BertModel`` (module names, state dicts both ways, hidden states
with padding), the padding mask on its own, mean pooling against a per-sequence mean, the
adapters of the library attached by name, gradients, the options, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_rejected, require

from lora_edu.adalora import apply_adalora, find_svd_modules
from lora_edu.adapter import adapter_layers, apply_adapters
from lora_edu.encoder import (
    MiniLMEncoder,
    mean_pool,
    minilm_encoder,
    minilm_tokenizer,
    tokenize_texts,
)
from lora_edu.lora import apply_lora, lora_layers
from lora_edu.pretrained import minilm_file, minilm_vocab
from lora_edu.qlora import prepare_qlora, qlora_layers
from lora_edu.quant import dequantize_4bit_reference, quantize_4bit_reference
from lora_edu.wordnet import wordnet_supersenses

HIDDEN, LAYERS = 384, 6
TOL = 1e-5


@pytest.fixture(scope="module")
def transformers():
    return require("transformers")


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return minilm_encoder()


@pytest.fixture(scope="module")
def bert(transformers):
    """transformers' own BertModel, loaded by transformers from the package's folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = transformers.BertModel.from_pretrained(str(minilm_file().parent))
    return model.eval()


@pytest.fixture(scope="module")
def glosses() -> list[str]:
    """48 real texts of the WordNet supersense test split, of varied lengths."""
    return [text for text, _ in wordnet_supersenses().test[::12]]


@pytest.fixture(scope="module")
def batch(glosses) -> tuple[torch.Tensor, torch.Tensor]:
    return tokenize_texts(minilm_tokenizer(), glosses)


# --------------------------------------------------------------------------- the tokenizer

def all_texts() -> list[str]:
    data = wordnet_supersenses()
    return [t for split in (data.train, data.validation, data.test) for t, _ in split]


@pytest.mark.parametrize("max_length", [32, 512])
def test_token_ids_equal_transformers_tokenizers(transformers, max_length):
    """Against AutoTokenizer on the same folder (tokenizer.json) and against the pure-Python
    BERT tokenizer built from vocab.txt alone, on all 4,000 WordNet texts."""
    texts = all_texts()
    ids, mask = tokenize_texts(minilm_tokenizer(max_length), texts)
    folder = minilm_file().parent
    peers = [transformers.AutoTokenizer.from_pretrained(str(folder)),
             transformers.BertTokenizerLegacy(vocab_file=str(folder / "vocab.txt"),
                                              do_lower_case=True)]
    for peer in peers:
        out = peer(texts, truncation=True, max_length=max_length, padding=True,
                   return_tensors="pt")
        assert torch.equal(out["input_ids"], ids), type(peer).__name__
        assert torch.equal(out["attention_mask"], mask), type(peer).__name__
    assert ids.dtype == mask.dtype == torch.int64
    longest = int(mask.sum(1).max())
    assert ids.shape == (4000, longest)
    assert (longest == 32) if max_length == 32 else (32 < longest < 512)


def test_padding_is_per_batch_and_truncation_keeps_the_special_tokens():
    vocab = minilm_vocab()
    cls, sep, pad = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[PAD]")
    tokenizer = minilm_tokenizer(max_length=8)
    ids, mask = tokenize_texts(tokenizer, ["cat", "the cat sat"])
    assert ids.tolist() == [[cls, vocab.index("cat"), sep, pad, pad],
                            [cls, vocab.index("the"), vocab.index("cat"), vocab.index("sat"), sep]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    ids, mask = tokenize_texts(tokenizer, ("one two three four five six seven eight nine",))
    assert ids.shape == (1, 8) and ids[0, 0] == cls and ids[0, -1] == sep and bool(mask.all())
    assert tokenizer.padding is not None and minilm_tokenizer().truncation["max_length"] == 32


# --------------------------------------------------------------------------- the encoder

def test_module_names_and_state_dict_are_bertmodels(encoder, bert):
    assert [n for n, _ in encoder.named_modules()] == [n for n, _ in bert.named_modules()]
    ours, theirs = encoder.state_dict(), bert.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype
               for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)   # the same real weights
    assert sum(p.numel() for p in encoder.parameters()) == 22_713_216   # 22,713,728 − 512 ids


def test_state_dict_loads_strictly_both_ways(encoder, bert, transformers, batch):
    config = transformers.BertConfig.from_json_file(str(minilm_file().with_name("config.json")))
    fresh_bert = transformers.BertModel(config).eval()
    fresh_bert.load_state_dict(encoder.state_dict(), strict=True)
    fresh_ours = MiniLMEncoder().eval()
    fresh_ours.load_state_dict(bert.state_dict(), strict=True)
    ids, mask = batch
    with torch.no_grad():
        assert torch.equal(fresh_ours(ids, mask), encoder(ids, mask))
        assert torch.equal(fresh_bert(input_ids=ids, attention_mask=mask).last_hidden_state,
                           bert(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_last_hidden_states_equal_bertmodels(encoder, bert, batch):
    ids, mask = batch
    assert not bool(mask.all()) and ids.shape[1] == 32      # padding and truncation both occur
    with torch.no_grad():
        ours = encoder(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.shape == theirs.shape == (*ids.shape, HIDDEN) and ours.dtype == torch.float32
    real = mask.bool()
    assert float((ours - theirs)[real].abs().max()) <= TOL
    # (the meaningless rows of padded positions agree too, to float32 round-off amplified by the
    # LayerNorms of a [PAD] row; test_float64_encoder_equals_bertmodel_in_float64 compares them)
    # without the mask the padded rows differ: the mask is what makes them equal
    with torch.no_grad():
        unmasked = encoder(ids)
    assert float((unmasked - theirs)[real].abs().max()) > 1e-2


def test_padding_does_not_change_the_real_tokens(encoder, glosses, batch):
    """Each text encoded alone (no padding at all) gives its rows of the padded batch."""
    ids, mask = batch
    tokenizer = minilm_tokenizer()
    with torch.no_grad():
        together = encoder(ids, mask)
        for i, text in enumerate(glosses[:12]):
            alone_ids, alone_mask = tokenize_texts(tokenizer, [text])
            assert bool(alone_mask.all())
            n = alone_ids.shape[1]
            assert torch.equal(alone_ids[0], ids[i, :n]) and int(mask[i].sum()) == n
            alone = encoder(alone_ids)[0]
            assert float((alone - together[i, :n]).abs().max()) <= TOL


def test_float64_encoder_equals_bertmodel_in_float64(bert, batch):
    ours = minilm_encoder(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    theirs = copy.deepcopy(bert).double()
    ids, mask = batch
    with torch.no_grad():
        diff = ours(ids, mask) - theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not bool(mask.all())
    assert float(diff.abs().max()) <= 1e-12                      # every position, padded ones too


def test_mean_pool_is_the_mean_of_the_real_tokens(encoder, batch):
    ids, mask = batch
    with torch.no_grad():
        hidden = encoder(ids, mask)
    pooled = mean_pool(hidden, mask)
    reference = torch.stack([hidden[i, :int(mask[i].sum())].mean(0) for i in range(len(ids))])
    assert pooled.shape == (len(ids), HIDDEN) and pooled.dtype == hidden.dtype
    assert float((pooled - reference).abs().max()) <= 1e-6
    noisy = hidden.masked_fill(~mask.bool().unsqueeze(-1), 1e6)    # padding must not count
    assert torch.equal(mean_pool(noisy, mask), pooled)
    assert torch.equal(mean_pool(hidden, mask.bool()), pooled)


# --------------------------------------------------------------------------- adapters by name

def test_apply_lora_adapts_query_and_value_of_every_layer(encoder, batch):
    model = copy.deepcopy(encoder)
    ids, mask = batch
    with torch.no_grad():
        before = model(ids, mask)
    assert apply_lora(model, ["query", "value"], r=4, alpha=8, seed=0) is model
    names = {f"encoder.layer.{i}.attention.self.{kind}" for i in range(LAYERS)
             for kind in ("query", "value")}
    assert set(lora_layers(model)) == names and len(names) == 12
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 12 * 4 * (HIDDEN + HIDDEN)
    assert torch.equal(model(ids, mask), before)                  # B = 0: the base model
    mean_pool(model.train()(ids, mask), mask).pow(2).sum().backward()
    for layer in lora_layers(model).values():
        assert float(layer.lora_B.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_adalora_qlora_and_adapters_find_their_layers_by_name(encoder, batch):
    ids, mask = batch
    model = apply_adalora(copy.deepcopy(encoder), ["query", "value"], r=4, seed=0)
    assert len(find_svd_modules(model)) == 12
    model = prepare_qlora(copy.deepcopy(encoder), ["query", "value"], r=4, alpha=8, seed=0,
                          compute_dtype=torch.float32)
    targets = {f"encoder.layer.{i}.attention.self.{kind}" for i in range(LAYERS)
               for kind in ("query", "value")}
    assert set(qlora_layers(model)) == targets
    # at B = 0 the QLoRA encoder is the float32 encoder with W_q, W_v rounded to NF4 (blocks of
    # 64, double-quantized constants), the rounding written as the equations
    rounded = copy.deepcopy(encoder)
    for name in targets:
        w = rounded.get_submodule(name).weight
        q = quantize_4bit_reference(w.detach(), 64, double_quant=True)
        w.data = dequantize_4bit_reference(q)
    with torch.no_grad():
        exact = encoder(ids, mask)
        h = model(ids, mask)
        assert float((h - rounded(ids, mask)).abs().max()) <= TOL
    assert float((h - exact).abs().max()) > 1e-3                 # NF4 rounding is visible
    model = apply_adapters(copy.deepcopy(encoder), "output.dense", bottleneck=8, seed=0,
                           init="zero_up")
    assert set(adapter_layers(model)) == {f"encoder.layer.{i}.{where}output.dense"
                                          for i in range(LAYERS)
                                          for where in ("attention.", "")}   # Houlsby's places
    with torch.no_grad():
        assert float((model(ids, mask) - exact).abs().max()) <= TOL   # zero_up: identity


# --------------------------------------------------------------------------- training options

def embedding_parameter_count() -> int:
    # word (30522 × 384), position (512 × 384), token type (2 × 384), LayerNorm γ and β
    return (30522 + 512 + 2) * HIDDEN + 2 * HIDDEN


def test_full_fine_tuning_gradients_reach_every_used_parameter(encoder, batch):
    model = copy.deepcopy(encoder).train()
    ids, mask = batch
    mean_pool(model(ids, mask), mask).pow(2).sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("pooler."):
            assert p.grad is None                                 # not used by forward
        else:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    word_grad = model.embeddings.word_embeddings.weight.grad
    unused = torch.ones(word_grad.shape[0], dtype=torch.bool)
    unused[ids.unique()] = False
    assert float(word_grad[unused].abs().sum()) == 0
    assert float(word_grad[0].abs().sum()) == 0                   # [PAD]: BERT's padding_idx


def test_freeze_embeddings(batch):
    model = minilm_encoder(freeze_embeddings=True).train()
    frozen = [p for p in model.embeddings.parameters()]
    assert not any(p.requires_grad for p in frozen)
    assert sum(p.numel() for p in frozen) == embedding_parameter_count()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert trainable == total - embedding_parameter_count()
    ids, mask = batch
    mean_pool(model(ids, mask), mask).sum().backward()
    assert all(p.grad is None for p in frozen)
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_dropout_option_and_eval_mode(encoder, batch):
    ids, mask = batch
    assert not encoder.training
    drops = [m.p for m in encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 1 + 3 * LAYERS and set(drops) == {0.1}
    no_drop = minilm_encoder(dropout=0.0)
    assert not no_drop.training
    with torch.no_grad():
        reference = encoder(ids, mask)
        assert torch.equal(no_drop.train()(ids, mask), reference)   # p = 0: train = eval
        noisy = copy.deepcopy(encoder).train()(ids, mask)
    assert float((noisy - reference).abs().max()) > 1e-2


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def tiny() -> MiniLMEncoder:
    return MiniLMEncoder(vocab_size=50, hidden=8, layers=1, heads=2, intermediate=16,
                         max_positions=6).eval()


def test_bad_input(tiny):
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    hidden = torch.zeros(2, 3, 8)
    unpadded = minilm_tokenizer()
    unpadded.no_padding()
    cases = [
        (lambda: minilm_tokenizer(2), ValueError, "max_length"),
        (lambda: minilm_tokenizer(513), ValueError, "max_length"),
        (lambda: minilm_tokenizer("32"), TypeError, "max_length"),
        (lambda: tokenize_texts(None, ["a"]), TypeError, "tokenizer"),
        (lambda: tokenize_texts(unpadded, ["a", "b c"]), ValueError, "tokenizer"),
        (lambda: tokenize_texts(minilm_tokenizer(), "a cat"), TypeError, "texts"),
        (lambda: tokenize_texts(minilm_tokenizer(), []), ValueError, "texts"),
        (lambda: tokenize_texts(minilm_tokenizer(), ["a", 3]), TypeError, "texts"),
        (lambda: tiny(ids.float()), TypeError, "input_ids"),
        (lambda: tiny(ids.tolist()), TypeError, "input_ids"),
        (lambda: tiny(ids[0]), ValueError, "input_ids"),
        (lambda: tiny(torch.zeros(2, 0, dtype=torch.long)), ValueError, "input_ids"),
        (lambda: tiny(torch.ones(1, 7, dtype=torch.long)), ValueError, "input_ids"),
        (lambda: tiny(ids + 45), ValueError, "input_ids"),
        (lambda: tiny(ids - 1), ValueError, "input_ids"),
        (lambda: tiny(ids, mask.float()), TypeError, "attention_mask"),
        (lambda: tiny(ids, mask[:, :2]), ValueError, "attention_mask"),
        (lambda: tiny(ids, mask * 2), ValueError, "attention_mask"),
        (lambda: tiny(ids, [[1, 1, 1], [1, 1, 0]]), TypeError, "attention_mask"),
        (lambda: MiniLMEncoder(hidden=10, heads=3), ValueError, "heads"),
        (lambda: MiniLMEncoder(layers=0), ValueError, "layers"),
        (lambda: MiniLMEncoder(dropout=1.0), ValueError, "dropout"),
        (lambda: minilm_encoder(dtype=torch.float16), ValueError, "dtype"),
        (lambda: minilm_encoder(dtype="float32"), TypeError, "dtype"),
        (lambda: minilm_encoder(freeze_embeddings=1), TypeError, "freeze_embeddings"),
        (lambda: minilm_encoder(dropout=-0.1), ValueError, "dropout"),
        (lambda: mean_pool(hidden[0], mask), ValueError, "hidden_states"),
        (lambda: mean_pool(hidden.long(), mask), TypeError, "hidden_states"),
        (lambda: mean_pool(hidden, mask[:, :2]), ValueError, "attention_mask"),
        (lambda: mean_pool(hidden, None), TypeError, "attention_mask"),
    ]
    for call, exc, name in cases:
        assert_rejected(call, exc, name)
