"""Scripted stand-in for TensorRT-LLM's ``tensorrt_llm`` model (Triton Python backend).

It speaks the exact tensor interface of the config it is loaded with (0.8 or recent),
so the gateway exercises the same wire protocol as production, but it "generates" a
deterministic answer derived from the last ChatML user turn. Directives in that turn
script the behaviour tests need:

    [[say:TEXT]]        answer exactly TEXT, tokenized one character at a time
    [[think:TEXT]]      reason first: "<think>\nTEXT\n</think>\n\n", one character at a time
    [[long:N]]          N tokens of readable words
    [[utf8]]            a fixed mixed ASCII / CJK / emoji answer, one character at a time
    [[tool:NAME:JSON]]  a tool call (Hermes <tool_call> if the prompt mentions it, else ReAct)
    [[delay:MS]]        sleep MS milliseconds before each token
    [[error:K]]         fail with an error response after K tokens

Content directives concatenate in order of appearance.

Guided decoding (recent config, `guided_decoding_backend` set): with a `json` or
`json_schema` guide the answer is the scripted one if it already fits the guide (a
[[say:{...}]]), else a deterministic JSON instance of the schema, as if the grammar had
held every token to it. (TensorRT-LLM's xgrammar masks the logits instead; this stands in
for it, covering the schema keywords structured outputs use.)

Images (Qwen-VL): input ids >= the tokenizer config.json's vocab_size are rows of
``prompt_embedding_table`` (row = id - vocab_size), as in TensorRT-LLM. Each run of
them is one picture; its rows are read as the dev visual encoder's colour features
(platform/triton/dev/qwen_vl_visual) and, unless a content directive says otherwise,
the answer describes the pictures in order: "Picture 1 is mostly red. ...". Events for tests are appended
to ``<state_dir>/events.jsonl``. The model is decoupled: execute() only parses the
request and hands it to a thread, so slow requests never block fast ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
UTF8_ANSWER = "Héllo 你好世界 👍🎉 naïve café 日本語 done"
WHO_ANSWER = (
    "I am the dev Triton scripted model, a deterministic stand-in for a TensorRT-LLM engine."
)

DIRECTIVE_RE = re.compile(
    r"\[\[(say|think|long|utf8|tool|delay|error|flagsfinal)(?::(.*?))?\]\]", re.DOTALL
)
TOOL_HEAD_RE = re.compile(r"\[\[tool:([^:\]]+):")
SAMPLING_INPUTS = (
    "temperature",
    "runtime_top_k",
    "runtime_top_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
USER_TURN_RE = re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)

SUBJECTS = [
    "The gateway",
    "A patient operator",
    "Every token",
    "The scheduler",
    "A small model",
    "The tokenizer",
    "Our test suite",
    "The stream",
    "A careful reviewer",
    "The cache",
]
VERBS = [
    "carries",
    "measures",
    "remembers",
    "streams",
    "checks",
    "arranges",
    "counts",
    "returns",
    "explains",
    "follows",
]
OBJECTS = [
    "the quiet river of bytes",
    "a tidy list of numbers",
    "each request in its turn",
    "the final answer",
    "a bright morning sentence",
    "the shape of every tensor",
    "a friendly greeting",
    "the last user message",
    "a few honest words",
    "the long road home",
]
TAILS = [
    "before the deadline",
    "with steady hands",
    "without any surprise",
    "in plain English",
    "for the curious reader",
    "while the server hums",
    "one step at a time",
    "under a calm blue sky",
    "as the logs grow",
    "and then it rests",
]


@dataclass
class Job:
    """One parsed request: everything the worker thread needs, nothing from Triton."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    end_id: int = -1
    min_tokens: int = 0
    beam_width: int = 1
    num_sequences: int = 1
    streaming: bool = False
    exclude_input: bool = False
    return_log_probs: bool = False
    return_num_input: bool = False
    return_num_output: bool = False
    stop_words: list[list[int]] = field(default_factory=list)
    sampling: tuple[Any, ...] = ()
    pictures: list[str] = field(default_factory=list)  # descriptions of prompt-table images
    # (guided_decoding_guide_type, the guide as sent, the parsed JSON schema or None)
    guide: tuple[str, str | None, Any] | None = None


