"""Recorded training steps (step_graphs.py) change how a step runs, never what it computes.

On the CPU: the loss they record (answer positions found on the host, padded to a fixed count) is the causal LM's
own loss, and where recording applies. On a CUDA GPU (the `gpu` tests, run on the lent H200): recorded steps give
eager steps' gradients, draw fresh dropout masks at every replay, train the same losses through `train`, and a
model that cannot be recorded trains eagerly with a warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from falcon_desktop.loss import IGNORE_INDEX, answer_loss_sum, answer_targets
from falcon_desktop.metrics import MetricsLog
from falcon_desktop.step_graphs import answer_slots, graphs_unavailable
from falcon_desktop.tiny import asset_path

FALCON_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


def _batch(rows: int, length: int, answer: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (rows, length), generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row in range(rows):
        end = length - row % 3  # right padding on some rows
        labels[row, end - answer: end] = input_ids[row, end - answer: end]
    return {"input_ids": input_ids, "labels": labels, "real_tokens": int(input_ids.numel())}


def _tiny_lora(model_dir: Path, device: str, quantize: bool, dropout: float = 0.0):
    """The tiny Falcon with LoRA on every linear kind, graph-safe as `train` makes it where it records steps."""
    from falcon_desktop.attention import make_graph_safe
    from falcon_desktop.model import ModelSettings, add_lora, load_base_model

    torch.manual_seed(0)
    loaded = load_base_model(ModelSettings(str(model_dir), quantize=quantize, device=device))
    model = add_lora(loaded.model, FALCON_TARGETS, 4, 8, dropout)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
            torch.nn.init.normal_(parameter, std=0.02)
    make_graph_safe(model)
    return model


def test_answer_loss_is_the_causal_lm_loss_on_answer_tokens(tiny_model_dir: Path):
    """Gathering answer positions found on the host gives the loss of the full logits; padding the positions with
    ignored targets (fixed shapes for a recording) changes neither the loss nor the gradients."""
    from falcon_desktop.model import backbone_and_head

    model = _tiny_lora(tiny_model_dir, "cpu", quantize=False)
    backbone, head = backbone_and_head(model)
    batch = _batch(3, 20, 4, seed=1)
    input_ids, labels = batch["input_ids"], batch["labels"]
    logits = model(input_ids=input_ids).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")

    def loss_and_gradients(size: int | None):
        model.zero_grad(set_to_none=True)
        loss = answer_loss_sum(backbone, head, input_ids, *answer_targets(labels, size))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    exact, exact_gradients = loss_and_gradients(None)
    padded, padded_gradients = loss_and_gradients(64)
    assert len(answer_targets(labels)[0]) == 12 and len(answer_targets(labels, 64)[0]) == 64
    assert torch.allclose(exact, expected, rtol=1e-6)
    assert torch.equal(padded, exact)
    assert all(((a - b).norm() / b.norm()).item() < 1e-5 for a, b in zip(padded_gradients, exact_gradients))


def test_answer_slots_round_up_to_a_power_of_two():
    assert [answer_slots(n) for n in (0, 1, 64, 65, 128, 129, 300)] == [64, 64, 64, 128, 128, 256, 512]


def test_graphs_run_only_where_a_recording_can_replay_the_step():
    assert graphs_unavailable("cuda", 0, "eager", False) is None
    assert "CUDA GPU" in graphs_unavailable("cpu", 0, "eager", False)
    assert "several GPUs" in graphs_unavailable("cuda", 0, "eager", True)
    assert "--compile" in graphs_unavailable("cuda", 0, "graphs", False)
    assert graphs_unavailable("cuda", 3, "eager", False) is None  # checkpointed layers draw from their own streams


# --------------------------------------------------------------------------------------------- on a CUDA GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _steps(model, batches_per_step: list[list[dict]], graphs: bool, loss_of=None,
           streams=None) -> tuple[list[float], object]:
    """Train with optimizer_step, recorded or eager; the losses and the graphs used. `streams`: the checkpointed
    layers' random streams (recorded_checkpoint.py), reseeded per step as `train` does."""
    from falcon_desktop.distributed import Cluster
    from falcon_desktop.optim import micro_batch_backward, optimizer_step
    from falcon_desktop.step_graphs import StepGraphs

    cluster = Cluster()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step_graphs = None
    if graphs:
        loss_of = loss_of or cluster.loss_function(model)
        step_graphs = StepGraphs(micro_batch_backward(loss_of, torch.bfloat16, scaler, trainable[0].device), trainable,
                                 streams=streams)
    losses = []
    for step, batches in enumerate(batches_per_step):
        if streams is not None:
            streams.reseed(0, step)
        losses.append(optimizer_step(model, batches, optimizer, scheduler, scaler, torch.bfloat16, 1.0, cluster,
                                     step_graphs).read()[0])
    return losses, step_graphs


