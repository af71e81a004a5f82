"""The serving endpoint over tiny real models: generation, reload on a new champion, request
validation and limits, the bearer token and the loopback rule, the feedback rate per client,
feedback with its events and the retrain threshold, no retrain claimed without a Prefect server to
hand it to, and real uvicorn processes on loopback serving the registry's champion."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.access import BindError, check_bind, is_loopback
from deployments.champion import registry_source
from deployments.feedback import FeedbackStore
from deployments.handoff import prefect_check
from deployments.limits import RateLimit
from deployments.service import create_app, prefect_emitter, run
from llmflow import events
from llmflow.config import ServeConfig
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir
from tests.livestack import wait_model_loaded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny champions (different weights) sharing one tokenizer."""
    base = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer_dir(base / "tok")
    return {
        "1": str(tiny_model_dir(base / "v1", tok, seed=0)),
        "2": str(tiny_model_dir(base / "v2", tok, seed=1)),
    }


class Retrains:
    """A retrain hand-off check the test can switch, counting how often the service asks it."""

    def __init__(self, enabled: bool = True, reason: str = "the test captures the events"):
        self.enabled, self.reason, self.calls = enabled, reason, 0

    def __call__(self):
        self.calls += 1
        return self.enabled, self.reason


class Source:
    """A model source the test can switch, counting how often the service asks it."""

    def __init__(self, current):
        self.current, self.calls = current, 0

    def __call__(self):
        self.calls += 1
        if isinstance(self.current, Exception):
            raise self.current
        return self.current


@pytest.fixture
def make(models, tmp_path):
    """Build (client, source, events) for a service; the client runs the app's lifespan. Retrains
    can be handed off unless `retrains` says otherwise."""
    opened = []

    def build(version: str | None = "1", retrains: Retrains | None = None, **settings):
        settings = {"reload_interval_seconds": 0, "cooldown_seconds": 0, **settings}
        source = Source((version, models[version]) if version else None)
        emitted: list[dict] = []
        app = create_app(
            ServeConfig(**settings),
            name="tiny",
            home=str(tmp_path / "home"),
            model_source=source,
            feedback=FeedbackStore(str(tmp_path / "fb.db")),
            emit=lambda event, resource, payload: emitted.append(
                {"event": event, "resource": resource, "payload": payload}
            ),
            retrain_check=retrains or Retrains(),
            device="cpu",
        )
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client, source, emitted

    yield build
    for c in opened:
        c.__exit__(None, None, None)


def _names(emitted):
    return [e["event"] for e in emitted]


