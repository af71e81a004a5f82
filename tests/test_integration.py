"""Integration: real Prefect servers, a served runner, a process worker and the model service,
as separate processes on loopback, each wait bounded.

One `llmflow server` (SQLite, smoke preset) is shared by the module. On it: the `pipeline`
deployment runs to Completed; every scheduled deployment carries its schedule; the UI is told
its own API address; the service hands retrains only to a server whose automation runs
`finetune` for its model; feedback posted to `llmflow serve` past the threshold emits the event
(read back from the server) that makes the automation start the `finetune` deployment, which
completes, promotes, and is served; a transient step
failure is retried by the task's policy; a failed flow run re-run skips its cached steps. A
second server runs on PostgreSQL (a fresh database, dropped after) with `llmflow deploy` and a
`prefect worker` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.livestack import (
    BIN,
    ROOT,
    SMOKE_SETS,
    LlmflowServer,
    api,
    child_env,
    drain_prefect_workers,
    free_port,
    missing_prerequisite,
    run_deployment,
    stop,
    tail,
    task_states,
    wait_for,
    wait_run,
    webhook,
)
from tests.prereq import skip_missing

pytestmark = pytest.mark.slow
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def hook():
    """A webhook the stack's gate-failed automation notifies: (url, bodies received)."""
    with webhook() as h:
        yield h


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hook):
    reason = missing_prerequisite()
    if reason:
        skip_missing("the llmflow and prefect commands", reason)
    work = tmp_path_factory.mktemp("stack")
    srv = LlmflowServer(work, os.environ["LLMFLOW_HOME"], env={"LLMFLOW_GATE_FAILED_NOTIFY": hook[0]}).start()
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.proc.returncode is not None
        with pytest.raises(OSError):  # Ctrl-C stopped the Prefect server too
            urllib.request.urlopen(f"{srv.api_url}/health", timeout=2)


@pytest.fixture(scope="module")
def pipeline_run(stack):
    """The `pipeline` deployment, run through the API with a changed parameter."""
    from llmflow.config import load_config

    cfg = load_config("smoke", SMOKE_SETS + ["evaluate.max_new_tokens=6"]).model_dump(mode="json")
    t0 = time.time()
    run = run_deployment(stack.api_url, "pipeline/pipeline", {"config": cfg})
    final = wait_run(stack.api_url, run.id, timeout=300, log=stack.log)
    print(f"pipeline deployment run: {time.time() - t0:.1f}s")
    return final


def test_pipeline_deployment_completes(stack, pipeline_run):
    assert pipeline_run.state.is_completed(), f"{pipeline_run.state}\n{tail(stack.log)}"
    assert pipeline_run.parameters["config"]["evaluate"]["max_new_tokens"] == 6
    states = task_states(stack.api_url, pipeline_run.id)
    for step in ("ingest", "prepare", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "gate"):
        assert states.get(step), f"no {step} task run in {states}"
    from llmflow.registry import Registry

    champion = Registry(name="smoke").champion()
    assert champion is not None and champion["metrics"]["rougeL"] >= 0.0
    with api(stack.api_url) as c:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[pipeline_run.id]))
        )
    assert {"markdown", "table"} <= {a.type for a in arts}, "the steps publish reports and tables"


def test_a_failed_gate_fails_the_run_and_notifies(stack, pipeline_run, hook):
    """The smoke preset's real gate (no mechanics overrides) rejects the tiny model: the run is
    Failed with the reasons, the champion stays, and the automation posts to the webhook."""
    from llmflow.config import load_config
    from llmflow.registry import Registry

    champion = Registry(name="smoke").champion()
    mechanics = [s for s in SMOKE_SETS if not s.startswith("gate.")]
    new_candidate = ["evaluate.max_new_tokens=6", "finetune.max_steps=5"]
    cfg = load_config("smoke", mechanics + new_candidate).model_dump(mode="json")
    run = run_deployment(stack.api_url, "pipeline/pipeline", {"config": cfg})
    final = wait_run(stack.api_url, run.id, timeout=300, log=stack.log)
    assert final.state.is_failed(), f"{final.state}\n{tail(stack.log)}"
    assert "GateFailed: gate failed for smoke" in final.state.message
    assert "does not beat name_words" in final.state.message
    states = task_states(stack.api_url, final.id)
    assert states["gate"] == ["Completed"] and states["pretrain"] == ["Cached"], states  # artifacts kept
    reg = Registry(name="smoke")
    assert reg.champion()["version"] == champion["version"]
    assert reg.get("challenger")["version"] != champion["version"]
    url, received = hook

    def notified():
        return [b for b in received if "does not beat name_words" in b.get("body", "")]

    [note] = wait_for(notified, 90, "the gate-failed automation to post to the webhook", interval=1)[:1]
    assert "smoke" in note["subject"]


