"""`falcon-desktop train`: the SQuAD QLoRA fine-tune, driven by the plan.

Reads top-down: `run_training` -> `setup` (train_session.py: data, model, optimizer, resume) -> `fit` (the loop) ->
`finish` (evaluation, adapter, run card). Speed comes from four choices that the GPU benchmark measured
(docs/benchmarks.md): length-grouped right-padded batches under a token budget (little padding, no attention mask,
flash attention), the LM head applied only to answer tokens (`loss.py`), checkpointing only as many layers as
memory needs, and micro-batches as large as the plan allows. The optimizer step is defined by examples, not
micro-batches: every step sees `effective_batch_size` examples and the loss is normalised over all their answer
tokens, so splitting a step into more micro-batches (after an OOM, or on a smaller card) does not change what is
learned.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.markup import escape

from falcon_desktop.atomic import write_directory
from falcon_desktop.checkpoint import save_checkpoint
from falcon_desktop.console import info, warn
from falcon_desktop.data import collate, load_records, schedule_steps, step_micro_batches
from falcon_desktop.distributed import Cluster, masked
from falcon_desktop.errors import UserError, explain_disk_error, first_line
from falcon_desktop.metrics import Stopwatch, plot_losses, vram_now
from falcon_desktop.model import PAD_MULTIPLE, eager, resolve_device, uncompile_layers
from falcon_desktop.optim import StepValues, optimizer_step
from falcon_desktop.plan import Plan, adapter_learning_rate
from falcon_desktop.progress import TrainingDisplay
from falcon_desktop.run_lock import RunLock
from falcon_desktop.runs import RunCard, RunDir
from falcon_desktop.stop import StopSignals, say
from falcon_desktop.train_config import TrainConfig
from falcon_desktop.train_session import Session, check_compile, check_local_model, setup

# Methods `train` can run: the planner also knows full fine-tuning and inference, which it only sizes.
TRAINABLE_METHODS = ("qlora", "lora")


def run_training(config: TrainConfig, plan: Plan, resume: bool = False, overwrite: bool = False) -> RunCard:
    """Train, evaluate and save; returns the run card (also written to RUN_DIR/run.json).

    Every input is checked before the model loads; the run folder is locked against a second writer; a fresh run
    refuses a folder holding a run unless `overwrite`.
    """
    if plan.method not in TRAINABLE_METHODS:
        raise UserError(f"`train` cannot run method {plan.method!r}; it trains {' or '.join(TRAINABLE_METHODS)}.",
                        "Pass --method qlora (4-bit base) or --method lora (16-bit base); "
                        "`plan` sizes the other methods.")
    if plan.method == "lora" and config.quantize:
        config = replace(config, quantize=False)  # LoRA means a 16-bit base; QLoRA is the 4-bit one
    if config.learning_rate is None:  # the card records the rate used, so resume keeps it; old plans had none
        config = replace(config, learning_rate=plan.learning_rate or adapter_learning_rate(plan.total_params)[0])
    check_local_model(config.model)
    run = RunDir(Path(config.output))
    card = RunCard.read(run.root) if resume else None
    report = load_records(config.data, strict=config.strict_data)  # a bad --data must not cost a model load
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create the run folder {run.root} ({error.strerror or error}).",
                        "Choose an --output folder you can write to.") from None
    cluster = Cluster.from_environment()
    if config.compile:
        check_compile(cluster, resolve_device(cluster.device_for(config.device)), config.model)
    cluster.start(cluster.device_for(config.device))
    with RunLock(run.root) if cluster.is_main else contextlib.nullcontext():  # only rank 0 writes the folder
        if card is None and cluster.is_main:
            run.claim(overwrite)
        session = setup(config, plan, card, report, cluster)
        try:
            with StopSignals() as stop:
                return _train_and_finish(session, stop, evaluate_first=card is None and bool(config.eval_examples))
        except BaseException as error:
            _record_failure(session, error)
            raise
        finally:
            cluster.stop()


def _train_and_finish(session: Session, stop: StopSignals, evaluate_first: bool) -> RunCard:
    if evaluate_first:
        session.card.metrics["eval_before"] = evaluate(session, "before fine-tuning")
        _write_card(session)
    with collector_between_steps():
        status = fit(session, stop)
    return finish(session, status)


# ----------------------------------------------------------------------------------------------------------- fit
# While training, Python's cyclic garbage collector runs only between steps (`fit`), on the young objects, every this
# many steps. Left to itself it starts whenever allocations pass its thresholds, mid-step, and its full passes walk
# every object the model and the libraries made, while the GPU runs dry (torchtitan pauses it the same way).
COLLECT_EVERY_STEPS = 50


@contextlib.contextmanager
def collector_between_steps():
    """The collector paused, and what exists before training frozen out of its passes; both restored after."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def fit(s: Session, stop: StopSignals) -> str:
    """The training loop; returns the run's status: finished, interrupted or diverged.

    Each step's loss is read after the next step is queued (optim.StepValues), and always before a checkpoint, so
    the GPU does not wait on the host between steps and no checkpoint holds weights a non-finite loss updated.
    """
    clock = Stopwatch()
    display = TrainingDisplay(s.total_steps, s.state.step)
    say(display.__enter__)
    queued: _QueuedStep | None = None  # the newest step, its loss not yet read
    try:
        while s.state.step < s.total_steps:
            if s.cluster.any(stop.requested is not None):  # agreed by every rank: all save the same step
                if queued is not None and not _report(s, queued, display):
                    return "diverged"
                name = signal.Signals(stop.requested).name if stop.requested is not None else "Another rank's signal"
                say(warn, f"{name}: saving a checkpoint at step {s.state.step}.")
                _checkpoint(s)
                return "interrupted"
            try:
                result = train_step(s, _step_indices(s, s.state.step))
            except torch.cuda.OutOfMemoryError:
                if s.cluster.distributed:  # the other ranks wait mid-step; the launcher stops them
                    raise
                _recover_from_oom(s)
                continue
            except torch._dynamo.exc.TorchDynamoException as error:  # only --compile reaches the compiler
                _stop_compiling(s, error)
                continue
            seconds = clock.lap()
            s.state.step += 1
            if s.state.step % COLLECT_EVERY_STEPS == 0:
                gc.collect(1)
            s.state.tokens_seen += result.real_tokens
            s.state.elapsed_seconds += seconds
            if queued is not None and not _report(s, queued, display):
                return "diverged"
            queued = _QueuedStep(s, result, seconds)
            if s.state.step % s.config.save_every == 0 or s.state.step == s.total_steps:
                if not _report(s, queued, display):
                    return "diverged"
                queued = None
                _checkpoint(s)
                clock.lap()  # saving is not training time
    finally:
        say(display.__exit__, None, None, None)
    return "finished"


