"""Speculative decoding for a local model pair: a small draft model guesses, the target checks k guesses at once.

Generating a token with a 1.5B model on a CPU costs one pass over its weights; checking k+1 tokens
in one batched pass costs little more, since the weights are read once. So the draft (say the 0.5B
of the same family) proposes k tokens greedily, the target evaluates the last chosen token plus the
k guesses in ONE forward pass with logits at every position, and `decode()` picks tokens from those
rows exactly as it would from one-token steps: a guess is accepted while it equals the token
`decode()` chooses; at the first disagreement the target's own choice is kept and the KV caches of
both models are rolled back to the accepted length (`LlamaModel.rewind`, llama.cpp's
`kv_cache_seq_rm`; the draft's `prefill` reuses its longest matching prefix).

Because the stepper only hands `decode()` the target's logits, stop strings, penalties, the n-gram
ban, streaming and cancellation are the ordinary ones, and:

* greedy output is token for token the target's own: the target runs with batch-invariant logits
  (see `rag.runtime.llama._load_settings`), so a row from a batch equals the one-token step. Known
  gap: with a few hundred tokens in the cache and rejected guesses rolled back, llama.cpp's rows
  still round differently from one-token steps now and then (cause not pinned down; SmolLM2 with a
  426-token prompt diverged after 30 tokens, where the target's top two tokens nearly tie), so
  exactness is tested on short prompts and measured on long ones (`benchmarks/speculative.py`);
* sampled output has exactly the target's distribution (with a seed, the very same tokens). With a
  greedy draft, q is one-hot at the guess d, and Leviathan et al.'s rule (accept with probability
  min(1, p(d)/q(d)) = p(d), else resample from norm(max(0, p - q))) is the same as sampling from p
  and accepting when the sample is d, which is what happens here.

The number of guesses adapts per pair (HuggingFace's assisted-generation schedule): +2 after a
round whose guesses were all accepted, -1 after one with a rejection, between 1 and `max_draft`.
Whether to draft at all is decided by measurement (`rag.runtime.draft_cost`, on for operator pairs):
when the measured acceptance and step costs predict a slowdown, the target steps alone for a while.

Operators pair models with `MIGHTY_DRAFT_MODELS="target:draft[,target:draft]"`, e.g.
`qwen2.5-coder-1.5b-instruct:qwen2.5-coder-0.5b-instruct`; `mighty serve` checks every pair at
start-up (both load, vocabularies identical token by token), and `local/<target>` then drafts while
drafting is predicted to pay (`MIGHTY_DRAFT_MIN_SPEEDUP`, default 1.0; 0 always drafts).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

import torch

from rag.runtime.decode import Decoded, OnToken, decode
from rag.runtime.draft_cost import DraftCost
from rag.runtime.llama import LlamaModel
from rag.runtime.model import LocalModel
from rag.runtime.registry import LocalModelError
from rag.runtime.sampling import SamplingOptions, ban_repeated_ngrams

DEFAULT_DRAFT = 4  # guesses in the first round
MAX_DRAFT = 8


class Speculator:
    """A `decode` stepper: the target's next-token logits, up to k+1 positions per forward pass."""

    def __init__(self, target: LlamaModel, draft: LlamaModel, options: SamplingOptions, guesses: int,
                 max_draft: int = MAX_DRAFT, cost: DraftCost | None = None) -> None:
        self.target, self.draft, self.options, self.cost = target, draft, options, cost
        self.vocab_size = target.vocab_size
        self.guesses, self.max_draft = max(1, guesses), max(1, max_draft)
        self.sequence: list[int] = []  # prompt and chosen tokens
        self.pending: deque[tuple[int, torch.Tensor]] = deque()  # (guess, target logits after it)
        self.prompt_length = 0
        self.drafted = self.accepted = 0
        self.round_accepted = 0  # guesses of the current round accepted so far

    def start(self, prompt: list[int]) -> torch.Tensor:
        self.sequence, self.prompt_length = list(prompt), len(prompt)
        self.pending.clear()
        return self.target.prefill(prompt)

    def advance(self, token: int) -> torch.Tensor:
        self.sequence.append(token)
        if self.pending:
            guess, row = self.pending.popleft()
            if guess == token:
                self.accepted += 1
                self.round_accepted += 1
                if not self.pending:  # every guess of the round accepted: guess further next time
                    self.guesses = min(self.max_draft, self.guesses + 2)
                    self._verdict(rejected=False)
                return row
            self.guesses = max(1, self.guesses - 1)
            self.pending.clear()
            self._verdict(rejected=True)
        self.target.rewind(len(self.sequence) - 1)  # the target's cache: every accepted token, nothing after
        drafting = self.cost is None or self.cost.drafting()
        # the draft reads what it has not seen (the prompt, or tokens chosen while drafting was off)
        # once: a catch-up, not what each guess costs, so the switch-off rule leaves its time out
        catch_up = drafting and len(self.sequence) - self.draft.cached_prefix(self.sequence) > self.max_draft + 1
        started = time.perf_counter()
        guesses = self._draft() if drafting else []
        drafted = time.perf_counter()
        rows = self.target.append([token, *guesses])
        if self.cost is not None:  # what the switch-off rule weighs: a round against a plain step
            verified = (time.perf_counter() - drafted) * 1000
            if guesses:
                self.cost.round(len(guesses), None if catch_up else (drafted - started) * 1000, verified)
            else:
                self.cost.plain_step(verified)
        self.drafted += len(guesses)
        self.round_accepted = 0
        self.pending.extend(zip(guesses, rows[1:]))
        return rows[0]

    def _verdict(self, rejected: bool) -> None:
        if self.cost is not None:
            self.cost.verdict(self.round_accepted, rejected)

    def finish(self, last: int) -> None:
        """Count only guesses the target judged: `decode` chose its last token without advancing past it,
        so the first guess left is judged against that token, and the rest were never needed."""
        if self.pending:
            hit = self.pending[0][0] == last
            self.accepted += int(hit)
            self.round_accepted += int(hit)
            self.drafted -= len(self.pending) - 1
            self.pending.clear()
            self._verdict(rejected=not hit)

    def _draft(self) -> list[int]:
        """Up to `guesses` greedy draft tokens after the sequence, none the generation could not use."""
        generated = len(self.sequence) - self.prompt_length
        count = min(self.guesses, self.options.max_tokens - generated - 1, self.target.n_ctx - len(self.sequence))
        if count <= 0:
            return []
        logits = self.draft.prefill(self.sequence)  # reuses the draft's cached prefix, drops its rejected guesses
        guesses: list[int] = []
        while True:
            row = ban_repeated_ngrams(logits.reshape(1, -1).clone(), [self.sequence[self.prompt_length:] + guesses],
                                      self.options.no_repeat_ngram)  # the target's chat decoding bans these too
            guesses.append(int(row.argmax()))
            if len(guesses) >= count or guesses[-1] in self.target.eos_ids:
                return guesses
            logits = self.draft.step(guesses[-1])


