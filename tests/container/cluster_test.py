#!/usr/bin/env python3
"""The cluster half of tests/container/run.sh: etcd, a router, a target worker
and two draft workers, each its own container on a private Docker network,
driven through the router with the official openai client.

1. etcd, the router and the target start; with no draft worker the router
   decodes plainly, and its greedy outputs for a few prompts are the baseline.
2. Two draft workers start and register in etcd; the router must list them in
   GET /workers, and the same prompts must give the baseline outputs again,
   now with accepted draft tokens.
3. Several clients stream requests in a loop. While streams are mid-flight,
   one draft container is killed (SIGKILL: no chance to deregister) and the
   other is disconnected from the network (alive, but etcd and the target
   cannot reach it). Every request must finish with the baseline text, and
   the router must drop both drafts within the lease TTL plus a grace period.

Each check prints `PASS: ...` or `FAIL: ...` and appends the same line to
--results, which run.sh counts. Containers carry the label
aerie-ct.run=<run id>; run.sh removes them afterwards.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai

LEASE_TTL = 10.0  # seconds: the workers' etcd lease
GRACE = 8.0  # seconds on top of the TTL for the router to notice
MAX_TOKENS = 48
PROMPTS = [
    "What is the capital of France?",
    "List three colors of the rainbow.",
    "Write one sentence about the sea.",
    "Count from one to ten.",
]
STREAMERS = 3  # concurrent streaming clients in the failure phase

results_path = None
counts = {"PASS": 0, "FAIL": 0}


def report(ok, msg):
    line = f"{'PASS' if ok else 'FAIL'}: {msg}"
    print(line, flush=True)
    counts["PASS" if ok else "FAIL"] += 1
    with open(results_path, "a") as f:
        f.write(line + "\n")
    return ok


def docker(*args, check=True, timeout=120):
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


class Cluster:
    def __init__(self, a):
        self.a = a
        self.run = a.run_id
        self.started = []
        self.base_url = None

    def name(self, role):
        return f"{self.run}-{role}"

    def start(self, role, image, args, alias=None, publish=None, extra=()):
        cmd = ["run", "-d", "--name", self.name(role), "--network", self.a.network,
               "--label", f"aerie-ct.run={self.run}", "--network-alias", alias or role]
        if publish:
            cmd += ["-p", publish]
        cmd += list(extra)
        cmd += [image, *args]
        docker(*cmd)
        self.started.append(role)

    def start_aerie(self, role, args):
        env = ["-e", "AERIE_THREADS=1", "-e", "AERIE_LOG=info",
               "-v", f"{self.a.models}:/models:ro"]
        publish = "127.0.0.1:0:30000" if role == "router" else None
        self.start(role, self.a.image, args, publish=publish, extra=env)

    def running(self, role):
        return docker("inspect", "-f", "{{.State.Running}}", self.name(role), check=False) == "true"

    def logs(self, role, n=25):
        p = subprocess.run(["docker", "logs", "--tail", str(n), self.name(role)],
                           capture_output=True, text=True)
        return (p.stdout + p.stderr).rstrip()

    def dump_logs(self):
        for role in self.started:
            print(f"---- last log lines of {self.name(role)} ----")
            print(self.logs(role, 40))

    # -- router HTTP (not the OpenAI API: plain urllib) --

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            return None, str(e)

    def workers(self):
        status, body = self.get("/workers")
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def wait_for(self, what, pred, timeout, watch=()):
        """Polls pred() until it returns a true value; None on timeout or if a
        watched container stops."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = pred()
            if v:
                return v
            for role in watch:
                if not self.running(role):
                    print(f"  {self.name(role)} stopped while waiting for {what}:\n{self.logs(role)}")
                    return None
            time.sleep(0.5)
        print(f"  timed out after {timeout:.0f} s waiting for {what}")
        return None


def healthy_targets(w):
    return [t for t in w.get("targets", []) if t.get("healthy")]


def chat_stream(client, prompt):
    """One streamed greedy completion: (text, finish_reason, usage dict)."""
    text, finish, usage = [], None, {}
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True})
    first = None
    for chunk in stream:
        if chunk.choices:
            c = chunk.choices[0]
            if c.delta and c.delta.content:
                if first is None:
                    first = time.time()
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
        if chunk.usage:
            usage = chunk.usage.model_dump()
    return "".join(text), finish, usage


def new_client(base_url):
    # max_retries=0: a retried request would hide exactly the failures this test looks for.
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=180)


