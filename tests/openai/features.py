"""The OpenAI sampling features, lossless under speculation: logprobs,
penalties, logit_bias, min_tokens, stop_token_ids and n, checked with the
official `openai` client against two running clusters, one speculating and
one not:

    python tests/openai/features.py --spec-url http://127.0.0.1:30000/v1 \
        --plain-url http://127.0.0.1:30001/v1 --ids '{"the": 260, "period": 30}' \
        --target-metrics http://127.0.0.1:PORT/metrics

`--ids` gives token ids the checks need (the caller has the tokenizer).
Greedy output with speculation must equal greedy output without it, token
for token, under every feature; logprobs must agree to 1e-5. The last line
is `N passed, M failed`; the exit code is 0 only when nothing failed.
"""

import json
import re

import httpx
import openai
import pair

CHECKS = []
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "List five fruits and their colors.",
    "What is the capital of France? Answer in one sentence and then describe the city.",
    "Tell me a story about a robot who learns to paint.",
]
TOL = 1e-5


def check(fn):
    CHECKS.append(fn)
    return fn


def chat(c, a, content, **kw):
    return c.chat.completions.create(model=a.model, messages=[{"role": "user", "content": content}], **kw)


def both(a, content, **kw):
    """The same request against the speculating and the plain cluster."""
    return chat(a.spec, a, content, **kw), chat(a.plain, a, content, **kw)


def same_logprobs(x, y, where):
    assert len(x) == len(y), (where, len(x), len(y))
    for i, (p, q) in enumerate(zip(x, y)):
        assert p.bytes == q.bytes, (where, i, p.token, q.token)
        assert abs(p.logprob - q.logprob) <= TOL, (where, i, p.logprob, q.logprob)
        assert [t.bytes for t in p.top_logprobs] == [t.bytes for t in q.top_logprobs], (where, i)
        for s, t in zip(p.top_logprobs, q.top_logprobs):
            assert abs(s.logprob - t.logprob) <= TOL, (where, i, s.token, s.logprob, t.logprob)


@check
def logprobs_with_speculation_equal_logprobs_without(a):
    accepted = 0
    for i, p in enumerate(PROMPTS):
        s, q = both(a, p, max_tokens=32, temperature=0, extra_body={"ignore_eos": True}, logprobs=True, top_logprobs=5)
        assert s.choices[0].message.content == q.choices[0].message.content, i
        ls, lq = s.choices[0].logprobs.content, q.choices[0].logprobs.content
        assert len(ls) == 32 == s.usage.completion_tokens, (i, len(ls))
        same_logprobs(ls, lq, f"prompt {i}")
        # Greedy: each emitted token is the most likely one, and the values
        # are a distribution's logs.
        for e in ls:
            assert len(e.top_logprobs) == 5 and e.top_logprobs[0].logprob <= 0
            assert abs(e.logprob - e.top_logprobs[0].logprob) <= TOL, (e.token, e.logprob, e.top_logprobs[0])
        # The tokens spell the text (special tokens such as <|im_end|> are
        # reported but, as usual, left out of the content).
        spelled = b"".join(bytes(e.bytes) for e in ls).decode("utf-8", "replace")
        assert re.sub(r"<\|[a-z_]+\|>", "", spelled) == s.choices[0].message.content, (spelled, s.choices[0].message.content)
        accepted += s.usage.model_dump().get("spec_num_correct_drafts", 0)
    assert accepted > 0, "the speculating cluster accepted no drafts, so nothing was compared"


@check
def streamed_logprobs_equal_the_whole_response(a):
    kw = dict(max_tokens=24, temperature=0, extra_body={"ignore_eos": True}, logprobs=True, top_logprobs=2)
    whole = chat(a.spec, a, PROMPTS[2], **kw).choices[0].logprobs.content
    parts = []
    for ch in chat(a.spec, a, PROMPTS[2], stream=True, **kw):
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            parts.extend(ch.choices[0].logprobs.content)
    same_logprobs(parts, whole, "stream")


