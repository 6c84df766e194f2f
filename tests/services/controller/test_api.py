"""The REST API in process: auth, ownership, validation, state conflicts, limits, ops endpoints, SSE."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from hyctas_core.storage import SearchState
from services.queue import InMemoryQueue
from services.storage.base import JobState
from tests.services.controller.conftest import SUPERNET, Api

SEARCH = {"name": "s1", "supernet_id": 0, "objective": "flops", "population": 4, "generations": 2}


def _search(api: Api, **overrides: Any) -> dict[str, Any]:
    supernet_id = api.trained_supernet()
    r = api.client.post("/api/v1/searches", json={**SEARCH, "supernet_id": supernet_id, **overrides}, headers=api.alice)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# -- auth and ownership ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [("get", "/api/v1/searches"), ("post", "/api/v1/supernets"), ("get", "/api/v1/jobs/1"), ("get", "/api/v1/events")],
)
def test_every_api_call_needs_a_key(api: Api, method: str, path: str) -> None:
    """401 without a key, with a malformed one and with an unknown one."""
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer hyk_" + "x" * 43}):
        r = api.client.request(method, path, headers=headers, json=SUPERNET if method == "post" else None)
        assert r.status_code == 401, (headers, r.text)
        assert "API key" in r.json()["detail"]


def test_revoked_key_is_refused_within_the_key_cache_time(api: Api) -> None:
    """A verified key is remembered for ``key_cache_s`` (1 s): its revocation holds after that."""
    now = [100.0]
    api.client.app.state.keys.clock = lambda: now[0]  # type: ignore[attr-defined]
    assert api.client.get("/api/v1/searches", headers=api.bob).status_code == 200
    (bob_key,) = api.storage.list_api_keys("bob")
    api.storage.revoke_api_key(bob_key.id)
    now[0] += 0.9
    assert api.client.get("/api/v1/searches", headers=api.bob).status_code == 200  # still remembered
    now[0] += 0.2
    assert api.client.get("/api/v1/searches", headers=api.bob).status_code == 401


def test_users_see_only_their_own_resources(api: Api) -> None:
    """Bob gets 404 for every id of Alice's and sees none of them in lists; Alice sees hers."""
    search = _search(api)
    models = api.client.post(
        "/api/v1/models", json={"archs": [{"name": "s", "preset": "hyctas-s"}], "dataset": SUPERNET["dataset"]},
        headers=api.alice,
    ).json()  # fmt: skip
    model_id, job_id = models["data"][0]["id"], models["job_id"]
    for path in (
        f"/api/v1/searches/{search['id']}",
        f"/api/v1/searches/{search['id']}/pareto",
        f"/api/v1/searches/{search['id']}/generations",
        f"/api/v1/searches/{search['id']}/individuals",
        f"/api/v1/supernets/{search['supernet_id']}",
        f"/api/v1/models/{model_id}",
        f"/api/v1/jobs/{job_id}",
    ):
        assert api.client.get(path, headers=api.bob).status_code == 404, path
        assert api.client.get(path, headers=api.alice).status_code == 200, path
    for path in (f"/api/v1/searches/{search['id']}/cancel", f"/api/v1/jobs/{job_id}/cancel"):
        assert api.client.post(path, headers=api.bob).status_code == 404, path
    for path in ("/api/v1/searches", "/api/v1/supernets", "/api/v1/models", "/api/v1/jobs"):
        assert api.client.get(path, headers=api.bob).json()["count"] == 0, path
        assert api.client.get(path, headers=api.alice).json()["count"] >= 1, path
    # Bob cannot search Alice's supernet nor retrain from her search.
    r = api.client.post("/api/v1/searches", json={**SEARCH, "supernet_id": search["supernet_id"]}, headers=api.bob)
    assert r.status_code == 422 and "no supernet" in r.text
    assert api.storage.get_search(search["id"]).state is SearchState.CREATED  # nothing of Alice's changed


# -- submissions -------------------------------------------------------------------------------
def test_submit_supernet_creates_a_queued_job_and_a_stream_entry(api: Api) -> None:
    r = api.client.post("/api/v1/supernets", json=SUPERNET, headers=api.alice)
    assert r.status_code == 201
    body = r.json()
    assert body["state"] == "queued" and body["name"] == "tiny"
    assert body["config"]["model"]["num_layers"] == 6
    entry = api.queue.claim("test", block_s=0)
    assert entry is not None and (entry.job_id, entry.kind) == (body["id"], "train_supernet")
    assert (body["config"]["sampling"], body["config"]["distill"], body["config"]["warmup_steps"]) == (
        "prior",
        False,
        0,
    )


