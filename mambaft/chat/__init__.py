"""Chat with a model: the text layer (`session`), fixed-prompt tables (`answers`), the notebook widget
(`widgets`, needs ipywidgets) and the terminal chat (`terminal`, `mambaft chat --model PATH`)."""
from mambaft.chat.answers import AnswerTable, answer_table
from mambaft.chat.session import ChatSession, ChatSettings, PromptReport, Reply, generate_replies
from mambaft.chat.text import ReplyDecoder

__all__ = ["ChatSession", "ChatSettings", "PromptReport", "Reply", "generate_replies", "ReplyDecoder",
           "AnswerTable", "answer_table"]
