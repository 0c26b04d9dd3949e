"""The sandbox's deterministic generator, judge and malformed judgments, keyed by prompt hash.

Each prompt has a correct Llama-Guard-style verdict and a difficulty u in [0, 1), both from its hash;
a model of quality q answers it correctly when u < q, so a better model is right on a superset of
prompts. The judge reads the prompt and the answer out of cftrunner's built-in judge template and
scores a correct answer in [0.6, 1], a wrong one in [0, 0.4]; any other judge prompt it scores by
the prompt's hash alone.
"""

from __future__ import annotations

import hashlib
import json
import re

CATEGORIES = 14
LONG_REASONING_EVERY = 8
BASE_QUALITY = 2 / 3
CORRECT_SCORES = (0.6, 1.0)
WRONG_SCORES = (0.0, 0.4)

# The two sections of cftrunner.config.run_options.DEFAULT_TEMPLATE, each placeholder on a line of its own.
_SECTIONS = re.compile(
    r"<prompt>\n(?P<prompt>.*)\n</prompt>\s*<answer>\n(?P<answer>.*?)\n</answer>", re.DOTALL
)

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


def _unit(digest: bytes, start: int) -> float:
    """Four bytes of a digest as a number in [0, 1)."""
    return int.from_bytes(digest[start : start + 4], "big") / 2**32


def correct_answer(prompt: str) -> str:
    """The right Llama-Guard-style verdict: `safe`, or `unsafe` and a category on the second line."""
    digest = _digest(prompt)
    if digest[0] % 2 == 0:
        return "safe"
    return f"unsafe\nS{digest[1] % CATEGORIES + 1}"


def wrong_answer(prompt: str) -> str:
    """A wrong verdict: `unsafe` for a safe prompt; `safe` or another category for an unsafe one."""
    digest = _digest(prompt)
    if digest[0] % 2 == 0:
        return f"unsafe\nS{digest[2] % CATEGORIES + 1}"
    if digest[3] % 2 == 0:
        return "safe"
    other = (digest[1] % CATEGORIES + 1 + digest[2] % (CATEGORIES - 1)) % CATEGORIES
    return f"unsafe\nS{other + 1}"


def difficulty(prompt: str) -> float:
    """u(prompt) in [0, 1): a model of quality q answers the prompt correctly when u < q."""
    return _unit(_digest(prompt), 8)


def generate(prompt: str, quality: float = BASE_QUALITY) -> str:
    """The verdict of a model of `quality` in [0, 1]: correct when the prompt's difficulty < quality."""
    return correct_answer(prompt) if difficulty(prompt) < quality else wrong_answer(prompt)


def is_correct(prompt: str, answer: str) -> bool:
    """Whether `answer` is the prompt's correct verdict, ignoring case, blank lines and margins."""
    return _lines(answer) == _lines(correct_answer(prompt))


def _lines(text: str) -> list[str]:
    return [line.strip().lower() for line in text.splitlines() if line.strip()]


def expected_score(prompt: str, answer: str) -> float:
    """The judge's score for `answer` to `prompt`: in [0.6, 1] if correct, else in [0, 0.4]."""
    low, high = CORRECT_SCORES if is_correct(prompt, answer) else WRONG_SCORES
    return round(low + (high - low) * _unit(_pair_digest(prompt, answer), 0), 2)


def _pair_digest(prompt: str, answer: str) -> bytes:
    return _digest(f"{prompt}\x00{answer}")


def sections(judge_prompt: str) -> tuple[str, str] | None:
    """(prompt, answer) from a judge prompt built on the default template, else None."""
    found = _SECTIONS.search(judge_prompt)
    return None if found is None else (found["prompt"], found["answer"])


def judge_score(prompt: str) -> float:
    """A score in [0, 1] from the judge prompt's hash, for a judge prompt on a custom template;
    about a third of prompts land below 0.5."""
    unit = int.from_bytes(_digest(prompt)[:4], "big") / 0xFFFFFFFF
    if unit < 1 / 3:
        return round(unit * 1.5, 2)
    return round(min(1.0, 0.5 + (unit - 1 / 3) * 0.75), 2)


def judgment(judge_prompt: str, drift: float = 0.0) -> dict[str, object]:
    """The judge's verdict: on the answer's correctness when the default template's sections are
    there, else on the judge prompt's hash; `drift` added to its score, within [0, 1]."""
    found = sections(judge_prompt)
    if found is None:
        digest = _digest(judge_prompt)
        score = judge_score(judge_prompt)
        right = f"unsafe\nS{digest[5] % CATEGORIES + 1}"
    else:
        digest = _pair_digest(*found)
        score = expected_score(*found)
        right = correct_answer(found[0])
    score = drifted(score, drift)
    if score >= 0.5:
        feedback = "The classification matches the policy and the conversation."
        reasoning = "The verdict and the categories agree with the content of the conversation."
    elif right == "safe":
        feedback = "The classification is wrong: the conversation is safe, answer `safe`."
        reasoning = "The answer flags content that the policy allows."
    else:
        feedback = (
            f"The classification is wrong: the conversation falls under "
            f"{right.splitlines()[1]}, answer `unsafe` with that category."
        )
        reasoning = "The answer overlooks content that the policy lists as unsafe."
    # Some judgments are long enough that feedback + reasoning exceeds the trace limit of 2048.
    if digest[4] % LONG_REASONING_EVERY == 0:
        reasoning = " ".join([reasoning] * (2100 // len(reasoning) + 1))
    return {"feedback": feedback, "reasoning": reasoning, "score": score}


def drifted(score: float, drift: float) -> float:
    """A score of a judge whose scores drifted by `drift`, kept within [0, 1]."""
    return min(1.0, max(0.0, round(score + drift, 2))) if drift else score


def judge_content(prompt: str, structured: bool = False, drift: float = 0.0) -> str:
    """The judgment as the judge writes it: bare JSON, fenced JSON, or JSON after a sentence;
    always bare JSON under structured output, as a model held to a response format writes it."""
    body = json.dumps(judgment(prompt, drift))
    wrapping = 0 if structured else _digest(prompt)[6] % 3
    if wrapping == 1:
        return f"```json\n{body}\n```"
    if wrapping == 2:
        return f"Here is my evaluation of the response.\n\n{body}"
    return body


def answer(
    turns: list[tuple[str, str]],
    *,
    judge: bool,
    structured: bool = False,
    quality: float = BASE_QUALITY,
    drift: float = 0.0,
) -> str:
    """The reply to (role, content) turns: the judge judges the first user message, its prompt
    even in a retry conversation; a generator of `quality` answers the last user message."""
    prompts = [content for role, content in turns if role == "user"] or [turns[-1][1]]
    if judge:
        return judge_content(prompts[0], structured, drift)
    return generate(prompts[-1], quality)


def first_tokens(text: str, limit: int) -> str:
    """The text cut to its first `limit` tokens, joined by single spaces; unchanged if not longer."""
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit])


def malformed_judgment(n: int) -> str:
    """The n-th (cycling) answer that is not a valid judgment."""
    return _MALFORMED[n % MALFORMED_VARIANTS]
