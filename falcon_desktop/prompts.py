"""The one question-answering template, shared by training, evaluation and `ask` so they cannot drift apart.

    ### Context:
    {context}

    ### Question:
    {question}

    ### Answer:
    {answer}<eos>

Extractive QA needs the passage, so the context comes first; without one (closed-book `ask`) the context block is
left out. Unanswerable SQuAD v2 questions train the fixed answer `ABSTAIN`, so the model learns to abstain rather
than invent a span. The answer ends with the tokenizer's EOS token; `STOP_STRINGS` is the fallback for a model that
has not learned EOS yet: generation also stops where it starts writing the next "###" block, never a fake next
question.
"""

from __future__ import annotations

from dataclasses import dataclass

ABSTAIN = "unanswerable"
STOP_STRINGS = ("\n###", "\n\n\n")
TEMPLATE_VERSION = 1


@dataclass(frozen=True)
class QAPrompt:
    question: str
    context: str | None = None

    def render(self) -> str:
        """The prompt up to and including "### Answer:\\n" - what the model continues."""
        question = self.question.strip()
        if self.context and self.context.strip():
            return f"### Context:\n{self.context.strip()}\n\n### Question:\n{question}\n\n### Answer:\n"
        return f"### Question:\n{question}\n\n### Answer:\n"


def answer_text(answer: str | None) -> str:
    """What the model is trained to write: the span, or `ABSTAIN` for an unanswerable question."""
    return answer.strip() if answer and answer.strip() else ABSTAIN


def clean_generation(text: str) -> str:
    """Cut a generated answer at the first stop string and trim it."""
    for stop in STOP_STRINGS:
        index = text.find(stop)
        if index != -1:
            text = text[:index]
    return text.strip()


def is_abstention(answer: str) -> bool:
    return answer.strip().lower().rstrip(".") == ABSTAIN
