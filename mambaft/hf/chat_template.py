"""mambaft's chat template and tokenizer as transformers sees them: a Jinja template + tokenizer.json.

`tokenizer.apply_chat_template(messages, tokenize=True)` must give exactly the ids of
`ChatTemplate.render` / `prompt_ids`. Two differences between the two stacks, and how they are closed:

1. mambaft tokenizes the template segment by segment ("User: hi\\n", "Assistant:", " answer", end id,
   "\\n") and concatenates; transformers renders one string and tokenizes it whole. GPT-2's
   pre-tokenizer regex gives other pieces at one kind of join only: a segment that ends in a
   whitespace run ("hi \\n": the message's trailing spaces, then the turn separator) followed by the
   next role prefix. Alone, " \\n" is one piece (whitespace to the end of the string); in one string
   the regex keeps the last whitespace character for the next word: " ", "\\n". So the exported
   tokenizer's pre-tokenizer first isolates every whitespace run that ends with the separator right
   before a role prefix (`boundary_pattern`), and each side is then pre-tokenized as mambaft does.
   The template's text carries no marker of any kind. The other joins ("Assistant:" then " answer",
   the answer then the end token, the end token then "\\n") already split the same in both stacks.
2. mambaft's tokenizer keeps "<|endoftext|>" typed in a message as text (only the template inserts
   the end id); transformers turns that string into the end token wherever it appears. The Jinja
   template escapes it in message content as "<|" U+E000 "endoftext|>": the string no longer matches
   the special token, and the exported pre-tokenizer removes a U+E000 only right before
   "endoftext|>", where GPT-2's regex splits anyway, so the text gets exactly mambaft's ids. That is
   the only place a private-use character appears, and only in a message that contains the end text.
Costs (tests/test_hf_export.py shows both stacks agree elsewhere): a message that itself contains
whitespace, the separator and a role prefix ("a \\nUser: b") gets other ids at that spot, and a
U+E000 typed right before "endoftext|>" is dropped. No text in the course's data contains either.

`{% generation %}` marks what mambaft trains (labels != -100): the answer with its leading space and
the end token, so `return_assistant_tokens_mask=True` (TRL's assistant-only loss) equals the labels.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Union

from tokenizers import Regex, Tokenizer, pre_tokenizers

from mambaft.template import ChatTemplate
from mambaft.tokenizer import TextTokenizer

ESCAPE = "\ue000"     # inside a typed end-of-turn text only (point 2)


def _lit(text: str) -> str:
    """A Jinja string literal (JSON's escapes are also Jinja's for these characters)."""
    return json.dumps(text)


def escaped(template: ChatTemplate) -> str:
    """How the end-of-turn text is written inside message content (see point 2 of the docstring)."""
    eot = template.end_of_turn
    cut = 2 if eot.startswith("<|") else 1
    return eot[:cut] + ESCAPE + eot[cut:]


def escape_pattern(template: ChatTemplate) -> str:
    """The escape character, where `escaped` puts it (point 2)."""
    return re.escape(ESCAPE) + f"(?={re.escape(escaped(template).split(ESCAPE, 1)[1])})"


def boundary_pattern(template: ChatTemplate) -> str:
    """A whitespace run ending with the turn separator, right before a role prefix (point 1)."""
    t = template
    if not t.turn_separator.strip() == "" or not t.turn_separator:
        raise ValueError(f"chat template {t.name!r}: the transformers export needs a whitespace "
                         f"turn_separator, got {t.turn_separator!r}")
    prefixes = "|".join(re.escape(p) for p in (t.system_prefix, t.user_prefix, t.assistant_prefix))
    return rf"\s*{re.escape(t.turn_separator)}(?={prefixes})"


def jinja_template(template: ChatTemplate) -> str:
    """The Jinja source equivalent to `template.segments` (both train_on="all_assistant" and the
    generation prompt). Written on one line: Jinja whitespace control cannot then add or eat text."""
    t = template
    content = f"message['content'] | replace({_lit(t.end_of_turn)}, {_lit(escaped(t))})"
    roles = ", ".join(_lit(r) for r in ("system", "user", "assistant"))
    return "".join([
        "{%- for message in messages -%}",
        f"{{%- set content = {content} -%}}",
        "{%- if message['role'] == 'system' -%}",
        f"{{{{ {_lit(t.system_prefix)} + content + {_lit(t.turn_separator)} }}}}",
        "{%- elif message['role'] == 'user' -%}",
        f"{{{{ {_lit(t.user_prefix)} + content + {_lit(t.turn_separator)} }}}}",
        "{%- elif message['role'] == 'assistant' -%}",
        f"{{{{ {_lit(t.assistant_prefix)} }}}}",
        f"{{%- generation -%}}{{{{ {_lit(t.answer_lead)} + content + {_lit(t.end_of_turn)} }}}}"
        "{%- endgeneration -%}",
        f"{{{{ {_lit(t.turn_separator)} }}}}",
        "{%- else -%}",
        f"{{{{ raise_exception('role ' + message['role'] + ' is not one of ' + {_lit(roles)}) }}}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{ {_lit(t.assistant_prefix)} }}}}{{%- endif -%}}",
    ])


def hf_tokenizer(tokenizer: TextTokenizer, template: ChatTemplate) -> Tokenizer:
    """mambaft's tokenizer with the two splits of the module docstring in front of its pre-tokenizer,
    and special tokens matched in text (transformers' behaviour; the template escapes typed ones)."""
    tok = Tokenizer.from_str(tokenizer.tok.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(escape_pattern(template)), "removed"),
        pre_tokenizers.Split(Regex(boundary_pattern(template)), "isolated"),
        tok.pre_tokenizer])
    tok.encode_special_tokens = False
    return tok


def mambaft_tokenizer(path: Union[str, Path]) -> TextTokenizer:
    """The exported tokenizer.json back as mambaft's tokenizer (the splits removed again; folders of
    earlier exports had one split, on U+E000)."""
    path = Path(path)
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre["pretokenizers"]) in (2, 3):
        *splits, last = pre["pretokenizers"]
        if all(p.get("type") == "Split" for p in splits):
            spec["pre_tokenizer"] = last
    return TextTokenizer(Tokenizer.from_str(json.dumps(spec)), source=str(path))
