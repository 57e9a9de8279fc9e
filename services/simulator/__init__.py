"""The simulator service: a world model served as a simulator.

Robot teams call `/v1/imagine` before executing an action chunk; RL trainers
open sessions (optionally forked groups), step them with action chunks and
replay them under fresh noise. HTTP (`http_api`) and gRPC (`grpc_api`) are thin
handlers over one `SimulatorRuntime` (`runtime`): a batching `SimulatorEngine`
(`engine`) that owns the `WorldModel`, a `SessionManager` (`sessions`), and
the imagine work queue (`imagine_queue`: in process, or Redis Streams shared by
replicas). `server` builds it from a checkpoint and serves both protocols in one
process, or runs a pure queue worker.
"""
