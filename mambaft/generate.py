"""Token generation: prefill once, then O(1) work per new token (see `MambaSWELU.step`).

Greedy decoding equals the original `generate(do_sample=False)` token for token, also past
max_seq_len: the original crops its input to the last max_seq_len tokens (positions restart at 0
inside the window), and `step` reproduces that by default.

    mambaft generate --model PATH --prompt "The capital of France is" --new 20
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from mambaft.template import pad_ids

MAX_NEW = 100_000   # ~10 tokens/s on a 2-core CPU at 124M: beyond this a typo, not a wish (hours)


def _apply_repetition_penalty(logits: torch.Tensor, seen: list, penalty: float, exempt: frozenset) -> None:
    """CTRL-style: divide positive logits (multiply negative ones) of tokens already in the row,
    except `exempt` ids (stop ids and turn markers), which keep their logits."""
    for b, toks in enumerate(seen):
        ids = sorted(set(toks) - exempt)
        if not ids:
            continue
        idx = torch.tensor(ids, device=logits.device)
        vals = logits[b, idx]
        logits[b, idx] = torch.where(vals > 0, vals / penalty, vals * penalty)


def _ban_repeated_ngrams(logits: torch.Tensor, seen: list, n: int, exempt: frozenset) -> None:
    """Forbid any token that would complete an n-gram already present in the row; `exempt` ids are
    never banned (a reply must always be able to end)."""
    for b, toks in enumerate(seen):
        if len(toks) < n:
            continue
        prefix = tuple(toks[-(n - 1):]) if n > 1 else ()
        banned = {toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i:i + n - 1]) == prefix}
        banned -= exempt
        if banned:
            logits[b, sorted(banned)] = float("-inf")


# Below this, logits / temperature overflows float32 (max 3.4e38) for logit gaps of ~1e36: the
# softmax turns into NaN and the "samples" are garbage. 1e-4 already is argmax in practice.
MIN_TEMPERATURE = 1e-4


def check_temperature(temperature: float) -> float:
    """0 (greedy) or a finite temperature >= MIN_TEMPERATURE; anything else is refused, named."""
    from mambaft.config import ConfigError
    t = float(temperature)
    if not math.isfinite(t) or t < 0 or 0 < t < MIN_TEMPERATURE:
        raise ConfigError(f"temperature={temperature!r}: expected 0 (greedy) or a finite number >= "
                          f"{MIN_TEMPERATURE:g}")
    return t


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [B, V] -> next ids [B]. temperature 0 = greedy (argmax).

    Top-k is applied first so that top-p sorts only k values, and the draw is an inverse-CDF lookup
    (cumsum + searchsorted): over a 50257-wide row, a full sort costs ~11 ms and torch.multinomial
    ~3.5 ms on one CPU thread, against ~0.05 ms for the lookup."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    idx = None                                                  # candidate ids, when a subset is kept
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        logits, idx = torch.topk(logits, top_k, dim=-1)         # [B, k], sorted descending
    if top_p is not None and 0 < top_p < 1:
        if idx is None:
            logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs            # mass of the better candidates
        logits = logits.masked_fill(before > top_p, float("-inf"))  # keep the token that crosses top_p
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)   # [B, n]
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1).squeeze(1)  # [B]
    return choice if idx is None else idx.gather(1, choice[:, None]).squeeze(1)


@torch.no_grad()
def generate(model, input_ids: Union[torch.Tensor, Sequence[Sequence[int]]], max_new_tokens: int = 100,
             temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             stop_token_ids: Sequence[int] = (), pad_token_id: Optional[int] = None,
             exempt_token_ids: Sequence[int] = (), min_new_tokens: int = 0,
             seed: Optional[int] = None, stream: Optional[Callable[[int, int], Optional[bool]]] = None,
             ) -> Union[torch.Tensor, list]:
    """Generate up to `max_new_tokens` per prompt.

    Args:
        input_ids: [B, L] tensor (like the original) or a list of id lists of any lengths.
        temperature: 0 = greedy; > 0 samples (with optional top_k / top_p).
        repetition_penalty, no_repeat_ngram_size: anti-loop controls (1.0 / 0 = off). They look at
            the tokens of the reply being written only, never at the prompt, and never touch
            `stop_token_ids` or `exempt_token_ids`. Hugging Face's `generate` penalises the whole
            input instead; in a chat that input holds the end token after every earlier answer and
            the "\nUser" marker before every turn, so from turn 2 on its penalty pushes the end token
            down and its n-gram ban forbids (".", end) and ("\n", "User"): replies could no longer
            stop. Penalising the user's words is not wanted either: an answer should repeat the
            question's names ("the capital of France is Paris").
        stop_token_ids: a row stops after emitting one of these (the token is kept).
        min_new_tokens: a row cannot emit a stop id before this many new tokens (HF's
            `min_new_tokens`): the chat uses 1, so a reply is never empty by the end token alone.
        exempt_token_ids: more ids the anti-loop controls never touch (the chat passes the tokens of
            its turn marker "\nUser", so a base model can still open the next turn and stop).
        stream: called as stream(row, token) for every new token; returning True stops that row
            (the text layer uses this for stop strings).
    Returns: a [B, L + T] tensor for tensor input (rows that stopped early are padded with
        `pad_token_id`, default the first stop id, else 0); a list of full id lists otherwise.
    """
    temperature = check_temperature(temperature)
    as_tensor = isinstance(input_ids, torch.Tensor)
    rows = [list(map(int, r)) for r in (input_ids.tolist() if as_tensor else input_ids)]
    was_training = model.training
    model.eval()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model.token_embedding.weight.device).manual_seed(seed)
    try:
        logits, state = model.prefill(rows)
        B = len(rows)
        new: list = [[] for _ in range(B)]
        done = [False] * B
        stops = set(int(s) for s in stop_token_ids)
        exempt = frozenset(stops | {int(t) for t in exempt_token_ids})
        for _ in range(max_new_tokens):
            if repetition_penalty != 1.0:
                _apply_repetition_penalty(logits, new, repetition_penalty, exempt)
            if no_repeat_ngram_size > 0:
                _ban_repeated_ngrams(logits, new, no_repeat_ngram_size, exempt)
            if stops and min_new_tokens > 0:
                early = [b for b in range(B) if len(new[b]) < min_new_tokens]
                if early:
                    logits[torch.tensor(early)[:, None], torch.tensor(sorted(stops))[None, :]] = float("-inf")
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            for b in range(B):
                if done[b]:
                    continue
                t = int(nxt[b])
                new[b].append(t)
                if t in stops or (stream is not None and stream(b, t)):
                    done[b] = True
            if all(done):
                break
            logits = model.step(nxt, state)
    finally:
        model.train(was_training)
    if not as_tensor:
        return [r + n for r, n in zip(rows, new)]
    pad = pad_token_id if pad_token_id is not None else (min(stops) if stops else 0)
    return pad_ids([r + n for r, n in zip(rows, new)], pad).to(input_ids.device)