def run_prompts(client):
    out = []
    for p in PROMPTS:
        out.append(chat_stream(client, p))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--network", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--image", default="aerie:cpu")
    ap.add_argument("--etcd-image", default="aerie-etcd:bookworm")
    a = ap.parse_args()
    global results_path
    results_path = a.results

    c = Cluster(a)
    try:
        scenario(c)
    except Exception as e:  # a harness error is a failure, with the logs to explain it
        report(False, f"cluster test stopped: {type(e).__name__}: {e}")
    if counts["FAIL"]:
        c.dump_logs()
    return 1 if counts["FAIL"] else 0


def scenario(c):
    a = c.a
    etcd_url = "http://etcd:2379"
    common = ["--model-path", "smollm2", "--etcd-endpoints", etcd_url, "--cluster", "test"]

    # -- etcd: one member, data on a tmpfs owned by the image's etcd user --
    c.start("etcd", a.etcd_image, [
        "--name", "etcd0", "--data-dir", "/var/lib/etcd/data",
        "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", "etcd0=http://127.0.0.1:2380", "--initial-cluster-state", "new",
        "--logger", "zap", "--log-level", "info"],
        alias="etcd", extra=["--tmpfs", "/var/lib/etcd/data:rw,uid=10002,gid=10002,mode=0700"])
    ok = c.wait_for("etcd to serve clients", lambda: any(m in c.logs("etcd", 400) for m in
                                         ("serving client traffic", "ready to serve client requests")),
                    30, watch=["etcd"])
    if not report(bool(ok), "etcd (Debian etcd-server in aerie-etcd:bookworm) serves clients"):
        return

    # -- router and target, no drafts yet --
    c.start_aerie("router", ["router", *common, "--host", "0.0.0.0", "--port", "30000"])
    c.start_aerie("target", ["target-worker", *common, "--host", "0.0.0.0", "--port", "31000",
                             "--metrics-port", "31001",
                             "--advertise-addr", f"http://{c.name('target')}:31000"])
    time.sleep(1)
    if not c.running("router"):
        report(False, f"the router container exited:\n{c.logs('router')}")
        return
    port = docker("port", c.name("router"), "30000/tcp").splitlines()[0].rsplit(":", 1)[1]
    c.base_url = f"http://127.0.0.1:{port}"
    print(f"  router published on {c.base_url} (loopback only)")

    ok = c.wait_for("router /health 200", lambda: c.get("/health")[0] == 200, 120, watch=["router", "target"])
    report(bool(ok), "router /health is 200 once the target worker registered in etcd")
    if not ok:
        return
    report(c.get("/live")[0] == 200, "router /live is 200")
    w = c.wait_for("/workers to list 1 healthy target and no drafts",
                   lambda: (lambda w: w if w and len(healthy_targets(w)) == 1 and not w.get("drafts") else None)(c.workers()),
                   30)
    if not report(bool(w), f"router /workers lists the target and no drafts: {json.dumps(w)[:300]}"):
        return

    client = new_client(c.base_url)
    t0 = time.time()
    baseline = run_prompts(client)
    plain_ok = all(t and f in ("length", "stop") and "spec_verify_ct" not in u for t, f, u in baseline)
    report(plain_ok, f"baseline: {len(PROMPTS)} greedy streams with no draft worker (plain decoding) in {time.time() - t0:.1f} s")
    for p, (t, f, _) in zip(PROMPTS, baseline):
        print(f"  {p!r} -> {t[:70]!r}... ({f})")
    if not plain_ok:
        return
    base_text = {p: t for p, (t, _, _) in zip(PROMPTS, baseline)}

    # -- two draft workers join --
    for d in ("draft1", "draft2"):
        c.start_aerie(d, ["draft-worker", *common, "--host", "0.0.0.0", "--port", "32000",
                          "--metrics-port", "32001",
                          "--advertise-addr", f"http://{c.name(d)}:32000"])

    def two_drafts():
        w = c.workers()
        if w and len(w.get("drafts", [])) == 2 and all(d.get("healthy") for d in w["drafts"]):
            return w
        return None

    w = c.wait_for("/workers to list 2 healthy drafts", two_drafts, 120, watch=["draft1", "draft2"])
    if not report(bool(w), "router /workers lists both draft workers once they registered"
                  + (f": {[d.get('addr') for d in w['drafts']]}" if w else "")):
        return

    t0 = time.time()
    spec = run_prompts(client)
    same = [t == base_text[p] for p, (t, _, _) in zip(PROMPTS, spec)]
    report(all(same), f"speculative outputs equal the plain baseline ({sum(same)}/{len(PROMPTS)}, {time.time() - t0:.1f} s)")
    accepted = sum(u.get("spec_num_correct_drafts", 0) or 0 for _, _, u in spec)
    verified = sum(u.get("spec_verify_ct", 0) or 0 for _, _, u in spec)
    report(accepted > 0, f"the drafts were used: {accepted} draft tokens accepted over {verified} verify steps")

    # -- the failure phase: streams keep running while both drafts go away --
    lock = threading.Lock()
    done, active = [], {}  # active: thread id -> (start time, chunks seen so far)
    stop = threading.Event()

    def streamer(k):
        cl = new_client(c.base_url)
        i = k
        while not stop.is_set():
            p = PROMPTS[i % len(PROMPTS)]
            i += 1
            start = time.time()
            text, finish, err = [], None, None
            with lock:
                active[k] = [start, 0]
            try:
                stream = cl.chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": p}],
                    temperature=0, max_tokens=MAX_TOKENS, stream=True)
                for chunk in stream:
                    if chunk.choices:
                        ch = chunk.choices[0]
                        if ch.delta and ch.delta.content:
                            text.append(ch.delta.content)
                            with lock:
                                active[k][1] += 1
                        if ch.finish_reason:
                            finish = ch.finish_reason
            except Exception as e:  # recorded, judged below
                err = f"{type(e).__name__}: {e}"
            with lock:
                active.pop(k, None)
                done.append({"prompt": p, "text": "".join(text), "finish": finish, "error": err,
                             "start": start, "end": time.time()})

    def mid_stream():
        with lock:
            return any(n > 0 for _, n in active.values())

    threads = [threading.Thread(target=streamer, args=(k,), daemon=True) for k in range(STREAMERS)]
    for t in threads:
        t.start()

    if not c.wait_for("a stream to be mid-flight", mid_stream, 60):
        report(False, "no stream got going in the failure phase")
        stop.set()
        return
    t_kill = time.time()
    docker("kill", c.name("draft1"))
    print(f"  killed {c.name('draft1')} mid-stream")
    time.sleep(1.5)
    c.wait_for("a stream to be mid-flight", mid_stream, 60)
    t_cut = time.time()
    docker("network", "disconnect", a.network, c.name("draft2"))
    print(f"  disconnected {c.name('draft2')} from {a.network} mid-stream")

    deadline = LEASE_TTL + GRACE
    gone = c.wait_for("/workers to list no drafts",
                      lambda: (lambda w: w if w is not None and not w.get("drafts") else None)(c.workers()),
                      deadline + 5)
    t_gone = time.time()
    if gone:
        report(t_gone - t_cut <= deadline,
               f"router /workers dropped both drafts {t_gone - t_kill:.1f} s after the kill and "
               f"{t_gone - t_cut:.1f} s after the disconnect (limit: lease TTL {LEASE_TTL:.0f} s + {GRACE:.0f} s)")
    else:
        report(False, f"router /workers still lists drafts {deadline + 5:.0f} s after the disconnect: {json.dumps(c.workers())[:300]}")

    # A few more rounds with no drafts at all, then stop and wait for the streams.
    n_then = len(done)
    c.wait_for("more streams to finish", lambda: len(done) >= n_then + STREAMERS, 120)
    stop.set()
    for t in threads:
        t.join(timeout=200)
    hung = [t for t in threads if t.is_alive()]
    report(not hung, f"every streaming client finished ({len(hung)} still running)")

    errors = [d for d in done if d["error"] or d["finish"] not in ("length", "stop")]
    wrong = [d for d in done if not d["error"] and d["text"] != base_text[d["prompt"]]]
    across_kill = sum(1 for d in done if d["start"] < t_kill < d["end"])
    across_cut = sum(1 for d in done if d["start"] < t_cut < d["end"])
    report(not errors, f"all {len(done)} streamed requests completed "
           f"({across_kill} were in flight at the kill, {across_cut} at the disconnect)"
           + "".join(f"\n    {d['prompt']!r}: {d['error'] or d['finish']}" for d in errors[:5]))
    report(not wrong, f"every streamed output equals the plain baseline ({len(done) - len(wrong)}/{len(done)})"
           + "".join(f"\n    {d['prompt']!r}: got {d['text']!r}\n      want {base_text[d['prompt']]!r}" for d in wrong[:3]))
    report(across_kill > 0 and across_cut > 0,
           f"requests were mid-stream at both failures (kill: {across_kill}, disconnect: {across_cut})")

    # -- afterwards: the router serves plainly from the target alone --
    status, _ = c.get("/health")
    w = c.workers()
    report(status == 200 and w is not None and len(healthy_targets(w)) == 1 and not w.get("drafts"),
           f"router /health {status} with 1 healthy target and no drafts after the failures")
    after = run_prompts(client)
    same = [t == base_text[p] for p, (t, _, _) in zip(PROMPTS, after)]
    report(all(same), f"outputs after the drafts left equal the baseline ({sum(same)}/{len(PROMPTS)})")
    status, body = c.get("/metrics")
    report(status == 200 and "aerie_router_requests_total" in body, "router /metrics serves Prometheus text")


if __name__ == "__main__":
    sys.exit(main())
