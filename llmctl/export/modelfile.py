"""An ollama Modelfile for an exported GGUF: its chat template in ollama's (Go) template language.

A Jinja chat template cannot be translated in general, so it is read by what it does: each role's text
before and after the content, the generation prompt and any default system prompt are found by rendering
marked messages. The Go template built from those pieces is then replayed here on several chats and must
give exactly the Jinja text, or the Modelfile carries no TEMPLATE (and says why) rather than a wrong one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import UsageError

OLLAMA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
RAW_TEMPLATE = "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"  # llmctl's raw completion with -s
ROLES = ("system", "user", "assistant")
MARK = {role: f"\u2063{role.upper()}-7f3a\u2063" for role in ROLES}  # text no template writes by itself


@dataclass
class ChatPieces:
    before: dict[str, str]
    after: dict[str, str]
    generation: str
    default_system: str | None

    def render(self, messages: list[dict]) -> str:
        """What the Go template built from these pieces gives, as ollama would render it."""
        if self.default_system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}] + messages
        return "".join(self.before[m["role"]] + m["content"] + self.after[m["role"]] for m in messages) + self.generation

    def go_template(self) -> str:
        branches = "{{ else if ".join(f'eq .Role "{role}" }}}}{self.before[role]}{{{{ .Content }}}}{self.after[role]}'
                                       for role in ROLES)
        return f"{{{{ range .Messages }}}}{{{{ if {branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


@dataclass
class Modelfile:
    text: str
    template: str | None
    stops: list[str]
    default_system: str | None
    notes: list[str] = field(default_factory=list)


def check_ollama_name(name: str) -> str:
    if not OLLAMA_NAME_RE.match(name):
        raise UsageError(f"invalid ollama model name '{name}'", hint="letters, digits, '.', '_', '-', '/', and one ':tag'")
    return name


def build_modelfile(gguf_name: str, tokenizer, chat: bool, context_length: int | None, stops: list[str]) -> Modelfile:
    """The Modelfile for `gguf_name` (a file beside it): FROM, TEMPLATE, SYSTEM and PARAMETER lines."""
    notes: list[str] = []
    pieces = None
    if chat:
        pieces, problem = chat_pieces(tokenizer)
        if problem:
            notes.append(f"the chat template could not be translated for ollama ({problem}); "
                         "ollama will fall back to its own reading of the GGUF's template")
    template = pieces.go_template() if pieces else None if chat else RAW_TEMPLATE
    default_system = pieces.default_system if pieces else None
    lines = ["# Written by llmctl export. Create the model with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# TEMPLATE: not translated, see the note above")
    if default_system:
        lines.append(f'SYSTEM """{default_system}"""')
    lines += [f'PARAMETER stop "{_quoted(s)}"' for s in stops]
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    if notes:
        lines[1:1] = [f"# note: {n}" for n in notes]
    return Modelfile("\n".join(lines) + "\n", template, stops, default_system, notes)


def chat_pieces(tokenizer) -> tuple[ChatPieces | None, str | None]:
    """The template's pieces, or None and why they could not be found or do not reproduce it."""
    def render(messages, generation=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def msg(role):
        return {"role": role, "content": MARK[role]}

    try:
        system = render([msg("system")])
        with_user = render([msg("system"), msg("user")])
        with_assistant = render([msg("system"), msg("user"), msg("assistant")])
        generation = render([msg("system"), msg("user")], generation=True)
        user_alone = render([msg("user")])
    except Exception as e:  # a template that raises on some role or order (e.g. one that forbids system)
        return None, f"rendering a probe chat failed: {e}"
    before, after = {}, {}
    for role, text, prefix in (("system", system, ""), ("user", with_user, system),
                               ("assistant", with_assistant, with_user)):
        if not text.startswith(prefix) or text.count(MARK[role]) != 1:
            return None, f"the {role} turn does not extend the chat before it"
        before[role], after[role] = text[len(prefix):].split(MARK[role])
    if not generation.startswith(with_user):
        return None, "the generation prompt does not extend the chat"
    head, _, tail = user_alone.partition(MARK["user"])
    default = _default_system(head.removesuffix(before["user"]), before["system"], after["system"]) \
        if head.endswith(before["user"]) and tail == after["user"] else None
    pieces = ChatPieces(before, after, generation[len(with_user):], default)
    problem = _replay(pieces, render)
    return (None, problem) if problem else (pieces, None)


def _default_system(block: str, before: str, after: str) -> str | None:
    if block and block.startswith(before) and block.endswith(after) and len(block) >= len(before) + len(after):
        return block[len(before): len(block) - len(after)]
    return None


def _replay(pieces: ChatPieces, render) -> str | None:
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "Name a colour.\nJust one."}]
    for chat in (turns, [{"role": "system", "content": "Be brief."}] + turns, turns[:1]):
        if pieces.render(chat) != render(chat, True):
            return "the template treats some turns differently (e.g. by position)"
    texts = [*pieces.before.values(), *pieces.after.values(), pieces.generation, pieces.default_system or ""]
    if any("{{" in t or "}}" in t or '"""' in t for t in texts):
        return "its text contains '{{', '}}' or '\"\"\"', which a Modelfile would read as syntax"
    return None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def ollama_create(name: str, modelfile: Path) -> dict:
    """`ollama create` if the binary is on PATH; otherwise the command to run."""
    command = ["ollama", "create", name, "-f", str(modelfile)]
    result = {"name": name, "command": " ".join(command), "ran": False}
    binary = shutil.which("ollama")
    if binary is None:
        return result
    done = subprocess.run([binary, *command[1:]], capture_output=True, text=True, timeout=1800)
    output = (done.stdout + done.stderr).strip()
    return {**result, "ran": True, "ok": done.returncode == 0,
            "output": output.splitlines()[-1] if output else ""}
