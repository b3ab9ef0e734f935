#!/usr/bin/env python3
"""Drives a running `cascade serve` with the official `openai` client (tests/serve_openai.rs
starts the server on the real models and runs this; exit code 0 means every check passed).

    python3 tests/serve/openai_client.py --base-url http://127.0.0.1:8080/v1 --api-key KEY

A repeated long prompt must report cached prompt tokens (the server's prefix cache).
"""

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request

import jsonschema
import openai
import pydantic
from openai import OpenAI

MAX = 16  # tokens per answer: the 1.5B target decodes ~20 tokens/s on 2 cores


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


def extra(obj, name):
    """An extension field of a response object (`cascade`)."""
    return (obj.model_extra or {}).get(name)


class Checks:
    def __init__(self, base_url, api_key):
        self.base_url = base_url.rstrip("/")
        self.root = re.sub(r"/v1$", "", self.base_url)
        self.key = api_key
        self.client = OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120)
        self.model = None

    def chat(self, content, **kw):
        return self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": "You are a terse coding assistant."},
                      {"role": "user", "content": content}],
            temperature=0, **kw)

    def complete(self, prompt, **kw):
        return self.client.completions.create(model=self.model, prompt=prompt, temperature=0, **kw)

    def check_health_and_models(self):
        status, body = fetch(self.root + "/health")
        assert status == 200 and '"ok"' in body, body
        models = self.client.models.list().data
        assert len(models) == 1, models
        m = models[0]
        self.model = m.id
        assert m.owned_by == "cascade", m
        assert extra(m, "root"), m
        assert extra(m, "max_model_len") > 0, m

    def check_chat(self):
        r = self.chat("Write a Python function that adds two numbers.", max_tokens=MAX)
        c = r.choices[0]
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
        assert c.message.role == "assistant" and c.message.content, r
        assert c.finish_reason in ("stop", "length"), c
        u = r.usage
        assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= MAX, u
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
        stats = extra(r, "cascade")
        assert stats["mode"] == "exact", stats
        assert stats["drafted"] >= stats["accepted"] >= 0, stats
        self.chat_text = c.message.content

    def check_chat_stream(self):
        stream = self.chat("Write a Python function that adds two numbers.", max_tokens=MAX,
                           stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == self.chat_text, (text, self.chat_text)
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and extra(finals[0], "cascade")["mode"] == "exact", finals
        last = chunks[-1]
        assert last.choices == [] and last.usage.completion_tokens > 0, last
        assert all(c.usage is None for c in chunks[:-1])

    def check_completions(self):
        prompt = "def fibonacci(n):\n"
        r = self.complete(prompt, max_tokens=MAX)
        assert r.object == "text_completion" and r.id.startswith("cmpl-"), r
        text = r.choices[0].text
        assert text and r.choices[0].finish_reason in ("stop", "length"), r
        assert r.usage.completion_tokens <= MAX, r.usage
        # Lossless: the target alone writes the same greedy text.
        t = self.complete(prompt, max_tokens=MAX, extra_body={"cascade": {"mode": "target"}})
        assert t.choices[0].text == text, (t.choices[0].text, text)
        assert extra(t, "cascade")["mode"] == "target"
        s = self.complete(prompt, max_tokens=MAX, stream=True)
        streamed = "".join(c.choices[0].text for c in s if c.choices)
        assert streamed == text, (streamed, text)
        self.fib_prompt, self.fib_text = prompt, text

    def check_stop_strings(self):
        text = self.fib_text
        starts = [i for i in range(len(text) // 2, len(text) - 2) if text[i:i + 3].strip()]
        assert starts, f"no stop string to pick in {text!r}"
        stop = text[starts[0]:starts[0] + 3]
        expected = text[:text.index(stop)]
        r = self.complete(self.fib_prompt, max_tokens=MAX, stop=[stop, "@@never@@"])
        assert r.choices[0].text == expected, (r.choices[0].text, expected, stop)
        assert r.choices[0].finish_reason == "stop", r
        s = self.complete(self.fib_prompt, max_tokens=MAX, stop=stop, stream=True)
        chunks = list(s)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
        assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]

    def check_prefix_cache(self):
        prompt = "# Utilities for parsing configuration files.\n" + "".join(
            f"def get_option_{i}(config):\n    return config.get('option_{i}')\n\n" for i in range(8))
        first = self.complete(prompt, max_tokens=2)
        second = self.complete(prompt, max_tokens=2)
        details = second.usage.prompt_tokens_details
        cached = details.cached_tokens if details else 0
        print(f"    prompt {second.usage.prompt_tokens} tokens, cached on repeat: {cached}")
        assert first.usage.prompt_tokens == second.usage.prompt_tokens
        assert cached > 0, second.usage

    def check_concurrent_streams(self):
        prompts = ["def add(a, b):", "def is_even(n):", "class Stack:", "import os\n\ndef list_files(path):"]
        results = [None] * len(prompts)

        def one(i):
            try:
                s = self.complete(prompts[i], max_tokens=12, stream=True)
                chunks = list(s)
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                results[i] = (text, chunks[-1].choices[0].finish_reason)
            except Exception as e:  # reported below
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for p, r in zip(prompts, results):
            assert isinstance(r, tuple) and r[0] and r[1] in ("stop", "length"), (p, r)

    def running(self):
        """Requests running now: the scheduler's gauge if it exports one, else the server's."""
        _, text = fetch(self.root + "/metrics")
        for name in ("vllm:num_requests_running", "cascade:http_requests_in_flight"):
            m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
            if m:
                return name, float(m.group(1))
        raise AssertionError("no running-requests gauge in /metrics:\n" + text)

    def check_disconnect(self):
        stream = self.complete("def quicksort(items):", max_tokens=1000, stream=True)
        got = 0
        for chunk in stream:
            got += 1
            if got == 3:
                break
        stream.close()
        deadline = time.time() + 5
        while True:
            name, n = self.running()
            if n == 0:
                break
            assert time.time() < deadline, f"{name} still {n} 5 s after the client left"
            time.sleep(0.1)
        print(f"    {name} back to 0")
        # The abandoned request (1000 tokens) would take far longer than this if it still ran.
        t0 = time.time()
        r = self.complete("x = ", max_tokens=4)
        assert r.choices[0].text is not None
        took = time.time() - t0
        assert took < 20, f"a new request took {took:.1f}s after a disconnect"

    def check_errors(self):
        bad_key = OpenAI(base_url=self.base_url, api_key="wrong-" + self.key, max_retries=0)
        try:
            bad_key.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
        try:
            self.client.chat.completions.create(model="no-such-model", max_tokens=4,
                                                messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404
        for field, kw in [("n", {"n": 2}), ("temperature", {"temperature": 7}),
                          ("max_tokens", {"max_tokens": 10 ** 7})]:
            try:
                args = {"temperature": 0, "max_tokens": 4, **kw}
                self.client.completions.create(model=self.model, prompt="x", **args)
                raise AssertionError(f"a bad {field} was accepted")
            except openai.BadRequestError as e:
                assert e.body and e.body.get("param") == field, e.body

    def parse(self, **kw):
        """`chat.completions.parse` (under `beta` in openai 1.x)."""
        completions = self.client.chat.completions
        if not hasattr(completions, "parse"):
            completions = self.client.beta.chat.completions
        return completions.parse(**kw)

    def check_structured_outputs(self):
        class Person(pydantic.BaseModel):
            name: str
            age: int
            languages: list[str] = pydantic.Field(max_length=3)

        r = self.parse(model=self.model, temperature=0, max_tokens=100, response_format=Person,
                       messages=[{"role": "user",
                                  "content": "Describe a fictional programmer."}])
        m = r.choices[0].message
        assert m.parsed is not None and isinstance(m.parsed, Person), m
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        print(f"    parse: {m.parsed!r}")
        schema = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
                  "properties": {"ok": {"type": "boolean"},
                                 "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
        fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
        for stream in (False, True):
            r = self.chat("Is 7 prime? Answer with ok and n = 7.", max_tokens=40,
                          response_format=fmt, stream=stream)
            text = ("".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream
                    else r.choices[0].message.content)
            jsonschema.validate(json.loads(text), schema)
        r = self.chat("Give a JSON object with one key.", max_tokens=40,
                      response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict), r
        # Extension: a Lark grammar, through the client's extra_body.
        r = self.complete("Is the sky blue? Answer:", max_tokens=8,
                          extra_body={"grammar": 'start: " yes" | " no"'})
        assert r.choices[0].text in (" yes", " no"), r.choices[0].text

    def check_structured_errors(self):
        def refused(param, **kw):
            try:
                self.chat("hi", max_tokens=4, **kw)
            except openai.BadRequestError as e:
                assert e.body and e.body.get("param") == param, (param, e.body)
                return e.body.get("message", "")
            raise AssertionError(f"{kw} was accepted")

        refused("response_format", response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})
        refused("response_format.json_schema.schema",
                response_format={"type": "json_schema", "json_schema": {"name": "x"}})
        refused("grammar", extra_body={"grammar": 'root ::= "a"'})
        refused("grammar", extra_body={"grammar": "start: undefined_rule"})
        huge = " | ".join(f'"w{i}"' for i in range(60000))
        msg = refused("grammar", extra_body={"grammar": "start: " + huge})
        assert "KiB" in msg, msg
        refused("tools", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])

    def check_metrics(self):
        status, text = fetch(self.root + "/metrics")
        assert status == 200 and "cascade:http_requests_total" in text, text
        # vLLM's names: counters end in _total (the speculative ones ran in exact mode above).
        for name in ("vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
                     "vllm:spec_decode_num_accepted_tokens_total", "vllm:num_requests_running"):
            assert re.search(rf"^{name}[ {{]", text, re.M), f"no {name} in /metrics:\n{text}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="http://HOST:PORT/v1")
    ap.add_argument("--api-key", default=os.environ.get("CASCADE_API_KEY", "none"))
    args = ap.parse_args()
    c = Checks(args.base_url, args.api_key)
    order = ["health_and_models", "chat", "chat_stream", "completions", "stop_strings",
             "prefix_cache", "concurrent_streams", "disconnect", "errors",
             "structured_outputs", "structured_errors", "metrics"]
    t_all = time.time()
    for name in order:
        t0 = time.time()
        try:
            getattr(c, "check_" + name)()
        except Exception as e:
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"ok   {name} ({time.time() - t0:.1f}s)", flush=True)
    print(f"all checks passed in {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
