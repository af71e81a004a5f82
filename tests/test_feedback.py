"""The feedback store: durability under concurrent writers (SQLite WAL and PostgreSQL), the
retrain threshold with its cooldown and single pending retrain, and the exported examples."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployments.feedback import FeedbackStore, ThresholdPolicy, normalize_rating, resolve_url
from llmflow.config import ServeConfig
from llmflow.store import ArtifactStore
from tests.prereq import skip_missing

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_reason() -> str | None:
    try:
        engine = sa.create_engine(resolve_url(PG_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as e:  # no server, no driver, no database
        return f"PostgreSQL at {PG_URL} is not reachable: {str(e).splitlines()[0]}"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """(url, prefix) of an empty store; PostgreSQL tables get a unique prefix and are dropped."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if request.param == "sqlite":
        yield str(tmp_path / "fb.db"), prefix
        return
    reason = _pg_reason()
    if reason:
        skip_missing("PostgreSQL", f"start it on 127.0.0.1:5432 with trust auth ({reason})")
    yield PG_URL, prefix
    FeedbackStore(PG_URL, prefix=prefix).drop()


def _add(store: FeedbackStore, i: int, **kw) -> int:
    args = {"model_version": "1", "prompt": f"p{i}", "response": f"r{i}", "rating": 1} | kw
    return store.add_feedback(**args)


def test_rating_scales():
    assert normalize_rating(-1) == -1.0 and normalize_rating(0) == 0.0 and normalize_rating(1) == 1.0
    assert [normalize_rating(r, "stars") for r in range(1, 6)] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    for bad, scale in [(2, "thumbs"), (-2, "thumbs"), (0, "stars"), (6, "stars")]:
        with pytest.raises(ValueError, match="between"):
            normalize_rating(bad, scale)
    with pytest.raises(ValueError, match="unknown rating scale"):
        normalize_rating(1, "emoji")


def test_resolve_url(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMFLOW_FEEDBACK_URL", raising=False)
    url = resolve_url(None, home=str(tmp_path))
    assert url == f"sqlite:///{tmp_path.resolve()}/feedback/feedback.db"
    assert resolve_url("postgresql://u:pw@db:5432/x") == "postgresql+psycopg://u:pw@db:5432/x"
    assert resolve_url("postgres://db/x") == "postgresql+psycopg://db/x"
    assert resolve_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path.resolve()}/a.db"
    monkeypatch.setenv("LLMFLOW_FEEDBACK_URL", "postgresql://env-host/db")
    assert resolve_url(None, home=str(tmp_path)) == "postgresql+psycopg://env-host/db"
    monkeypatch.delenv("LLMFLOW_FEEDBACK_URL")
    with pytest.raises(ValueError, match="not a local folder"):
        resolve_url(None, home="s3://bucket/llmflow")