@dataclass
class Script:
    """What the last user turn asked for."""

    turn: str
    segments: list[list[int]]  # token ids per content directive, in order
    delay_s: float = 0.0
    error_after: int | None = None
    # End a stream with a flags-only FINAL after the data, as TRT-LLM's BLS model does.
    flags_only_final: bool = False


class RequestError(Exception):
    """A malformed request; becomes an error response, never a model crash."""


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.model_name = args["model_name"]
        self.declared = {item["name"] for item in config["input"]}
        self.default_exclude = params.get("exclude_input_in_output", "false").lower() == "true"
        self.max_beam_width = int(params.get("max_beam_width", "1") or 1)
        backend = params.get("guided_decoding_backend", "")
        self.guided_backend = "" if backend.startswith("${") else backend
        self.tokenizer = Tokenizer.from_file(
            os.path.join(params["tokenizer_dir"], "tokenizer.json")
        )
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # The engine's (padded) vocabulary: ids from here on index prompt_embedding_table.
        with open(os.path.join(params["tokenizer_dir"], "config.json"), encoding="utf-8") as handle:
            self.table_base = int(json.load(handle).get("vocab_size", self.vocab_size))
        self.events_path = os.path.join(params["state_dir"], "events.jsonl")
        self.char_cache: dict[str, list[int]] = {}
        # Request id -> stop flags, for TRT-LLM's `stop` control request.
        self.active: dict[str, list[threading.Event]] = {}
        self.lock = threading.Lock()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                if self._is_stop_request(request):
                    self._stop(request.request_id(), sender)
                    continue
                job = self._parse(request)
            except RequestError as exc:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL
                )
                continue
            threading.Thread(target=self._run, args=(job, sender), daemon=True).start()
        return None

    def finalize(self) -> None:
        with self.lock:
            for flags in self.active.values():
                for flag in flags:
                    flag.set()

    # ---- request parsing -------------------------------------------------------------

    def _tensor(self, request: Any, name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        array = tensor.as_numpy()
        if array.ndim == 0 or array.shape[0] != 1:
            raise RequestError(
                f"{name}: the dev model expects a batch of exactly 1, got shape {array.shape}"
            )
        return array[0]

    def _one(self, request: Any, name: str) -> Any:
        """A one-element input's element (numpy's), or None when it was not sent."""
        array = self._tensor(request, name)
        if array is None:
            return None
        flat = np.asarray(array).reshape(-1)
        if flat.size != 1:
            raise RequestError(f"{name}: expected one value, got shape {array.shape}")
        return flat[0]

    def _scalar(self, request: Any, name: str, default: Any) -> Any:
        value = self._one(request, name)
        return default if value is None else value.item()

    def _text(self, request: Any, name: str) -> str | None:
        """A one-element BYTES input as text."""
        value = self._one(request, name)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _guide(self, request: Any) -> tuple[str, str | None, Any] | None:
        kind = self._text(request, "guided_decoding_guide_type")
        if kind is None:
            return None
        if not self.guided_backend:
            raise RequestError(
                "guided decoding is not enabled: the model config sets no guided_decoding_backend"
            )
        if kind not in GUIDE_TYPES:
            raise RequestError(f"unknown guided_decoding_guide_type {kind!r}")
        guide = self._text(request, "guided_decoding_guide")
        if kind != "json" and guide is None:
            raise RequestError(f"guided_decoding_guide_type {kind!r} needs guided_decoding_guide")
        if kind not in ("json", "json_schema"):
            raise RequestError(f"the dev model guides json and json_schema only, not {kind!r}")
        schema = None
        if kind == "json_schema":
            try:
                schema = json.loads(guide or "")
            except json.JSONDecodeError as exc:
                raise RequestError(f"guided_decoding_guide is not a JSON schema: {exc}") from exc
        return kind, guide, schema

    def _is_stop_request(self, request: Any) -> bool:
        return "stop" in self.declared and bool(self._scalar(request, "stop", False))

    def _parse(self, request: Any) -> Job:
        ids = self._tensor(request, "input_ids")
        if ids is None:
            raise RequestError("input_ids is required by the dev model")
        length = int(self._scalar(request, "input_lengths", ids.shape[-1]))
        prompt = ids.reshape(-1)[:length].astype(np.int64).tolist()
        max_tokens = int(self._scalar(request, "request_output_len", 0))
        if max_tokens < 0:
            raise RequestError(f"request_output_len must be >= 0, got {max_tokens}")
        job = Job(request_id=request.request_id(), prompt=prompt, max_tokens=max_tokens)
        job.end_id = int(self._scalar(request, "end_id", -1))
        job.min_tokens = int(
            self._scalar(request, "min_tokens", self._scalar(request, "min_length", 0))
        )
        job.beam_width = int(self._scalar(request, "beam_width", 1))
        job.num_sequences = int(self._scalar(request, "num_return_sequences", 1))
        job.streaming = bool(self._scalar(request, "streaming", False))
        job.exclude_input = bool(
            self._scalar(request, "exclude_input_in_output", self.default_exclude)
        )
        job.return_log_probs = bool(self._scalar(request, "return_log_probs", False))
        job.return_num_input = bool(self._scalar(request, "return_num_input_tokens", False))
        job.return_num_output = bool(self._scalar(request, "return_num_output_tokens", False))
        job.stop_words = parse_word_list(self._tensor(request, "stop_words_list"))
        # `seed` (recent) and `random_seed` (0.8) are one knob, so both versions answer alike.
        seed = self._scalar(request, "seed", self._scalar(request, "random_seed", None))
        job.sampling = (seed,) + tuple(
            self._scalar(request, name, None) for name in SAMPLING_INPUTS
        )
        job.pictures = self._pictures(request, prompt)
        job.guide = self._guide(request)
        self._validate(job)
        return job

    def _pictures(self, request: Any, prompt: list[int]) -> list[str]:
        """Describe each run of prompt-table ids from the rows it selects."""
        runs: list[list[int]] = []
        previous = None
        for position, tok in enumerate(prompt):
            if tok >= self.table_base:
                if previous != position - 1:
                    runs.append([])
                runs[-1].append(tok - self.table_base)
                previous = position
        if not runs:
            return []
        table = self._tensor(request, "prompt_embedding_table")
        if table is None or table.ndim != 2:
            raise RequestError(
                "input ids >= vocab_size need a prompt_embedding_table [rows, hidden]"
            )
        rows = table.shape[0]
        declared = self._scalar(request, "prompt_vocab_size", rows)
        if int(declared) != rows:
            raise RequestError(
                f"prompt_vocab_size {declared} does not match the table's {rows} rows"
            )
        if max(max(run) for run in runs) >= rows:
            raise RequestError(f"a prompt-table id is beyond the table's {rows} rows")
        table = table.astype(np.float32)
        return [describe_picture(number, table[run]) for number, run in enumerate(runs, start=1)]

    def _validate(self, job: Job) -> None:
        if not 1 <= job.beam_width <= self.max_beam_width:
            raise RequestError(
                f"beam_width {job.beam_width} must be in [1, max_beam_width={self.max_beam_width}]"
            )
        if job.num_sequences < 1:
            raise RequestError(f"num_return_sequences must be >= 1, got {job.num_sequences}")
        if job.beam_width > 1 and job.num_sequences > 1:
            raise RequestError(
                "the dev model does not combine beam_width > 1 with num_return_sequences > 1"
            )
        # A documented choice: the dev model rejects streamed beam search, as some TRT-LLM versions do.
        if job.streaming and job.beam_width > 1:
            raise RequestError("streaming is not supported with beam_width > 1 in the dev model")

    # ---- cancellation ------------------------------------------------------------------

    def _stop(self, request_id: str, sender: Any) -> None:
        with self.lock:
            for flag in self.active.get(request_id, []):
                flag.set()
        sender.send(pb_utils.InferenceResponse(output_tensors=[]), flags=FINAL)

    def _register(self, request_id: str) -> threading.Event:
        flag = threading.Event()
        with self.lock:
            self.active.setdefault(request_id, []).append(flag)
        return flag

    def _unregister(self, request_id: str, flag: threading.Event) -> None:
        with self.lock:
            flags = self.active.get(request_id, [])
            if flag in flags:
                flags.remove(flag)
            if not flags:
                self.active.pop(request_id, None)

    # ---- events ------------------------------------------------------------------------

    def _event(self, event: str, job: Job, **fields: Any) -> None:
        line = json.dumps(
            {"event": event, "request_id": job.request_id, "model": self.model_name, **fields}
        )
        # One O_APPEND write per line: atomic for short lines, so threads need no lock.
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    # ---- the worker --------------------------------------------------------------------

    def _run(self, job: Job, sender: Any) -> None:
        guide = list(job.guide[:2]) if job.guide else None
        self._event("start", job, prompt_tokens=len(job.prompt), time=time.time(), guide=guide)
        flag = self._register(job.request_id)
        try:
            sequences = self._sequences(job)
            if job.streaming:
                Streamer(self, job, sender, flag).run(sequences)
            else:
                Batcher(self, job, sender, flag).run(sequences)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the client, not kill the stub
            self._event("finished", job, tokens_sent=0, reason="error", error=str(exc))
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"dev model: {exc}")),
                flags=FINAL,
            )
        finally:
            self._unregister(job.request_id, flag)

    def _sequences(self, job: Job) -> tuple[list[list[int]], Script]:
        script = self._script(job)
        count = max(job.beam_width, job.num_sequences)
        return [self._tokens_for(job, script, index) for index in range(count)], script

    def _tokens_for(self, job: Job, script: Script, index: int) -> list[int]:
        """The full token plan of one beam/sequence, already cut to request_output_len."""
        key = (script.turn, job.sampling, index)
        if job.guide is not None:
            answer = self._guided(job.guide, script, key)
        elif script.segments:
            answer = [tok for segment in script.segments for tok in segment]
            if index:
                answer = self.tokenizer.encode(f"Variant {index}: ").ids + answer
        elif job.pictures:
            answer = self.tokenizer.encode(" ".join(job.pictures)).ids
        else:
            answer = self.tokenizer.encode(default_answer(script.turn, key)).ids
        if job.end_id < 0:
            # Like TRT-LLM without an end id: never stop early, keep talking to the limit.
            return (answer + self._filler(key, job.max_tokens - len(answer)))[: job.max_tokens]
        answer = answer + self._filler(key, job.min_tokens - len(answer))
        if len(answer) >= job.max_tokens:
            return answer[: job.max_tokens]
        return answer + [job.end_id]

    def _guided(self, guide: tuple[str, str | None, Any], script: Script, key: Any) -> list[int]:
        """The scripted answer if it fits the guide, else an instance of the guide."""
        if script.segments:
            answer = [tok for segment in script.segments for tok in segment]
            if guide_fits(guide, self.tokenizer.decode(answer)):
                return answer
        rng = random.Random(_digest(("guide", key)))
        schema = guide[2] if guide[2] is not None else {"properties": {"answer": {}}}
        instance = schema_instance(schema, schema, rng, depth=0)
        return self.tokenizer.encode(json.dumps(instance, ensure_ascii=False)).ids

    def _filler(self, key: tuple[Any, ...], count: int) -> list[int]:
        """`count` tokens of readable words, deterministic in `key`."""
        if count <= 0:
            return []
        rng = random.Random(_digest(("filler", key)))
        tokens: list[int] = []
        while len(tokens) < count:
            tokens += self.tokenizer.encode(" " + sentence(rng)).ids
        return tokens[:count]

    def _script(self, job: Job) -> Script:
        # Fake prompt-table ids (>= vocab size) carry no text.
        ids = [tok for tok in job.prompt if 0 <= tok < self.vocab_size]
        prompt = self.tokenizer.decode(ids, skip_special_tokens=False)
        turn = last_user_turn(prompt)
        script = Script(turn=turn, segments=[])
        for match in DIRECTIVE_RE.finditer(turn):
            self._apply(script, match, prompt)
        return script

    def _apply(self, script: Script, match: re.Match[str], prompt: str) -> None:
        name, arg = match.group(1), match.group(2)
        if name == "say":
            script.segments.append(self._per_char(arg or ""))
        elif name == "think":
            # As reasoning models write it (Qwen3, DeepSeek-R1): the answer follows.
            script.segments.append(self._per_char(f"<think>\n{arg or ''}\n</think>\n\n"))
        elif name == "utf8":
            script.segments.append(self._per_char(UTF8_ANSWER))
        elif name == "long":
            script.segments.append(self._filler(("long", script.turn), _int(arg, name)))
        elif name == "tool":
            script.segments.append(
                self.tokenizer.encode(tool_call(script.turn, match.start(), prompt)).ids
            )
        elif name == "delay":
            script.delay_s = _int(arg, name) / 1000
        elif name == "error":
            script.error_after = _int(arg, name)
        elif name == "flagsfinal":
            script.flags_only_final = True

    def _per_char(self, text: str) -> list[int]:
        """Encode character by character so every character boundary is a token boundary."""
        out: list[int] = []
        for char in text:
            ids = self.char_cache.get(char)
            if ids is None:
                ids = self.char_cache[char] = self.tokenizer.encode(char).ids
            out += ids
        return out