@check
def completions_logprobs_match_and_spell_the_text(a):
    r = [c.completions.create(model=a.model, prompt="The three primary colors are", max_tokens=16, temperature=0, logprobs=3, extra_body={"ignore_eos": True}) for c in (a.spec, a.plain)]
    for x in r:
        lp = x.choices[0].logprobs
        assert len(lp.tokens) == 16 == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert "".join(lp.tokens) == x.choices[0].text
        assert lp.text_offset[0] == 0 and all(b >= a_ for a_, b in zip(lp.text_offset, lp.text_offset[1:]))
        assert all(len(t) <= 3 for t in lp.top_logprobs)
    assert r[0].choices[0].text == r[1].choices[0].text
    for u, v in zip(r[0].choices[0].logprobs.token_logprobs, r[1].choices[0].logprobs.token_logprobs):
        assert abs(u - v) <= TOL


def penalty_case(a, **kw):
    """Greedy spec == plain under `kw` on every prompt, and `kw` changes the
    output of at least one (so a server ignoring it fails)."""
    changed = 0
    for i, p in enumerate(PROMPTS):
        s, q = both(a, p, max_tokens=40, temperature=0, **kw)
        assert s.choices[0].message.content == q.choices[0].message.content, (kw, i, s.choices[0].message.content, q.choices[0].message.content)
        assert s.usage.completion_tokens == q.usage.completion_tokens
        base = chat(a.plain, a, p, max_tokens=40, temperature=0)
        changed += base.choices[0].message.content != q.choices[0].message.content
    assert changed > 0, f"{kw} changed no output"


@check
def frequency_and_presence_penalties_are_lossless(a):
    penalty_case(a, frequency_penalty=1.2, presence_penalty=0.6)


@check
def repetition_penalty_is_lossless(a):
    penalty_case(a, extra_body={"repetition_penalty": 1.3})


@check
def logit_bias_is_lossless_and_forces_or_bans_tokens(a):
    penalty_case(a, logit_bias={str(a.ids["the"]): -100})
    # +100 on one token: every generated token is that token.
    for c in (a.spec, a.plain):
        r = c.completions.create(model=a.model, prompt="Hello", max_tokens=4, temperature=0, logit_bias={str(a.ids["the"]): 100}, logprobs=0)
        assert r.choices[0].logprobs.tokens == [" the"] * 4, r.choices[0].logprobs.tokens


@check
def min_tokens_holds_back_the_end_of_turn(a):
    p = "Reply with the single word: yes."
    short = chat(a.plain, a, p, max_tokens=64, temperature=0)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 20, short.usage
    s, q = both(a, p, max_tokens=64, temperature=0, extra_body={"min_tokens": 20})
    assert s.choices[0].message.content == q.choices[0].message.content
    assert s.usage.completion_tokens >= 20 and q.usage.completion_tokens >= 20, (s.usage, q.usage)


@check
def stop_token_ids_end_generation(a):
    s, q = both(a, PROMPTS[1], max_tokens=64, temperature=0, extra_body={"stop_token_ids": [a.ids["period"]]})
    for r in (s, q):
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        assert r.choices[0].message.content.count(".") == 1 and r.choices[0].message.content.endswith("."), r.choices[0].message.content
    assert s.choices[0].message.content == q.choices[0].message.content


@check
def sampling_with_penalties_is_reproducible_with_a_seed(a):
    kw = dict(max_tokens=24, temperature=0.8, seed=1234, frequency_penalty=0.8, logprobs=True)
    x, y = chat(a.spec, a, PROMPTS[0], **kw), chat(a.spec, a, PROMPTS[0], **kw)
    assert x.choices[0].message.content == y.choices[0].message.content
    same_logprobs(x.choices[0].logprobs.content, y.choices[0].logprobs.content, "seeded")


def prefill_tokens(a):
    t = httpx.get(a.target_metrics, timeout=30).text
    m = re.search(r"^aerie_target_prefill_tokens_total (\S+)", t, re.M)
    return float(m.group(1)) if m else 0.0