def test_sqlite_uses_wal_and_hides_nothing_but_passwords(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.display_url.startswith("sqlite:///")
    url = sa.make_url(resolve_url("postgresql://user:secret@db/x")).render_as_string(hide_password=True)
    assert "secret" not in url


def test_rejects_empty_feedback_and_bad_prefix(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    with pytest.raises(ValueError, match="rating, a correction or a preferred"):
        store.add_feedback(model_version="1", prompt="p", response="r")
    with pytest.raises(ValueError, match="table prefix"):
        FeedbackStore(str(tmp_path / "fb.db"), prefix="x; drop table")


def test_concurrent_threads_lose_nothing(backend):
    url, prefix = backend
    store = FeedbackStore(url, prefix=prefix)
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        try:
            for i in range(50):
                fid = _add(store, w * 1000 + i, rating=-1 if i % 2 else 1)
                with lock:
                    ids.append(fid)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(ids) == len(set(ids)) == 400
    assert store.count() == 400
    stats = store.stats()
    assert stats["new"] == 400 and stats["rated"] == 400 and stats["negative"] == 200
    with store.engine.connect() as c:
        prompts = {r[0] for r in c.execute(sa.select(store.feedback.c.prompt))}
    assert prompts == {f"p{w * 1000 + i}" for w in range(8) for i in range(50)}


def _process_writer(url: str, prefix: str, w: int, n: int) -> None:
    store = FeedbackStore(url, prefix=prefix)  # one store (engine) per process
    for i in range(n):
        _add(store, w * 1000 + i)
    store.close()


def test_concurrent_processes_lose_nothing(backend):
    url, prefix = backend
    FeedbackStore(url, prefix=prefix).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(url, prefix, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert FeedbackStore(url, prefix=prefix).count() == 200


def test_at_most_one_pending_retrain_under_concurrent_claims(backend):
    url, prefix = backend
    store = FeedbackStore(url, prefix=prefix)
    for i in range(10):
        _add(store, i)
    policy = ThresholdPolicy(count=5, cooldown_seconds=0)
    results: list = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(store.claim_retrain(policy, "m"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [r for r in results if r is not None]
    assert len(results) == 8 and len(won) == 1
    assert won[0]["stats"]["new"] == 10 and won[0]["reason"].startswith("count")
    assert [r["status"] for r in store.retrains_list("m")] == ["pending"]
    assert store.stats("m")["new"] == 0  # the retrain took every row
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as c:  # the database enforces it
        row = {"model_name": "m", "status": "pending", "reason": "x", "stats": "{}", "created": 0.0}
        c.execute(store.retrains.insert().values(**row))


def test_threshold_count_rate_cooldown_and_pending(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    policy = ThresholdPolicy(
        count=6, negative_rate=0.5, min_ratings=4, cooldown_seconds=100, timeout_seconds=1000
    )
    t = 10_000.0
    for i in range(3):
        _add(store, i, rating=-1)
    assert store.claim_retrain(policy, "m", now=t) is None  # 3 ratings < min_ratings
    _add(store, 3, rating=1)
    claim = store.claim_retrain(policy, "m", now=t)  # 3 of 4 negative >= 0.5
    assert claim is not None and claim["reason"].startswith("negative_rate")
    assert claim["stats"] == {
        "new": 4,
        "rated": 4,
        "negative": 3,
        "negative_rate": 0.75,
        "corrections": 0,
        "preferred": 0,
    }
    for i in range(10):
        _add(store, 10 + i)
    assert store.claim_retrain(policy, "m", now=t + 500) is None  # one is pending
    assert store.claim_retrain(policy, "other-model", now=t + 500) is not None  # per model
    store.finish_retrain(claim["id"], "failed", note="gate failed")
    assert store.claim_retrain(policy, "m", now=t + 50) is None  # cooldown after the last retrain
    # A failed gate does not loop: the failed retrain's feedback is spent, and the rows added
    # after it went to the other model's retrain, so there is nothing new for "m".
    assert store.claim_retrain(policy, "m", now=t + 200) is None
    for i in range(6):
        _add(store, 30 + i)
    again = store.claim_retrain(policy, "m", now=t + 200)
    assert again is not None and again["reason"] == "count: 6 new feedback >= 6"
    # a pending retrain past its timeout is abandoned, so the loop cannot stall for ever
    for i in range(6):
        _add(store, 50 + i)
    late = store.claim_retrain(policy, "m", now=t + 200 + 1001)
    assert late is not None
    statuses = {r["id"]: r["status"] for r in store.retrains_list("m")}
    assert statuses == {claim["id"]: "failed", again["id"]: "abandoned", late["id"]: "pending"}
    assert store.finish_pending("m", "done", note="new champion") == 1
    assert store.retrains_list("m")[-1]["status"] == "done"
    with pytest.raises(ValueError, match="done, failed or abandoned"):
        store.finish_retrain(late["id"], "maybe")


def test_release_returns_feedback_and_config_policy(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    policy = ThresholdPolicy.from_config(
        ServeConfig(threshold_count=2, threshold_negative_rate=None, cooldown_seconds=0)
    )
    assert policy.negative_rate is None and policy.count == 2
    _add(store, 0)
    _add(store, 1)
    claim = store.claim_retrain(policy, "m")
    assert claim is not None and store.stats("m")["pending_retrain"]["id"] == claim["id"]
    store.release_retrain(claim["id"], note="could not emit")
    assert store.stats("m")["new"] == 2 and store.retrains_list("m") == []
    assert store.claim_retrain(policy, "m") is not None  # no cooldown from a released claim


def test_export_examples_and_preferences(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    art = ArtifactStore(tmp_path / "home")
    _add(store, 0, rating=-1, correction="better 0")
    _add(store, 1, rating=None, preferred="chosen 1")
    _add(store, 2, rating=1)
    _add(store, 3, rating=None, preferred="r3")  # same as the served answer: no pair
    claim = store.claim_retrain(ThresholdPolicy(count=4, cooldown_seconds=0), "m")
    _add(store, 4, correction="after the claim")  # not part of this retrain
    out = store.export(art, claim["id"])
    assert out["sft_examples"] == 1 and out["preference_pairs"] == 2
    sft = [json.loads(x) for x in Path(out["sft_path"]).read_text().splitlines()]
    prefs = [json.loads(x) for x in Path(out["preferences_path"]).read_text().splitlines()]
    assert sft == [{"id": sft[0]["id"], "prompt": "p0", "response": "better 0", "model_version": "1"}]
    assert {(p["prompt"], p["chosen"], p["rejected"]) for p in prefs} == {
        ("p0", "better 0", "r0"),
        ("p1", "chosen 1", "r1"),
    }
    manifest = art.manifest("feedback", out["key"])
    assert manifest["stats"]["sft_examples"] == 1 and "sft.jsonl" in manifest["files"]
    assert store.export(art, claim["id"])["key"] == out["key"]  # the same retrain: the same artifact
    everything = store.export(art)
    assert everything["sft_examples"] == 2 and everything["key"] != out["key"]