# ---- response shaping ------------------------------------------------------------------


class Emitter:
    """Shared token loop: cancellation, delays, scripted errors, stop words, events."""

    def __init__(
        self, model: TritonPythonModel, job: Job, sender: Any, flag: threading.Event
    ) -> None:
        self.model, self.job, self.sender, self.flag = model, job, sender, flag
        self.sent = 0

    def cancelled(self) -> bool:
        if self.flag.is_set() or self.sender.is_cancelled():
            self.model._event("cancelled", self.job, tokens_sent=self.sent)
            self.sender.send(flags=FINAL)
            return True
        return False

    def failed(self, script: Script) -> bool:
        if script.error_after is None or self.sent < script.error_after:
            return False
        message = f"scripted failure after {script.error_after} tokens"
        self.model._event("finished", self.job, tokens_sent=self.sent, reason="error")
        self.sender.send(
            pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL
        )
        return True

    def outputs(
        self,
        ids: np.ndarray,
        lengths: np.ndarray,
        index: int,
        generated: np.ndarray,
        cum: np.ndarray,
        start: int = 0,
    ) -> list[Any]:
        """Tensors for one response: `ids` [beams, T], `lengths` [beams], `generated` [beams, G]
        whose first token is the sequence's `start`-th."""
        job = self.job
        tensors = [
            pb_utils.Tensor("output_ids", ids[np.newaxis].astype(np.int32)),
            pb_utils.Tensor("sequence_length", lengths[np.newaxis].astype(np.int32)),
        ]
        if job.return_log_probs:
            scores = log_probs(generated, start=start)
            tensors.append(pb_utils.Tensor("output_log_probs", scores[np.newaxis]))
            tensors.append(pb_utils.Tensor("cum_log_probs", cum[np.newaxis].astype(np.float32)))
        if job.num_sequences > 1:
            tensors.append(pb_utils.Tensor("sequence_index", np.array([[index]], dtype=np.int32)))
        if job.return_num_input:
            tensors.append(
                pb_utils.Tensor("num_input_tokens", np.array([[len(job.prompt)]], dtype=np.int32))
            )
        if job.return_num_output:
            count = int(lengths.sum())
            tensors.append(
                pb_utils.Tensor("num_output_tokens", np.array([[count]], dtype=np.int32))
            )
        return tensors

    def finish_reason(self, tokens: list[int]) -> str:
        if self.job.end_id >= 0 and tokens and tokens[-1] == self.job.end_id:
            return "end_id"
        return "length"


