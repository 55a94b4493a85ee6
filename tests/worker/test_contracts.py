"""The contract the worker validates (core.contracts) against the sampler it feeds (trainer.sample)."""

from __future__ import annotations

import dataclasses

import pytest

from core.contracts import SamplingParams, parse_sampling
from trainer.sample import SamplingParams as SamplerParams
from worker.generation import BadRequest, sampling_params


def test_the_contract_has_the_samplers_fields_and_defaults():
    sampler = {f.name: f.default for f in dataclasses.fields(SamplerParams)}
    contract = {name: field.default for name, field in SamplingParams.model_fields.items()}
    assert contract == sampler


def test_what_the_contract_accepts_the_sampler_accepts():
    checked = parse_sampling({"max_tokens": 5, "temperature": 0, "top_k": 10_000, "top_p": 1, "improbability": 1,
                              "tolerance": 10, "repetition_penalty": 10, "stop": ["."], "seed": 2**63 - 1})
    assert SamplerParams(**checked.model_dump()).seed == 2**63 - 1


@pytest.mark.parametrize("params, phrase", [({"top_p": 0}, "top_p must be more than 0"),
                                            ({"temperature": float("nan")}, "temperature"),
                                            ({"stop": [""]}, "stop sequences must not be empty"),
                                            ({"beam": 3}, "unknown sampling parameter: beam")])
def test_the_worker_refuses_what_the_contract_refuses(params, phrase):
    with pytest.raises(BadRequest, match=phrase):
        sampling_params(params, max_tokens_cap=100)


def test_the_worker_caps_length_and_sets_a_seed():
    params = sampling_params({"max_tokens": 5000, "seed": None}, max_tokens_cap=100)
    assert params.max_tokens == 100 and isinstance(params.seed, int)