def test_supernet_training_options_reach_the_job(api: Api) -> None:
    options = {
        "sampling": "sandwich",
        "sandwich_random": 1,
        "distill": True,
        "warmup_steps": 40,
        "lr_final": 0.05,
        "class_weighting": "log",
    }
    r = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "sw", **options}, headers=api.alice)
    assert r.status_code == 201, r.text
    assert {k: r.json()["config"][k] for k in options} == options
    bad = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "x", "sampling": "greedy"}, headers=api.alice)
    assert bad.status_code == 422 and "sampling" in bad.text
    bad = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "x", "lr_final": 0}, headers=api.alice)
    assert bad.status_code == 422 and "lr_final" in bad.text
    bad = api.client.post(
        "/api/v1/supernets", json={**SUPERNET, "name": "x", "class_weighting": "median"}, headers=api.alice
    )
    assert bad.status_code == 422 and "class_weighting" in bad.text


def test_data_parallel_training_is_asked_for_and_checked(api: Api) -> None:
    parallel = {"workers": 2, "resources_per_worker": {"CPU": 2}}
    r = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "dp", **parallel}, headers=api.alice)
    assert r.status_code == 201, r.text
    want = {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 2.0}, "sync_batchnorm": True}
    assert r.json()["parallel"] == want
    one = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "one"}, headers=api.alice).json()
    assert one["parallel"]["workers"] == 1  # the default: the single-process fast path
    uneven = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "x", "workers": 3}, headers=api.alice)
    assert uneven.status_code == 422 and "does not split evenly over 3 workers" in uneven.text
    many = {**SUPERNET, "name": "y", "workers": 16, "batch_size": 16}
    over = api.client.post("/api/v1/supernets", json=many, headers=api.alice)
    assert over.status_code == 422 and "HYCTAS_MAX_TRAIN_WORKERS" in over.text
    gpu_on_cpu = {**SUPERNET, "name": "z", "device": "cpu", "use_gpu": True}
    assert api.client.post("/api/v1/supernets", json=gpu_on_cpu, headers=api.alice).status_code == 422
    models = {"archs": [{"name": "m", "preset": "hyctas-s"}], "dataset": SUPERNET["dataset"], "batch_size": 4}
    asha = api.client.post("/api/v1/models", json={**models, "workers": 2, "asha": True}, headers=api.alice)
    assert asha.status_code == 422 and "asha" in asha.text
    ok = api.client.post("/api/v1/models", json={**models, "workers": 2}, headers=api.alice)
    assert ok.status_code == 201, ok.text
    job = api.storage.get_job(ok.json()["job_id"])
    assert job.payload["parallel"]["workers"] == 2


def test_a_search_times_latency_on_one_device_class(api: Api) -> None:
    # No worker has described the cluster yet: the worker resolves the class when it runs.
    assert _search(api, name="unknown")["target_device"] is None
    api.queue.set_device_classes({"cpu": 2}, ttl_s=60)
    alone = _search(api, name="alone")
    assert alone["target_device"] == "cpu" and alone["config"]["evaluator"]["device_class"] == "cpu"
    assert alone["waiting_for_device"] is None
    api.queue.set_device_classes({"cpu": 2, "V100": 1, "RTX3090": 3}, ttl_s=60)
    supernet_id = api.trained_supernet()
    mixed = api.client.post(
        "/api/v1/searches", json={**SEARCH, "name": "mixed", "supernet_id": supernet_id}, headers=api.alice
    )
    assert mixed.status_code == 422
    assert "several device classes (RTX3090, V100, cpu): name the search's target_device" in mixed.text
    named = _search(api, name="named", target_device="V100")
    assert named["target_device"] == "V100"
    # A class with no node yet is accepted: the search waits for one (visibly) instead of timing elsewhere.
    assert _search(api, name="later", target_device="A100")["target_device"] == "A100"
    bad = api.client.post(
        "/api/v1/searches",
        json={**SEARCH, "name": "bad", "supernet_id": supernet_id, "target_device": "V100; drop"},
        headers=api.alice,
    )
    assert bad.status_code == 422
    metrics = api.client.get("/metrics").text
    assert 'hyctas_device_class_nodes{class="V100"} 1.0' in metrics


