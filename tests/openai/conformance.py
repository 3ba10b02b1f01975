"""OpenAI API conformance of Aerie's router, checked with the official
`openai` Python client against a running cluster.

    python tests/openai/conformance.py --base-url http://127.0.0.1:30000/v1 \
        --model smollm2 --api-key KEY

Every check asserts behaviour that a broken router would fail. The last line
is `N passed, M failed`; the exit code is 0 only when nothing failed.
"""

import argparse
import sys
import traceback

import httpx
import openai

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def chat(c, model, content, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


@check
def models_list(c, a):
    ids = [m.id for m in c.models.list().data]
    assert a.model in ids, ids


@check
def chat_greedy_hits_max_tokens_with_length(c, a):
    r = chat(c, a.model, "Count from 1 to 50, separated by commas.", max_tokens=16, temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason == "length", ch.finish_reason
    assert r.usage.completion_tokens == 16, r.usage
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert ch.message.role == "assistant" and len(ch.message.content) > 0
    assert r.object == "chat.completion" and r.id


@check
def chat_natural_stop_is_stop(c, a):
    r = chat(c, a.model, "Say just the word yes.", max_tokens=64, temperature=0)
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert r.usage.completion_tokens < 64


@check
def chat_stream_equals_non_stream_and_reports_usage(c, a):
    prompt = "Name three rivers in Europe."
    whole = chat(c, a.model, prompt, max_tokens=24, temperature=0)
    chunks = list(chat(c, a.model, prompt, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content, (text, whole.choices[0].message.content)
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"], finals
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 24, usage
    assert chunks[-1].usage is not None and chunks[-1].choices == []


@check
def continuous_usage_stats_puts_usage_on_every_chunk(c, a):
    chunks = list(chat(c, a.model, "Name three rivers in Europe.", max_tokens=12, temperature=0, stream=True,
                       stream_options={"include_usage": True, "continuous_usage_stats": True}))
    content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert content and all(ch.usage is not None for ch in content), chunks
    counts = [ch.usage.completion_tokens for ch in content]
    assert counts == sorted(counts) and counts[-1] <= 12 and counts[0] >= 1, counts
    assert chunks[-1].usage.completion_tokens == 12


@check
def continue_final_message_continues_the_assistant_turn(c, a):
    msgs = [{"role": "user", "content": "List the first five planets from the Sun."},
            {"role": "assistant", "content": "1. Mercury\n2. Venus\n3."}]
    r = c.chat.completions.create(model=a.model, messages=msgs, max_tokens=8, temperature=0,
                                  extra_body={"continue_final_message": True, "add_generation_prompt": False})
    text = r.choices[0].message.content
    # It goes on with the list (" Earth"), not a new answer from the top.
    assert "Earth" in text and "Mercury" not in text, text
    try:
        c.chat.completions.create(model=a.model, messages=msgs[:1], max_tokens=4, extra_body={"continue_final_message": True})
        raise AssertionError("continuing a user message must fail")
    except openai.BadRequestError as e:
        assert "last message" in str(e), e


@check
def chat_stream_without_usage_has_none(c, a):
    chunks = list(chat(c, a.model, "Hello!", max_tokens=8, temperature=0, stream=True))
    assert all(getattr(ch, "usage", None) is None for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"


@check
def completions_plain_and_stream(c, a):
    r = c.completions.create(model=a.model, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 12
    s = list(c.completions.create(model=a.model, prompt="The capital of France is", max_tokens=12, temperature=0, stream=True))
    assert "".join(x.choices[0].text for x in s if x.choices) == r.choices[0].text
    r2 = c.completions.create(model=a.model, prompt=["The capital of France is"], max_tokens=12, temperature=0)
    assert r2.choices[0].text == r.choices[0].text


@check
def stop_strings_cut_and_finish_with_stop(c, a):
    base = chat(c, a.model, "Count from 1 to 50, separated by commas.", max_tokens=40, temperature=0).choices[0].message.content
    # A three-character stop taken from the middle of the greedy answer,
    # so it exists and most likely spans a token boundary.
    mid = len(base) // 2
    stop = base[mid : mid + 3]
    assert len(base) > 10 and stop.strip(), base
    r = chat(c, a.model, "Count from 1 to 50, separated by commas.", max_tokens=40, temperature=0, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == base[: base.index(stop)], (r.choices[0].message.content, base)
    assert r.choices[0].finish_reason == "stop"
    s = list(chat(c, a.model, "Count from 1 to 50, separated by commas.", max_tokens=40, temperature=0, stop=stop, stream=True))
    assert "".join(x.choices[0].delta.content or "" for x in s if x.choices) == base[: base.index(stop)]


@check
def seed_reproducible_at_temperature(c, a):
    kw = dict(max_tokens=24, temperature=0.9, seed=1234)
    x = chat(c, a.model, "Write a short poem about the sea.", **kw).choices[0].message.content
    y = chat(c, a.model, "Write a short poem about the sea.", **kw).choices[0].message.content
    assert x == y, (x, y)


@check
def speculative_usage_extension(c, a):
    if not a.expect_spec:
        return
    r = c.chat.completions.create(model=a.model, messages=[{"role": "user", "content": "List the planets."}], max_tokens=32, temperature=0)
    u = r.usage.model_dump()
    for k in ("spec_verify_ct", "spec_accept_length", "spec_accept_rate", "spec_num_correct_drafts"):
        assert k in u, u
    assert u["spec_accept_length"] >= 1.0


def expect_error(fn, cls, status, code=None, param=None):
    try:
        fn()
    except cls as e:
        assert e.status_code == status, (e.status_code, e)
        body = e.body or {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        if code:
            assert err.get("code") == code, err
        if param:
            assert err.get("param") == param or param in str(err.get("message")), err
        return
    raise AssertionError(f"expected {cls.__name__} ({status})")


@check
def unknown_model_is_404(c, a):
    expect_error(lambda: chat(c, "no-such-model", "hi", max_tokens=4), openai.NotFoundError, 404, "model_not_found")


@check
def unknown_field_is_400_naming_it(c, a):
    expect_error(lambda: chat(c, a.model, "hi", max_tokens=4, extra_body={"frobnicate": 1}), openai.BadRequestError, 400, param="frobnicate")


@check
def context_length_exceeded(c, a):
    expect_error(lambda: chat(c, a.model, "hi", max_tokens=10**9), openai.BadRequestError, 400, "context_length_exceeded")
    expect_error(lambda: chat(c, a.model, "word " * 20000, max_tokens=4), openai.BadRequestError, 400, "context_length_exceeded")


@check
def unsupported_parameters_are_400(c, a):
    expect_error(lambda: chat(c, a.model, "hi", max_tokens=4, n=33), openai.BadRequestError, 400, param="n")
    expect_error(lambda: chat(c, a.model, "hi", max_tokens=4, temperature=-1), openai.BadRequestError, 400, param="temperature")
    expect_error(lambda: c.chat.completions.create(model=a.model, messages=[], max_tokens=4), openai.BadRequestError, 400, param="messages")


@check
def auth_wrong_and_missing_key_are_401(c, a):
    if not a.api_key:
        return
    bad = openai.OpenAI(base_url=a.base_url, api_key="wrong-key", max_retries=0)
    expect_error(lambda: chat(bad, a.model, "hi", max_tokens=4), openai.AuthenticationError, 401, "invalid_api_key")
    r = httpx.post(a.base_url + "/chat/completions", json={"model": a.model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text


@check
def oversized_and_malformed_bodies(c, a):
    h = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    big = httpx.post(a.base_url + "/chat/completions", content=b"{" + b" " * (10 << 20) + b"}", headers={**h, "content-type": "application/json"}, timeout=60)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large", big.status_code
    bad = httpx.post(a.base_url + "/chat/completions", content=b'{"model": ', headers={**h, "content-type": "application/json"})
    assert bad.status_code == 400 and "error" in bad.json(), bad.text
    utf = httpx.post(a.base_url + "/chat/completions", content=b'{"model": "\xff\xfe"}', headers={**h, "content-type": "application/json"})
    assert utf.status_code == 400, utf.text
    types = httpx.post(a.base_url + "/chat/completions", json={"model": a.model, "messages": "not a list"}, headers=h)
    assert types.status_code == 400, types.text
    nf = httpx.get(a.base_url + "/no/such/path", headers=h)
    assert nf.status_code == 404 and "error" in nf.json()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--api-key", default="")
    p.add_argument("--expect-spec", action="store_true")
    a = p.parse_args()
    c = openai.OpenAI(base_url=a.base_url, api_key=a.api_key or "none", max_retries=0, timeout=120)
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn(c, a)
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
