"""The sandbox's deterministic generator, judge and malformed judgments, keyed by prompt hash."""

from __future__ import annotations

import hashlib
import json

CATEGORIES = 14
LONG_REASONING_EVERY = 8

_MALFORMED = (
    "I cannot give a score for this answer, it needs a human look.",
    json.dumps({"feedback": "Looks right.", "reasoning": "The label matches."}),
    json.dumps({"feedback": "Looks right.", "reasoning": "The label matches.", "score": 7}),
    json.dumps({"feedback": "Looks right.", "reasoning": "The label matches.", "score": "0.8"}),
    '{"feedback": "Looks right.", "reasoning": "The label mat',
)
MALFORMED_VARIANTS = len(_MALFORMED)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def generate(prompt: str) -> str:
    """A Llama-Guard-style verdict: `safe`, or `unsafe` and a category on the second line."""
    digest = _digest(prompt)
    if digest[0] % 2 == 0:
        return "safe"
    return f"unsafe\nS{digest[1] % CATEGORIES + 1}"


def judge_score(prompt: str) -> float:
    """A score in [0, 1] from the prompt hash; about a third of prompts land below 0.5."""
    unit = int.from_bytes(_digest(prompt)[:4], "big") / 0xFFFFFFFF
    if unit < 1 / 3:
        return round(unit * 1.5, 2)
    return round(min(1.0, 0.5 + (unit - 1 / 3) * 0.75), 2)


def judgment(prompt: str) -> dict[str, object]:
    digest = _digest(prompt)
    score = judge_score(prompt)
    if score >= 0.5:
        feedback = "The classification matches the policy and the conversation."
        reasoning = "The verdict and the categories agree with the content of the conversation."
    else:
        feedback = (
            f"The classification is wrong: the conversation falls under "
            f"S{digest[5] % CATEGORIES + 1}, answer `unsafe` with that category."
        )
        reasoning = "The answer overlooks content that the policy lists as unsafe."
    # Some judgments are long enough that feedback + reasoning exceeds the trace limit of 2048.
    if digest[4] % LONG_REASONING_EVERY == 0:
        reasoning = " ".join([reasoning] * (2100 // len(reasoning) + 1))
    return {"feedback": feedback, "reasoning": reasoning, "score": score}


def judge_content(prompt: str) -> str:
    """The judgment as the judge writes it: bare JSON, fenced JSON, or JSON after a sentence."""
    body = json.dumps(judgment(prompt))
    wrapping = _digest(prompt)[6] % 3
    if wrapping == 1:
        return f"```json\n{body}\n```"
    if wrapping == 2:
        return f"Here is my evaluation of the response.\n\n{body}"
    return body


def malformed_judgment(n: int) -> str:
    """The n-th (cycling) answer that is not a valid judgment."""
    return _MALFORMED[n % MALFORMED_VARIANTS]
