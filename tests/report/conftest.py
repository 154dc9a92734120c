"""Sample audit documents and a headless-Chromium harness for the report tests.

``rich_audit_document()`` is a valid ``bastion.audit/1`` document with every plot kind, every
check status, every scorecard status, a suppressed finding and hostile names (markup, very long
words) wherever the document carries text from users' files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HOSTILE = '<script>alert("x")</script><img src=https://evil.example/t.png onerror=alert(1)>'
LONG = "feature_" + "x" * 150  # one long word: must wrap, not widen the page


# ----------------------------------------------------------------- headless Chromium (CDP)
def find_chromium() -> str | None:
    """Debian's ``chromium`` (or Chrome) on PATH, or ``BASTION_CHROMIUM``."""
    for name in (os.environ.get("BASTION_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class PageLoad:
    """What a page did when loaded: errors, requests, and how wide it laid out."""

    width: int
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    scroll_width: int = 0
    overflowing: list[str] = field(default_factory=list)
    screenshot: Path | None = None


# Elements whose content is wider than their box and not scrollable (cut off or spilling
# over), and images or charts wider than the viewport.
_LAYOUT_JS = """
(() => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const style = getComputedStyle(el);
    if (style.display === 'inline' || el.clientWidth === 0) continue;
    const scrollable = ['auto', 'scroll'].includes(style.overflowX);
    if (!scrollable && el.scrollWidth > el.clientWidth + 1 && !el.closest('.scroll'))
      out.push(el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined
        ? '.' + el.className : '') + ' ' + el.scrollWidth + '>' + el.clientWidth);
    const r = el.getBoundingClientRect();
    if (r.right > window.innerWidth + 1 && !el.closest('.scroll'))
      out.push(el.tagName.toLowerCase() + ' right edge ' + Math.round(r.right));
  }
  return JSON.stringify({scrollWidth: document.documentElement.scrollWidth,
                         overflowing: out.slice(0, 20)});
})()
"""


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page at a time).

    ``load`` opens a file at a given viewport width and reports script exceptions, console
    errors (CSP refusals included), every network request other than the file itself and
    ``data:`` URIs, the document's scroll width and the elements that overflow their box.
    """

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self._msg_id = 0

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        profile = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="bastion-cr-"))
        log = Path(profile) / "stderr.log"
        args = [self.executable, "--headless=new", "--remote-debugging-port=0",
                f"--user-data-dir={profile}/profile", "--no-first-run", "--disable-gpu",
                "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--hide-scrollbars", "--mute-audio", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        with log.open("w") as err:  # a file, not a pipe: chromium never blocks on a full pipe
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        self._stack.callback(self._stop, proc)
        try:
            url = None
            deadline = time.monotonic() + 60
            while url is None and proc.poll() is None and time.monotonic() < deadline:
                m = re.search(r"DevTools listening on (ws://\S+)", log.read_text())
                url = m.group(1) if m else time.sleep(0.1)
            if url is None:
                raise RuntimeError(f"chromium did not start: {log.read_text()[-500:]}")
            self._ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=30))
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget",
                                       {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self._call(f"{domain}.enable", session=True)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, method: str, params: dict[str, Any] | None, session: bool) -> int:
        self._msg_id += 1
        msg: dict[str, Any] = {"id": self._msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        self._ws.send(json.dumps(msg))
        return self._msg_id

    def _call(self, method: str, params: dict[str, Any] | None = None, *,
              session: bool = False, events: list[dict[str, Any]] | None = None) -> Any:
        wanted = self._send(method, params, session)
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if events is not None and "method" in msg:
                events.append(msg)

    def load(self, path: Path, *, width: int, height: int = 900,
             screenshot: Path | None = None) -> PageLoad:
        events: list[dict[str, Any]] = []
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                   session=True, events=events)
        url = Path(path).resolve().as_uri()
        self._call("Page.navigate", {"url": url}, session=True, events=events)
        while not any(e["method"] == "Page.loadEventFired" for e in events):
            events.append(json.loads(self._ws.recv(timeout=60)))
        layout = json.loads(self._call(
            "Runtime.evaluate", {"expression": _LAYOUT_JS, "returnByValue": True},
            session=True, events=events)["result"]["value"])
        result = PageLoad(width=width, scroll_width=layout["scrollWidth"],
                          overflowing=layout["overflowing"])
        if screenshot is not None:
            size = self._call("Page.getLayoutMetrics", session=True,
                              events=events)["cssContentSize"]
            shot = self._call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width,
                         "height": min(size["height"], 12000), "scale": 1}},
                session=True, events=events)
            import base64

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            result.screenshot = screenshot
        for e in events:
            method, p = e["method"], e.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                result.errors.append(" ".join(filter(None, [
                    details.get("text"), details.get("exception", {}).get("description")])))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                result.errors.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                result.errors.append(p["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                req = p["request"]["url"]
                if req != url and not req.startswith("data:"):
                    result.requests.append(req)
        return result


def _fp(check: str, kind: str, location: str | None = None) -> str:
    return hashlib.sha256("\0".join([check, kind, location or ""]).encode()).hexdigest()[:16]


def _finding(check: str, kind: str, severity: str, title: str, *, threat: str,
             location: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{check}.{kind}", "fingerprint": _fp(check, kind, location),
        "location": location, "title": title, "severity": severity, "threat": threat,
        "atlas": ["AML.T0043"], "owasp": ["ML01"],
        "evidence": {"value": 0.42, "n": 300, "note": HOSTILE},
        "remediation": "Retrain with adversarial training at the threat model's eps; "
                       "re-run the audit. " + HOSTILE,
        **extra,
    }


def _metric(value: float | None, n: int | None = None, *, ci: bool = True,
            label: str | None = None, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "label": label, "unit": unit, "n": n,
                           "higher_is_better": True, "ci": None, "ci_method": None}
    if ci and value is not None and n:
        half = 1.96 * math.sqrt(max(value * (1 - value), 1e-4) / n)
        out["ci"] = [max(0.0, value - half), min(1.0, value + half)]
        out["ci_method"] = "clopper-pearson"
    return out


def _digit(seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    img = np.zeros((8, 8))
    img[1:7, 2:6] = rng.uniform(0.4, 1.0, (6, 4))
    return img.round(3).tolist()


def _check(name: str, title: str, threat: str, practices: list[str], status: str,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "threat": threat, "practices": practices,
            "status": status, "reason": None, "enable": None, "summary": None,
            "seconds": 1.25, "input_fingerprint": "ab" * 8, "settings": {}, "metrics": {},
            "findings": [], "plots": [], "tables": [], **extra}


def rich_audit_document() -> dict[str, Any]:
    """A valid audit document exercising everything a renderer must draw."""
    eps = [0.0, 0.05, 0.1, 0.2, 0.3]
    robust = [0.97, 0.81, 0.55, 0.2, 0.04]
    rng = np.random.default_rng(0)
    fpr = np.logspace(-4, 0, 40)
    checks = [
        _check("artifact", "Unsafe artifacts: model file scan", "unsafe_artifacts",
               ["model_validation", "regular_updates"], "failed",
               summary=f"The file imports os.system when loaded ({HOSTILE}).",
               metrics={"files_scanned": {"value": 3, "label": "files scanned"}},
               findings=[_finding("artifact", "unsafe-import", "critical",
                                  f"Pickle in model {HOSTILE} runs os.system on load",
                                  threat="unsafe artifacts", location=f"archive/{LONG}.pkl")],
               tables=[{"title": "Files", "columns": ["path", "verdict", "severity"],
                        "rows": [[f"models/{LONG}/{HOSTILE}.pt", "unsafe", "critical"],
                                 ["models/ok.safetensors", "clean", None]]}]),
        _check("evasion", "Evasion: worst-case robust accuracy", "evasion",
               ["model_validation"], "failed",
               summary="Robust accuracy 0.20 at Linf eps 0.2 (AutoAttack-style worst case).",
               metrics={"clean_accuracy": _metric(0.97, 300, label="clean accuracy"),
                        "robust_accuracy": _metric(0.2, 300, label="robust accuracy (worst)"),
                        "queries": {"value": 123456, "label": "queries", "unit": "queries"},
                        "undefined": {"value": None, "label": "gap (not measured)"}},
               findings=[_finding("evasion", "low-robust-accuracy", "high",
                                  "Robust accuracy 20% at eps 0.2", threat="evasion"),
                         _finding("evasion", "gradient-masking", "info",
                                  "No sign of gradient masking", threat="evasion",
                                  suppressed={"reason": "accepted " + HOSTILE,
                                              "owner": "ml-team", "expires": "2027-01-01"})],
               plots=[
                   {"kind": "line", "title": "Robustness curve " + HOSTILE, "x_label": "eps (Linf)",
                    "y_label": "robust accuracy",
                    "series": [{"label": "apgd-ce " + HOSTILE, "x": eps, "y": robust,
                                "lo": [max(0, r - 0.05) for r in robust],
                                "hi": [min(1, r + 0.05) for r in robust]},
                               {"label": "fgsm", "x": eps,
                                "y": [min(1, r + 0.1) for r in robust]}]},
                   {"kind": "bar", "title": "Robust accuracy per class", "x_label": "class",
                    "y_label": "robust accuracy",
                    "series": [{"label": "robust", "x": [str(i) for i in range(9)] + [LONG],
                                "y": [0.1 * i for i in range(10)],
                                "lo": [max(0, 0.1 * i - 0.05) for i in range(10)],
                                "hi": [min(1, 0.1 * i + 0.05) for i in range(10)]}]},
                   {"kind": "images", "title": "Adversarial examples",
                    "images": [{"caption": f"sample {i}: 3 → 8 {HOSTILE}",
                                "cells": [{"label": "original", "pixels": _digit(i)},
                                          {"label": "adversarial", "pixels": _digit(i + 10)},
                                          {"label": "perturbation ×5 " + HOSTILE,
                                           "pixels": _digit(i + 20)}]}
                               for i in range(2)]},
               ],
               tables=[{"title": "Attacks " + HOSTILE,
                        "columns": ["attack", "robust acc.", "success rate", "queries", LONG],
                        "rows": [["apgd-ce", 0.2, 0.79, 30000, LONG],
                                 ["square " + HOSTILE, 0.31, 0.68, 500000, {"k": [1, 2]}]]}],
               settings={"eps": 0.2, "attacks": ["apgd-ce", "fgsm"], "note": HOSTILE}),
        _check("extraction", "Model stealing: extraction under the query budget",
               "model_stealing", ["model_monitoring", "privacy_protection"], "passed",
               summary="A copy agrees with the model on 41% of inputs after 980 queries.",
               metrics={"fidelity": _metric(0.41, 500, label="fidelity")},
               plots=[{"kind": "line", "title": "Fidelity vs queries", "x_label": "queries",
                       "y_label": "fidelity",
                       "series": [{"label": "knockoff", "x": [980], "y": [0.41]}]}]),
        _check("membership", "Membership inference (LiRA offline, loss threshold)",
               "inversion_membership", ["privacy_protection"], "failed",
               summary="TPR 4.1% at 0.1% FPR: the training set is recognisable.",
               metrics={"auc": {"value": 0.71, "label": "AUC", "ci": [0.68, 0.74],
                                "ci_method": "bootstrap", "n": 2000},
                        "tpr_at_0.001": _metric(0.041, 1000, label="TPR @ 0.1% FPR"),
                        "eps_lower": {"value": 1.2, "label": "empirical ε lower bound"}},
               findings=[_finding("membership", "lira-offline", "medium",
                                  "Members are recognisable at low FPR",
                                  threat="inversion & membership")],
               plots=[{"kind": "roc", "title": "ROC (log–log)", "x_label": "FPR",
                       "y_label": "TPR", "log_x": True, "log_y": True,
                       "series": [{"label": "lira-offline", "x": [0.0, *fpr.tolist()],
                                   "y": [0.0, *np.clip(fpr ** 0.6, 0, 1).tolist()]},
                                  {"label": "loss " + HOSTILE, "x": fpr.tolist(),
                                   "y": np.clip(fpr ** 0.85, 0, 1).tolist()}]}]),
        _check("inversion", "Model inversion (MI-Face)", "inversion_membership",
               ["privacy_protection"], "passed",
               summary="Reconstructions are no closer to the class mean than noise.",
               plots=[{"kind": "images", "title": "Inversion beside the class mean",
                       "images": [{"caption": f"class {c}",
                                   "cells": [{"label": "reconstruction", "pixels": _digit(c)},
                                             {"label": "class mean", "pixels": _digit(c + 50)}]}
                                  for c in range(3)]
                       + [{"caption": "a bad image", "cells": [
                           {"label": "wrong shape", "pixels": [1, 2, 3]},
                           {"label": "rgb", "pixels": rng.uniform(0, 1, (3, 6, 6)).tolist()}]}]}]),
        _check("poisoning", "Poisoned-sample detection", "data_poisoning",
               ["data_validation"], "failed",
               summary="37 samples of class 7 form a separate cluster (backdoor pattern).",
               metrics={"flagged": _metric(0.0264, 1400, label="flagged fraction")},
               findings=[_finding("poisoning", "activation-clusters", "high",
                                  "A cluster of 37 samples in class 7", threat="data poisoning",
                                  location="class 7")],
               plots=[{"kind": "histogram", "title": "Poisoning scores", "x_label": "score",
                       "series": [{"label": "clean", "values": rng.normal(0, 1, 500).tolist()},
                                  {"label": "flagged", "values": rng.normal(4, 0.5, 37).tolist()}]},
                      {"kind": "images", "title": "Flagged samples",
                       "images": [{"caption": "class 7",
                                   "cells": [{"label": f"#{i}", "pixels": _digit(i)}
                                             for i in range(12)]}]}]),
        _check("data", "Data contract: test set against the training set", "data_quality",
               ["data_validation"], "error", reason="could not read column " + HOSTILE,
               plots=[{"kind": "histogram", "title": f"Drifted column {LONG}",
                       "series": [{"label": "train", "values": rng.normal(0, 1, 300).tolist()},
                                  {"label": "test", "values": rng.normal(1, 1, 300).tolist()}]},
                      {"kind": "histogram", "title": "Pre-binned", "series": [
                          {"label": "counts", "x": [0, 1, 2, 3], "y": [3, 9, 4, 1]}]}]),
        _check("attribute", "Attribute inference", "inversion_membership",
               ["privacy_protection"], "not_run",
               reason="needs a sensitive feature", enable="pass --sensitive-feature NAME"),
        _check("signature", "Signature verification", "unsafe_artifacts",
               ["regular_updates"], "not_run", reason="no key given",
               enable="pass --verify-key KEY.pub"),
    ]
    threats = [("evasion", "Evasion", "failed"), ("model_stealing", "Model stealing", "passed"),
               ("data_poisoning", "Data poisoning", "failed"),
               ("inversion_membership", "Model inversion & membership", "partial"),
               ("unsafe_artifacts", "Unsafe artifacts", "error")]
    practices = ["secure_data_access", "model_validation", "data_validation",
                 "model_monitoring", "regular_updates", "privacy_protection", "collaboration"]
    statuses = ["passed", "failed", "not_run", "error", "partial", "n/a"]
    cells = [{"threat": t, "practice": p, "status": statuses[(i + j) % len(statuses)],
              "checks": ["evasion"]}
             for i, (t, _, _) in enumerate(threats) for j, p in enumerate(practices)]
    return {
        "schema": "bastion.audit/1",
        "bastion_version": "0.1.0",
        "catalogue_version": "1",
        "created": "2026-12-07T04:00:00Z",
        "seed": 0,
        "command": "audit",
        "model": {"source": f"models/{LONG}/{HOSTILE}.pt", "kind": "file",
                  "digest": "sha256:" + "0" * 64,
                  "files": [{"path": f"{HOSTILE}.pt", "sha256": "0" * 64, "size": 1234}],
                  "adapter": "torch", "capabilities": ["gradients", "scores", "labels"],
                  "input_shape": [1, 8, 8], "num_classes": 10, "bounds": [0.0, 1.0],
                  "domain": "image", "registry": None},
        "data": {"train": {"source": "train.npz", "sha256": "1" * 64, "n": 1400,
                           "features": [LONG, HOSTILE]},
                 "test": {"source": f"{HOSTILE}.npz", "sha256": None, "n": 300,
                          "features": None}},
        "environment": {"python": "3.11.2", "platform": "Linux-x86_64",
                        "packages": {"torch": "2.13.0", "numpy": "2.1"}, "device": "cpu",
                        "executor": "in-process"},
        "threat_model": {"access": "white-box", "norm": "linf", "eps": 0.2,
                         "eps_source": "given", "targeted": False, "query_budget": 10000,
                         "sensitive": ["train"], "time_budget_s": None,
                         "output_policy": {"round": 2, "name": HOSTILE}},
        "plan": [{"check": c["name"], "will_run": c["status"] != "not_run",
                  "reason": c["reason"], "enable": c["enable"]} for c in checks],
        "checks": checks,
        "scorecard": {"threats": [{"threat": t, "title": title, "status": s,
                                   "checks": [c["name"] for c in checks if c["threat"] == t]}
                                  for t, title, s in threats],
                      "practices": practices, "cells": cells},
        "verdict": {"status": "failed", "max_severity": "critical",
                    "counts": {"critical": 1, "high": 2, "medium": 1, "low": 0, "info": 1}},
    }


def minimal_audit_document() -> dict[str, Any]:
    """The smallest valid document: one check that passed, no plots, no data."""
    doc = rich_audit_document()
    doc.update(
        command="evaluate evasion",
        data={},
        plan=[{"check": "evasion", "will_run": True}],
        checks=[_check("evasion", "Evasion", "evasion", ["model_validation"], "passed")],
        verdict={"status": "passed", "max_severity": "none", "counts": {}},
    )
    doc["model"] = {"source": "model.pt", "kind": "file", "digest": None, "files": []}
    doc["scorecard"] = {"threats": [{"threat": "evasion", "title": "Evasion",
                                     "status": "passed"}],
                        "practices": ["model_validation"],
                        "cells": [{"threat": "evasion", "practice": "model_validation",
                                   "status": "passed"}]}
    return doc


def typer_app(register: Callable[[Any], None]) -> Any:
    """A root ``bastion`` app with one command module registered, as main.py wires it."""
    import typer

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """bastion"""

    register(app)
    return app


@pytest.fixture
def audit_doc() -> dict[str, Any]:
    return rich_audit_document()


@pytest.fixture
def minimal_doc() -> dict[str, Any]:
    return minimal_audit_document()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium; skipped with the reason when it is not installed (never in CI)."""
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (scripts/ci-services.sh)")
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    with Browser(exe) as b:
        yield b


@pytest.fixture
def check_page(browser: Browser, tmp_path: Path) -> Callable[..., list[Any]]:
    """Load an HTML file at 1280 and 600 px and assert what every report must satisfy."""

    def check(path: Path, *, screenshots: Path | None = None) -> list[Any]:
        results = []
        for width in (1280, 600):
            shot = None if screenshots is None else screenshots / f"{path.stem}-{width}.png"
            r = browser.load(path, width=width, screenshot=shot)
            assert r.errors == [], f"script or console errors at {width}px: {r.errors}"
            assert r.requests == [], f"network requests at {width}px: {r.requests}"
            assert r.scroll_width <= width, (
                f"cut off at {width}px: the page is {r.scroll_width}px wide; widest: "
                f"{r.overflowing}")
            assert r.overflowing == [], f"wider than their box at {width}px: {r.overflowing}"
            results.append(r)
        return results

    return check