def test_search_is_stored_with_everything_to_replay_it(api: Api) -> None:
    body = _search(api, branches=[1, 3], seed=7)
    assert (body["state"], body["generation"], body["total_generations"]) == ("created", 0, 4)
    stored = api.storage.get_search(body["id"]).config
    assert stored["search"]["branches"] == [1, 3] and stored["search"]["seed"] == 7
    assert stored["search"]["num_layers"] == 6  # from the supernet
    assert stored["evaluator"]["supernet"] == "/ckpt/supernet.pt"
    assert stored["dataset"] == {**SUPERNET["dataset"], "seed": 0}
    job = api.storage.get_job(stored["job_id"])
    assert (job.kind, job.owner, job.payload) == ("search", "alice", {"search_name": "s1"})


def test_verification_is_stored_queued_after_the_search_shown_and_cancellable(api: Api) -> None:
    """verify_top_k: kept with the search; the search job queues a verify job; the API shows its record."""
    from services.settings import Settings
    from services.worker.jobs import _queue_verification
    from services.worker.runner import JobContext

    body = _search(api, verify_top_k=3, verify_epochs=2, seed=5)
    assert body["verification"] is None
    stored = api.storage.get_search(body["id"])
    assert stored.config["verify"] == {"k": 3, "epochs": 2, "lr": 0.05, "batch_size": 8, "loss": "ce", "seed": 5}
    assert api.storage.get_search(_search(api, name="plain")["id"]).config.get("verify") is None

    # The worker, when the search has succeeded: one verify job, named by the record, enqueued.
    search_job = api.storage.get_job(stored.config["job_id"])
    ctx = JobContext(search_job, "w", api.storage, None, Settings(), queue=api.queue)
    api.storage.set_search_state(stored.id, SearchState.RUNNING)
    api.storage.set_search_state(stored.id, SearchState.SUCCEEDED)
    verify_id = _queue_verification(ctx, api.storage.get_search(stored.id))
    assert verify_id is not None and _queue_verification(ctx, api.storage.get_search(stored.id)) is None  # once
    job = api.storage.get_job(verify_id)
    assert (job.kind, job.owner, job.state, job.payload["search_id"]) == ("verify", "alice", JobState.QUEUED, stored.id)
    assert verify_id in api.queue.job_ids()
    shown = api.client.get(f"/api/v1/searches/{stored.id}", headers=api.alice).json()["verification"]
    assert shown == {
        "state": "queued", "k": 3, "done": 0, "epochs": None, "kendall_tau": None, "spearman": None, "rows": [],
        "job_id": verify_id, "error": None,
    }  # fmt: skip

    # Cancelling the verify job marks the record cancelled; the search stays succeeded.
    r = api.client.post(f"/api/v1/jobs/{verify_id}/cancel", headers=api.alice)
    assert r.status_code == 200, r.text
    after = api.client.get(f"/api/v1/searches/{stored.id}", headers=api.alice).json()
    assert after["state"] == "succeeded"
    assert after["verification"]["state"] == "cancelled" and after["verification"]["error"] == "cancelled by user"

    # A finished record: its rows and the fidelity figure.
    rows = [
        {"arch_hash": h, "num_branches": 1, "supernet_miou": s, "cost": c, "retrained_miou": r}
        for h, s, c, r in (("a", 0.1, 1.0, 0.2), ("b", 0.2, 2.0, 0.4), ("c", 0.3, 3.0, 0.3))
    ]
    record = {"state": "succeeded", "k": 3, "done": 3, "epochs": 2, "rows": rows, "kendall_tau": 0.3333}
    api.storage.set_search_verification(stored.id, {**record, "spearman": 0.5, "job_id": verify_id, "error": None})
    api.let_read_cache_expire()
    shown = api.client.get(f"/api/v1/searches/{stored.id}", headers=api.alice).json()["verification"]
    assert shown["kendall_tau"] == 0.3333 and shown["spearman"] == 0.5 and shown["rows"] == rows
    listed = api.client.get("/api/v1/searches", headers=api.alice).json()["data"]
    assert [s["verification"] is not None for s in listed] == [True, False]