class _QueuedStep:
    """A step's metrics record, all but its loss and gradient norm, which the GPU may still be computing."""

    def __init__(self, s: Session, result: StepResult, seconds: float) -> None:
        reserved, peak = vram_now()
        self.values = result.values
        self.record = {
            "step": s.state.step,
            "epoch": round(s.state.step / s.steps_per_epoch, 4),
            "loss": None,
            "lr": s.scheduler.get_last_lr()[0],
            "grad_norm": None,
            "real_tokens": result.real_tokens,
            "padded_tokens": result.padded_tokens,
            "samples": result.samples,
            "seconds": round(seconds, 4),
            "tokens_per_second": round(result.real_tokens / max(seconds, 1e-9), 1),
            "vram_reserved_bytes": reserved,
            "vram_peak_bytes": peak,
            "elapsed_seconds": round(s.state.elapsed_seconds, 3),
        }
        self.run_tokens_per_second = s.state.tokens_seen / max(s.state.elapsed_seconds, 1e-9)


def _report(s: Session, queued: _QueuedStep, display: TrainingDisplay) -> bool:
    """Read a queued step's loss: log it and show it; False, with the run set back to the step before, if the loss is
    not finite."""
    loss, grad_norm = queued.values.read()
    step = queued.record["step"]
    if not math.isfinite(loss):
        s.card.events.append({"step": step, "event": "non-finite loss", "loss": str(loss)})
        s.state.step = step - 1  # what the last checkpoint holds at best; the weights in memory are not kept
        return False
    record = {**queued.record, "loss": round(loss, 6), "grad_norm": round(grad_norm, 6)}
    _guard_write(s, s.run.metrics.append, record)
    say(display.update, step, loss, record["lr"], queued.run_tokens_per_second)
    return True


def _step_indices(s: Session, step: int) -> list[int]:
    """The examples of global step `step`: a pure function of (seed, epoch), which is what makes resume exact."""
    epoch, index = divmod(step, s.steps_per_epoch)
    if epoch not in s.schedules:  # one shuffle per epoch, not per step
        s.schedules[epoch] = schedule_steps(s.lengths, s.plan.effective_batch_size, s.config.seed, epoch)
    return s.schedules[epoch][index]


