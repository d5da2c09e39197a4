"""Fault injection on the tiny Falcon: kill -9, SIGTERM with a closed pipe, a failing disk at every write site,
torn and truncated files of every kind a run writes, and a pickle payload. docs/reliability.md quotes the counts.

Each fault ends in a state that `train --resume` continues; the kill -9 runs must end on exactly the weights of an
uninterrupted run. Runs that must match a reference are fresh processes, as a user's would be.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from falcon_desktop.cli import main
from falcon_desktop.runs import summarize_run
from falcon_desktop.tiny import asset_path

DEMO = str(asset_path("demo-squad.json"))
KILL_SEED = 14
KILLS = 3
STEPS = ["--max-steps", "10", "--save-every", "2", "--eval-examples", "0"]


def _train_args(model: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", DEMO, "--output", str(output), "--batch-size", "8",
            "--learning-rate", "3e-3", *extra]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "falcon_desktop", *args]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _assert_same_weights(run: Path, reference: Path) -> None:
    got, expected = _adapter(run), _adapter(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_kill_9_at_random_moments_then_resume_ends_on_the_uninterrupted_weights(tiny_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference_process = subprocess.Popen(_command(*_train_args(tiny_model_dir, reference, *STEPS)),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run, metrics, rng = tmp_path / "killed", tmp_path / "killed" / "metrics.jsonl", random.Random(KILL_SEED)
    log = tmp_path / "log.txt"
    killed_at = []
    for attempt in range(KILLS):
        args = _train_args(tiny_model_dir, run, *STEPS) if attempt == 0 else ["train", "--resume", str(run)]
        with log.open("ab") as stderr:
            process = subprocess.Popen(_command(*args), stdout=subprocess.DEVNULL, stderr=stderr)
            # A random moment: some steps after the last kill (so training runs), then a random fraction of a step,
            # which lands inside metrics appends, card writes and checkpoint saves alike.
            target = _lines(metrics) + rng.randint(1, 3)
            deadline = time.monotonic() + 120
            while process.poll() is None and _lines(metrics) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.06))
            process.kill()  # SIGKILL: no handler, no cleanup
            process.wait(timeout=60)
        killed_at.append(_lines(metrics))
        assert process.returncode != 0, "the run finished before it could be killed"
    assert (run / "train.lock").exists()  # a dead writer's lock stays behind, and `runs` sees through it
    assert summarize_run(run).status == "stopped (crashed)"

    resumed = subprocess.run(_command("train", "--resume", str(run)), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    assert reference_process.wait(timeout=300) == 0
    _assert_same_weights(run, reference)
    assert _losses(run) == pytest.approx(_losses(reference), abs=1e-5)
    assert [json.loads(line)["step"] for line in metrics.read_text(encoding="utf-8").splitlines()] == list(range(1, 11))
    assert not (run / "train.lock").exists()
    assert killed_at == sorted(killed_at)


def test_sigterm_with_a_closed_pipe_still_saves_and_says_how_to_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(_command(*_train_args(tiny_model_dir, run, "--max-steps", "400", "--save-every", "1000",
                                                     "--eval-examples", "0")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and _lines(run / "metrics.jsonl") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.stdout.close()  # `| tee log` ended by the same Ctrl-C: every later write hits a broken pipe
    process.stderr.close()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["status"] == "interrupted" and 3 <= card["steps"] < 400
    assert card["last_checkpoint_step"] == card["steps"]
    assert (run / "checkpoints" / f"step-{card['steps']:06d}").is_dir()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "train.lock").exists()


# ----------------------------------------------------------------------------------------------- a failing disk
class _FailingDisk:
    """os.fsync raising at its n-th call: every write of the tool syncs, so each call is one write site."""

    def __init__(self, fail_at: int | None, error: int = errno.ENOSPC) -> None:
        self.fail_at, self.error, self.calls, self.sites = fail_at, error, 0, []
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.fail_at is None:
            self.sites.append(_write_site())
        elif self.calls == self.fail_at:
            raise OSError(self.error, os.strerror(self.error), "injected")
        self._fsync(fd)


def _write_site() -> str:
    """The chain of our functions that asked for this write, e.g. `_checkpoint>save_checkpoint>write_directory`."""
    frame, names = sys._getframe(2), []
    while frame is not None:
        if "falcon_desktop" in frame.f_code.co_filename and "atomic.py" not in frame.f_code.co_filename:
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return ">".join(reversed(names[:4]))


SHORT = ["--max-steps", "3", "--save-every", "2", "--eval-examples", "0"]
ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES)


def test_a_failing_disk_at_every_write_site_is_one_error_and_stays_resumable(tiny_model_dir: Path, tmp_path: Path,
                                                                             monkeypatch, capsys) -> None:
    assert main(_train_args(tiny_model_dir, tmp_path / "warm", *SHORT)) == 0  # the tokenized cache: not a run's write
    survey = _FailingDisk(None)
    monkeypatch.setattr(os, "fsync", survey)
    assert main(_train_args(tiny_model_dir, tmp_path / "survey", *SHORT)) == 0
    first_call_of_site = {}
    for call, site in enumerate(survey.sites, start=1):
        first_call_of_site.setdefault(site, call)
    assert len(first_call_of_site) >= 8, first_call_of_site  # lock, card, metrics, checkpoint, adapter, plot ...
    capsys.readouterr()

    for index, (site, call) in enumerate(sorted(first_call_of_site.items(), key=lambda item: item[1])):
        run = tmp_path / f"fault-{index}"
        monkeypatch.setattr(os, "fsync", _FailingDisk(call, ERRNOS[index % len(ERRNOS)]))
        code = main(_train_args(tiny_model_dir, run, *SHORT))
        err = capsys.readouterr().err
        monkeypatch.setattr(os, "fsync", survey._fsync)
        assert code == 1 and "Error:" in err and "Traceback" not in err, (site, err[-800:])
        assert "Could not write or read" in err, (site, err[-800:])
        leftovers = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
        assert not leftovers, (site, leftovers)
        # The run continues from what reached the disk: resumed if its card did, else started again.
        again = ["train", "--resume", str(run)] if (run / "run.json").exists() else _train_args(tiny_model_dir, run, *SHORT)
        code = main(again) if (run / "run.json").exists() else main([*again, "--overwrite"])
        err = capsys.readouterr().err
        assert code == 0, (site, err[-800:])
        card = json.loads((run / "run.json").read_text(encoding="utf-8"))
        assert card["status"] == "finished" and card["steps"] == 3, site
        assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    _FAULT_COUNTS["disk"] = len(first_call_of_site)


_FAULT_COUNTS: dict[str, int] = {}


def test_metrics_lines_reach_the_disk_with_each_checkpoint_not_each_step(tiny_model_dir: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """The loop does not wait on an fsync per step (metrics.MetricsLog); the lines up to a checkpoint are synced
    with it, before it is written."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name if Path("/proc/self/fd").is_dir() else "?")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, run, "--max-steps", "5", "--save-every", "2", "--eval-examples", "0")) == 0
    if "?" in synced:
        pytest.skip("no /proc/self/fd to name a synced file")
    assert synced.count("metrics.jsonl") == 3  # checkpoints at steps 2, 4 and 5
    first_checkpoint_file = next(i for i, name in enumerate(synced) if name.endswith(".safetensors"))
    assert synced.index("metrics.jsonl") < first_checkpoint_file
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------ torn and truncated files
@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 4 steps with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished") / "run"
    home = tmp_path_factory.mktemp("home")
    previous = os.environ.get("FALCON_DESKTOP_HOME")
    os.environ["FALCON_DESKTOP_HOME"] = str(home)
    try:
        assert main(_train_args(tiny_model_dir, run, "--max-steps", "4", "--save-every", "2", "--eval-examples", "0")) == 0
    finally:
        if previous is None:
            os.environ.pop("FALCON_DESKTOP_HOME", None)
        else:
            os.environ["FALCON_DESKTOP_HOME"] = previous
    return run


