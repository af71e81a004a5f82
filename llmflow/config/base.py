"""What every config section shares: unknown keys are errors, and bounds that catch typos."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Upper bounds that catch a typo (an extra zero, 1e23) before a run starts, never a real run:
# each is far beyond the largest run llmflow is meant for.
MAX_STEPS = 10_000_000  # optimizer steps; published LLM pretraining runs take 10^5 to 10^6
MAX_BATCH = 65_536  # sequences, examples or micro-batches
MAX_SECONDS = 366 * 86_400  # a year of wall clock
MAX_TOKENS = 10**15  # training tokens; the largest published runs use about 10^13
MAX_ITEMS = 10**12  # documents, examples, batches
MAX_PROCESSES = 4096  # worker or training processes
MAX_SEED = 2**32 - 1  # numpy's seed range


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