@dataclass(frozen=True)
class StepResult:
    values: StepValues   # loss per answer token and gradient norm, read when needed (StepValues.read)
    real_tokens: int     # non-padding tokens
    padded_tokens: int   # tokens computed, padding included
    samples: int


def train_step(s: Session, indices: list[int]) -> StepResult:
    """One optimizer step over the examples `indices`."""
    pad_id = s.tokenizer.pad_token_id
    s.cluster.seed_step(s.config.seed, s.state.step)
    if s.step_graphs is not None:
        s.step_graphs.reseed(s.config.seed, s.state.step)
    batches = step_micro_batches(s.examples, s.cluster.shard(indices), s.lengths, s.state.token_budget, pad_id,
                                 s.pad_multiple)
    # A rank with fewer micro-batches (none: its share of a short last step is empty) still joins the collectives
    batches = s.cluster.even_out(batches, lambda: masked(collate([s.examples[indices[0]]], pad_id)))
    values = optimizer_step(
        s.model, batches, s.optimizer, s.scheduler, s.scaler, s.compute_dtype, s.config.max_grad_norm, s.cluster,
        s.step_graphs,
    )
    if s.step_graphs is not None and s.step_graphs.failure:
        _stop_recording(s, s.step_graphs.failure)
    real_tokens, padded_tokens = s.cluster.sum(sum(b["real_tokens"] for b in batches),
                                               sum(b["input_ids"].numel() for b in batches if b["real_tokens"]))
    return StepResult(values, int(real_tokens), int(padded_tokens), len(indices))


