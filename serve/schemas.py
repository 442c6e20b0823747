"""The JSON bodies serve answers with, as pydantic models (they are also the OpenAPI schema)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="short machine-readable code, e.g. 'corrupt_image'")
    detail: str = Field(description="human-readable explanation")


class TopK(BaseModel):
    label: str
    probability: float


class Referral(BaseModel):
    target: str | None = Field(None, description="'mel' (melanoma), 'malignant' (mel + bcc + akiec) or "
                                                 "'melanocytic' (P(mel) / (P(mel) + P(nv)))")
    positive_classes: list[str]
    given_classes: list[str] | None = Field(None, description="the classes the score is conditioned on "
                                                              "(null: every class)")
    score: float = Field(description="the summed calibrated probability of positive_classes, divided by that of "
                                     "given_classes when set")
    threshold: float = Field(description="operating point chosen on the validation split for sensitivity_target")
    refer: bool = Field(description="score >= threshold: this model would refer the lesion for a closer look")
    sensitivity_target: float | None = None
    chosen_on: str = "val"


class Prediction(BaseModel):
    model: str
    version: str
    probabilities: dict[str, float] = Field(description="calibrated: softmax(logits / temperature)")
    top_k: list[TopK]
    uncertainty: float = Field(ge=0.0, le=1.0, description="normalised entropy: 0 certain, 1 uniform")
    abstain: bool = Field(description="true when the top probability is below the abstain threshold or the image "
                                      "is out of distribution; the reasons are in abstain_reasons")
    abstain_reasons: list[str] = Field(default_factory=list)
    out_of_distribution: bool | None = Field(None, description="the image is unlike the model's validation images "
                                                               "(null: the model carries no such calibration)")
    referral: Referral | None = Field(None, description="the operating-point decision (null: the artifact carries "
                                                         "no operating point)")
    synthetic_training_data: bool = Field(False, description="true when the model was trained on SYNTHETIC images: "
                                                             "its answers say nothing about real lesions")
    latency_ms: float


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    probabilities: dict[str, float] | None = None
    top_k: list[TopK] | None = None
    uncertainty: float | None = None
    abstain: bool | None = None
    abstain_reasons: list[str] | None = None
    out_of_distribution: bool | None = None
    referral: Referral | None = None
    error: str | None = Field(None, description="set instead of the prediction when this image failed")
    detail: str | None = None
    status: int | None = Field(None, description="HTTP status /predict would give this image alone")


class BatchPrediction(BaseModel):
    model: str
    version: str
    results: list[BatchItem]
    synthetic_training_data: bool = False
    latency_ms: float


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta] = Field(description="what /infer takes: ONE of the preprocessed FP32 tensor "
                                                 "or encoded images (BYTES)")
    outputs: list[TensorMeta] = Field(description="what /infer gives: logits and calibrated probabilities")
    runtime_tensors: dict[str, TensorMeta] = Field(description="the model file's own input and output tensors "
                                                               "(e.g. int8, or a fixed batch of 1)")
    class_names: list[str]
    architecture: str
    kind: str
    layout: str
    max_batch: int | None
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    precision: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    class_labels: dict[str, str] = Field(default_factory=dict, description="class code → readable name")
    parity: dict[str, Any] = Field(default_factory=dict, description="export's check against PyTorch: verified, "
                                   "accepted, top1_agreement, threshold, max_abs_probs")
    synthetic_training_data: bool = Field(False, description="trained on SYNTHETIC images (the demo)")
    operating_point: dict[str, Any] | None = Field(None, description="referral threshold chosen on validation, "
                                                                     "with the sensitivity it was chosen for")


class UnavailableModel(BaseModel):
    name: str
    directory: str
    reason: str = Field(description="why serve cannot run this artifact (damaged file, manifest contradicts model, …)")


class ModelList(BaseModel):
    default: str
    models: list[ModelMetadata]
    unavailable: list[UnavailableModel] = Field(default_factory=list,
                                                description="artifacts found but not served, each with its reason")


#: the error answers every image route can give (one body shape for all: ``ErrorBody``)
ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": ErrorBody} for c in (400, 401, 404, 413, 415, 422, 503)}
