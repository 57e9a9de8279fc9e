"""The judge service: rewards for imagined rollouts.

Trainers and the simulator send videos (imagined or real) and get verdicts and
rewards back. HTTP (`http_api`) and gRPC (`grpc_api`) are thin handlers over
one `JudgeRuntime` (`runtime`): a batching `JudgeEngine` (`engine`) that owns
the learned success classifier (one forward pass over the clips of every
pending request) and the VLM judge client, and the judge work queue
(`judge_queue`: in process, or Redis Streams shared by replicas; it also holds
the reward and dual-noise verification rules). `server` builds it from a
checkpoint and serves both protocols in one process, or runs a pure worker.
"""