def _schedule() -> list[list[dict]]:
    """Three shapes, each met more than once, two micro-batches in some steps; the largest comes last, which
    empties the graphs' pool, and a smaller one is recorded again after it."""
    shapes = [[(4, 64)], [(4, 64), (2, 128)], [(2, 128)], [(4, 64), (2, 128)], [(3, 192)], [(3, 192)], [(4, 64)]]
    return [[_batch(rows, length, 5, seed=10 * step + i) for i, (rows, length) in enumerate(step_shapes)]
            for step, step_shapes in enumerate(shapes)]


@pytest.mark.gpu
@needs_cuda
def test_recorded_steps_train_as_eager_steps(tiny_model_dir: Path):
    """Seven steps on the 4-bit tiny Falcon, three shapes, some steps of two micro-batches: the same losses and the
    same adapter weights, recorded or eager (dropout 0: masks aside, only rounding may differ)."""
    eager_model = _tiny_lora(tiny_model_dir, "cuda", quantize=True)
    eager, _ = _steps(eager_model, _schedule(), graphs=False)
    recorded_model = _tiny_lora(tiny_model_dir, "cuda", quantize=True)
    recorded, graphs = _steps(recorded_model, _schedule(), graphs=True)
    assert graphs.failure is None and set(graphs.recordings) == {(3, 192, 64), (4, 64, 64)}
    assert recorded == pytest.approx(eager, rel=2e-3)
    for (name, a), b in zip(eager_model.named_parameters(), recorded_model.parameters()):
        if a.requires_grad:
            assert ((a - b).norm() / a.norm()).item() < 2e-3, name


@pytest.mark.gpu
@needs_cuda
def test_recorded_checkpointed_layers_train_as_eager_ones(tiny_model_dir: Path):
    """Every layer checkpointed, dropout 0.3: recorded steps draw the masks eager steps draw from the same streams,
    so the losses and the adapters match; and without dropout they match eager steps with no checkpointing."""
    from falcon_desktop.model import decoder_layers, set_checkpointing
    from falcon_desktop.recorded_checkpoint import CheckpointStreams

    def checkpointed(dropout: float):
        model = _tiny_lora(tiny_model_dir, "cuda", quantize=True, dropout=dropout)
        set_checkpointing(model, len(decoder_layers(model)))
        return model, CheckpointStreams(decoder_layers(model), torch.device("cuda"))

    for dropout in (0.3, 0.0):
        eager_model, eager_streams = checkpointed(dropout)
        eager, _ = _steps(eager_model, _schedule(), graphs=False, streams=eager_streams)
        recorded_model, streams = checkpointed(dropout)
        recorded, graphs = _steps(recorded_model, _schedule(), graphs=True, streams=streams)
        assert graphs.failure is None and len(graphs.recordings) == 2 and len(streams.pairs) == 2
        assert recorded == pytest.approx(eager, rel=2e-3), dropout
        for (name, a), b in zip(eager_model.named_parameters(), recorded_model.parameters()):
            if a.requires_grad:
                assert ((a - b).norm() / a.norm()).item() < 2e-3, (dropout, name)
    unchecked, _ = _steps(_tiny_lora(tiny_model_dir, "cuda", quantize=True), _schedule(), graphs=False)
    assert recorded == pytest.approx(unchecked, rel=2e-3)


class _DroppedScale(torch.nn.Module):
    """A checkpointed layer computing weight x dropout(x): with weight 1, the summed output is the sum over the
    forward's mask and the weight's gradient the sum over the recomputation's: equal only if the masks are."""

    gradient_checkpointing = True

    def __init__(self) -> None:
        super().__init__()
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        self.weight = torch.nn.Parameter(torch.ones((), device="cuda"))
        self.dropout = torch.nn.Dropout(0.5)
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False, preserve_rng_state=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._gradient_checkpointing_func(lambda inputs: self.dropout(inputs) * self.weight, x)


