"""mambaft's chat template and tokenizer as transformers sees them: a Jinja template + tokenizer.json.

`tokenizer.apply_chat_template(messages, tokenize=True)` must give exactly the ids of
`ChatTemplate.render` / `prompt_ids`. Two differences between the two stacks, and how they are closed:

1. mambaft tokenizes the template segment by segment ("User: hi\\n", "Assistant:", " answer", end id,
   "\\n") and concatenates; transformers renders one string and tokenizes it whole. GPT-2's
   pre-tokenizer regex gives different pieces at some joins: "User: hi \\n" then "Assistant:" is
   [.., " \\n"] alone but [.., " ", "\\n", "Assistant"] in one string. So the Jinja template writes a
   private-use character (SEGMENT_BREAK, U+E000) between segments, and the exported tokenizer's
   pre-tokenizer first splits on it and removes it: each segment is then pre-tokenized alone, as
   in mambaft.
2. mambaft's tokenizer keeps "<|endoftext|>" typed in a message as text (only the template inserts
   the end id); transformers turns that string into the end token wherever it appears. The Jinja
   template escapes it in message content as "<|" U+E000 "endoftext|>": the string no longer matches
   the special token, and the break falls where GPT-2's regex splits anyway ("<|" punctuation, then
   letters), so the text gets exactly mambaft's ids.
Cost: a U+E000 typed by a user is dropped by the exported tokenizer (mambaft would encode its 3
bytes). It is a private-use character that no text in the course's data contains.

`{% generation %}` marks what mambaft trains (labels != -100): the answer with its leading space and
the end token, so `return_assistant_tokens_mask=True` (TRL's assistant-only loss) equals the labels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from tokenizers import Tokenizer, pre_tokenizers

from mambaft.template import ChatTemplate
from mambaft.tokenizer import TextTokenizer

SEGMENT_BREAK = "\ue000"


def _lit(text: str) -> str:
    """A Jinja string literal (JSON's escapes are also Jinja's for these characters)."""
    return json.dumps(text)


def escaped(template: ChatTemplate) -> str:
    """How the end-of-turn text is written inside message content (see point 2 of the docstring)."""
    eot = template.end_of_turn
    cut = 2 if eot.startswith("<|") else 1
    return eot[:cut] + SEGMENT_BREAK + eot[cut:]


def jinja_template(template: ChatTemplate) -> str:
    """The Jinja source equivalent to `template.segments` (both train_on="all_assistant" and the
    generation prompt). Written on one line: Jinja whitespace control cannot then add or eat text."""
    t, br = template, _lit(SEGMENT_BREAK)
    content = f"message['content'] | replace({_lit(t.end_of_turn)}, {_lit(escaped(t))})"
    roles = ", ".join(_lit(r) for r in ("system", "user", "assistant"))
    return "".join([
        "{%- for message in messages -%}",
        f"{{%- set content = {content} -%}}",
        "{%- if message['role'] == 'system' -%}",
        f"{{{{ {_lit(t.system_prefix)} + content + {_lit(t.turn_separator)} + {br} }}}}",
        "{%- elif message['role'] == 'user' -%}",
        f"{{{{ {_lit(t.user_prefix)} + content + {_lit(t.turn_separator)} + {br} }}}}",
        "{%- elif message['role'] == 'assistant' -%}",
        f"{{{{ {_lit(t.assistant_prefix)} + {br} }}}}",
        f"{{%- generation -%}}{{{{ {_lit(t.answer_lead)} + content + {br} + {_lit(t.end_of_turn)} }}}}"
        "{%- endgeneration -%}",
        f"{{{{ {_lit(t.turn_separator)} + {br} }}}}",
        "{%- else -%}",
        f"{{{{ raise_exception('role ' + message['role'] + ' is not one of ' + {_lit(roles)}) }}}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{ {_lit(t.assistant_prefix)} }}}}{{%- endif -%}}",
    ])


def hf_tokenizer(tokenizer: TextTokenizer) -> Tokenizer:
    """mambaft's tokenizer with the segment-break split in front of its pre-tokenizer, and special
    tokens matched in text (transformers' behaviour; the template escapes typed ones)."""
    tok = Tokenizer.from_str(tokenizer.tok.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(SEGMENT_BREAK, "removed"),
                                                 tok.pre_tokenizer])
    tok.encode_special_tokens = False
    return tok


def mambaft_tokenizer(path: Union[str, Path]) -> TextTokenizer:
    """The exported tokenizer.json back as mambaft's tokenizer (the split removed again)."""
    path = Path(path)
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre["pretokenizers"]) == 2:
        first = pre["pretokenizers"][0]
        if first.get("type") == "Split" and first.get("pattern", {}).get("String") == SEGMENT_BREAK:
            spec["pre_tokenizer"] = pre["pretokenizers"][1]
    return TextTokenizer(Tokenizer.from_str(json.dumps(spec)), source=str(path))