def _crashed_copy(finished_run: Path, tmp_path: Path) -> Path:
    """The finished run as a crash after step 4's metrics line left it: card still 'running', step 4's checkpoint
    damaged in the test, a lock of a dead process."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    card["status"] = "running"
    (run / "run.json").write_text(json.dumps(card), encoding="utf-8")
    (run / "train.lock").write_text('{"pid": 9999999, "host', encoding="utf-8")  # torn, of a dead writer
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "training_state.pt", "trainer_state.json", "gone"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(finished_run: Path, tmp_path: Path, capsys,
                                                                  damaged: str) -> None:
    run = _crashed_copy(finished_run, tmp_path)
    newest = run / "checkpoints" / "step-000004"
    if damaged == "gone":
        shutil.rmtree(newest)
    else:
        _truncate(newest / damaged)
    with (run / "metrics.jsonl").open("ab") as metrics:
        metrics.write(b'{"step": 5, "loss": 1.2')  # torn by the crash
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "at step 2 of 4" in err and ("damaged" in err or damaged == "gone")
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    _assert_same_weights(run, finished_run)


def test_no_readable_checkpoint_restarts_and_drops_the_dead_runs_metrics(finished_run: Path, tmp_path: Path,
                                                                          capsys) -> None:
    run = _crashed_copy(finished_run, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():
        _truncate(checkpoint / "adapter_model.safetensors")
    assert main(["train", "--resume", str(run)]) == 0
    assert "starting the run over from step 0" in capsys.readouterr().err
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]


def test_a_pickle_payload_in_a_copied_run_never_runs(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _crashed_copy(finished_run, tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"optimizer": Payload(), "scheduler": {}, "rng": {}}, run / "checkpoints" / "step-000004" / "training_state.pt")
    assert main(["train", "--resume", str(run)]) == 0
    assert not marker.exists()
    assert "step-000004 is damaged" in capsys.readouterr().err  # refused by weights_only, the older one used
    _assert_same_weights(run, finished_run)


def test_a_torn_or_mistyped_run_card_is_one_error_and_listed_as_unreadable(finished_run: Path, tmp_path: Path,
                                                                             capsys) -> None:
    run = tmp_path / "runs" / "torn"
    shutil.copytree(finished_run, run)
    _truncate(run / "run.json")
    assert main(["train", "--resume", str(run)]) == 1
    assert "run.json is unreadable" in capsys.readouterr().err
    assert main(["runs", "--dir", str(run.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["status"] == "unreadable run card"

    card = json.loads((finished_run / "run.json").read_text(encoding="utf-8"))
    for broken, expected in (({**card, "steps": "four"}, "'steps' should be int"), ({**card, "model": None}, "'model'"),
                             ({k: v for k, v in card.items() if k != "status"}, "lacks status")):
        (run / "run.json").write_text(json.dumps(broken), encoding="utf-8")
        assert main(["train", "--resume", str(run), "--max-steps", "6"]) == 1
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def test_a_live_lock_refuses_a_second_writer(finished_run: Path, tmp_path: Path, capsys) -> None:
    import socket

    run = _crashed_copy(finished_run, tmp_path)
    (run / "train.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}),
                                    encoding="utf-8")
    assert main(["train", "--resume", str(run)]) == 1
    assert f"being trained by process {os.getpid()}" in capsys.readouterr().err
    assert main(["runs", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["status"] == "running"
    (run / "train.lock").unlink()
    assert main(["runs", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["status"] == "stopped (crashed)"


def test_a_truncated_tokenized_cache_is_rebuilt(tiny_model_dir: Path, tmp_path: Path, isolated_home: Path) -> None:
    assert main(_train_args(tiny_model_dir, tmp_path / "a", "--max-steps", "1", "--eval-examples", "0")) == 0
    for entry in (isolated_home / "cache").rglob("*.npz"):
        _truncate(entry)
    assert main(_train_args(tiny_model_dir, tmp_path / "b", "--max-steps", "1", "--eval-examples", "0")) == 0


# --------------------------------------------------------------------------------------- what trains is what asked
def test_evaluating_before_training_does_not_change_the_gradients(tiny_model_dir: Path, tmp_path: Path) -> None:
    """bitsandbytes repacks NF4 weights for CPU inference (AVX512-BF16) during an eval forward; training after it
    lost the gradient through the 4-bit weights (grad norm 0.27 instead of 0.72 on this model)."""
    norms = []
    for examples in ("0", "2"):
        run = tmp_path / f"eval-{examples}"
        assert main(_train_args(tiny_model_dir, run, "--max-steps", "1", "--eval-examples", examples)) == 0
        norms.append(json.loads((run / "metrics.jsonl").read_text(encoding="utf-8"))["grad_norm"])
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)


def test_method_lora_trains_on_a_16_bit_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "lora"
    assert main(_train_args(tiny_model_dir, run, "--method", "lora", "--max-steps", "1", "--eval-examples", "0")) == 0
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["train"]["quantize"] is False and card["quantization"] is None and card["plan"]["method"] == "lora"


def test_extending_a_finished_run_keeps_its_schedule_and_says_so(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _losses(run)
    assert main(["train", "--resume", str(run), "--max-steps", "6"]) == 0
    assert "Extending the run from 4 to 6 steps" in capsys.readouterr().err
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert card["schedule"] == [[0, 4], [4, 2]] and card["steps"] == 6
    assert _losses(run)[:4] == before


def test_overwrite_replaces_only_the_runs_own_files(finished_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(_train_args(tiny_model_dir, run, "--max-steps", "1", "--eval-examples", "0", "--overwrite")) == 0
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["steps"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]


# ------------------------------------------------------------------------------------------------- the run card
def test_run_card_round_trips_and_names_what_is_wrong(capsys) -> None:
    from falcon_desktop.errors import UserError
    from falcon_desktop.prompts import TEMPLATE_VERSION
    from falcon_desktop.runs import RunCard

    card = RunCard(model="m", status="running", total_steps=5, schedule=[[0, 5]])
    assert RunCard.from_json(json.loads(json.dumps(card.to_json()))) == card
    assert card.template_version == TEMPLATE_VERSION
    assert RunCard.from_json({"model": "m", "status": "finished"}).template_version is None  # before the stamp
    assert RunCard.from_json({"model": "m", "status": "finished", "colour": "red"}).model == "m"
    assert "ignoring unknown key(s) colour" in capsys.readouterr().err
    for data, words in (({"status": "x"}, "lacks model"), ({"model": "m", "status": "x", "steps": True}, "'steps'"),
                        ({"model": "m", "status": "x", "metrics": []}, "'metrics' should be dict"), ([], "not a JSON")):
        with pytest.raises(UserError, match=words):
            RunCard.from_json(data)


def test_ask_tells_an_adapter_trained_on_another_template(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    card = json.loads((run / "run.json").read_text(encoding="utf-8"))
    (run / "run.json").write_text(json.dumps({**card, "template_version": 0}), encoding="utf-8")
    assert main(["ask", "--adapter", str(run), "--question", "Who?", "--device", "cpu"]) == 0
    assert "trained on prompt template v0" in capsys.readouterr().err
