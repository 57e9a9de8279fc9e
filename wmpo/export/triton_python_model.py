"""Triton Python-backend model that runs one exported ONNX graph with ONNX Runtime.

This file is copied as ``<repo>/<model>/<version>/model.py`` by ``wmpo export triton --variant
python``, next to ``model.onnx``. It is not imported by wmpo: it runs inside Triton's Python
backend stub and needs only numpy, onnxruntime and the backend's ``triton_python_backend_utils``.

Triton's dynamic batcher hands ``execute`` a list of requests (it only groups requests whose
inputs have equal shapes apart from the batch); they are concatenated along the batch, run as
one ONNX Runtime call, and the outputs are split back per request, so a dynamic batch is one
model call as on the other backends. Model parameters (config.pbtxt): ``intra_op_threads``
(0: ONNX Runtime's choice) and ``allow_spinning`` ("0" by default: spinning threads would
starve the server's own threads on a small CPU machine).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        so.inter_op_num_threads = 1
        spin = params.get("allow_spinning", "0")
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        feeds = []
        for i, request in enumerate(requests):
            try:
                feed = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"missing input {name!r}")
                    feed[name] = _array(tensor)
            except Exception as e:  # noqa: BLE001 - reported to the client as this request's error
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                feeds.append(None)
                continue
            feeds.append(feed)
            key = tuple((n, a.shape[1:], a.dtype.str) for n, a in feed.items())
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            try:
                if len(idx) == 1:
                    batch = feeds[idx[0]]
                else:
                    batch = {n: np.concatenate([feeds[i][n] for i in idx]) for n in self.inputs}
                outs = self.session.run(self.outputs, batch)
                offsets = np.cumsum([0] + [len(feeds[i][self.inputs[0]]) for i in idx])
                for j, i in enumerate(idx):
                    tensors = [_tensor(name, out[offsets[j]:offsets[j + 1]])
                               for name, out in zip(self.outputs, outs)]  # noqa: B905 (Python < 3.10 images)
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as e:  # noqa: BLE001 - e.g. ONNX Runtime rejecting a shape
                for i in idx:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        return responses

    def finalize(self):
        self.session = None



# Tensors cross the stub through DLPack rather than pb_utils' NumPy helpers: the backend stub of
# the nvidia-pytriton wheel was built against NumPy 1.x and, under NumPy 2, Tensor.as_numpy()
# returns the first element repeated and pb_utils.Tensor(name, array) sends zero bytes. DLPack
# carries dtype, shape and strides without NumPy's C structs, and works with either NumPy.
def _array(tensor):
    try:
        return np.from_dlpack(tensor)
    except (AttributeError, TypeError, BufferError):  # a stub or NumPy without DLPack support
        return tensor.as_numpy()


def _tensor(name, array):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))