class PairLock:
    """Both models' locks, always target first: a speculative generation owns both KV caches."""

    def __init__(self, *locks: Any) -> None:
        self.locks = locks

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken = []
        for lock in self.locks:
            if not lock.acquire(blocking, timeout):
                for held in reversed(taken):
                    held.release()
                return False
            taken.append(lock)
        return True

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self) -> "PairLock":
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def check_vocabularies(target: LlamaModel, draft: LlamaModel) -> None:
    """A draft's token ids must mean what the target's mean; the error names both models."""
    ours, theirs = target.vocabulary(), draft.vocabulary()
    if ours == theirs:
        return
    if len(ours) != len(theirs):
        why = f"{len(theirs)} tokens against {len(ours)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        why = f"token {first} is {theirs[first]!r} in the draft and {ours[first]!r} in the target"
    raise LocalModelError(f"draft model {draft.name!r} cannot speculate for {target.name!r}: their vocabularies "
                          f"differ ({why}); a draft must share the target's tokenizer")


class SpeculativeModel(LocalModel):
    """The target model, generating with a draft model's guesses; outputs are the target's own."""

    backend = "llama.cpp"

    def __init__(self, target: LocalModel, draft: LocalModel, guesses: int = DEFAULT_DRAFT,
                 max_draft: int = MAX_DRAFT, cost: DraftCost | None = None) -> None:
        for role, model in (("target", target), ("draft", draft)):
            if not isinstance(model, LlamaModel):
                raise LocalModelError(f"speculative decoding needs GGUF models on llama.cpp; the {role} "
                                      f"{model.name!r} runs on {model.backend}")
        assert isinstance(target, LlamaModel) and isinstance(draft, LlamaModel)
        check_vocabularies(target, draft)
        self.target, self.draft = target, draft
        self.name, self.threads, self.vocab_size, self.eos_ids = target.name, target.threads, target.vocab_size, \
            target.eos_ids
        self.guesses, self.max_draft = guesses, max_draft
        self.cost = cost  # the cost-aware switch-off (None: always draft), kept across generations
        self.lock = PairLock(target.lock, draft.lock)  # type: ignore[assignment]

    def run(self, tokens: list[int], options: SamplingOptions, on_token: OnToken | None = None,
            cancel: threading.Event | None = None) -> Decoded:
        stepper = Speculator(self.target, self.draft, options, self.guesses, self.max_draft, self.cost)
        result = decode(stepper, self, tokens, options, on_token, cancel)
        stepper.finish(result.token_ids[-1])
        self.guesses = stepper.guesses  # the next generation starts from what this one learned
        result.drafted, result.accepted = stepper.drafted, stepper.accepted
        return result

    # everything else is the target's
    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        return self.target.tokenize(text, special, add_bos)

    def detokenize(self, ids: list[int]) -> str:
        return self.target.detokenize(ids)

    def encode(self, text: str) -> list[int]:
        return self.target.encode(text)

    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.target.chat_tokens(messages)

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        return self.target.prefill(tokens)

    def step(self, token: int) -> torch.Tensor:
        return self.target.step(token)

    def cached_prefix(self, tokens: list[int]) -> int:
        return self.target.cached_prefix(tokens)

    def score(self, tokens: list[int]) -> torch.Tensor:
        return self.target.score(tokens)

    def reset(self) -> None:
        self.target.reset()
        self.draft.reset()

    def set_threads(self, threads: int) -> None:
        super().set_threads(threads)
        self.target.set_threads(threads)
        self.draft.set_threads(threads)


