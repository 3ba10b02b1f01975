"""Tool calls through the official client, lossless under speculation:
`tools` with `tool_choice` required, a named function, auto and none,
`parallel_tool_calls`, streamed tool-call deltas, and tool results in the
history, against a speculating and a plain cluster:

    python tests/openai/tools.py --spec-url http://127.0.0.1:30000/v1 \
        --plain-url http://127.0.0.1:30001/v1

Every call's arguments must validate against its function's parameter
schema (Python `jsonschema`), and greedy output with speculation must equal
greedy output without it. The last line is `N passed, M failed`; the exit
code is 0 only when nothing failed.
"""

import json

import jsonschema
import pair

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000}, "b": {"type": "integer", "minimum": -1000, "maximum": 1000}}, "required": ["a", "b"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two integers", "parameters": ADD}},
]
SCHEMA = {"get_weather": WEATHER, "add": ADD}
PROMPTS = ["What is the weather like in Paris?", "What is 12 plus 30?", "Is it cold in Oslo today?", "Add 7 and 5 for me."]
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def ask(c, a, content, **kw):
    return c.chat.completions.create(model=a.model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=80, tools=TOOLS, **kw)


def calls_of(msg):
    """(name, arguments) of each call, with the arguments validated."""
    out = []
    for tc in msg.tool_calls or []:
        assert tc.type == "function" and tc.id, tc
        args = json.loads(tc.function.arguments)
        jsonschema.validate(args, SCHEMA[tc.function.name])
        out.append((tc.function.name, args))
    return out


def streamed(c, a, content, **kw):
    """The content and calls of a streamed answer, put together from the
    deltas as a client does."""
    text, calls, finish = "", {}, None
    for ch in ask(c, a, content, stream=True, **kw):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        text += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None, "a call's id is sent once"
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        finish = ch.choices[0].finish_reason or finish
    assert sorted(calls) == list(range(len(calls))), calls
    out = []
    for k in sorted(calls):
        s = calls[k]
        assert s["id"] and s["name"], s
        args = json.loads(s["arguments"])
        jsonschema.validate(args, SCHEMA[s["name"]])
        out.append((s["name"], args))
    return text, out, finish


@check
def required_calls_validate_streamed_or_not_and_speculation_changes_nothing(a):
    for p in PROMPTS:
        spec, plain = (ask(c, a, p, tool_choice="required") for c in (a.spec, a.plain))
        got = calls_of(spec.choices[0].message)
        assert got, f"{p!r}: no tool call: {spec}"
        assert spec.choices[0].finish_reason == "tool_calls", spec
        assert got == calls_of(plain.choices[0].message), (p, spec, plain)
        text, scalls, finish = streamed(a.spec, a, p, tool_choice="required")
        assert (text, scalls, finish) == ("", got, "tool_calls"), (p, text, scalls, finish)


@check
def a_named_function_is_the_one_called(a):
    for name in ("add", "get_weather"):
        choice = {"type": "function", "function": {"name": name}}
        spec, plain = (ask(c, a, "What is the weather like in Paris?", tool_choice=choice) for c in (a.spec, a.plain))
        got = calls_of(spec.choices[0].message)
        assert got and all(n == name for n, _ in got), spec
        assert got == calls_of(plain.choices[0].message), (spec, plain)


@check
def parallel_tool_calls_false_gives_one_call(a):
    r = ask(a.spec, a, "What is the weather in Paris and in Rome?", tool_choice="required", parallel_tool_calls=False)
    assert len(calls_of(r.choices[0].message)) == 1, r


@check
def auto_output_that_is_a_call_becomes_tool_calls(a):
    # The regex makes the model write a call in the template's format, so
    # the auto parser must turn it into `tool_calls` (streamed or not).
    rx = '<tool_call>\n\\{"name": "add", "arguments": \\{"a": [0-9]{1,2}, "b": [0-9]{1,2}\\}\\}\n</tool_call>'
    p = "What is 12 plus 30?"
    spec, plain = (ask(c, a, p, tool_choice="auto", extra_body={"regex": "Sure\\.\n" + rx}) for c in (a.spec, a.plain))
    m = spec.choices[0].message
    got = calls_of(m)
    assert len(got) == 1 and got[0][0] == "add" and m.content == "Sure.", spec
    assert got == calls_of(plain.choices[0].message)
    text, scalls, finish = streamed(a.spec, a, p, tool_choice="auto", extra_body={"regex": "Sure\\.\n" + rx})
    assert (text.strip(), scalls, finish) == ("Sure.", got, "tool_calls"), (text, scalls, finish)
    # Without a call, auto output is plain content, equal with and without
    # speculation.
    spec, plain = (ask(c, a, "Say hello.", tool_choice="auto") for c in (a.spec, a.plain))
    assert spec.choices[0].message.content == plain.choices[0].message.content
    assert calls_of(spec.choices[0].message) == calls_of(plain.choices[0].message)


@check
def tool_choice_none_answers_in_text(a):
    r = ask(a.spec, a, "What is the weather like in Paris?", tool_choice="none")
    m = r.choices[0].message
    assert not m.tool_calls and m.content and r.choices[0].finish_reason in ("stop", "length"), r


@check
def tool_results_in_the_history_are_rendered_and_answered(a):
    msgs = [
        {"role": "user", "content": "What is the weather like in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 18, \"sky\": \"sunny\"}"},
    ]
    outs = [c.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, temperature=0, max_tokens=40) for c in (a.spec, a.plain)]
    assert outs[0].choices[0].message.content == outs[1].choices[0].message.content, outs
    assert outs[0].usage.prompt_tokens > 60, outs[0].usage
    # The result changes the prompt, so it reaches the model.
    msgs[2]["content"] = "{\"temperature\": -30, \"sky\": \"snow\"}"
    other = a.spec.chat.completions.create(model=a.model, messages=msgs, tools=TOOLS, temperature=0, max_tokens=40)
    assert other.usage.prompt_tokens != outs[0].usage.prompt_tokens or other.choices[0].message.content != outs[0].choices[0].message.content


@check
def bad_tool_requests_are_400s_that_say_what_is_wrong(a):
    c, m = a.spec, [{"role": "user", "content": "hi"}]
    mk = lambda **kw: c.chat.completions.create(model=a.model, messages=m, max_tokens=4, **kw)
    pair.expect_400(lambda: mk(tool_choice="required"), ["only allowed when tools"])
    pair.expect_400(lambda: mk(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), ["nope"])
    pair.expect_400(lambda: mk(tools=[{"type": "function", "function": {"name": "bad name"}}]), ["bad name"])
    pair.expect_400(lambda: mk(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "frob"}}}], tool_choice="required"), ["frob"])
    pair.expect_400(lambda: mk(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), ["cannot be combined"])
    pair.expect_400(lambda: c.chat.completions.create(model=a.model, max_tokens=4, messages=[{"role": "tool", "content": "x"}]), ["tool_call_id"])


def main():
    p = pair.parser(__doc__)
    a = p.parse_args()
    pair.run(CHECKS, a)


if __name__ == "__main__":
    main()
