"""What every config section shares: unknown keys are errors, and bounds that catch typos."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class MbrEvidenceSettings(Section):
    """Pseudo-references for minimum Bayes risk decoding beyond the model's own samples
    (tasks/mbr_evidence.py); the evaluate step and the service read the same three settings. They
    weigh MBR's choice only: greedy decoding (mbr_samples 0) ignores them."""

    mbr_name_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="MBR evidence: the function's name as words (for a prompt with a Python signature), "
        "weighted; a candidate that shares its words scores higher. 0 = off.",
    )
    mbr_neighbors: int = Field(
        default=0,
        ge=0,
        le=100,
        description="MBR evidence: the responses of the N train items whose prompts are most similar "
        "(TF-IDF), from the fine-tune's own train split. 0 = off; needs mbr_neighbor_weight.",
    )
    mbr_neighbor_weight: float = Field(
        default=0.0, ge=0.0, le=10.0, description="The weight of the mbr_neighbors' responses."
    )

    @model_validator(mode="after")
    def _neighbors_and_weight(self) -> MbrEvidenceSettings:
        if bool(self.mbr_neighbors) != bool(self.mbr_neighbor_weight):
            raise ValueError(
                f"mbr_neighbors {self.mbr_neighbors} and mbr_neighbor_weight {self.mbr_neighbor_weight:g}: "
                "set both (neighbours are evidence only with a weight) or neither"
            )
        return self
