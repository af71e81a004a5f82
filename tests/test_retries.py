"""The Prefect layer's retries: a bad input fails at once, anything else is tried again."""

from __future__ import annotations

import pytest
from prefect import flow

from llmflow.config import InputError, TokenizerConfig
from tasks.common import step_task

TRIES: list[str] = []


def _fails(ctx):
    """Fail every try with the error the config names."""
    TRIES.append(ctx.config.model_type)
    if ctx.config.model_type == "bpe":
        raise InputError("source 'x': no such file, folder or glob: /nope: fix its path in ingest.sources")
    raise OSError("the network share went away")


fails = step_task("fails", 1, _fails, retries=1, retry_delay_seconds=0)


@flow
def one_failing_step(config: TokenizerConfig, home: str) -> str:
    return fails(config, {}, home=home, return_state=True).name


@pytest.mark.usefixtures("prefect_harness")
def test_an_input_error_is_not_retried_other_failures_are(tmp_path):
    TRIES.clear()
    assert one_failing_step(TokenizerConfig(model_type="bpe"), str(tmp_path)) == "Failed"
    assert TRIES == ["bpe"]
    TRIES.clear()
    assert one_failing_step(TokenizerConfig(model_type="unigram"), str(tmp_path)) == "Failed"
    assert TRIES == ["unigram", "unigram"]
