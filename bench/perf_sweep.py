"""Triton configuration sweep: instance counts, ORT intra-op threads and dynamic-batching queue delays,
applied by reloading the models with a config override (tritonclient ``load_model(config=...)``,
explicit model control) on the running Triton, so the gateway and its client stay up between
configurations and configurations can be interleaved."""

from __future__ import annotations

import json

DETECTORS = ("blazeface_short", "blazeface_full")
FACE = ("face_multitask",)
MODELS = DETECTORS + FACE


def _set(models, instances=None, threads=None, delay_x=None, delay_us=None):
    return {m: {"instances": instances, "threads": threads, "delay_x": delay_x, "delay_us": delay_us} for m in models}


PREVIOUS = {"blazeface_short": {"instances": 1, "threads": 1, "delay_x": None, "delay_us": 1000},
            "blazeface_full": {"instances": 1, "threads": 1, "delay_x": None, "delay_us": 1000},
            "face_multitask": {"instances": 1, "threads": 1, "delay_x": None, "delay_us": 2000}}
CONFIGS = {  # name -> {model: changes}; empty: the committed config.pbtxt files
    "committed (face_multitask 2 threads, no queue delay)": {},
    "before issue 8: 1 instance, 1 thread, delays 1/1/2 ms": PREVIOUS,
    "face_multitask 1 thread": _set(FACE, threads=1),
    "face_multitask 2 instances": _set(FACE, instances=2),
    "all 2 instances": _set(MODELS, instances=2),
    "all 2 threads": _set(MODELS, threads=2),
    "queue delays 1/1/2 ms": {m: dict(v, threads=None) for m, v in PREVIOUS.items()},
}
QUICK = ("committed (face_multitask 2 threads, no queue delay)", "before issue 8: 1 instance, 1 thread, delays 1/1/2 ms",
         "face_multitask 1 thread")


def apply(triton_url: str, changes: dict, base: dict) -> None:
    """Reload every model of MODELS: with its changes, or from its config.pbtxt."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_url) as c:
        for m in MODELS:
            ch = changes.get(m)
            if not ch:
                c.load_model(m, config=json.dumps(base[m]))
                continue
            cfg = json.loads(json.dumps(base[m]))
            if ch["instances"]:
                cfg["instance_group"][0]["count"] = ch["instances"]
            if ch["threads"]:
                cfg["parameters"]["intra_op_threads"]["string_value"] = str(ch["threads"])
            db = cfg["dynamic_batching"]
            if ch["delay_us"] is not None:
                db["max_queue_delay_microseconds"] = ch["delay_us"]
            if ch["delay_x"]:
                db["max_queue_delay_microseconds"] = int(db.get("max_queue_delay_microseconds", 0)) * ch["delay_x"]
            c.load_model(m, config=json.dumps(cfg))


def base_configs(triton_url: str) -> dict:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_url) as c:
        return {m: c.get_model_config(m, as_json=True)["config"] for m in MODELS}


def describe(base: dict) -> str:
    parts = []
    for m in MODELS:
        cfg = base[m]
        parts.append(f"{m}: {cfg['instance_group'][0].get('count', 1)} instance(s), intra_op_threads "
                     f"{cfg['parameters']['intra_op_threads']['string_value']}, max queue delay "
                     f"{int(cfg['dynamic_batching'].get('max_queue_delay_microseconds', 0))} µs")
    return "; ".join(parts)
