"""`falcon-desktop ui` through its HTTP API: the guard, the planner, the doctor, data checks, and a real tiny run
trained, streamed, stopped, resumed and asked - each in the same processes and library calls a user's clicks reach."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the UI extra is not installed (pip install 'falcon-desktop[ui]')")
from starlette.testclient import TestClient  # noqa: E402

from falcon_desktop.ui.server import UiSettings, create_app  # noqa: E402

TOKEN = "test-token"
LOCAL = "http://127.0.0.1:8765"


def make_client(tmp_path: Path, roots: tuple[Path, ...] = (), **headers: str) -> TestClient:
    app = create_app(UiSettings(roots=roots or (tmp_path,), token=TOKEN), tmp_path)
    return TestClient(app, base_url=LOCAL, headers=headers)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return make_client(tmp_path, **{"X-Falcon-Token": TOKEN})


def events(response) -> list[tuple[str, object]]:
    found, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            found.append((name, json.loads(line[len("data: "):])))
    return found


def wait_for_job(client: TestClient, job: dict) -> dict:
    deadline = time.monotonic() + 120
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def test_every_request_needs_the_session_token(tmp_path: Path) -> None:
    anonymous = make_client(tmp_path)
    assert anonymous.get("/").status_code == 403
    assert anonymous.get("/api/runs").status_code == 403
    assert anonymous.get("/api/runs", headers={"X-Falcon-Token": "wrong"}).status_code == 403
    assert anonymous.get("/?token=wrong").status_code == 403

    opened = anonymous.get(f"/?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"  # the token leaves the address bar
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    anonymous.cookies = opened.cookies
    page = anonymous.get("/")
    assert page.status_code == 200 and "falcon-desktop" in page.text
    assert anonymous.get("/static/js/app.js").headers["content-type"].startswith("text/javascript")


def test_ui_verb_explains_bad_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from falcon_desktop.cli import main

    assert main(["ui", "--no-browser", "--port", "70000"]) == 1
    assert main(["ui", "--no-browser", "--root", str(tmp_path / "missing")]) == 1
    errors = capsys.readouterr().err
    assert "--port must be between 0 and 65535" in errors and "is not a folder" in errors and "Hint:" in errors


def test_foreign_hosts_and_origins_are_refused(client: TestClient) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refused even with a valid token.
    assert client.get("/api/runs", headers={"Host": "evil.example:8765"}).status_code == 400
    assert client.get("/api/runs", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.post("/api/plan", json={}, headers={"Origin": "http://evil.example"}).status_code == 400
    assert client.post("/api/plan", json={"gpu": "L4"}, headers={"Origin": LOCAL}).status_code == 200


def test_plan_endpoint_is_the_planner(client: TestClient) -> None:
    plan = client.post("/api/plan", json={"model": "falcon-7b", "gpu": "RTX 4090", "seq_len": 512}).json()
    assert plan["fits"] and plan["gpu"]["name"] == "RTX 4090" and plan["max_seq_len"] == 512
    assert sum(plan["breakdown"].values()) <= plan["peak_vram_bytes"] * 1.01
    assert set(plan["valid_lora_targets"]) >= set(plan["lora_targets"]) and plan["costs"]["cloud"]

    fewer = client.post("/api/plan", json={"gpu": "RTX 4090", "lora_targets": ["query_key_value"]}).json()
    assert fewer["lora_targets"] == ["query_key_value"] and fewer["trainable_params"] < plan["trainable_params"]
    small = client.post("/api/plan", json={"vram": 4}).json()
    assert not small["fits"] and small["alternatives"]

    for bad, words in (({"seq_len": 3}, "sequence length"), ({"method": "nope"}, "invalid choice"),
                       ({"no_such_setting": 1}, "no setting")):
        answer = client.post("/api/plan", json=bad)
        assert answer.status_code == 400 and words in answer.json()["error"] and answer.json()["hint"]


def test_doctor_endpoint_reports_checks_with_fixes(client: TestClient) -> None:
    report = client.get("/api/doctor").json()
    assert report["verdict"].startswith("QLoRA fine-tune of 7B models")
    names = {check["name"] for check in report["checks"]}
    assert {"Python", "CUDA available"} <= names
    assert all(check["hint"] for check in report["checks"] if check["status"] == "FAIL")


def test_file_picker_lists_only_under_its_roots(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "squad").mkdir(parents=True)
    (root / "train.json").write_text("{}", encoding="utf-8")
    client = make_client(tmp_path, (root,), **{"X-Falcon-Token": TOKEN})
    assert [entry["path"] for entry in client.get("/api/files").json()["entries"]] == [str(root.resolve())]
    listed = client.get("/api/files", params={"path": str(root)}).json()
    assert [(entry["name"], entry["dir"]) for entry in listed["entries"]] == [("squad", True), ("train.json", False)]
    for outside in (str(tmp_path), str(root / ".." / ".."), "/", str(Path.home())):
        assert client.get("/api/files", params={"path": outside}).status_code == 404


def test_data_inspect_runs_as_a_cancellable_job(client: TestClient, tmp_path: Path) -> None:
    job = wait_for_job(client, client.post("/api/data/inspect", json={"source": "demo"}).json())
    assert job["state"] == "done" and job["result"]["records"] == 60 and job["result"]["problems"] == []

    missing = wait_for_job(client, client.post("/api/data/inspect", json={"source": str(tmp_path / "nope.json")}).json())
    assert missing["state"] == "failed" and "nope.json" in missing["error"] and missing["hint"]

    started = client.post("/api/data/inspect", json={"source": "demo"}).json()
    assert client.post(f"/api/jobs/{started['id']}/cancel").json()["state"] == "cancelled"


def test_train_stream_stop_resume_then_ask(client: TestClient, tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = {"model": str(tiny_model_dir), "data": "demo", "max_steps": 40, "batch_size": 8, "eval_examples": 0,
                "learning_rate": 3e-3, "save_every": 100}
    run = client.post("/api/train/start", json=settings).json()["run"]
    # A restarted UI (a new app, knowing nothing) finds the run still training and can reattach.
    assert make_client(tmp_path, **{"X-Falcon-Token": TOKEN}).get("/api/train/active").json()["runs"] == [run]

    seen: list[int] = []
    stopped = False
    with client.stream("GET", "/api/train/events", params={"run": run}) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: ") and name == "metrics":
                seen += [record["step"] for record in json.loads(line[len("data: "):])]
                if len(seen) >= 2 and not stopped:  # once: a second Ctrl-C would stop without saving
                    assert client.post("/api/train/stop", json={"run": run}).status_code == 200
                    stopped = True
            elif line.startswith("data: ") and name == "end":
                end = json.loads(line[len("data: "):])
    assert end["status"] == "interrupted" and not end["alive"] and 2 <= end["steps"] < 40
    assert seen == list(range(1, end["steps"] + 1))
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert listed[run]["has_adapter"] and listed[run]["status"] == "interrupted"
    assert client.post("/api/train/stop", json={"run": run}).status_code == 400  # nothing to stop any more
    assert "SQuAD data" in client.post("/api/runs/eval", json={"run": run}).json()["error"]
    assert "folder" in client.post("/api/runs/merge", json={"run": run, "output": ""}).json()["error"]

    assert client.post("/api/train/resume", json={"run": run, "max_steps": end["steps"] + 2}).status_code == 200
    with client.stream("GET", "/api/train/events", params={"run": run}) as stream:
        resumed = events(stream)
    assert resumed[-1][0] == "end" and resumed[-1][1]["status"] == "finished"
    detail = client.get("/api/runs/detail", params={"run": run}).json()
    assert [point["step"] for point in detail["curve"]] == list(range(1, end["steps"] + 3))

    loaded = client.post("/api/ask/load", json={"adapter": run}).json()
    assert loaded["loaded"] and loaded["adapter"] == run
    with client.stream("POST", "/api/ask/answer", json={"question": "Where does the falcon live?",
                                                           "context": "The falcon lives on cliffs."}) as stream:
        answer = events(stream)
    name, done = answer[-1]
    assert name == "done" and done["stop_reason"] in ("eos", "stop_string", "max_new_tokens")
    assert done["first_token_seconds"] > 0 and "".join(d for n, d in answer if n == "text").strip().startswith(done["text"])
    assert client.post("/api/ask/adapter", json={"adapter": ""}).json()["adapter"] == "none (base model)"
    assert client.post("/api/ask/answer", json={"question": " "}).status_code == 400
    assert client.post("/api/ask/load", json={"adapter": "../../etc"}).status_code == 404
