"""The generate job's contracts (core.contracts): the request the worker receives, the sampling parameters
the sampler reads as they are, and the liveness timings whose order is checked at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.contracts import GenerateRequest, GenerateResult, Liveness, SamplingParams, parse_sampling
from core.settings import SettingsError, load_settings
from worker.serve.runtime import Runtime


def test_there_is_one_sampling_params_and_the_sampler_reads_it():
    import trainer.sample

    assert trainer.sample.Stream.__annotations__["params"] in ("SamplingParams", SamplingParams)
    assert not hasattr(trainer.sample, "SamplingParams") or trainer.sample.SamplingParams is SamplingParams


@pytest.mark.parametrize("params, phrase", [({"top_p": 0}, "top-p must be more than 0"),
                                            ({"temperature": float("nan")}, "temperature"),
                                            ({"stop": [""]}, "stop sequences must not be empty"),
                                            ({"beam": 3}, "unknown sampling parameter: beam")])
def test_the_contract_refuses_bad_sampling_with_the_reason(params, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse_sampling(params, labels=True)


@pytest.mark.parametrize("params", [{"top_p": 0}, {"beam": 3}, {"temperature": -1}])
def test_a_request_with_bad_sampling_is_refused_before_it_reaches_a_worker(params):
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate({"checkpoint_id": 1, "params": params})


def test_a_request_round_trips_as_json_and_keeps_only_what_was_set():
    request = GenerateRequest(checkpoint_id=3, persona="alice", prompt="Alice", params={"temperature": 0.8},
                              blend=[{"checkpoint_id": 3, "weight": 0.7}, {"checkpoint_id": 4, "weight": 0.3}])
    payload = request.payload()
    assert payload["params"] == {"temperature": 0.8}
    assert GenerateRequest.model_validate(payload) == request


def test_a_blend_must_start_with_the_requests_checkpoint():
    with pytest.raises(ValidationError, match="first being the request's checkpoint"):
        GenerateRequest(checkpoint_id=3, blend=[{"checkpoint_id": 4, "weight": 0.5}, {"checkpoint_id": 3,
                                                                                      "weight": 0.5}])


def test_the_runtime_caps_length_and_draws_a_seed():
    runtime = Runtime(settings=load_settings(max_generate_tokens=100))
    params = runtime.sampling(SamplingParams(max_tokens=5000))
    assert params.max_tokens == 100 and isinstance(params.seed, int)
    assert runtime.sampling(SamplingParams(seed=7)).seed == 7


def test_a_result_reads_back_from_its_json():
    result = GenerateResult(text="x", full_text="a x", probability={"mean": 0.5, "picks": [["x", 0.1]]})
    assert GenerateResult.model_validate(result.model_dump(mode="json")) == result


@pytest.mark.parametrize("jobs, seconds", [(1, 0.5), (32, 0.5), (64, 1.0), (128, 2.0), (5000, 2.0)])
def test_partial_texts_are_spaced_by_how_many_jobs_share_the_worker(jobs, seconds):
    """Every partial_interval while few run; all together at most partial_rate writes a second; never less
    often than the heartbeat (the bot's proof that a job lives)."""
    from worker.serve.delivery import partial_spacing

    assert partial_spacing(jobs, Liveness()) == pytest.approx(seconds)


def test_the_default_liveness_timings_are_in_order():
    liveness = Liveness()
    assert liveness.takeover + liveness.partial_heartbeat < liveness.stall


@pytest.mark.parametrize("timings, order", [
    ({"lease": 45}, "before another worker takes it over"),
    ({"stall_notice": 1}, "partial_heartbeat < stall_notice"),
    ({"result_retry": 60}, "result_retry <= outage"),
])
def test_timings_out_of_order_are_refused_naming_the_order(timings, order):
    with pytest.raises(ValueError, match=order):
        Liveness(**timings)


def test_a_lease_that_breaks_the_order_is_refused_at_start_up(monkeypatch):
    monkeypatch.setenv("IMPROBABLE_GENERATE_LEASE_SECONDS", "45")
    with pytest.raises(SettingsError, match="lease .* < stall"):
        load_settings()
