"""Turn a shipped quantised ONNX file into a plain float32 graph: drop unused inputs, fold DequantizeLinear.

The OpenCV-zoo ``*_int8bq.onnx`` files (SFace, YuNet) keep their weights as int8 blocks with one
float scale per block (``DequantizeLinear`` with ``block_size``, opset 21), dequantised at run time,
and SFace also declares its original float weights as graph inputs that no node reads. Such inputs
become required inputs for a runtime, and runtimes without blocked DequantizeLinear refuse the file.
This module rewrites the graph without changing its arithmetic:

- ``remove_unused_inputs``: graph inputs no node (or graph output) reads are dropped; inputs that
  merely repeat an initialiser's name (the old "initialisers are inputs too" convention) are dropped
  so that the initialiser is a constant (the values stay; only the option to override them goes);
- ``fold_dequantize``: every DequantizeLinear whose operands are all initialisers becomes one float
  initialiser with the node's output name, computed as ONNX specifies it,
  ``y = (x - zero_point) * scale`` with ``scale``/``zero_point`` broadcast per tensor, per axis, or
  per block of ``block_size`` elements along ``axis`` (x - zero_point is exact in float32 for 8- and
  16-bit integers; the product is one float32 rounding, as a runtime does it);
- ``fold_constant_reshapes``: a Reshape of an initialiser by a constant shape becomes an initialiser;
- ``remove_unused_initializers``.

``unblock_single_block_dequantize`` is for references, not for the build: it lets ONNX Runtime run a
shipped file whose one-block scales it refuses, so parity tests can compare against its arithmetic.

``dequantize_model`` applies all of them and checks the result. The float graph is about 4x the
bytes of the int8 file and computes the same function as the shipped file run by ONNX Runtime
(tests/test_onnx_fold.py; the plugins' parity tests compare outputs on real images).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _consumed(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node (including nodes in subgraphs) or a graph output reads."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                names |= _consumed(sub)
    return names


def remove_unused_inputs(model: onnx.ModelProto) -> list[str]:
    """Drop graph inputs that nothing reads and inputs that shadow an initialiser. Returns their names."""
    graph = model.graph
    used = _consumed(graph)
    inits = {t.name for t in graph.initializer}
    keep, dropped = [], []
    for value in graph.input:
        if value.name in used and value.name not in inits:
            keep.append(value)
        else:
            dropped.append(value.name)
    del graph.input[:]
    graph.input.extend(keep)
    return dropped


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
               axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear (opsets 10-21) in numpy: ``(x - zero_point) * scale`` in scale's dtype.

    Scale is a scalar (per tensor), 1-D along ``axis`` (per axis), or, with ``block_size`` > 0, has
    x's shape except ceil(x.shape[axis] / block_size) along ``axis`` (per block)."""
    scale = np.asarray(scale)
    if not np.issubdtype(scale.dtype, np.floating):
        raise ValueError(f"DequantizeLinear scale must be floating point, not {scale.dtype}")
    zp = np.zeros((), dtype=np.int64) if zero_point is None else np.asarray(zero_point)
    axis = axis % x.ndim if x.ndim else 0
    if block_size > 0:
        if scale.ndim != x.ndim:
            raise ValueError(f"blocked scale has rank {scale.ndim}, input has rank {x.ndim}")
        blocks = -(-x.shape[axis] // block_size)
        if scale.shape[axis] != blocks:
            raise ValueError(f"blocked scale has {scale.shape[axis]} blocks along axis {axis}; "
                             f"{x.shape[axis]} elements in blocks of {block_size} need {blocks}")
        take = np.arange(x.shape[axis]) // block_size
        scale = np.take(scale, take, axis=axis)
        if zp.ndim:
            zp = np.take(zp, take, axis=axis)
    elif scale.size == 1:
        scale = scale.reshape(())
        zp = zp.reshape(())
    elif scale.ndim == 1 and x.ndim and scale.size == x.shape[axis]:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        if zp.ndim:
            zp = zp.reshape(shape)
    else:
        raise ValueError(f"scale of shape {scale.shape} fits neither per-tensor, per-axis nor blocked use "
                         f"for an input of shape {x.shape} (axis {axis})")
    # Integer subtraction first (exact), then one rounding in the scale's precision.
    diff = x.astype(np.int64) - zp.astype(np.int64)
    return (diff.astype(scale.dtype) * scale).astype(scale.dtype)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def fold_dequantize(model: onnx.ModelProto) -> int:
    """Replace every DequantizeLinear of initialisers by a float initialiser. Returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep, new, folded = [], [], 0
    for node in graph.node:
        operands = [i for i in node.input if i]
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or \
                not all(i in inits for i in operands):
            keep.append(node)
            continue
        attrs = _attrs(node)
        if attrs.get("output_dtype", 0) not in (0, inits[node.input[1]].data_type):
            keep.append(node)  # an explicit output type other than the scale's: leave it to the runtime
            continue
        x = numpy_helper.to_array(inits[node.input[0]])
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        y = dequantize(x, scale, zp, axis=int(attrs.get("axis", 1)), block_size=int(attrs.get("block_size", 0)))
        tensor = numpy_helper.from_array(y, node.output[0])
        inits[tensor.name] = tensor
        new.append(tensor)
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new)
    return folded


def fold_constant_reshapes(model: onnx.ModelProto) -> int:
    """Replace every Reshape of an initialiser by a constant shape with the reshaped initialiser."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep, new, folded = [], [], 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or \
                not all(i in inits for i in node.input[:2]):
            keep.append(node)
            continue
        data = numpy_helper.to_array(inits[node.input[0]])
        shape = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64)
        if not _attrs(node).get("allowzero", 0):  # 0 copies the input's dimension (ONNX Reshape)
            shape = np.array([data.shape[i] if d == 0 else d for i, d in enumerate(shape)], dtype=np.int64)
        tensor = numpy_helper.from_array(data.reshape(shape), node.output[0])
        inits[tensor.name] = tensor
        new.append(tensor)
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new)
    return folded


def unblock_single_block_dequantize(model: onnx.ModelProto) -> int:
    """Set ``block_size`` to 0 on DequantizeLinear nodes whose scale has one element, and make that
    scale (and zero point) a scalar: one block that covers the whole tensor is per-tensor
    quantisation (same values, same arithmetic). ONNX Runtime (1.32) refuses
    a one-element scale with a block size ("block_size must be 0 for per-tensor quantization"), which
    YuNet's int8bq file has for its biases; this makes the shipped graph runnable as a reference for
    parity tests without touching its weights. Returns how many nodes changed."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            continue
        if int(np.prod(inits[node.input[1]].dims)) != 1:
            continue
        for attr in node.attribute:
            if attr.name == "block_size" and attr.i:
                attr.i = 0
                for name in node.input[1:3]:  # a one-element scale (and zero point) of any rank -> a scalar
                    if name:
                        del inits[name].dims[:]
                changed += 1
    return changed


def remove_unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Drop initialisers that nothing reads. Returns their names."""
    graph = model.graph
    used = _consumed(graph)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = [t.name for t in graph.initializer if t.name not in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return dropped


def dequantize_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float copy of ``model``: unused inputs dropped, constant DequantizeLinear (and the Reshapes of
    their results) folded, unused initialisers dropped; checked with onnx.checker. The input model is
    not changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    remove_unused_inputs(out)
    fold_dequantize(out)
    fold_constant_reshapes(out)
    remove_unused_initializers(out)
    # Initialisers are constants now; old IR versions required them to be listed as inputs too.
    out.ir_version = max(out.ir_version, 4)
    onnx.checker.check_model(out)
    return out