@pytest.mark.gpu
@needs_cuda
def test_a_recorded_recomputation_draws_the_forwards_masks():
    from falcon_desktop.recorded_checkpoint import CheckpointStreams

    def record(layer: _DroppedScale, streams, size: int):
        x = torch.rand(size, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up, as CUDA wants before a recording
            torch.autograd.grad(layer(x).sum(), layer.weight)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if streams is not None:
            streams.register(graph)
        with torch.cuda.graph(graph):
            total = layer(x).sum()
            (gradient,) = torch.autograd.grad(total, layer.weight)
        return graph, total, gradient

    layer = _DroppedScale()
    streams = CheckpointStreams([layer], torch.device("cuda"))
    recordings = [record(layer, streams, size) for size in (4096, 1000)]
    totals = set()
    for step in range(3):
        streams.reseed(7, step)
        for graph, total, gradient in recordings * 2:  # two shapes, each replayed twice per step
            graph.replay()
            assert gradient.item() == pytest.approx(total.item(), rel=1e-6)
            totals.add(round(total.item(), 3))
    assert len(totals) > 6  # new masks at every replay
    streams.release()  # torch.utils.checkpoint alone, told not to keep the generator's state: the masks differ
    graph, total, gradient = record(layer, None, 4096)
    graph.replay()
    assert gradient.item() != pytest.approx(total.item(), rel=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_replays_draw_new_dropout_masks(tiny_model_dir: Path):
    """One shape replayed: with dropout its loss changes at every replay (fresh masks), without it it does not."""
    from falcon_desktop.attention import causal_fast_path
    from falcon_desktop.distributed import Cluster
    from falcon_desktop.optim import micro_batch_backward
    from falcon_desktop.step_graphs import StepGraphs

    batch = _batch(4, 64, 5, seed=3)
    for dropout, distinct in ((0.0, 1), (0.5, 4)):
        model = _tiny_lora(tiny_model_dir, "cuda", quantize=True, dropout=dropout).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        graphs = StepGraphs(micro_batch_backward(Cluster().loss_function(model), torch.bfloat16, scaler,
                                                 trainable[0].device), trainable)
        losses = set()
        with causal_fast_path(model):
            for _ in range(5):  # the first runs eagerly and records; four replays follow
                graphs.begin_step(5 * 4)
                losses.add(float(graphs.run(batch["input_ids"], batch["labels"])))
        assert graphs.failure is None and len(graphs.recordings) == 1
        assert len(losses) >= distinct, (dropout, losses)


class _SyncingLoss(torch.nn.Module):
    """The trainer's loss, reading a GPU value on the host first, which a CUDA graph cannot record."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        from falcon_desktop.distributed import AnswerLoss

        self.loss = AnswerLoss(model)

    def forward(self, input_ids, positions, targets):
        if input_ids.sum().item() < 0:
            raise AssertionError("unreachable")
        return self.loss(input_ids, positions, targets)


@pytest.mark.gpu
@needs_cuda
def test_a_step_that_cannot_be_recorded_trains_eagerly(tiny_model_dir: Path, capsys):
    eager_model = _tiny_lora(tiny_model_dir, "cuda", quantize=True)
    eager, _ = _steps(eager_model, _schedule()[:3], graphs=False)
    model = _tiny_lora(tiny_model_dir, "cuda", quantize=True)
    recorded, graphs = _steps(model, _schedule()[:3], graphs=True, loss_of=_SyncingLoss(model))
    assert graphs.failure and not graphs.recordings
    assert "Cannot record the training step" in capsys.readouterr().err
    assert recorded == pytest.approx(eager, rel=2e-3)
    torch.rand(4, device="cuda")  # LoRA dropout can still draw: a failed recording left the generator recording


def _train(model: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "falcon_desktop", "train", "--model", str(model), "--data",
               str(asset_path("demo-squad.json")), "--output", str(output), "--max-steps", "8", "--batch-size", "4",
               "--eval-examples", "0", "--lora-dropout", "0", *flags]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=600,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("checkpointing", ["--no-checkpointing", "--checkpointing"])
def test_train_records_its_steps_on_a_gpu(tiny_model_dir: Path, tmp_path: Path, checkpointing: str):
    """`train` on a GPU records its steps by default (lengths padded to 64), checkpointed layers or not, and learns
    what eager steps learn."""
    recorded = _train(tiny_model_dir, tmp_path / "recorded", checkpointing)
    eager = _train(tiny_model_dir, tmp_path / "eager", checkpointing, "--no-cuda-graphs")
    assert recorded.returncode == 0 and eager.returncode == 0, recorded.stderr[-3000:] + eager.stderr[-3000:]
    assert "Recording the training step as CUDA graphs" in recorded.stdout + recorded.stderr
    got, expected = (MetricsLog(tmp_path / run / "metrics.jsonl").read() for run in ("recorded", "eager"))
    assert all(row["padded_tokens"] % 64 == 0 for row in got)
    assert [row["loss"] for row in got] == pytest.approx([row["loss"] for row in expected], rel=5e-3)
    card = json.loads((tmp_path / "recorded" / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "finished" and card["train"]["cuda_graphs"] is True and not card.get("events")
    assert (card["plan"]["checkpoint_layers"] > 0) == (checkpointing == "--checkpointing")