@pytest.mark.parametrize(
    "path,patch,setting",
    [
        ("/supernets", {"dataset": {"kind": "synthetic", "train": 5000, "val": 10, "size": [2048, 4096]}},
         "HYCTAS_MAX_DATASET_MEGAPIXELS"),
        ("/supernets", {"epochs": 2000, "crop_size": [1024, 2048], "batch_size": 16, "steps_per_epoch": 1000},
         "HYCTAS_MAX_TRAIN_MEGAPIXELS"),
        ("/searches", {"population": 512, "generations": 500}, "HYCTAS_MAX_SEARCH_EVALUATIONS"),
        ("/searches", {"population": 100, "generations": 100,
                       "evaluation": {"calib_images": 5000, "val_images": 5000, "eval_size": [4096, 4096]}},
         "HYCTAS_MAX_SEARCH_MEGAPIXELS"),
        ("/models", {"archs": [{"name": f"m{i}", "preset": "hyctas-s"} for i in range(8)], "epochs": 2000,
                     "crop_size": [1024, 2048], "batch_size": 16, "steps_per_epoch": 200},
         "HYCTAS_MAX_TRAIN_MEGAPIXELS"),
    ],
)  # fmt: skip
def test_requests_over_a_cost_limit_are_422_naming_it(api: Api, path: str, patch: dict[str, Any], setting: str) -> None:
    supernet_id = api.trained_supernet()
    jobs_before = api.storage.list_jobs()[1]
    base = {
        "/supernets": {**SUPERNET, "name": "big"},
        "/searches": {**SEARCH, "supernet_id": supernet_id},
        "/models": {"supernet_id": supernet_id, "archs": [{"name": "m", "preset": "hyctas-s"}]},
    }[path]
    r = api.client.post(f"/api/v1{path}", json={**base, **patch}, headers=api.alice)
    assert r.status_code == 422, r.text
    assert setting in r.json()["detail"][0]["msg"] and "over the limit" in r.json()["detail"][0]["msg"]
    assert api.storage.list_jobs()[1] == jobs_before and api.storage.list_searches()[1] == 0  # nothing stored
    ok = api.client.post(f"/api/v1{path}", json=base, headers=api.alice)  # the defaults are within every limit
    assert ok.status_code == 201, ok.text


def test_a_user_has_at_most_max_active_jobs(api: Api) -> None:
    api.client.app.state.settings.max_active_jobs_per_user = 2  # type: ignore[attr-defined]
    for i in range(2):
        r = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": f"s{i}"}, headers=api.alice)
        assert r.status_code == 201, r.text
    r = api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "s2"}, headers=api.alice)
    assert r.status_code == 422 and "HYCTAS_MAX_ACTIVE_JOBS_PER_USER" in r.text and "2 queued or running" in r.text
    assert api.client.post("/api/v1/supernets", json=SUPERNET, headers=api.bob).status_code == 201  # per user
    first = api.storage.list_jobs(owner="alice")[0][0]
    assert api.client.post(f"/api/v1/jobs/{first.id}/cancel", headers=api.alice).status_code == 200
    assert api.client.post("/api/v1/supernets", json={**SUPERNET, "name": "s2"}, headers=api.alice).status_code == 201


def test_search_of_an_untrained_supernet_is_a_conflict(api: Api) -> None:
    supernet_id = api.client.post("/api/v1/supernets", json=SUPERNET, headers=api.alice).json()["id"]
    r = api.client.post("/api/v1/searches", json={**SEARCH, "supernet_id": supernet_id}, headers=api.alice)
    assert r.status_code == 409 and "queued" in r.json()["detail"]


def test_duplicate_search_name_is_a_conflict(api: Api) -> None:
    body = _search(api)
    r = api.client.post("/api/v1/searches", json={**SEARCH, "supernet_id": body["supernet_id"]}, headers=api.alice)
    assert r.status_code == 409
    assert api.storage.list_searches()[1] == 1


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"population": 1}, "population"),
        ({"population": 100_000}, "population"),
        ({"generations": 0}, "generations"),
        ({"objective": "speed"}, "objective"),
        ({"branches": [1, 1]}, "branches"),
        ({"branches": [4]}, "branches"),
        ({"name": "../etc"}, "name"),
        ({"evaluation": {"calib_images": 0}}, "calib_images"),
        ({"unknown": 1}, "unknown"),
        ({"verify_top_k": 1}, "verify_top_k"),
        ({"verify_top_k": 17}, "verify_top_k"),
        ({"verify_top_k": 2, "verify_epochs": 0}, "verify_epochs"),
        ({"seed": False}, "seed must be a number, not bool"),
        ({"population": "8"}, "population must be a number, not str"),
    ],
)
def test_invalid_search_configs_are_422_naming_the_field(api: Api, patch: dict[str, Any], field: str) -> None:
    supernet_id = api.trained_supernet()
    r = api.client.post("/api/v1/searches", json={**SEARCH, "supernet_id": supernet_id, **patch}, headers=api.alice)
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])
    assert api.storage.list_searches()[1] == 0


