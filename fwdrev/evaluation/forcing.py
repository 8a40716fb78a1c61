"""Greedy generation with s1's budget forcing, for any backend.

A backend only continues token prompts greedily: ``generate(list[StepRequest]) ->
list[StepOutput]`` (up to ``max_new_tokens`` tokens, stopping at any of ``stop_ids``). This
module builds every request, so the ``hf`` and ``vllm`` backends receive the same ones and
apply the same stopping and forcing rules.

Without forcing: one request per problem, ``max_tokens`` new tokens, stopped by an end token.
With forcing (s1's ``max_tokens_thinking`` / ``thinking_n_ignore``):

1. thinking: the prompt + ``<|im_start|>think``; generation stops at ``<|im_start|>`` (the model
   starting its answer header) or an end token. ``num_wait`` times, such a stop is suppressed:
   the stop token is dropped and ``Wait`` appended, and thinking continues. Thinking (the
   ``Wait`` tokens included) never exceeds ``max_thinking_tokens`` (``auto``, also the default
   with ``num_wait`` alone: ``max_tokens`` minus the forcing markers minus 100 tokens left for
   the answer, as s1).
2. the answer header: ``<|im_start|>answer`` after a natural stop; after a budget cut-off
   ``\\n`` (unless the thinking ended with one) + ``<|im_start|>answer\\nFinal Answer:``, as s1.
3. answering: what is left of ``max_tokens`` (all generated and forced tokens count), stopped by
   an end token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from fwdrev.errors import UsageError

AUTO = "auto"
ANSWER_RESERVE = 100  # tokens 'auto' leaves for the answer (s1)


class StepRequest(NamedTuple):
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_ids: tuple[int, ...]


class StepOutput(NamedTuple):
    token_ids: list[int]  # generated, without the stop token
    stop_id: int | None  # the stop token that ended it; None: max_new_tokens reached


class Backend(Protocol):
    def generate(self, requests: Sequence[StepRequest]) -> list[StepOutput]: ...


@dataclass(frozen=True)
class ForcingConfig:
    max_tokens: int = 32768
    max_thinking_tokens: int | str | None = None  # None: no forcing; an int or "auto"
    num_wait: int = 0
    think_start: str = "<|im_start|>think"
    answer_start: str = "<|im_start|>answer"
    think_stop: str = "<|im_start|>"  # generated during thinking: the model ends its thinking
    cut_suffix: str = "\nFinal Answer:"  # after the answer header when the budget cut thinking off
    wait_text: str = "Wait"
    end_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

    @property
    def forcing(self) -> bool:
        return self.max_thinking_tokens is not None or self.num_wait > 0


class Generation(NamedTuple):
    token_ids: list[int]  # everything after the prompt: forced markers included, end token excluded
    thinking_tokens: int
    answer_tokens: int
    stop_reason: str  # "end", "thinking_budget" (answered after a cut-off) or "max_tokens"


def single_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise UsageError(f"{what} {text!r} is {len(ids)} tokens for this tokenizer; it must be one "
                         "(a special token of the chat template): set it for this template")
    return ids[0]


class Markers(NamedTuple):
    end_ids: tuple[int, ...]
    think_stop_ids: tuple[int, ...]
    think_start: list[int]
    answer_start: list[int]
    cut_answer_start: list[int]
    newline: list[int]
    wait: list[int]


def encode_markers(tokenizer, config: ForcingConfig) -> Markers:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    vocab = tokenizer.get_vocab()
    end_ids = {vocab[t] for t in config.end_tokens if t in vocab}
    if tokenizer.eos_token_id is not None:
        end_ids.add(tokenizer.eos_token_id)
    if not end_ids:
        raise UsageError(f"none of the end tokens {list(config.end_tokens)} is in the tokenizer's vocabulary")
    stop = single_token(tokenizer, config.think_stop, "--think_stop") if config.forcing else None
    return Markers(tuple(sorted(end_ids)), tuple(sorted(end_ids | ({stop} if stop is not None else set()))),
                   encode(config.think_start), encode(config.answer_start),
                   encode(config.answer_start + config.cut_suffix), encode("\n"), encode(config.wait_text))


def thinking_budget(config: ForcingConfig, markers: Markers) -> int:
    if config.max_thinking_tokens in (None, AUTO):  # --num_wait alone: 'auto' too
        budget = (config.max_tokens - len(markers.think_start) - len(markers.cut_answer_start)
                  - len(markers.newline) - ANSWER_RESERVE)
    else:
        budget = int(config.max_thinking_tokens)
    if budget < 1:
        raise UsageError(f"thinking budget {budget} < 1 token: raise --max_tokens ({config.max_tokens}) "
                         "or --max_thinking_tokens")
    return budget


def generate_all(backend: Backend, tokenizer, prompts: Sequence[Sequence[int]],
                 config: ForcingConfig) -> list[Generation]:
    markers = encode_markers(tokenizer, config)
    if not config.forcing:
        outputs = backend.generate([StepRequest(tuple(p), config.max_tokens, markers.end_ids) for p in prompts])
        return [plain_generation(o, tokenizer, markers) for o in outputs]
    budget = thinking_budget(config, markers)
    thoughts: list[list[int]] = [[] for _ in prompts]
    active, waits_left = list(range(len(prompts))), [config.num_wait] * len(prompts)
    cut = [False] * len(prompts)
    while active:  # one round per suppressed end of thinking
        requests = [StepRequest(tuple(prompts[i]) + tuple(markers.think_start) + tuple(thoughts[i]),
                                budget - len(thoughts[i]), markers.think_stop_ids) for i in active]
        still = []
        for i, output in zip(active, backend.generate(requests)):
            thoughts[i] += output.token_ids
            if output.stop_id is None:
                cut[i] = True
            elif waits_left[i] > 0:
                waits_left[i] -= 1
                room = budget - len(thoughts[i])
                thoughts[i] += markers.wait[:room]
                if room <= len(markers.wait):
                    cut[i] = True  # the budget ends inside (or right after) "Wait"
                else:
                    still.append(i)
        active = still
    heads = []
    for i, thought in enumerate(thoughts):
        if cut[i]:
            ends_line = bool(thought) and tokenizer.decode(thought[-1:]).endswith("\n")
            heads.append(markers.think_start + thought + ([] if ends_line else markers.newline)
                         + markers.cut_answer_start)
        else:
            heads.append(markers.think_start + thought + markers.answer_start)
    room = [config.max_tokens - len(h) for h in heads]
    asked = [i for i in range(len(prompts)) if room[i] > 0]
    outputs = dict(zip(asked, backend.generate(
        [StepRequest(tuple(prompts[i]) + tuple(heads[i]), room[i], markers.end_ids) for i in asked])))
    generations = []
    for i, head in enumerate(heads):
        answer = outputs[i] if i in outputs else StepOutput([], None)
        reason = "max_tokens" if answer.stop_id is None else ("thinking_budget" if cut[i] else "end")
        generations.append(Generation(head + answer.token_ids, len(thoughts[i]), len(answer.token_ids), reason))
    return generations


def plain_generation(output: StepOutput, tokenizer, markers: Markers) -> Generation:
    """Without forcing, thinking = the tokens before the answer header, if the model wrote one."""
    ids, header = output.token_ids, markers.answer_start
    starts = [k for k in range(len(ids) - len(header) + 1) if ids[k:k + len(header)] == header]
    thinking = starts[-1] if starts else len(ids)
    return Generation(ids, thinking, len(ids) - thinking, "end" if output.stop_id is not None else "max_tokens")
