"""The llmflow registry mirrored to the MLflow model registry.

llmflow's registry (llmflow/registry.py) stays the source of truth; `mirror` makes MLflow show
the same thing, and is idempotent:

- the registered model is the registry's name;
- each llmflow version becomes an MLflow model version whose files are the version's export
  (llmflow/export.py: safetensors, tokenizer, model card, adapter), logged as artifacts of a run
  (`runs:/<run>/llmflow-v<N>`); it carries the tags `llmflow.version` and `llmflow.finetune_key`,
  by which a version already mirrored is recognised (MLflow numbers its versions itself);
- the `champion` and `challenger` aliases point where the registry's do, or are removed.

The pipeline's tracker calls it when a run registered a version; `llmflow models promote` and
`rollback` call it (`mirror_from_env`) when MLFLOW_TRACKING_URI is set, so the alias follows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Any

from llmflow.config import InputError
from llmflow.export import export_version
from llmflow.registry import ALIASES, Registry

log = logging.getLogger("llmflow.mlflow")

VERSION_TAG = "llmflow.version"
KEY_TAG = "llmflow.finetune_key"


def mirrored_versions(client: Any, name: str) -> dict[str, str]:
    """finetune key -> MLflow version number, for the versions already mirrored."""
    out = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        key = (mv.tags or {}).get(KEY_TAG)
        if key:
            out[key] = mv.version
    return out


def mirror(client: Any, registry: Registry, experiment_id: str, run_id: str | None = None) -> dict[str, str]:
    """Mirror every version and alias of `registry`; version files go to `run_id`, or to a run of
    their own in `experiment_id`. Returns {llmflow version: MLflow version}."""
    from mlflow.exceptions import MlflowException

    entries = registry.list()
    if not entries:
        return {}
    name = registry.name
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"Mirrored from the llmflow registry '{name}'.")
    known = mirrored_versions(client, name)
    numbers: dict[int, str] = {}
    for entry in entries:
        key = entry["finetune_key"]
        if key not in known:
            try:
                known[key] = _create_version(client, registry, entry, experiment_id, run_id)
            except InputError as e:  # its files are gone: the others are still mirrored
                log.warning("%s v%s is not mirrored to MLflow: %s", name, entry["version"], e)
                continue
        numbers[entry["version"]] = known[key]
    for alias in ALIASES:
        owner = next((e["version"] for e in entries if alias in e["aliases"]), None)
        if owner in numbers:
            client.set_registered_model_alias(name, alias, numbers[owner])
        elif owner is None:
            with contextlib.suppress(MlflowException):  # it was not set
                client.delete_registered_model_alias(name, alias)
        # else: the alias's version could not be mirrored; MLflow keeps its alias as it was
    return {str(k): v for k, v in numbers.items()}


def _create_version(
    client: Any, registry: Registry, entry: dict[str, Any], experiment_id: str, run_id: str | None
) -> str:
    version = entry["version"]
    own_run = run_id is None
    if own_run:
        run_id = client.create_run(
            experiment_id,
            run_name=f"{registry.name} v{version}",
            tags={"llmflow.name": registry.name, VERSION_TAG: str(version)},
        ).info.run_id
    path = f"llmflow-v{version}"
    with tempfile.TemporaryDirectory(prefix="llmflow-mlflow-") as tmp:
        folder = export_version(registry, version, os.path.join(tmp, path))
        client.log_artifacts(run_id, str(folder), path)
    gate = entry.get("gate") or {}
    mv = client.create_model_version(
        registry.name,
        source=f"runs:/{run_id}/{path}",
        run_id=run_id,
        tags={
            VERSION_TAG: str(version),
            KEY_TAG: entry["finetune_key"],
            **({"llmflow.gate_passed": str(gate["passed"]).lower()} if "passed" in gate else {}),
        },
        description=f"llmflow {registry.name} v{version}",
    )
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    log.info("mirrored %s v%s as MLflow model version %s", registry.name, version, mv.version)
    return mv.version


def mirror_from_env(registry: Registry) -> dict[str, str] | None:
    """Mirror when MLFLOW_TRACKING_URI is set (the command line has no config); None when it is not.
    Raises what the MLflow client raises: the caller says what failed."""
    from llmflow.mlflow_tracking import client, experiment_id, probe

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    probe(uri)
    c = client(uri)
    return mirror(c, registry, experiment_id(c, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "llmflow"))