def test_dataset_paths_cannot_escape_the_data_root(api: Api) -> None:
    for path in ("../secrets", "/etc", "a/../../b"):
        body = {**SUPERNET, "dataset": {"kind": "cityscapes", "path": path}}
        assert api.client.post("/api/v1/supernets", json=body, headers=api.alice).status_code == 422, path


def test_models_from_a_search_front_and_invalid_archs(api: Api) -> None:
    r = api.client.post(
        "/api/v1/models",
        json={"archs": [{"name": "bad", "arch": {"not": "an arch"}}], "dataset": SUPERNET["dataset"]},
        headers=api.alice,
    )
    assert r.status_code == 422 and "bad" in r.text
    r = api.client.post(
        "/api/v1/models",
        json={"archs": [{"name": "x", "search_id": 999, "arch_hash": "abcdef12"}], "dataset": SUPERNET["dataset"]},
        headers=api.alice,
    )
    assert r.status_code == 422 and "no search" in r.text
    r = api.client.post("/api/v1/models", json={"archs": [{"name": "x", "preset": "hyctas-s"}]}, headers=api.alice)
    assert r.status_code == 422  # no dataset and no supernet
    r = api.client.post(
        "/api/v1/models",
        json={"archs": [{"name": "s", "preset": "hyctas-s"}, {"name": "m", "preset": "hyctas-m"}],
              "dataset": SUPERNET["dataset"]},
        headers=api.alice,
    )  # fmt: skip
    assert r.status_code == 422 and "same number of cells" in r.text
    r = api.client.post(
        "/api/v1/models",
        json={"archs": [{"name": "a", "preset": "hyctas-s"}, {"name": "b", "preset": "hyctas-s"}], "asha": True,
              "dataset": SUPERNET["dataset"], "epochs": 2},
        headers=api.alice,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    assert [m["name"] for m in body["data"]] == ["a", "b"] and all(m["state"] == "queued" for m in body["data"])
    job = api.storage.get_job(body["job_id"])
    assert job.kind == "retrain" and job.payload["asha"] is True and job.payload["retrain"]["epochs"] == 2


def test_presets_retrain_with_their_own_modules(api: Api) -> None:
    """Without a supernet, hyctas-s trains the official network and hyctas-s-lite the light one;
    one job does not mix them."""
    body = {"dataset": SUPERNET["dataset"], "epochs": 1}
    models = {}
    for preset in ("hyctas-s", "hyctas-s-lite"):
        r = api.client.post("/api/v1/models", json={**body, "archs": [{"name": preset, "preset": preset}]},
                            headers=api.alice)  # fmt: skip
        assert r.status_code == 201, r.text
        models[preset] = api.storage.get_job(r.json()["job_id"]).payload["retrain"]["model"]
    assert (models["hyctas-s"]["head"], models["hyctas-s"]["output_stride"], models["hyctas-s"]["attn_qk_ratio"]) == (
        "official", 4, 0.125)  # fmt: skip
    assert (models["hyctas-s-lite"]["head"], models["hyctas-s-lite"]["output_stride"]) == ("light", 8)
    archs = [{"name": "a", "preset": "hyctas-s"}, {"name": "b", "preset": "hyctas-s-lite"}]
    r = api.client.post("/api/v1/models", json={**body, "archs": archs}, headers=api.alice)
    assert r.status_code == 422 and "share their modules" in r.text


# -- state transitions -------------------------------------------------------------------------
def test_another_users_deployment_name_is_not_revealed(api: Api) -> None:
    """A name in use by someone else is a 409 that says nothing of its owner; their deployment stays a 404."""
    models = {}
    for user in ("alice", "bob"):
        mid = api.storage.create_model("m", {"ops": []}, "h", owner=user)
        api.storage.update_model(mid, state=JobState.RUNNING)
        api.storage.update_model(mid, state=JobState.SUCCEEDED, checkpoint_uri="file:///ckpt/best.pt")
        models[user] = mid
    r = api.client.post(f"/api/v1/models/{models['alice']}/deploy", json={"name": "seg"}, headers=api.alice)
    assert r.status_code == 202, r.text
    r = api.client.post(f"/api/v1/models/{models['bob']}/deploy", json={"name": "seg"}, headers=api.bob)
    assert (r.status_code, r.json()["detail"]) == (
        409,
        "the deployment name 'seg' is not available: choose another name",
    )
    assert "alice" not in r.text and "taken" not in r.text
    assert api.client.get("/api/v1/deployments/seg", headers=api.bob).status_code == 404


def test_a_deployment_shows_its_serving_latency_beside_the_search_prediction(api: Api) -> None:
    """The replicas' report next to the latency the search stored for that arch, with the error;
    no error across input sizes; a note for a model that did not come from a search."""
    from hyctas_core.presets import get_preset
    from hyctas_core.storage import GenerationRecord, IndividualRecord

    arch = get_preset("hyctas-s")
    config = {"search": {}, "evaluator": {"input_size": [64, 128]}}
    sid = api.storage.create_search("served", config, owner="alice")
    objectives = {"miou": 0.3, "latency_ms": 20.0, "latency_source": "lut:cpu", "gmacs": 1.0, "params_m": 1.0}
    ind = IndividualRecord(0, arch.hash, arch.to_official(), arch.num_branches, objectives)
    api.storage.commit_generation(sid, GenerationRecord(0, 0.1, [arch.hash], 1, 1, b"x"), [ind], [])
    mid = api.storage.create_model("m", arch.to_official(), arch.hash, owner="alice", source={"search_id": sid})
    api.storage.update_model(mid, state=JobState.RUNNING)
    api.storage.update_model(mid, state=JobState.SUCCEEDED, checkpoint_uri="file:///ckpt/best.pt")
    assert api.client.post(f"/api/v1/models/{mid}/deploy", json={"name": "fast"}, headers=api.alice).status_code == 202
    body = api.client.get("/api/v1/deployments/fast", headers=api.alice).json()
    assert body["serving_latency"] is None and body["latency"] is None  # nothing served yet
    did = api.storage.find_deployment("fast").id  # type: ignore[union-attr]
    report = {"input_size": [64, 128], "requests": 40, "p50_ms": 25.0, "p90_ms": 30.0, "mean_ms": 26.0,
              "mean_batch": 1.0, "backend": "onnxruntime", "device": "cpu", "device_class": "cpu"}  # fmt: skip
    api.storage.record_serving_latency(did, report)
    api.let_read_cache_expire()
    body = api.client.get("/api/v1/deployments/fast", headers=api.alice).json()
    latency = body["latency"]
    assert latency["measured"]["p50_ms"] == 25.0 and latency["measured"]["at"]
    assert latency["predicted"] == {"latency_ms": 20.0, "source": "lut:cpu", "input_size": [64, 128], "search_id": sid}
    assert (latency["error_ms"], latency["error_pct"], latency["note"]) == (5.0, 25.0, None)
    listed = api.client.get("/api/v1/deployments", headers=api.alice).json()["data"]
    assert listed[0]["serving_latency"]["p50_ms"] == 25.0 and listed[0]["latency"] is None  # no per-row queries
    # Served at another size: the prediction is shown, the error is not.
    api.storage.record_serving_latency(did, {**report, "input_size": [128, 256]})
    api.let_read_cache_expire()
    latency = api.client.get("/api/v1/deployments/fast", headers=api.alice).json()["latency"]
    assert latency["predicted"]["latency_ms"] == 20.0 and latency["error_ms"] is None and "128x256" in latency["note"]
    # A redeploy with new options clears what was measured on the old ones.
    assert api.client.post(f"/api/v1/models/{mid}/deploy", json={"name": "fast", "max_batch_size": 4},
                           headers=api.alice).status_code == 202  # fmt: skip
    assert api.client.get("/api/v1/deployments/fast", headers=api.alice).json()["serving_latency"] is None
    # A preset model: measured, nothing predicted.
    pid = api.storage.create_model("p", arch.to_official(), arch.hash, owner="alice", source={"preset": "hyctas-s"})
    api.storage.update_model(pid, state=JobState.RUNNING)
    api.storage.update_model(pid, state=JobState.SUCCEEDED, checkpoint_uri="file:///ckpt/p.pt")
    assert api.client.post(f"/api/v1/models/{pid}/deploy", json={"name": "pre"}, headers=api.alice).status_code == 202
    api.storage.record_serving_latency(api.storage.find_deployment("pre").id, report)  # type: ignore[union-attr]
    api.let_read_cache_expire()
    latency = api.client.get("/api/v1/deployments/pre", headers=api.alice).json()["latency"]
    assert latency["predicted"] is None and "did not come from a search" in latency["note"]


def test_cancel_a_search_then_cancel_again_is_409(api: Api) -> None:
    body = _search(api)
    r = api.client.post(f"/api/v1/searches/{body['id']}/cancel", headers=api.alice)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    job = api.storage.get_job(api.storage.get_search(body["id"]).config["job_id"])
    assert job.state is JobState.CANCELLED
    r = api.client.post(f"/api/v1/searches/{body['id']}/cancel", headers=api.alice)
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_cancel_a_finished_job_is_409(api: Api) -> None:
    supernet_id = api.trained_supernet()
    r = api.client.post(f"/api/v1/jobs/{supernet_id}/cancel", headers=api.alice)
    assert r.status_code == 409
    assert api.storage.get_job(supernet_id).state is JobState.SUCCEEDED


def test_unknown_ids_are_404(api: Api) -> None:
    for path in ("/api/v1/searches/12345", "/api/v1/jobs/12345", "/api/v1/models/12345", "/api/v1/supernets/12345"):
        assert api.client.get(path, headers=api.alice).status_code == 404, path


def test_unknown_query_parameters_are_422_naming_them(api: Api) -> None:
    r = api.client.get("/api/v1/searches?limt=5&state=running", headers=api.alice)
    assert r.status_code == 422 and r.json()["detail"] == [
        {"loc": ["query", "limt"], "msg": "unknown query parameter", "type": "extra_forbidden"}
    ]
    assert api.client.get("/api/v1/searches?limit=5&state=running", headers=api.alice).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/v1/searches/99999999999999999999", "/api/v1/jobs/-45839231128026438311084032",
             "/api/v1/searches/0", "/api/v1/models/2147483648", "/api/v1/supernets/-1"],
)  # fmt: skip
def test_ids_out_of_range_are_422_never_a_database_error(api: Api, path: str) -> None:
    r = api.client.get(path, headers=api.alice)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "path"
    assert api.client.get("/api/v1/searches/2147483647", headers=api.alice).status_code == 404  # the largest id


