#!/usr/bin/python3
"""Hang injection + client for bench/pacemaker-probe.

Checks that URL answers, then SIGSTOPs PID (the server process stays alive but
answers nothing) and starts a GET on every URL every PERIOD seconds (each with a
short timeout, in its own thread), until one answers. Prints
"<ms from SIGSTOP to the first answer> <url> <body>" or "timeout".
"""
import argparse, http.client, os, signal, sys, threading, time
from urllib.parse import urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--url", action="append", required=True)
ap.add_argument("--period", type=float, default=0.05)
ap.add_argument("--timeout", type=float, default=0.5)
ap.add_argument("--deadline", type=float, default=180.0)
a = ap.parse_args()

def get(url, timeout):
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("GET", u.path or "/")
        r = c.getresponse()
        body = r.read().decode(errors="replace").strip()
        if r.status != 200:
            raise RuntimeError("status %d" % r.status)
        return body
    finally:
        c.close()

before = None
for url in a.url:
    try:
        before = get(url, 2.0)
        break
    except Exception:
        pass
if before is None or before.split()[-1] != str(a.pid):
    print("precheck-failed %s" % before)
    sys.exit(2)

done = threading.Event()
lock = threading.Lock()
result = []

def attempt(url):
    try:
        body = get(url, a.timeout)
    except Exception:
        return
    t = time.monotonic()
    with lock:
        if not result:
            result.append((t, url, body))
            done.set()

t0 = time.monotonic()
os.kill(a.pid, signal.SIGSTOP)
while not done.is_set() and time.monotonic() - t0 < a.deadline:
    for url in a.url:
        threading.Thread(target=attempt, args=(url,), daemon=True).start()
    done.wait(a.period)
if result:
    t, url, body = result[0]
    print("%d %s %s" % (round((t - t0) * 1000), url, body))
else:
    print("timeout")
    sys.exit(1)
