"""MambaSWELU in transformers: an adapter around mambaft's own model (written by `mambaft export`).

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

The model is NOT defined here. `mambaswelu.py` beside this file is mambaft's model file
(mambaft/model/mambaswelu.py, with its kernels and selective path), written into the folder with
only its imports flattened (mambaft.hf.ship), so every number is mambaft's. This file translates
transformers' calling conventions into that model's:

    transformers                    mambaft's MambaSWELU
    attention_mask [B, L] (padding) positions [B, L]: each row's real tokens numbered from 0, so the
                                    conv window (and the selective scan) restart at its first one
    position_ids [B, L] (packing)   positions [B, L]: a conversation starts at every 0
    use_cache=True / the state      prefill(rows) / step(tokens, state): O(1) per new token
    num_items_in_batch              the summed loss divided by it (gradient accumulation)
    last_hidden_state               features(ids): the dense head's output, what lm_head projects

Layout (transformers' usual one, so TRL, PEFT and the Trainer find the parts they look for):
    MambaSWELUForCausalLM.model  = MambaSWELUModel, which IS mambaft's MambaSWELU (same submodules,
                                   weights "model." + mambaft's names; lm_head tied to the embedding)
Not supported, refused with an error: beam search (the decoding state is not reordered between
beams), inputs_embeds, an attention_mask with a hole inside a row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .configuration_mambaswelu import MambaSWELUConfig
from .mambaswelu import IGNORE_INDEX, MambaSWELU

# Keyword arguments clients pass that change nothing here (the model has no attention and returns no
# per-layer states); anything else is refused rather than silently dropped.
_IGNORED_KWARGS = ("return_dict", "output_attentions", "output_hidden_states", "cache_position")


def row_positions(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                  position_ids: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """mambaft's `positions` [B, L] for a batch, or None (every row is one unpadded sequence).

    position_ids win (packed rows: a conversation starts at every 0). Otherwise the mask numbers each
    row's real tokens 0, 1, ...; a padding token gets 0 (a one-token "conversation" of its own, whose
    output nobody reads), so nothing reaches from the padding into the real tokens."""
    B, L = input_ids.shape
    if position_ids is not None:
        return position_ids.to(input_ids.device).long().expand(B, L)
    if attention_mask is None:
        return None
    mask = attention_mask.to(input_ids.device).bool()                          # [B, L]
    if bool(mask.all()):
        return None
    starts = (mask[:, 1:] & ~mask[:, :-1]).sum(-1) + mask[:, 0].long()         # runs of real tokens
    if bool((starts > 1).any()):
        raise ValueError("attention_mask has a hole inside a row: only left or right padding is supported")
    return (mask.long().cumsum(-1) - 1).clamp(min=0)                           # [B, L]


@dataclass
class MambaSWELUOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    mambaswelu_state: Optional[object] = None   # mambaswelu.DecodeState (generation)


class MambaSWELUPreTrainedModel(PreTrainedModel):
    config_class = MambaSWELUConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True     # MambaSWELU.features checkpoints block by block
    _no_split_modules = ["MambaBlock"]
    _is_stateful = True                        # a recurrent decoding state, no key/value cache

    def _init_weights(self, module):
        MambaSWELU._init_weights(module)        # the original's init (only for missing weights)


class MambaSWELUModel(MambaSWELUPreTrainedModel, MambaSWELU):
    """mambaft's MambaSWELU as transformers' backbone: forward returns the head features."""
    _tied_weights_keys = {"lm_head.weight": "token_embedding.weight"}

    def __init__(self, config: MambaSWELUConfig):
        MambaSWELUPreTrainedModel.__init__(self, config)
        self.build(config)                      # MambaSWELU's submodules, on this module
        self.post_init()

    def get_input_embeddings(self):
        return self.token_embedding

    def set_input_embeddings(self, value):
        self.token_embedding = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        """input_ids [B, L] -> BaseModelOutput(last_hidden_state=features [B, L, D])."""
        _check_kwargs(kwargs, inputs_embeds)
        positions = row_positions(input_ids, attention_mask, position_ids)
        if positions is not None and int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(f"a position reaches {int(positions.max())}: this model has "
                             f"{self.config.max_seq_len} (max_seq_len)")
        return BaseModelOutput(last_hidden_state=self.features(input_ids, positions))


def _check_kwargs(kwargs: dict, inputs_embeds=None) -> None:
    if inputs_embeds is not None:
        raise ValueError("MambaSWELU takes input_ids, not inputs_embeds")
    unknown = sorted(set(kwargs) - set(_IGNORED_KWARGS))
    if unknown:
        raise TypeError(f"MambaSWELU forward() got unexpected keyword argument(s) {unknown}")


class _ReplyOnly:
    """A logits processor applied to the reply only (the tokens after the prompt), leaving the end
    tokens alone: mambaft's rule for the repetition penalty and the n-gram ban (mambaft.generate).
    transformers applies both to the whole input: from a chat's second turn on, the end token that
    closes every earlier answer is then penalised or banned and replies no longer stop."""

    def __init__(self, processor, prompt_length: int, exempt: list):
        self.processor, self.prompt_length, self.exempt = processor, prompt_length, exempt

    def __call__(self, input_ids, scores):
        keep = scores[:, self.exempt].clone()
        scores = self.processor(input_ids[:, self.prompt_length:], scores)
        scores[:, self.exempt] = keep
        return scores


class MambaSWELUForCausalLM(MambaSWELUPreTrainedModel, GenerationMixin):
    accepts_loss_kwargs = True                 # num_items_in_batch: the Trainer's accumulation

    def __init__(self, config: MambaSWELUConfig):
        super().__init__(config)
        self.model = MambaSWELUModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.token_embedding

    def set_input_embeddings(self, value):
        self.model.token_embedding = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None,
                use_cache=None, mambaswelu_state=None, num_items_in_batch=None, inputs_embeds=None,
                **kwargs):
        """input_ids [B, L] -> logits [B, L, V] fp32 (and the loss for labels [B, L], shifted inside,
        -100 ignored: the mean over trained tokens, or their sum / num_items_in_batch).
        use_cache=True: generation's prefill; the logits are then each row's last real token's
        [B, 1, V] and `mambaswelu_state` carries the state. With a state: one step per given token."""
        _check_kwargs(kwargs, inputs_embeds)
        net, state = self.model, mambaswelu_state
        if state is not None:
            logits = torch.stack([net.step(input_ids[:, t], state) for t in range(input_ids.shape[1])], 1)
        elif use_cache:
            rows = (input_ids if attention_mask is None else
                    [r[m.bool()] for r, m in zip(input_ids, attention_mask.to(input_ids.device))])
            last, state = net.prefill([r.tolist() for r in rows])
            logits = last[:, None]                                     # [B, 1, V]
        else:
            f = net(input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
            logits = net._logits(f)                                    # [B, L, V] fp32
        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels need the full logits: call with use_cache=False")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX,
                                   reduction="sum" if num_items_in_batch is not None else "mean")
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
        return MambaSWELUOutput(loss=loss, logits=logits,
                                mambaswelu_state=state if use_cache or mambaswelu_state is not None else None)

    # --- generate() plumbing -----------------------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False   # generation keeps a mambaswelu.DecodeState, not a key/value cache

    def _get_logits_processor(self, generation_config, input_ids_seq_length=None, *args, **kwargs):
        if (generation_config.num_beams or 1) > 1:
            raise ValueError("MambaSWELU does not support beam search (num_beams > 1): its decoding state "
                             "is not reordered between beams; use greedy or sampling")
        processors = super()._get_logits_processor(generation_config, input_ids_seq_length, *args, **kwargs)
        eos = generation_config.eos_token_id
        exempt = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        for i, p in enumerate(processors):
            if type(p).__name__ in ("RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor"):
                if hasattr(p, "prompt_ignore_length"):
                    p.prompt_ignore_length = None          # _ReplyOnly cuts the prompt off instead
                processors[i] = _ReplyOnly(p, int(input_ids_seq_length or 0), exempt)
        return processors

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, mambaswelu_state=None,
                                      use_cache=True, **kwargs):
        if mambaswelu_state is not None:     # decoding: only the newest token goes in
            return {"input_ids": input_ids[:, -1:], "mambaswelu_state": mambaswelu_state, "use_cache": True}
        if use_cache:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
        # No cache: the original's own rule, rerun the whole (cropped) sequence for every token.
        M = self.config.max_seq_len
        if self.config.architecture == "selective" and input_ids.shape[1] > M:
            raise ValueError("use_cache=False cannot run a selective model past max_seq_len; use the cache")
        return {"input_ids": input_ids[:, -M:], "use_cache": False,
                "attention_mask": None if attention_mask is None else attention_mask[:, -M:]}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens)
        model_kwargs["mambaswelu_state"] = outputs.get("mambaswelu_state")
        return model_kwargs
