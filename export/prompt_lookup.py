"""Prompt-lookup proposals: draft tokens for speculative greedy decoding without a draft model.

A chain-of-thought rationale copies words from its question and answer choices ("... a fridge keeps milk cold,
so the answer is (a) fridge"), so the tokens that followed the latest earlier occurrence of the text's last few
tokens are a good guess at what comes next. The decode loop verifies a guess of k tokens in one forward pass and
keeps the longest prefix that greedy decoding would have produced, so the output is the same token for token;
only the number of forward passes changes (the idea of Saxena's prompt-lookup decoding, as in transformers'
`prompt_lookup_num_tokens`).
"""

from __future__ import annotations

#: tokens proposed per step when the caller does not say (GenerationConfig.prompt_lookup=None)
DEFAULT_DRAFT_TOKENS = 4
#: longest and shortest n-gram matched against the sequence's end
MAX_NGRAM = 3
MIN_NGRAM = 1


def propose(tokens: list[int], k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the sequence's last n-gram, longest n first;
    [] when nothing matches. Longer n-grams are tried first because a longer match predicts better; the latest
    occurrence is preferred because the text just written is the likeliest to repeat."""
    size = len(tokens)
    if k <= 0:
        return []
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        tail = tokens[size - n :]
        first = tail[0]
        for start in range(size - n - 1, -1, -1):
            if tokens[start] == first and tokens[start : start + n] == tail:
                return tokens[start + n : start + n + k]
    return []