def test_only_an_unreachable_database_is_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """StorageUnavailable (connection, timeout) is 503 'retry later'; any other storage error is a 500
    that shows nothing of the database."""
    from hyctas_core.storage import StorageError, StorageUnavailable

    def down(*_: Any, **__: Any) -> None:
        raise StorageUnavailable("database postgresql://x: OperationalError: connection refused")

    def broken(*_: Any, **__: Any) -> None:
        raise StorageError("database postgresql://x: DataError: value out of range for table jobs")

    monkeypatch.setattr(api.storage, "list_search_summaries", down)
    r = api.client.get("/api/v1/searches", headers=api.alice)
    assert (r.status_code, r.json()["detail"]) == (503, "database unavailable; retry later")
    monkeypatch.setattr(api.storage, "list_search_summaries", broken)
    r = api.client.get("/api/v1/searches", headers=api.alice)
    assert (r.status_code, r.json()["detail"]) == (500, "internal storage error")


def test_generation_beyond_the_search_is_404(api: Api) -> None:
    body = _search(api)
    r = api.client.get(f"/api/v1/searches/{body['id']}/individuals?generation=3", headers=api.alice)
    assert r.status_code == 404


# -- limits and backends -----------------------------------------------------------------------
def test_oversized_body_is_413_and_stores_nothing(api: Api) -> None:
    big = {**SUPERNET, "name": "x" * 70_000}
    r = api.client.post("/api/v1/supernets", json=big, headers=api.alice)
    assert r.status_code == 413 and "64000" in r.json()["detail"]
    r = api.client.post(
        "/api/v1/supernets", content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]), headers=api.alice
    )  # chunked: no Content-Length
    assert r.status_code == 413
    assert api.storage.list_jobs() == ([], 0)


