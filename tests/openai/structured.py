"""Structured output, lossless under speculation: 20 JSON Schemas, JSON
object mode, regular expressions and Lark/EBNF grammars, plus the official
client's `beta.chat.completions.parse`, against a speculating and a plain
cluster:

    python tests/openai/structured.py --spec-url http://127.0.0.1:30000/v1 \
        --plain-url http://127.0.0.1:30001/v1

Every output must validate (Python `jsonschema`, `re.fullmatch`) and greedy
output with speculation must equal greedy output without it. The last line
is `N passed, M failed`; the exit code is 0 only when nothing failed.
"""

import json
import re
import urllib.request

import jsonschema
import pair
from pydantic import BaseModel

S = {"type": "string", "maxLength": 24}
SCHEMAS = [
    ("a person", {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False}),
    ("a user account", {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer"}, "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"}}, "required": ["id", "email"], "additionalProperties": False}}, "required": ["user"], "additionalProperties": False}),
    ("some lottery numbers", {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 49}, "minItems": 2, "maxItems": 5}}, "required": ["numbers"], "additionalProperties": False}),
    ("your favourite colour", {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False}),
    ("a test result", {"type": "object", "properties": {"passed": {"type": "boolean"}, "score": {"type": "number", "minimum": 0, "maximum": 100}}, "required": ["passed", "score"], "additionalProperties": False}),
    ("a book", {"type": "object", "properties": {"title": S, "subtitle": S}, "required": ["title"], "additionalProperties": False}),
    ("a value that is a number or a word", {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]}}, "required": ["value"], "additionalProperties": False}),
    ("a shopping list", {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 15}, "qty": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["name", "qty"], "additionalProperties": False}}}, "required": ["items"], "additionalProperties": False}),
    ("a US zip code", {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["zip"], "additionalProperties": False}),
    ("the year the first moon landing happened", {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 2100}}, "required": ["year"], "additionalProperties": False}),
    ("a versioned record", {"type": "object", "properties": {"version": {"const": "1.0"}, "data": {"type": "string", "maxLength": 10}}, "required": ["version", "data"], "additionalProperties": False}),
    ("a 2x2 matrix", {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": -9, "maximum": 9}}}}, "required": ["matrix"], "additionalProperties": False}),
    ("a priority level", {"type": "object", "properties": {"level": {"enum": [1, 2, 3]}}, "required": ["level"], "additionalProperties": False}),
    ("today's date", {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}, "required": ["date"], "additionalProperties": False}),
    ("a city", {"type": "object", "properties": {"city": S, "country": S, "population": {"type": "integer", "minimum": 0, "maximum": 50000000}, "capital": {"type": "boolean"}}, "required": ["city", "country", "population", "capital"], "additionalProperties": False}),
    ("tags for a blog post", {"type": "object", "properties": {"tags": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"enum": ["news", "tech", "sport"]}}}, "required": ["tags"], "additionalProperties": False}),
    ("a shape", {"type": "object", "properties": {"shape": {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["kind", "r"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["kind", "side"], "additionalProperties": False}]}},
        "required": ["shape"], "additionalProperties": False}),
    ("an airport code", {"type": "object", "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Z]+$"}}, "required": ["code"], "additionalProperties": False}),
    ("the temperature in Paris", {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60}}, "required": ["celsius"], "additionalProperties": False}),
    ("a note, or nothing", {"type": "object", "properties": {"note": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]}}, "required": ["note"], "additionalProperties": False}),
]
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def both(a, content, **kw):
    msgs = [{"role": "user", "content": content}]
    return [c.chat.completions.create(model=a.model, messages=msgs, temperature=0, **kw) for c in (a.spec, a.plain)]


@check
def json_schemas_validate_and_speculation_changes_nothing(a):
    accepted = 0
    for i, (what, schema) in enumerate(SCHEMAS):
        rf = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
        s, q = both(a, f"Reply with {what} as JSON.", max_tokens=160, response_format=rf)
        for r in (s, q):
            assert r.choices[0].finish_reason == "stop", (i, r.choices[0])
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        assert s.choices[0].message.content == q.choices[0].message.content, (i, s.choices[0].message.content, q.choices[0].message.content)
        accepted += s.usage.model_dump().get("spec_num_correct_drafts", 0)
    assert accepted > 0, "no draft was accepted under any schema"


@check
def json_object_mode_gives_an_object(a):
    s, q = both(a, "Give me a JSON object describing a cat.", max_tokens=200, response_format={"type": "json_object"})
    for r in (s, q):
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:  # cut by max_tokens: still a valid prefix of an object
            assert r.choices[0].message.content.startswith("{")
    assert s.choices[0].message.content == q.choices[0].message.content


