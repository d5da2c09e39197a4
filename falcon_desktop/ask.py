"""`falcon-desktop ask`: answer questions with a base model and its trained LoRA adapters.

`Answerer` holds one base model (4-bit by default, as QLoRA trained it) and any number of adapters loaded onto it;
switching adapters never reloads the base. Three ways in: the REPL (`repl.py`), one `--question` (only the answer
on stdout, for scripts), and batch files (`--data` questions.jsonl or a SQuAD JSON, `--output` answers.jsonl or
official `{id: answer}` predictions that `falcon-desktop eval` scores).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falcon_desktop.atomic import write_text
from falcon_desktop.console import info, warn
from falcon_desktop.data.records import QARecord
from falcon_desktop.decoding import GenerationSettings
from falcon_desktop.errors import UserError
from falcon_desktop.fast_decode import StreamingDecoder
from falcon_desktop.generate import GenerationResult, answer_records, encode_prompt, stream_answer
from falcon_desktop.prompts import TEMPLATE_VERSION, is_abstention
from falcon_desktop.runs import adapter_label, base_model_of, resolve_adapter, run_card_of

UNANSWERABLE_NOTE = "(unanswerable from this context)"
CLOSED_BOOK_NOTE = "no context set: the question is asked closed-book"


@dataclass(frozen=True)
class AskOptions:
    adapter: str | None = None        # run name, run directory or adapter directory
    model: str | None = None          # base model; default: the one the adapter was trained on
    device: str = "auto"
    quantize: bool | None = None      # None: as the adapter's run trained (QLoRA: 4-bit), 4-bit without a run card
    trust_remote_code: bool = False
    settings: GenerationSettings = field(default_factory=GenerationSettings)


def display_answer(text: str) -> str:
    """What a person sees: the span, or a plain note for an abstention (never the bare marker word)."""
    return UNANSWERABLE_NOTE if is_abstention(text) else text


def prediction_text(text: str) -> str:
    """The official SQuAD v2 prediction: "" for an abstention."""
    return "" if is_abstention(text) else text


def _peft_name(label: str) -> str:
    # peft keeps adapters in a ModuleDict, whose keys cannot contain dots.
    return re.sub(r"\W", "_", label) or "adapter"


class Answerer:
    """A loaded base model, the adapters attached to it, and the generation settings in use."""

    def __init__(self, loaded: Any, base: str, settings: GenerationSettings) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.base = base
        self.settings = settings
        self.adapters: dict[str, Path] = {}   # peft adapter name -> directory, in load order
        self.active: str | None = None        # None: the base model alone
        self._decoder: StreamingDecoder | None = None

    @property
    def description(self) -> str:
        precision = "4-bit NF4" if self.loaded.quantization else str(self.loaded.compute_dtype).replace("torch.", "")
        return f"{self.base} ({precision}, {self.loaded.device})"

    @property
    def active_label(self) -> str:
        return adapter_label(self.adapters[self.active]) if self.active else "none (base model)"

    def use_adapter(self, reference: str | Path) -> str:
        """Attach (first time) and activate an adapter; returns its label."""
        from falcon_desktop.model import load_adapter

        directory = resolve_adapter(reference).resolve()
        label = adapter_label(directory)
        name = next((n for n, d in self.adapters.items() if d == directory), None)
        if name is None:
            trained_on = base_model_of(directory)
            if trained_on and not _same_model(trained_on, self.base):
                warn(f"Adapter {label!r} was trained on {trained_on!r}, but the loaded base is {self.base!r}.")
            name = _peft_name(label)
            while name in self.adapters:
                name += "_"
            self.model = load_adapter(self.model, directory, name)
            self.adapters[name] = directory
        else:
            self.model.set_adapter(name)
        self.active = name
        return label

    def use_base(self) -> None:
        self.active = None

    def _adapter_scope(self) -> contextlib.AbstractContextManager:
        if self.active is None and self.adapters:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _prompt_budget(self) -> int | None:
        """Prompt tokens that leave room for the answer within the model's positions (at least half of them)."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return max(positions - self.settings.max_new_tokens, positions // 2) if positions else None

    def ask(self, question: str, context: str | None, on_text: Callable[[str], None] = lambda _: None) -> GenerationResult:
        prompt = encode_prompt(self.tokenizer, question, context)
        budget = self._prompt_budget()
        if budget is not None and len(prompt) > budget:
            warn(f"The prompt is {len(prompt):,} tokens; this model reads {budget:,} besides the answer, "
                 "so only the beginning of the passage is used.")
            prompt = encode_prompt(self.tokenizer, question, context, budget)
        if self._decoder is None or self._decoder.model is not self.model:  # the first adapter wraps the model
            self._decoder = StreamingDecoder(self.model)
        with self._adapter_scope():
            return stream_answer(self._decoder, self.tokenizer, prompt, self.settings, on_text, self.active)

    def answer_all(self, questions: Sequence[QARecord], batch_size: int = 8,
                   on_progress: Callable[[int], None] | None = None) -> dict[str, str]:
        """{id: answer} for each question; long contexts are cut to fit the model."""
        with self._adapter_scope():
            return answer_records(self.model, self.tokenizer, questions, self._prompt_budget(), self.settings,
                                  batch_size, on_progress)


