"""What the scripts that compare a speculating cluster with a plain one
share: their common arguments, the two clients, the check loop (the last
line is `N passed, M failed`; the exit code is 0 only when nothing
failed) and the check that a request is refused with a 400."""

import argparse
import sys
import traceback

import openai


def parser(doc):
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--spec-url", required=True)
    p.add_argument("--plain-url", required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--api-key", default="none")
    p.add_argument("--only", default="", help="run only checks whose name contains this")
    return p


def expect_400(fn, words):
    """Runs `fn`, which must fail with a 400 whose text holds one of `words`."""
    try:
        fn()
    except openai.BadRequestError as e:
        assert any(w in str(e) for w in words), e
        return
    raise AssertionError(f"expected a 400 mentioning {words}")


def run(checks, a):
    """Runs each check as `check(a)` with `a.spec` and `a.plain` clients."""
    a.spec = openai.OpenAI(base_url=a.spec_url, api_key=a.api_key, max_retries=0, timeout=300)
    a.plain = openai.OpenAI(base_url=a.plain_url, api_key=a.api_key, max_retries=0, timeout=300)
    passed = failed = 0
    for fn in checks:
        if a.only not in fn.__name__:
            continue
        try:
            fn(a)
            passed += 1
            print(f"ok   {fn.__name__}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