# --- operator configuration ---------------------------------------------------------------------

_PAIRED: dict[str, SpeculativeModel] = {}
_LOCK = threading.Lock()


def draft_pairs() -> dict[str, str]:
    """`MIGHTY_DRAFT_MODELS="target:draft,..."` as {target: draft}; a malformed entry is an error."""
    pairs: dict[str, str] = {}
    setting = os.environ.get("MIGHTY_DRAFT_MODELS", "")
    for item in filter(None, (part.strip() for part in setting.split(","))):
        target, _, draft = (side.strip() for side in item.partition(":"))
        if not target or not draft or target == draft or target in pairs:
            raise LocalModelError(f"MIGHTY_DRAFT_MODELS entry {item!r} is not target:draft (two different local "
                                  "model names, one draft per target)")
        pairs[target] = draft
    chained = set(pairs) & set(pairs.values())
    if chained:
        raise LocalModelError(f"MIGHTY_DRAFT_MODELS: {sorted(chained)} cannot be both a target and a draft")
    return pairs


def paired_model(name: str) -> SpeculativeModel | None:
    """The speculative pair for a target the operator paired with a draft, loaded once; else None."""
    draft = draft_pairs().get(name)
    if draft is None:
        return None
    with _LOCK:  # loading takes seconds, but happens once per pair, at start-up when served
        key = f"{name}:{draft}"
        if key not in _PAIRED:
            from rag.runtime.cache import load_model

            # only the target's logits decide tokens: the draft keeps llama.cpp's faster defaults
            _PAIRED[key] = SpeculativeModel(load_model(name, allow_paths=False, batch_invariant=True),
                                            load_model(draft, allow_paths=False), cost=DraftCost())
        return _PAIRED[key]


def check_draft_models() -> list[str]:
    """Load and verify every configured pair (at start-up, so a bad pairing fails before serving)."""
    for target in draft_pairs():
        paired_model(target)
    return [f"{target} drafted by {draft}" for target, draft in draft_pairs().items()]
