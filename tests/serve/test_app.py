"""End to end against the real ASGI app: each stage of the pipeline refuses what it should."""

from __future__ import annotations

import base64
import json

import numpy as np


def test_predict_happy_path_matches_the_model(make_gateway, digits_np, digits_mlp):
    h = make_gateway()
    x, y = digits_np
    batch = x[1400:1432]
    r = h.predict(batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits" and body["version"] == "local"
    import torch

    with torch.no_grad():
        expected = digits_mlp[0](torch.from_numpy(batch)).argmax(1).numpy()
    assert body["predictions"] == expected.tolist()
    probs = np.array(body["probabilities"])
    assert probs.shape == (32, 10)
    assert ((probs > 0).sum(axis=1) <= 3).all()  # top-k policy: 3 classes at most
    assert np.mean(np.array(body["predictions"]) == y[1400:1432]) > 0.85
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "server" not in r.headers


def test_base64_inputs_give_the_same_answer(make_gateway, digits_np):
    h = make_gateway()
    batch = digits_np[0][1400:1404]
    b64 = base64.b64encode(batch.astype("<f4").tobytes()).decode()
    r1 = h.client.post("/v1/models/digits/predict", headers=h.headers(),
                       json={"inputs_b64": b64, "shape": list(batch.shape)})
    r2 = h.predict(batch)
    assert r1.status_code == 200, r1.text
    assert r1.json()["predictions"] == r2.json()["predictions"]


def test_no_key_is_401_and_bad_key_is_401(make_gateway, digits_np):
    h = make_gateway()
    x = digits_np[0][:2].tolist()
    r = h.client.post("/v1/models/digits/predict", json={"inputs": x})
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated"
    assert "Bearer" in r.headers["www-authenticate"]
    r = h.client.post("/v1/models/digits/predict", json={"inputs": x},
                      headers={"X-API-Key": "bst_0123456789abcdef_" + "A" * 43})
    assert r.status_code == 401
    r = h.client.post("/v1/models/digits/predict", json={"inputs": x},
                      headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401


def test_x_api_key_header_works(make_gateway, digits_np):
    h = make_gateway()
    r = h.client.post("/v1/models/digits/predict", json={"inputs": digits_np[0][:2].tolist()},
                      headers={"X-API-Key": h.tokens["alice"]})
    assert r.status_code == 200, r.text


def test_wrong_scope_or_role_is_403(make_gateway, digits_np):
    h = make_gateway()
    x = digits_np[0][:2]
    r = h.predict(x, who="carol")  # consumer, but key scoped to 'read'
    assert r.status_code == 403
    assert "scoped" in r.json()["detail"]
    r = h.predict(x, who="bob")  # a consumer of another model only
    assert r.status_code == 403
    r = h.predict(x, model="other")  # alice has no grant on model:other
    assert r.status_code == 403


def test_revoked_key_is_refused_within_the_cache_ttl(make_gateway, digits_np):
    h = make_gateway({"access": {"cache_ttl": 0}})
    x = digits_np[0][:1]
    assert h.predict(x).status_code == 200
    key_id = h.store.list_keys("alice")[0].key_id
    h.store.revoke_key(key_id, actor="admin")
    assert h.predict(x).status_code == 401


def test_budget_spent_is_429(make_gateway, digits_np):
    h = make_gateway({"limits": {"budget": 10}})
    x = digits_np[0]
    assert h.predict(x[:6]).status_code == 200
    assert h.predict(x[:4]).status_code == 200
    r = h.predict(x[:1])
    assert r.status_code == 429
    assert r.json()["error"] == "budget_exhausted"
    # another key still has its own budget
    h.store.add_identity("dave", kind="service", actor="admin")
    h.store.grant("dave", "consumer", "model:digits", actor="admin")
    h.tokens["dave"] = h.store.create_key("dave", actor="admin").token
    assert h.predict(x[:1], who="dave").status_code == 200


def test_a_request_over_the_remaining_budget_is_refused(make_gateway, digits_np):
    h = make_gateway({"limits": {"budget": 5}})
    r = h.predict(digits_np[0][:8])
    assert r.status_code == 429
    assert h.predict(digits_np[0][:3]).status_code == 200


def test_rate_limit_is_429_with_retry_after(make_gateway, digits_np):
    h = make_gateway({"limits": {"rate": 0.5, "burst": 3}})
    x = digits_np[0][:1]
    codes = [h.predict(x).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200]
    assert codes[3:] == [429, 429]
    r = h.predict(x)
    assert r.json()["error"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


def test_malformed_input_is_422_listing_every_violation(make_gateway, digits_np):
    h = make_gateway()
    x = digits_np[0][:4].copy()
    x[1, 0, 2, 3] = 7.0
    x[3, 0, 0, 0] = -5.0
    r = h.predict(x)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "contract_violation"
    rows = sorted((v["rule"], v["row"]) for v in body["violations"])
    assert rows == [("range", 1), ("range", 3)]
    assert [2, 3] in [v["index"][1:] for v in body["violations"]]
    # wrong shape, strings, ragged, not JSON, unknown fields: 422 with a reason, never 500
    for payload in ({"inputs": [[1, 2, 3]]}, {"inputs": [["a"] * 64]}, {"inputs": [[1], [1, 2]]},
                    {"inputs": []}, {"inputs": 3}, {"other": 1}, [1, 2], {"inputs_b64": "@@",
                                                                         "shape": [1, 1, 8, 8]}):
        r = h.client.post("/v1/models/digits/predict", headers=h.headers(), json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert r.json()["detail"]
    r = h.client.post("/v1/models/digits/predict", content=b"{not json",
                      headers=h.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = h.client.post("/v1/models/digits/predict", content=b'{"inputs": [NaN]}',
                      headers=h.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 422


def test_shape_violation_is_named(make_gateway):
    h = make_gateway()
    r = h.predict(np.zeros((2, 1, 5, 5), np.float32))
    assert r.status_code == 422
    assert [v["rule"] for v in r.json()["violations"]] == ["shape"]


def test_pickle_or_form_bodies_are_415(make_gateway):
    h = make_gateway()
    import pickle

    r = h.client.post("/v1/models/digits/predict", content=pickle.dumps({"inputs": [1]}),
                      headers=h.headers(**{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"


def test_oversized_body_is_413_by_length_and_by_stream(make_gateway):
    h = make_gateway({"server": {"max_body_bytes": 1000}})
    big = json.dumps({"inputs": np.zeros((10, 1, 8, 8)).tolist()}).encode()
    assert len(big) > 1000
    r = h.client.post("/v1/models/digits/predict", content=big,
                      headers=h.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"

    sent = []

    async def chunks():  # no Content-Length: chunked transfer, counted while streaming
        for i in range(0, len(big), 100):
            sent.append(i)
            yield big[i:i + 100]

    r = h.client.post("/v1/models/digits/predict", content=chunks(),
                      headers=h.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 413


def test_bad_host_is_400(make_gateway, digits_np):
    h = make_gateway()
    r = h.client.post("http://evil.example.com/v1/models/digits/predict",
                      json={"inputs": digits_np[0][:1].tolist()}, headers=h.headers())
    assert r.status_code == 400
    assert r.json()["error"] == "bad_host"
    assert h.client.get("http://localhost:8000/healthz").status_code == 200


def test_cors_preflight_from_an_unlisted_origin_is_refused(make_gateway):
    h = make_gateway()
    pre = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = h.client.options("/v1/models/digits/predict",
                         headers={"Origin": "https://evil.example.com", **pre})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    r = h.client.options("/v1/models/digits/predict",
                         headers={"Origin": "https://app.example.com", **pre})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_health_ready_models_and_metrics(make_gateway, digits_np):
    h = make_gateway()
    assert h.client.get("/healthz").json() == {"status": "ok"}
    ready = h.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}  # a probe: no details
    ready = h.client.get("/readyz", headers=h.headers("ops"))
    assert ready.status_code == 200 and ready.json()["access_db"] == "ok"
    assert ready.json()["state"] == "ok" and ready.json()["models"] == {"digits": "local"}
    r = h.client.get("/v1/models", headers=h.headers())
    assert r.status_code == 200
    assert [m["name"] for m in r.json()] == ["digits"]
    assert r.json()[0]["output_policy"] == "topk(k=3)"
    assert r.json()[0]["source"] == "file" and "/" not in r.text  # no server paths
    assert h.client.get("/v1/models", headers=h.headers("bob")).json() == []
    assert h.client.get("/v1/models").status_code == 401
    h.predict(digits_np[0][:3])
    h.predict(digits_np[0][:3], who="carol")
    assert h.client.get("/metrics").status_code == 401
    assert h.client.get("/metrics", headers=h.headers()).status_code == 403
    assert h.client.get("/readyz", headers=h.headers()).status_code == 403
    text = h.client.get("/metrics", headers=h.headers("ops")).text
    assert 'bastion_requests_total{endpoint="predict",model="digits",status="200"} 1.0' in text
    assert 'bastion_requests_total{endpoint="predict",model="digits",status="403"} 1.0' in text
    assert 'bastion_stage_seconds_count{stage="predict"} 1.0' in text
    assert 'bastion_inputs_total{model="digits"} 3.0' in text


def test_unknown_routes_and_methods_answer_json(make_gateway):
    h = make_gateway()
    r = h.client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = h.client.get("/v1/models/digits/predict")
    assert r.status_code == 405


def test_every_request_is_audited_and_tampering_is_detected(make_gateway, digits_np):
    h = make_gateway()
    h.predict(digits_np[0][:2])
    h.predict(digits_np[0][:2], who="carol")
    h.client.post("/v1/models/digits/predict", json={"inputs": [[1]]})
    h.gateway.drain()
    h.store.flush_audit()
    entries = [e for e in h.store.audit.entries() if "status" in e.details]
    outcomes = [(e.actor, e.outcome, e.details["status"]) for e in entries]
    assert ("alice", "allowed", 200) in outcomes
    assert ("carol", "denied", 403) in outcomes
    assert ("anonymous", "denied", 401) in outcomes
    # one entry per request, the refusal's reason included (the store adds none of its own)
    request_entries = [e for e in h.store.audit.entries() if e.action == "predict"]
    assert len(request_entries) == 3
    denied = next(e for e in entries if e.details["status"] == 403)
    assert "may not predict" in denied.details["reason"]
    assert h.store.audit.verify().ok
    # tamper with one entry directly in the gateway's database
    from sqlalchemy import text

    with h.store.engine.begin() as conn:
        table = _audit_table(conn)
        seq = entries[0].seq
        conn.execute(text(f"UPDATE {table} SET actor = 'mallory' WHERE seq = :s"), {"s": seq})
    check = h.store.audit.verify()
    assert not check.ok
    assert check.first_bad_seq == entries[0].seq


def _audit_table(conn) -> str:
    from sqlalchemy import inspect

    names = inspect(conn).get_table_names()
    return next(n for n in names if "audit" in n and "head" not in n)


def test_repeated_failed_authentication_is_throttled_per_address(make_gateway, digits_np):
    h = make_gateway({"limits": {"auth_failures": 3}})
    x = digits_np[0][:1].tolist()
    bad = {"Authorization": "Bearer bst_0123456789abcdef_" + "A" * 43}
    codes = [h.client.post("/v1/models/digits/predict", json={"inputs": x}, headers=bad
                           ).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    r = h.client.post("/v1/models/digits/predict", json={"inputs": x}, headers=bad)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # a valid key from the same address is never refused for the others' failures
    assert h.predict(digits_np[0][:1]).status_code == 200


def test_a_failing_model_answers_500_json_without_internals(make_gateway, digits_np):
    h = make_gateway()
    served = h.gateway.models["digits"]

    def broken(x):
        raise RuntimeError("secret internal detail /srv/model.pt line 3")

    object.__setattr__(served, "predict", broken)
    r = h.predict(digits_np[0][:1])
    assert r.status_code == 500
    assert r.json()["error"] == "internal"
    assert "secret" not in r.text and "Traceback" not in r.text
