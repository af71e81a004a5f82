"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real uvicorn
process on loopback serving a tiny champion from a real registry: the model list, completions and
chat completions (whole and streamed, greedy, with stop strings), usage, OpenAI-shaped errors,
answers whose id /feedback takes, and concurrent requests batched with the answers they get alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from llmflow.feedback import FeedbackStore
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir
from tests.livestack import free_port, wait_model_loaded

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def add(a, b): return a + b"
CONTEXT = 256  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(base URL, tokenizer directory, LLMFLOW_HOME): `run()` under uvicorn with token `t`,
    champion tiny:1."""
    base = tmp_path_factory.mktemp("openai")
    tok = tiny_tokenizer_dir(base / "tok")
    home = base / "home"
    reg = Registry(ArtifactStore(home), "tiny")
    reg.promote(reg.register("ft-key-1", str(tiny_model_dir(base / "v1", tok, seed=0))))
    port = free_port()
    code = (
        "from deployments.service import run; from llmflow.config import ServeConfig; "
        f"run(ServeConfig(token='t', max_new_tokens=64, max_prompt_chars=3000, batch_wait_ms=50), port={port}, "
        f"home={str(home)!r}, name='tiny', log_level='warning')"
    )
    env = {**os.environ, "LLMFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    env.pop("LLMFLOW_SERVE_TOKEN", None)
    log = base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_model_loaded(url, proc, log.read_text)
        yield url, tok, home
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service[0]}/v1", api_key="t", max_retries=0, timeout=60)


def greedy(**kw):
    return {"temperature": 0, "max_tokens": 12, **kw}


def test_models_list_the_champion_with_its_version(client):
    [model] = client.models.list().data
    assert model.id == "tiny:1" and model.object == "model" and model.owned_by == "llmflow"


def test_chat_completion_answers_as_generate_does_and_counts_tokens(client, service):
    from transformers import AutoTokenizer

    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], **greedy()
    )
    [choice] = chat.choices
    assert chat.object == "chat.completion" and chat.model == "tiny:1" and choice.message.role == "assistant"
    generated = httpx.post(
        f"{service[0]}/generate",
        json={"prompt": PROMPT, "max_new_tokens": 12},
        headers={"Authorization": "Bearer t"},
        timeout=60,
    ).json()
    assert choice.message.content == generated["text"]  # the same chat format, the same greedy answer
    tokenizer = AutoTokenizer.from_pretrained(service[1])
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    assert chat.usage.prompt_tokens == 1 + len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert 1 <= chat.usage.completion_tokens <= 12
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert choice.finish_reason == ("length" if chat.usage.completion_tokens == 12 else "stop")
    by_version = client.chat.completions.create(
        model="tiny:1", messages=[{"role": "user", "content": PROMPT}], **greedy()
    )
    assert by_version.choices[0].message.content == choice.message.content and by_version.id != chat.id


def test_streamed_chat_assembles_to_the_whole_answer(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    whole = client.chat.completions.create(model="tiny", messages=messages, **greedy(max_tokens=24))
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **greedy(max_tokens=24),
        )
    )
    assert {c.id for c in chunks} == {chunks[0].id} and all(
        c.object == "chat.completion.chunk" for c in chunks
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the answer came in one piece, not as the model wrote it"
    assert "".join(pieces) == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_completion_continues_the_prompt_as_given_whole_and_streamed(client):
    whole = client.completions.create(model="tiny", prompt="def add(a, b):", **greedy())
    assert whole.object == "text_completion" and whole.choices[0].text
    streamed = client.completions.create(model="tiny", prompt="def add(a, b):", stream=True, **greedy())
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "def add(a, b):"}], **greedy()
    )
    assert chat.usage.prompt_tokens > whole.usage.prompt_tokens  # the chat format's role tokens


def test_stop_cuts_the_text_before_the_first_stop_string(client):
    full = client.completions.create(model="tiny", prompt=PROMPT, **greedy(max_tokens=24)).choices[0].text
    word = full[len(full) // 2 :][:5]  # from the middle, likely across tokens
    expect = full[: full.index(word)]
    for stop in (word, [word, "never there"]):
        cut = client.completions.create(model="tiny", prompt=PROMPT, stop=stop, **greedy(max_tokens=24))
        assert cut.choices[0].text == expect and cut.choices[0].finish_reason == "stop"
        assert cut.usage.completion_tokens < 24
    chunks = client.completions.create(
        model="tiny", prompt=PROMPT, stop=word, stream=True, **greedy(max_tokens=24)
    )
    assert "".join(c.choices[0].text for c in chunks) == expect


def test_a_prompt_longer_than_the_context_loses_its_start(client):
    long = " ".join(["the sum of two numbers"] * 120)  # about 600 tokens, in the character limit
    out = client.completions.create(model="tiny", prompt=long, **greedy(max_tokens=16))
    assert out.usage.prompt_tokens == CONTEXT - 16  # bos and the prompt's last 239 tokens


def test_malformed_requests_are_400_in_openai_shape(client, service):
    user = [{"role": "user", "content": "hi"}]
    cases = [
        (
            lambda: client.chat.completions.create(model="tiny", messages=user, temperature=3),
            "temperature",
            "less than or equal to 2",
        ),
        (
            lambda: client.chat.completions.create(model="tiny", messages=user, n=2),
            "n",
            "n: must be 1, as this service returns one choice per request",
        ),
        (
            lambda: client.completions.create(model="tiny", prompt="hi", max_tokens=65),
            "max_tokens",
            "over this service's limit of 64",
        ),
        (
            lambda: client.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}]),
            "messages.0.role",
            "Input should be",
        ),
        (
            lambda: client.completions.create(model="tiny", prompt="hi", extra_body={"best": 1}),
            "best",
            "Extra inputs are not permitted",
        ),
        (
            lambda: client.chat.completions.create(model="tiny", messages=user, presence_penalty=1),
            "presence_penalty",
            "presence_penalty: not supported; leave it unset",
        ),
    ]
    for call, param, message in cases:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.status_code == 400 and message in e.value.message, e.value.message
        assert e.value.param == param and e.value.type == "invalid_request_error"
    auth = {"Authorization": "Bearer t"}
    r = httpx.post(f"{service[0]}/v1/completions", json={"model": "tiny"}, headers=auth, timeout=30)
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "prompt: Field required",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": None,
        }
    }
    headers = {**auth, "content-type": "application/json"}
    r = httpx.post(f"{service[0]}/v1/chat/completions", content=b"{not json", headers=headers, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(
        f"{service[0]}/v1/completions", json={"model": "tiny", "prompt": "x" * 3001}, headers=auth, timeout=30
    )
    assert (
        r.status_code == 413
        and r.json()["error"]["message"] == "the prompt has 3001 characters; the limit is 3000"
    )
    big = {"model": "tiny", "prompt": "x" * 300_000}  # over the body limit before it is read
    r = httpx.post(f"{service[0]}/v1/completions", json=big, headers=auth, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "model 'gpt-4o' is not served here: this service serves tiny:1" in e.value.message
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny:2", prompt="hi")  # a version that is not the champion


def test_a_wrong_or_missing_token_is_401(service):
    wrong = openai.OpenAI(base_url=f"{service[0]}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert "missing or wrong bearer token" in e.value.message and e.value.code == "invalid_api_key"
    r = httpx.get(f"{service[0]}/v1/models", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_feedback_takes_the_answer_id_whole_or_streamed(client, service):
    auth = {"Authorization": "Bearer t"}
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], **greedy()
    )
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, stream=True, **greedy()))
    store = FeedbackStore(home=str(service[2]))
    kept = store.get_generation(chat.id)
    assert kept["prompt"] == PROMPT and kept["response"] == chat.choices[0].message.content
    assert store.get_generation(chunks[0].id)["response"] == "".join(c.choices[0].text for c in chunks)
    store.close()
    for gid in (chat.id, chunks[0].id):
        r = httpx.post(
            f"{service[0]}/feedback",
            json={"generation_id": gid, "rating": -1, "correction": "return a + b"},
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 201, r.text
    r = httpx.post(
        f"{service[0]}/feedback",
        json={"generation_id": gid, "model_version": "2", "rating": 1},
        headers=auth,
        timeout=30,
    )
    assert (
        r.status_code == 409 and "came from model version 1" in r.json()["detail"]
    )  # recorded with its version


def test_concurrent_requests_are_batched_and_answered_as_alone(client, service):
    prompts = ["def add(a, b): return a + b", "hi", "open a file for reading", "x"] * 2
    alone = [
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}], **greedy())
        .choices[0]
        .message.content
        for p in prompts[:4]
    ]
    model = httpx.get(f"{service[0]}/model", headers={"Authorization": "Bearer t"}, timeout=10).json()
    before = model["batching"]
    answers: list[str | None] = [None] * len(prompts)

    def ask(i: int) -> None:
        messages = [{"role": "user", "content": prompts[i]}]
        if i % 2:  # streamed and whole requests share batches
            chunks = client.chat.completions.create(model="tiny", messages=messages, stream=True, **greedy())
            answers[i] = "".join(c.choices[0].delta.content or "" for c in chunks)
        else:
            answers[i] = (
                client.chat.completions.create(model="tiny", messages=messages, **greedy())
                .choices[0]
                .message.content
            )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == alone * 2
    after = httpx.get(f"{service[0]}/model", headers={"Authorization": "Bearer t"}, timeout=10).json()[
        "batching"
    ]
    assert after["max_batch_size"] == 8 and after["requests"] - before["requests"] == len(prompts)
    assert after["batches"] - before["batches"] < len(prompts)  # some answers were generated together


def test_no_champion_is_503_in_openai_shape(tmp_path):
    from fastapi.testclient import TestClient

    from deployments.service import create_app
    from llmflow.config import ServeConfig

    app = create_app(
        ServeConfig(),
        name="tiny",
        home=str(tmp_path / "home"),
        model_source=lambda: None,
        feedback=FeedbackStore(str(tmp_path / "fb.db")),
        emit=lambda *a: None,
        retrain_check=lambda: (False, "the test has no Prefect server"),
        device="cpu",
    )
    with TestClient(app) as c:
        for r in (c.get("/v1/models"), c.post("/v1/completions", json={"model": "tiny", "prompt": "hi"})):
            assert r.status_code == 503
            error = r.json()["error"]
            assert error["type"] == "server_error" and "the registry has no champion yet" in error["message"]
        assert c.get("/v1/nothing").json()["error"]["code"] == "not_found"