class Streamer(Emitter):
    """One response per token; sequences interleave; FINAL rides on the very last one."""

    def run(self, plan: tuple[list[list[int]], Script]) -> None:
        sequences, script = plan
        queues = [_cut_at_stop(seq, self.job.stop_words) for seq in sequences]
        reasons = [reason or self.finish_reason(seq) for seq, reason in queues]
        steps = [
            (index, pos)
            for pos in range(max(len(q) for q, _ in queues))
            for index in range(len(queues))
        ]
        steps = [(index, pos) for index, pos in steps if pos < len(queues[index][0])]
        cums = [0.0] * len(queues)
        if not steps:
            self._send_empty_final()
            return
        for number, (index, pos) in enumerate(steps):
            if self.cancelled() or self.failed(script):
                return
            if script.delay_s:
                time.sleep(script.delay_s)
            ids = np.array([[queues[index][0][pos]]])
            cums[index] += float(log_probs(ids, start=pos)[0, 0])
            cum = np.array([cums[index]], dtype=np.float32)
            is_last = number == len(steps) - 1
            tensors = self.outputs(ids, np.array([1]), index, ids, cum, start=pos)
            final_here = is_last and not script.flags_only_final
            self.sender.send(
                pb_utils.InferenceResponse(output_tensors=tensors),
                flags=FINAL if final_here else 0,
            )
            self.sent += 1
        if script.flags_only_final:
            self.sender.send(flags=FINAL)
        self.model._event("finished", self.job, tokens_sent=self.sent, reason=_overall(reasons))

    def _send_empty_final(self) -> None:
        ids = np.zeros((1, 0), dtype=np.int32)
        tensors = self.outputs(ids, np.array([0]), 0, ids, np.zeros(1, dtype=np.float32))
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL)
        self.model._event("finished", self.job, tokens_sent=0, reason="length")