def _recover_from_oom(s: Session) -> None:
    """Redo the step with less memory: first without recorded steps (their graphs keep every shape's activations
    in a pool of their own, a few percent above eager steps at the plan's largest shape), then at half the micro-batch
    token budget. The effective batch, and so the maths, stay the same."""
    s.optimizer.zero_grad(set_to_none=True)
    if s.step_graphs is not None:
        _stop_recording(s, "CUDA out of memory")
        torch.cuda.empty_cache()
        warn("CUDA out of memory with recorded steps: training eagerly from here (the same training, slower), at the "
             "same micro-batch budget; redoing the step.")
        return
    torch.cuda.empty_cache()
    longest_row = max(s.lengths)
    if s.state.token_budget <= longest_row:
        raise UserError(
            f"CUDA ran out of memory even with one sequence of {longest_row} tokens per micro-batch.",
            "Lower --seq-len, use a smaller --lora-r, or free VRAM held by other programs (see `falcon-desktop doctor`).",
        )
    s.state.token_budget = max(longest_row, s.state.token_budget // 2)
    s.state.oom_events += 1
    s.card.events.append({"step": s.state.step + 1, "event": "cuda_oom", "new_token_budget": s.state.token_budget})
    warn(f"CUDA out of memory: micro-batch budget lowered to {s.state.token_budget:,} tokens; redoing the step.")


def _stop_recording(s: Session, why: str) -> None:
    """Train eagerly from here on: the same training; the graphs' memory is freed."""
    s.step_graphs.close()
    s.step_graphs = None
    s.pad_multiple = PAD_MULTIPLE[s.card.train["compile_style"]]
    s.card.train["cuda_graphs"] = False
    s.card.events.append({"step": s.state.step + 1, "event": "cuda_graphs_off", "reason": why})


def _stop_compiling(s: Session, error: Exception) -> None:
    """A compile error (a broken compiler, a shape the compiler cannot handle): redo the step with eager layers,
    slower but the same training, rather than stop a run that may have hours to go."""
    message = f"torch.compile failed at step {s.state.step + 1}: {first_line(error)[:300]}"
    s.optimizer.zero_grad(set_to_none=True)  # the failed step may have accumulated part of its gradient
    if not uncompile_layers(s.model):
        raise UserError(message, f"Train without --compile; `falcon-desktop train --resume {s.run.root}` continues "
                                 "from the last checkpoint.") from None
    s.card.events.append({"step": s.state.step + 1, "event": "compile_failed", "error": message})
    s.card.train["compile_style"] = "eager"
    s.pad_multiple = PAD_MULTIPLE["eager"]  # as the card now says: eager layers need no padded lengths
    warn(f"{escape(message)}. Continuing without it: eager layers, slower, the same training.")


def _guard_write(s: Session, write, *args) -> None:
    """Run one write of the run (rank 0's alone); a full, read-only or forbidden disk ends the run with one clear
    error."""
    if not s.cluster.is_main:
        return
    try:
        write(*args)
    except OSError as error:
        user_error = explain_disk_error(error, f"The run keeps its last complete checkpoint: then run "
                                               f"`falcon-desktop train --resume {s.run.root}`.")
        if user_error is None:
            raise
        raise user_error from error


def _checkpoint(s: Session) -> None:
    # Every rank takes part (under FSDP these gather the shards to rank 0); rank 0 alone writes.
    adapter, optimizer_state = s.cluster.adapter_state(s.model), s.cluster.optimizer_state(s.optimizer)
    _guard_write(s, s.run.metrics.sync)  # the lines up to this step, as durable as the checkpoint
    _guard_write(s, save_checkpoint, s.run.checkpoints, adapter, optimizer_state, s.scheduler, s.state,
                 s.config.keep_checkpoints)
    s.card.last_checkpoint_step = s.state.step  # only once the checkpoint is complete on disk
    _write_card(s)


def _write_card(s: Session) -> None:
    _guard_write(s, s.card.write, s.run.root)


def _record_failure(s: Session, error: BaseException) -> None:
    """Best effort: mark the card so `runs` does not show a dead run as running (the disk may be what failed)."""
    if s.card.status != "running" or not s.cluster.is_main:  # finish recorded why it stopped (a diverged loss)
        return
    s.card.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    s.card.events.append({"step": s.state.step, "event": s.card.status, "error": str(error)[:200]})
    with contextlib.suppress(OSError):
        s.card.write(s.run.root)


# -------------------------------------------------------------------------------------------------------- finish
def evaluate(s: Session, label: str) -> dict:
    """Answer held-out questions and score them with the official SQuAD v2 metrics."""
    from falcon_desktop.evaluate import score_predictions
    from falcon_desktop.generate import answer_records

    records = s.eval_records[: s.config.eval_examples]
    if not records or not s.cluster.evaluates:  # the other ranks wait at their next collective
        return {}
    info(f"Evaluating {len(records)} held-out questions ({label})...")
    with eager():  # generation's ever-changing cache shapes would recompile the layers at every length
        predictions = answer_records(s.model, s.tokenizer, records, max_prompt_tokens=s.plan.max_seq_len)
    return score_predictions(records, predictions)


def finish(s: Session, status: str) -> RunCard:
    card = s.card
    adapter = s.cluster.adapter_state(s.model) if status in ("finished", "interrupted") else None  # every rank
    if not s.cluster.is_main:  # rank 0 evaluates, saves the adapter and records the run
        card.status, card.steps = status, s.state.step
        return card
    if s.step_graphs is not None:  # their memory goes back before evaluation
        s.step_graphs.close()
        s.step_graphs = None
    if status == "finished" and s.config.eval_examples:
        card.metrics["eval_after"] = evaluate(s, "after fine-tuning")
    if status in ("finished", "interrupted"):
        _guard_write(s, _save_adapter, s, adapter)
    history = s.run.metrics.read()
    if history:
        _guard_write(s, plot_losses, {"train": [(r["step"], r["loss"]) for r in history]}, s.run.loss_plot)
        card.metrics["final_loss"] = history[-1]["loss"]
    _, peak = vram_now()
    card.measured = {
        "peak_vram_reserved_bytes": peak,
        "peak_vram_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
        "predicted_peak_vram_bytes": s.plan.peak_vram_bytes,
        "tokens_per_second": round(s.state.tokens_seen / max(s.state.elapsed_seconds, 1e-9), 1),
        "real_tokens": s.state.tokens_seen,
        "train_seconds": round(s.state.elapsed_seconds, 1),
        "oom_events": s.state.oom_events,
        "device": torch.cuda.get_device_name() if s.device.type == "cuda" else "cpu",
        "processes": s.cluster.world_size,
    }
    card.status, card.steps, card.finished_at = status, s.state.step, time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_card(s)
    if status == "diverged":
        raise UserError(
            f"The loss became NaN/inf at step {s.state.step + 1}; the last good checkpoint is kept in {s.run.checkpoints}.",
            "Lower --learning-rate, or use bf16 on a GPU that supports it.",
        )
    return card


def _save_adapter(s: Session, weights: dict) -> None:
    """adapter/ = peft's files + the tokenizer, swapped in atomically so `ask` never sees a half-written one."""

    def write(tmp: Path) -> None:
        s.cluster.save_adapter(s.model, weights, tmp)
        s.tokenizer.save_pretrained(str(tmp))

    write_directory(s.run.adapter, write)
