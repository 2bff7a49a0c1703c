"""`llmctl prompt`: one prompt, one response, streamed; the building block for scripts."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import (BaseUrlOpt, JsonOpt, MaxTokensOpt, ModelOpt, RepetitionOpt, RetriesOpt, SeedOpt,
                                StopOpt, SystemOpt, TemperatureOpt, TimeoutOpt, TopKOpt, TopPOpt, state)
from llmctl.cli.output import err, print_json


def prompt(
    ctx: typer.Context,
    text: Annotated[Optional[str], typer.Argument(help="The prompt. Also read from stdin when piped (both: joined).")] = None,
    model: ModelOpt = None,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    repetition_penalty: RepetitionOpt = None,
    base_url: BaseUrlOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    json_out: JsonOpt = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Print the response only when it is complete.")] = False,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the exact rendered prompt and its token count (stderr).")] = False,
    shots: Annotated[Optional[Path], typer.Option("--shots", help='Few-shot examples: JSONL of {"input", "output"}.')] = None,
    top_probs: Annotated[int, typer.Option("--top-probs", min=0, max=100, help="Show the K likeliest next tokens with their probabilities.")] = 0,
    raw: Annotated[bool, typer.Option("--raw", help="Complete the text as is, without the chat template.")] = False,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not record this exchange in the log.")] = False,
    continue_: Annotated[bool, typer.Option("--continue", "-c", help="Continue the most recent conversation.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="With --shots: answer zero-shot and few-shot, with how likely each makes the few-shot answer's first token (not logged).")] = False,
    schema: Annotated[Optional[Path], typer.Option("--schema", help="Answer JSON matching this JSON Schema file (enforced on local models).")] = None,
    json_object: Annotated[bool, typer.Option("--json-object", help="Answer a JSON object (enforced on local models).")] = False,
    tool: Annotated[Optional[list[Path]], typer.Option("--tool", help="A function the model may call: JSON file (repeatable); the calls are printed as JSON.")] = None,
    tool_choice: Annotated[str, typer.Option("--tool-choice", help="With --tool: auto, none, required, or a function name (forces that call).")] = "auto",
) -> None:
    """Send a prompt to a model and stream the response.

    Examples: llmctl prompt "Name three rivers" · llmctl prompt -m openai:gpt-4o-mini -t 0 "2+2?" ·
    llmctl prompt --raw --top-probs 10 "The Eiffel Tower is located in"
    """
    from llmctl.logs import LogStore
    from llmctl.prompting import (build_request, log_exchange, open_backend, read_prompt_text, sampling_overrides,
                                  sampling_params, start_session)
    from llmctl.templates import load_shots

    body = read_prompt_text(text)
    cfg = state(ctx).config(sampling_overrides(temperature, top_p, top_k, seed, max_tokens, repetition_penalty,
                                               timeout, retries, system, model)).config
    log_enabled = cfg.log.enabled and not no_log
    conversation, entry = start_session(cfg, continue_, model_given=model is not None,
                                        system_given=system is not None, base_url=base_url)
    if shots is not None:
        conversation.shots = load_shots(shots)
    elif compare:
        from llmctl.errors import UsageError

        raise UsageError("--compare needs few-shot examples", hint="pass --shots FILE")
    with err.status(f"loading {entry.name}…", spinner="dots") if not json_out else nullcontext():
        backend = open_backend(entry, cfg)
    try:
        if compare:
            _show_comparison(backend, conversation, body, sampling_params(cfg, stop), raw, json_out)
            return
        request = build_request(backend, conversation, body, sampling_params(cfg, stop), raw=raw, top_probs=top_probs)
        if schema is not None or json_object or tool:
            from llmctl.structured import with_structure

            request = with_structure(request, schema=schema, json_object=json_object, tools=tool, tool_choice=tool_choice)
        rendered = backend.render(request)
        if show_prompt:
            from llmctl.cli.render import rendered_prompt_text

            err.print(rendered_prompt_text(rendered))
        response = backend.generate(request)
        if request.tools and not json_out:  # the answer may be a call: shown whole, as JSON, once it is complete
            response.text()
            if response.tool_calls:
                from dataclasses import asdict

                print_json([asdict(c) for c in response.tool_calls])
                if log_enabled:
                    log_exchange(LogStore(), conversation, backend, entry, body, response, rendered.text)
                return
            no_stream = True
        if json_out or no_stream:
            response.text()
        else:
            for delta in response:
                sys.stdout.write(delta)
                sys.stdout.flush()
        log_id = log_exchange(LogStore(), conversation, backend, entry, body, response, rendered.text) if log_enabled else None
        if json_out:
            doc = response.to_dict()
            doc.update(provider=entry.provider, conversation_id=conversation.id, log_id=log_id)
            if show_prompt:
                doc["rendered_prompt"] = {"text": rendered.text, "tokens": rendered.tokens, "mode": rendered.mode}
            print_json(doc)
            return
        if no_stream:
            sys.stdout.write(response.text())
        sys.stdout.write("\n")
        if top_probs and response.tokens:
            from llmctl.cli.output import out
            from llmctl.cli.render import probability_table

            first = response.tokens[0]
            temp = request.params.temperature
            title = f"next token after the prompt ({f'temperature {temp:g}' if temp else 'greedy; probabilities at temperature 1'})"
            out.print(probability_table(first, title))
        elif top_probs:
            err.print("[yellow]no token was generated, so there is no distribution to show[/]")
    finally:
        backend.close()


def _show_comparison(backend, conversation, body, params, raw: bool, json_out: bool) -> None:
    from llmctl.inspect.shots import compare_shots

    result = compare_shots(backend, conversation, body, params, raw=raw)
    if json_out:
        print_json(result.to_dict())
        return
    from llmctl.cli.output import out
    from llmctl.cli.render import shot_comparison_text

    out.print(shot_comparison_text(result))