def test_generate_model_and_health(make, models):
    client, source, _ = make("1", reload_interval_seconds=3600)
    r = client.post("/generate", json={"prompt": "def add(a, b): return a + b", "max_new_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1" and isinstance(body["text"], str) and len(body["id"]) == 32
    again = client.post("/generate", json={"prompt": "def add(a, b): return a + b", "max_new_tokens": 6})
    assert again.json()["text"] == body["text"]  # greedy is deterministic
    assert again.json()["id"] != body["id"]
    info = client.get("/model").json()
    assert info["version"] == "1" and info["model_path"] == models["1"] and info["parameters"] > 1000
    assert info["name"] == "tiny" and info["device"] == "cpu"
    assert client.get("/health").json() == {
        "status": "ok",
        "model_loaded": True,
        "model_version": "1",
        "retrain": {"enabled": True, "reason": "the test captures the events"},
    }
    assert source.calls == 1  # polled cheaply: not once per request within the interval
    # MBR decoding on request (the decoding evaluate.mbr_samples measures): seeded, repeatable
    mbr = {"prompt": "def add(a, b): return a + b", "max_new_tokens": 6, "mbr_samples": 3, "seed": 5}
    one, two = client.post("/generate", json=mbr), client.post("/generate", json=mbr)
    assert one.status_code == 200 and one.json()["text"] == two.json()["text"]
    assert client.post("/generate", json={**mbr, "mbr_samples": 65}).status_code == 422
    # the copy bias on request (evaluate.copy_bias; what it does is tested in test_copy_bias)
    plain = {"prompt": "def add(a, b): return a + b", "max_new_tokens": 6}
    r = client.post("/generate", json={**plain, "copy_bias": 20})
    assert r.status_code == 200, r.text
    assert r.json()["text"] != body["text"]
    assert client.post("/generate", json={**plain, "copy_bias": -1}).status_code == 422
    sampled = client.post("/generate", json={"prompt": "x", "temperature": 0.9, "top_p": 0.9, "seed": 3})
    assert sampled.status_code == 200


def test_reloads_when_the_champion_changes(make, models):
    client, source, _ = make("1")
    assert client.post("/generate", json={"prompt": "hi"}).json()["model_version"] == "1"
    source.current = ("2", models["2"])
    r = client.post("/generate", json={"prompt": "hi"})
    assert r.json()["model_version"] == "2"
    assert client.get("/model").json()["model_path"] == models["2"]
    source.current = RuntimeError("registry down")  # a failing registry keeps the model serving
    assert client.post("/generate", json={"prompt": "hi"}).json()["model_version"] == "2"
    assert "registry down" in client.get("/model").json()["last_error"]
    source.current = ("3", "/nonexistent/model")  # a champion that cannot load: keep the old one
    assert client.post("/generate", json={"prompt": "hi"}).json()["model_version"] == "2"
    assert "could not load champion version 3" in client.get("/model").json()["last_error"]
    source.current = None  # no champion any more
    r = client.post("/generate", json={"prompt": "hi"})
    assert r.status_code == 503


def test_no_champion_is_503_with_a_reason(make):
    client, _, _ = make(None)
    for r in (client.post("/generate", json={"prompt": "hi"}), client.get("/model")):
        assert r.status_code == 503
        assert "no champion" in r.json()["detail"]
    assert client.get("/health").json()["model_loaded"] is False


def test_validation_and_size_limits(make):
    client, _, _ = make("1", max_prompt_chars=50, max_new_tokens=8, max_body_bytes=2048)
    cases = [
        ({"prompt": ""}, 422, "at least 1 character"),
        ({"prompt": "x", "temperature": -1}, 422, "greater than or equal to 0"),
        ({"prompt": "x", "top_p": 1.5}, 422, "less than or equal to 1"),
        ({"prompt": "x", "stream": True}, 422, "Extra inputs are not permitted"),
        ({"max_new_tokens": 3}, 422, "Field required"),
        ({"prompt": "x" * 51}, 413, "prompt has 51 characters; the limit is 50"),
        ({"prompt": "x", "max_new_tokens": 9}, 422, "max_new_tokens 9 is over the limit of 8"),
        ({"prompt": "x" * 3000}, 413, "request body over the limit of 2048 bytes"),
        ({"prompt": "x", "temperature": float("nan")}, 422, "finite number"),
        ({"prompt": "x", "temperature": float("inf")}, 422, "finite number"),
        ({"prompt": "x", "seed": 2**70}, 422, "less than or equal to 4294967295"),
        ({"prompt": "caf\ud800"}, 422, "unable to parse raw data as a unicode string"),  # lone surrogate
    ]
    for body, code, reason in cases:
        # json.dumps writes NaN and Infinity as JavaScript does; Python's parser takes them
        r = client.post("/generate", content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == code, (body, r.text)
        assert reason in json.dumps(r.json()["detail"]), (body, r.text)
    r = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json_invalid" in r.text

    def chunks():  # no Content-Length: the limit counts the streamed body
        for _ in range(10):
            yield b" " * 512

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    streamed = iter([b'{"prompt": ', b'"hi", "max_new_tokens": 2}'])  # a small chunked body passes
    r = client.post("/generate", content=streamed, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_bearer_token(make, monkeypatch):
    client, _, _ = make("1", token="s3cret")
    assert client.get("/health").status_code == 200  # liveness stays open for healthchecks
    r = client.post("/generate", json={"prompt": "hi"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    bad = client.get("/model", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "bearer token" in bad.json()["detail"]
    ok = client.post("/generate", json={"prompt": "hi"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    monkeypatch.setenv("LLMFLOW_SERVE_TOKEN", "from-env")  # the environment wins over the config
    env_client, _, _ = make("1", token="s3cret")
    assert env_client.get("/model", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert env_client.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 401


def test_feedback_threshold_emits_once_and_exports(make, models):
    client, source, emitted = make("1", threshold_count=3, threshold_negative_rate=None)
    gen = client.post("/generate", json={"prompt": "def f(): pass", "max_new_tokens": 4}).json()
    r = client.post("/feedback", json={"generation_id": gen["id"], "rating": -1})
    assert r.status_code == 201 and r.json()["retrain"] is None
    assert _names(emitted) == [events.FEEDBACK_RECEIVED]
    received = emitted[0]
    assert received["resource"]["prefect.resource.id"] == "llmflow.model.tiny"
    assert received["resource"]["llmflow.model.version"] == "1"
    assert received["payload"]["rating"] == -1 and received["payload"]["model_version"] == "1"

    client.post(
        "/feedback", json={"generation_id": gen["id"], "rating": 2, "scale": "stars", "correction": "fixed"}
    )
    r = client.post(
        "/feedback",
        json={"prompt": "q", "response": "bad", "model_version": "1", "rating": 1, "preferred": "good"},
    )
    assert r.status_code == 201
    retrain = r.json()["retrain"]
    assert retrain is not None and retrain["reason"] == "count: 3 new feedback >= 3"
    reached = [e for e in emitted if e["event"] == events.FEEDBACK_THRESHOLD_REACHED]
    assert len(reached) == 1
    payload = reached[0]["payload"]
    assert (
        payload["feedback_new"] == 3
        and payload["feedback_negative"] == 2
        and payload["retrain_id"] == retrain["id"]
    )
    assert (
        payload["sft_examples"] == 1 and payload["preference_pairs"] == 2 and payload["model_name"] == "tiny"
    )
    assert reached[0]["resource"]["prefect.resource.id"] == events.resource_id("model", "tiny")
    sft = [json.loads(x) for x in Path(payload["sft_path"]).read_text().splitlines()]
    assert sft[0]["prompt"] == "def f(): pass" and sft[0]["response"] == "fixed"
    prefs = [json.loads(x) for x in Path(payload["preferences_path"]).read_text().splitlines()]
    assert {(p["chosen"], p["rejected"]) for p in prefs} == {("fixed", gen["text"]), ("good", "bad")}

    for _ in range(4):  # a retrain is pending: no second event however much feedback comes
        assert (
            client.post("/feedback", json={"generation_id": gen["id"], "rating": 1}).json()["retrain"] is None
        )
    assert _names(emitted).count(events.FEEDBACK_THRESHOLD_REACHED) == 1
    stats = client.get("/feedback/stats").json()
    assert stats["pending_retrain"]["id"] == retrain["id"] and stats["new"] == 4 and stats["total"] == 7

    source.current = ("2", models["2"])  # the retrain promoted a new champion
    assert client.get("/model").json()["version"] == "2"
    assert client.get("/feedback/stats").json()["pending_retrain"] is None
    r = client.post("/feedback", json={"generation_id": gen["id"], "rating": 1})
    assert r.json()["retrain"] is not None  # the 4 waiting + this one pass the count again
    assert _names(emitted).count(events.FEEDBACK_THRESHOLD_REACHED) == 2


def test_feedback_rejections(make):
    client, _, emitted = make("1", max_feedback_chars=20)
    gen = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).json()
    cases = [
        ({"generation_id": "0" * 32, "rating": 1}, 404, "unknown generation id"),
        ({"generation_id": gen["id"], "model_version": "7", "rating": 1}, 409, "came from model version 1"),
        (
            {"prompt": "p", "response": "r", "model_version": "7", "rating": 1},
            422,
            "unknown model version '7'",
        ),
        ({"prompt": "p", "response": "r", "rating": 1}, 422, "give generation_id, or prompt"),
        ({"generation_id": gen["id"]}, 422, "give a rating, a correction or a preferred"),
        ({"generation_id": gen["id"], "rating": 3}, 422, "thumbs rating is between -1 and 1"),
        ({"generation_id": gen["id"], "rating": 0, "scale": "stars"}, 422, "stars rating is between 1 and 5"),
        ({"generation_id": gen["id"], "correction": "x" * 21}, 413, "correction has 21 characters"),
        ({"generation_id": gen["id"], "rating": 1, "comment": "hi"}, 422, "Extra inputs"),
    ]
    for body, code, reason in cases:
        r = client.post("/feedback", json=body)
        assert r.status_code == code, (body, r.text)
        assert reason in json.dumps(r.json()["detail"]), (body, r.text)
    assert emitted == [] and client.app.state.feedback.count() == 0  # nothing stored or announced
    r = client.post(
        "/feedback",
        json={"prompt": "p", "response": "r", "model_version": "1", "rating": 5, "scale": "stars"},
    )
    assert r.status_code == 201  # the served version is known


def test_feedback_over_its_rate_is_429_with_retry_after(make):
    client, _, _ = make("1", feedback_per_minute=1, feedback_burst=2)
    gen = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).json()
    body = {"generation_id": gen["id"], "rating": 1}
    assert [client.post("/feedback", json=body).status_code for _ in range(2)] == [201, 201]
    r = client.post("/feedback", json=body)
    assert r.status_code == 429, r.text
    retry = r.headers["retry-after"]
    assert 50 <= int(retry) <= 60  # one a minute: the next one in about a minute
    assert f"the limit is 1 per minute after a burst of 2; retry in {retry} s" in r.json()["detail"]
    assert client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
    assert client.app.state.feedback.count() == 2  # the refused one is not stored
    open_client, _, _ = make("1", feedback_per_minute=None, feedback_burst=1)
    gen = open_client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).json()
    for _ in range(3):  # None: no limit
        assert (
            open_client.post("/feedback", json={"generation_id": gen["id"], "rating": 1}).status_code == 201
        )


def test_rate_limit_is_a_token_bucket_per_client():
    now = [0.0]
    limit = RateLimit(per_minute=6, burst=2, max_clients=2, clock=lambda: now[0])
    assert [limit.take("a"), limit.take("a")] == [0.0, 0.0]  # the burst
    assert limit.take("a") == pytest.approx(10.0)  # 6 a minute: the next in 10 s
    assert limit.take("b") == 0.0  # another client has its own bucket
    now[0] = 5.0
    assert limit.take("a") == pytest.approx(5.0)  # a refused request spends nothing
    now[0] = 10.0
    assert limit.take("a") == 0.0 and limit.take("a") == pytest.approx(10.0)
    limit.take("c")  # a third client: the least recently seen (b) is forgotten
    assert set(limit._buckets) == {"a", "c"}


def test_only_loopback_is_served_without_a_token(monkeypatch):
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org", "127.example.org", ""):
        assert not is_loopback(host), host
        with pytest.raises(BindError, match=f"refusing to serve on {host} without a token"):
            check_bind(host, None)
        check_bind(host, "s3cret")
    monkeypatch.delenv("LLMFLOW_SERVE_TOKEN", raising=False)
    with pytest.raises(BindError, match="set LLMFLOW_SERVE_TOKEN"):  # before anything is loaded or bound
        run(ServeConfig(host="0.0.0.0"), port=_free_port(), name="tiny")
    with pytest.raises(BindError):  # a blank token is no token
        run(ServeConfig(token="  "), host="10.0.0.5", port=_free_port(), name="tiny")
    monkeypatch.setenv("LLMFLOW_SERVE_TOKEN", "")
    with pytest.raises(BindError):
        run(ServeConfig(), host="0.0.0.0", port=_free_port(), name="tiny")


def test_llmflow_serve_refuses_other_hosts_without_a_token(tmp_path):
    env = {**os.environ, "LLMFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("LLMFLOW_SERVE_TOKEN", None)
    out = subprocess.run(
        [*_llmflow(), "serve", "--host", "0.0.0.0", "--port", str(_free_port()), "--config", "smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve on 0.0.0.0 without a token" in lines[0], out.stderr


def test_without_a_retrain_handoff_feedback_is_kept_unclaimed(make):
    retrains = Retrains(False, "no enabled automation runs a deployment on the feedback event")
    client, _, emitted = make(
        "1", retrains=retrains, threshold_count=2, threshold_negative_rate=None, retrain_check_seconds=3600
    )
    assert client.get("/health").json()["retrain"] == {"enabled": False, "reason": retrains.reason}
    gen = client.post("/generate", json={"prompt": "def f(): pass", "max_new_tokens": 4}).json()
    for _ in range(3):
        r = client.post("/feedback", json={"generation_id": gen["id"], "rating": -1, "correction": "x = 1"})
        assert r.status_code == 201 and r.json()["retrain"] is None
    assert _names(emitted) == [events.FEEDBACK_RECEIVED] * 3  # nothing announced that no one would run
    fb = client.app.state.feedback
    stats = client.get("/feedback/stats").json()
    assert stats["new"] == 3 and stats["pending_retrain"] is None and stats["retrain"]["enabled"] is False
    assert fb.retrains_list("tiny") == []  # nothing claimed: no retrain waits for a timeout


def test_feedback_kept_while_retrains_were_off_is_claimed_once_they_are_on(make):
    retrains = Retrains(False, "PREFECT_API_URL is not set")
    client, _, emitted = make(
        "1", retrains=retrains, threshold_count=2, threshold_negative_rate=None, retrain_check_seconds=0.2
    )
    gen = client.post("/generate", json={"prompt": "def f(): pass", "max_new_tokens": 4}).json()
    for _ in range(2):
        assert (
            client.post("/feedback", json={"generation_id": gen["id"], "rating": -1}).json()["retrain"]
            is None
        )
    fb = client.app.state.feedback
    retrains.enabled, retrains.reason = True, "automation 'retrain tiny on feedback' runs finetune"
    deadline = time.monotonic() + 30  # the periodic check sees the server and claims what was kept
    while not fb.retrains_list("tiny"):
        assert time.monotonic() < deadline, "the kept feedback was not claimed"
        time.sleep(0.1)
    [retrain] = fb.retrains_list("tiny")
    assert retrain["status"] == "pending" and retrain["stats"]["new"] == 2
    [reached] = [e for e in emitted if e["event"] == events.FEEDBACK_THRESHOLD_REACHED]
    assert reached["payload"]["retrain_id"] == retrain["id"] and reached["payload"]["feedback_new"] == 2
    assert client.get("/health").json()["retrain"]["enabled"] is True


def test_a_handoff_gone_at_claim_time_releases_the_claim(make):
    retrains = Retrains(True)
    client, _, emitted = make("1", retrains=retrains, threshold_count=1, retrain_check_seconds=3600)
    gen = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).json()
    retrains.enabled, retrains.reason = False, "the Prefect server does not answer"  # not yet seen
    r = client.post("/feedback", json={"generation_id": gen["id"], "rating": -1})
    assert r.status_code == 201 and r.json()["retrain"] is None
    assert events.FEEDBACK_THRESHOLD_REACHED not in _names(emitted)
    assert client.app.state.feedback.retrains_list("tiny") == []  # released: the feedback is new again
    assert client.get("/feedback/stats").json()["new"] == 1
    assert client.get("/health").json()["retrain"] == {"enabled": False, "reason": retrains.reason}


def test_the_prefect_check_needs_a_server_and_never_starts_one(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        enabled, reason = prefect_check("tiny")()
        assert not enabled and reason.startswith("PREFECT_API_URL is not set")
        assert prefect_emitter(events.FEEDBACK_RECEIVED, {"prefect.resource.id": "x"}, {}) is None
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):
        t0 = time.monotonic()
        enabled, reason = prefect_check("tiny", timeout=2)()
        assert not enabled and "does not answer: ConnectError" in reason, reason
        assert time.monotonic() - t0 < 10


def test_emit_failure_does_not_lose_feedback_or_the_retrain(make, tmp_path):
    client, _, _ = make("1", threshold_count=1)
    app = client.app
    calls = []

    def broken(event, resource, payload):
        calls.append(event)
        raise ConnectionError("no Prefect server")

    # rebuild with a broken emitter on the same store
    failing = create_app(
        ServeConfig(threshold_count=1, cooldown_seconds=0, reload_interval_seconds=0),
        name="tiny",
        home=str(tmp_path / "home"),
        model_source=app.state.champion.source,
        feedback=app.state.feedback,
        emit=broken,
        retrain_check=Retrains(),
    )
    with TestClient(failing) as c:
        gen = c.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).json()
        r = c.post("/feedback", json={"generation_id": gen["id"], "rating": -1})
        assert r.status_code == 201 and r.json()["retrain"] is None
        assert calls == [events.FEEDBACK_RECEIVED, events.FEEDBACK_THRESHOLD_REACHED]
        stats = c.get("/feedback/stats").json()
        assert stats["total"] == 1 and stats["new"] == 1 and stats["pending_retrain"] is None
    # once events flow again, the released feedback triggers the retrain
    r = client.post("/feedback", json={"generation_id": gen["id"], "rating": -1})
    assert r.json()["retrain"] is not None


def test_registry_source(tmp_path, models):
    store = ArtifactStore(tmp_path / "home")
    source = registry_source("tiny", store)
    assert source() is None
    reg = Registry(store, "tiny")
    v = reg.register("ft-key-1", models["1"])
    reg.promote(v)
    assert source() == (str(v), models["1"])
    reg.mark_erased(v, ["request-1"])  # `llmflow forget`: an erased champion is not served
    assert source() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _llmflow() -> list[str]:
    """The `llmflow` command of this environment (the module when the script is not installed)."""
    exe = Path(sys.executable).parent / "llmflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "deployments.cli"]


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            health = httpx.get(f"{url}/health", timeout=2).json()
            if health["model_loaded"]:
                return health
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not come up within {timeout:.0f} s"
        time.sleep(0.3)


def test_real_server_serves_the_registry_champion(tmp_path, models):
    """`run()` under uvicorn on loopback, with the champion read from a real registry."""
    home = tmp_path / "home"
    reg = Registry(ArtifactStore(home), "tiny")
    reg.promote(reg.register("ft-key-1", models["1"]))
    port = _free_port()
    code = (
        "from deployments.service import run; from llmflow.config import ServeConfig; "
        f"run(ServeConfig(token='t', reload_interval_seconds=1), port={port}, home={str(home)!r}, "
        "name='tiny', log_level='warning')"
    )
    env = {**os.environ, "LLMFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_model_loaded(url, proc, proc.stderr.read)
        auth = {"Authorization": "Bearer t"}
        r = httpx.post(
            f"{url}/generate", json={"prompt": "hi", "max_new_tokens": 3}, headers=auth, timeout=30
        )
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=10).status_code == 401
        assert (home / "feedback" / "feedback.db").exists()  # the default store: SQLite under LLMFLOW_HOME
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_llmflow_serve_without_a_prefect_server_keeps_feedback_and_limits_each_client(tmp_path, models):
    """`llmflow serve` with no PREFECT_API_URL: /health says retrains are off, feedback past the
    threshold claims nothing and starts no temporary Prefect server; a client over its feedback
    rate gets 429 while another client (by its forwarded address) is still served."""
    home, prefect_home = tmp_path / "home", tmp_path / "prefect"
    reg = Registry(ArtifactStore(home), "tiny")
    reg.promote(reg.register("ft-key-1", models["1"]))
    port = _free_port()
    sets = ["name=tiny", "serve.threshold_count=2", "serve.threshold_negative_rate=null"]
    sets += ["serve.feedback_per_minute=12", "serve.feedback_burst=3", "serve.cooldown_seconds=0"]
    cmd = [*_llmflow(), "serve", "--port", str(port), "--config", "smoke", "--home", str(home)]
    cmd += [arg for s in sets for arg in ("--set", s)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        "LLMFLOW_HOME": str(home),
        "PREFECT_HOME": str(prefect_home),
        "LLMFLOW_SERVE_TOKEN": "t",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}
    try:
        health = _wait_healthy(url, proc, "llmflow serve")
        assert health["retrain"]["enabled"] is False
        assert health["retrain"]["reason"].startswith("PREFECT_API_URL is not set"), health
        gen = httpx.post(
            f"{url}/generate", json={"prompt": "hi", "max_new_tokens": 3}, headers=auth, timeout=30
        )
        body = {"generation_id": gen.json()["id"], "rating": -1, "correction": "Say hello."}
        codes = [httpx.post(f"{url}/feedback", json=body, headers=auth, timeout=10) for _ in range(4)]
        assert [r.status_code for r in codes] == [201, 201, 201, 429], [r.text for r in codes]
        assert all(r.json()["retrain"] is None for r in codes[:3])  # past the threshold, nothing claimed
        retry = codes[3].headers["retry-after"]  # 12 a minute: one every 5 s
        assert 1 <= int(retry) <= 5 and f"retry in {retry} s" in codes[3].json()["detail"]
        other = {**auth, "X-Forwarded-For": "10.1.2.3"}  # another client behind a local proxy
        assert httpx.post(f"{url}/feedback", json=body, headers=other, timeout=10).status_code == 201
        time.sleep(int(retry) + 0.05)
        assert httpx.post(f"{url}/feedback", json=body, headers=auth, timeout=10).status_code == 201
        stats = httpx.get(f"{url}/feedback/stats", headers=auth, timeout=10).json()
        assert stats["new"] == 5 and stats["total"] == 5 and stats["pending_retrain"] is None
        store = FeedbackStore(home=str(home))
        assert store.retrains_list("tiny") == [] and store.count() == 5
        store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    assert "retrains off: PREFECT_API_URL is not set" in text, text
    assert "temporary server" not in text.lower(), text
    assert not list(prefect_home.rglob("*.db")), "a temporary Prefect server was started"
