"""``python -m mobidem.train {prepare,train,evaluate,export}``: see docs/TRAINING.md."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
DEFAULT_FACES = REPO.parent / "shared" / "data" / "faces"
DEFAULT_CACHE = REPO / ".data" / "train-cache"


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identities", default=str(DEFAULT_FACES / "identities"), help="folder of <person>/<image>")
    p.add_argument("--expressions", default=str(DEFAULT_FACES / "expressions"), help="folder of <label>/<image>")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the chips are cached (.npz)")
    p.add_argument("--triton-url", default=None, help="a running Triton for detection (default: start one)")
    p.add_argument("--repository", default=None, help="model repository (default: this checkout's)")
    p.add_argument("--test-fraction", type=float, default=0.5, help="held-out share (identities: of the people)")
    p.add_argument("--split-seed", type=int, default=0)


def load_data(args, split: str):
    """(identity ChipSet, expression chips, expression targets) of the requested split."""
    from mobidem.train import data

    cache = Path(args.cache_dir)
    ids = data.load_or_build(args.identities, cache / "identities.npz", args.triton_url, args.repository,
                             echo=lambda m: print(m, file=sys.stderr))
    ex = data.load_or_build(args.expressions, cache / "expressions.npz", args.triton_url, args.repository,
                            echo=lambda m: print(m, file=sys.stderr))
    targets = data.expression_targets(ex)
    if split != "all":
        id_tr, id_te = data.split_identities(ids, args.test_fraction, args.split_seed)
        ex_tr, ex_te = data.split_stratified(ex, args.test_fraction, args.split_seed)
        id_idx, ex_idx = (id_tr, ex_tr) if split == "train" else (id_te, ex_te)
        ids, ex, targets = ids.subset(id_idx), ex.subset(ex_idx), targets[ex_idx]
    return ids, ex, targets


def cmd_prepare(args) -> int:
    ids, ex, _ = load_data(args, "all")
    print(json.dumps({"identities": {"chips": len(ids), "people": len(ids.names)},
                      "expressions": {"chips": len(ex), "labels": ex.names}}))
    return 0


def cmd_train(args) -> int:
    from mobidem.train import engine
    from mobidem.train.model import load_checkpoint, save_checkpoint

    ids, ex, targets = load_data(args, args.split)
    cfg = engine.TrainConfig(**{f.name: getattr(args, f.name) for f in fields(engine.TrainConfig)})
    model, _, _ = load_checkpoint(args.init)
    result = engine.train(model, ids, ex.chips, targets, cfg, echo=lambda m: print(m, file=sys.stderr))
    meta = {"config": result.config, "split": args.split, "split_seed": args.split_seed,
            "test_fraction": args.test_fraction, "train_people": len(np.unique(ids.labels)),
            "train_identity_chips": len(ids), "train_expression_chips": len(ex)}
    save_checkpoint(args.out, model, meta)
    summary = {**asdict(result), "checkpoint": str(args.out), **{k: v for k, v in meta.items() if k != "config"}}
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("checkpoint", "before", "after", "seconds", "step_seconds", "device")}))
    return 0


def _onnx_outputs(path: str, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    embs, probs = [], []
    for i in range(0, len(chips), 16):
        e, p = s.run(["embedding", "expression"], {"chip": chips[i : i + 16]})
        embs.append(e)
        probs.append(p)
    return np.concatenate(embs), np.concatenate(probs)


def cmd_evaluate(args) -> int:
    from mobidem.train import engine

    ids, ex, targets = load_data(args, args.split)
    if args.onnx:
        emb, _ = _onnx_outputs(args.onnx, ids.chips)
        _, probs = _onnx_outputs(args.onnx, ex.chips)
        source = args.onnx
    else:
        from mobidem.train.model import load_checkpoint

        device = engine.pick_device(args.device)
        model, _, _ = load_checkpoint(args.checkpoint, map_location="cpu")
        model.to(device)
        emb, _ = engine.embed(model, ids.chips, device)
        _, probs = engine.embed(model, ex.chips, device)
        source = args.checkpoint or "converted dlib weights (untrained expression head)"
    report = {"model": source, "split": args.split, "split_seed": args.split_seed,
              "identity": engine.verification_metrics(emb, ids.labels),
              "expression": engine.expression_metrics(probs, targets)}
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_export(args) -> int:
    from mobidem.modelbuild import default_repository
    from mobidem.train.export import export_to_repository, model_to_onnx
    from mobidem.train.model import load_checkpoint

    model, net, meta = load_checkpoint(args.checkpoint)
    folder = export_to_repository(model_to_onnx(model, net, {"checkpoint": str(args.checkpoint), **meta}),
                                  args.repository or default_repository(), args.model_name)
    print(json.dumps({"model": args.model_name, "version": int(folder.name), "path": str(folder / "model.onnx")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from mobidem.train.engine import TrainConfig

    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m mobidem.train", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="extract and cache the chips through Triton")
    _data_args(p)
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("train", help="fine-tune from the converted dlib weights (or --init)")
    _data_args(p)
    p.add_argument("--split", choices=["train", "all"], default="train")
    p.add_argument("--init", default=None, help="checkpoint to start from (default: the dlib weights)")
    p.add_argument("--out", default=str(REPO / ".data" / "train" / "model.pt"))
    p.add_argument("--summary", default=None, help="write the run's JSON summary here")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--weights", choices=["fixed", "dynamic"], default=d.weights)
    p.add_argument("--id-loss", choices=["classwise", "batch_all", "batch_hard"], default=d.id_loss)
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--persons", type=int, default=d.persons)
    p.add_argument("--per-person", type=int, default=d.per_person)
    p.add_argument("--expr-batch", type=int, default=d.expr_batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--head-lr", type=float, default=d.head_lr)
    p.add_argument("--weight-lr", type=float, default=d.weight_lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="verification and expression metrics on a split")
    _data_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", default=None, help="default: the converted dlib weights")
    g.add_argument("--onnx", default=None, help="evaluate an ONNX model with the face_multitask contract instead")
    p.add_argument("--split", choices=["test", "train", "all"], default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("export", help="ONNX into <repository>/<model>/<next version>/")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--repository", default=None, help="default: this checkout's model_repository")
    p.add_argument("--model-name", default="face_multitask")
    p.set_defaults(fn=cmd_export)

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