def test_scheduled_deployments_carry_their_schedules(stack):
    with api(stack.api_url) as c:
        deps = {f"{c.read_flow(d.flow_id).name}/{d.name}": d for d in c.read_deployments()}
        assert {
            "pipeline/pipeline",
            "pipeline/retrain",
            "data/data-refresh",
            "feedback-finetune/finetune",
        } <= set(deps)
        crons = {name: [s.schedule.cron for s in d.schedules] for name, d in deps.items()}
        automations = c.read_automations()
    assert crons["pipeline/retrain"] == ["0 3 * * 1"]
    assert crons["data/data-refresh"] == ["0 2 * * *"]
    assert crons["pipeline/pipeline"] == [] and crons["feedback-finetune/finetune"] == []
    assert all(d.enforce_parameter_schema for d in deps.values())
    # the feedback trigger: an automation that runs `finetune` with the event's export paths
    trig = [a for a in automations if a.name == "retrain smoke on feedback"]
    assert len(trig) == 1 and trig[0].enabled
    assert trig[0].trigger.expect == {"llmflow.feedback.threshold_reached"}
    action = trig[0].actions[0]
    assert action.deployment_id == deps["feedback-finetune/finetune"].id
    assert "event.payload.sft_path" in json.dumps(action.parameters)
    # and the one that reports a failed gate (nothing configured: it records the event only)
    [notify] = [a for a in automations if a.name == "notify smoke gate failed"]
    assert (
        notify.trigger.expect == {"llmflow.gate.failed"} and notify.actions[0].type == "send-notification"
    )  # to the hook


def test_ui_is_told_its_own_api_address(stack):
    with urllib.request.urlopen(f"{stack.url}/ui-settings", timeout=10) as r:
        settings = json.load(r)
    assert settings["api_url"] == stack.api_url  # not the default 127.0.0.1:4200
    page = urllib.request.Request(f"{stack.url}/runs", headers={"accept": "text/html"})  # as a browser
    with urllib.request.urlopen(page, timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read(2000).lower()


def test_an_invalid_parameter_is_rejected_before_a_run(stack):
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError, match="409"):
        run_deployment(stack.api_url, "pipeline/pipeline", {"config": {"pretrain": {"max_steps": 0}}})


