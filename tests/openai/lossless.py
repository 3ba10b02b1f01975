"""The ten-prompt losslessness suite through the official client: greedy
chat completions from a speculating cluster equal a plain cluster's, token
for token (compared as text and as usage counts), streamed and not, and the
speculating cluster reports that it verified drafts:

    python tests/openai/lossless.py --spec-url http://127.0.0.1:30000/v1 \
        --plain-url http://127.0.0.1:30001/v1 [--max-tokens 48]

The prompts are those of the Rust suites (launcher/tests/common,
draft-worker/tests/common). The last line is `N passed, M failed`; the exit
code is 0 only when nothing failed.
"""

import pair

PROMPTS = [
    "Name three rivers in Europe.",
    "Write a Python function that checks whether a number is prime.",
    "Count from 1 to 40, separated by commas.",
    "Explain why the sky is blue in two sentences.",
    "Repeat the sentence 'The quick brown fox jumps over the lazy dog.' five times.",
    "Give me a recipe for pancakes.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
    "List the planets of the solar system in order from the Sun.",
    "Write a haiku about autumn leaves.",
]
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def ask(c, a, content, **kw):
    return c.chat.completions.create(
        model=a.model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=a.max_tokens, extra_body={"ignore_eos": True}, **kw
    )


@check
def ten_prompts_greedy_equal_plain(a):
    verified = accepted = 0
    for i, p in enumerate(PROMPTS):
        s, q = ask(a.spec, a, p), ask(a.plain, a, p)
        assert s.choices[0].message.content == q.choices[0].message.content, (i, s.choices[0].message.content, q.choices[0].message.content)
        assert s.usage.completion_tokens == q.usage.completion_tokens == a.max_tokens, (i, s.usage, q.usage)
        u = s.usage.model_dump()
        verified += u.get("spec_verify_ct", 0)
        accepted += u.get("spec_num_correct_drafts", 0)
    print(f"     {verified} verify steps for {len(PROMPTS) * a.max_tokens} tokens, {accepted} drafts accepted", flush=True)
    assert verified > 0, "the speculating cluster verified no drafts"


@check
def streamed_equals_plain(a):
    for p in PROMPTS[:2]:
        s = "".join(x.choices[0].delta.content or "" for x in ask(a.spec, a, p, stream=True) if x.choices)
        assert s == ask(a.plain, a, p).choices[0].message.content, (p, s)


def main():
    p = pair.parser(__doc__)
    p.add_argument("--max-tokens", type=int, default=48)
    pair.run(CHECKS, p.parse_args())


if __name__ == "__main__":
    main()
