"""Chat templates: render a model's own Jinja template (`render`), learn the markup it writes for
tool calls and thinking by rendering probes (`learn`, `markup`), read answers into content,
reasoning and calls (`parser`), and force a call in the model's own format (`grammar`).

Pure: stdlib, jinja2 and `inference.grammar`; no Django, no llama_cpp."""

from inference.templates.events import AnswerEvent, CallArguments, CallEnded, CallStarted, Content, Reasoning
from inference.templates.grammar import forced_call_grammar
from inference.templates.markup import GENERIC_MARKUP, CallMarkup, CallStyle, Markup, ThinkingMarkup
from inference.templates.parser import AnswerParser
from inference.templates.render import ChatTemplate, TemplateFailed, compiled

__all__ = [
    "AnswerEvent",
    "AnswerParser",
    "CallArguments",
    "CallEnded",
    "CallStarted",
    "Content",
    "Reasoning",
    "GENERIC_MARKUP",
    "CallMarkup",
    "CallStyle",
    "ChatTemplate",
    "Markup",
    "TemplateFailed",
    "ThinkingMarkup",
    "compiled",
    "forced_call_grammar",
]
