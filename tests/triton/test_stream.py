"""The Triton core against the real dev Triton: one stream per request, the final response."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmgateway.textgen.tokenizer import load_text_model
from llmgateway.triton.pool import get_pool
from llmgateway.triton.stream import TritonStream, build_request
from tests.conftest import TOKENIZER


def _prompt(text: str) -> np.ndarray:
    model = load_text_model(TOKENIZER)
    return np.asarray(model.encode(model.render_chat([{"role": "user", "content": text}])))


async def _collect(devtriton, model: str, text: str, *, streaming: bool = True):
    pool = get_pool(devtriton.grpc_url)
    spec = await pool.model_spec(model)
    ids = _prompt(text)
    request = build_request(
        spec,
        request_id=f"stream-test-{model}-{text[:8]}",
        inputs={
            "input_ids": ids,
            "input_lengths": np.array([len(ids)]),
            "request_output_len": np.array([64]),
            "end_id": np.array([load_text_model(TOKENIZER).end_id]),
            "streaming": np.array([streaming]),
            "exclude_input_in_output": np.array([True]),
            "not_declared_anywhere": np.array([1]),  # silently left out, never sent
        },
        outputs=["output_ids", "sequence_length"],
    )
    stream = TritonStream(pool, spec, request, deadline_s=10)
    return [r async for r in stream.responses()]


@pytest.mark.parametrize("model", ["tensorrt_llm", "tensorrt_llm_v08"])
async def test_a_flags_only_final_response_reaches_us_and_ends_the_stream(devtriton, model):
    responses = await asyncio.wait_for(
        _collect(devtriton, model, "[[say:abc]][[flagsfinal]]"), timeout=5
    )
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert "output_ids" not in responses[-1].outputs  # the empty final response
    tokens = [int(t) for r in responses[:-1] for t in r.outputs["output_ids"].reshape(-1)]
    assert load_text_model(TOKENIZER).decode(tokens) == "abc"  # end_id is skipped


@pytest.mark.parametrize("model", ["tensorrt_llm", "tensorrt_llm_v08"])
async def test_the_final_flag_rides_on_the_last_data_response(devtriton, model):
    responses = await asyncio.wait_for(_collect(devtriton, model, "[[say:abc]]"), timeout=5)
    assert responses[-1].final and "output_ids" in responses[-1].outputs
    assert not any(r.final for r in responses[:-1])


async def test_not_streaming_is_one_response(devtriton):
    responses = await asyncio.wait_for(
        _collect(devtriton, "tensorrt_llm", "[[say:abc]]", streaming=False), timeout=5
    )
    assert len(responses) == 1 and responses[0].final


@pytest.mark.parametrize("max_batch_size", [0, 8])
def test_scalar_inputs_pack_as_numpy_would(max_batch_size):
    """build_request packs Python scalars itself; the bytes and shapes must be numpy's."""
    from llmgateway.triton.client import DTYPES, ModelSpec, TensorSpec

    values = {
        "TYPE_BOOL": True,
        "TYPE_UINT8": 7,
        "TYPE_UINT32": 2**32 - 1,
        "TYPE_UINT64": 2**64 - 5,
        "TYPE_INT32": -(2**31),
        "TYPE_INT64": -(2**62),
        "TYPE_FP16": 0.1,
        "TYPE_FP32": 0.7,
    }
    specs = {}
    for config_type in values:
        wire, np_type = DTYPES[config_type]
        specs[config_type] = TensorSpec(config_type, wire, np_type, (1,), False)
    spec = ModelSpec("m", specs, frozenset(), False, max_batch_size)

    def built(inputs):
        request = build_request(spec, request_id="r", inputs=inputs, outputs=[])
        return [
            (t.name, t.datatype, list(t.shape), raw)
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        ]

    scalars = built(values)
    arrays = built({name: np.array([value]) for name, value in values.items()})
    assert scalars == arrays
    assert {len(raw) for _, wire, _, raw in scalars if wire == "FP16"} == {2}


def test_requests_from_one_template_keep_their_own_ids_shapes_and_contents():
    from llmgateway.triton.client import DTYPES, ModelSpec, TensorSpec

    specs = {
        name: TensorSpec(name, *DTYPES["TYPE_INT32"], (-1,), False)
        for name in ("input_ids", "input_lengths", "end_id")
    }
    spec = ModelSpec("m", specs, frozenset({"output_ids"}), True, 4)

    def built(request_id, ids, **extra):
        request = build_request(
            spec,
            request_id=request_id,
            inputs={"input_ids": np.array(ids), "input_lengths": len(ids), **extra},
            outputs=["output_ids", "not_an_output"],
        )
        return request

    first, second = built("a", [5, 6, 7]), built("b", [8])
    third = built("c", [1, 2], end_id=9)  # another combination of inputs: its own template
    assert len(spec.request_templates) == 2
    for request, request_id, ids in (
        (first, "a", [5, 6, 7]),
        (second, "b", [8]),
        (third, "c", [1, 2]),
    ):
        assert request.id == request_id and request.model_name == "m"
        assert request.parameters["triton_enable_empty_final_response"].bool_param
        assert [o.name for o in request.outputs] == ["output_ids"]
        tensors = {
            t.name: (list(t.shape), raw)
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        assert tensors["input_ids"] == ([1, len(ids)], np.array(ids, dtype=np.int32).tobytes())
        assert tensors["input_lengths"] == ([1, 1], np.int32(len(ids)).tobytes())
    assert (
        list(third.inputs[2].shape) == [1, 1]
        and third.raw_input_contents[2] == np.int32(9).tobytes()
    )


@pytest.mark.parametrize("max_batch_size", [0, 8])
def test_a_string_is_one_bytes_element_as_tritonclient_serialises_it(max_batch_size):
    """Guided decoding's guide type and guide are TYPE_STRING [1] inputs."""
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    from llmgateway.triton.client import ModelSpec, TensorSpec

    spec = ModelSpec(
        "m",
        {"guide": TensorSpec("guide", "BYTES", np.object_, (1,), True)},
        frozenset(),
        False,
        max_batch_size,
    )
    text = '{"type": "object", "title": "naïve 你好 👍"}'
    request = build_request(spec, request_id="r", inputs={"guide": text}, outputs=[])
    [tensor], [raw] = request.inputs, request.raw_input_contents
    assert tensor.datatype == "BYTES"
    assert list(tensor.shape) == ([1, 1] if max_batch_size else [1])
    assert raw == serialize_byte_tensor(np.array([text.encode()], dtype=np.object_)).item()
    assert deserialize_bytes_tensor(raw).tolist() == [text.encode()]


@pytest.mark.parametrize(
    ("declared", "backend", "guides"),
    [
        (True, "xgrammar", True),
        (True, "", False),  # TensorRT-LLM refuses guides without a backend
        (True, "${guided_decoding_backend}", False),  # the template's placeholder, left unset
        (False, "xgrammar", False),  # TensorRT-LLM 0.8: no guided-decoding inputs
    ],
)
def test_a_model_guides_decoding_with_the_input_and_a_backend(declared, backend, guides):
    from llmgateway.triton.client import parse_model_config

    inputs = [{"name": "input_ids", "data_type": "TYPE_INT32", "dims": [-1]}]
    if declared:
        inputs.append(
            {"name": "guided_decoding_guide_type", "data_type": "TYPE_STRING", "dims": [1]}
        )
    config = {
        "input": inputs,
        "parameters": {"guided_decoding_backend": {"string_value": backend}},
    }
    assert parse_model_config("m", config).guides_decoding is guides