def test_retrains_are_handed_only_to_a_server_with_the_models_feedback_trigger(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.handoff import prefect_check

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
        enabled, reason = prefect_check("smoke")()
        assert enabled, reason
        assert "'retrain smoke on feedback' runs deployment feedback-finetune/finetune" in reason
        enabled, reason = prefect_check("another-model")()  # no trigger for this model
        assert not enabled and "for llmflow.model.another-model" in reason, reason
        with api(stack.api_url) as c:
            [automation] = c.read_automations_by_name("retrain smoke on feedback")
            c.pause_automation(automation.id)
            try:
                enabled, reason = prefect_check("smoke")()
                assert not enabled and "no enabled automation" in reason, reason
            finally:
                c.resume_automation(automation.id)
        assert prefect_check("smoke")()[0]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def test_feedback_past_the_threshold_retrains_and_the_new_champion_is_served(stack, pipeline_run, tmp_path):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from llmflow.feedback import FeedbackStore

    assert pipeline_run.state.is_completed()
    port, home = free_port(), os.environ["LLMFLOW_HOME"]
    sets = ["serve.threshold_count=3", "serve.threshold_negative_rate=null", "serve.cooldown_seconds=0"]
    sets += ["serve.reload_interval_seconds=1"]
    cmd = [str(BIN / "llmflow"), "serve", "--port", str(port), "--config", "smoke", "--home", home]
    for s in SMOKE_SETS + sets:
        cmd += ["--set", s]
    log = tmp_path / "serve.log"
    env = child_env(PREFECT_API_URL=stack.api_url, PREFECT_HOME=str(stack.prefect_home), LLMFLOW_HOME=home)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def loaded():
            try:
                return _get(f"{base}/health")["model_loaded"]
            except OSError:
                return False

        wait_for(loaded, 120, "the service to load the champion", 1.0, proc, log)
        retrains = _get(f"{base}/health")["retrain"]
        assert retrains["enabled"] and "retrain smoke on feedback" in retrains["reason"], retrains
        before = _get(f"{base}/model")["version"]
        prompts = [
            "def add(a, b): return a + b",
            "def is_empty(s): return not s",
            "def first(xs): return xs[0]",
        ]
        answers = ["Add two numbers.", "Return True when the string is empty.", "Return the first item."]
        retrain = None
        t0 = time.time()
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            gen = _post(f"{base}/generate", {"prompt": p, "max_new_tokens": 8})
            if i == 0:  # rating the answer just generated
                body = {"generation_id": gen["id"], "rating": -1, "correction": a}
            else:  # or naming prompt, answer and version (a tiny model may answer nothing)
                body = {"prompt": p, "response": "It does something.", "model_version": gen["model_version"]}
                body |= {"rating": -1, "correction": a} | ({"preferred": a.upper()} if i == 1 else {})
            res = _post(f"{base}/feedback", body)
            assert (res["retrain"] is None) == (i < 2), res
            retrain = res["retrain"]
        assert retrain["reason"].startswith("count: 3")

        def finetune_run():
            with api(stack.api_url) as c:
                dep = c.read_deployment_by_name("feedback-finetune/finetune")
                runs = c.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
                )
            return runs[0] if runs else None

        run = wait_for(finetune_run, 90, "the automation to start a finetune run", 2.0, log=stack.log)
        assert run.parameters["retrain_id"] == retrain["id"]

        def threshold_event():  # the event itself, as the server stored it
            from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

            flt = EventFilter(
                event=EventNameFilter(name=["llmflow.feedback.threshold_reached"]),
                resource=EventResourceFilter(id=["llmflow.model.smoke"]),
            )
            with api(stack.api_url) as c:
                page = c.read_events(flt, limit=50)  # the server allows at most 50 a page
            return [e for e in page.events if e.payload.get("retrain_id") == retrain["id"]]

        [event] = wait_for(threshold_event, 30, "the threshold event on the server", 1.0, log=stack.log)
        assert event.payload["sft_path"] == run.parameters["sft_path"] and event.payload["feedback_new"] == 3
        assert (
            run.parameters["sft_path"].endswith("sft.jsonl") and run.parameters["config"]["name"] == "smoke"
        )
        final = wait_run(stack.api_url, run.id, timeout=240, log=stack.log)
        print(f"feedback -> finetune run completed: {time.time() - t0:.1f}s")
        assert final.state.is_completed(), f"{final.state}\n{tail(stack.log)}"
        states = task_states(stack.api_url, run.id)
        assert states.get("feedback_dpo") == ["Completed"], states
        assert states["feedback_data"] == ["Completed"] and states["feedback_dpo"] == ["Completed"]
        assert states["finetune"] == ["Completed"], states
        from llmflow.store import ArtifactStore

        assert len(ArtifactStore().list("pretrain")) == 1  # the base model was reused, not retrained

        store = FeedbackStore(home=home)
        [rt] = [r for r in store.retrains_list("smoke") if r["id"] == retrain["id"]]
        assert rt["status"] == "done" and "gate passed" in rt["note"], rt
        sft, prefs = store.examples(retrain["id"])
        assert len(sft) == 3 and len(prefs) >= 3
        store.close()
        after = wait_for(
            lambda: (v := _get(f"{base}/model")["version"]) != before and v,
            30,
            "the new champion",
            1.0,
            proc,
            log,
        )
        assert int(after) > int(before)
    finally:
        stop(proc)


# --------------------------------------------------------------------------- retries and re-runs


def _flaky_flows(tmp: Path):
    """Three real step tasks a -> b -> c. b fails with an I/O error on its first attempt; c fails
    while the file `tmp/broken` exists. Each step counts its executions in `tmp/<step>.count`."""
    from prefect import flow

    from tasks.common import step_task

    def counted(name: str, body=None):
        def fn(ctx):
            n = int((tmp / f"{name}.count").read_text()) + 1 if (tmp / f"{name}.count").exists() else 1
            (tmp / f"{name}.count").write_text(str(n))
            if body is not None:
                body(n)
            (ctx.out / "out.txt").write_text(f"{name} {n}")
            return {"attempt": n}

        fn.__doc__ = f"step {name}"
        return fn

    def flaky_io(n: int) -> None:
        if n == 1:
            raise OSError(5, "Input/output error (injected)")

    def broken(n: int) -> None:
        if (tmp / "broken").exists():
            raise RuntimeError("c is broken")

    tag = uuid.uuid4().hex[:6]
    a = step_task(f"it_a_{tag}", 1, counted("a"), retries=0)
    b = step_task(f"it_b_{tag}", 1, counted("b", flaky_io), retries=2, retry_delay_seconds=0.2)
    c = step_task(f"it_c_{tag}", 1, counted("c", broken), retries=0)
    home = str(tmp / "home")

    @flow(name="flaky-steps", retries=0)
    def flaky(seed: int = 1):
        ra = a({"seed": seed}, {}, home=home)
        rb = b({"seed": seed}, {"a": ra}, home=home)
        return c({"seed": seed}, {"b": rb}, home=home).stats

    return flaky, tag