class Batcher(Emitter):
    """Non-streaming: all beams in one response, or one response per returned sequence."""

    def run(self, plan: tuple[list[list[int]], Script]) -> None:
        sequences, script = plan
        cut = [_cut_at_stop(seq, self.job.stop_words) for seq in sequences]
        reasons = [reason or self.finish_reason(seq) for seq, reason in cut]
        generated = [seq for seq, _ in cut]
        # Step token by token so delay, cancellation and scripted errors behave as in streaming.
        beams = self.job.beam_width > 1
        steps = max(len(seq) for seq in generated) if beams else sum(len(seq) for seq in generated)
        for _ in range(steps):
            if self.cancelled() or self.failed(script):
                return
            if script.delay_s:
                time.sleep(script.delay_s)
            self.sent += 1
        if beams:
            self._send(generated, 0, FINAL)
        else:
            for index, seq in enumerate(generated):
                self._send([seq], index, FINAL if index == len(generated) - 1 else 0)
        self.model._event("finished", self.job, tokens_sent=self.sent, reason=_overall(reasons))

    def _send(self, generated: list[list[int]], index: int, flags: int) -> None:
        prefix = [] if self.job.exclude_input else list(self.job.prompt)
        ids, lengths = _padded([prefix + seq for seq in generated])
        new, _ = _padded(generated)
        cum = np.array([log_probs(np.array([seq]))[0].sum() for seq in generated], dtype=np.float32)
        tensors = self.outputs(ids, lengths, index, new, cum)
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack rows into [len(rows), longest] padded with -1, plus the row lengths."""
    ids = np.full((len(rows), max(len(row) for row in rows)), -1, dtype=np.int32)
    for number, row in enumerate(rows):
        ids[number, : len(row)] = row
    return ids, np.array([len(row) for row in rows])


# ---- pure helpers ----------------------------------------------------------------------


def parse_word_list(array: np.ndarray | None) -> list[list[int]]:
    """Decode TRT-LLM's [2, N] word list, validating it like the C++ backend does."""
    if array is None:
        return []
    if array.ndim != 2 or array.shape[0] != 2:
        raise RequestError(
            f"stop_words_list must have shape [1, 2, N], got [1, {', '.join(map(str, array.shape))}]"
        )
    ids, offsets = array[0].tolist(), array[1].tolist()
    words: list[list[int]] = []
    start, ended = 0, False
    for offset in offsets:
        if offset == -1:
            ended = True
            continue
        if ended or offset <= start or offset > len(ids):
            raise RequestError(f"invalid stop_words_list offsets {offsets} for {len(ids)} ids")
        words.append(ids[start:offset])
        start = offset
    return words


