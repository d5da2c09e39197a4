"""`falcon-desktop demo`: the whole flow offline on a CPU in about a minute - doctor, plan, train, eval, ask.

It trains a tiny random Falcon (2 layers, hidden 64) on a small SQuAD-format sample shipped in the package. That
shows every mechanism a real run uses (4-bit quantization, LoRA, checkpoints, metrics, evaluation, the answer
template) but not quality: a random 2-layer model cannot answer questions, whatever its scores say.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from falcon_desktop.console import info, out

DEMO_STEPS = 30


@dataclass(frozen=True)
class DemoSettings:
    output: Path
    steps: int = DEMO_STEPS
    seed: int = 42


def _is_earlier_demo(output: Path, model_dir: Path) -> bool:
    """The demo replaces its own earlier run in the same folder, never another run."""
    from falcon_desktop.runs import RUN_CARD, RunCard

    return (output / RUN_CARD).is_file() and RunCard.read(output).model == str(model_dir)


def run_demo(settings: DemoSettings):
    from falcon_desktop.plan import PlanRequest, make_plan
    from falcon_desktop.shapes import load_shape
    from falcon_desktop.tiny import asset_path, build_tiny_model
    from falcon_desktop.train import TrainConfig, run_training

    info("[bold]falcon-desktop demo[/bold]: a tiny random model shows the mechanics, not quality.\n")
    _doctor_verdict()

    model_dir = build_tiny_model(settings.output / "tiny-falcon")  # inside the run, so one folder holds the demo
    info(f"[bold]1. Model[/bold]  tiny Falcon (random weights) written to {model_dir}")

    plan = make_plan(
        load_shape(str(model_dir)), None,
        PlanRequest(method="qlora", max_seq_len=512, effective_batch_size=8, micro_batch_size=8),
    )
    info(f"[bold]2. Plan[/bold]  {plan.total_params:,} parameters, {plan.trainable_params:,} trainable "
         f"(LoRA r={plan.lora_r} on {', '.join(plan.lora_targets)})")

    info(f"[bold]3. Train[/bold]  {settings.steps} steps on the shipped SQuAD sample")
    config = TrainConfig(
        model=str(model_dir), data=str(asset_path("demo-squad.json")), output=settings.output,
        max_steps=settings.steps, learning_rate=3e-3, save_every=10, eval_fraction=0.2, eval_examples=12,
        device="cpu", seed=settings.seed,
    )
    card = run_training(config, plan, overwrite=_is_earlier_demo(settings.output, model_dir))

    before = card.metrics.get("eval_before", {})
    after = card.metrics.get("eval_after", {})
    info(f"[bold]4. Eval[/bold]  held-out EM/F1 before {before.get('exact', 0):.1f}/{before.get('f1', 0):.1f}, "
         f"after {after.get('exact', 0):.1f}/{after.get('f1', 0):.1f} (a random tiny model: these scores mean nothing)")
    final_loss = card.metrics.get("final_loss")
    info(f"          training loss at the end: {final_loss}")

    question, context = _first_question()
    answer = _one_answer(config.output, question, context)
    info(f"[bold]5. Ask[/bold]  Q: {question}")
    out().print(f"          A: {answer}", markup=False)
    info(f"\nRun directory: {config.output}\nTry: falcon-desktop ask --adapter {config.output}")
    return card


def _first_question() -> tuple[str, str]:
    from falcon_desktop.data.questions import read_questions
    from falcon_desktop.tiny import asset_path

    first = read_questions(asset_path("demo-squad.json"))[0]
    return first.question, first.context


def _doctor_verdict() -> None:
    from falcon_desktop.probe import run_checks

    report = run_checks()
    info(f"[bold]0. Doctor[/bold]  {report.verdict}")


def _one_answer(run_dir: Path, question: str, context: str) -> str:
    from falcon_desktop.ask import AskOptions, display_answer, load_answerer

    return display_answer(load_answerer(AskOptions(adapter=str(run_dir), device="cpu")).ask(question, context).text)