def test_a_transient_io_error_is_retried_and_a_rerun_skips_cached_steps(stack, tmp_path):
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    flaky, tag = _flaky_flows(tmp_path)
    (tmp_path / "broken").touch()
    with api(stack.api_url) as c:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        drain_prefect_workers()  # workers bound to an earlier server would lose this run's events
        with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
            state = flaky(return_state=True)
            drain_prefect_workers()
        assert state.is_failed()
        run_id = state.state_details.flow_run_id
        states = task_states(stack.api_url, run_id)
        # b: the I/O error was retried by the task's policy, in the same task run
        assert states[f"it_b_{tag}"] == ["Completed"], states
        [b_run] = [t for t in c.read_task_runs() if t.name.startswith(f"it_b_{tag}")]
        assert b_run.run_count == 2 and (tmp_path / "b.count").read_text() == "2"
        assert states[f"it_c_{tag}"] == ["Failed"]

        # fix the cause and re-run the same flow run, as the UI's Retry does
        (tmp_path / "broken").unlink()
        c.set_flow_run_state(run_id, AwaitingRetry(), force=True)
        with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
            final = run_flow(
                flaky, flow_run=c.read_flow_run(run_id), parameters={"seed": 1}, return_type="state"
            )
            drain_prefect_workers()
        assert final.is_completed(), final
        assert c.read_flow_run(run_id).run_count == 2
    states = task_states(stack.api_url, run_id)
    # the re-run served a and b from the cache (Prefect's Cached state) and ran only c
    assert {k.rsplit("_", 1)[0]: v[-1] for k, v in states.items()} == {
        "it_a": "Cached",
        "it_b": "Cached",
        "it_c": "Completed",
    }, states
    counts = {s: (tmp_path / f"{s}.count").read_text() for s in "abc"}
    assert counts == {"a": "1", "b": "2", "c": "2"}  # a and b did not run again


# --------------------------------------------------------------------------- PostgreSQL + worker


def _pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as e:
        skip_missing("PostgreSQL", f"start it on 127.0.0.1:5432 with trust auth ({str(e).splitlines()[0]})")


def test_server_on_postgresql_with_deploy_and_a_process_worker(stack, pipeline_run, tmp_path):
    from deployments.localserver import LocalServer

    assert pipeline_run.state.is_completed()
    db = f"llmflow_it_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin()
    admin.execute(f'CREATE DATABASE "{db}"')
    home = os.environ["LLMFLOW_HOME"]
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    srv = LocalServer(
        port=free_port(),
        env={
            **env,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        },
        log_path=tmp_path / "server.log",
    )
    worker = None
    try:
        t0 = time.time()
        srv.start()
        cenv = child_env(PREFECT_API_URL=srv.api_url, LLMFLOW_HOME=home, **env)
        sets = sum((["--set", s] for s in SMOKE_SETS), [])
        out = subprocess.run(
            [str(BIN / "llmflow"), "deploy", "--pool", "it-pool", "--config", "smoke", *sets],
            cwd=ROOT,
            env=cenv,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Registered 5 deployments on work pool 'it-pool'" in out.stdout
        wlog = tmp_path / "worker.log"
        with open(wlog, "ab") as f:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "it-pool", "--type", "process"],
                cwd=tmp_path,
                env=cenv,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = run_deployment(srv.api_url, "pipeline/pipeline")
        final = wait_run(srv.api_url, run.id, timeout=240, log=wlog)
        print(f"PostgreSQL server + deploy + worker, cached pipeline: {time.time() - t0:.1f}s")
        assert final.state.is_completed(), f"{final.state}\n{tail(wlog)}"
        with api(srv.api_url) as c:
            assert c.read_work_pool("it-pool").type == "process"
            assert c.read_deployment_by_name("pipeline/retrain").schedules[0].schedule.cron == "0 3 * * 1"
        with admin.cursor() as cur:  # the runs really are in PostgreSQL
            import psycopg

            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}") as conn:
                n = conn.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'").fetchone()[0]
            cur.execute("SELECT 1")
        assert n >= 1
    finally:
        if worker is not None:
            stop(worker)
        srv.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