def _cut_at_stop(tokens: list[int], stop_words: list[list[int]]) -> tuple[list[int], str | None]:
    """Truncate right after the first completed stop sequence; the stop tokens stay."""
    for end in range(1, len(tokens) + 1):
        for word in stop_words:
            if word and end >= len(word) and tokens[end - len(word) : end] == word:
                return tokens[:end], "stop_words"
    return tokens, None


def _overall(reasons: list[str]) -> str:
    return reasons[0] if len(set(reasons)) == 1 else ",".join(reasons)


def log_probs(ids: np.ndarray, start: int = 0) -> np.ndarray:
    """Deterministic negative per-token log-probs for a [beams, T] id array (padding included)."""
    positions = np.arange(start, start + ids.shape[1])[np.newaxis, :]
    return (-0.05 - ((ids.astype(np.int64) * 31 + positions * 17) % 97) / 100.0).astype(np.float32)


def last_user_turn(prompt: str) -> str:
    turns = USER_TURN_RE.findall(prompt)
    return turns[-1] if turns else prompt


def default_answer(turn: str, key: tuple[Any, ...]) -> str:
    rng = random.Random(_digest(key))
    text = turn.strip()
    if re.sub(r"[^a-z ]", "", text.lower()).strip() == "who are you":
        return f"You said: {text} {WHO_ANSWER} {sentence(rng)}"
    if text and text[-1] not in ".!?":
        text += "."
    return f"You said: {text} {sentence(rng)}"