def test_queue_down_is_503_and_the_job_is_cancelled_not_left_queued(api: Api) -> None:
    api.queue.close()
    r = api.client.post("/api/v1/supernets", json=SUPERNET, headers=api.alice)
    assert r.status_code == 503 and "queue" in r.json()["detail"]
    (job,), _ = api.storage.list_jobs()
    assert job.state is JobState.CANCELLED and "enqueue" in (job.error or "")
    assert api.client.get("/ready").status_code == 503


def test_health_ready_and_metrics(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    ready = api.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["database"] == "ok" and ready.json()["queue"] == "ok"
    api.client.post("/api/v1/supernets", json=SUPERNET, headers=api.alice)
    text = api.client.get("/metrics").text
    assert 'hyctas_jobs{state="queued"} 1.0' in text
    assert "hyctas_queue_depth 1.0" in text
    assert 'hyctas_http_requests_total{method="POST",route="/api/v1/supernets",status="201"}' in text
    assert "hyctas_http_request_duration_seconds_bucket" in text


def test_openapi_lists_the_routes(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/searches", "/api/v1/searches/{search_id}", "/api/v1/searches/{search_id}/generations",
        "/api/v1/searches/{search_id}/pareto", "/api/v1/searches/{search_id}/individuals",
        "/api/v1/searches/{search_id}/cancel", "/api/v1/supernets", "/api/v1/supernets/{supernet_id}",
        "/api/v1/models", "/api/v1/models/{model_id}", "/api/v1/jobs/{job_id}", "/api/v1/events",
        "/health", "/ready", "/metrics",
    ):  # fmt: skip
        assert path in paths, path


def test_events_stream_only_the_callers_events(api: Api) -> None:
    """SSE: Alice's stream carries her events (in order) and none of Bob's."""
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def publish_until_done() -> None:
        deadline = time.monotonic() + 10
        i = 0
        while not done.is_set() and time.monotonic() < deadline:
            api.events.publish({"type": "progress", "owner": "bob", "job_id": 0, "i": i})
            api.events.publish({"type": "progress", "owner": "alice", "job_id": 1, "i": i})
            i += 1
            time.sleep(0.05)

    publisher = threading.Thread(target=publish_until_done, daemon=True)
    publisher.start()
    with api.client.stream("GET", "/api/v1/events", headers=api.alice) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == 3:
                    break
    done.set()
    publisher.join()
    assert all(e["owner"] == "alice" for e in got)
    assert [e["i"] for e in got] == sorted(e["i"] for e in got)


def test_memory_queue_fixture_is_fresh(api: Api) -> None:
    assert isinstance(api.queue, InMemoryQueue) and api.queue.depth() == 0


def test_a_retrained_model_downloads_as_its_trained_network(api: Api, tmp_path: Any) -> None:
    import io

    import numpy as np
    import onnxruntime as ort
    import torch

    from hyctas_core.presets import get_preset
    from hyctas_core.retrain import load_model
    from tests.fixtures import tiny_retrained

    checkpoint, _ = tiny_retrained(tmp_path)
    arch = get_preset("hyctas-s")
    mid = api.storage.create_model("s", arch.to_official(), arch.hash, owner="alice")
    url = f"/api/v1/models/{mid}/export"
    assert api.client.get(url, headers=api.alice).status_code == 409  # not retrained yet
    api.storage.update_model(mid, state=JobState.RUNNING)
    api.storage.update_model(mid, state=JobState.SUCCEEDED, checkpoint_uri=checkpoint.as_uri())
    assert api.client.get(url, headers=api.bob).status_code == 404  # not bob's
    assert api.client.get(url, params={"input_size": "64"}, headers=api.alice).status_code == 422
    r = api.client.get(url, params={"input_size": "64x128"}, headers=api.alice)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])  # one file: the weights are inside
    x = torch.randn(1, 3, 64, 128)
    (got,) = session.run(["logits"], {"image": x.numpy()})
    net, _, _ = load_model(checkpoint)
    with torch.no_grad():
        want = net.eval()(x)["out"].numpy()
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    again = api.client.get(url, params={"input_size": "64x128"}, headers=api.alice)
    assert again.content == r.content  # exported once, kept while the checkpoint is unchanged
    ts = api.client.get(url, params={"format": "torchscript", "input_size": "64x128"}, headers=api.alice)
    assert ts.status_code == 200
    traced = torch.jit.load(io.BytesIO(ts.content))
    with torch.no_grad():
        assert np.abs(traced(x).numpy() - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
