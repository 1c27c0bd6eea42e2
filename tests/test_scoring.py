"""Label scoring is exact: cached, batched, left-padded scores equal a plain per-sequence computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CAUSAL_FAMILIES
from tailorkd.scoring import LabelScorer, continuation_token_ids, shared_prefix


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

    # With a cached shared prefix (the prompts' common start) the scores are the same.
    scorer.set_shared_prefix(shared_prefix(prompts)[:-1])
    assert len(scorer._prefix[0]) >= 3 and scorer._prefix_for(prompts) is not None
    torch.testing.assert_close(scorer.score_exact(prompts), want, atol=1e-4, rtol=1e-4)
    # A prompt that does not share the prefix falls back to full computation, still exact.
    other = tok("Something else entirely")["input_ids"]
    torch.testing.assert_close(scorer.score_exact([other]), reference_scores(model, [other], label_ids), atol=1e-4, rtol=1e-4)

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
    with pytest.raises(ValueError, match="same answer tokens"):
        continuation_token_ids(tok, "Answer:", [" sport", " sport"], True)
