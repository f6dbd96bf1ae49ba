"""The Anthropic HH-RLHF text format, shared by the embedded task and the HH loader.

A dialogue is `\\n\\nHuman: ...\\n\\nAssistant: ...` repeated. A *prompt* is everything up to and including
the last `\\n\\nAssistant:`; a *response* is the text after it (it starts with a space).
"""

from __future__ import annotations

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def format_prompt(question: str, history: tuple[tuple[str, str], ...] = ()) -> str:
    """Render a prompt: optional earlier (human, assistant) turns, then the question, then `Assistant:`."""
    turns = "".join(f"{HUMAN} {h}{ASSISTANT} {a}" for h, a in history)
    return f"{turns}{HUMAN} {question}{ASSISTANT}"


def format_response(text: str) -> str:
    """A response as it follows the prompt: one leading space, as in HH-RLHF."""
    return " " + text.strip()


def last_human_turn(prompt: str) -> str:
    """The text of the last Human turn of a prompt (what the assistant is answering)."""
    start = prompt.rfind(HUMAN)
    if start < 0:
        return prompt.strip()
    end = prompt.find(ASSISTANT, start)
    return prompt[start + len(HUMAN) : end if end >= 0 else None].strip()