def _same_model(first: str, second: str) -> bool:
    if first == second:
        return True
    a, b = Path(first).expanduser(), Path(second).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _default_compute_dtype() -> str:
    import torch

    from falcon_desktop.hardware import compute_dtype_for_capability

    return compute_dtype_for_capability(torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None)


def load_answerer(options: AskOptions) -> Answerer:
    """Load the base (the adapter's own base unless --model says otherwise) and attach the adapter, if any."""
    from falcon_desktop.model import ModelSettings, load_base_model

    adapter_dir = resolve_adapter(options.adapter) if options.adapter else None
    card = run_card_of(adapter_dir) if adapter_dir else None
    if card is not None and card.template_version not in (None, TEMPLATE_VERSION):
        warn(f"This adapter was trained on prompt template v{card.template_version}; this version asks with "
             f"v{TEMPLATE_VERSION}, so its answers may be worse than its scores.")
    trained_on = base_model_of(adapter_dir) if adapter_dir else None
    base = options.model or trained_on
    if not base:
        raise UserError(
            "No base model to load: give --model, or an --adapter whose run card names its base.",
            "e.g. `falcon-desktop ask --adapter demo` or `falcon-desktop ask --model tiiuae/falcon-7b`.",
        )
    quantize = options.quantize
    if quantize is None:
        quantize = bool(card.train.get("quantize", True)) if card is not None else True
    settings = ModelSettings(base, quantize=quantize, compute_dtype=_default_compute_dtype(), device=options.device,
                             trust_remote_code=options.trust_remote_code)
    info(f"Loading {base} ({'4-bit NF4' if quantize else '16-bit'}) ...")
    answerer = Answerer(load_base_model(settings), base, options.settings)
    if adapter_dir is not None:
        label = answerer.use_adapter(adapter_dir)
        info(f"Adapter {label!r} from {adapter_dir}")
    return answerer


# --------------------------------------------------------------------------------------------------- batch files
def check_answers_path(path: str | Path, questions_path: str | Path | None = None, overwrite: bool = True) -> Path:
    """Refuse, before any answering, an answers file that would replace the questions, replace an existing file
    without `overwrite`, or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise UserError(f"Cannot write answers to {path.name!r}.", "Use .json (SQuAD predictions) or .jsonl.")
    if questions_path is not None and path.resolve() == Path(questions_path).resolve():
        raise UserError(f"--output {path} is the --data file: the answers would replace the questions.",
                        "Write the answers to another file.")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists.", "Choose another --output, or pass --overwrite to replace it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):  # the answers are written beside it, then renamed
            pass
    except OSError as error:
        raise UserError(f"Cannot write to {path} ({error.strerror or error}).",
                        "Choose a writable --output folder.") from None
    return path


def write_answers(path: str | Path, questions: Sequence[QARecord], answers: dict[str, str]) -> None:
    """.json: official SQuAD predictions {id: answer} ("" = unanswerable); .jsonl: one object per question."""
    path = check_answers_path(path)
    if path.suffix.lower() == ".json":
        predictions = {q.id: prediction_text(answers[q.id]) for q in questions}
        write_text(path, json.dumps(predictions, indent=2, ensure_ascii=False) + "\n")
        return
    rows = []
    for q in questions:
        answer = answers[q.id]
        rows.append(json.dumps({"id": q.id, "question": q.question, "answer": prediction_text(answer),
                                "unanswerable": is_abstention(answer),
                                "context_set": bool(q.context and q.context.strip())}, ensure_ascii=False) + "\n")
    write_text(path, "".join(rows))


def answer_file(answerer: Answerer, questions: Sequence[QARecord], batch_size: int) -> dict[str, str]:
    """Answer every question with a progress line on stderr."""
    from falcon_desktop.progress import AnswerProgress

    with AnswerProgress(len(questions)) as progress:
        return answerer.answer_all(questions, batch_size, progress.advance)

