"""MLflow tracking against a real `mlflow server` (SQLite backend) on loopback.

One server and one pipeline home for the module: the smoke pipeline (gate set to pass, as in
tests/livestack.py) runs tracked, then again with a changed fine-tune. Each run is an MLflow run
with a nested run per step that ran; the registry's versions are MLflow model versions whose
`champion` alias follows the gate's promotions and `llmflow models rollback` / `promote`.
Without a tracking URI nothing of MLflow is imported; with one that does not answer, the
pipeline warns once and goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from llmflow.config import ConfigError, load_config
from llmflow.registry import Registry
from llmflow.store import ArtifactStore
from tests.livestack import BIN, ROOT, SMOKE_SETS, free_port, mlflow_server
from tests.prereq import skip_missing

STEPS = ["ingest", "task_data", "prepare", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "gate"]


def test_without_a_tracking_uri_nothing_of_mlflow_is_imported(tmp_path):
    """The hooks run (a tracked step, the command line's mirror) and MLflow stays unimported."""
    code = f"""
import sys
from pathlib import Path
import deployments.cli, deployments.cli_models
from flows.pipeline import compose
from llmflow.config import load_config
from llmflow.mlflow_tracking import track
from llmflow.registry import Registry
from llmflow.store import ArtifactStore, StepRef
with track(load_config("smoke"), {str(tmp_path)!r}, "gate") as tracker:
    tracker.step(StepRef(step="gate", key="k", uri="u", stats={{"name": "smoke", "version": 1}}))
deployments.cli_models._mirror(Registry(ArtifactStore({str(tmp_path)!r}), "smoke"))
print(sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_tracking_uri_that_is_not_one_is_a_config_error():
    with pytest.raises(ConfigError, match="tracking.mlflow_uri.*not an MLflow tracking URI"):
        load_config("smoke", ["tracking.mlflow_uri=localhost:5000"])
    assert load_config("smoke", ["tracking.mlflow_uri="]).tracking.mlflow_uri is None


def test_without_the_mlflow_client_a_tracked_run_warns_how_to_install_it(tmp_path, monkeypatch, caplog):
    from llmflow.mlflow_tracking import track
    from llmflow.store import StepRef

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    cfg = load_config("smoke", [f"tracking.mlflow_uri=file:{tmp_path}/mlruns"])
    with track(cfg, str(tmp_path), "gate") as tracker:
        tracker.step(StepRef(step="gate", key="k", uri="u"))
    [warning] = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert "pip install 'llmflow[mlflow]'" in warning and "the run goes on without it" in warning


# --------------------------------------------------------------------------- against a server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (BIN / "mlflow").exists():
        skip_missing("the mlflow server", "pip install -e '.[dev]' (the dev extra has the full mlflow)")
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server, registry_uri=server)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("home"))


def _pipeline(home, sets):
    from flows.pipeline import pipeline

    return pipeline(config=load_config("smoke", SMOKE_SETS + sets), home=home, return_state=True)


def _runs(client, name):
    exp = client.get_experiment_by_name("llmflow")
    runs = client.search_runs([exp.experiment_id], order_by=["attribute.start_time ASC"], max_results=1000)
    parents = [
        r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.run_name.startswith(f"{name}:")
    ]
    children = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    return parents, children


def _champion(client, name="smoke"):
    return client.get_model_version_by_alias(name, "champion").tags["llmflow.version"]


@pytest.fixture(scope="module")
def first(server, home, prefect_harness):
    state = _pipeline(home, [f"tracking.mlflow_uri={server}"])
    assert state.is_completed(), state
    return state.result()


@pytest.mark.slow
def test_a_pipeline_run_is_an_mlflow_run_with_a_nested_run_per_step(first, client, server):
    [parent], children = _runs(client, "smoke")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "smoke: gate"
    assert parent.data.params["pretrain.max_steps"] == "12" and parent.data.params["name"] == "smoke"
    assert parent.data.params["gate.beat_baselines"] == "[]"  # the resolved config, overrides applied
    assert parent.data.tags["prefect.flow_run_id"]
    nested = {r.info.run_name: r for r in children[parent.info.run_id]}
    assert sorted(nested) == sorted(STEPS)
    for step, run in nested.items():
        assert run.data.tags["llmflow.key"] == first[step]["key"] and run.info.status == "FINISHED"

    pretrain = nested["pretrain"]
    assert pretrain.data.params["preset"] == "tiny" and pretrain.data.params["seq_len"] == "64"
    loss = client.get_metric_history(pretrain.info.run_id, "loss")
    assert [m.step for m in loss] == list(range(1, 13))  # the training curve, one point per step
    assert [m.step for m in client.get_metric_history(pretrain.info.run_id, "val_bpb")] == [6, 12]
    assert pretrain.data.metrics["time.tokens_per_s"] > 0

    evaluate = nested["evaluate"].data.metrics
    stats = first["evaluate"]["stats"]
    for metric in ("rougeL", "bleu", "stereotype_pct"):
        assert evaluate[metric] == pytest.approx(stats["metrics"][metric])
        lo, hi = stats["ci"][metric]
        assert evaluate[f"{metric}_ci95_low"] == pytest.approx(lo) and evaluate[
            f"{metric}_ci95_high"
        ] == pytest.approx(hi)
    assert evaluate["val_bpb"] == pytest.approx(stats["metrics"]["val_bpb"])

    files = {f.path for f in client.list_artifacts(nested["evaluate"].info.run_id)}
    assert {"report.md", "metrics.json"} <= files
    assert "loss.png" in {f.path for f in client.list_artifacts(pretrain.info.run_id)}
    gate = nested["gate"].info.run_id
    assert "decision.md" in {f.path for f in client.list_artifacts(gate)}
    card = Path(client.download_artifacts(gate, "model_card/README.md")).read_text()
    assert card.startswith("---\n") and "# smoke v1" in card
    config = Path(client.download_artifacts(parent.info.run_id, "config.yaml")).read_text()
    assert f"mlflow_uri: {server}" in config


@pytest.mark.slow
def test_the_registry_is_mirrored_and_champion_follows_promotion_and_rollback(first, client, server, home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    [mv1] = client.search_model_versions("name='smoke'")
    assert mv1.tags["llmflow.version"] == "1" and mv1.tags["llmflow.finetune_key"] == first["finetune"]["key"]
    assert _champion(client) == "1"  # the gate promoted v1
    # The version's files are the export: they load with transformers.
    folder = client.download_artifacts(mv1.run_id, mv1.source.split("/", 3)[-1])
    assert (
        AutoModelForCausalLM.from_pretrained(folder) is not None
        and AutoTokenizer.from_pretrained(folder).chat_template
    )

    # A changed fine-tune: only the steps from finetune on run (and get runs); v2 becomes champion.
    state = _pipeline(home, [f"tracking.mlflow_uri={server}", "finetune.max_steps=3"])
    assert state.is_completed(), state
    parents, children = _runs(client, "smoke")
    assert len(parents) == 2
    assert sorted(r.info.run_name for r in children[parents[1].info.run_id]) == [
        "evaluate",
        "finetune",
        "gate",
    ]
    assert parents[1].data.tags["llmflow.cached"] == "ingest,task_data,prepare,tokenizer,pack,pretrain"
    assert _champion(client) == "2"
    assert len(client.search_model_versions("name='smoke'")) == 2

    env = {"MLFLOW_TRACKING_URI": server, "LLMFLOW_HOME": home}
    r = CliRunner().invoke(app, ["models", "rollback", "--name", "smoke"], env=env)
    assert r.exit_code == 0, r.output
    assert _champion(client) == "1"
    assert "challenger" not in client.get_registered_model("smoke").aliases
    r = CliRunner().invoke(app, ["models", "promote", "2", "--name", "smoke"], env=env)
    assert r.exit_code == 0, r.output
    assert _champion(client) == "2"
    assert len(client.search_model_versions("name='smoke'")) == 2  # mirrored once, aliases moved


@pytest.mark.slow
def test_an_unreachable_server_warns_once_and_the_pipeline_goes_on(first, home, client, monkeypatch, caplog):
    """MLFLOW_TRACKING_URI (no config setting) names a port nobody listens on."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    state = _pipeline(home, ["finetune.max_steps=2"])
    assert state.is_completed(), state
    summary = state.result()
    assert [summary[s]["status"] for s in ("finetune", "evaluate", "gate")] == ["ran"] * 3
    warnings = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "the run goes on without it" in warnings[0]
    r = CliRunner().invoke(app, ["models", "rollback", "--name", "smoke", "--home", home])
    assert r.exit_code == 0 and "warning: MLflow not updated" in r.output
    assert Registry(ArtifactStore(home), "smoke").champion()["version"] == 2  # the registry moved anyway