@check
def regexes_match_and_speculation_changes_nothing(a):
    for prompt, rx in [
        ("What is your phone number?", r"\(\d{3}\) \d{3}-\d{4}"),
        ("Pick a fruit.", r"(apple|banana|cherry)"),
        ("Write an IPv4 address.", r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"),
    ]:
        s, q = both(a, prompt, max_tokens=32, extra_body={"regex": rx})
        for r in (s, q):
            assert r.choices[0].finish_reason == "stop" and re.fullmatch(rx, r.choices[0].message.content), (rx, r.choices[0])
        assert s.choices[0].message.content == q.choices[0].message.content


@check
def ebnf_grammars_are_followed(a):
    for prompt, g, rx in [
        ("Is the sky blue?", 'start: answer "."\nanswer: "yes" | "no"', r"(yes|no)\."),
        ("Add two small numbers.", 'start: NUM " + " NUM " = " NUM\nNUM: /[0-9]{1,2}/', r"\d{1,2} \+ \d{1,2} = \d{1,2}"),
        ("List three animals.", 'start: item (", " item)~2\nitem: /[a-z]{2,10}/', r"[a-z]{2,10}(, [a-z]{2,10}){2}"),
    ]:
        s, q = both(a, prompt, max_tokens=32, extra_body={"ebnf": g})
        for r in (s, q):
            assert r.choices[0].finish_reason == "stop" and re.fullmatch(rx, r.choices[0].message.content), (g, r.choices[0])
        assert s.choices[0].message.content == q.choices[0].message.content


class Person(BaseModel):
    name: str
    age: int


@check
def beta_parse_returns_a_parsed_object(a):
    r = a.spec.beta.chat.completions.parse(model=a.model, messages=[{"role": "user", "content": "Describe a person."}], max_tokens=64, temperature=0, response_format=Person)
    p = r.choices[0].message.parsed
    assert isinstance(p, Person), r


@check
def sampled_constrained_output_still_validates(a):
    what, schema = SCHEMAS[7]
    rf = {"type": "json_schema", "json_schema": {"name": "list", "schema": schema}}
    r = a.spec.chat.completions.create(model=a.model, messages=[{"role": "user", "content": f"Reply with {what} as JSON."}], max_tokens=200, temperature=1.0, seed=5, n=3, response_format=rf)
    for c in r.choices:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), schema)


def counter(a, name):
    text = urllib.request.urlopen(a.target_metrics, timeout=30).read().decode()
    m = re.search(rf"^{name} (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


@check
def the_draft_worker_proposes_only_what_the_schema_admits(a):
    # The target prunes and counts proposed nodes the grammar refuses; a
    # draft worker that drafts under the grammar leaves it nothing to prune.
    if not a.target_metrics:
        return
    names = ["aerie_target_draft_tokens_refused_total", "aerie_target_draft_tokens_proposed_total"]
    before = [counter(a, n) for n in names]
    for what, schema in SCHEMAS[:6]:
        rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        a.spec.chat.completions.create(model=a.model, messages=[{"role": "user", "content": f"Reply with {what} as JSON."}], max_tokens=64, temperature=0, response_format=rf)
    refused, proposed = (counter(a, n) - b for n, b in zip(names, before))
    assert proposed > 0 and refused == 0, f"{refused} of {proposed} proposed drafts broke the schema"


@check
def bad_constraints_are_400s_that_say_what_is_wrong(a):
    c, m = a.spec, [{"role": "user", "content": "hi"}]
    mk = lambda **kw: c.chat.completions.create(model=a.model, messages=m, max_tokens=4, **kw)
    pair.expect_400(lambda: mk(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}), ["frob"])
    pair.expect_400(lambda: mk(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), ["schema"])
    pair.expect_400(lambda: mk(response_format={"type": "yaml"}), ["yaml"])
    pair.expect_400(lambda: mk(extra_body={"regex": "(("}), ["regex"])
    pair.expect_400(lambda: mk(extra_body={"ebnf": "start: ::= nope ("}), ["constraint", "grammar", "ebnf"])
    pair.expect_400(lambda: mk(response_format={"type": "json_object"}, extra_body={"regex": "a"}), ["at most one"])


def main():
    p = pair.parser(__doc__)
    p.add_argument("--target-metrics", default="", help="the speculating cluster's target worker /metrics URL")
    a = p.parse_args()
    pair.run(CHECKS, a)


if __name__ == "__main__":
    main()
