"""The one place that decides what a training target and a prompt look like."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<response>", "</response>"
TAGS = (THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE)

# Used only for tokenizers without a chat template (the seed's plain-text prompt).
PLAIN_PROMPT = "Question: {question}\n"


def build_target(reasoning: str, response: str) -> str:
    """The assistant turn the model learns to write."""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{RESPONSE_OPEN}{response}{RESPONSE_CLOSE}"


def prompt_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def completion_messages(target: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": target}]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, question: str) -> str:
    """Prompt text ending where the model should start writing its answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(prompt_messages(question), tokenize=False, add_generation_prompt=True)
    return PLAIN_PROMPT.format(question=question)


def training_example(tokenizer, question: str, target: str) -> dict:
    """A TRL prompt-completion example: loss falls on the completion (assistant turn) only."""
    if has_chat_template(tokenizer):
        return {"prompt": prompt_messages(question), "completion": completion_messages(target)}
    return {"prompt": PLAIN_PROMPT.format(question=question), "completion": target + (tokenizer.eos_token or "")}
