"""The fast path's artifacts: ONNX graphs of a world model, Triton model repositories, and a
launcher for the real ``tritonserver`` binary.

Modules: ``graphs`` (the graphs as torch modules and their input/output specs),
``onnx_export`` (``wmpo export onnx``, ONNX Runtime sessions, parity against torch),
``triton_repo`` (``wmpo export triton``: a model repository for the ``tensorrt_plan``,
``onnxruntime_onnx`` or ``python`` backend), ``tritonserver`` (find, prepare, start, wait for,
stop a ``tritonserver`` from the ``nvidia-pytriton`` wheel).

Why the model is split into these four graphs
---------------------------------------------
The sampling loop (``wmpo.sampling.rollout``) stays in the simulator: a Triton ensemble cannot
loop, the loop's per-rollout generators make every rollout reproducible from its seed, and the
engine's step-level batching (DESIGN.md section 5) needs each denoising step to be one call
over the batch. What leaves the process are the network calls the loop makes:

- ``dit_context`` (``VideoDiT.build_cache``): once per autoregressive step, the context frames
  (the anchor and the recent window) through every layer, returning every layer's keys and
  values packed into one tensor ``kv`` (B, 2 * depth, heads, F_ctx, N, head_dim).
- ``dit_denoiser`` (``VideoDiT.forward_cached``): ``steps`` times per autoregressive step (8 for
  the bundled checkpoint), the generated frames attending to the cache given as the explicit
  input ``kv``. Context frames never attend to generated ones, so their keys/values do not
  change while the new frames are denoised: feeding the cache back in is exact, not an
  approximation, and the graph is stateless, which is what Triton's dynamic batcher needs
  (any request can join any batch; no sequence affinity, no server-side state to lose when a
  Triton pod restarts).
- ``ae_encoder`` and ``ae_decoder``: start frames in, frames out (the decoder returns uint8
  frames, a quarter of the bytes of float pixels).

Alternatives and why not: the uncached forward over context + new frames as one graph would
also be stateless but costs (F_ctx + F_new) / F_new = 2.25x the tokens through every layer at
every step for the default 5 context and 4 new frames; a graph holding the cache on the server
(sequence batching with implicit state) would save sending ``kv`` but ties sessions to one
instance and breaks dynamic batching across sessions; the whole loop in one graph cannot be
expressed as an ensemble and would move per-rollout RNG and step-level batching out of the
simulator. One packed ``kv`` input instead of 12 (keys and values per layer) keeps the Triton
request small in tensor count; the context graph produces it already packed, so the
simulator never repacks it.

The price of the explicit cache is bytes: ``kv`` is 2 * depth * heads * F_ctx * N * head_dim
float32 values, 0.6 MB per rollout for the bundled model (9.8 MB for a batch of 16), sent
with each of the ``steps`` denoising calls. On one host, Triton's system shared memory removes
that copy through the socket (the simulator writes ``kv`` once per autoregressive step into a
registered region and every denoising call references it); across hosts, or for a much larger
model, the uncached graph is the one to measure against it.
"""