COLOURS = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.6, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 0.5),
}


def colour_name(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - rgb) ** 2)))


def describe_picture(number: int, rows: np.ndarray) -> str:
    """Read the dev encoder's features (cell colour in 0..2, cell y/x in 6/7) back as words."""
    colours, ys, xs = rows[:, 0:3], rows[:, 6], rows[:, 7]
    text = f"Picture {number} is mostly {colour_name(colours.mean(axis=0))}."
    left, right = (
        colour_name(colours[xs < 0.5].mean(axis=0)),
        colour_name(colours[xs >= 0.5].mean(axis=0)),
    )
    if left != right:
        text += f" It goes from {left} on the left to {right} on the right."
    top, bottom = (
        colour_name(colours[ys < 0.5].mean(axis=0)),
        colour_name(colours[ys >= 0.5].mean(axis=0)),
    )
    if top != bottom:
        text += f" It goes from {top} at the top to {bottom} at the bottom."
    return text


def sentence(rng: random.Random) -> str:
    """A readable sentence of roughly 15-30 words."""
    clauses = [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
        for _ in range(rng.randint(2, 3))
    ]
    body = ", and ".join([clauses[0]] + [c[0].lower() + c[1:] for c in clauses[1:]])
    return body + "."


def tool_call(turn: str, start: int, prompt: str) -> str:
    """Render [[tool:NAME:JSON]]; JSON is read with a JSON parser so it may contain ']]'."""
    head = TOOL_HEAD_RE.match(turn, start)
    if head is None:
        raise RequestError("[[tool:NAME:JSON]] needs a NAME")
    name = head.group(1)
    try:
        _, end = json.JSONDecoder().raw_decode(turn, head.end())
    except json.JSONDecodeError as exc:
        raise RequestError(f"[[tool:{name}:...]] arguments are not JSON: {exc}") from exc
    arguments = turn[head.end() : end]
    if "<tool_call>" in prompt:
        return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'
    return f"Thought: I should call {name}.\nAction: {name}\nAction Input: {arguments}"