@check
def n_choices_share_one_prefill_and_each_is_reproducible_with_its_seed(a):
    p = PROMPTS[4]
    before = prefill_tokens(a)
    r = chat(a.spec, a, p, n=4, temperature=0.8, seed=77, max_tokens=24)
    assert prefill_tokens(a) - before == r.usage.prompt_tokens, "four choices, one prefill"
    assert [c.index for c in r.choices] == [0, 1, 2, 3], r.choices
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1, texts
    # Choice i is the request alone with seed + i. (Between the two clusters
    # seeded samples differ: speculation draws its coins per tree node, so
    # only the distribution is shared, which the chi-square tests check.)
    for c in r.choices:
        alone = chat(a.spec, a, p, temperature=0.8, seed=77 + c.index, max_tokens=24)
        assert alone.choices[0].message.content == c.message.content, (c.index, alone.choices[0].message.content, c.message.content)
    q = chat(a.plain, a, p, n=2, temperature=0.8, seed=77, max_tokens=24)
    for c in q.choices:
        alone = chat(a.plain, a, p, temperature=0.8, seed=77 + c.index, max_tokens=24)
        assert alone.choices[0].message.content == c.message.content, ("plain", c.index)
    assert r.usage.model_dump().get("spec_verify_ct", 0) > 0
    # Streamed, each index carries its own choice's text.
    got = {}
    for ch in chat(a.spec, a, p, n=2, temperature=0.8, seed=77, max_tokens=24, stream=True):
        for x in ch.choices:
            got[x.index] = got.get(x.index, "") + (x.delta.content or "")
    assert [got[0], got[1]] == texts[:2], got
    # Greedy choices are all the greedy answer.
    g = chat(a.spec, a, p, n=3, temperature=0, max_tokens=16)
    assert len({c.message.content for c in g.choices}) == 1 and len(g.choices) == 3


@check
def best_of_returns_the_most_likely_of_its_choices(a):
    # best_of=4 samples the same four choices as n=4 with the same seed
    # (choice i with seed + i) and returns the one whose tokens' logprobs
    # sum highest.
    kw = dict(model=a.model, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=11, logprobs=0)
    every = a.spec.completions.create(n=4, **kw)
    total = lambda c: sum(c.logprobs.token_logprobs)
    ranked = sorted(every.choices, key=total, reverse=True)
    assert len({c.text for c in every.choices}) > 1, every
    best = a.spec.completions.create(best_of=4, **kw)
    assert [c.text for c in best.choices] == [ranked[0].text], (best, [(c.text, total(c)) for c in ranked])
    two = a.spec.completions.create(best_of=4, n=2, **kw)
    assert [c.text for c in two.choices] == [c.text for c in ranked[:2]] and [c.index for c in two.choices] == [0, 1]
    # Without logprobs asked, none come back, and usage counts all four.
    kw.pop("logprobs")
    quiet = a.spec.completions.create(best_of=4, **kw)
    assert quiet.choices[0].text == ranked[0].text and quiet.choices[0].logprobs is None
    assert quiet.usage.completion_tokens == every.usage.completion_tokens


def expect_400(fn, param):
    try:
        fn()
    except openai.BadRequestError as e:
        err = (e.body or {}).get("error", e.body) if isinstance(e.body, dict) else {}
        assert err.get("param") == param or param in str(err.get("message")), err
        return
    raise AssertionError(f"expected a 400 naming {param}")


@check
def out_of_range_values_are_400s_naming_the_field(a):
    c = a.spec
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, logprobs=True, top_logprobs=21), "top_logprobs")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, top_logprobs=2), "top_logprobs")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, presence_penalty=2.5), "presence_penalty")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, frequency_penalty=-3), "frequency_penalty")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, extra_body={"repetition_penalty": 0}), "repetition_penalty")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, logit_bias={"abc": 1}), "logit_bias")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, logit_bias={"99999999": 1}), "logit_bias")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, logit_bias={"1": 101}), "logit_bias")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, extra_body={"min_tokens": 5}), "min_tokens")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, extra_body={"stop_token_ids": [99999999]}), "stop_token_ids")
    expect_400(lambda: c.completions.create(model=a.model, prompt="hi", max_tokens=4, logprobs=6), "logprobs")
    expect_400(lambda: chat(c, a, "hi", max_tokens=4, n=0), "n")
    expect_400(lambda: c.completions.create(model=a.model, prompt="hi", max_tokens=4, n=3, best_of=2), "best_of")
    expect_400(lambda: c.completions.create(model=a.model, prompt="hi", max_tokens=4, best_of=33), "best_of")
    expect_400(lambda: c.completions.create(model=a.model, prompt="hi", max_tokens=4, best_of=2, stream=True), "best_of")


def main():
    p = pair.parser(__doc__)
    p.add_argument("--ids", required=True, help='JSON: {"the": id of " the", "period": id of "."}')
    p.add_argument("--target-metrics", required=True, help="the speculating cluster's target worker /metrics URL")
    a = p.parse_args()
    a.ids = json.loads(a.ids)
    pair.run(CHECKS, a)


if __name__ == "__main__":
    main()
