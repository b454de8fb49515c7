"""Request bounds of `scotd serve`, shared with the clients that must respect them.

They live apart from the server so that the `openai` teacher backend (which must not import FastAPI) splits its
requests to fit what this project's own server accepts. Standard library only.
"""

#: most chains one request may ask for (`n`)
MAX_N = 32
#: most prompts in one completions request (`prompt` as a list)
MAX_PROMPTS = 32
#: longest completion one request may ask for (`max_tokens`)
MAX_TOKENS = 1024
#: most top log-probs per token (`logprobs`)
MAX_LOGPROBS = 5
#: most tokens one request may generate in all (prompts x n x max_tokens): MAX_N x MAX_TOKENS, so one prompt
#: with every other field at its cap still fits, while many prompts must lower n or max_tokens
MAX_TOTAL_TOKENS = MAX_N * MAX_TOKENS
