"""Label scoring is exact: cached, batched, left-padded scores equal a plain per-sequence computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import CAUSAL_FAMILIES
from tailorkd.errors import TailorkdError
from tailorkd.scoring import LabelScorer, answer_tree, continuation_token_ids, shared_prefix


def reference_scores(model, prompts, label_ids):
    """One unpadded forward pass per (prompt, label): the definition of the label's log-likelihood."""
    out = torch.zeros(len(prompts), len(label_ids))
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            for c, label in enumerate(label_ids):
                ids = torch.tensor([prompt + label])
                logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                out[i, c] = sum(logp[len(prompt) - 1 + j, tok] for j, tok in enumerate(label))
    return out


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_exact_scores_match_reference_with_multi_token_labels(tiny_models, family):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    texts = ["The team won the match.", "Shares rose on the market after profits were reported today.", "Rain."]
    prompts = [tok(f"Classify the topic.\nText: {t}\nAnswer:")["input_ids"] for t in texts]
    # Labels of 1..several tokens; two share a first token.
    label_ids = continuation_token_ids(tok, "Text: x\nAnswer:", [" sport", " business news", " busy", " tech"], True)
    assert max(len(x) for x in label_ids) > 1
    scorer = LabelScorer(model, tok, label_ids)
    got = scorer.score_exact(prompts)  # one left-padded batch of different lengths
    want = reference_scores(model, prompts, label_ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # With a cached shared prefix (the prompts' common start) the scores are the same, whether the texts
    # run batched on copies of the cache or one by one on the cache itself (the CPU default).
    scorer.set_shared_prefix(shared_prefix(prompts)[:-1])
    assert len(scorer.prefix[0]) >= 3 and scorer.prefix_for(prompts) is not None
    prefix_len = scorer.prefix[1].get_seq_length() if hasattr(scorer.prefix[1], "get_seq_length") else None
    for sequential in (False, True, True):  # twice: a second pass proves the shared cache was put back
        scorer.sequential = sequential
        torch.testing.assert_close(scorer.score_exact(prompts), want, atol=1e-4, rtol=1e-4)
        if prefix_len is not None:
            assert scorer.prefix[1].get_seq_length() == prefix_len
    # A prompt that does not share the prefix falls back to full computation, still exact.
    other = tok("Something else entirely")["input_ids"]
    torch.testing.assert_close(scorer.score_exact([other]), reference_scores(model, [other], label_ids),
                               atol=1e-4, rtol=1e-4)

    # The differentiable training form gives the same scores (full-sequence path: first tokens collide).
    assert not scorer.first_tokens_distinct
    torch.testing.assert_close(scorer.class_logits(prompts).detach(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_first_token_class_logits_renormalise_over_classes(tiny_models, family):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    prompts = [tok(f"Text: {t}\nAnswer:")["input_ids"] for t in ["a b c", "the film won an award at the ceremony"]]
    label_ids = continuation_token_ids(tok, "Answer:", [" sport", " film", " rain"], True)
    label_ids = [ids[:1] for ids in label_ids]
    scorer = LabelScorer(model, tok, label_ids)
    assert scorer.first_tokens_distinct
    logits = scorer.class_logits(prompts)
    assert logits.requires_grad
    exact = scorer.score_exact(prompts)
    # Same distribution over the classes: softmax of restricted logits == renormalised probabilities.
    torch.testing.assert_close(torch.softmax(logits.detach(), -1), torch.softmax(exact, -1), atol=1e-5, rtol=1e-5)


def test_length_normalisation_divides_by_label_length(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    prompts = [tok("Text: hello\nAnswer:")["input_ids"]]
    label_ids = continuation_token_ids(tok, "Text: x\nAnswer:", [" sport", " business news"], True)
    raw = LabelScorer(model, tok, label_ids).score_exact(prompts)
    norm = LabelScorer(model, tok, label_ids, length_normalize=True).score_exact(prompts)
    lengths = torch.tensor([len(x) for x in label_ids], dtype=raw.dtype)
    torch.testing.assert_close(norm, raw / lengths)


def test_continuation_ids_follow_the_prompt_boundary(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = continuation_token_ids(tok, "Answer:", [" sport", " tech"], True)
    assert tok.decode(ids[0]) == " sport"
    assert tok.decode(ids[1]) == " tech"
    with pytest.raises(TailorkdError, match="are the same tokens"):
        continuation_token_ids(tok, "Answer:", [" sport", " sport"], True)


def test_answer_tree_shares_common_prefixes():
    # Labels [5], [7, 8, 9], [7, 8, 4], [7, 3]: non-final prefixes (7), (7, 8) -> two nodes.
    tokens, parents, depths = answer_tree([[5], [7, 8, 9], [7, 8, 4], [7, 3]])
    assert tokens == [7, 8] and parents == [-1, 0] and depths == [0, 1]
    assert answer_tree([[1], [2]]) == ([], [], [])


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_hidden_states_pool_the_texts_own_tokens(tiny_models, family, pooling):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models[family])
    texts = ["The team won the match.", "Shares rose on the market after profits were reported today."]
    prompts = [tok(f"Classify the topic.\nText: {t}\nAnswer:")["input_ids"] for t in texts]
    label_ids = continuation_token_ids(tok, "Text: x\nAnswer:", [" sport", " business news"], True)
    scorer = LabelScorer(model, tok, label_ids)
    prefix = shared_prefix(prompts)[:-1]
    scorer.set_shared_prefix(prefix)
    layers = [1, -1]
    # Reference: one plain forward pass per prompt, pooled over the tokens after the shared prefix.
    want = {layer: [] for layer in layers}
    with torch.no_grad():
        for p in prompts:
            states = model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
            for layer in layers:
                own = states[layer][0, len(prefix):]
                want[layer].append(own[-1] if pooling == "last" else own.mean(0))
    for sequential in (True, False):
        scorer.sequential = sequential
        got = scorer.score(prompts, hidden_layers=layers, pooling=pooling)
        assert got.scores.shape == (2, 2)
        for layer in layers:
            assert got.hidden[layer].dtype == torch.float32
            torch.testing.assert_close(got.hidden[layer], torch.stack(want[layer]), atol=1e-4, rtol=1e-4)
    with pytest.raises(TailorkdError, match="layer 99 does not exist"):
        scorer.score(prompts, hidden_layers=[99])


@pytest.mark.parametrize("sequential", [True, False])
def test_bfloat16_scores_follow_float32(tiny_models, sequential):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    texts = ["The team won the match.", "Shares rose on the market after profits were reported today."]
    prompts = [tok(f"Classify the topic.\nText: {t}\nAnswer:")["input_ids"] for t in texts]
    label_ids = continuation_token_ids(tok, "Text: x\nAnswer:", [" sport", " business news", " tech"], True)
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=dtype).eval()
        scorer = LabelScorer(model, tok, label_ids, sequential=sequential)
        scorer.set_shared_prefix(shared_prefix(prompts)[:-1])
        scores[dtype] = scorer.score_exact(prompts)
    assert scores[torch.bfloat16].dtype == torch.float32  # log-softmax is taken in float32
    torch.testing.assert_close(scores[torch.bfloat16], scores[torch.float32], atol=0.1, rtol=0.05)
