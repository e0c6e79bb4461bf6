"""Writes the tiny ONNX classifier and tokenizer the `onnx` feature's tests and bench use.

    python tests/onnx/make_fixtures.py OUT_DIR

needs the `onnx` and `numpy` packages (`.ci/run` installs them in a venv beside the
`onnxruntime` wheel that carries libonnxruntime.so). Nothing is downloaded from a model
hub: the "model" is a bag of words whose output depends on the token ids, so that the
tests can check which window, label and threshold decided.

Model: input_ids, attention_mask (int64, [batch, seq]) -> logits (float, [batch, 3]),
labels BENIGN, INJECTION, JAILBREAK. logits = sum over unmasked tokens of E[id]:
[CLS] adds 2 to BENIGN; "override" adds 3 to INJECTION (one in a window: p 0.73,
two: 0.98); "unfiltered" adds 6 to JAILBREAK. Every other token adds nothing.

A second model, `tiny_types.onnx`, also takes token_type_ids (as BERT exports do) and
has int32 inputs, to exercise the input-type handling. A third, `slow.onnx`, gives the
same logits after multiplying 1024x1024 matrices of zeros that depend on the input (so
the runtime cannot fold them away): a few hundred milliseconds per call, for the tests
of the queue's back-pressure and the per-call deadline.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = """the a an of to and in is it you that for on with as are this be at by
from or have not what all can your will please write summary summarize text document
report email answer question about how why when who which me my we our they their
model assistant user system prompt instructions previous ignore override unfiltered
hello world short story poem code function data table list translate french german
one two three four five six seven eight nine ten day week year time people work
""".split()
LABELS = ["BENIGN", "INJECTION", "JAILBREAK"]


def vocab():
    v = {}
    for t in SPECIALS + WORDS:
        if t not in v:
            v[t] = len(v)
    return v


def embedding(v):
    e = np.zeros((len(v), len(LABELS)), dtype=np.float32)
    e[v["[CLS]"], 0] = 2.0
    e[v["override"], 1] = 3.0
    e[v["unfiltered"], 2] = 6.0
    return e


def model(v, int32=False, token_types=False, slow=0):
    id_type = TensorProto.INT32 if int32 else TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", id_type, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", id_type, ["batch", "seq"]),
    ]
    if token_types:
        inputs.append(helper.make_tensor_value_info("token_type_ids", id_type, ["batch", "seq"]))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    inits = [
        numpy_helper.from_array(embedding(v), "E"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["logits"], keepdims=0),
    ]
    if token_types:
        # Read token_type_ids so that the runtime insists on it: add 0 * sum(types).
        nodes[-1] = helper.make_node("ReduceSum", ["masked", "axis1"], ["raw"], keepdims=0)
        nodes += [
            helper.make_node("Cast", ["token_type_ids"], ["typesf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["typesf", "axis1"], ["tsum"], keepdims=1),
            helper.make_node("Mul", ["tsum", "zero"], ["tzero"]),
            helper.make_node("Add", ["raw", "tzero"], ["logits"]),
        ]
        inits.append(numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"))
    if slow:
        # zeros = 0 * sum(input_ids), expanded to [N, N], multiplied `slow` times.
        n = 1024
        nodes[-1] = helper.make_node("ReduceSum", ["masked", "axis1"], ["raw"], keepdims=0)
        inits += [
            numpy_helper.from_array(np.array([n, n], dtype=np.int64), "square"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("Cast", ["input_ids"], ["idsf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["idsf"], ["idsum"], keepdims=0),
            helper.make_node("Mul", ["idsum", "zero"], ["z0"]),
            helper.make_node("Expand", ["z0", "square"], ["m0"]),
        ]
        for i in range(slow):
            nodes.append(helper.make_node("MatMul", [f"m{i}", f"m{i}"], [f"m{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"m{slow}"], ["msum"], keepdims=0),
            helper.make_node("Add", ["raw", "msum"], ["logits"]),
        ]
    graph = helper.make_graph(nodes, "tiny_classifier", inputs, [out], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def tokenizer(v):
    added = [
        {"id": v[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for t in SPECIALS
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                t: {"id": t, "ids": [v[t]], "tokens": [t]} for t in ["[CLS]", "[SEP]"]
            },
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "[UNK]"},
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/onnx-fixtures"
    os.makedirs(out, exist_ok=True)
    v = vocab()
    onnx.save(model(v), os.path.join(out, "tiny.onnx"))
    onnx.save(model(v, int32=True, token_types=True), os.path.join(out, "tiny_types.onnx"))
    onnx.save(model(v, slow=6), os.path.join(out, "slow.onnx"))
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer(v), f, indent=1)
    with open(os.path.join(out, "labels.json"), "w") as f:
        json.dump(LABELS, f)
    print(out)


if __name__ == "__main__":
    main()
