"""deployments/prefect.yaml: every entrypoint loads a flow, every schedule and trigger parses with
Prefect's own `prefect deploy` code, the parameters validate, and the file agrees with the
deployments `llmflow deploy` builds (deployments/serve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


def _by_name() -> dict[str, dict]:
    return {d["name"]: d for d in SPEC["deployments"]}


def test_the_file_names_the_five_deployments_on_a_process_pool():
    assert list(_by_name()) == ["pipeline", "data-refresh", "retrain", "finetune", "evaluate"]
    for d in SPEC["deployments"]:
        assert d["work_pool"]["name"] == "llmflow" and d["enforce_parameter_schema"] is True


@pytest.mark.parametrize("name", ["pipeline", "data-refresh", "retrain", "finetune", "evaluate"])
def test_each_entrypoint_imports_and_its_parameters_validate(name, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    d = _by_name()[name]
    path, func = d["entrypoint"].split(":")
    assert (ROOT / path).is_file(), f"{d['entrypoint']}: no such file"
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
    assert flow.fn.__name__ == func
    flow.validate_parameters(d.get("parameters") or {})  # raises on a bad parameter
    schema = flow.parameters.model_dump()
    assert "config" in schema["properties"]


def test_schedules_parse_as_prefect_cron_schedules():
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    crons = {}
    for d in SPEC["deployments"]:
        for s in d.get("schedules") or []:
            sched = _schedule_config_to_deployment_schedule(s)["schedule"]
            crons[d["name"]] = sched.cron
            assert sched.timezone == "UTC"
    assert crons == {"data-refresh": "0 2 * * *", "retrain": "0 3 * * 1"}


def test_the_feedback_trigger_parses_and_passes_the_event_payload():
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    from deployments.serve import TRIGGER_PARAMETERS
    from llmflow import events

    spec = _by_name()["finetune"]["triggers"]
    [trigger] = _initialize_deployment_triggers("finetune", [dict(t) for t in spec])
    assert trigger.expect == {events.FEEDBACK_THRESHOLD_REACHED}
    assert trigger.match.model_dump()["prefect.resource.id"] == events.resource_id("model", "llmflow")
    assert trigger.parameters == TRIGGER_PARAMETERS


def test_the_pull_step_resolves_the_working_directory(monkeypatch):
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("LLMFLOW_ROOT", str(ROOT))
    [step] = apply_values(SPEC["pull"], {})
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)


def test_agrees_with_the_python_deployments():
    """The same names, flows, schedules and trigger as `llmflow deploy` registers."""
    from deployments.serve import build_deployments

    built = {d.name: d for d in build_deployments()}
    assert set(built) == set(_by_name())
    for name, d in _by_name().items():
        module_path = built[name].entrypoint  # module path: flows.pipeline.pipeline
        path, func = d["entrypoint"].split(":")
        assert module_path == path.removesuffix(".py").replace("/", ".") + "." + func
        want = [s["cron"] for s in d.get("schedules") or []]
        assert [s.schedule.cron for s in built[name].schedules or []] == want
        assert bool(d.get("triggers")) == bool(built[name].triggers)
        scheduled = bool(d.get("schedules"))  # data-refresh, retrain: incremental dedup on
        assert _incremental(d.get("parameters") or {}) is (True if scheduled else None), name
        assert bool(_incremental(built[name].parameters)) is scheduled, name


def _incremental(parameters: dict) -> bool | None:
    return (((parameters.get("config") or {}).get("prepare") or {}).get("dedup") or {}).get("incremental")