# ---- guided decoding: which JSON fits a schema, and one that does ------------------------


def guide_fits(guide: tuple[str, str | None, Any], text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if guide[0] == "json":
        return isinstance(value, (dict, list))
    return schema_fits(guide[2], value, guide[2])


def _resolve(schema: Any, root: Any) -> Any:
    """Follow local $refs ("#/$defs/Name")."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        target: Any = root
        for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
            if part:
                target = target[part]
        schema, seen = target, seen + 1
    return schema


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, types.get(kind, object))


def schema_fits(schema: Any, value: Any, root: Any) -> bool:
    """Whether `value` fits `schema`: type, enum, const, properties, required,
    additionalProperties, items, anyOf/oneOf/allOf and local $refs."""
    schema = _resolve(schema, root)
    if schema is True or schema == {}:
        return True
    if not isinstance(schema, dict):
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(schema_fits(s, value, root) for s in schema[key]):
            return False
    if not all(schema_fits(s, value, root) for s in schema.get("allOf", ())):
        return False
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_type(value, kind) for kind in kinds):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", ())):
            return False
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            rule = properties.get(name, extra)
            if rule is False or (isinstance(rule, dict) and not schema_fits(rule, item, root)):
                return False
    if isinstance(value, list) and "items" in schema:
        return all(schema_fits(schema["items"], item, root) for item in value)
    return True


def schema_instance(schema: Any, root: Any, rng: random.Random, depth: int) -> Any:
    """A deterministic value that fits `schema` (all properties, one item per array)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], root, rng, depth)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        kinds = next((kind for kind in kinds if kind != "null"), "null")
    if kinds is None:
        kinds = "object" if "properties" in schema else "string"
    if kinds == "object":
        properties = schema.get("properties", {})
        # Deep in a recursive schema, only what is required.
        names = properties if depth < 6 else schema.get("required", ())
        return {name: schema_instance(properties[name], root, rng, depth + 1) for name in names}
    if kinds == "array":
        count = max(int(schema.get("minItems", 1 if depth < 6 else 0)), 0)
        return [
            schema_instance(schema.get("items", {}), root, rng, depth + 1) for _ in range(count)
        ]
    if kinds == "integer":
        low = int(schema.get("minimum", 0))
        return rng.randint(low, max(low, int(schema.get("maximum", low + 100))))
    if kinds == "number":
        low = float(schema.get("minimum", 0))
        return round(rng.uniform(low, max(low, float(schema.get("maximum", low + 100)))), 2)
    if kinds == "boolean":
        return rng.random() < 0.5
    if kinds == "null":
        return None
    return rng.choice(OBJECTS)


def _int(arg: str | None, name: str) -> int:
    try:
        value = int(arg or "")
    except ValueError as exc:
        raise RequestError(f"[[{name}:N]] needs an integer, got {arg!r}") from exc
    if value < 0:
        raise RequestError(f"[[{name}:N]] needs a non-negative integer, got {value}")
    return value


def _digest(key: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")
