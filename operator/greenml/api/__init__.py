"""Pydantic models of the greenml.io/v1alpha1 API: the one source of truth.

`crds/` is generated from these models (`greenml crds`); a test fails when the two drift.
"""
from greenml.api.common import Condition, Decision
from greenml.api.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus
from greenml.api.inferencebudget import InferenceBudget, InferenceBudgetSpec, InferenceBudgetStatus

__all__ = [
    "Condition", "Decision",
    "TrainingJob", "TrainingJobSpec", "TrainingJobStatus",
    "InferenceBudget", "InferenceBudgetSpec", "InferenceBudgetStatus",
]
